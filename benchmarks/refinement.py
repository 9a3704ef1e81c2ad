"""Benchmark "refinement": how many expensive calculations until the true low-energy set is known.

Drives the real campaign (:class:`agent.campaign.Campaign`, the scheduler and stages users
run) with the in-process executor (:class:`agent.local_executor.LocalExecutor`) on replays
of complete multi-level CSP landscapes (``sim_backends/replay.py``): ``replay-csp`` serves
the landscape's cheap-level structures as the CSP stage's output and ``replay-crystal``
each structure's stored expensive-level energy, charged the stored CPU seconds of that
calculation. The campaign has a one-molecule pool (the landscape's molecule, evaluated
once by the ``diagnostic`` backend so the structure stage may start), then the structure
stage asks with its defaults (``agent/refine_acquisition.py``; the Delta-GP on averaged
SOAP, or, for a level whose replay declares the stored fragment-DFT decomposition, the
fragment dimer GP of ``agent/surrogates/fragment_gp.py``; ``--surrogate soap`` makes the
replay declare none). ``batch_size`` = q tasks are kept in flight, as ``run_campaign``
does (ask for the free slots, run one task, tell it, ask again): q = 4 is the
asynchronous batch a user gets, not four synchronous picks. We count the calculations
made before the true low-energy set has been computed; the loop stops there. The target
set is the one the campaign is told to find (``top_k`` = 10, ``window_kjmol`` = ``--window``,
default 10 kJ/mol per molecule): the 10 lowest expensive-level energies that lie within the
window of the minimum (:func:`agent.refine_acquisition.low_energy_set`), so where the
10th-lowest structure lies more than the window above the minimum the set is smaller
(methanol_dft: 7, formamide_big: 4); ``--window 1000`` asks for, and scores, the 10 lowest
whatever their spread. Recorded runs are rescored against the target set of the command.
The agent never sees that rule nor an uncomputed energy.

target_I stores no SMILES; its pool entry is ``Oc1ccccc1``, a stand-in with target I's
formula (C6H6O, 13 atoms: the stage reads only the atom count per molecule from it;
phenol is not target I's molecule). The fragment terms of a landscape (D3, point-charge
Ewald, GFN2-xTB/GFN1-xTB/D3 dimer baselines) are computed by the stage as in any
campaign; this process computes them once per landscape and baseline set and reuses
them in later runs (a pure function of the structures), and their CPU seconds are
counted in the agent's CPU column.

Baselines in the same run: cheap-level energy order, random order (median of 25 seeds),
oracle (= 10). One summary table over all landscapes (7 seeds, q = 1 and 4 by default):
medians and ranges, the ratio agent / min(cheap order, random), and the expensive-level
CPU seconds until the top 10 are complete (stored per structure; "-" where a landscape
stores none: the replay then charges its prior estimate), the agent's including the
CPU seconds of the fragment baselines. Also the surrogate's MAE (kJ/mol per molecule) on the
not-yet-computed structures within 10 kJ/mol of the true minimum as the computed fraction
grows, against a constant-shift baseline, and how often the skill test passed.

Stopping-rule calibration: at every decision with at least 10 computed, each run records
P(low-energy set complete) (``completion_probability`` on the stage's own fitted model) for
the spread inflations :data:`STOP_INFLATIONS`; the rule "stop when P >= p" (checked from
10 computed on) is kept when the true set is complete at the first decision where it fires,
or when it never fires before the set is complete. The table gives, per
landscape and pooled, the share of runs for which that held. A run ends when the set is
complete, so it only sees premature firings; ``--past-completion N`` lets the campaign
go on for up to N more calculations after completion (or until every rule has fired),
which measures how many calculations after completion each rule fires, and reports per
landscape and promised p the achieved rate among the runs in which the rule fired (its own
result and progress files, suffix ``_past<N>``; the runs up to completion are the same).

``--skill-score lpd``, ``--warmup plain``, ``--skill-mix`` / ``--no-skill-mix`` and ``--min-skill-n N``
set the skill test's options (module constants of ``agent/refine_acquisition.py``, set for the
duration of each run; labels and result stems name them); so do ``--warmup-dedup Q`` (suffix
``_dedup<Q>``: warm-up picks skip near-duplicates of computed structures), ``--cost-power A``
(``_costpow<A>``: picks by p / cost**A), ``--model-cost-power A`` (``_modelcostpow<A>``: the same for
the model's own picks only), ``--acq-inflation K`` (``_acqinfl<K>``: the model's draws in its picks
with K times their spread), ``--utility odds`` (``_utility-odds``: picks by p / ((1 - p) cost)),
``--fit-max-iter N`` (``_maxiter<N>``: L-BFGS-B iterations per dimer-GP fit) and ``--refit-growth F`` (``_refit<F>``: the fragment
dimer GP's hyperparameters refitted only after the computed set grew by F; ``REFIT_GROWTH`` of
``agent/surrogates/fragment_gp.py``) and ``--descriptor D`` (``_desc-<D>``: the fragment dimer GP's
dimer descriptor, ``sim_backends.fragment_terms.DESCRIPTORS``), ``--fit-starts N`` (``_starts<N>``: N
optimiser starts per hyperparameter fit of the dimer GP, the highest MAP kept) and ``--lengthscale-prior
SHIFT,SPREAD`` (``_lsprior<SHIFT>,<SPREAD>``, or ``botorch`` for BoTorch's own, ``_lsprior-botorch``, or
``auto``, ``_lsprior-auto``, per fit the lower-LOO of ``AUTO_LENGTHSCALE_PRIORS``: the
dimer GP's log-normal RBF lengthscale prior; ``LENGTHSCALE_PRIOR`` of ``agent/surrogates/fragment_gp.py``), all off by default (screens: ``benchmarks/results/NOTES.md``,
task R4). ``--grid`` runs, beside the agent,
the gate of the runs recorded before those options (skill test from 5 computed, cost-weighted
warm-up, no mix; when the agent differs from it), the agent without the skill test and the
agent without exploration when confident (``[structures.acquisition]`` of the campaign config; first
batch size, ``--grid-seeds`` seeds) and reports leave-one-landscape-out choices: for each
landscape the setting with the best mean log(agent / min(cheap, random)) on all the
others, measured on it, next to its in-sample best; and the smallest stop inflation that
kept the 0.9 promise on the others. Independent runs (e.g. one landscape per process) are
merged with ``--combine``. Every finished run is appended to a progress file
(``benchmarks/results/<stem>_progress.jsonl``, or ``--out DIR``) and a rerun of the same command
resumes; a recorded run carries its levels and a digest of the data that decides it (structure ids,
both levels' energies, CPU seconds, SMILES, geometries, dimer records: :func:`data_digest`) and is
reused only on the same levels and data (stderr: "N of M runs reused from <file>"); a run recorded by
other code or other numerical libraries (:func:`code_digest`) only after a rerun of its setting and
batch size's lowest seed made the same picks (:func:`_recheck`: else its group is recomputed); ``--fresh``
reuses none and writes ``<stem>_fresh`` files. A level pair other than the landscape's own
(``levels.json``; target_I: MACE -> PBE_MBD) adds ``_<cheap>-<expensive>`` to the file names.
Structures without a finite energy at either level (failed calculations) are dropped with a
warning; the molecule comes from ``run.json`` (``{"smiles": "..."}``) or ``--smiles``.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/refinement.py --grid     # all known landscapes
    python benchmarks/refinement.py --landscape data/landscapes/formamide_dft --cheap ff --expensive dft
    python benchmarks/refinement.py --combine benchmarks/results/refinement_*_grid.json
    python benchmarks/refinement.py --landscape data/reference/landscapes/target_I \\
        --cheap MACE --expensive PBE_MBD --seeds 3 --batch 1 --batch 4
    python benchmarks/refinement.py --no-skill-test   # the surrogate always steers
    python benchmarks/refinement.py --no-explore      # agent without exploration when confident
    python benchmarks/refinement.py --landscape data/landscapes/formamide_dft --cheap ff \\
        --expensive dft --dimer-baselines none       # fragment dimer GP without the xTB/D3 baselines

Results go to ``benchmarks/results/refinement.json`` for the default run over all known
landscapes (7 seeds, q = 1 and 4, default settings), else to ``refinement_<landscape
names>...json`` (``_<surrogate>``, ``_baselines-<names or none>``, ``_no_explore`` /
``_explore<above>-<fraction>``, ``_no_skill_test`` / ``_skill<ratio>``, ``_init<N>``,
``_seeds<N>``, ``_q<batches>``, ``_grid`` for non-default arguments). ``--combine`` writes
``refinement.json`` only when the merged files cover every known landscape with the
default settings, else ``refinement_combined.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.refine_acquisition import (  # noqa: E402
    ACQ_INFLATION,
    ACQ_SPREAD,
    COST_POWER,
    EXPLORE_ABOVE,
    EXPLORE_FRACTION,
    MIN_SKILL_N,
    MODEL_COST_POWER,
    SKILL_MIX,
    SKILL_SCORE,
    SKILL_RATIO,
    STOP_INFLATION,
    UTILITY,
    WARMUP,
    WARMUP_DEDUP,
    completion_probability,
    low_energy_set,
    surrogate_skill,
)
from agent.surrogates.fragment_gp import (  # noqa: E402
    FIT_MAX_ITER,
    LENGTHSCALE_PRIOR,
    N_FIT_STARTS,
    REFIT_GROWTH,
    parse_lengthscale_prior,
)
from sim_backends.fragment_terms import DEFAULT_BASELINES, DEFAULT_DESCRIPTOR, DESCRIPTORS  # noqa: E402
from sim_backends.landscape import LandscapeError  # noqa: E402

TOP_K = 10
#: MIN_SKILL_N of every run recorded before it was a setting: labels name any other value
LEGACY_MIN_SKILL_N = 5
WINDOW_KJMOL = 10.0
FRACTIONS = (0.05, 0.10, 0.20, 0.30, 0.50)
DEFAULT = [(ROOT / "data/reference/landscapes/target_I", "MACE", "PBE_MBD")]
#: pool entry of a landscape without a stored SMILES (target_I: C6H6O; see the docstring)
STAND_IN_SMILES = {"Target_I": "Oc1ccccc1"}
#: structures beyond TOP_K a landscape needs (after dropping those without finite energies)
MIN_EXTRA_STRUCTURES = 3
#: data digest (:func:`data_digest`) of each committed landscape at its own level pair, for the
#: recorded runs written before records carried one: such a record is reused only at that pair and
#: while the data still has this digest. Every committed progress file was first committed after
#: its landscape's last data change (git log, 2026-12-06), or, for pyrazine_dft, the records of the
#: earlier data carry another structure-list digest. The three periodic GFN2-xTB landscapes are not
#: listed: their records were run with other prior costs (maleic_anhydride_xtb and pyrazine_xtb with
#: the replay's atoms^3 prior before it recognised their level; all three before xtb-crystal's
#: estimate became a fitted power law, 2026-12-06), so they are recomputed.
LEGACY_DATA_DIGESTS: dict[str, tuple[str, str, str]] = {
    "Target_I": ("MACE", "PBE_MBD", "cd39eb742f7293ec"),
    "formamide_big_dft": ("ff", "dft", "92d0d66e1394ef53"),
    "formamide_dft": ("ff", "dft", "4fe4c98dcb4547d9"),
    "formic_acid_big_dft": ("ff", "dft", "81500567db675c29"),
    "formic_acid_dft": ("ff", "dft", "02905930d7574ec1"),
    "methanol_dft": ("ff", "dft", "d0d90cdac465362f"),
    "pyrazine_dft": ("ff", "dft", "c41b049af5d1ddb5"),
}
#: spread factors of completion_probability measured in every run (stopping-rule calibration)
STOP_INFLATIONS = (1.0, 1.5, 2.0)
#: promised probabilities whose achieved rate is reported
STOP_LEVELS = (0.5, 0.8, 0.9, 0.95)


LAYOUT_HELP = """landscape directory (table layout, sim_backends/landscape.py; e.g. data/landscapes/formamide_dft):
  NAME_landscape.csv   one row per structure: id, dE_<L>_kJmol_per_mol (or E_<L>_kJmol_per_mol) for
                       each level L; optional cpu_s (CPU s of the expensive calculation), connectivity_ok_<L>
  NAME_<L>.extxyz      one frame per structure relaxed at level L, info with id (and Z)
  run.json             {"smiles": "..."}: the molecule (or give --smiles); levels.json {"cheap": L0,
                       "expensive": L1} optional
Structures without a finite energy at --cheap or --expensive (failed calculations: empty or nan
cells) are dropped with a warning. Finished runs are recorded in <--out>/<result name>_progress.jsonl
with the levels and a digest of the data; a rerun of the same command on the same data reuses them
(stderr says how many; --fresh recomputes)."""


def known_landscapes() -> list[tuple[Path, str, str]]:
    """target_I plus every ``data/landscapes/NAME`` with a ``levels.json`` {cheap, expensive}."""
    out = list(DEFAULT)
    for meta in sorted((ROOT / "data/landscapes").glob("*/levels.json")):
        info = json.loads(meta.read_text())
        out.append((meta.parent, info["cheap"], info["expensive"]))
    return out


def count_until_top(order: list[int], top: set[int], n_missing: int = 0) -> int:
    """Calculations in ``order`` until all but ``n_missing`` of ``top`` are done."""
    seen: set[int] = set()
    for n, i in enumerate(order, 1):
        seen.add(i)
        if len(top & seen) >= len(top) - n_missing:
            return n
    return len(order)


def cost_until_top(order: list[int], top: set[int], costs: np.ndarray) -> float:
    """Summed relative cost of ``order`` up to the point where ``top`` is complete."""
    return float(np.sum(costs[order[: count_until_top(order, top)]]))


@dataclass(frozen=True)
class AgentSettings:
    """The acquisition settings of one agent run (``[structures.acquisition]``; a grid point
    of ``--grid``)."""

    skill_ratio: float | None = SKILL_RATIO
    explore_above: float | None = EXPLORE_ABOVE
    explore_fraction: float = EXPLORE_FRACTION
    n_initial: int = 0
    min_skill_n: int = MIN_SKILL_N
    skill_score: str = SKILL_SCORE
    warmup: str = WARMUP
    skill_mix: bool = SKILL_MIX
    warmup_dedup: float | None = WARMUP_DEDUP
    refit_growth: float | None = REFIT_GROWTH
    cost_power: float = COST_POWER
    model_cost_power: float = MODEL_COST_POWER
    acq_inflation: float = ACQ_INFLATION
    utility: str = UTILITY
    fit_max_iter: int = FIT_MAX_ITER
    descriptor: str = DEFAULT_DESCRIPTOR
    fit_starts: int = N_FIT_STARTS
    lengthscale_prior: tuple[float, float] | str | None = LENGTHSCALE_PRIOR
    acq_spread: str = ACQ_SPREAD

    def __post_init__(self) -> None:  # a result file's JSON list back to the tuple
        if self.lengthscale_prior is not None and self.lengthscale_prior != "auto":
            object.__setattr__(self, "lengthscale_prior", tuple(float(v) for v in self.lengthscale_prior))

    @property
    def label(self) -> str:
        gate = "no skill test" if self.skill_ratio is None else f"skill<={self.skill_ratio:g}"
        if self.skill_ratio is not None and self.min_skill_n != LEGACY_MIN_SKILL_N:
            gate += f" from n={self.min_skill_n}"
        if self.skill_ratio is not None and self.skill_score != "mae":
            gate += f" by {self.skill_score}"
        if self.skill_ratio is not None and self.warmup != "cost":
            gate += f", warm-up {self.warmup}"
        if self.skill_ratio is not None and self.skill_mix:
            gate += ", else pseudo-BMA mix"
        if self.skill_ratio is not None and self.warmup_dedup is not None:
            gate += f", warm-up skips near-duplicates (q{self.warmup_dedup:g})"
        if self.refit_growth is not None:
            gate += f", hyperparameters refitted at +{self.refit_growth:.0%}"
        if self.cost_power != 1.0:
            gate += f", cost^{self.cost_power:g}"
        if self.model_cost_power != 1.0:
            gate += f", model picks cost^{self.model_cost_power:g}"
        if self.acq_inflation != 1.0:
            gate += f", model picks spread x{self.acq_inflation:g}"
        if self.acq_spread != ACQ_SPREAD:
            gate += f", model picks spread by {self.acq_spread}"
        if self.fit_max_iter != FIT_MAX_ITER:
            gate += f", MLL fit maxiter {self.fit_max_iter}"
        if self.utility != UTILITY:
            gate += f", picks by {self.utility}/cost"
        if self.descriptor != DEFAULT_DESCRIPTOR:
            gate += f", dimer descriptor {self.descriptor}"
        if self.fit_starts != N_FIT_STARTS:
            gate += f", {self.fit_starts} fit starts"
        if self.lengthscale_prior != LENGTHSCALE_PRIOR:
            gate += (", BoTorch lengthscale prior" if self.lengthscale_prior is None
                     else ", lengthscale prior by LOO" if self.lengthscale_prior == "auto"
                     else ", lengthscale prior shift {:g} spread {:g}".format(*self.lengthscale_prior))
        expl = "no explore" if self.explore_above is None else f"explore {self.explore_above:g}/{self.explore_fraction:g}"
        return f"{gate}, {expl}" + (f", init {self.n_initial}" if self.n_initial else "")

    def toml(self) -> str:
        return ("{" + f"explore = {str(self.explore_above is not None).lower()}, "
                f"explore_above = {self.explore_above or EXPLORE_ABOVE!r}, "
                f"explore_fraction = {self.explore_fraction!r}, "
                f"skill_test = {str(self.skill_ratio is not None).lower()}, "
                f"skill_ratio = {self.skill_ratio or SKILL_RATIO!r}, n_initial = {self.n_initial}" + "}")


@dataclass
class Case:
    """One landscape as the benchmark replays it."""

    path: Path
    cheap: str
    expensive: str
    name: str
    ids: list[str]
    e_cheap: np.ndarray
    e_exp: np.ndarray
    smiles: str
    cpu_s: np.ndarray | None  # stored CPU s of each expensive calculation
    costs: np.ndarray  # relative prior cost per structure (mean 1)
    fragment: bool  # the replay declares a fragment-DFT decomposition
    window_kjmol: float = WINDOW_KJMOL  # the campaign's window_kjmol, and the target set's
    data_digest: str = ""  # of everything in the data that decides a run (:func:`data_digest`)

    @property
    def top(self) -> set[int]:
        """The target: the low-energy set the campaign is told to find (the ``TOP_K`` lowest
        expensive energies within ``window_kjmol`` of the minimum), the same definition as
        the agent's (:func:`agent.refine_acquisition.low_energy_set`)."""
        return low_energy_set(self.e_exp, TOP_K, self.window_kjmol)


def load_case(path: Path, cheap: str, expensive: str, surrogate: str = "auto",
              window_kjmol: float = WINDOW_KJMOL, smiles: str | None = None) -> Case:
    """The landscape at ``path`` through the replay backends' own reader (structures without
    a finite energy at ``cheap`` or ``expensive`` dropped with a warning). ``smiles``: the
    molecule (``--smiles``) where the directory has no ``run.json`` with ``"smiles"``; it must
    match the structures' atoms.

    Raises:
        LandscapeError: one line, for anything the benchmark cannot run on.
    """
    from sim_backends.base import EvalInput, SetupError
    from sim_backends.replay import ReplayCrystalBackend, stored_landscape

    if not Path(path).is_dir():
        raise LandscapeError(f"landscape directory not found: {path}")
    try:
        land = stored_landscape(str(Path(path).resolve()), cheap, expensive)
    except SetupError as exc:
        raise LandscapeError(str(exc)) from None
    if smiles and land["smiles"] and _canonical(smiles) != _canonical(land["smiles"]):
        raise LandscapeError(f"{land['name']}: --smiles {smiles} is not the molecule of {Path(path) / 'run.json'} "
                             f"({land['smiles']})")
    smiles = land["smiles"] or smiles or STAND_IN_SMILES.get(land["name"])
    if smiles is None:
        raise LandscapeError(f"{land['name']}: the molecule is not known: give --smiles SMILES or put a run.json "
                             f'into {path}: {{"smiles": "..."}}')
    _check_formula(land, smiles)
    n_min = TOP_K + MIN_EXTRA_STRUCTURES
    if len(land["ids"]) < n_min:
        raise LandscapeError(f"{land['name']}: only {len(land['ids'])} structures with finite energies at {cheap} "
                             f"and {expensive}; the benchmark needs at least {n_min} (top {TOP_K} + "
                             f"{MIN_EXTRA_STRUCTURES})")
    fragment = land["fragment_settings"] is not None and surrogate != "soap"
    if surrogate == "fragment" and not fragment:
        raise LandscapeError(f"{land['name']}: no fragment DFT records (dft_results.jsonl with dimers, run.json)")
    replay = ReplayCrystalBackend(landscape=str(path), cheap=cheap, level=expensive, fragment=fragment)
    prior = np.array([replay.cost_estimate(EvalInput(smiles, structure_cif=c, structure_id=f"m1-{i}"))
                      for i, c in zip(land["ids"], land["cifs"])])
    case = Case(Path(path), cheap, expensive, land["name"], list(land["ids"]), np.asarray(land["cheap_kjmol"]),
                np.asarray(land["level_kjmol"]), smiles,
                None if land["cpu_s"] is None else np.asarray(land["cpu_s"]), prior / prior.mean(), fragment,
                float(window_kjmol))
    case.data_digest = data_digest(case, land["geometry_digest"], land["dimers"] if fragment else None)
    return case


def _canonical(smiles: str) -> str:
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise LandscapeError(f"SMILES {smiles!r} does not parse")
    return Chem.MolToSmiles(mol)


def _formula(smiles: str) -> dict[str, int]:
    """Element -> count of the molecule, hydrogens included (one-line error for a bad SMILES)."""
    from collections import Counter

    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise LandscapeError(f"SMILES {smiles!r} does not parse")
    return dict(Counter(a.GetSymbol() for a in Chem.AddHs(mol).GetAtoms()))


def _formula_text(counts: dict[str, int]) -> str:
    return "".join(f"{el}{counts[el] if counts[el] > 1 else ''}" for el in sorted(counts))


def _check_formula(land: dict, smiles: str) -> None:
    """Every structure's cell holds a whole number of ``smiles`` molecules (the stage takes the
    atoms per molecule from the SMILES)."""
    mol = _formula(smiles)
    n_mol = sum(mol.values())
    for sid, cell in zip(land["ids"], land["formulas"]):
        k = sum(cell.values()) / n_mol
        if not (k >= 1 and k == int(k) and all(cell.get(el, 0) == k * c for el, c in mol.items())
                and set(cell) <= set(mol)):
            raise LandscapeError(f"{land['name']}: SMILES {smiles} ({_formula_text(mol)}, {n_mol} atoms) does not fit "
                                 f"structure {sid} ({_formula_text(cell)} per cell, {sum(cell.values())} atoms)")


def data_digest(case: Case, geometry_digest: str, dimers: dict | None) -> str:
    """Digest of what in the data decides a run on ``case``: the two level names, the structure
    ids in order, both levels' energies (1e-6 kJ/mol), the stored CPU seconds, the SMILES of the
    pool entry, the cheap-level geometries, the prior cost estimates (relative) and, for the
    fragment surrogate, the stored dimer records. A recorded run is reused only under the same
    digest (:func:`_read_progress`)."""
    import hashlib

    def fmt(values, digits):
        return None if values is None else [f"{float(v):.{digits}f}" for v in values]

    blob = {"levels": [case.cheap, case.expensive], "ids": list(case.ids), "cheap": fmt(case.e_cheap, 6),
            "expensive": fmt(case.e_exp, 6), "cpu_s": fmt(case.cpu_s, 3), "smiles": case.smiles,
            "geometry": geometry_digest, "fragment": bool(case.fragment),
            # the prior cost estimates the agent weighs its picks by (the replay's cost model)
            "prior_costs": fmt(case.costs, 4),
            "dimers": None if dimers is None else hashlib.sha1(json.dumps(dimers, sort_keys=True).encode()).hexdigest()}
    return hashlib.sha1(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def default_levels(path: Path) -> tuple[str, str] | None:
    """The landscape's own (cheap, expensive) pair: ``levels.json`` (the first expensive level of
    a list), target_I's MACE -> PBE_MBD, else None."""
    meta = Path(path) / "levels.json"
    if meta.is_file():
        try:
            info = json.loads(meta.read_text())
            exp = info["expensive"]
            return str(info["cheap"]), str(exp[0] if isinstance(exp, list) else exp)
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return None
    for p, c, e in DEFAULT:
        if Path(path).resolve() == p.resolve():
            return c, e
    return None


class _FragmentTermsOnce:
    """Computes the fragment terms of a landscape once per process (the stage would
    recompute the same pure function in every campaign run) and records the CPU seconds
    of the first computation, which the table counts against the agent."""

    def __init__(self) -> None:
        import sim_backends.fragment_terms as ft

        self.module, self.real = ft, ft.landscape_fragment_terms
        self.cache: dict[tuple, tuple[list, float]] = {}
        #: the dimer descriptor of the terms (``--descriptor``; set per run by :func:`run_agent`)
        self.descriptor = DEFAULT_DESCRIPTOR
        ft.landscape_fragment_terms = self

    def __call__(self, crystals, cutoff_A, cutoff_mode="contact", functional="pbe", progress=None,
                 baselines=DEFAULT_BASELINES):
        key = (tuple(np.asarray(c.atoms.cell).tobytes() + c.atoms.positions.tobytes() for c in crystals[:3]), len(crystals),
               cutoff_A, cutoff_mode, functional, tuple(baselines), self.descriptor)
        if key not in self.cache:
            c0 = time.process_time()
            terms = self.real(crystals, cutoff_A, cutoff_mode, functional, progress=progress, baselines=baselines,
                              descriptor=self.descriptor)
            self.cache[key] = (terms, time.process_time() - c0)
        return self.cache[key][0]

    def cpu_s(self) -> float:
        return float(sum(c for _, c in self.cache.values()))


FRAGMENT_TERMS: _FragmentTermsOnce | None = None


def campaign_config(case: Case, q: int, seed: int, settings: AgentSettings, baselines,
                    max_structures: int | None = None) -> str:
    """The campaign TOML of one run (one molecule; its structure stage on the replays of the
    ``max_structures`` lowest cheap-level structures, default all)."""
    n = min(len(case.ids), max_structures or len(case.ids))
    land = f'landscape = "{case.path.resolve()}", cheap = "{case.cheap}", level = "{case.expensive}"'
    return f"""name = "refinement"
pool = "pool.smi"
objective = "n_heavy_atoms"
batch_size = {q}
seed = {seed}
max_evaluations = {n + 2}
[surrogate]
n_initial = 1
[tracking]
enabled = false
[[backends]]
name = "diagnostic"
[structures]
enabled = true
budget_evaluations = {n + 1}
max_structures = {n}
top_k = {TOP_K}
window_kjmol = {case.window_kjmol}
dimer_baselines = {json.dumps(list(baselines))}
acquisition = {settings.toml()}
csp = {{name = "replay-csp", params = {{{land}, n = {n}}}}}
refine = {{name = "replay-crystal", params = {{{land}, fragment = {str(case.fragment).lower()}}}}}
"""


def run_agent(case: Case, q: int, seed: int, settings: AgentSettings = AgentSettings(),
              baselines=DEFAULT_BASELINES, with_mae: bool = True, progress=None,
              stop_after: int | None = None, max_structures: int | None = None,
              past_completion: int = 0) -> dict:
    """One run of the real campaign on ``case`` until the true low-energy set is computed (or
    ``stop_after`` structures, for tests; ``max_structures``: replay only the lowest ones).
    With ``past_completion`` = N the campaign goes on after completion until every stop rule
    of the calibration (:data:`STOP_INFLATIONS` x :data:`STOP_LEVELS`) has fired, N more
    calculations were told, or the landscape is exhausted.

    The loop is ``run_campaign``'s (ask for the free slots of ``batch_size`` = ``q``, run
    the oldest task in flight, tell its result, repeat) with the stop "true low-energy set
    computed" added; every decision is the structure stage's.

    Returns:
        dict with ``order`` (landscape indices in the order their results were told),
        ``mae`` (per computed fraction the tuple of :func:`surrogate_mae`), ``decision_s``
        (wall s per ask), ``n_at`` (computed count at each decision), ``p_complete``
        (inflation -> P(top 10 complete) at each decision with >= TOP_K computed, None
        before), ``skill`` (model / shift LOO MAE ratio at each decision, None when
        undefined) and ``decisions`` (the stored (backend, structure id) of every evaluation).
    """
    from agent.campaign import Campaign
    from agent.config import load_config
    from agent.local_executor import LocalExecutor

    top = case.top
    index = {sid: k for k, sid in enumerate(case.ids)}
    n = len(case.ids)
    low = np.flatnonzero(case.e_exp - case.e_exp.min() <= min(WINDOW_KJMOL, case.window_kjmol))
    marks = {f: max(1, math.ceil(f * n)) for f in FRACTIONS}
    out = {"order": [], "mae": {}, "decision_s": [], "n_at": [], "skill": [],
           "p_complete": {k: [] for k in STOP_INFLATIONS}}
    import agent.refine_acquisition as acq
    import agent.surrogates.fragment_gp as fgp

    acq_values = {"MIN_SKILL_N": settings.min_skill_n, "SKILL_SCORE": settings.skill_score, "WARMUP": settings.warmup,
                  "SKILL_MIX": settings.skill_mix, "WARMUP_DEDUP": settings.warmup_dedup,
                  "COST_POWER": settings.cost_power, "MODEL_COST_POWER": settings.model_cost_power,
                  "ACQ_INFLATION": settings.acq_inflation, "UTILITY": settings.utility,
                  "ACQ_SPREAD": settings.acq_spread}
    global FRAGMENT_TERMS
    if FRAGMENT_TERMS is None and settings.descriptor != DEFAULT_DESCRIPTOR:
        FRAGMENT_TERMS = _FragmentTermsOnce()  # the stage's call gets the descriptor through it
    terms_descriptor = (contextlib.nullcontext() if FRAGMENT_TERMS is None
                        else _restore(FRAGMENT_TERMS, {"descriptor": settings.descriptor}))
    with _restore(acq, acq_values), _restore(fgp, {"REFIT_GROWTH": settings.refit_growth, "FIT_MAX_ITER": settings.fit_max_iter,
                                                               "N_FIT_STARTS": settings.fit_starts,
                                                               "LENGTHSCALE_PRIOR": settings.lengthscale_prior}), \
            terms_descriptor, tempfile.TemporaryDirectory(prefix="refinement-") as tmp:
        tmp = Path(tmp)
        (tmp / "pool.smi").write_text(f"{case.smiles} {case.name}\n")
        (tmp / "campaign.toml").write_text(campaign_config(case, q, seed, settings, baselines, max_structures))
        cfg = load_config(tmp / "campaign.toml")
        campaign = Campaign.create(cfg, tmp / "runs")
        executor = LocalExecutor(slots=q)
        try:
            stage = campaign.stage
            while not _finished(out, top, past_completion) and len(out["order"]) < (stop_after or n):
                free = q - executor.n_in_flight
                if free > 0:
                    t0 = time.perf_counter()
                    tasks = campaign.ask(free)
                    land = next(iter(stage.landscapes.values()), None)
                    if land is not None and any(t.request.structure_id for t in tasks):
                        out["decision_s"].append(time.perf_counter() - t0)
                        _record_decision(out, case, land, stage, seed, settings)
                    for task in tasks:
                        executor.submit(task)
                if executor.n_in_flight == 0:
                    raise RuntimeError(f"{case.name}: the campaign proposed nothing before the low-energy set "
                                       f"were computed ({campaign.stop_reason()})")
                for done in executor.wait():
                    campaign.tell(done.task, done.result)
                    sid = done.task.request.structure_id
                    if sid is None:
                        continue
                    if not done.result.ok:
                        raise RuntimeError(f"{case.name}: replay failed for {sid}: {done.result.reason}")
                    was_complete = top <= set(out["order"])  # past completion: no MAE marks
                    out["order"].append(index[sid.split("-", 1)[1]])
                    land = next(iter(stage.landscapes.values()))
                    for f, m in marks.items():
                        if with_mae and not was_complete and len(out["order"]) == m and f not in out["mae"]:
                            out["mae"][f] = surrogate_mae(case, land, stage, low, seed, settings)
                    if progress is not None:
                        progress()
            out["decisions"] = [(ev.backend, ev.structure_id, ev.cpu_s) for ev in campaign.store.evaluations()]
        finally:
            executor.shutdown()
            campaign.close()
    return out


class _restore:
    """Sets module constants of the acquisition (or surrogate) module for one run and puts them
    back when it ends; remembered hyperparameter fits (``_KEPT_FITS``) are dropped at both ends,
    so no run reuses another run's."""

    def __init__(self, module, values: dict) -> None:
        self.module, self.values = module, dict(values)
        self.before = {k: getattr(module, k) for k in self.values}

    def __enter__(self):
        for k, v in self.values.items():
            setattr(self.module, k, v)
        getattr(self.module, "_KEPT_FITS", {}).clear()
        return self

    def __exit__(self, *exc) -> None:
        for k, v in self.before.items():
            setattr(self.module, k, v)
        getattr(self.module, "_KEPT_FITS", {}).clear()


def _finished(out: dict, top: set[int], past_completion: int) -> bool:
    """The run's end: the target set computed and, with ``past_completion`` = N, every stop
    rule fired or N calculations told after completion."""
    if not top <= set(out["order"]):
        return False
    if past_completion <= 0:
        return True
    if len(out["order"]) - count_until_top(out["order"], top) >= past_completion:
        return True
    return all(any(p is not None and p >= lvl for p in out["p_complete"][k])
               for k in STOP_INFLATIONS for lvl in STOP_LEVELS)


def stop_offset(run, level, inflation, top: set[int]):
    """Calculations computed when the rule "P(complete) >= ``level``" first fired minus the
    calculations at which the target set was complete (negative: premature, 0: at the first
    decision after completion); None when it never fired in the run."""
    n_complete = count_until_top(run["order"], top)
    for n_at, p in zip(run["n_at"], run["p_complete"][inflation]):
        if p is not None and p >= level:
            return n_at - n_complete
    return None


def _record_decision(out: dict, case: Case, land, stage, seed: int, settings: AgentSettings) -> None:
    """P(top 10 complete) and the skill ratio of the model the stage fitted for this decision."""
    model = land.model
    computed = dict(land.computed)
    out["n_at"].append(len(computed))
    ok = model is not None and land.model_computed == computed
    sk = surrogate_skill(model, land.ff_kjmol, computed, min_n=settings.min_skill_n,
                         with_lpd=True) if ok and computed else None
    out["skill"].append(sk.ratio if sk is not None else None)
    out.setdefault("skill_lpd", []).append(None if sk is None or sk.model_loo_lpd is None
                                           else [round(sk.model_loo_lpd, 4), round(sk.shift_loo_lpd, 4)])
    out.setdefault("skilled", []).append(None if sk is None else sk.skilled)
    ps = [None] * len(STOP_INFLATIONS)
    if ok and len(computed) >= TOP_K:
        ps = completion_probability(land.ff_kjmol, stage._inputs(land, model), computed, TOP_K, case.window_kjmol,
                                    seed=seed, model=model, skill_ratio=settings.skill_ratio,
                                    min_skill_n=settings.min_skill_n,
                                    inflation=list(STOP_INFLATIONS))
    for k, p in zip(STOP_INFLATIONS, ps):
        out["p_complete"][k].append(p)


def premature_stop(run, level, inflation, top: set[int]):
    """Calculations at which the rule "P(complete) >= ``level``" (checked at every recorded
    decision with at least ``TOP_K`` computed) first fires in ``run``, if the target set
    ``top`` is not complete among the ``n_at`` structures computed then; None when the rule
    never fires before completion or fires with ``top`` complete (the promise kept).
    ``run["order"]`` lists the computed structures in the order their results arrived, so
    the first ``n_at`` of it are the ones computed at that decision."""
    for n_at, p in zip(run["n_at"], run["p_complete"][inflation]):
        if p is not None and p >= level:
            return None if top <= set(run["order"][:n_at]) else n_at
    return None


def surrogate_mae(case: Case, land, stage, low, seed, settings: AgentSettings):
    """Quality of the stage's surrogate, fitted on what is computed now, on the uncomputed
    low-energy structures.

    Returns:
        ``(GP MAE, constant-shift MAE, fraction within the GP's 2-sigma interval,
        the GP's LOO calibration factor, 1.0 if the GP passes the skill test else 0.0)``;
        MAEs in kJ/mol per molecule.
    """
    ids = [sid.split("-", 1)[1] for sid in land.ids]
    pos = {sid: k for k, sid in enumerate(ids)}  # case index -> stage index through the id
    stage_low = np.array([pos[case.ids[i]] for i in low
                          if case.ids[i] in pos and pos[case.ids[i]] not in land.computed], dtype=int)
    if len(stage_low) == 0:
        return (float("nan"),) * 5
    e_exp = np.array([case.e_exp[case.ids.index(s)] for s in ids])
    gp = stage._fit_model(land, seed)
    mean, std = gp.predict(stage_low)  # a StructureSurrogate predicts by structure index
    idx = np.array(sorted(land.computed))
    shift = float(np.mean(e_exp[idx] - land.ff_kjmol[idx]))
    err = land.ff_kjmol[stage_low] + mean - e_exp[stage_low]
    skilled = settings.skill_ratio is None or surrogate_skill(gp, land.ff_kjmol, land.computed,
                                                              settings.skill_ratio, settings.min_skill_n).skilled
    return (float(np.mean(np.abs(err))),
            float(np.mean(np.abs(land.ff_kjmol[stage_low] + shift - e_exp[stage_low]))),
            float(np.mean(np.abs(err) <= 2.0 * std)),
            float(getattr(gp, "calibration", 1.0)),
            float(skilled))


def landscape_digest(ids) -> str:
    """Short digest of a landscape's structure ids in their stored order: a run's ``order``
    holds indices into that list, so a recorded run is reused only on the same list."""
    import hashlib

    return hashlib.sha1("\n".join(map(str, ids)).encode()).hexdigest()[:12]


def _read_progress(progress_path, name, digest: str | None = None, case: Case | None = None) -> dict:
    """Recorded runs of landscape ``name`` by (settings, q, seed). A record that stores the
    digest of another structure list (the landscape grew or changed) is skipped. With ``case``
    a record is taken only when it was run on the same data: its ``cheap``, ``expensive`` and
    ``data_digest`` (:func:`data_digest`) equal the case's; a record written before records
    carried them only at the landscape's own pair of :data:`LEGACY_DATA_DIGESTS` while the
    data still has the digest stored there. Without ``case`` (tests of the structure list):
    records written before structure-list digests were stored are taken as they are."""
    recorded: dict[tuple[str, int, int], dict] = {}
    if progress_path is None or not Path(progress_path).exists():
        return recorded
    legacy = LEGACY_DATA_DIGESTS.get(name)
    legacy_ok = case is not None and legacy == (case.cheap, case.expensive, case.data_digest)
    for line in Path(progress_path).read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:  # a line cut short by an interrupted run
            continue
        if rec.get("landscape") != name or rec.get("driver") != "campaign":  # not older loops' runs
            continue
        if digest is not None and rec.get("landscape_digest", digest) != digest:
            continue
        if case is not None and "data_digest" in rec:
            if (rec.get("cheap"), rec.get("expensive"), rec["data_digest"]) != (case.cheap, case.expensive,
                                                                                case.data_digest):
                continue
        elif case is not None and not legacy_ok:
            continue
        rec["p_complete"] = {float(k): v for k, v in rec["p_complete"].items()}
        rec["mae"] = {float(k): tuple(v) for k, v in rec["mae"].items()}
        recorded[(rec["settings"], rec["q"], rec["seed"])] = rec
    return recorded


_CODE_DIGEST: str | None = None
#: libraries whose version enters :func:`code_digest`
NUMERIC_PACKAGES = ("numpy", "scipy", "torch", "gpytorch", "botorch", "scikit-learn", "dscribe")


def code_digest() -> str:
    """Digest of the code a run executes: the bytes of every ``*.py`` under ``agent/`` and
    ``sim_backends/`` and of this script, by relative path, and the versions of the numerical
    libraries the decisions rest on (:data:`NUMERIC_PACKAGES`) and the CPU model: the same code on
    another torch build or processor (other vector kernels) can fit a GP that differs in the fourth
    digit and, some twenty picks on, pick differently. A recorded run
    made under another digest is reused only after a rerun of it under this one reproduced its
    picks (:func:`_recheck`)."""
    global _CODE_DIGEST
    if _CODE_DIGEST is None:
        import hashlib
        from importlib import metadata

        h = hashlib.sha1()
        for pkg in NUMERIC_PACKAGES:
            try:
                h.update(f"{pkg}=={metadata.version(pkg)}\n".encode())
            except metadata.PackageNotFoundError:
                h.update(f"{pkg} missing\n".encode())
        h.update(f"cpu {_cpu_model()}\n".encode())
        files = sorted([*(ROOT / "agent").rglob("*.py"), *(ROOT / "sim_backends").rglob("*.py"), Path(__file__)])
        for f in files:
            h.update(str(f.resolve().relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
        _CODE_DIGEST = h.hexdigest()[:16]
    return _CODE_DIGEST


def _cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo``; else :func:`platform.processor`)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def _commit() -> str | None:
    """The checkout's commit (``+`` when it has uncommitted changes), for the record; None outside
    git. Read once per process, as :func:`code_digest` is."""
    import subprocess

    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "agent", "sim_backends",
                                "benchmarks/refinement.py"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+" if dirty else "")


def _read_checks(progress_path, name: str, case: Case) -> set[tuple[str, int, str]]:
    """``(settings, q, code digest)`` of the recorded-run groups that a rerun under the current
    code (:func:`code_digest`) reproduced on this data (``driver: "check"`` lines of the progress
    file; records from before code digests were stored count as digest ``"legacy"``)."""
    checks: set[tuple[str, int, str]] = set()
    if progress_path is None or not Path(progress_path).exists():
        return checks
    current = code_digest()
    for line in Path(progress_path).read_text().splitlines():
        try:
            rec = json.loads(line) if line.strip() else {}
        except ValueError:
            continue
        if (rec.get("driver") == "check" and rec.get("landscape") == name and rec.get("code_digest") == current
                and rec.get("data_digest") == case.data_digest and rec.get("reproduced")):
            checks.add((rec["settings"], rec["q"], rec["verified_code"]))
    return checks


def _recheck(case: Case, needed: dict, recorded: dict, configs, batches, progress_path, digest: str, compute,
             console) -> int:
    """Keep only recorded runs that the current code still makes. The runs of ``needed`` (the
    recorded runs this invocation would reuse) recorded by other code (another
    :func:`code_digest`, or none) are grouped by (setting, batch size, their code); per group not
    yet checked under this code, its lowest seed is rerun with ``compute(settings, q, seed)``.
    Same picks up to completion: the group is reused, and a ``check`` line in the progress file
    says so, so it is not rerun next time. Other picks: the group's records are dropped from
    ``recorded`` (and recomputed by the caller) and the rerun replaces the checked record.
    Mutates ``recorded``; returns the number of reruns."""
    from rich.markup import escape

    current, top = code_digest(), case.top
    checks = _read_checks(progress_path, case.name, case)
    by_label = {c.label: c for c in configs}
    groups: dict[tuple[str, int, str], list[tuple]] = {}
    for key, rec in needed.items():
        label, q, _ = key
        made_by = rec.get("code_digest") or "legacy"
        if made_by != current and label in by_label and q in batches and (label, q, made_by) not in checks:
            groups.setdefault((label, q, made_by), []).append(key)
    for (label, q, made_by), keys in sorted(groups.items()):
        key = min(keys, key=lambda k: k[2])
        was = recorded[key]
        now = compute(by_label[label], q, key[2])
        n_was, n_now = count_until_top(was["order"], top), count_until_top(now["order"], top)
        same = n_was == n_now and list(was["order"][:n_was]) == list(now["order"][:n_now])
        one = len(keys) == 1
        where = (f"{case.name} [{label}] q={q}: {len(keys)} run{'' if one else 's'} recorded by "
                 f"{'older' if made_by == 'legacy' else 'other'} code (or another machine)")
        if same:
            console.log(escape(f"{where} {'reproduces' if one else 'reproduce'} (seed {key[2]} reruns pick for pick, {n_now} calculations): reused"))
            if progress_path is not None:
                with open(progress_path, "a") as fh:
                    fh.write(json.dumps({"driver": "check", "landscape": case.name, "landscape_digest": digest,
                                         "data_digest": case.data_digest, "settings": label, "q": q,
                                         "seed": key[2], "verified_code": made_by, "code_digest": current,
                                         "commit": _commit(), "reproduced": True}) + "\n")
            continue
        first = next((i for i, (a, b) in enumerate(zip(was["order"], now["order"])) if a != b),
                     min(len(was["order"]), len(now["order"])))
        console.log(escape(f"{where} no longer {'reproduces' if one else 'reproduce'} (seed {key[2]}: {n_now} calculations, recorded {n_was}; "
                           f"first different pick at {first + 1}): recomputed"))
        for k in keys:
            del recorded[k]
        recorded[key] = now
    return len(groups)


def run_landscape(path, cheap, expensive, seeds, batches, console, configs=(AgentSettings(),),
                  surrogate="auto", baselines=DEFAULT_BASELINES, grid_seeds=None, progress_path=None,
                  recorded_only=False, window_kjmol=WINDOW_KJMOL, past_completion=0, smiles=None,
                  fresh=False):
    """Run every setting of ``configs`` (the first is the reported agent) on one landscape.

    Returns:
        ``(name, result dict)``; ``result["grid"]`` holds, per setting label and batch size,
        the calculation counts per seed (settings after the first: the first ``grid_seeds``
        seeds only). ``progress_path``: a JSONL file that gets one line per finished run
        (with its fragment-term CPU seconds) and is read first, so a rerun resumes;
        ``recorded_only``: run nothing, report the runs recorded there. ``past_completion``:
        the default setting's runs go on after completion (:func:`run_agent`). ``fresh``:
        reuse no recorded run (new runs are still appended). One line on stderr says how
        many runs were taken from the progress file.
    """
    from rich.markup import escape
    from rich.progress import Progress
    from rich.table import Table

    global FRAGMENT_TERMS
    case = load_case(path, cheap, expensive, surrogate, window_kjmol, smiles)
    n, top = len(case.ids), case.top
    digest = landscape_digest(case.ids)
    recorded = {} if fresh else _read_progress(progress_path, case.name, digest, case)
    n_reused = n_runs = n_rechecked = 0
    if FRAGMENT_TERMS is None:
        FRAGMENT_TERMS = _FragmentTermsOnce()
    cpu_before = FRAGMENT_TERMS.cpu_s()
    baseline_cpu_s = max((r.get("baseline_cpu_s", 0.0) for r in recorded.values()), default=0.0)
    cheap_list = [int(i) for i in np.argsort(case.e_cheap, kind="stable")]
    cheap_order = count_until_top(cheap_list, top)
    random_orders = [list(np.random.default_rng(1000 + s).permutation(n)) for s in range(25)]
    random_counts = [count_until_top(o, top) for o in random_orders]
    r_med = float(np.median(random_counts))
    cpu = case.cpu_s

    def cpu_until(order):
        return float(np.sum(cpu[order[: count_until_top(order, top)]])) if cpu is not None else None

    default = configs[0]
    runs: dict[str, dict[int, list[dict]]] = {c.label: {q: [] for q in batches} for c in configs}

    def compute(c: AgentSettings, q: int, s: int, advance) -> dict:
        """One run under the current code, scored and appended to the progress file."""
        nonlocal baseline_cpu_s
        t0 = time.perf_counter()
        run = run_agent(case, q, s, c, baselines, with_mae=(c == default and q == batches[0]),
                        progress=advance, past_completion=past_completion if c == default else 0)
        if case.fragment and FRAGMENT_TERMS.cpu_s() > cpu_before:
            baseline_cpu_s = FRAGMENT_TERMS.cpu_s() - cpu_before
        run["wall_s"] = round(time.perf_counter() - t0, 1)
        run["count"] = count_until_top(run["order"], top)
        run["cpu_s"] = cpu_until(run["order"])
        run["baseline_cpu_s"] = baseline_cpu_s
        run["last_found_cheap_rank"] = cheap_list.index(run["order"][run["count"] - 1])
        run["code_digest"], run["commit"] = code_digest(), _commit()
        if progress_path is not None:
            with open(progress_path, "a") as fh:
                fh.write(json.dumps({**run, "driver": "campaign", "landscape": case.name,
                                     "landscape_digest": digest, "n_structures": n,
                                     "cheap": case.cheap, "expensive": case.expensive,
                                     "data_digest": case.data_digest,
                                     "settings": c.label, "q": q,
                                     "seed": s, "order": [int(i) for i in run["order"]],
                                     "p_complete": {str(k): v for k, v in run["p_complete"].items()},
                                     "mae": {str(k): v for k, v in run["mae"].items()}}) + "\n")
        after = f" (+{len(run['order']) - run['count']} after completion)" if past_completion else ""
        console.log(escape(f"{case.name} q={q} seed={s} [{c.label}]: {run['count']} calculations{after}, "
                           f"{run['wall_s']:.0f} s wall"))
        return run

    # seed-major, so a partial run has both batch sizes for its seeds; the grid's other settings:
    # first batch size, first seeds
    wanted = [(c, q, s) for s in range(seeds) for q in batches for c in configs
              if c == default or (q == batches[0] and (grid_seeds is None or s < grid_seeds))]
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task(f"{case.name} campaigns", total=None)
        if recorded and not recorded_only:
            needed = {(c.label, q, s) for c, q, s in wanted}
            n_rechecked = _recheck(case, {k: v for k, v in recorded.items() if k in needed}, recorded, configs,
                                   batches, progress_path, digest,
                                   lambda c, q, s: compute(c, q, s, lambda: prog.advance(task)), console)
        for c, q, s in wanted:
            n_runs += 1
            if (c.label, q, s) in recorded:  # scored against this case's target set
                n_reused += 1
                run = recorded[(c.label, q, s)]
                run["count"] = count_until_top(run["order"], top)
                run["cpu_s"] = cpu_until(run["order"])
                run["last_found_cheap_rank"] = cheap_list.index(run["order"][run["count"] - 1])
                runs[c.label][q].append(run)
                continue
            if recorded_only:
                continue
            runs[c.label][q].append(compute(c, q, s, lambda: prog.advance(task)))
    if progress_path is not None:
        print(f"{case.name} ({cheap} -> {expensive}): {n_reused} of {n_runs} runs reused from {progress_path}"
              + (f" ({n_rechecked} reruns checked whether runs recorded by other code still reproduce)"
                 if n_rechecked else "")
              + ("" if fresh or not n_reused else " (--fresh to recompute)"), file=sys.stderr, flush=True)
    dflt = runs[default.label]
    q0 = batches[0]
    if not dflt[q0]:
        return case.name, None
    batches = [q for q in batches if dflt[q]]  # a partial (recorded-only) result: what was run
    best = min(cheap_order, r_med)
    table = Table(title=escape(f"{case.name}: calculations until the true low-energy set ({len(top)} structures: "
                               f"the {TOP_K} lowest within {case.window_kjmol:g} kJ/mol) is computed "
                               f"({cheap} -> {expensive}, {n} structures), agent [{default.label}]"))
    for col in ("method", "median", "all runs", "ratio to min(cheap, random)"):
        table.add_column(col)
    table.add_row("oracle", str(len(top)), "", f"{len(top) / best:.2f}")
    table.add_row("cheap-level order", str(cheap_order), "", f"{cheap_order / best:.2f}")
    table.add_row(f"random (median of {len(random_counts)})", f"{r_med:.0f}", "", f"{r_med / best:.2f}")
    for q in batches:
        counts = [r["count"] for r in dflt[q]]
        table.add_row(f"agent q={q} ({len(counts)} seeds)", f"{np.median(counts):.0f}",
                      " ".join(map(str, counts)), f"{np.median(counts) / best:.2f}")
    console.print(table)
    maes = {f: [tuple(r["mae"][f]) for r in dflt[q0] if f in r["mae"]] for f in FRACTIONS}
    mt = Table(title=f"{case.name}: MAE (kJ/mol per molecule) on uncomputed structures within "
               f"{WINDOW_KJMOL:g} kJ/mol of the minimum, agent q={q0}")
    for col in ("computed fraction", "n computed", "surrogate", "constant shift", "ratio",
                "within 2 sigma", "LOO calibration", "skill test passed"):
        mt.add_column(col)
    for f in FRACTIONS:
        vals = [v for v in maes[f] if np.isfinite(v[0])]
        if not vals:
            continue
        gp_mae, base = np.median([v[0] for v in vals]), np.median([v[1] for v in vals])
        mt.add_row(f"{f:.0%}", str(max(1, math.ceil(f * n))), f"{gp_mae:.2f}", f"{base:.2f}",
                   f"{gp_mae / base:.2f}", f"{np.median([v[2] for v in vals]):.0%}",
                   f"{np.median([v[3] for v in vals]):.2f}", f"{np.mean([v[4] for v in vals]):.0%} of runs")
    console.print(mt)
    all_default = [r for q in batches for r in dflt[q]]
    decision_s = [t for r in all_default for t in r["decision_s"]]
    at10 = [v for v in maes[0.10] if np.isfinite(v[0])]
    calib = {}
    for k in STOP_INFLATIONS:
        for lvl in STOP_LEVELS:
            stops = [premature_stop(r, lvl, k, top) for r in all_default]
            calib[f"{k:g}@{lvl:g}"] = {"runs": len(stops),
                                      "complete_at_stop": sum(x is None for x in stops),
                                      "premature_stop_at": [x for x in stops if x is not None]}
    after = {}  # runs that went on past completion (--past-completion): when each rule fired
    if any(len(r["order"]) > r["count"] for r in all_default):
        for k in STOP_INFLATIONS:
            for lvl in STOP_LEVELS:
                offs = [stop_offset(r, lvl, k, top) for r in all_default]
                fired = [o for o in offs if o is not None]
                after[f"{k:g}@{lvl:g}"] = {
                    "runs": len(offs), "fired": len(fired), "complete_when_fired": sum(o >= 0 for o in fired),
                    "offsets": offs, "extra_after_completion": [len(r["order"]) - r["count"] for r in all_default]}
    grid = {c.label: {str(q): [r["count"] for r in runs[c.label][q]] for q in batches} for c in configs}
    agent_cpu = [r["cpu_s"] for r in dflt[q0] if r["cpu_s"] is not None]
    baseline_cpu_s = max([baseline_cpu_s] + [r.get("baseline_cpu_s", 0.0) for r in all_default])
    return case.name, {
        "levels": f"{cheap} -> {expensive}",
        "n_structures": n,
        "driver": "agent.campaign.Campaign + LocalExecutor, replay-csp/replay-crystal",
        "surrogate": "fragment-dimer-gp" if case.fragment else "soap-delta-gp",
        "dimer_baselines": list(baselines) if case.fragment else [],
        "settings": default.label,
        "agent": float(np.median([r["count"] for r in dflt[q0]])),
        "agent_by_batch": {str(q): float(np.median([r["count"] for r in dflt[q]])) for q in batches},
        "agent_runs": {str(q): [r["count"] for r in dflt[q]] for q in batches},
        "cheap_order": cheap_order,
        "random": r_med,
        "oracle": len(top),
        "window_kjmol": case.window_kjmol,
        "n_target": len(top),
        "ratio_to_best_baseline": {str(q): round(float(np.median([r["count"] for r in dflt[q]])) / best, 3)
                                   for q in batches},
        "expensive_cpu_s_until_top10": None if cpu is None else {
            "agent": round(float(np.median(agent_cpu)), 1),
            "agent_incl_baselines": round(float(np.median(agent_cpu)) + baseline_cpu_s, 1),
            "cheap_order": round(cpu_until(cheap_list), 1),
            "random": round(float(np.median([cpu_until(o) for o in random_orders])), 1)},
        "baseline_cpu_s": round(baseline_cpu_s, 1),
        "relative_cost_until_top10": {
            "agent": round(float(np.median([cost_until_top(r["order"], top, case.costs) for r in dflt[q0]])), 2),
            "cheap_order": round(cost_until_top(cheap_list, top, case.costs), 2),
            "random": round(float(np.median([cost_until_top(o, top, case.costs) for o in random_orders])), 2)},
        "mae_at_10pct_kjmol": round(float(np.median([v[0] for v in at10])), 3) if at10 else None,
        "shift_mae_at_10pct_kjmol": round(float(np.median([v[1] for v in at10])), 3) if at10 else None,
        "within_2sigma_at_10pct": round(float(np.median([v[2] for v in at10])), 3) if at10 else None,
        "last_found_cheap_rank": float(np.median([r["last_found_cheap_rank"] for r in dflt[q0]])),
        "decision_s_median": round(float(np.median(decision_s)), 3) if decision_s else None,
        "run_wall_s_median": round(float(np.median([r.get("wall_s", 0.0) for r in all_default])), 1),
        "stop_calibration": calib,
        **({"stop_after_completion": after} if after else {}),
        "grid": grid,
        "grid_seeds": grid_seeds if len(configs) > 1 else None,
    }


def leave_one_landscape_out(results: dict, configs, batches) -> dict:
    """Settings chosen on all other landscapes, measured on the held-out one.

    Score of a setting on a landscape: log(agent median / min(cheap order, random)) at the
    first batch size (the one the grid replays); the chosen setting minimises the mean score
    over the other landscapes. ``chosen_minimax`` is the choice by the issue's worst-case
    contract instead: the smallest largest ratio agent / cheap order over the other landscapes
    (ties: the mean score, then the grid's order).
    The stop inflation: the smallest of :data:`STOP_INFLATIONS` whose rule "P >= 0.9" left
    the top set complete in at least 90 % of the other landscapes' runs (pooled).
    """
    names = list(results)
    results = {m: results[m] for m in names}

    def counts(name, label, q):  # the seeds every setting ran
        grid = results[name]["grid"]
        n_common = min(len(v.get(str(q), [])) for v in grid.values())
        return grid[label][str(q)][:n_common]

    names = [m for m in names if counts(m, configs[0].label, batches[0])]

    def score(label, name):
        r = results[name]
        best = min(r["cheap_order"], r["random"])
        return float(np.log(np.median(counts(name, label, batches[0])) / best))

    def achieved(k, pool):
        cells = [results[m]["stop_calibration"][f"{k:g}@0.9"] for m in pool]
        return sum(c["complete_at_stop"] for c in cells) / max(1, sum(c["runs"] for c in cells))

    def worst(label, pool):  # the contract: agent / cheap order on every landscape
        return max(float(np.median(counts(m, label, batches[0]))) / results[m]["cheap_order"] for m in pool)

    out = {}
    for held in names:
        others = [m for m in names if m != held]
        if not others:
            break
        chosen = min(configs, key=lambda c: (np.mean([score(c.label, m) for m in others]), configs.index(c)))
        minimax = min(configs, key=lambda c: (round(worst(c.label, others), 6),
                                              np.mean([score(c.label, m) for m in others]), configs.index(c)))
        in_sample = min(configs, key=lambda c: (score(c.label, held), configs.index(c)))
        kappa = next((k for k in STOP_INFLATIONS if achieved(k, others) >= 0.9), STOP_INFLATIONS[-1])
        r = results[held]
        out[held] = {
            "chosen": chosen.label,
            "agent_lolo": {str(q): float(np.median(counts(held, chosen.label, q))) for q in batches[:1]},
            "chosen_minimax": minimax.label,
            "agent_lolo_minimax": {str(q): float(np.median(counts(held, minimax.label, q))) for q in batches[:1]},
            "worst_ratio_to_cheap_on_others": {c.label: round(worst(c.label, others), 3) for c in configs},
            "in_sample_best": in_sample.label,
            "agent_in_sample": {str(q): float(np.median(counts(held, in_sample.label, q))) for q in batches[:1]},
            "default_same_seeds": {str(q): float(np.median(counts(held, configs[0].label, q))) for q in batches[:1]},
            "stop_inflation_lolo": kappa,
            "stop_achieved_lolo": round(achieved(kappa, [held]), 3),
            "seeds": len(counts(held, configs[0].label, batches[0])),  # seeds every setting ran here
        }
    return out


def result_stems(args, cases, baselines, explore) -> tuple[str, str]:
    """``(result stem, progress stem)``: ``refinement`` only for the default run over every
    known landscape; any non-default argument adds its own suffix (module docstring)."""
    stem = "refinement"
    if args.landscape:  # a chosen subset must not overwrite the all-landscapes result
        # a pair of levels other than the landscape's own must not overwrite its result either
        stem += "_" + "_".join(_landscape_name(p, c, e) + ("" if default_levels(p) == (c, e) else f"_{c}-{e}")
                               for p, c, e in cases)
    if args.surrogate != "auto":
        stem += f"_{args.surrogate}"
    if baselines != DEFAULT_BASELINES:
        stem += "_baselines-" + ("+".join(baselines) or "none")
    if args.no_explore:
        stem += "_no_explore"
    elif explore != (EXPLORE_ABOVE, EXPLORE_FRACTION):
        stem += f"_explore{explore[0]:g}-{explore[1]:g}"
    if args.no_skill_test:
        stem += "_no_skill_test"
    elif args.skill_ratio != SKILL_RATIO:
        stem += f"_skill{args.skill_ratio:g}"
    if args.skill_mix != SKILL_MIX:
        stem += "_mix" if args.skill_mix else "_no_mix"
    if args.warmup != WARMUP:
        stem += f"_warmup-{args.warmup}"
    if args.cost_power != COST_POWER:
        stem += f"_costpow{args.cost_power:g}"
    if args.acq_inflation != ACQ_INFLATION:
        stem += f"_acqinfl{args.acq_inflation:g}"
    if args.acq_spread != ACQ_SPREAD:
        stem += f"_acqspread-{args.acq_spread}"
    if args.model_cost_power != MODEL_COST_POWER:
        stem += f"_modelcostpow{args.model_cost_power:g}"
    if args.fit_max_iter != FIT_MAX_ITER:
        stem += f"_maxiter{args.fit_max_iter}"
    if args.utility != UTILITY:
        stem += f"_utility-{args.utility}"
    if args.descriptor != DEFAULT_DESCRIPTOR:
        stem += f"_desc-{args.descriptor}"
    if args.fit_starts != N_FIT_STARTS:
        stem += f"_starts{args.fit_starts}"
    if args.lengthscale_prior != LENGTHSCALE_PRIOR:
        stem += ("_lsprior-botorch" if args.lengthscale_prior is None
                 else "_lsprior-auto" if args.lengthscale_prior == "auto"
                 else "_lsprior{:g},{:g}".format(*args.lengthscale_prior))
    if args.refit_growth != REFIT_GROWTH:
        stem += "_no_refit_growth" if args.refit_growth is None else f"_refit{args.refit_growth:g}"
    if args.warmup_dedup != WARMUP_DEDUP:
        stem += "_no_dedup" if args.warmup_dedup is None else f"_dedup{args.warmup_dedup:g}"
    if args.skill_score != SKILL_SCORE:
        stem += f"_{args.skill_score}"
    if args.min_skill_n != MIN_SKILL_N:
        stem += f"_skilln{args.min_skill_n}"
    if args.n_initial:
        stem += f"_init{args.n_initial}"
    if args.window != WINDOW_KJMOL:
        stem += f"_window{args.window:g}"
    if args.past_completion:
        stem += f"_past{args.past_completion}"
    if getattr(args, "fresh", False):  # never appends to (or overwrites) the recorded runs' files
        stem += "_fresh"
    progress_stem = stem  # runs are keyed by settings, batch size and seed: more seeds resume
    if args.seeds != 7:
        stem += f"_seeds{args.seeds}"
    if (args.batch or [1, 4]) != [1, 4]:
        stem += "_q" + "-".join(map(str, args.batch))
    if args.grid:
        stem += "_grid"
    return stem, progress_stem


def _landscape_name(path, cheap: str, expensive: str) -> str:
    """The name (file prefix) of the landscape at ``path`` read at these levels."""
    from sim_backends.base import SetupError
    from sim_backends.replay import stored_landscape

    if not Path(path).is_dir():
        raise LandscapeError(f"landscape directory not found: {path}")
    try:
        return stored_landscape(str(Path(path).resolve()), cheap, expensive)["name"]
    except SetupError as exc:
        raise LandscapeError(str(exc)) from None


def main(argv: list[str] | None = None) -> dict:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=LAYOUT_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--landscape", action="append", type=Path, metavar="DIR",
                        help="a landscape directory in the table layout (see below); repeat for several, each with "
                             "its --cheap and --expensive (default: target_I and every data/landscapes/*)")
    parser.add_argument("--cheap", action="append", metavar="LEVEL",
                        help="the cheap level L of --landscape (its dE_L_kJmol_per_mol column and NAME_L.extxyz): "
                             "the order the campaign starts from")
    parser.add_argument("--expensive", action="append", metavar="LEVEL",
                        help="the expensive level of --landscape: the energies the campaign pays for and is scored on")
    parser.add_argument("--smiles", action="append", metavar="SMILES",
                        help="the molecule of --landscape (once per --landscape) when its directory has no run.json "
                             'with {"smiles": "..."}; checked against the atoms of the structures')
    parser.add_argument("--fresh", action="store_true",
                        help="reuse no recorded run: compute every run, written to <result name>_fresh_progress.jsonl "
                             "and <result name>_fresh.json (the recorded runs' files are left alone)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", metavar="DIR",
                        help="directory of the result and progress files (default benchmarks/results)")
    parser.add_argument("--seeds", type=int, default=7, help="agent runs (seeds) per batch size (default 7)")
    parser.add_argument("--batch", action="append", type=int,
                        help="batch size q (tasks in flight); repeat for several (default 1 and 4)")
    parser.add_argument("--n-initial", type=int, default=0,
                        help="space-filling initial design size of the agent (default 0: none)")
    parser.add_argument("--explore-above", type=float, default=EXPLORE_ABOVE,
                        help="agent: all/some picks space-filling once P(top k complete) reaches this "
                             f"(select_structures' explore_above; default {EXPLORE_ABOVE})")
    parser.add_argument("--explore-fraction", type=float, default=EXPLORE_FRACTION,
                        help=f"share of space-filling picks while confident (default {EXPLORE_FRACTION})")
    parser.add_argument("--no-explore", action="store_true",
                        help="agent: never space-filling when confident (explore_above=None)")
    parser.add_argument("--skill-ratio", type=float, default=SKILL_RATIO,
                        help=f"agent: skill test threshold (default {SKILL_RATIO})")
    parser.add_argument("--min-skill-n", type=int, default=MIN_SKILL_N,
                        help=f"agent: computed structures before the skill test can pass (default {MIN_SKILL_N})")
    parser.add_argument("--skill-mix", action=argparse.BooleanOptionalAction, default=SKILL_MIX,
                        help="agent: while the model fails the skill test, mix its and the shift's P(low energy) "
                             f"by pseudo-BMA weights from their LOO log predictive densities (default {SKILL_MIX})")
    parser.add_argument("--warmup", choices=("cost", "plain"), default=WARMUP,
                        help="agent: picks before the skill test passes: cheap order weighed by cost (default) or plain")
    parser.add_argument("--warmup-dedup", type=float, default=WARMUP_DEDUP, metavar="QUANTILE",
                        help="agent: while the model fails the skill test, skip structures nearer to a computed or "
                             "pending one than this quantile of the pairwise embedding distances (default "
                             f"{WARMUP_DEDUP}: off)")
    parser.add_argument("--cost-power", type=float, default=COST_POWER, metavar="ALPHA",
                        help=f"agent: picks by p / cost**ALPHA (default {COST_POWER}: inverse cost weighting)")
    parser.add_argument("--model-cost-power", type=float, default=MODEL_COST_POWER, metavar="ALPHA",
                        help="agent: the model's own picks (skill test passed) by p / cost**ALPHA, the warm-up "
                             f"unchanged (default {MODEL_COST_POWER})")
    parser.add_argument("--acq-inflation", type=float, default=ACQ_INFLATION, metavar="K",
                        help=f"agent: factor on the spread of the model's draws in its picks (default {ACQ_INFLATION})")
    parser.add_argument("--acq-spread", choices=("fixed", "loo"), default=ACQ_SPREAD,
                        help="agent: the model's draws in its picks at its own spread, or narrowed by its "
                             f"leave-one-out spread ratio where below 1 (default {ACQ_SPREAD})")
    parser.add_argument("--refit-growth", type=float, default=REFIT_GROWTH, metavar="FRACTION",
                        help="agent (fragment dimer GP): refit the hyperparameters only once the computed structures "
                             f"grew by this fraction since the last fit (default {REFIT_GROWTH}: every fit)")
    parser.add_argument("--fit-max-iter", type=int, default=FIT_MAX_ITER, metavar="N",
                        help=f"fragment dimer GP: L-BFGS-B iterations per hyperparameter fit (default {FIT_MAX_ITER})")
    parser.add_argument("--utility", choices=("p", "odds"), default=UTILITY,
                        help=f"agent: picks by p / cost or by the odds p / (1 - p) / cost (default {UTILITY})")
    parser.add_argument("--descriptor", default=DEFAULT_DESCRIPTOR, choices=DESCRIPTORS,
                        help="agent (fragment dimer GP): the dimer descriptor, atom typing and extra terms "
                             f"(sim_backends/fragment_terms.py; default {DEFAULT_DESCRIPTOR})")
    parser.add_argument("--fit-starts", type=int, default=N_FIT_STARTS, metavar="N",
                        help="agent (fragment dimer GP): optimiser starts per hyperparameter fit, the initial values "
                             f"then draws from the priors, highest MAP kept (default {N_FIT_STARTS})")
    parser.add_argument("--lengthscale-prior", type=parse_lengthscale_prior, default=LENGTHSCALE_PRIOR, metavar="SHIFT,SPREAD",
                        help="agent (fragment dimer GP): log-normal RBF lengthscale prior, log-median shift from "
                             "BoTorch's dimension-scaled one and log spread, 'botorch', or 'auto' (per fit the lower "
                             "leave-one-structure-out MAE of fragment_gp.AUTO_LENGTHSCALE_PRIORS) "
                             f"(default {LENGTHSCALE_PRIOR or 'botorch'})")
    parser.add_argument("--no-refit-growth", dest="refit_growth", action="store_const", const=None,
                        help="agent: fresh hyperparameters at every fit")
    parser.add_argument("--no-warmup-dedup", dest="warmup_dedup", action="store_const", const=None,
                        help="agent: no near-duplicate skipping in the warm-up")
    parser.add_argument("--skill-score", choices=("mae", "lpd"), default=SKILL_SCORE,
                        help=f"agent: what the skill test compares (default {SKILL_SCORE})")
    parser.add_argument("--no-skill-test", action="store_true",
                        help="agent: the surrogate always steers (skill_ratio=None)")
    parser.add_argument("--grid", action="store_true",
                        help="also replay the agent without the skill test and without exploration when "
                             "confident, and choose settings by leave-one-landscape-out")
    parser.add_argument("--grid-seeds", type=int, default=3,
                        help="seeds of the grid's other settings (default 3; the agent runs --seeds)")
    parser.add_argument("--recorded-only", action="store_true",
                        help="run nothing: report the runs recorded in the progress file "
                             "(<--out>/<result name>_progress.jsonl) of the same command")
    parser.add_argument("--combine", nargs="+", type=Path, metavar="JSON",
                        help="compute nothing: merge result files of this benchmark (one landscape "
                             "each, e.g. run in parallel), print the tables and leave-one-landscape-out")
    parser.add_argument("--surrogate", choices=("auto", "soap", "fragment"), default="auto",
                        help="agent surrogate: the fragment dimer GP where the landscape has fragment DFT "
                        "records (auto, default), always the SOAP Delta-GP (soap), or require fragment")
    parser.add_argument("--window", type=float, default=WINDOW_KJMOL,
                        help="window_kjmol of the campaign and of the target set (the TOP_K lowest within "
                        f"this of the minimum; default {WINDOW_KJMOL:g} kJ/mol per molecule; e.g. 1000: the TOP_K lowest)")
    parser.add_argument("--past-completion", type=int, default=0, metavar="N",
                        help="the agent's runs go on for up to N calculations after the set is complete "
                        "(or until every stop rule fired): stopping-rule calibration past completion")
    parser.add_argument("--dimer-baselines", default=",".join(DEFAULT_BASELINES),
                        help="comma-separated dimer baselines of the fragment dimer GP "
                        f"(sim_backends.fragment_terms; default {','.join(DEFAULT_BASELINES)}; 'none' for none)")
    args = parser.parse_args(argv)
    baselines = tuple(b for b in args.dimer_baselines.split(",") if b and b != "none")
    if unknown := set(baselines) - set(DEFAULT_BASELINES):
        parser.error(f"unknown --dimer-baselines {', '.join(sorted(unknown))}; known: {', '.join(DEFAULT_BASELINES)}")
    if not 0.0 < args.explore_above <= 1.0 or not 0.0 <= args.explore_fraction <= 1.0:
        parser.error("--explore-above must be in (0, 1] and --explore-fraction in [0, 1]")
    if not args.skill_ratio > 0:
        parser.error("--skill-ratio must be positive")
    if args.fit_max_iter < 1:
        parser.error("--fit-max-iter must be >= 1")
    if not all(0.0 <= a and math.isfinite(a) for a in (args.cost_power, args.model_cost_power)):
        parser.error("--cost-power and --model-cost-power must be finite numbers >= 0")
    if not (args.acq_inflation > 0 and math.isfinite(args.acq_inflation)):
        parser.error("--acq-inflation must be a positive number")
    if args.fit_starts < 1:
        parser.error("--fit-starts must be >= 1")
    if args.refit_growth is not None and not args.refit_growth > 0:
        parser.error("--refit-growth must be positive")
    if args.warmup_dedup is not None and not 0.0 < args.warmup_dedup < 1.0:
        parser.error("--warmup-dedup must be a quantile in (0, 1)")
    if args.min_skill_n < 2:
        parser.error("--min-skill-n must be at least 2 (a leave-one-out test needs two computed structures)")
    if not (args.window > 0 and math.isfinite(args.window)):
        parser.error("--window must be a positive finite number (kJ/mol per molecule)")
    if args.seeds < 1 or args.n_initial < 0 or args.past_completion < 0:
        parser.error("--seeds must be >= 1, --n-initial >= 0 and --past-completion >= 0")
    if args.landscape:
        n = len(args.landscape)
        if len(args.cheap or []) != n or len(args.expensive or []) != n:
            parser.error("give --cheap and --expensive once per --landscape")
        cases = list(zip(args.landscape, args.cheap, args.expensive))
        if args.smiles and len(args.smiles) != n:
            parser.error("give --smiles once per --landscape (or not at all)")
    else:
        if args.smiles:
            parser.error("--smiles needs --landscape")
        cases = known_landscapes()
    smiles_of = list(args.smiles or [None] * len(cases))
    batches = args.batch or [1, 4]
    if any(q < 1 for q in batches):
        parser.error("--batch must be >= 1")
    console = Console(width=250)
    warnings.filterwarnings("ignore")
    explore = (None, args.explore_fraction) if args.no_explore else (args.explore_above, args.explore_fraction)
    agent = AgentSettings(None if args.no_skill_test else args.skill_ratio, explore[0], explore[1], args.n_initial,
                          args.min_skill_n, args.skill_score, args.warmup, args.skill_mix, args.warmup_dedup,
                          args.refit_growth, args.cost_power, args.model_cost_power,
                          args.acq_inflation, args.utility, args.fit_max_iter, args.descriptor, args.fit_starts, args.lengthscale_prior,
                          args.acq_spread)
    configs = [agent]
    if args.combine:
        return combine(args.combine, console, args.out)
    if args.grid:  # the gate before 2026-12-05, the agent before the skill test, and without exploration
        for ratio, ex in ((SKILL_RATIO, (EXPLORE_ABOVE, EXPLORE_FRACTION)), (None, (EXPLORE_ABOVE, EXPLORE_FRACTION)),
                          (SKILL_RATIO, (None, EXPLORE_FRACTION))):
            c = AgentSettings(ratio, ex[0], ex[1], args.n_initial, LEGACY_MIN_SKILL_N, "mae", "cost", False, None, None, 1.0, 1.0, 1.0)
            if c not in configs:
                configs.append(c)
    out: dict = {"benchmark": "refinement", "top_k": TOP_K, "window_kjmol": args.window, "seeds": args.seeds,
                 "batches": batches, "n_initial": args.n_initial, "settings": agent.label,
                 "explore": {"above": explore[0], "fraction": explore[1]},
                 "skill_ratio": agent.skill_ratio, "past_completion": args.past_completion, "landscapes": {}}
    results = args.out
    for (path, cheap, expensive), smiles in zip(cases, smiles_of):  # every bad input refused before a run
        load_case(path, cheap, expensive, args.surrogate, args.window, smiles)
    stem, progress_stem = result_stems(args, cases, baselines, explore)
    try:
        results.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LandscapeError(f"--out {results}: {exc.strerror or exc}") from None
    progress_path = results / f"{progress_stem}_progress.jsonl"
    if args.fresh and progress_path.exists() and not args.recorded_only:
        progress_path.unlink()  # a fresh run starts its own file
    for (path, cheap, expensive), smiles in zip(cases, smiles_of):
        name, res = run_landscape(path, cheap, expensive, args.seeds, batches, console, configs,
                                  surrogate=args.surrogate, baselines=baselines,
                                  grid_seeds=min(args.grid_seeds, args.seeds) if args.grid else None,
                                  progress_path=progress_path,
                                  recorded_only=args.recorded_only, window_kjmol=args.window,
                                  past_completion=args.past_completion, smiles=smiles, fresh=args.fresh)
        if res is None:
            console.print(f"{name}: no recorded run of the agent at q={batches[0]}; left out")
            continue
        out["landscapes"][name] = res
    print_summary(out, batches, console)
    if args.grid and len(out["landscapes"]) > 1:
        out["leave_one_landscape_out"] = leave_one_landscape_out(out["landscapes"], configs, batches)
        print_lolo(out, batches, console)
    out["grid_settings"] = [dataclasses.asdict(c) for c in configs]
    line = json.dumps(out)
    (results / f"{stem}.json").write_text(line + "\n")
    print(line)
    return out


def combine(files, console, results: Path | None = None) -> dict:
    """Merge result files (same agent settings, seeds and batch sizes), print the tables and
    leave-one-landscape-out; writes ``refinement.json`` when they cover every known landscape
    with the default settings, else ``refinement_combined.json`` (``_past<N>`` for runs that
    went on past completion)."""
    parts = []
    for f in files:
        try:
            parts.append(json.loads(Path(f).read_text().splitlines()[-1]))
        except (OSError, ValueError, IndexError) as exc:
            raise LandscapeError(f"cannot read result file {f}: {exc}") from None
    for p in parts:  # files written before the option ran to completion only
        p["past_completion"] = p.get("past_completion") or 0
    keys = ("settings", "seeds", "batches", "n_initial", "window_kjmol", "past_completion")
    for p in parts[1:]:
        if any(p.get(k) != parts[0].get(k) for k in keys):
            raise LandscapeError("result files differ in " + ", ".join(k for k in keys if p.get(k) != parts[0].get(k)))
    out = {k: v for k, v in parts[0].items() if k not in ("landscapes", "leave_one_landscape_out")}
    out["landscapes"] = {name: r for p in parts for name, r in p["landscapes"].items()}
    batches = out["batches"]
    print_summary(out, batches, console)
    configs = [AgentSettings(**c) for c in out.get("grid_settings", [])]
    if len(configs) > 1 and all(set(r["grid"]) == {c.label for c in configs} for r in out["landscapes"].values()):
        out["leave_one_landscape_out"] = leave_one_landscape_out(out["landscapes"], configs, batches)
        print_lolo(out, batches, console)
    known = {load_name for load_name in _known_names()}
    default = (out["settings"] == AgentSettings().label and out["seeds"] == 7 and batches == [1, 4]
               and out.get("window_kjmol", WINDOW_KJMOL) == WINDOW_KJMOL
               and out.get("n_initial", 0) == 0 and not out.get("past_completion") and known <= set(out["landscapes"]))
    results = results or ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    line = json.dumps(out)
    past = f"_past{out['past_completion']}" if out.get("past_completion") else ""
    (results / ("refinement.json" if default else f"refinement_combined{past}.json")).write_text(line + "\n")
    print(line)
    return out


def _known_names() -> list[str]:
    """Landscape names of :func:`known_landscapes`."""
    return [load_case(p, c, e).name for p, c, e in known_landscapes()]


def print_summary(out: dict, batches, console) -> None:
    """One table over all landscapes: counts, ratios, CPU seconds, stopping-rule calibration."""
    from rich.table import Table

    if not out["landscapes"]:  # e.g. --recorded-only with nothing recorded
        console.print("no landscape with a run of the agent: no summary")
        return

    t = Table(title=f"Calculations until the true low-energy set (the {TOP_K} lowest within "
              f"{out.get('window_kjmol', WINDOW_KJMOL):g} kJ/mol of the minimum, the set the campaign is told to "
              f"find) is computed (median over {out['seeds']} "
              f"seeds; agent: {out['settings']}); CPU s: stored expensive-level CPU seconds until "
              "then, the agent's including the fragment baselines (xTB/D3 dimer energies, D3 and "
              "point-charge Ewald terms) it computed")
    for col in ("landscape (cheap -> expensive, n)", "oracle (= set size)", "cheap order", "random",
                *[f"agent q={q}" for q in batches], *[f"ratio q={q}" for q in batches],
                "CPU s agent (baselines) / cheap / random",
                "P>=0.9 stop: complete / runs"):
        t.add_column(col)
    for name, r in out["landscapes"].items():
        cpu = r["expensive_cpu_s_until_top10"]
        cpu_txt = ("-" if cpu is None else
                   f"{cpu['agent_incl_baselines']:.0f} ({r['baseline_cpu_s']:.0f}) / {cpu['cheap_order']:.0f} / {cpu['random']:.0f}")
        c = r["stop_calibration"][f"{STOP_INFLATION:g}@0.9"]
        t.add_row(f"{name} ({r['levels']}, {r['n_structures']})", str(r["oracle"]), str(r["cheap_order"]),
                  f"{r['random']:.0f}",
                  *[f"{r['agent_by_batch'][str(q)]:.0f} [{min(r['agent_runs'][str(q)])}-"
                    f"{max(r['agent_runs'][str(q)])}] ({len(r['agent_runs'][str(q)])} runs)"
                    if str(q) in r["agent_by_batch"] else "-" for q in batches],
                  *[f"{r['ratio_to_best_baseline'][str(q)]:.2f}" if str(q) in r["agent_by_batch"] else "-"
                    for q in batches],
                  cpu_txt, f"{c['complete_at_stop']}/{c['runs']}")
    t.caption = "ratio = agent median / min(cheap order, random); target <= 1.1 against cheap order"
    console.print(t)
    ct = Table(title="Stopping rule P(low-energy set complete) >= p, checked from 10 computed on: share of "
               "runs (all seeds and batch sizes) in which the true set was complete when the rule first fired "
               "(or it never fired before), per spread inflation")
    ct.add_column("landscape")
    for k in STOP_INFLATIONS:
        for lvl in STOP_LEVELS:
            ct.add_column(f"x{k:g} p={lvl:g}")
    pooled = {key: [0, 0] for key in next(iter(out["landscapes"].values()))["stop_calibration"]}
    for name, r in out["landscapes"].items():
        row = []
        for key, c in r["stop_calibration"].items():
            row.append(f"{c['complete_at_stop'] / c['runs']:.0%}")
            pooled[key][0] += c["complete_at_stop"]
            pooled[key][1] += c["runs"]
        ct.add_row(name, *row)
    ct.add_row("all", *[f"{a / b:.0%}" for a, b in pooled.values()])
    console.print(ct)
    print_after_completion(out, console)


def print_after_completion(out: dict, console) -> None:
    """P promised vs achieved from runs that went on past completion (``--past-completion``):
    per landscape, inflation and p, the share of the runs in which the rule fired that had the
    set complete then, and how many calculations after completion it fired."""
    from rich.table import Table

    rows = {name: r["stop_after_completion"] for name, r in out["landscapes"].items()
            if r.get("stop_after_completion")}
    if not rows:
        return
    t = Table(title="Stopping rule P >= p past completion: complete when it fired / runs in which it fired "
              "(not fired within the extra calculations); calculations after completion at the first firing, "
              "median (min..max; negative: premature)")
    t.add_column("landscape (extra calcs run)")
    keys = [f"{k:g}@{lvl:g}" for k in STOP_INFLATIONS for lvl in STOP_LEVELS]
    for key in keys:
        k, lvl = key.split("@")
        t.add_column(f"x{k} p={lvl}")
    pooled = {key: [0, 0, 0] for key in keys}
    for name, a in rows.items():
        cells = []
        for key in keys:
            c = a[key]
            offs = [o for o in c["offsets"] if o is not None]
            pooled[key][0] += c["complete_when_fired"]
            pooled[key][1] += c["fired"]
            pooled[key][2] += c["runs"] - c["fired"]
            rate = f"{c['complete_when_fired']}/{c['fired']}" + (f" ({c['runs'] - c['fired']})" if c["runs"] > c["fired"] else "")
            where = f" {np.median(offs):+.0f} ({min(offs):+d}..{max(offs):+d})" if offs else ""
            cells.append(rate + where)
        extra = next(iter(a.values()))["extra_after_completion"]
        t.add_row(f"{name} ({min(extra)}-{max(extra)})", *cells)
    t.add_row("all", *[f"{a}/{b} = {a / b:.0%}" + (f" ({c})" if c else "") if b else f"- ({c})"
                       for a, b, c in pooled.values()])
    console.print(t)


def print_lolo(out: dict, batches, console) -> None:
    from rich.table import Table

    t = Table(title="Leave-one-landscape-out: settings chosen on the other landscapes, measured on "
              "the held-out one, next to the best setting for that landscape itself (in-sample)")
    for col in ("held out (seeds per setting)", "chosen on the others", *[f"LOLO q={q}" for q in batches[:1]],
                "chosen by worst case on the others", *[f"LOLO worst-case q={q}" for q in batches[:1]],
                "in-sample best", *[f"in-sample q={q}" for q in batches[:1]],
                *[f"default q={q}" for q in batches[:1]], "cheap order",
                "stop inflation (LOLO)", "P>=0.9 complete (held out)"):
        t.add_column(col)
    for name, r in out["leave_one_landscape_out"].items():
        mm = r.get("chosen_minimax", "-")
        t.add_row(f"{name} ({r.get('seeds', '?')})", r["chosen"], *[f"{r['agent_lolo'][str(q)]:.0f}" for q in batches[:1]],
                  mm, *[f"{r['agent_lolo_minimax'][str(q)]:.0f}" if "agent_lolo_minimax" in r else "-"
                        for q in batches[:1]],
                  r["in_sample_best"], *[f"{r['agent_in_sample'][str(q)]:.0f}" for q in batches[:1]],
                  *[f"{r['default_same_seeds'][str(q)]:.0f}" for q in batches[:1]],
                  str(out["landscapes"][name]["cheap_order"]), f"{r['stop_inflation_lolo']:g}",
                  f"{r['stop_achieved_lolo']:.0%}")
    console.print(t)


if __name__ == "__main__":
    from sim_backends.base import SetupError

    try:
        main()
    except (LandscapeError, SetupError) as exc:
        sys.exit(f"refinement: error: {exc}")

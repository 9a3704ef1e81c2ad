"""End-to-end CSP run: trials -> batched minimisation -> duplicate removal -> landscape.

:func:`run_csp` splits the trials over the requested space groups, minimises them
in batches (one space group per batch, so Z is shared) on the executor it is given
(:mod:`sim_backends.executor`: in this process by default; it never starts Ray
itself), keeps the converged minima
within ``energy_window_kjmol`` of the lowest one, removes duplicates, detects the
space group of each unique minimum and returns a :class:`Landscape` (written to
``out_dir`` when given). Each minimum is stored in its
:func:`~sim_backends.csp.landscape.output_cell` (the conventional cell of a centred group,
else the Niggli-reduced primitive cell, atoms as minimised) with the Z, Z' and space group
of that cell, the ones its CIF states; the search cell (Z of the search group's general
positions) can hold more or fewer molecules.

Two protocols:

* ``"full"``: every trial is minimised with the full model (W99 exp-6, 12 A cutoff,
  Ewald electrostatics, gtol 0.05).
* ``"staged"`` (default), as production CSP codes do: stage 1 minimises every trial
  with a cheap smooth model (:data:`STAGE1_MODEL`: 7 A exp-6 cutoff, damped shifted-force
  Coulomb instead of Ewald, gtol 0.1); stage-1 minima within the energy window plus
  ``stage2_margin_kjmol`` are thinned by a tight energy/density duplicate screen and
  only those are polished with the full model (stage 2), each continuing from its
  stage-1 optimiser state (variables and L-BFGS memory: the cheap model's curvature is
  close to the full model's, which halved the stage-2 CPU on oxalic acid). All reported
  energies are full-model energies of stage-2 minima.

Z' = 2 (``z_prime``): a search is a (space group, Z') pair, named by
:func:`~sim_backends.csp.spacegroups.search_label` (``"P-1 Z'=2"``); Z' = 2 searches draw
trials with two independent copies of the molecule (:func:`~sim_backends.csp.trials.generate_trials`),
minimise them with the same force field and protocol, and share the convergence bookkeeping,
dedupe and landscape with the Z' = 1 ones. Each minimum records the Z' detected in it
(``z_prime``: a Z' = 2 trial that relaxes into a higher-symmetry Z' = 1 crystal says so) and the
search it came from (``search_space_group``).

Trial structures are drawn inside the units (workers): each unit of ``batch_size`` trials
gets its own seeded scrambled-Sobol block (:func:`_unit_seed`), so the serial driver only
hands out seeds, selects the stage-2 set, removes duplicates and detects symmetry.

Importing this module is cheap; torch, pymatgen and rich are imported inside
the functions.

Over 500 lines on purpose: molecule loading, argument validation and the staged run_csp
driver (units, stage-2 selection, de-duplication) are one user-facing entry point; the
engines it drives are in trials.py, minimise.py and sampling.py.
"""

from __future__ import annotations

import math
import re
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from sim_backends.landscape import Landscape, LandscapeEntry
from sim_backends.csp import DEFAULT_CHARGES
from sim_backends.csp.dedupe import fit_memo
from sim_backends.csp.sampling import ConvergenceCriteria, ConvergenceTracker
from sim_backends.csp.spacegroups import (
    SpaceGroup, parse_search_label, parse_space_groups, parse_z_prime, search_labels,
)
from sim_backends.executor import InProcessExecutor, MapExecutor


#: input forms :func:`load_molecule` accepts, for error messages
ACCEPTED_INPUTS = ("a SMILES string, a .smi/.txt file (first SMILES) or a single-molecule "
                   ".xyz/.mol/.sdf geometry")
#: default upper limit of ``n_trials`` (memory grows with it; raise with ``max_trials``)
MAX_TRIALS_DEFAULT = 200_000
#: a minimum below this lattice energy per atom of the molecule (kJ/mol) has collapsed: a point charge
#: fell onto an opposite one of a neighbour (the exp-6 repulsion stays finite at r = 0, the Coulomb
#: term does not; seen with a lone-pair site and an N-H hydrogen). Real molecular crystals lie at
#: -5 to -15 kJ/mol per atom (X23: ammonia -9, cytosine -13, oxalic acid -12); such minima count as
#: failed minimisations (``n_collapsed`` in the landscape's meta), never as the global minimum.
COLLAPSE_KJMOL_PER_ATOM = -30.0
_GEOMETRY_SUFFIXES = {".xyz", ".mol", ".sdf"}
_SMILES_SUFFIXES = {".smi", ".txt"}


def load_molecule(smiles_or_molecule: Any, charges: str = "resp",
                  cache_dir: str | Path | None = None) -> Any:
    """A RigidMolecule from a SMILES string, an existing molecule or a file.

    Files: ``.smi``/``.txt`` (the first SMILES, read as a pool file: :func:`smiles_from_file`),
    ``.xyz``/``.mol``/``.sdf`` (read with ASE; the given geometry is kept rigid and its
    charges are computed by ``charges`` on it, "resp" or "xtb", like for SMILES input;
    "none" gives zero charges; the molecule must be neutral and closed-shell; its SMILES
    is perceived with RDKit's ``rdDetermineBonds`` where possible, for labels only).

    Raises:
        SetupError: invalid SMILES, unreadable or unsupported file (the message names
            the accepted forms), unsupported molecule (one line).
    """
    from sim_backends.base import SetupError
    from sim_backends.csp.rigid import RigidMolecule

    if hasattr(smiles_or_molecule, "coords_A") and hasattr(smiles_or_molecule, "ff_types"):
        return smiles_or_molecule
    if not isinstance(smiles_or_molecule, (str, Path)):
        raise SetupError(f"expected a SMILES string, a file or a RigidMolecule, got "
                         f"{type(smiles_or_molecule).__name__}")
    if charges not in ("resp", "resp-lp", "resp-lpn", "xtb", "none"):
        raise SetupError(f"unknown charge method {charges!r}; use 'resp', 'resp-lp', 'resp-lpn', 'xtb' or 'none'")
    text = str(smiles_or_molecule).strip()
    path = Path(text)
    suffix = path.suffix.lower()
    if suffix in _SMILES_SUFFIXES | _GEOMETRY_SUFFIXES:
        if not path.is_file():
            raise SetupError(f"no such file: {text}")
        if suffix in _SMILES_SUFFIXES:
            smiles = smiles_from_file(path)
            if smiles is None:
                raise SetupError(f"{text}: no SMILES in file")
            text = smiles
        else:
            return _molecule_from_geometry(path, charges, cache_dir)
    elif not _parses_as_smiles(text) and (path.is_file() or re.fullmatch(r"\.[A-Za-z][A-Za-z0-9]{0,5}", suffix)):
        what = "crystal structure files are not CSP input" if suffix in (".cif", ".res", ".pdb") else \
            f"unsupported file type {suffix!r}"
        raise SetupError(f"{text}: {what}; give {ACCEPTED_INPUTS}")
    return RigidMolecule.from_smiles(text, charges=charges, cache_dir=cache_dir)


def smiles_from_file(path: Path) -> str | None:
    """The SMILES of a ``.smi``/``.txt`` file: its first entry as a campaign reads a pool file
    (:func:`sim_backends.molecule.read_pool`: blank and ``#`` comment lines skipped, a name
    after the SMILES ignored); None when it holds none.

    Raises:
        SetupError: the file is not UTF-8 text (one line).
    """
    from sim_backends.base import SetupError
    from sim_backends.molecule import read_pool

    try:
        entries = read_pool(path)
    except UnicodeDecodeError:
        raise SetupError(f"{path}: not UTF-8 text") from None
    return entries[0][0] if entries else None


def _parses_as_smiles(text: str) -> bool:
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    try:
        return len(text) < 10_000 and Chem.MolFromSmiles(text) is not None
    finally:
        RDLogger.EnableLog("rdApp.*")


def _molecule_from_geometry(path: Path, charges: str, cache_dir: str | Path | None) -> Any:
    """A RigidMolecule with the geometry of a .xyz/.mol/.sdf file and charges computed on it."""
    from ase.io import read

    from sim_backends.base import SetupError
    from sim_backends.csp.charges import compute_charges
    from sim_backends.csp.rigid import RigidMolecule, symmetry_classes

    try:
        atoms = read(path)
    except Exception as exc:  # noqa: BLE001 - any parser error is a bad file
        raise SetupError(f"{path}: cannot read molecule ({exc})".splitlines()[0]) from None
    symbols, xyz = atoms.get_chemical_symbols(), atoms.get_positions()
    if not symbols:
        raise SetupError(f"{path}: no atoms")
    from sim_backends.molecule import check_elements

    check_elements(str(path), symbols)  # before the electron count: Pt-Cl is refused for Pt
    if sum(atoms.get_atomic_numbers()) % 2:
        raise SetupError(f"{path}: odd number of electrons; CSP needs a neutral closed-shell molecule")
    smiles = _perceive_smiles(symbols, xyz) or path.stem
    mol = RigidMolecule.from_atoms(symbols, xyz, smiles=smiles)  # validates elements, one molecule
    if charges == "none":
        return mol
    fit = compute_charges(symbols, xyz, charges, symmetry_classes(symbols, xyz), cache_dir,
                          cache_key=smiles)
    return mol.with_charges(fit.charges_e, fit.method, fit.rrms)


def _perceive_smiles(symbols: list[str], xyz: np.ndarray) -> str:
    """Canonical SMILES of a neutral molecule from its geometry (RDKit rdDetermineBonds),
    '' when the bonding cannot be perceived."""
    from rdkit import Chem, RDLogger
    from rdkit.Chem import rdDetermineBonds

    block = f"{len(symbols)}\n\n" + "\n".join(f"{s} {x:.6f} {y:.6f} {z:.6f}" for s, (x, y, z) in zip(symbols, xyz))
    RDLogger.DisableLog("rdApp.*")
    try:
        mol = Chem.MolFromXYZBlock(block)
        rdDetermineBonds.DetermineBonds(mol, charge=0)
        return Chem.MolToSmiles(Chem.RemoveHs(mol))
    except Exception:  # noqa: BLE001 - perception is for labels only
        return ""
    finally:
        RDLogger.EnableLog("rdApp.*")


def validate_csp_arguments(n_trials: Any, *, energy_window_kjmol: Any = 20.0, n_workers: Any = 1,
                           seed: Any = 0, batch_size: Any = 128, cutoff_A: Any = 12.0, gtol: Any = 0.05,
                           max_iter: Any = 1000, stage2_margin_kjmol: Any = 5.0,
                           protocol: str = "staged", max_trials: int = MAX_TRIALS_DEFAULT,
                           sampling: str = "converged", max_rotatable_bonds: Any = None) -> None:
    """Refuse bad CSP settings before anything is allocated (one-line ValueError).

    ``n_trials`` must be a positive integer <= ``max_trials`` (memory and time grow with
    it; a user raises the limit explicitly); windows, cutoffs and tolerances finite and
    positive (the stage-2 margin may be 0); ``seed`` >= 0; ``max_rotatable_bonds`` None or
    an integer >= 0 (refused for a rigid molecule too, which does not use it).
    """
    def is_int(x: Any) -> bool:
        return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

    def is_pos(x: Any, allow_zero: bool = False) -> bool:
        return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) \
            and math.isfinite(x) and (x >= 0 if allow_zero else x > 0)

    if not is_int(max_trials) or max_trials < 1:
        raise ValueError(f"max_trials must be a positive integer, got {max_trials!r}")
    if not is_int(n_trials) or n_trials <= 0:
        raise ValueError(f"n_trials must be a positive integer, got {n_trials!r}")
    if n_trials > max_trials:
        raise ValueError(f"n_trials {n_trials} is above the limit of {max_trials} "
                         f"(raise it explicitly: --max-trials / max_trials)")
    for name, value, lo, hi in (("n_workers", n_workers, 1, 1024), ("batch_size", batch_size, 1, 100_000),
                                ("max_iter", max_iter, 1, 1_000_000), ("seed", seed, 0, 2**32 - 1)):
        if not is_int(value) or not lo <= value <= hi:
            raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    for name, value in (("energy_window_kjmol", energy_window_kjmol), ("cutoff_A", cutoff_A), ("gtol", gtol)):
        if not is_pos(value):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if not is_pos(stage2_margin_kjmol, allow_zero=True):
        raise ValueError(f"stage2_margin_kjmol must be a finite number >= 0, got {stage2_margin_kjmol!r}")
    if protocol not in ("staged", "full"):
        raise ValueError(f"protocol must be 'staged' or 'full', got {protocol!r}")
    if sampling not in ("converged", "fixed"):
        raise ValueError(f"sampling must be 'converged' or 'fixed', got {sampling!r}")
    if max_rotatable_bonds is not None and (not is_int(max_rotatable_bonds) or max_rotatable_bonds < 0):
        raise ValueError(f"max_rotatable_bonds must be an integer >= 0, got {max_rotatable_bonds!r}")


def _unit_seed(seed: int, sg: SpaceGroup | str, block: int = 0) -> int:
    """Sobol seed of trial block ``block`` of space group ``sg`` or search label (block 0: the
    run's seed for it; a Z' = 1 search's label is its symbol, so the same seeds)."""
    label = sg.symbol if isinstance(sg, SpaceGroup) else str(sg)
    return (int(seed) * 1_000_003 + zlib.crc32(label.encode()) + 7_919 * int(block)) % (2**31)


#: energy model of stage 1 of the staged protocol (LatticeEnergyModel keyword arguments)
STAGE1_MODEL: dict[str, Any] = {"cutoff_A": 7.0, "ewald_cutoff_A": 7.0, "electrostatics": "dsf",
                                "dsf_alpha_per_A": 0.3}
#: minimiser settings of stage 1 (gtol 0.1: on 96 oxalic acid trials 0.5 cost the same in total --
#: more stage-2 polishing -- and found 7 instead of 9 of the 10 lowest full-model minima; 0.2 saved
#: nothing, 0.3 lost one more; an L-BFGS memory of 20 cut the iterations by 8 % but ended in other
#: basins, 8 instead of 9 of the 10 lowest found; chunk = the whole unit of ``batch_size`` 128: with
#: the compiled kernel and variable map a call costs little beyond its pairs, and the optimiser's
#: per-iteration bookkeeping is shared by twice as many trials as with units of 64)
STAGE1_MIN: dict[str, Any] = {"gtol": 0.1, "chunk": 128}
#: minimiser settings of stage 2 (full model) beyond the run's gtol / max_iter
STAGE2_MIN: dict[str, Any] = {"chunk": 32}
#: stage-1 duplicate screen before stage 2: (energy kJ/mol, density g/cm3) tolerances
STAGE1_DUPLICATE_TOL: tuple[float, float] = (0.2, 0.005)


def minimise_unit(molecule: Any, sg_symbol: str, trials_arrays: dict[str, np.ndarray],
                  model_kwargs: dict[str, Any], min_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Minimise one batch of trials (runs in a worker; everything in/out is picklable).

    ``sg_symbol`` is a space-group symbol or a search label (``"P-1 Z'=2"``).
    ``trials_arrays`` holds either the trials (``cell_params``, ``centre_frac``,
    ``quaternions``) or ``generate = [n, seed]``: draw n trials here with
    :func:`~sim_backends.csp.trials.generate_trials` (so trial generation runs in the
    workers, not in the driver). An optional ``warm`` dict (a ``state`` of an earlier
    unit, see :class:`~sim_backends.csp.minimise.MinimisedSet`) continues from there.

    Returns:
        dict with ``energy_kjmol`` (B,), ``cells_A`` (B,3,3), ``coords_A`` (B,Z,n,3),
        ``converged`` (B,), ``n_iter`` (B,), ``cell_params`` (B,6), ``centre_frac`` (B,3),
        ``quaternions`` (B,4) (to restart from the minima), ``state`` (optimiser state
        for a warm start), ``search_space_group``,
        ``n_generated`` (Sobol points drawn, 0 for given trials), ``wall_s``, ``cpu_s``
        (process CPU time of the minimisation) and ``trials_cpu_s`` (of the generation).
    """
    import torch

    from sim_backends.csp.forcefield import LatticeEnergyModel
    from sim_backends.csp.minimise import as_trials, minimise_batch
    from sim_backends.csp.spacegroups import get_space_group
    from sim_backends.csp.trials import TrialSet, generate_trials

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    symbol, z_prime = parse_search_label(sg_symbol)
    sg = get_space_group(symbol)
    label = sg_symbol if z_prime > 1 else sg.symbol
    c0 = time.process_time()
    if "generate" in trials_arrays:
        n_want, unit_seed = (int(v) for v in trials_arrays["generate"])
        trials = generate_trials(molecule, sg, n_want, seed=unit_seed, z_prime=z_prime)
    else:
        trials = TrialSet(sg, trials_arrays["cell_params"], trials_arrays["centre_frac"],
                          trials_arrays["quaternions"])
    c_gen = time.process_time() - c0
    c0 = time.process_time()
    model = LatticeEnergyModel(molecule, **model_kwargs)
    res = minimise_batch(trials, molecule, model, warm_start=trials_arrays.get("warm"), **min_kwargs)
    restart = as_trials(res)
    return {"energy_kjmol": res.energy_kjmol, "cells_A": res.cells_A, "coords_A": res.coords_A,
            "converged": res.converged, "n_iter": res.n_iter, "search_space_group": label,
            "cell_params": restart.cell_params, "centre_frac": restart.centre_frac,
            "quaternions": restart.quaternions, "state": res.state,
            "multiplicity": np.asarray(trials_arrays.get("multiplicity", np.ones(len(trials))), dtype=int),
            "unit": int(trials_arrays.get("unit", 0)),
            "n_generated": int(trials.n_generated), "trials_cpu_s": c_gen,
            "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def run_csp(
    smiles_or_molecule: Any,
    n_trials: int,
    space_groups: str | list[str] | None = None,
    seed: int = 0,
    energy_window_kjmol: float = 20.0,
    out_dir: str | Path | None = None,
    progress: bool = True,
    executor: MapExecutor | None = None,
    charges: str | None = None,
    batch_size: int = 128,
    cutoff_A: float = 12.0,
    gtol: float = 0.05,
    max_iter: int = 1000,
    cache_dir: str | Path | None = None,
    protocol: str = "staged",
    stage2_margin_kjmol: float = 5.0,
    stage2_warm_start: bool = True,
    max_trials: int = MAX_TRIALS_DEFAULT,
    sampling: str = "converged",
    convergence: dict[str, Any] | ConvergenceCriteria | None = None,
    flexible: str = "auto",
    max_rotatable_bonds: int | None = None,
    z_prime: int | str | list[int] | None = 1,
    search_cells: bool = False,
    racemic: bool = False,
) -> Landscape:
    """Crystal structure prediction from a SMILES or a molecule: rigid molecules at Z' = 1 (and
    Z' = 2), a SMILES with rotatable bonds through the flexible-molecule search (``flexible``).

    Args:
        smiles_or_molecule: SMILES, a molecule file (see :func:`load_molecule`) or a
            ``RigidMolecule``.
        n_trials: the trial budget (> 0). ``sampling="converged"``: trials are drawn in
            rounds per space group until every group's low-energy region is converged
            (:mod:`sim_backends.csp.sampling`) or the budget is spent; ``"fixed"``: all
            ``n_trials`` are drawn, split evenly over the space groups.
        space_groups: ``"P2_1/c,P-1"``, a list, or None for the ten default groups.
        seed: seed of the Sobol sequences (per space group derived from it).
        energy_window_kjmol: keep minima within this of the lowest one.
        out_dir: write the landscape there when given.
        progress: show the search's progress on stderr: a rich bar on a terminal (or in
            Jupyter), else (a log file, a pipe) a plain line at most every 10 s, as the CLI
            does (:class:`~sim_backends.csp.cli.PlainProgress`); False: nothing.
        executor: where the minimisation units run (:mod:`sim_backends.executor`); None: in
            this process, one after the other. The landscape does not depend on it.
        charges: point-charge method ("resp", "xtb"; "resp-lp": RESP with lone-pair sites,
            "resp-lpn": the same with sites on N only, :mod:`sim_backends.csp.charges`; "none" for zero charges), computed
            on the molecule's geometry for SMILES and geometry-file input alike; None:
            :data:`~sim_backends.csp.DEFAULT_CHARGES` ("resp-lpn") for a rigid molecule, :data:`~sim_backends.csp.flexible.FLEX_DEFAULT_CHARGES` for a
            flexible one.
        batch_size: trials per minimisation batch (one task).
        cutoff_A: real-space cutoff of the energy model.
        gtol, max_iter: minimiser convergence settings of the full model (stage 2; stage 1
            uses :data:`STAGE1_MIN`).
        cache_dir: charge cache directory.
        protocol: ``"staged"`` (cheap stage-1 model for every trial, full-model polish of
            the stage-1 minima within the window + margin) or ``"full"`` (full model for
            every trial); see the module docstring. Final energies are full-model ones.
        stage2_margin_kjmol: extra stage-1 energy window (kJ/mol) polished in stage 2, to
            cover the re-ranking between the stage-1 and the full model.
        stage2_warm_start: start each stage-2 polish from the stage-1 optimiser state
            (variables and L-BFGS curvature memory) rather than cold from the geometry.
        max_trials: upper limit of ``n_trials`` (:data:`MAX_TRIALS_DEFAULT`), raised explicitly.
        sampling: ``"converged"`` (default) or ``"fixed"`` (see ``n_trials``). Either way
            the landscape records how converged each space group is in
            ``meta["convergence"]`` (``stopped_by`` "converged", "budget" or "fixed").
        convergence: :class:`~sim_backends.csp.sampling.ConvergenceCriteria` or a dict of
            its fields overriding the defaults.
        flexible: ``"auto"`` (default): a SMILES with rotatable bonds goes to the flexible-molecule
            search :func:`~sim_backends.csp.flexible.run_flexible_csp` (conformer ensemble,
            intramolecular energy, torsion relaxation; the same landscape format); ``"always"``:
            every SMILES does; ``"rigid"``: never (a rotatable bond is then refused).
        max_rotatable_bonds: rotatable-bond limit of the flexible search (default 4).
        z_prime: ``1`` (default), ``2`` or ``"1,2"``: the Z' values searched. Z' = 2 runs in the
            given space groups, or without ``space_groups`` in
            :data:`~sim_backends.csp.spacegroups.ZPRIME2_SPACE_GROUPS`; rigid molecules only.
        search_cells: keep each minimum in the cell it was minimised in (``z`` = the search
            group's molecules per cell, the first molecule's atoms first) rather than its
            output cell (module docstring): for callers that re-encode a minimum in its search
            group (:func:`~sim_backends.csp.flexible.run_flexible_csp`); rigid molecules only.
        racemic: for a SMILES naming one enantiomer (assigned stereocentres,
            :mod:`sim_backends.csp.chirality`): False (default) searches only Sohncke groups
            (the defaults filtered; a given non-Sohncke group is refused), True the racemic
            compound in every group. No effect on achiral or unassigned input.
            ``meta["stereo"]`` records the decision.

    Returns:
        The :class:`Landscape`.

    Raises:
        ValueError: any setting refused by :func:`validate_csp_arguments`, unknown space
            group (one line), before anything is allocated.
        SetupError: molecule that cannot be used.
    """
    validate_csp_arguments(n_trials, energy_window_kjmol=energy_window_kjmol,
                           seed=seed, batch_size=batch_size, cutoff_A=cutoff_A, gtol=gtol, max_iter=max_iter,
                           stage2_margin_kjmol=stage2_margin_kjmol, protocol=protocol, max_trials=max_trials,
                           sampling=sampling, max_rotatable_bonds=max_rotatable_bonds)
    criteria = convergence if isinstance(convergence, ConvergenceCriteria) else \
        ConvergenceCriteria.from_dict(convergence)
    criteria.validate()
    from sim_backends.csp.chirality import stereo_policy

    stereo = stereo_policy(smiles_or_molecule, racemic)
    groups = parse_space_groups(space_groups, stereo.sohncke_only)
    labels = search_labels(space_groups, z_prime, stereo.sohncke_only)
    from sim_backends.csp.flexible import flexible_smiles, run_flexible_csp

    flex = flexible_smiles(smiles_or_molecule, flexible)
    if flex is not None and parse_z_prime(z_prime) != [1]:
        raise ValueError("Z' > 1 searches are for rigid molecules; use z_prime=1 (--z-prime 1) "
                         "or --flexible rigid")
    if flex is not None and charges in ("resp-lp", "resp-lpn"):
        raise ValueError(f"charges {charges!r} (lone-pair sites) are for rigid molecules; {flex} is searched as a "
                         "flexible molecule: use 'resp' or 'xtb' (its default), or flexible='rigid' (--flexible rigid)")
    if flex is not None:
        _warn_early(flex)
        land = run_flexible_csp(
            flex, n_trials, space_groups=[g.symbol for g in groups], seed=seed, energy_window_kjmol=energy_window_kjmol,
            out_dir=None, progress=progress, charges=charges, cache_dir=cache_dir,
            max_rotatable_bonds=max_rotatable_bonds, cutoff_A=cutoff_A, executor=executor, batch_size=batch_size,
            gtol=gtol, max_iter=max_iter, protocol=protocol, stage2_margin_kjmol=stage2_margin_kjmol,
            stage2_warm_start=stage2_warm_start, max_trials=max_trials, sampling=sampling, convergence=convergence)
        land.meta["stereo"] = stereo.meta()
        from sim_backends.csp.domain import ff_types_of_smiles, model_warnings

        land.meta["warnings"] = model_warnings(ff_types_of_smiles(flex), land.minima, smiles=flex,
                                               charge_method=land.meta.get("charge_method"))
        if out_dir is not None:
            land.write(out_dir)
        return land
    t_start = time.perf_counter()
    charges = DEFAULT_CHARGES if charges is None else charges
    molecule = load_molecule(smiles_or_molecule, charges=charges, cache_dir=cache_dir)
    if isinstance(smiles_or_molecule, (str, Path)):  # (not a flexible search's conformer: warned above)
        _warn_early(getattr(molecule, "smiles", None))
    tracker = ConvergenceTracker(labels, criteria)
    if sampling == "fixed":
        # an even split; the remainder by label, not by the order given (the same groups in any
        # order make the same search, as each group's trials are seeded by its label)
        extra = set(sorted(labels)[: n_trials % len(labels)])
        plan = {lab: n_trials // len(labels) + (1 if lab in extra else 0) for lab in labels}
    else:
        plan = tracker.first_round(n_trials)
    t_trials = time.perf_counter() - t_start
    model_kwargs = {"cutoff_A": cutoff_A}
    min_kwargs = {"gtol": gtol, "max_iter": max_iter}
    stage_meta: dict[str, Any] = {"protocol": protocol}
    results: list[dict] = []
    first: list[dict] = []
    cpu_s = 0.0
    blocks = {lab: 0 for lab in labels}  # Sobol blocks drawn so far per search
    spent = 0
    executor = executor if executor is not None else InProcessExecutor()
    plain = None
    if progress and not _bar_on_stderr():  # rich would draw whole bars into a file: plain lines
        from sim_backends.csp.cli import PlainProgress

        plain = PlainProgress(executor, n_trials, time.monotonic())
        executor, progress = plain, False
    tracker_s = 0.0  # main-process wall time of the sampling tracker's dedupe
    # the tracker and the landscape dedupe compare many of the same pairs: StructureMatcher once
    with fit_memo():
        while plan:
            # trials are drawn in the workers, one independently seeded Sobol block per unit
            units: list[tuple[str, dict[str, np.ndarray]]] = []
            for sym, n in plan.items():
                for start in range(0, n, batch_size):
                    units.append((sym, {"generate": np.array([min(batch_size, n - start),
                                                              _unit_seed(seed, sym, blocks[sym])]),
                                        "unit": np.array(len(first) + len(units))}))
                    blocks[sym] += 1
            round_meta: dict[str, Any] = {"protocol": protocol}
            e_floor = min((float(r["energy_kjmol"][r["converged"]].min()) for r in first
                           if r["converged"].any()), default=math.inf)
            res, fst, cpu = _run_stages(molecule, units, protocol, model_kwargs, min_kwargs, executor,
                                        progress, energy_window_kjmol + stage2_margin_kjmol, batch_size,
                                        stage2_warm_start, round_meta, e_floor)
            if res is not fst:  # stage-2 unit numbers unique over the rounds
                for r in res:
                    r["unit"] += len(results)
            results += res
            first += fst
            cpu_s += cpu
            _accumulate(stage_meta, round_meta)
            spent += sum(plan.values())
            e_keep = min(tracker.e_global, _lowest(res)) + criteria.window_kjmol + tracker.MARGIN_KJMOL
            t_track = time.perf_counter()
            tracker.add_round(plan, {sym: _candidates(molecule, [r for r in res if r["search_space_group"] == sym],
                                                      e_keep) for sym in plan})
            tracker_s += time.perf_counter() - t_track
            if tracker.all_converged:
                tracker.stopped_by = "converged"
                break
            if sampling == "fixed" or spent >= n_trials:
                tracker.stopped_by = "fixed" if sampling == "fixed" else "budget"
                break
            plan = tracker.allocate(n_trials - spent)
        if plain is not None:
            plain.finish()
        results.sort(key=lambda r: (r["search_space_group"], r["unit"]))
        first.sort(key=lambda r: (r["search_space_group"], r["unit"]))
        stage_meta["stage2_margin_kjmol"] = float(stage2_margin_kjmol)
        t_min = time.perf_counter() - t_start - t_trials
        t_land = time.perf_counter()
        landscape = _build_landscape(molecule, results, energy_window_kjmol, search_cells)
        stage_meta["landscape_s"] = time.perf_counter() - t_land
    stage_meta["tracker_dedupe_s"] = tracker_s
    if protocol == "staged":  # counts of the trials (stage 1); stage-2 counts kept apart
        stage_meta.update({"stage2_converged": landscape.meta["n_converged"],
                           "n_minimised": int(sum(len(r["energy_kjmol"]) for r in first)),
                           "n_converged": stage_meta["stage1_converged"]})
    landscape.meta.update(stage_meta)
    landscape.meta.update({
        "n_trials_requested": int(n_trials), "sampling": sampling,
        "convergence": tracker.summary(),
        "n_trials": int(sum(len(r["energy_kjmol"]) for r in first)),
        "n_sobol_points": int(sum(r["n_generated"] for r in first)),
        "trials_cpu_s": float(sum(r["trials_cpu_s"] for r in first)),
        "space_groups": [g.symbol for g in groups], "searches": labels,
        "z_prime": parse_z_prime(z_prime), "stereo": stereo.meta(),
        "seed": int(seed), "energy_window_kjmol": float(energy_window_kjmol),
        "charge_method": getattr(molecule, "charge_method", ""),
        "cutoff_A": cutoff_A, "gtol": gtol, "n_workers": int(executor.n_workers),
        "trials_wall_s": t_trials, "minimise_wall_s": t_min,
        "minimise_cpu_s": cpu_s,
        "wall_s": time.perf_counter() - t_start,
    })
    from sim_backends.csp.domain import model_warnings
    from sim_backends.csp.landscape import FF_LEVEL

    landscape.meta["warnings"] = model_warnings(molecule.ff_types, landscape.minima,
                                                smiles=getattr(molecule, "smiles", None) or None,
                                                charge_method=landscape.meta["charge_method"])
    seen = {id(r): r for r in results + first}  # stage 1 and 2 (the same dicts with protocol "full")
    landscape.meta["n_collapsed"] = int(sum(r.get("n_collapsed", 0) for r in seen.values()))
    if landscape.meta.get("n_collapsed"):
        landscape.meta["warnings"].append(
            f"{landscape.meta['n_collapsed']} minimisation(s) collapsed below {COLLAPSE_KJMOL_PER_ATOM:g} kJ/mol per atom "
            "(a charge site fell onto a neighbour's opposite charge) and were discarded")
    # the level named in landscape.csv, run.json and every CIF header carries the charge model
    landscape.levels = {"ff": f"{FF_LEVEL}, {landscape.meta['charge_method'] or 'no'} charges"}
    if out_dir is not None:
        landscape.write(out_dir)
    return landscape


def _warn_early(smiles: Any) -> None:
    """Before the search: the warnings that depend on the molecule only (a neutral amino acid,
    :func:`~sim_backends.csp.conformers.zwitterion_prone`), on the charge-stage channel the
    CLI prints as the run starts (:func:`~sim_backends.csp.charges.stage_messages`); the
    landscape's ``meta["warnings"]`` repeats them."""
    if not isinstance(smiles, str) or not smiles:
        return
    from rdkit import Chem

    from sim_backends.csp.charges import log as stage_log
    from sim_backends.csp.conformers import ZWITTERION_PRONE_TEXT, zwitterion_prone

    if zwitterion_prone(Chem.MolFromSmiles(smiles)):
        stage_log.warning("WARNING: %s", ZWITTERION_PRONE_TEXT.format(smiles=smiles))


def _run_stages(molecule, units, protocol, model_kwargs, min_kwargs, executor, progress, window2_kjmol,
                batch_size, warm_start, stage_meta, e_floor: float = math.inf
                ) -> tuple[list[dict], list[dict], float]:
    """Minimise the trial units with the chosen protocol; fills ``stage_meta``. Stage 2
    polishes stage-1 minima within ``window2_kjmol`` of the lowest of these units and
    ``e_floor`` (the lowest stage-1 energy of earlier rounds).

    Returns:
        (final results, first-stage results, summed minimisation CPU s).
    """
    if protocol == "full":
        results = _execute(molecule, units, model_kwargs, min_kwargs, executor, progress)
        cpu_s = float(sum(r["cpu_s"] for r in results))
        first = results
    else:
        t0 = time.perf_counter()
        stage1 = _execute(molecule, units, STAGE1_MODEL, {**min_kwargs, **STAGE1_MIN}, executor,
                          progress, "stage 1 (cheap model)")
        t1 = time.perf_counter()
        units2 = _stage2_units(stage1, window2_kjmol, batch_size, molecule.mass_amu, warm_start, e_floor)
        t2 = time.perf_counter()
        t_select = t2 - t1
        results = _execute(molecule, units2, model_kwargs, {**min_kwargs, **STAGE2_MIN}, executor, progress,
                           "stage 2 (full model)")
        first = stage1
        cpu1 = float(sum(r["cpu_s"] for r in stage1))
        cpu_s = cpu1 + float(sum(r["cpu_s"] for r in results))
        stage_meta.update({
            "stage1_model": dict(STAGE1_MODEL), "stage1_min": dict(STAGE1_MIN),
            "stage1_converged": int(sum(r["converged"].sum() for r in stage1)),
            "stage2_n": int(sum(len(u[1]["cell_params"]) for u in units2)),
            "stage1_cpu_s": cpu1, "stage2_select_s": t_select,
            "stage1_wall_s": t1 - t0, "stage2_wall_s": time.perf_counter() - t2,
        })
    return results, first, cpu_s


def _stage2_units(stage1: list[dict], window_kjmol: float, batch_size: int,
                  mass_amu: float, warm_start: bool = True,
                  e_floor: float = math.inf) -> list[tuple[str, dict[str, Any]]]:
    """Stage-1 minima to polish: converged, within ``window_kjmol`` of the lowest (of these
    and ``e_floor``), thinned.

    Thinning is a tight duplicate screen: within one search space group, a minimum whose
    stage-1 energy and density are within :data:`STAGE1_DUPLICATE_TOL` of a kept lower
    one is taken as the same minimum reached from another trial (its count goes to the
    kept one's multiplicity). The final StructureMatcher dedupe runs after stage 2.

    Returns:
        Units (space group, arrays) as for :func:`minimise_unit`, with ``multiplicity``
        (and the stage-1 optimiser states as ``warm`` if ``warm_start``).
    """
    energies = [r["energy_kjmol"][r["converged"]] for r in stage1]
    finite = np.concatenate(energies) if energies else np.zeros(0)
    finite = finite[np.isfinite(finite)]
    units: list[tuple[str, dict[str, np.ndarray]]] = []
    if not finite.size:
        return units
    e_cut = min(float(finite.min()), e_floor) + window_kjmol
    groups: dict[str, list[tuple[float, float, dict, int]]] = {}
    for r in stage1:
        z = r["coords_A"].shape[1]
        dens = z * mass_amu / np.abs(np.linalg.det(r["cells_A"])) * 1.66053906660
        for i in np.nonzero(r["converged"] & np.isfinite(r["energy_kjmol"]))[0]:
            if r["energy_kjmol"][i] <= e_cut:
                groups.setdefault(r["search_space_group"], []).append(
                    (float(r["energy_kjmol"][i]), float(dens[i]), r, int(i)))
    for sg in sorted(groups):
        kept: list[list] = []
        for e, d, r, i in sorted(groups[sg], key=lambda t: t[0]):
            match = None
            for k in reversed(kept):
                if e - k[0] > STAGE1_DUPLICATE_TOL[0]:
                    break
                if abs(d - k[1]) < STAGE1_DUPLICATE_TOL[1]:
                    match = k
                    break
            if match is None:
                kept.append([e, d, r, i, int(r["multiplicity"][i])])
            else:
                match[4] += int(r["multiplicity"][i])
        for start in range(0, len(kept), batch_size):
            part = kept[start:start + batch_size]
            arrays: dict[str, Any] = {
                "cell_params": np.stack([k[2]["cell_params"][k[3]] for k in part]),
                "centre_frac": np.stack([k[2]["centre_frac"][k[3]] for k in part]),
                "quaternions": np.stack([k[2]["quaternions"][k[3]] for k in part]),
                "multiplicity": np.array([k[4] for k in part]),
                "unit": np.array(len(units))}
            if warm_start:
                arrays["warm"] = {key: np.stack([k[2]["state"][key][k[3]] for k in part])
                                  for key in part[0][2]["state"]}
            units.append((sg, arrays))
    return units


def _bar_on_stderr() -> bool:
    """Whether a rich progress bar can be drawn on stderr (a terminal or Jupyter), as rich
    itself decides it; else the bar's final state would be written as lines of bar glyphs."""
    from rich.console import Console

    console = Console(stderr=True)
    return bool(console.is_terminal or console.is_jupyter)


def _unit_size(arrays: dict[str, np.ndarray]) -> int:
    """Trials in a unit (given, or to be generated)."""
    return int(arrays["generate"][0]) if "generate" in arrays else len(arrays["cell_params"])


def _execute(molecule, units, model_kwargs, min_kwargs, executor: MapExecutor, progress,
             label: str = "minimising trials") -> list[dict]:
    """Run :func:`minimise_unit` over all units on ``executor``, with progress."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    n_total = sum(_unit_size(u[1]) for u in units)
    results: list[dict] = []
    # on stderr, as run_csp's docstring says: stdout stays the caller's (a JSON or table there)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), disable=not progress,
                  transient=False) as bar:
        task = bar.add_task(label, total=n_total)
        items = [(sg, arrays, model_kwargs, min_kwargs) for sg, arrays in units]
        for r in executor.map_unordered(minimise_unit, items, shared=(molecule,)):
            results.append(r)
            bar.advance(task, len(r["energy_kjmol"]))
    # completion order varies with workers; sort so the landscape does not depend on it
    results.sort(key=lambda r: (r["search_space_group"], r["unit"]))
    return discard_collapsed(results, len(getattr(molecule, "symbols", ()) or ()))


def discard_collapsed(results: list[dict], n_atoms: int) -> list[dict]:
    """Mark minima below :data:`COLLAPSE_KJMOL_PER_ATOM` x ``n_atoms`` as not converged (in
    place; ``n_collapsed`` per result): a collapsed minimum is a failed minimisation, never the
    global minimum nor the anchor of the energy window."""
    floor = COLLAPSE_KJMOL_PER_ATOM * max(1, int(n_atoms))
    for r in results:
        collapsed = np.asarray(r["converged"], dtype=bool) & (np.asarray(r["energy_kjmol"], dtype=float) < floor)
        r["n_collapsed"] = int(collapsed.sum())
        if r["n_collapsed"]:
            r["converged"] = np.asarray(r["converged"], dtype=bool) & ~collapsed
    return results


def _lowest(results: list[dict]) -> float:
    """Lowest finite energy of the converged minima of ``results`` (inf if none)."""
    energies = np.concatenate([r["energy_kjmol"][r["converged"]] for r in results]) if results else np.zeros(0)
    finite = energies[np.isfinite(energies)]
    return float(finite.min()) if finite.size else math.inf


def _candidates(molecule, results: list[dict], e_max: float) -> list:
    """Dedupe Candidates of the converged minima of ``results`` at or below ``e_max``
    (kJ/mol), each with its multiplicity (trials merged into it before) and
    ``payload["key"]`` = (search, unit, index), the minimum's identity for
    :func:`~sim_backends.csp.dedupe.fit_memo`."""
    from sim_backends.csp.dedupe import Candidate, to_structure

    cands: list[Candidate] = []
    for r in results:
        z = r["coords_A"].shape[1]
        mult = r.get("multiplicity", np.ones(len(r["energy_kjmol"]), int))
        for i in np.nonzero(r["converged"])[0]:
            e = float(r["energy_kjmol"][i])
            if not np.isfinite(e) or e > e_max:
                continue
            vol = abs(float(np.linalg.det(r["cells_A"][i])))
            density = z * molecule.mass_amu / vol * 1.66053906660
            st = to_structure(molecule.symbols, r["cells_A"][i], r["coords_A"][i])
            cands.append(Candidate(e, density, st, {"search_space_group": r["search_space_group"], "z": z,
                                                    "z_prime_search": parse_search_label(r["search_space_group"])[1],
                                                    "key": (r["search_space_group"], int(r["unit"]), int(i))},
                                   multiplicity=int(mult[i])))
    return cands


def csp_entry(entry_id: str, energy_kjmol: float, density_gcm3: float, structure: Any, n_molecules: int,
              search_space_group: str, multiplicity: int = 1, search_cell: bool = False) -> LandscapeEntry:
    """A CSP minimum of ``n_molecules`` molecules in ``structure`` as a landscape entry in its
    :func:`~sim_backends.csp.landscape.output_cell`, with that cell's space group, Z and Z';
    ``search_cell``: kept in ``structure`` (``z`` = ``n_molecules``), the space group and Z'
    detected in it."""
    from sim_backends.csp.dedupe import detect_symmetry
    from sim_backends.csp.landscape import output_cell

    if search_cell:
        sym, num, zp = detect_symmetry(structure, n_molecules)
        z = n_molecules
    else:
        out = output_cell(structure, n_molecules)
        structure, z, sym, num, zp = out.structure, out.n_molecules, out.space_group, \
            out.space_group_number, out.z_prime
    return LandscapeEntry(id=entry_id, energy_kjmol=energy_kjmol, density_gcm3=density_gcm3, space_group=sym,
                          space_group_number=num, search_space_group=search_space_group, z=z,
                          multiplicity=multiplicity, structure=structure, z_prime=zp)


def _accumulate(total: dict[str, Any], part: dict[str, Any]) -> None:
    """Add a round's stage metadata into the run's: numbers summed, the rest kept."""
    for k, v in part.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(total.get(k), (int, float)):
            total[k] += v
        else:
            total.setdefault(k, v)


def _build_landscape(molecule, results: list[dict], energy_window_kjmol: float,
                     search_cells: bool = False) -> Landscape:
    """Filter converged minima in the energy window, dedupe, detect symmetry; each minimum
    in its output cell unless ``search_cells`` (:func:`run_csp`)."""

    from sim_backends.csp.dedupe import dedupe

    n_min = sum(len(r["energy_kjmol"]) for r in results)
    n_conv = int(sum(r["converged"].sum() for r in results))
    cands = _candidates(molecule, results, _lowest(results) + energy_window_kjmol)
    unique = dedupe(cands)
    minima = [csp_entry(f"m{k + 1:04d}", c.energy_kjmol, c.density_gcm3, c.structure, c.payload["z"],
                        c.payload["search_space_group"], c.multiplicity, search_cell=search_cells)
              for k, c in enumerate(unique)]
    meta = {"n_minimised": n_min, "n_converged": n_conv, "n_in_window": len(cands),
            "n_unique": len(minima)}
    return Landscape(getattr(molecule, "smiles", ""), minima, meta)

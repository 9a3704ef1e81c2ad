"""``csp-ff``: crystal structure prediction with the rigid-molecule W99 force field.

A molecule-level backend (fidelity 0, the cheapest rung of the ladder): given a
SMILES it runs :func:`~sim_backends.csp.run.run_csp` and reports the landscape's
summary values (the search runs in the calling process: inside a campaign that is the
worker task, so no Ray is started inside Ray); ``extra["landscape"]`` holds the unique minima (id, energy_kjmol,
density_gcm3, space_group, z, multiplicity, cif) so structure-level backends (xTB,
DFT, phonons) can refine them.

Params (``EvalInput.params`` or constructor keywords): ``n_trials`` (the trial budget, default
:data:`~sim_backends.csp.DEFAULT_TRIAL_BUDGET`, as ``crystal-agent csp``),
``space_groups`` (comma-separated or list; default: the ten common groups),
``seed`` (0), ``energy_window_kjmol`` (20), ``charges`` ("resp", "resp-lp", "resp-lpn" or "xtb"; default
the search's own, :func:`~sim_backends.csp.run.run_csp` with ``charges=None``: "resp-lpn" for a rigid
molecule, GFN2-xTB per conformer for a flexible one, as ``crystal-agent csp``),
``max_structures`` (100: the lowest minima whose records and CIFs go
into ``extra["landscape"]``; the values are computed over all unique minima),
``max_trials`` (the limit of ``n_trials``, :data:`~sim_backends.csp.run.MAX_TRIALS_DEFAULT`
unless raised), ``sampling`` ("converged": ``n_trials`` is a budget the search may stop
short of once the low-energy region is converged; "fixed"), ``z_prime`` (1, 2, "1,2" or [1, 2]:
the Z' values searched, :func:`~sim_backends.csp.run.run_csp`), ``racemic`` (False: a SMILES
naming one enantiomer is searched only in Sohncke groups; :mod:`sim_backends.csp.chirality`),
``flexible`` ("auto": a SMILES with rotatable bonds gets the flexible-molecule search; "rigid";
"always") and ``max_rotatable_bonds`` (the flexible search's limit, default 4), as the CLI's
``--flexible`` and ``--max-rotatable-bonds``. ``extra["csp"]["convergence"]``
holds the per-space-group convergence record of the landscape.
:meth:`CSPBackend.check_params` refuses what :func:`run_csp` would.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sim_backends import params as check
from sim_backends.csp import DEFAULT_CHARGES, DEFAULT_TRIAL_BUDGET
from sim_backends.base import Backend, EvalInput, ParamsError, SetupError
from sim_backends.validity import check_crystal_energy_result, structure_facts


def _parse_groups(value: Any) -> None:
    """Space groups as ``"P2_1/c,P-1"`` or a list of symbols, each one CSP supports."""
    from sim_backends.csp.spacegroups import parse_space_groups

    if value is not None and not (isinstance(value, str) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value))):
        raise ValueError(f"must be a comma-separated string or a list of symbols, got {value!r}")
    parse_space_groups(value)


def _parse_z_prime(value: Any) -> None:
    """Z' values as 1, 2, ``"1,2"`` or a list of integers."""
    from sim_backends.csp.spacegroups import parse_z_prime

    if isinstance(value, float) or not isinstance(value, (int, str, list)):
        raise ValueError(f"must be an integer, a comma-separated string or a list, got {value!r}")
    parse_z_prime(value)


class CSPBackend(Backend):
    """Rigid-molecule CSP (Z' = 1, optionally Z' = 2; W99 exp-6 + Ewald point charges)."""

    name: ClassVar[str] = "csp-ff"
    version: ClassVar[str] = "1"
    fidelity: ClassVar[int] = 0
    target: ClassVar[str] = "molecule"
    computes: ClassVar[tuple[str, ...]] = (
        "n_minima", "global_min_energy_kjmol", "global_min_density_gcm3",
        "n_within_5kjmol", "energy_gap_kjmol", "n_trials",
    )
    objective_key: ClassVar[str | None] = "global_min_energy_kjmol"
    may_be_nan: ClassVar[tuple[str, ...]] = ("energy_gap_kjmol",)
    description: ClassVar[str] = (
        "crystal structure prediction: Sobol trials in common space groups, batched "
        "rigid-body W99 + Ewald minimisation, StructureMatcher dedupe"
    )

    _DEFAULTS: ClassVar[dict[str, Any]] = {
        "n_trials": DEFAULT_TRIAL_BUDGET, "space_groups": None, "seed": 0, "energy_window_kjmol": 20.0,
        "charges": None, "max_structures": 100, "max_trials": None,
        "sampling": "converged", "z_prime": 1, "racemic": False,
        "flexible": "auto", "max_rotatable_bonds": None,
    }
    params_schema: ClassVar[dict[str, Any]] = {
        "n_trials": check.integer(1), "max_trials": check.integer(1),
        "space_groups": _parse_groups, "seed": check.integer(0),
        "energy_window_kjmol": check.number(0.0, lo_open=True),
        "charges": check.one_of("resp", "resp-lp", "resp-lpn", "xtb", "none"),
        "max_structures": check.integer(0), "sampling": check.one_of("converged", "fixed"),
        "z_prime": _parse_z_prime, "racemic": check.boolean,
        "flexible": check.one_of("auto", "rigid", "always"), "max_rotatable_bonds": check.integer(0),
    }

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        """The declared checks, then :func:`~sim_backends.csp.run.validate_csp_arguments`
        (``n_trials`` within ``max_trials``, the ranges :func:`run_csp` enforces)."""
        super().check_params(params)
        from sim_backends.csp.run import validate_csp_arguments

        p = {**cls._DEFAULTS, **params}
        limit = {} if p["max_trials"] is None else {"max_trials": p["max_trials"]}
        try:
            validate_csp_arguments(p["n_trials"], energy_window_kjmol=p["energy_window_kjmol"],
                                   seed=p["seed"], **limit)
        except ValueError as exc:
            key = str(exc).split()[0]
            if key not in cls._DEFAULTS:
                raise ParamsError("n_trials", str(exc)) from None
            raise ParamsError(key, str(exc).removeprefix(key + " ")) from None

    def level_of_theory(self, params: dict[str, Any] | None = None) -> str:
        """The level of the landscape's energies as printed next to them."""
        charges = {**self._DEFAULTS, **self.params, **(params or {})}["charges"]
        if charges is None:  # the search's default, by molecule (each landscape records its own)
            return ("W99 exp-6 + Ewald force field; charges by molecule: RESP HF/6-31G* + N lone-pair sites "
                    "(rigid), GFN2-xTB Mulliken per conformer (flexible)")
        label = {"resp": "RESP HF/6-31G*", "resp-lp": "RESP HF/6-31G* + lone-pair site",
                 "resp-lpn": "RESP HF/6-31G* + N lone-pair site",
                 "xtb": "GFN2-xTB Mulliken"}.get(charges, charges)
        return f"W99 exp-6 + Ewald force field, {label} charges"

    #: trials a converged search usually needs (benchmarks/csp_recovery.py: 1,920-4,480)
    TYPICAL_CONVERGED_TRIALS: ClassVar[int] = 3000

    def cost_estimate(self, inp: EvalInput) -> float:
        """CPU s: the RESP fit with RESP charges
        (:func:`~sim_backends.csp.charges.resp_cost_estimate`), then ~0.0025 s per trial and
        atom (hydrogens included; csp_recovery, default search: urea 36 s for 2,560 trials,
        naphthalene 106 s, anthracene 185 s), over ``n_trials`` or, with converged sampling,
        the trials a converged search usually needs."""
        from sim_backends.csp.charges import resp_basis_functions, resp_cost_estimate
        from sim_backends.molecule import atom_counts

        p = {**self._DEFAULTS, **self.params, **inp.params}
        try:
            n_trials = float(p["n_trials"])
            counts = atom_counts(inp.smiles)
        except (TypeError, ValueError):
            return 100.0
        if p.get("sampling", "converged") == "converged":
            n_trials = min(n_trials, self.TYPICAL_CONVERGED_TRIALS)
        # RESP charges: their HF/6-31G* fit first (coronene ~550 CPU s, anthracene 31 s)
        charges = DEFAULT_CHARGES if p["charges"] is None else str(p["charges"])  # (a flexible molecule: less)
        fit = resp_cost_estimate(resp_basis_functions(*counts))[0] if charges.startswith("resp") else 0.0
        return 5.0 + fit + 0.0025 * max(sum(counts), 1) * n_trials

    def _evaluate(self, inp: EvalInput) -> tuple[dict[str, float], dict[str, Any]]:
        from sim_backends.csp.run import run_csp
        from sim_backends.structures import Crystal, atoms_from_cif

        p = {**self._DEFAULTS, **inp.params}
        self.check_params(inp.params)
        limit = {} if p["max_trials"] is None else {"max_trials": int(p["max_trials"])}
        try:
            n_trials = int(p["n_trials"])
            landscape = run_csp(
                inp.smiles, n_trials, space_groups=p["space_groups"], seed=int(p["seed"]),
                energy_window_kjmol=float(p["energy_window_kjmol"]), progress=False,
                charges=None if p["charges"] is None else str(p["charges"]), sampling=str(p["sampling"]),
                z_prime=p["z_prime"], flexible=str(p["flexible"]),
                max_rotatable_bonds=None if p["max_rotatable_bonds"] is None else int(p["max_rotatable_bonds"]),
                racemic=bool(p["racemic"]), **limit,
            )
        except (ValueError, TypeError) as exc:
            raise SetupError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        if not landscape.minima:
            from sim_backends.base import RunError

            raise RunError(f"no converged minimum from {n_trials} trials")
        energies = [m.energy_kjmol for m in landscape.minima]
        e0 = energies[0]
        values = {
            "n_minima": float(len(landscape.minima)),
            "global_min_energy_kjmol": e0,
            "global_min_density_gcm3": landscape.minima[0].density_gcm3,
            "n_within_5kjmol": float(sum(e - e0 <= 5.0 for e in energies)),
            "energy_gap_kjmol": (energies[1] - e0) if len(energies) > 1 else float("nan"),
            "n_trials": float(landscape.meta.get("n_trials", n_trials)),
        }
        meta = {k: v for k, v in landscape.meta.items() if isinstance(v, (int, float, str, list))}
        meta["convergence"] = landscape.meta.get("convergence", {})
        records = landscape.to_records(with_cif=True)[: max(0, int(p["max_structures"]))]
        facts = structure_facts(Crystal.from_atoms(atoms_from_cif(landscape.minima[0].cif())))
        # the landscape's own level: the force field and the charges this molecule got (flexible: + intramolecular)
        level = landscape.levels.get("ff") or landscape.meta.get("level", "W99 + Ewald rigid-molecule force field")
        return values, {"landscape": records, "csp": meta, "level": level,
                        "validity": facts}

    def _check_physical(self, values: dict[str, float], extra: dict[str, Any]) -> None:
        """The global minimum's density, intermolecular contacts and lattice energy in
        the bounds of :mod:`sim_backends.validity`."""
        super()._check_physical(values, extra)
        check_crystal_energy_result({"energy_kjmol": values["global_min_energy_kjmol"]}, extra, self.name)

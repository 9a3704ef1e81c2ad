"""Hole reorganisation energy lambda_+ of a molecule at two fidelities.

The internal reorganisation energy of hole transfer is computed with the four-point
scheme (Nelsen, Blackstock & Kim, J. Am. Chem. Soc. 109, 677 (1987); Brédas et al.,
Chem. Rev. 104, 4971 (2004)) from the neutral (N) and cation (C) equilibrium
geometries::

    lambda_+ = [E_C(geom_N) - E_C(geom_C)] + [E_N(geom_C) - E_N(geom_N)]
             =        lambda_cation        +        lambda_neutral

In Marcus theory the hopping rate falls as exp(-lambda / 4kT), so small lambda_+ is
what a hole-transport material wants; rigid, extended pi systems have small values.
Literature values at B3LYP/6-31G(d): naphthalene 0.187 eV, anthracene 0.138 eV,
tetracene 0.113 eV, pentacene 0.095-0.098 eV (Coropceanu et al., Phys. Rev. Lett. 89,
275503 (2002); Gruhn et al., J. Am. Chem. Soc. 124, 7918 (2002)); benzene's cation is
Jahn-Teller distorted and its lambda_+ is much larger.

Two levels share :class:`ReorgBackend` and differ only in the electronic-structure
engine that relaxes geometries and computes energies:

* :class:`XtbReorgBackend` (fidelity 0): GFN2-xTB (Bannwarth, Ehlert & Grimme,
  J. Chem. Theory Comput. 15, 1652 (2019)) through ``tblite``'s ASE calculator, with
  ASE's BFGS optimiser starting from an RDKit ETKDG/MMFF94 conformer. The cation is a
  doublet with spin-resolved occupations of the (spin-independent) GFN2 Hamiltonian,
  as ``xtb --chrg 1 --uhf 1`` does. It also reports ``ip_gas_ev``, the adiabatic
  Delta-SCF IP shifted to experimental gas-phase ionisation energies
  (:func:`gas_ionisation_energy_ev`), for campaigns that bound the IP (hole injection).
* :class:`DftReorgBackend` (fidelity 1): Kohn-Sham DFT in PySCF (RKS for the neutral,
  UKS for the cation). By default (``geometry="dft"``) both states are relaxed at
  B3LYP/6-31G with geomeTRIC (Wang & Song, J. Chem. Phys. 144, 214108 (2016)) starting
  from the GFN2-xTB geometries, so all four energies belong to one level at its own
  minima. ``geometry="xtb"`` ("DFT//xTB": four B3LYP single points on the GFN2-xTB
  geometries, 5-8x cheaper) is a screening option, NOT equivalent to it; and
  ``opt_basis`` relaxes in a smaller basis. At B3LYP/6-31G (either geometry) it reports
  ``ip_gas_ev`` too (:func:`dft_gas_ionisation_energy_ev`), more accurate than
  GFN2-xTB's for azines; a campaign's constraint then takes it over the cheap estimate
  (:mod:`agent.constraints`).

Both levels declare the typical error of ``ip_gas_ev`` (``value_sd``, the leave-one-out
RMSE against experiment: :data:`XTB_IP_SD_EV`, :data:`DFT_IP_SD_EV`).

Choice of the default: DFT//xTB (four DFT single points on GFN2-xTB geometries) inherits
the xTB relaxation pattern and cannot follow a cation whose B3LYP ground state differs from
the GFN2-xTB one, so both states are relaxed at the DFT level by default; neither cheaper
protocol met the validation criteria (MAE <= 3 kJ/mol and Spearman >= 0.9 over >= 10
molecules). Figures: ``benchmarks/reorg_validation.py``, ``benchmarks/results/NOTES.md``.

Physical validity (:meth:`ReorgBackend._check_physical`, run by ``evaluate``): both
components lambda_cation, lambda_neutral >= -0.5 kJ/mol, lambda_+ > 0 and
IP_adiabatic <= IP_vertical + 0.5 kJ/mol, as at true minima of both states; otherwise
the result is failed, ``reason="unphysical: ..."`` naming the value and the level
(``extra["level"]``, e.g. "B3LYP/6-31G//GFN2-xTB geometries"). On borrowed
geometries (DFT//xTB) a component can come out negative when the xTB geometry is far
from this level's minimum (a quinone such as chloranil).

Unbalanced components on borrowed geometries (:func:`component_imbalance_warning`): in a
harmonic picture with equal curvatures of the two states, lambda_cation = lambda_neutral,
and at a level's own minima they stay close. A result whose geometries are not the
energy level's own minima (``dft-reorg`` with ``geometry="xtb"`` or ``opt_basis``) and
whose components differ by more than :data:`COMPONENT_IMBALANCE_FRACTION` of lambda_+
carries a warning in ``extra["warnings"]`` (one line, shown beside the value by
``crystal-agent status`` and the run summary). It is a warning only: the value stays a
value (not unreliable, :func:`unreliable_lambda_reason`), and its absence does not make
a DFT//xTB value accurate (:attr:`DftReorgBackend.caveat` states that level's bias).

Degenerate HOMO (Jahn-Teller cations), GFN2-xTB level. tblite smears the occupations at
an electronic temperature of 300 K, which keeps a degenerate HOMO pair equally occupied in
the cation: its hole is shared by the pair, the cation keeps the neutral's symmetry and its
Jahn-Teller relaxation is missing, so lambda_+ comes out too small. When the relaxed
neutral's HOMO is degenerate (its hole frontier manifold, orbitals within
:data:`~sim_backends.transfer.DEGENERATE_MANIFOLD_MEV` of the HOMO at the neutral minimum,
has more than one orbital: the test the transfer integrals use), :class:`XtbReorgBackend`
computes both cation energies E_C(geom_N) and E_C(geom_C) at the electronic temperature
``degenerate_cation_temperature_K`` (10 K: near-integer occupations) and relaxes the cation
from the neutral minimum displaced by a fixed seeded random displacement
(:data:`JAHN_TELLER_DISPLACEMENT_A` sd per coordinate, generator seeded by ``seed``) so that
it can leave the symmetric geometry; the neutral stays at 300 K. ``extra["jahn_teller"]``
says what was done: :data:`JAHN_TELLER_RESOLVED` when it was, ``"unresolved: <reason>;
300 K value"`` when the low-temperature SCF or relaxation failed and the 300 K result is
returned instead (benzene: its 10 K cation SCF does not converge), absent for a
non-degenerate HOMO, whose result is the 300 K one unchanged; ``extra["hole_manifold"]``
gives the test's numbers. Small cations (benzene, ethylene) also get poor GFN2-xTB
geometries.

All values returned are in kJ/mol per molecule (1 eV = 96.485332 kJ/mol); ``extra``
also holds lambda in eV, the four total energies in eV, and the optimised geometries
as XYZ text for molecules up to 60 atoms. Heavy libraries are imported inside the
functions that use them.

Over 500 lines on purpose: the GFN2-xTB and DFT backends share the four-point protocol,
the physical-validity check and the result layout of ReorgBackend; a split by level would
separate each from the contract it implements.
"""

from __future__ import annotations

import os
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from sim_backends import params as check
from sim_backends.base import Backend, EvalInput, PhysicsError, RunError, SetupError
from sim_backends.molecule import MAX_HEAVY_ATOMS, embed_conformer, to_xyz, validate_smiles

if TYPE_CHECKING:
    import numpy as np

#: kJ/mol per eV (CODATA 2018: e * N_A / 1000)
KJMOL_PER_EV = 96.485332
#: eV per hartree (CODATA 2018)
EV_PER_HARTREE = 27.211386246
#: largest molecule (atoms incl. H) whose optimised geometries are kept in ``extra``
MAX_ATOMS_XYZ_IN_EXTRA = 60
#: a component of lambda below -this (kJ/mol), or IP_adiabatic above IP_vertical by
#: more, is unphysical: the geometries are not minima of the level that computes the
#: energies. 0.5 kJ/mol (5 meV) is about ten times the lambda error of the default
#: optimiser thresholds and far below the 5-40 kJ/mol lambda_+ of rigid pi systems.
NEGATIVE_TOLERANCE_KJMOL = 0.5
#: |lambda_cation - lambda_neutral| above this fraction of lambda_+ on borrowed geometries
#: warns (:func:`component_imbalance_warning`). At their own minima the 12 molecules of
#: benchmarks/reorg_validation.py stay below it at both levels (B3LYP/6-31G both states
#: relaxed <= 0.06, GFN2-xTB <= 0.46: thiophene); on GFN2-xTB geometries naphthalene
#: (0.79: 13.6 vs 1.6 kJ/mol), thiazole (0.68) and oxazole (0.55) exceed it.
COMPONENT_IMBALANCE_FRACTION = 0.5

#: re-relaxations of a state found unstable at its relaxed geometry (from the followed state)
MAX_RELAX_RESTARTS = 1

#: electronic temperature (K) of the GFN2-xTB cation when the neutral's HOMO is degenerate
#: (``degenerate_cation_temperature_K``; module docstring)
DEGENERATE_CATION_TEMPERATURE_K = 10.0
#: sd (angstrom) of the fixed seeded random displacement of the neutral minimum from which
#: such a cation is relaxed (breaks the symmetry the optimiser would otherwise keep)
JAHN_TELLER_DISPLACEMENT_A = 0.02
#: ``extra["jahn_teller"]`` of a degenerate-HOMO cation treated at the low temperature
#: (formatted with the temperature); an unresolved one starts with "unresolved:"
JAHN_TELLER_RESOLVED = "cation relaxed at {:g} K electronic temperature (degenerate HOMO)"


#: objectives computed from lambda+ (the reorganisation energy itself, the ESF hole mobilities)
LAMBDA_OBJECTIVES = ("reorg_energy_kjmol", "log10_landscape_mobility_hole", "landscape_mobility_hole_cm2Vs")


def unreliable_lambda_reason(extra: dict[str, Any] | None, objective: str = "reorg_energy_kjmol") -> str | None:
    """Why a result's ``objective`` must not be taken as a value, or None: it is computed
    from a GFN2-xTB lambda+ (:data:`LAMBDA_OBJECTIVES`) whose neutral has a degenerate hole
    frontier manifold (a Jahn-Teller cation) and whose low-temperature cation failed, so
    lambda+ is the undistorted cation's, far too small (benzene: 6.1 kJ/mol against 51.5
    from a symmetry-broken start, data/esf/README.md). ``xtb-reorg`` and the ESF levels
    record that status in ``extra["jahn_teller"]``."""
    if objective not in LAMBDA_OBJECTIVES:
        return None
    status = str((extra or {}).get("jahn_teller") or "")
    # written only after the neutral's hole manifold tested degenerate (the 10 K cation failed);
    # "unresolved: HOMO degeneracy not tested" is not this
    if status.startswith("unresolved:") and " K cation:" in status:
        cause = status.split(":", 1)[1].strip().rstrip(";")  # e.g. "10 K cation: xTB SCF failed ..."
        return ("degenerate HOMO (Jahn-Teller cation) not relaxed at low electronic temperature "
                f"({cause}): lambda+ of the undistorted cation, too small")
    return None


def component_imbalance_warning(values: dict[str, float], level: str) -> str | None:
    """The warning of a four-point result computed on borrowed geometries (not the minima
    of the level that computes the energies) whose components are unbalanced:
    ``|lambda_cation - lambda_neutral| > COMPONENT_IMBALANCE_FRACTION * lambda_+``
    (:data:`COMPONENT_IMBALANCE_FRACTION`; nearly equal in a harmonic picture at the
    level's own minima), else None. The caller decides that the geometries are borrowed;
    ``level`` is the result's level (``extra["level"]``)."""
    lam = values.get("reorg_energy_kjmol")
    lam_c, lam_n = values.get("lambda_cation_kjmol"), values.get("lambda_neutral_kjmol")
    if lam is None or lam_c is None or lam_n is None or not lam > 0.0:
        return None
    share = abs(lam_c - lam_n) / lam
    if share <= COMPONENT_IMBALANCE_FRACTION:
        return None
    return (f"unbalanced lambda components on borrowed geometries ({level}): lambda_cation "
            f"{lam_c:.1f} and lambda_neutral {lam_n:.1f} kJ/mol differ by {share:.0%} of lambda+ "
            f"(> {COMPONENT_IMBALANCE_FRACTION:.0%}; nearly equal at a level's own minima): the geometries "
            "are far from this level's minima and lambda+ may be far off; confirm with both states relaxed")


def jahn_teller_resolved(status: str | None) -> bool:
    """True when ``extra["jahn_teller"]`` of an ``xtb-reorg`` result says the
    degenerate-HOMO cation was relaxed at the low electronic temperature."""
    return bool(status) and str(status).startswith(JAHN_TELLER_RESOLVED.split("{")[0])


NEUTRAL = (0, 1)  # (charge, multiplicity)
CATION = (1, 2)


def _atom_counts(smiles: str) -> tuple[int, int, int]:
    """(n_H, n_first_row, n_second_row) atoms of a molecule, hydrogens included
    (:func:`sim_backends.molecule.atom_counts`, cached per SMILES)."""
    from sim_backends.molecule import atom_counts

    return atom_counts(smiles)


class ReorgBackend(Backend):
    """Four-point hole reorganisation energy; subclasses supply the energy engine.

    Common params:
        seed (int, 0): seed of the RDKit conformer embedding.
        max_heavy_atoms (int, 40): larger molecules are rejected (SetupError).

    Subclasses implement :meth:`_relax` and :meth:`_energy` (energies in eV,
    coordinates in angstrom) and may override :meth:`_start_geometries` and
    :meth:`_new_context`. Every hook is given ``ctx``, the state of this one evaluation
    (:meth:`_new_context`, made anew by each ``evaluate`` call): an instance keeps no
    per-evaluation state, so evaluations on one instance cannot affect each other.
    """

    target = "molecule"
    computes: ClassVar[tuple[str, ...]] = (
        "reorg_energy_kjmol",
        "lambda_cation_kjmol",
        "lambda_neutral_kjmol",
        "ip_adiabatic_kjmol",
        "ip_vertical_kjmol",
    )
    objective_key = "reorg_energy_kjmol"
    params_schema: ClassVar[dict[str, Any]] = {
        "seed": check.integer(0), "max_heavy_atoms": check.integer(1),
    }

    # -- engine hooks ---------------------------------------------------------------------
    @abstractmethod
    def _relax(
        self, symbols: list[str], coords_A: np.ndarray, state: tuple[int, int], params: dict[str, Any],
        ctx: Any,
    ) -> tuple[float, np.ndarray, dict[str, Any]]:
        """Relax one charge state; return ``(energy_eV, coords_A (n, 3), info)``."""

    @abstractmethod
    def _energy(
        self, symbols: list[str], coords_A: np.ndarray, state: tuple[int, int], params: dict[str, Any],
        ctx: Any,
    ) -> float:
        """Single-point total energy in eV of ``state`` = (charge, multiplicity)."""

    def _start_geometries(
        self, symbols: list[str], coords_A: np.ndarray, params: dict[str, Any], ctx: Any
    ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
        """Starting geometries (neutral, cation or None = the relaxed neutral), info."""
        return coords_A, None, {}

    def _new_context(self, params: dict[str, Any]) -> Any:
        """The state of one evaluation with ``params`` (None: the engine keeps none)."""
        return None


    @abstractmethod
    def _level(self, params: dict[str, Any]) -> str:
        """Level of theory as printed, e.g. ``"B3LYP/6-31G//GFN2-xTB geometries"``."""

    def _borrowed_geometries(self, params: dict[str, Any]) -> bool:
        """True when the geometries are not minima of the level computing the energies."""
        return False

    def _value_warnings(self, values: dict[str, float], params: dict[str, Any]) -> list[str]:
        """The warnings of a result with ``values`` under ``params`` (``extra["warnings"]``):
        :func:`component_imbalance_warning` when the geometries are borrowed."""
        if not self._borrowed_geometries(params):
            return []
        warning = component_imbalance_warning(values, self._level(params))
        return [warning] if warning else []

    # -- the scheme ------------------------------------------------------------------------
    def _evaluate(self, inp: EvalInput) -> tuple[dict[str, float], dict[str, Any]]:
        return self._four_point(inp, self._new_context(inp.params))

    def _four_point(self, inp: EvalInput, ctx: Any) -> tuple[dict[str, float], dict[str, Any]]:
        """The four-point scheme for ``inp``, every hook given the evaluation's ``ctx``."""
        import time

        import numpy as np

        cpu0 = time.process_time()
        p = inp.params
        canon = validate_smiles(inp.smiles, int(p.get("max_heavy_atoms", MAX_HEAVY_ATOMS)))
        symbols, coords0 = embed_conformer(canon, seed=int(p.get("seed", 0)))
        start_n, start_c, start_info = self._start_geometries(symbols, coords0, p, ctx)
        e_nn, geom_n, info_n = self._relax(symbols, start_n, NEUTRAL, p, ctx)
        e_cc, geom_c, info_c = self._relax(
            symbols, geom_n if start_c is None else start_c, CATION, p, ctx
        )
        e_cn = self._energy(symbols, geom_n, CATION, p, ctx)
        e_nc = self._energy(symbols, geom_c, NEUTRAL, p, ctx)
        lam_c_ev = e_cn - e_cc
        lam_n_ev = e_nc - e_nn
        lam_ev = lam_c_ev + lam_n_ev
        values = {
            "reorg_energy_kjmol": lam_ev * KJMOL_PER_EV,
            "lambda_cation_kjmol": lam_c_ev * KJMOL_PER_EV,
            "lambda_neutral_kjmol": lam_n_ev * KJMOL_PER_EV,
            "ip_adiabatic_kjmol": (e_cc - e_nn) * KJMOL_PER_EV,
            "ip_vertical_kjmol": (e_cn - e_nn) * KJMOL_PER_EV,
        }
        extra: dict[str, Any] = {
            "smiles": canon,
            "level": self._level(p),
            "n_atoms": len(symbols),
            "reorg_energy_ev": lam_ev,
            "energies_ev": {"N@N": e_nn, "C@C": e_cc, "C@N": e_cn, "N@C": e_nc},
            "neutral": info_n,
            "cation": info_c,
            **start_info,
            "cpu_s": time.process_time() - cpu0,
            "rmsd_n_to_c_A": float(np.sqrt(np.mean(np.sum((geom_n - geom_c) ** 2, axis=1)))),
        }
        if warnings := self._value_warnings(values, p):
            extra["warnings"] = warnings
        if len(symbols) <= MAX_ATOMS_XYZ_IN_EXTRA:
            extra["xyz_neutral"] = to_xyz(symbols, geom_n, f"{canon} neutral {self.name}")
            extra["xyz_cation"] = to_xyz(symbols, geom_c, f"{canon} cation {self.name}")
        return values, extra

    def _check_physical(self, values: dict[str, float], extra: dict[str, Any]) -> None:
        """Four-point lambda_+ is physical only if both geometries are minima.

        At the minimum of each state neither relaxation energy can be negative, so
        every component lambda_cation, lambda_neutral >= -:data:`NEGATIVE_TOLERANCE_KJMOL`,
        the total > 0, and IP_adiabatic <= IP_vertical + the same tolerance. A
        violation raises :class:`~sim_backends.base.PhysicsError` naming the value,
        unit and level (``extra["level"]``).
        """
        super()._check_physical(values, extra)
        tol = NEGATIVE_TOLERANCE_KJMOL
        level = extra.get("level", self.name)
        for key in ("lambda_cation", "lambda_neutral"):
            lam = values[f"{key}_kjmol"]
            if lam < -tol:
                raise PhysicsError(f"{key} = {lam:.1f} kJ/mol < -{tol} ({level})")
        total = values["reorg_energy_kjmol"]
        if total <= 0.0:
            raise PhysicsError(f"lambda+ = {total:.2f} kJ/mol <= 0 ({level})")
        ip_ad, ip_v = values["ip_adiabatic_kjmol"], values["ip_vertical_kjmol"]
        if ip_ad > ip_v + tol:
            raise PhysicsError(
                f"IP_adiabatic = {ip_ad:.1f} kJ/mol > IP_vertical = {ip_v:.1f} kJ/mol ({level})"
            )


# -- GFN2-xTB ------------------------------------------------------------------------------


def _tblite_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tblite")
    except PackageNotFoundError:
        return "unknown"


def xtb_relax(
    symbols: list[str],
    coords_A: np.ndarray,
    state: tuple[int, int],
    fmax_eV_A: float = 0.01,
    max_steps: int = 500,
    max_cycles: int = 250,
    electronic_temperature_K: float | None = None,
) -> tuple[float, np.ndarray, int]:
    """Relax a molecule with GFN2-xTB (tblite) and ASE's BFGS.

    Args:
        symbols: element symbols, length n.
        coords_A: start coordinates, shape (n, 3), angstrom.
        state: (charge, spin multiplicity).
        fmax_eV_A: convergence threshold on the largest atomic force, eV/angstrom.
        max_steps: optimiser step cap.
        max_cycles: SCF iteration cap per energy.
        electronic_temperature_K: tblite's electronic temperature (None: its default, 300 K).

    Returns:
        ``(energy_eV, coords_A (n, 3), n_steps)`` at the relaxed geometry.

    Raises:
        RunError: SCF not converged, or the optimiser used ``max_steps`` steps.
    """
    import numpy as np
    from ase import Atoms
    from ase.optimize import BFGS

    atoms = Atoms(symbols, positions=np.asarray(coords_A, dtype=float))
    atoms.calc = _tblite_calc(state, max_cycles, electronic_temperature_K)
    opt = BFGS(atoms, logfile=None, maxstep=0.2)
    try:
        converged = opt.run(fmax=fmax_eV_A, steps=max_steps)
        energy = float(atoms.get_potential_energy())
    except Exception as exc:  # tblite raises ase CalculationFailed on SCF failure
        raise RunError(f"xTB SCF failed for charge {state[0]:+d}: {' '.join(str(exc).split())}") from None
    if not converged:
        raise RunError(f"xTB optimisation (charge {state[0]:+d}) not converged in {max_steps} steps")
    return energy, atoms.get_positions().copy(), int(opt.nsteps)


def xtb_energy(
    symbols: list[str], coords_A: np.ndarray, state: tuple[int, int], max_cycles: int = 250,
    electronic_temperature_K: float | None = None,
) -> float:
    """GFN2-xTB single-point energy in eV; coords_A shape (n, 3) in angstrom;
    ``electronic_temperature_K`` None: tblite's default (300 K)."""
    import numpy as np
    from ase import Atoms

    atoms = Atoms(symbols, positions=np.asarray(coords_A, dtype=float))
    atoms.calc = _tblite_calc(state, max_cycles, electronic_temperature_K)
    try:
        return float(atoms.get_potential_energy())
    except Exception as exc:
        raise RunError(f"xTB SCF failed for charge {state[0]:+d}: {' '.join(str(exc).split())}") from None


def _tblite_calc(state: tuple[int, int], max_cycles: int, electronic_temperature_K: float | None = None):
    from tblite.ase import TBLite

    charge, mult = state
    extra = {} if electronic_temperature_K is None else {"electronic_temperature": float(electronic_temperature_K)}
    return TBLite(
        method="GFN2-xTB", charge=charge, multiplicity=mult, verbosity=0,
        max_iterations=int(max_cycles), **extra,
    )


#: experimental gas-phase ionisation energy minus the GFN2-xTB (tblite) adiabatic Delta-SCF one,
#: eV: the mean over the 34 molecules of ``data/benchmarks/ip_gas_exp.csv`` (NIST WebBook
#: evaluated IEs; ``benchmarks/ip_calibration.py``). Raw GFN2-xTB Delta-SCF IPs are about 4.7 eV
#: too high (the xtb program subtracts its own empirical shift for the same reason).
XTB_IP_SHIFT_EV = -4.72
#: leave-one-out mean absolute error of the shifted IPs over that set, eV (azines, whose first
#: ionisation is from the N lone pair, come out 0.6-0.9 eV too low; acenes within 0.1 eV)
XTB_IP_MAE_EV = 0.22
#: leave-one-out root-mean-square error of the same, eV: the ``value_sd`` of ``ip_gas_ev``
XTB_IP_SD_EV = 0.32
#: experimental gas-phase ionisation energy minus the B3LYP/6-31G adiabatic Delta-SCF one (both
#: states relaxed at that level, ``dft-reorg``'s default), eV: the mean over the 20 cheapest
#: molecules of ``data/benchmarks/ip_gas_exp.csv`` (ethylene to indole, azines and substituted
#: benzenes included; ``benchmarks/ip_calibration.py --level dft``)
DFT_IP_SHIFT_EV = 0.36
#: leave-one-out root-mean-square error of the shifted B3LYP/6-31G IPs over that set, eV (MAE
#: 0.10, largest furan +0.28; the azines within 0.12, where GFN2-xTB is 0.5-0.95 eV off)
DFT_IP_SD_EV = 0.13
#: (functional, basis) the shift is fitted for; ``dft-reorg`` reports ``ip_gas_ev`` only there
#: (with ``geometry="xtb"`` too: the DFT//xTB adiabatic IPs of the twelve molecules of
#: benchmarks/reorg_validation.py differ from the DFT//DFT ones by 0.01-0.15 eV, median 0.06)
DFT_IP_CALIBRATED_FOR = ("b3lyp", "6-31g")
#: the level of theory of the ``ip_gas_ev`` each level reports (``Backend.value_levels``)
XTB_IP_LEVEL = f"GFN2-xTB ΔSCF {'-' if XTB_IP_SHIFT_EV < 0 else '+'} {abs(XTB_IP_SHIFT_EV):.2f} eV empirical shift"
DFT_IP_LEVEL = f"B3LYP/6-31G ΔSCF {'-' if DFT_IP_SHIFT_EV < 0 else '+'} {abs(DFT_IP_SHIFT_EV):.2f} eV empirical shift"


def xtb_lambda_level(degenerate_cation_temperature_K: float = DEGENERATE_CATION_TEMPERATURE_K) -> str:
    """The level of ``xtb-reorg``'s lambda+, saying at which electronic temperature a cation
    of a degenerate HOMO is treated (Jahn-Teller: module docstring; 0, the test off, every
    cation at tblite's 300 K)."""
    base = "GFN2-xTB four-point lambda+ (tblite), gas phase"
    if not degenerate_cation_temperature_K:
        return f"{base}; every cation at 300 K electronic temperature (no Jahn-Teller relaxation)"
    return (f"{base}; cation at {degenerate_cation_temperature_K:g} K electronic temperature where "
            "the HOMO is degenerate (Jahn-Teller)")


#: the level of the lambda+ ``xtb-reorg`` reports with its default calculation settings (the
#: one the ESF levels report too: they call it, :func:`sim_backends.esf._lambda`)
XTB_LAMBDA_LEVEL = xtb_lambda_level()
#: B3LYP/6-31G//B3LYP/6-31G minus GFN2-xTB lambda+, kJ/mol: the median over the molecules with
#: at least three rings (polycyclic pi systems: acenes, thienoacenes, carbazoles) of
#: ``data/benchmarks/reorg_pi_dftdft.csv`` and ``reorg_pool60_dftdft.csv``, degenerate HOMOs left
#: out (``benchmarks/reorg_calibration.py``; the median, not the mean: a few small fused
#: thiophenes are off by 20-30 kJ/mol, which a constant cannot mend). GFN2-xTB's lambda+ of
#: these is too small by about this much (pentacene 4.5 against 9.2 published). The ESF levels
#: add it to the lambda+ of every mobility (:func:`sim_backends.esf._lambda`); ``xtb-reorg``
#: itself reports the raw value.
XTB_LAMBDA_SHIFT_KJMOL = 5.06
#: leave-one-out RMSE of the shifted value on that set, kJ/mol (the sd of the calibrated lambda+)
XTB_LAMBDA_SHIFT_SD_KJMOL = 8.6
#: the number of molecules the shift was fitted on (all of three rings; the larger ones are
#: tested out of sample below)
XTB_LAMBDA_SHIFT_N = 10
#: Spearman rank correlation of GFN2-xTB and B3LYP lambda+ over those molecules
XTB_LAMBDA_SPEARMAN = 0.49
#: the shift's test out of sample: polycyclic molecules computed after it was fixed
#: (``data/benchmarks/reorg_pi_holdout_dftdft.csv``; tetracene, pyrene, BTBT, ...), their
#: number and the mean absolute error of the shifted and of the raw GFN2-xTB lambda+, kJ/mol
XTB_LAMBDA_HOLDOUT_N = 5
XTB_LAMBDA_HOLDOUT_MAE_KJMOL = 2.19
XTB_LAMBDA_HOLDOUT_RAW_MAE_KJMOL = 5.87
#: ``xtb-reorg`` params that change its lambda+ calculation (``max_heavy_atoms`` only refuses)
#: with their defaults
_XTB_CALCULATION_DEFAULTS = {"seed": 0, "fmax": 0.01, "max_steps": 500, "max_cycles": 250,
                             "degenerate_cation_temperature_K": DEGENERATE_CATION_TEMPERATURE_K}


def gas_ionisation_energy_ev(ip_adiabatic_xtb_kjmol: float) -> float:
    """Estimated gas-phase adiabatic ionisation energy (eV) from the GFN2-xTB Delta-SCF one
    (kJ/mol): shifted by :data:`XTB_IP_SHIFT_EV`, typical error :data:`XTB_IP_MAE_EV`."""
    return float(ip_adiabatic_xtb_kjmol) / KJMOL_PER_EV + XTB_IP_SHIFT_EV


def dft_gas_ionisation_energy_ev(ip_adiabatic_dft_kjmol: float) -> float:
    """Estimated gas-phase adiabatic ionisation energy (eV) from the B3LYP/6-31G Delta-SCF
    one (kJ/mol): shifted by :data:`DFT_IP_SHIFT_EV`, typical error :data:`DFT_IP_SD_EV`."""
    return float(ip_adiabatic_dft_kjmol) / KJMOL_PER_EV + DFT_IP_SHIFT_EV


class XtbReorgBackend(ReorgBackend):
    """Hole reorganisation energy with GFN2-xTB (tblite), fidelity 0.

    Params (besides those of :class:`ReorgBackend`):
        fmax (float, 0.01): force convergence threshold, eV/angstrom.
        max_steps (int, 500): BFGS step cap per optimisation.
        max_cycles (int, 250): SCF iteration cap per energy.
        degenerate_cation_temperature_K (float, 10): when the relaxed neutral's HOMO is
            degenerate, both cation energies and the cation relaxation (from the neutral
            minimum with a fixed seeded displacement) use this electronic temperature
            instead of tblite's 300 K, so the Jahn-Teller cation can distort (module
            docstring); ``extra["jahn_teller"]`` records the outcome, including a fall-back
            to the 300 K result when that SCF or relaxation fails. 0 turns the test off (every
            molecule at 300 K). A non-degenerate HOMO is unaffected (one extra neutral SCF
            for the test).

    Cost (CPU seconds on one core, ``benchmarks/reorg_timing.py``): 0.2-0.4 s for
    thiophene to anthracene; a degenerate HOMO adds one cation relaxation from a
    displaced start (triphenylene, coronene ~1-2 s in all).
    """

    name = "xtb-reorg"
    version = f"3+tblite-{_tblite_version()}"
    fidelity = 0
    computes: ClassVar[tuple[str, ...]] = (*ReorgBackend.computes, "ip_gas_ev")
    value_sd: ClassVar[dict[str, float]] = {"ip_gas_ev": XTB_IP_SD_EV}
    value_levels: ClassVar[dict[str, str]] = {"ip_gas_ev": XTB_IP_LEVEL, "reorg_energy_kjmol": XTB_LAMBDA_LEVEL}
    description = "hole reorganisation energy lambda+ (four-point), GFN2-xTB via tblite"
    params_schema: ClassVar[dict[str, Any]] = {
        **ReorgBackend.params_schema, "fmax": check.number(0.0, lo_open=True),
        "max_steps": check.integer(1), "max_cycles": check.integer(1),
        "degenerate_cation_temperature_K": check.number(0.0, 300.0),
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        # calculation settings other than the defaults make another lambda+ than the ESF
        # levels' (a ladder of the two is then not one computation twice)
        own = {k: params[k] for k, d in _XTB_CALCULATION_DEFAULTS.items()
               if params.get(k) is not None and params[k] != d}
        if own:  # the cation temperature is named by the level itself
            t_low = own.pop("degenerate_cation_temperature_K", DEGENERATE_CATION_TEMPERATURE_K)
            settings = ", ".join(f"{k} = {v:g}" if isinstance(v, (int, float)) else f"{k} = {v}"
                                 for k, v in own.items())
            self.value_levels = {**type(self).value_levels, "reorg_energy_kjmol":
                                 xtb_lambda_level(float(t_low)) + (f" ({settings})" if settings else "")}

    def cost_estimate(self, inp: EvalInput) -> float:
        n_h, n_1, n_2 = _atom_counts(inp.smiles)
        n_atoms = n_h + n_1 + n_2
        # measured CPU s (benchmarks/reorg_timing.py): thiophene 0.3, naphthalene 0.2,
        # anthracene 0.4 (the number of BFGS steps varies more than the cost per step)
        return 0.05 + 6.0e-4 * n_atoms**2

    def _level(self, params: dict[str, Any]) -> str:
        return "GFN2-xTB"

    def _new_context(self, params: dict[str, Any]) -> dict[str, Any]:
        """This evaluation's degenerate-HOMO state: the neutral minimum when its HOMO is
        degenerate, the cation's electronic temperature (None: tblite's 300 K), its energy at
        the neutral minimum, and what goes to ``extra`` (``hole_manifold``, ``jahn_teller``)."""
        return {"geom_n": None, "t_cation": None, "e_cn": None, "report": {}}

    def _evaluate(self, inp: EvalInput) -> tuple[dict[str, float], dict[str, Any]]:
        ctx = self._new_context(inp.params)
        values, extra = self._four_point(inp, ctx)
        extra.update(ctx["report"])
        values["ip_gas_ev"] = gas_ionisation_energy_ev(values["ip_adiabatic_kjmol"])
        return values, extra

    def _relax(self, symbols, coords_A, state, params, ctx):
        kw = {"fmax_eV_A": float(params.get("fmax", 0.01)), "max_steps": int(params.get("max_steps", 500)),
              "max_cycles": int(params.get("max_cycles", 250))}
        if state == CATION and ctx["geom_n"] is not None:
            out = self._relax_jahn_teller(symbols, params, ctx, kw)
            if out is not None:
                return out
        energy, coords, n_steps = xtb_relax(symbols, coords_A, state, **kw)
        if state == NEUTRAL:
            self._test_degenerate_homo(symbols, coords, params, ctx)
        return energy, coords, {"n_opt_steps": n_steps}

    def _test_degenerate_homo(self, symbols, coords_A, params, ctx) -> None:
        """Record the neutral minimum's hole frontier manifold; keep the geometry in ``ctx``
        when it has more than one orbital and the low-temperature cation is on."""
        t_low = float(params.get("degenerate_cation_temperature_K", DEGENERATE_CATION_TEMPERATURE_K) or 0.0)
        if t_low <= 0.0:
            return
        from ase import Atoms

        from sim_backends.base import BackendError
        from sim_backends.transfer import xtb_orbitals

        try:
            orb = xtb_orbitals(Atoms(symbols, positions=coords_A), max_iterations=int(params.get("max_cycles", 250)),
                               what="the neutral at its minimum")
        except BackendError as exc:
            ctx["report"]["jahn_teller"] = (f"unresolved: HOMO degeneracy not tested "
                                            f"({' '.join(str(exc).split())[:120]}); 300 K value")
            return
        info = orb.manifold_info("hole")
        ctx["report"]["hole_manifold"] = {k: (round(v, 3) if v != float("inf") else None) for k, v in info.items()}
        if info["n"] > 1:
            ctx["geom_n"] = coords_A.copy()

    def _relax_jahn_teller(self, symbols, params, ctx, kw):
        """Cation energy at the neutral minimum and the cation relaxed from the displaced
        neutral minimum, both at the low electronic temperature; None (with the reason in
        ``ctx``) when either fails, so the caller relaxes at 300 K."""
        import numpy as np

        t_low = float(params.get("degenerate_cation_temperature_K", DEGENERATE_CATION_TEMPERATURE_K))
        geom_n = ctx["geom_n"]
        shake = np.random.default_rng(int(params.get("seed", 0))).normal(0.0, JAHN_TELLER_DISPLACEMENT_A, geom_n.shape)
        try:
            e_cn = xtb_energy(symbols, geom_n, CATION, kw["max_cycles"], t_low)
            energy, coords, n_steps = xtb_relax(symbols, geom_n + shake, CATION, **kw,
                                                electronic_temperature_K=t_low)
        except RunError as exc:
            ctx["report"]["jahn_teller"] = f"unresolved: {t_low:g} K cation: {exc}; 300 K value"
            return None
        ctx.update({"t_cation": t_low, "e_cn": e_cn})
        ctx["report"]["jahn_teller"] = JAHN_TELLER_RESOLVED.format(t_low)
        return energy, coords, {"n_opt_steps": n_steps, "electronic_temperature_K": t_low}

    def _energy(self, symbols, coords_A, state, params, ctx):
        if state == CATION and ctx["t_cation"] is not None:
            import numpy as np

            if np.array_equal(coords_A, ctx["geom_n"]):
                return ctx["e_cn"]
            return xtb_energy(symbols, coords_A, state, int(params.get("max_cycles", 250)), ctx["t_cation"])
        return xtb_energy(symbols, coords_A, state, int(params.get("max_cycles", 250)))


# -- DFT (PySCF) ---------------------------------------------------------------------------


def _pyscf_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pyscf")
    except PackageNotFoundError:
        return "unknown"


#: basis functions per (H, first-row, second-row) atom for common bases (spherical)
_N_BF = {
    "sto-3g": (1, 5, 9),
    "3-21g": (2, 9, 13),
    "6-31g": (2, 9, 13),
    "6-31g*": (2, 14, 18),
    "6-31g(d)": (2, 14, 18),
    "def2-svp": (5, 14, 18),
    "def2-svpd": (8, 17, 22),
    "def2-tzvp": (6, 31, 37),
}

DFT_DEFAULTS: dict[str, Any] = {
    "functional": "b3lyp",
    "basis": "6-31g",
    "geometry": "dft",
    "opt_basis": None,
    "max_cycles": 100,
    "conv_tol": 1e-8,
    "max_opt_steps": 50,
    "threads": 1,
    "density_fit": True,
    "grid_level": 1,
    "scf_guess": "auto",
    "stability_check": True,
    "stability_followups": 3,
    "degenerate_holes": True,
    "degenerate_grid_level": 3,
}


#: ``caveat`` of ``dft-reorg`` with ``geometry="xtb"`` (the module docstring's choice of the
#: default; benchmarks/results/NOTES.md)
DFT_XTB_CAVEAT = ("screening level, biased low: lambda+ 7-67 % below both states relaxed (B3LYP/6-31G, "
                  "12 molecules, benchmarks/reorg_validation.py); confirm a best with geometry = \"dft\"")


class _FinerGrid(Exception):
    """Ends an evaluation whose first neutral SCF found a degenerate HOMO (on a grid below
    ``degenerate_grid_level``): :meth:`DftReorgBackend._evaluate` starts it again with a
    new :class:`DftEvaluation` on the finer grid."""


@dataclass
class DftEvaluation:
    """The state of one :class:`DftReorgBackend` evaluation, made by each ``evaluate``
    call and passed to every step; the backend instance holds none of it.

    Attributes:
        scf_mode, stability, max_followups, degenerate_holes: the evaluation's
            ``scf_guess``, ``stability_check``, ``stability_followups`` and
            ``degenerate_holes`` parameters.
        grid_floor: lowest DFT grid level of every SCF (0: the ``grid_level`` param).
        scf_states: converged states (orbitals), the guesses of later SCFs.
        scf_records: one record per SCF or relaxation (``extra["scf"]``).
        sp_energies: single-point energies (eV) already computed, by :meth:`DftReorgBackend._sp_key`.
    """

    scf_mode: str
    stability: bool
    max_followups: int
    degenerate_holes: bool
    grid_floor: int = 0
    scf_states: list[dict[str, Any]] = field(default_factory=list)
    scf_records: list[dict[str, Any]] = field(default_factory=list)
    sp_energies: dict[tuple, float] = field(default_factory=dict)


class DftReorgBackend(ReorgBackend):
    """Hole reorganisation energy with Kohn-Sham DFT in PySCF, fidelity 1.

    Params (besides those of :class:`ReorgBackend`; defaults in :data:`DFT_DEFAULTS`):
        functional (str, "b3lyp"): exchange-correlation functional (libxc name).
        basis (str, "6-31g"): Gaussian basis set.
        geometry (str, "dft"): "dft" relaxes both states with geomeTRIC starting
            from the GFN2-xTB geometries (the validated level, see the module
            docstring); "xtb" uses the GFN2-xTB geometries as they are (four DFT
            single points, a biased screening option: its ``caveat`` is
            :data:`DFT_XTB_CAVEAT`, and a result with unbalanced components carries
            :func:`component_imbalance_warning`, as one with ``opt_basis`` does). Measured on one core (CPU s,
            B3LYP/6-31G, ``benchmarks/reorg_timing.py`` and
            ``benchmarks/reorg_validation.py``): full relaxation of five- and
            six-membered rings 40-80 (6-13 geomeTRIC steps per state), ~6-8x
            their DFT//xTB (6-12); DFT//xTB naphthalene 41, anthracene 104.
        opt_basis (str or None, None): with ``geometry="dft"``, relax both states in
            this (smaller) basis and compute the four energies in ``basis`` at those
            geometries, e.g. B3LYP/6-31G//B3LYP/STO-3G.
        max_cycles (int, 100): SCF iteration cap (then one second-order SCF attempt).
        conv_tol (float, 1e-8): SCF energy convergence, hartree.
        max_opt_steps (int, 50): geomeTRIC step cap per optimisation.
        threads (int, 1): OpenMP threads for PySCF.
        density_fit (bool, True): density fitting of the Coulomb and exchange
            integrals (a large speed-up of hybrid functionals; errors in lambda well
            under 0.1 kJ/mol for this energy difference).
        grid_level (int, 1): PySCF DFT integration grid level (0-9); the XC grid
            dominates the cost here and level 1 changes total energies by ~1e-6
            hartree relative to level 3 (naphthalene cation, B3LYP/6-31G).
        scf_guess (str, "auto"): "auto" starts each SCF from the closest converged state
            of the evaluation (see :meth:`_converged_scf`), "default" from PySCF's
            minao guess. Every SCF's guess, cycles, Fock builds and times are in
            ``extra["scf"]``.
        stability_check (bool, True): after every open-shell (cation, UKS) SCF, the
            internal stability analysis of the UKS solution; while the orbital Hessian
            has a negative eigenvalue the SCF restarts from the orbitals rotated along
            that mode (:func:`sim_backends.scf_guess.follow_instabilities`, at most
            ``stability_followups`` restarts, default 3), so every
            guess lands in a stable (lowest reachable) UKS state. A relaxed cation is
            checked again at its final geometry and relaxed once more from the followed
            state if that was unstable. A state still unstable after the cap is a failed
            evaluation (not retryable) naming the state. Without it PySCF's minao guess
            put the pyridine cation at the neutral geometry 0.020 Eh above the stable
            state (lambda+ 112 instead of 59 kJ/mol, B3LYP/6-31G//GFN2-xTB).
        degenerate_holes (bool, True): a cation SCF at a geometry where the neutral's
            HOMO is degenerate (occupied orbitals within
            :data:`~sim_backends.scf_guess.DEGENERATE_HOMO_EH` of it; the neutral at that
            geometry is the one the four-point scheme computes, or one extra SCF) starts,
            in either ``scf_guess`` mode, from the neutral's orbitals with the hole in each
            degenerate orbital in turn (the set turned to a fixed orientation on the
            atoms); each is converged and stability-checked and the lowest is kept (ties
            within :data:`~sim_backends.scf_guess.HOLE_TIE_EH`: the first placement). Such cations (benzene, 1,3,5-triazine, HCN) have several
            stable broken-symmetry UKS solutions; which one an SCF reaches depends on its
            guess, and the lowest is the cation's ground state at this level. A relaxation
            starts from the lowest placement at its start geometry and follows it.
        degenerate_grid_level (int, 3): when the first neutral SCF (at the neutral's start
            geometry) has a degenerate HOMO, the whole evaluation (all four energies, one
            grid) is done again on at least this grid level. The pruned level-1 grid is not
            symmetric under the molecule's point group: it splits the degenerate HOMO
            (benzene 1.1e-5, 1,3,5-triazine 1.0e-5 Eh) and turns the rotation of the hole
            within the pair into a rippled surface with several stable cation states up to
            9e-6 Eh apart, which the guess picks between; on level 3 the spread is below
            1e-6 Eh (B3LYP/6-31G, ``benchmarks/results/NOTES.md``). The level-1 neutral SCF
            stays in the records; ``extra["grid_level"]`` is the level used.
    """

    name = "dft-reorg"
    version = f"2+pyscf-{_pyscf_version()}"
    fidelity = 1
    computes: ClassVar[tuple[str, ...]] = (*ReorgBackend.computes, "ip_gas_ev")
    value_sd: ClassVar[dict[str, float]] = {"ip_gas_ev": DFT_IP_SD_EV}
    value_levels: ClassVar[dict[str, str]] = {"ip_gas_ev": DFT_IP_LEVEL}
    description = "hole reorganisation energy lambda+ (four-point), PySCF DFT + geomeTRIC"
    params_schema: ClassVar[dict[str, Any]] = {
        **ReorgBackend.params_schema, "functional": check.xc_functional, "basis": check.basis_set,
        "geometry": check.one_of("dft", "xtb"), "opt_basis": check.optional(check.basis_set),
        "max_cycles": check.integer(1), "conv_tol": check.number(0.0, lo_open=True),
        "max_opt_steps": check.integer(1), "threads": check.integer(1, 1024),
        "density_fit": check.boolean, "grid_level": check.integer(0, 9),
        "scf_guess": check.one_of("auto", "default"), "stability_check": check.boolean,
        "stability_followups": check.integer(0), "degenerate_holes": check.boolean,
        "degenerate_grid_level": check.integer(0, 9),
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self._p(params, "geometry") == "xtb":  # the level's known bias, printed with its values
            self.caveat = DFT_XTB_CAVEAT

    def _p(self, params: dict[str, Any], key: str) -> Any:
        return params.get(key, DFT_DEFAULTS[key])

    def _borrowed_geometries(self, params: dict[str, Any]) -> bool:
        return self._p(params, "geometry") == "xtb" or bool(self._p(params, "opt_basis"))

    def cost_estimate(self, inp: EvalInput) -> float:
        p = {**self.params, **inp.params}
        n_h, n_1, n_2 = _atom_counts(inp.smiles)
        per = _N_BF.get(str(self._p(p, "basis")).lower(), _N_BF["def2-svp"])
        n_bf = n_h * per[0] + n_1 * per[1] + n_2 * per[2]
        n_atoms = n_h + n_1 + n_2
        # B3LYP/6-31G DFT//xTB (four SCFs) measured 9.8, 15.7, 41 and 104 CPU s for
        # thiophene, benzene, naphthalene, anthracene (57-146 basis functions): one SCF
        # ~ 1e-4 * n_bf^2.5 s. A relaxation step (SCF from the previous density plus
        # gradient) costs ~1.5 SCFs; ~(4 + n_atoms/4) steps per state (thiophene full
        # relaxation: 6 + 10 steps, 64 CPU s).
        scf_s = 1.0e-4 * max(n_bf, 1) ** 2.5
        if self._p(p, "geometry") == "xtb":
            return 1.0 + 4.0 * scf_s
        n_relax_scf = 2.0 + 3.0 * (4 + n_atoms / 4)
        opt_basis = self._p(p, "opt_basis")
        if not opt_basis:
            return 1.0 + scf_s * n_relax_scf
        per_o = _N_BF.get(str(opt_basis).lower(), _N_BF["def2-svp"])
        n_bf_o = n_h * per_o[0] + n_1 * per_o[1] + n_2 * per_o[2]
        return 1.0 + 1.0e-4 * max(n_bf_o, 1) ** 2.5 * n_relax_scf + 4.0 * scf_s

    def _level(self, params: dict[str, Any]) -> str:
        xc = str(self._p(params, "functional")).upper()
        own = f"{xc}/{str(self._p(params, 'basis')).upper()}"
        if self._p(params, "geometry") == "xtb":
            return f"{own}//GFN2-xTB geometries"
        if self._p(params, "opt_basis"):
            return f"{own}//{xc}/{str(self._p(params, 'opt_basis')).upper()} geometries"
        return f"{own}, both states relaxed at this level"

    def _new_context(self, params: dict[str, Any]) -> DftEvaluation:
        return DftEvaluation(
            scf_mode=str(self._p(params, "scf_guess")),
            stability=bool(self._p(params, "stability_check")),
            max_followups=int(self._p(params, "stability_followups")),
            degenerate_holes=bool(self._p(params, "degenerate_holes")))

    def _evaluate(self, inp: EvalInput) -> tuple[dict[str, float], dict[str, Any]]:
        ctx = self._new_context(inp.params)
        try:
            values, extra = self._four_point(inp, ctx)
        except _FinerGrid:  # again on the finer grid; the coarse grid's SCF stays in the records
            records = ctx.scf_records
            ctx = self._new_context(inp.params)
            ctx.grid_floor = int(self._p(inp.params, "degenerate_grid_level"))
            ctx.scf_records = records
            values, extra = self._four_point(inp, ctx)
        records = ctx.scf_records
        extra["grid_level"] = max(int(self._p(inp.params, "grid_level")), ctx.grid_floor)
        extra["degenerate_homo"] = ctx.grid_floor > 0
        extra["scf_guess"] = ctx.scf_mode
        extra["scf"] = records
        extra["scf_fock_builds_total"] = sum(r["fock_builds"] for r in records)
        extra["scf_fallbacks"] = [f"{r['what']}: {r['fallback']}" for r in records if "fallback" in r]
        stab = [r["stability"] for r in records if "stability" in r]
        extra["scf_hole_placements"] = [r["hole_placement"] for r in records if "hole_placement" in r]
        extra["scf_stability"] = {
            "checks": sum(x["checks"] for x in stab), "followups": sum(x["followups"] for x in stab),
            "fock_builds": sum(x["fock_builds"] for x in stab),
            "cpu_s": round(sum(x["cpu_s"] for x in stab), 3),
            "followed": [r["what"] for r in records if r.get("stability", {}).get("followups")]}
        if (str(self._p(inp.params, "functional")).lower(), str(self._p(inp.params, "basis")).lower()) \
                == DFT_IP_CALIBRATED_FOR:
            values["ip_gas_ev"] = dft_gas_ionisation_energy_ev(values["ip_adiabatic_kjmol"])
        return values, extra

    def _start_geometries(self, symbols, coords_A, params, ctx):
        geom = str(self._p(params, "geometry"))
        if geom not in ("dft", "xtb"):
            raise SetupError(f"unknown geometry option {geom!r}; use 'dft' or 'xtb'")
        _, g_n, steps_n = xtb_relax(symbols, coords_A, NEUTRAL)
        _, g_c, steps_c = xtb_relax(symbols, g_n, CATION)
        return g_n, g_c, {"xtb_opt_steps": [steps_n, steps_c]}

    def _mean_field(self, symbols, coords_A, state, params, ctx: DftEvaluation):
        from pyscf import dft, gto, lib

        lib.num_threads(int(self._p(params, "threads")))
        charge, mult = state
        try:
            mol = gto.M(
                atom=[(s, tuple(map(float, c))) for s, c in zip(symbols, coords_A)],
                basis=str(self._p(params, "basis")), charge=charge, spin=mult - 1,
                unit="Angstrom", verbose=0,
            )
        except Exception as exc:
            raise SetupError(f"PySCF cannot build the molecule: {' '.join(str(exc).split())[:200]}") from None
        mf = dft.RKS(mol) if mult == 1 else dft.UKS(mol)
        mf.xc = str(self._p(params, "functional"))
        mf.max_cycle = int(self._p(params, "max_cycles"))
        mf.conv_tol = float(self._p(params, "conv_tol"))
        mf.grids.level = max(int(self._p(params, "grid_level")), ctx.grid_floor)
        if bool(self._p(params, "density_fit")):
            mf = mf.density_fit()
        return mf

    @staticmethod
    def _remember(ctx: DftEvaluation, mf, state: tuple[int, int], label: str) -> None:
        """Keep a converged state's orbitals as a guess for the later SCFs of this evaluation."""
        from pyscf import lib

        if getattr(mf, "mo_coeff", None) is not None:
            ctx.scf_states.append({"charge": state[0], "xyz_A": mf.mol.atom_coords() * lib.param.BOHR,
                           "nao": int(mf.mol.nao), "mo_coeff": mf.mo_coeff, "mo_occ": mf.mo_occ,
                           "mo_energy": getattr(mf, "mo_energy", None), "basis": str(mf.mol.basis),
                           "label": label})

    def _converged_scf(self, ctx: DftEvaluation, mf, label: str, state: tuple[int, int],
                       params: dict[str, Any]):
        """Converge ``mf`` (state ``state``); RunError if it fails.

        A cation at a geometry where the neutral's HOMO is degenerate (``degenerate_holes``)
        goes to :meth:`_lowest_hole_placement`; every other SCF to :meth:`_single_scf`. The
        converged state is kept as a guess for later SCFs. The evaluation's first SCF, a
        neutral with a degenerate HOMO on a grid below ``degenerate_grid_level``, raises
        :class:`_FinerGrid`.
        """
        from sim_backends.scf_guess import degenerate_holes

        if state == CATION and ctx.degenerate_holes:
            neutral = self._neutral_at(ctx, mf.mol, params)
            holes = degenerate_holes(neutral["mo_energy"], neutral["mo_occ"]) if neutral is not None else []
            if holes:
                mf = self._lowest_hole_placement(ctx, mf, label, state, neutral, holes)
                self._remember(ctx, mf, state, label)
                return mf
        mf, rec = self._single_scf(ctx, mf, label, state)
        ctx.scf_records.append(rec)
        if (state == NEUTRAL and len(ctx.scf_records) == 1 and ctx.degenerate_holes
                and int(mf.grids.level) < int(self._p(params, "degenerate_grid_level"))
                and degenerate_holes(mf.mo_energy, mf.mo_occ)):
            rec["degenerate_homo"] = "evaluation redone on a finer grid"
            raise _FinerGrid
        self._remember(ctx, mf, state, label)
        return mf

    def _single_scf(self, ctx: DftEvaluation, mf, label: str, state: tuple[int, int], guess_dm=None,
                    guess_label: str = ""):
        """Run the SCF (:func:`sim_backends.scf_guess.solve`); RunError if it fails.

        With ``scf_guess="auto"`` the initial guess is the closest converged state of
        this evaluation (:func:`~sim_backends.scf_guess.closest_state`: the other charge
        at the same geometry, or the same charge at a nearby geometry, orbitals
        re-occupied for this charge by :func:`~sim_backends.scf_guess.state_density`;
        without PySCF's extra check cycle), else PySCF's default; a guess that fails falls back to the default guess. If
        DIIS does not converge from the default guess either, one second-order SCF
        attempt follows from its last density. ``guess_dm`` (labelled ``guess_label``)
        replaces the mode's guess. Open-shell states are stability-checked
        (:meth:`_stable`). Returns ``(mf, record)``.
        """
        from pyscf import lib

        from sim_backends.scf_guess import closest_state, solve, state_density

        dm0, guess = None, "minao"
        if guess_dm is not None:
            dm0, guess = guess_dm, guess_label
            mf.conv_check = False
        elif ctx.scf_mode == "auto":
            src = closest_state(ctx.scf_states, state[0],
                                mf.mol.atom_coords() * lib.param.BOHR, int(mf.mol.nao))
            if src is not None:
                dm0, guess = state_density(mf.mol, src), src["label"]
                mf.conv_check = False  # no extra check cycle after a warm start (as dft-crystal)
        try:
            mf, rec = solve(mf, dm0, guess=guess, what=label)
            if not mf.converged:
                mf2 = mf.newton()
                mf2.kernel(dm0=mf.make_rdm1())
                rec["fallback"] = rec.get("fallback", "") + "; second-order SCF after DIIS"
                rec["fock_builds"] = mf.fock_counter["n"]
                mf = mf2
        except (ValueError, KeyError, RuntimeError) as exc:
            raise SetupError(f"DFT setup failed ({label}): {' '.join(str(exc).split())[:200]}") from None
        if not mf.converged:
            raise RunError(
                f"SCF did not converge ({label}) in {mf.max_cycle} cycles, "
                "nor with second-order SCF"
            )
        rec.pop("energy_hartree", None)
        if state[1] != 1 and ctx.stability:
            mf = self._stable(ctx, mf, label, rec)
            rec["fock_builds"] = mf.fock_counter["n"]
            for key in ("cpu_s", "wall_s"):  # the record's totals include the check
                rec[key] = round(rec.get(key, 0.0) + rec["stability"][key], 4)
        return mf, rec

    def _neutral_at(self, ctx: DftEvaluation, mol, params: dict[str, Any]) -> dict[str, Any] | None:
        """The converged closed-shell neutral of this evaluation at ``mol``'s geometry and
        basis (a remembered state), else one neutral SCF there, whose energy
        :meth:`_energy` then reuses. None if the neutral is not closed-shell."""
        import numpy as np
        from pyscf import lib

        if mol.nelectron % 2 == 0:  # the cation has an even count: the neutral is open-shell
            return None
        xyz = mol.atom_coords() * lib.param.BOHR
        for st in reversed(ctx.scf_states):
            if (st["charge"] == NEUTRAL[0] and st.get("basis") == str(mol.basis) and st["xyz_A"].shape == xyz.shape
                    and np.ndim(st["mo_coeff"]) == 2 and st.get("mo_energy") is not None
                    and np.abs(st["xyz_A"] - xyz).max() < 1e-6):
                return st
        symbols = [mol.atom_pure_symbol(k) for k in range(mol.natm)]
        p = {**params, "basis": mol.basis}
        nmf = self._converged_scf(ctx, self._mean_field(symbols, xyz, NEUTRAL, p, ctx),
                                  "charge +0 single point", NEUTRAL, p)
        ctx.sp_energies[self._sp_key(NEUTRAL, p, xyz)] = float(nmf.e_tot) * EV_PER_HARTREE
        return ctx.scf_states[-1]

    def _sp_key(self, state: tuple[int, int], params: dict[str, Any], coords_A) -> tuple:
        import numpy as np

        return (state, str(self._p(params, "basis")).lower(), np.round(np.asarray(coords_A, float), 6).tobytes())

    def _lowest_hole_placement(self, ctx: DftEvaluation, mf, label: str, state: tuple[int, int],
                               neutral: dict[str, Any], holes: list[int]):
        """Converge the cation from the neutral's orbitals with the hole in each degenerate
        orbital ``holes``, each stability-checked; return the lowest. The degenerate
        orbitals are first turned to a fixed orientation
        (:func:`~sim_backends.scf_guess.canonical_degenerate_orbitals`: the most weight on
        the first atom that splits them first), so the placements do not depend on how the
        neutral's SCF happened to orient them. A
        placement that fails is recorded and skipped; RunError if all fail. The chosen
        SCF's record carries ``hole_placement`` (holes, neutral orbital gap, energies)."""
        import numpy as np

        from sim_backends.scf_guess import HOLE_TIE_EH, canonical_degenerate_orbitals, hole_density

        c = np.array(neutral["mo_coeff"], float)
        c[:, holes], atom = canonical_degenerate_orbitals(mf.mol, c, holes)
        oriented = {**neutral, "mo_coeff": c}
        done, errors = [], []
        fresh = [mf] + [mf.copy() for _ in holes[1:]]  # unrun SCF objects (grid and DF shared)
        for cand, (k, hole) in zip(fresh, enumerate(holes)):
            what = f"{label} (hole in neutral orbital {hole})"
            try:
                cand, rec = self._single_scf(ctx, cand, what, state, hole_density(oriented, hole),
                                             f"{neutral['label']} hole {hole}")
            except RunError as exc:
                errors.append(f"hole {hole}: {exc}")
                continue
            ctx.scf_records.append(rec)
            done.append((float(cand.e_tot), k, hole, cand, rec))
        if not done:
            raise RunError(f"no hole placement of the {label} state converged: {'; '.join(errors)}",
                           retryable=False)
        e_min = min(d[0] for d in done)
        e, _, hole, best, rec = min((d for d in done if d[0] - e_min < HOLE_TIE_EH), key=lambda d: d[1])
        e_n = np.asarray(neutral["mo_energy"])
        rec["hole_placement"] = {"what": label, "holes": holes, "chosen": hole, "oriented_on_atom": atom,
                                 "neutral_gap_eh": float(e_n[holes[0]] - e_n[holes[-1]]),
                                 "energies_eh": {str(d[2]): d[0] for d in done}, "failed": errors}
        return best

    @staticmethod
    def _stable(ctx: DftEvaluation, mf, label: str, rec: dict[str, Any]):
        """Follow internal instabilities of a converged UKS ``mf``
        (:func:`~sim_backends.scf_guess.follow_instabilities`); the check's record goes to
        ``rec["stability"]``. RunError (not retryable) if the state stays unstable."""
        from sim_backends.scf_guess import follow_instabilities

        cap = ctx.max_followups
        mf, srec = follow_instabilities(mf, cap)
        rec["stability"] = srec
        if not srec["stable"]:
            how = ("the restarted SCF did not converge" if srec.get("not_converged_after_followup")
                   else f"lowest orbital-Hessian eigenvalue {srec['eigenvalues'][-1]:.2g} Eh/rad^2 after "
                        f"{cap} follow-up(s)")
            raise RunError(f"UKS solution of the {label} state is unstable: {how}", retryable=False)
        return mf

    def _energy(self, symbols, coords_A, state, params, ctx: DftEvaluation):
        done = ctx.sp_energies.get(self._sp_key(state, params, coords_A))
        if done is not None:  # computed earlier for a degenerate-HOMO check (same SCF)
            return done
        mf = self._mean_field(symbols, coords_A, state, params, ctx)
        mf = self._converged_scf(ctx, mf, f"charge {state[0]:+d} single point", state, params)
        return float(mf.e_tot) * EV_PER_HARTREE

    def _relax(self, symbols, coords_A, state, params, ctx: DftEvaluation):
        import numpy as np

        label = f"charge {state[0]:+d}"
        if self._p(params, "geometry") == "xtb":
            mf = self._converged_scf(ctx, self._mean_field(symbols, coords_A, state, params, ctx), label,
                                     state, params)
            return float(mf.e_tot) * EV_PER_HARTREE, np.asarray(coords_A, float), {"n_opt_steps": 0}
        opt_basis = self._p(params, "opt_basis")
        relax_params = {**params, "basis": opt_basis} if opt_basis else params
        coords = coords_A
        for attempt in range(1 + MAX_RELAX_RESTARTS):
            what = label if attempt == 0 else f"{label} (restart {attempt})"
            mf = self._converged_scf(ctx, self._mean_field(symbols, coords, state, relax_params, ctx), what,
                                     state, relax_params)
            energy_ev, coords, info, followed = self._geometric_relax(ctx, mf, symbols, state, relax_params,
                                                                      what)
            if not followed:
                break
        else:
            raise RunError(f"the relaxed {label} state was unstable again after {MAX_RELAX_RESTARTS} "
                           "re-relaxation(s) from the followed state", retryable=False)
        info = {**info, "relax_restarts": attempt}
        if opt_basis:
            energy_ev = self._energy(symbols, coords, state, params, ctx)
        return energy_ev, coords, info

    def _geometric_relax(self, ctx: DftEvaluation, mf, symbols, state, params, label):
        import contextlib
        import logging

        import numpy as np
        from pyscf import lib
        from pyscf.geomopt import geometric_solver

        import time

        trace: list[tuple[np.ndarray, float]] = []
        last: dict[str, Any] = {}

        def record(env: dict[str, Any]) -> None:
            trace.append((np.array(env["coords"], float).reshape(-1, 3), float(env["energy"])))
            last["mf"] = getattr(env.get("g_scanner"), "base", None)

        counter = getattr(mf, "fock_counter", {"n": 0})
        n0, t0, c0 = counter["n"], time.perf_counter(), time.process_time()

        max_steps = int(self._p(params, "max_opt_steps"))
        geo_logger = logging.getLogger("geometric")
        old_level, old_prop = geo_logger.level, geo_logger.propagate
        geo_logger.setLevel(logging.ERROR)
        geo_logger.propagate = False
        try:
            with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                converged, mol_eq = geometric_solver.kernel(
                    mf, maxsteps=max_steps, callback=record, assert_convergence=True
                )
        except RuntimeError as exc:
            if "not converged" in str(exc):
                raise RunError(f"SCF did not converge during the DFT optimisation ({label})") from None
            raise
        finally:
            geo_logger.setLevel(old_level)
            geo_logger.propagate = old_prop
        if not converged:
            raise RunError(f"DFT geometry optimisation ({label}) not converged in {max_steps} steps")
        # every step's SCF starts from the previous step's density (PySCF's scanner)
        ctx.scf_records.append({
            "what": f"{label} relaxation", "guess": "previous_step", "solver": "diis",
            "opt_steps": len(trace), "fock_builds": counter["n"] - n0,
            "wall_s": round(time.perf_counter() - t0, 4), "cpu_s": round(time.process_time() - c0, 4)})
        coords_bohr = mol_eq.atom_coords()
        at_end = bool(trace) and np.allclose(trace[-1][0], coords_bohr, atol=1e-8)
        followed = False
        if at_end and last.get("mf") is not None and state[1] != 1 and ctx.stability:
            # the scanner carries one electronic state along the path: check it at the end
            rec = ctx.scf_records[-1]  # this relaxation's record
            last["mf"] = self._stable(ctx, last["mf"], f"{label} relaxed", rec)
            followed = rec["stability"]["followups"] > 0
            rec["fock_builds"] = counter["n"] - n0
            for key in ("cpu_s", "wall_s"):
                rec[key] = round(rec.get(key, 0.0) + rec["stability"][key], 4)
        if last.get("mf") is not None:
            self._remember(ctx, last["mf"], state, f"{label} relaxed")
        if followed:  # the caller relaxes the followed (lower) state again
            energy_ev = float(last["mf"].e_tot) * EV_PER_HARTREE
        elif at_end:
            energy_ev = trace[-1][1] * EV_PER_HARTREE
        else:
            energy_ev = self._energy(symbols, coords_bohr * lib.param.BOHR, state, params, ctx)
        return energy_ev, coords_bohr * lib.param.BOHR, {"n_opt_steps": len(trace)}, followed


"""Physical-validity checks shared by the crystal backends.

A crystal result is a result only if the structure and its energy are physically
possible for a bound molecular crystal. The bounds, all on the structure actually
evaluated (after any relaxation):

* density in [:data:`DENSITY_MIN_GCM3`, :data:`DENSITY_MAX_GCM3`] = [0.5, 3.0] g/cm3:
  organic molecular crystals of H, C, N, O, F, S, Cl lie between ~0.9 (hydrocarbons)
  and ~2.2 g/cm3 (perchlorinated aromatics); outside the wider range the cell is
  empty space or atoms on top of each other.
* no intermolecular contact shorter than :data:`MIN_CONTACT_A`: H...H 1.0 A, H...X
  1.2 A, X...Y 2.0 A (X, Y heavy atoms). Real crystals have H...H >= ~1.7 A,
  H...acceptor >= ~1.2 A even in the shortest symmetric hydrogen bonds, and heavy-atom
  contacts >= ~2.4 A (O...O of short hydrogen bonds); shorter means overlapping
  molecules. Contacts between a molecule and its own periodic images count.
* lattice energy per molecule in (:data:`LATTICE_ENERGY_MIN_KJMOL`,
  :data:`LATTICE_ENERGY_MAX_KJMOL`) = (-300, 0) kJ/mol: positive means the crystal is
  not bound at this level; the X23 reference set spans -28 (CO2) to -170 kJ/mol
  (cytosine) and sublimation enthalpies of rigid organics up to 40 heavy atoms stay
  below ~250 kJ/mol, so -300 leaves room while catching collapsed cells.
* harmonic phonons: F_vib finite (checked by the base class) and no imaginary mode
  below -:data:`MAX_IMAGINARY_THZ` = -0.5 THz (~17 cm-1) -- a structure with such a
  mode is a saddle point, not a minimum, of the force level; softer imaginary modes of
  finite-displacement noise are counted and reported, not rejected.

Backends record the facts of their structure with :func:`structure_facts` into
``extra["validity"]`` and check them in their ``_check_physical`` hook with
:func:`check_structure_facts` and :func:`check_lattice_energy`; a violation raises
:class:`~sim_backends.base.PhysicsError` naming the quantity, value, unit and level.
ASE is imported inside functions so importing this module stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sim_backends.base import PhysicsError

if TYPE_CHECKING:
    from ase import Atoms

    from sim_backends.structures import Crystal

DENSITY_MIN_GCM3 = 0.5
DENSITY_MAX_GCM3 = 3.0
LATTICE_ENERGY_MIN_KJMOL = -300.0
LATTICE_ENERGY_MAX_KJMOL = 0.0
#: shortest allowed intermolecular contact (A) by class: H...H, H...heavy, heavy...heavy
MIN_CONTACT_A = {"H...H": 1.0, "H...X": 1.2, "X...X": 2.0}
MAX_IMAGINARY_THZ = 0.5
#: g/cm3 per (amu / A^3)
_GCM3_PER_AMU_A3 = 1.66053906660


def density_gcm3(atoms: Atoms) -> float:
    """Mass density of a periodic cell in g/cm3."""
    return float(atoms.get_masses().sum() / atoms.get_volume() * _GCM3_PER_AMU_A3)


def shortest_contacts(crystal: Crystal) -> dict[str, dict[str, Any]]:
    """The shortest intermolecular contact of each class of :data:`MIN_CONTACT_A`.

    Args:
        crystal: a crystal with whole molecules (``crystal.groups``).

    Returns:
        ``{class: {"distance_A": d, "pair": "H3...H17"}}`` for each class that has a
        contact within 2.5 A (classes without one are left out).
    """
    import numpy as np
    from ase.neighborlist import neighbor_list

    atoms = crystal.atoms
    mol_of = np.empty(len(atoms), dtype=int)
    for k, g in enumerate(crystal.groups):
        mol_of[g] = k
    i, j, d, shift = neighbor_list("ijdS", atoms, 2.5)
    inter = (mol_of[i] != mol_of[j]) | np.any(shift != 0, axis=1)
    is_h = np.asarray(atoms.get_chemical_symbols()) == "H"
    n_h = is_h[i].astype(int) + is_h[j].astype(int)
    symbols = atoms.get_chemical_symbols()
    out: dict[str, dict[str, Any]] = {}
    for cls, nh in (("H...H", 2), ("H...X", 1), ("X...X", 0)):
        sel = np.flatnonzero(inter & (n_h == nh))
        if sel.size:
            k = sel[np.argmin(d[sel])]
            out[cls] = {"distance_A": round(float(d[k]), 4),
                        "pair": f"{symbols[i[k]]}{i[k]}...{symbols[j[k]]}{j[k]}"}
    return out


def structure_facts(crystal: Crystal) -> dict[str, Any]:
    """Density (g/cm3) and shortest intermolecular contacts, for ``extra["validity"]``."""
    return {"density_gcm3": round(density_gcm3(crystal.atoms), 4),
            "shortest_contacts": shortest_contacts(crystal)}


def check_structure_facts(facts: dict[str, Any], level: str) -> None:
    """Raise PhysicsError if the density or an intermolecular contact is impossible."""
    rho = facts["density_gcm3"]
    if not DENSITY_MIN_GCM3 <= rho <= DENSITY_MAX_GCM3:
        raise PhysicsError(
            f"density = {rho:.3f} g/cm3 outside [{DENSITY_MIN_GCM3}, {DENSITY_MAX_GCM3}] ({level})"
        )
    for cls, c in facts.get("shortest_contacts", {}).items():
        if c["distance_A"] < MIN_CONTACT_A[cls]:
            raise PhysicsError(
                f"intermolecular {cls} contact {c['pair']} = {c['distance_A']:.2f} A "
                f"< {MIN_CONTACT_A[cls]} A ({level})"
            )


def check_lattice_energy(energy_kjmol: float, level: str, what: str = "lattice energy") -> None:
    """Raise PhysicsError unless -300 < E_latt < 0 kJ/mol per molecule."""
    if not LATTICE_ENERGY_MIN_KJMOL < energy_kjmol < LATTICE_ENERGY_MAX_KJMOL:
        raise PhysicsError(
            f"{what} = {energy_kjmol:.1f} kJ/mol per molecule outside "
            f"({LATTICE_ENERGY_MIN_KJMOL:.0f}, {LATTICE_ENERGY_MAX_KJMOL:.0f}) ({level})"
        )


def check_crystal_energy_result(values: dict[str, float], extra: dict[str, Any], default_level: str) -> None:
    """The check of a lattice-energy backend: ``extra["validity"]`` facts and
    ``values["energy_kjmol"]``, named with ``extra["level"]`` (else ``default_level``)."""
    level = extra.get("level", default_level)
    check_structure_facts(extra["validity"], level)
    check_lattice_energy(values["energy_kjmol"], level)


def check_imaginary_modes(min_frequency_THz: float, n_imaginary: int, level: str) -> None:
    """Raise PhysicsError if a mode is imaginary beyond -:data:`MAX_IMAGINARY_THZ`."""
    if min_frequency_THz < -MAX_IMAGINARY_THZ:
        raise PhysicsError(
            f"{n_imaginary} imaginary mode(s), lowest {min_frequency_THz:.2f} THz < "
            f"-{MAX_IMAGINARY_THZ} THz: a saddle point, not a minimum ({level})"
        )

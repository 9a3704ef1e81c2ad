"""Per-structure descriptors of crystal structures for structure-level surrogates.

The main descriptor is the SOAP power spectrum (Bartok, Kondor & Csanyi, Phys. Rev. B
87, 184115 (2013)) computed with DScribe (Himanen et al., Comput. Phys. Commun. 247,
106949 (2020)) for the periodic cell and averaged over all atoms of the cell
(DScribe's ``average="inner"``: the neighbour-density expansion coefficients are
averaged over centres before the power spectrum is formed), then L2-normalised. The
average over all centres of a periodic cell is the same for any choice of cell (a
supercell has every environment repeated equally often) and for any order of atoms,
so the descriptor identifies the crystal structure, not its representation. This is
the kernel-ready "average SOAP" used for Delta-learning on CSP landscapes (Egorova et
al., J. Phys. Chem. Lett. 11, 9376 (2020); McDonagh et al., J. Chem. Theory Comput.
15, 2743 (2019)).

Cheap extras (:func:`density_gcm3`, volume per molecule) are provided for appending
as further columns.

Results are cached per structure (SHA-1 over atomic numbers, rounded positions and
cell) and descriptor settings, so recomputing a landscape after every refit is free.
Importing this module is cheap: DScribe and ASE are imported when first used.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ase import Atoms

#: atomic mass unit in grams, for densities
_AMU_G = 1.66053906660e-24
#: cached descriptors kept in memory at most
_CACHE_MAX = 20000
_CACHE: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()


class DescriptorError(ValueError):
    """A structure the descriptor cannot handle; the message is one line."""


def structure_hash(atoms: Atoms, decimals: int = 5) -> str:
    """SHA-1 (hex) over atomic numbers, positions and cell rounded to ``decimals`` A."""
    h = hashlib.sha1()
    h.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    pos = np.round(np.asarray(atoms.positions, dtype=float), decimals) + 0.0
    cell = np.round(np.asarray(atoms.cell[:], dtype=float), decimals) + 0.0
    h.update(pos.tobytes())
    h.update(cell.tobytes())
    h.update(np.asarray(atoms.pbc, dtype=bool).tobytes())
    return h.hexdigest()


def density_gcm3(atoms: Atoms) -> float:
    """Crystal density in g/cm^3 from the cell volume (A^3) and atomic masses (amu)."""
    volume_a3 = float(abs(np.linalg.det(np.asarray(atoms.cell[:]))))
    if volume_a3 <= 1e-6:
        raise DescriptorError("structure has no cell volume (not a crystal)")
    return float(np.sum(atoms.get_masses())) * _AMU_G / (volume_a3 * 1e-24)


def landscape_species(atoms_list: Sequence[Atoms]) -> list[str]:
    """Sorted chemical symbols present in any of the structures."""
    return sorted({s for a in atoms_list for s in a.get_chemical_symbols()})


@dataclass(frozen=True)
class SoapDescriptor:
    """Cell-averaged, L2-normalised SOAP of periodic structures.

    Defaults are small on purpose (n_max=4, l_max=3: 4 species give 360 features)
    and the cutoff covers the first coordination shell of molecules in organic
    crystals (5.5 A), following the settings used for CSP landscapes by Egorova et
    al. (2020) (r_cut 4-6 A, small basis).

    Attributes:
        species: chemical symbols the descriptor knows (all structures' elements).
        r_cut_a: radial cutoff, A.
        n_max: number of radial basis functions.
        l_max: maximum angular momentum.
        sigma_a: Gaussian width of the atomic densities, A.
    """

    species: tuple[str, ...]
    r_cut_a: float = 5.5
    n_max: int = 4
    l_max: int = 3
    sigma_a: float = 0.5

    def __post_init__(self) -> None:
        if not self.species:
            raise DescriptorError("SOAP needs at least one species")
        if self.r_cut_a <= 1.0 or self.n_max < 1 or self.l_max < 0 or self.sigma_a <= 0:
            raise DescriptorError(
                f"bad SOAP settings r_cut={self.r_cut_a} n_max={self.n_max} "
                f"l_max={self.l_max} sigma={self.sigma_a}"
            )

    @property
    def key(self) -> str:
        return (
            f"soap-inner|{','.join(self.species)}|{self.r_cut_a}|{self.n_max}|"
            f"{self.l_max}|{self.sigma_a}"
        )

    def _soap(self):
        from dscribe.descriptors import SOAP

        return SOAP(
            species=list(self.species),
            periodic=True,
            r_cut=self.r_cut_a,
            n_max=self.n_max,
            l_max=self.l_max,
            sigma=self.sigma_a,
            average="inner",
            sparse=False,
        )

    @property
    def n_features(self) -> int:
        return int(self._soap().get_number_of_features())

    def __call__(self, atoms_list: Sequence[Atoms]) -> np.ndarray:
        """Descriptors of the structures.

        Args:
            atoms_list: ``n`` periodic structures (ASE ``Atoms`` with a cell).

        Returns:
            Array of shape ``(n, n_features)``, each row of unit L2 norm.

        Raises:
            DescriptorError: a structure without a cell or with an unknown element.
        """
        known = set(self.species)
        out: list[np.ndarray | None] = []
        todo: list[int] = []
        keys: list[tuple[str, str]] = []
        for i, atoms in enumerate(atoms_list):
            unknown = set(atoms.get_chemical_symbols()) - known
            if unknown:
                raise DescriptorError(
                    f"structure {i} has elements {sorted(unknown)} not in species {self.species}"
                )
            if not all(atoms.pbc) or abs(atoms.cell.volume) < 1e-6:
                raise DescriptorError(f"structure {i} is not a periodic crystal")
            key = (self.key, structure_hash(atoms))
            keys.append(key)
            cached = _CACHE.get(key)
            if cached is None:
                todo.append(i)
            else:
                _CACHE.move_to_end(key)
            out.append(cached)
        if todo:
            soap = self._soap()
            for i in todo:
                vec = np.asarray(soap.create(atoms_list[i]), dtype=float).ravel()
                norm = float(np.linalg.norm(vec))
                if not np.isfinite(norm) or norm == 0.0:
                    raise DescriptorError(f"structure {i}: SOAP vector is zero or not finite")
                vec = vec / norm
                vec.setflags(write=False)
                _CACHE[keys[i]] = vec
                out[i] = vec
            while len(_CACHE) > _CACHE_MAX:
                _CACHE.popitem(last=False)
        return np.vstack(out) if out else np.zeros((0, self.n_features))


def cheap_extras(atoms_list: Sequence[Atoms], n_molecules: Sequence[int]) -> np.ndarray:
    """Density (g/cm^3) and volume per molecule (A^3), shape ``(n, 2)``."""
    n_mol = np.asarray(n_molecules, dtype=float)
    if len(n_mol) != len(atoms_list) or np.any(n_mol <= 0):
        raise DescriptorError("n_molecules must be positive, one per structure")
    dens = np.array([density_gcm3(a) for a in atoms_list])
    vol = np.array([abs(a.cell.volume) for a in atoms_list]) / n_mol
    return np.column_stack([dens, vol])


def structure_features(
    atoms_list: Sequence[Atoms],
    n_molecules: Sequence[int],
    cheap_energies_kjmol: Sequence[float] | None = None,
    species: Sequence[str] | None = None,
    extra_columns: np.ndarray | None = None,
    **soap_settings: float,
) -> np.ndarray:
    """Features for a structure-level GP: averaged SOAP, then cheap extras.

    Args:
        atoms_list: ``n`` periodic structures (the cheap-level geometries).
        n_molecules: molecules per cell, length ``n``.
        cheap_energies_kjmol: cheap-level energies (kJ/mol per molecule), length
            ``n``; appended as the last column when given. The correction to a
            higher level usually correlates with it (structures the cheap level
            places high are often over-penalised), so Delta-GPs use it.
        species: element symbols; default all elements in ``atoms_list``.
        extra_columns: optional ``(n, k)`` block appended last, e.g. the force-field
            relaxation features of :func:`sim_backends.ff_relax.relaxation_features`;
            a :class:`~agent.surrogates.structure_gp.DeltaGP` on such rows needs
            ``n_passthrough=3 + k`` (with cheap energies).
        **soap_settings: ``r_cut_a``, ``n_max``, ``l_max``, ``sigma_a``.

    Returns:
        Array ``(n, n_soap + 2)`` or ``(n, n_soap + 3)``: unit-norm SOAP, density
        (g/cm^3), volume per molecule (A^3)[, cheap energy (kJ/mol)], then the
        ``k`` extra columns if given.
        :class:`agent.surrogates.structure_gp.DeltaGP` (defaults
        ``n_passthrough=3``) treats the trailing columns apart from the SOAP block.
    """
    sp = tuple(species) if species is not None else tuple(landscape_species(atoms_list))
    soap = SoapDescriptor(species=sp, **soap_settings)
    cols = [soap(atoms_list), cheap_extras(atoms_list, n_molecules)]
    if cheap_energies_kjmol is not None:
        e = np.asarray(cheap_energies_kjmol, dtype=float).reshape(-1)
        if len(e) != len(atoms_list) or not np.all(np.isfinite(e)):
            raise DescriptorError("cheap_energies_kjmol must be finite, one per structure")
        cols.append(e[:, None])
    if extra_columns is not None:
        extra = np.asarray(extra_columns, dtype=float)
        extra = extra[:, None] if extra.ndim == 1 else extra
        if extra.ndim != 2 or len(extra) != len(atoms_list) or not np.all(np.isfinite(extra)):
            raise DescriptorError("extra_columns must be a finite (n, k) array, one row per structure")
        cols.append(extra)
    return np.hstack(cols)

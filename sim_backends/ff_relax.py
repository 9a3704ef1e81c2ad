"""Rigid-molecule force-field relaxation of given crystal structures, and features from it.

A periodic structure (e.g. a CSP minimum of a machine-learned potential) is split into whole
molecules (:func:`~sim_backends.csp.rigid.split_molecules`, safe for molecules cut by the
cell boundary); one molecule becomes a :class:`~sim_backends.csp.rigid.RigidMolecule` with
RESP-style ESP charges (HF/6-31G*, pyscf, cached) and every molecule of the cell is replaced
by a rigid copy placed by a Kabsch fit (:func:`~sim_backends.csp.rigid.fit_rigid_pose`).
The W99 exp-6 + Ewald point-charge lattice energy
(:class:`~sim_backends.csp.forcefield.LatticeEnergyModel`; D. E. Williams, J. Comput. Chem.
22, 1154 (2001)) is then minimised in P1 over the 9 cell components and the rigid-body
coordinates (centre shifts, rotation vectors) with SciPy L-BFGS-B and autograd gradients.

How far and how much downhill the force field moves a structure measures how far the
structure is from a minimum of a *different* physical model than the one that made it;
:func:`relaxation_features` turns that into per-structure columns for the structure-level
Delta-GP of the refinement stage (:func:`sim_backends.descriptors.structure_features`,
``extra_columns``).

Where the cheap level is a different model from this force field (e.g. MACE-OFF23 minima)
the features carry information about the correction; on this force field's own minima they
are ~0. They are off by default (figures: ``benchmarks/results/NOTES.md``).

Units: Angstrom, degrees, kJ/mol per molecule, percent.

Importing this module is cheap: torch, scipy and pyscf are imported inside functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from sim_backends.base import SUPPORTED_ELEMENTS, SetupError

if TYPE_CHECKING:
    from ase import Atoms

    from sim_backends.csp.forcefield import LatticeEnergyModel
    from sim_backends.csp.rigid import RigidMolecule

#: columns of :func:`relaxation_features`, in order
FEATURE_NAMES = (
    "ff_energy_start_kjmol",
    "ff_relax_energy_kjmol",
    "ff_dv_percent",
    "ff_centre_shift_A",
    "ff_rotation_deg",
)


@dataclass(frozen=True, eq=False)  # arrays inside: identity equality
class RigidCrystal:
    """A crystal of rigid copies of one molecule in P1.

    Attributes:
        molecule: the rigid molecule (body frame, charges, W99 types).
        cell_A: (3, 3) lattice vectors as rows, Angstrom.
        rotations: (Z, 3, 3) body-to-lab orthogonal matrix of each molecule: a proper
            rotation, or (det -1) a rotation times the inversion for a copy that is the
            mirror image of the body (a chiral conformer on a site related by an
            inversion centre, mirror or glide plane). :func:`relax_rigid` moves each copy
            by proper rotations only, so its handedness is kept.
        centres_A: (Z, 3) Cartesian centre of each molecule (body-frame origin), Angstrom.
        fit_rmsd_A: largest RMSD of a rigid copy from the molecule it replaces, Angstrom.
    """

    molecule: RigidMolecule
    cell_A: np.ndarray
    rotations: np.ndarray
    centres_A: np.ndarray
    fit_rmsd_A: float

    @property
    def n_molecules(self) -> int:
        return len(self.rotations)

    def coords_A(self) -> np.ndarray:
        """(Z, n_atoms, 3) Cartesian coordinates of all atoms, Angstrom."""
        return self.centres_A[:, None, :] + np.einsum("na,zba->znb", np.asarray(self.molecule.coords_A), self.rotations)


def rigid_crystal(
    symbols: Sequence[str],
    positions_A: np.ndarray,
    cell_A: np.ndarray,
    molecule: RigidMolecule | None = None,
    charge_method: str = "resp",
    cache_key: str = "",
    max_fit_rmsd_A: float = 0.5,
) -> RigidCrystal:
    """Replace every molecule of a periodic structure by a rigid copy of one molecule.

    Args:
        symbols: element symbols of the cell (n_atoms).
        positions_A: (n_atoms, 3) Cartesian positions, Angstrom.
        cell_A: (3, 3) lattice vectors as rows, Angstrom.
        molecule: the rigid molecule to place; None cuts the first molecule of the cell and
            fits ESP charges to it (``charge_method``).
        charge_method: "resp" (HF/6-31G* ESP fit, pyscf) or "xtb" (GFN2-xTB Mulliken).
        cache_key: readable part of the charge-cache key.
        max_fit_rmsd_A: largest allowed RMSD of a rigid copy from a molecule of the cell.

    Returns:
        The :class:`RigidCrystal`.

    Raises:
        SetupError: bad shapes, unsupported elements, molecules of different composition,
            or a molecule the rigid copy cannot fit within ``max_fit_rmsd_A``.
    """
    from sim_backends.csp.charges import compute_charges
    from sim_backends.csp.rigid import RigidMolecule, fit_rigid_pose, split_molecules, symmetry_classes

    symbols = [str(s) for s in symbols]
    pos = np.asarray(positions_A, dtype=float)
    cell = np.asarray(cell_A, dtype=float)
    if pos.shape != (len(symbols), 3) or cell.shape != (3, 3) or not len(symbols):
        raise SetupError(f"need positions ({len(symbols)}, 3) and cell (3, 3), got {pos.shape}, {cell.shape}")
    if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(cell))) or abs(np.linalg.det(cell)) < 1e-6:
        raise SetupError("positions and cell must be finite and the cell non-degenerate")
    bad = sorted(set(symbols) - SUPPORTED_ELEMENTS)
    if bad:
        raise SetupError(f"unsupported element(s) {bad} for the W99 force field")
    mols = split_molecules(symbols, pos, cell)
    ref = sorted(molecule.symbols) if molecule is not None else sorted(symbols[i] for i in mols[0][0])
    for idx, _ in mols:
        if sorted(symbols[i] for i in idx) != ref:
            raise SetupError(
                f"a molecule of the cell ({len(idx)} atoms) differs in composition from the rigid molecule "
                f"({len(ref)} atoms); only one-component crystals of intact molecules are supported"
            )
    if molecule is None:
        idx0, xyz0 = mols[0]
        neutral = RigidMolecule.from_atoms([symbols[i] for i in idx0], xyz0)
        fit = compute_charges(
            neutral.symbols, neutral.coords_A, charge_method,
            symmetry_classes(neutral.symbols, neutral.coords_A), cache_key=cache_key,
        )
        molecule = neutral.with_charges(fit.charges_e, fit.method, fit.rrms)
    rots, centres, worst = [], [], 0.0
    for idx, xyz in mols:
        _, rot, trans, rmsd = fit_rigid_pose(molecule, [symbols[i] for i in idx], xyz, allow_mirror=True)
        rots.append(rot)
        centres.append(trans)  # the body frame is centred at the centre of mass
        worst = max(worst, float(rmsd))
    if worst > max_fit_rmsd_A:
        raise SetupError(f"rigid copy fits a molecule of the cell only to {worst:.2f} A RMSD (> {max_fit_rmsd_A} A)")
    return RigidCrystal(molecule, cell.copy(), np.array(rots), np.array(centres), worst)


def rotation_matrices(vec):
    """Rodrigues formula: rotation vectors (..., 3) -> matrices (..., 3, 3), differentiable at 0.

    Args:
        vec: torch tensor (..., 3), rotation axis times angle in radians.

    Returns:
        torch tensor (..., 3, 3).
    """
    import torch

    theta2 = (vec * vec).sum(dim=-1, keepdim=True)[..., None] + 1e-30
    theta = theta2.sqrt()
    kx = torch.zeros(vec.shape[:-1] + (3, 3), dtype=vec.dtype)
    kx[..., 0, 1], kx[..., 0, 2], kx[..., 1, 2] = -vec[..., 2], vec[..., 1], -vec[..., 0]
    kx = kx - kx.transpose(-1, -2)
    small = theta2 < 1e-12
    sin_c = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    cos_c = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2)
    return torch.eye(3, dtype=vec.dtype) + sin_c * kx + cos_c * (kx @ kx)


def relax_rigid(
    model: LatticeEnergyModel,
    crystal: RigidCrystal,
    max_iter: int = 400,
    gtol: float = 1e-4,
) -> dict:
    """Minimise the lattice energy over cell (9 components) and rigid-body coordinates in P1.

    Variables: cell = cell0 + dcell (each component bounded to +-30 % of its vector length),
    Cartesian centre shifts (bounded to +-4 A, applied in the start cell's fractional frame)
    and rotation vectors scaled by 1 / molecular extent (a unit step moves atoms ~1 A), all
    starting at 0; SciPy L-BFGS-B with autograd gradients.

    Args:
        model: energy model built for ``crystal.molecule``.
        crystal: the start structure.
        max_iter: L-BFGS-B iteration limit.
        gtol: projected-gradient tolerance (kJ/mol per variable unit).

    Returns:
        dict with ``e_start_kjmol``, ``e_min_kjmol`` (kJ/mol per molecule),
        ``dv_percent`` (100 (V/V0 - 1)), ``centre_shift_A`` (RMS molecular-centre
        displacement with the net translation removed; strain not counted),
        ``rotation_deg`` (RMS rotation angle), ``n_iter``, ``converged`` and the final
        ``cell_A`` (3, 3), ``rotations`` (Z, 3, 3), ``centres_A`` (Z, 3).

    Raises:
        RuntimeError: the energy is not finite at the start structure.
    """
    import torch
    from scipy.optimize import minimize

    n_mol = crystal.n_molecules
    body = torch.tensor(np.asarray(crystal.molecule.coords_A))
    cell0 = np.asarray(crystal.cell_A)
    cell0_t = torch.tensor(cell0)
    inv0 = torch.linalg.inv(cell0_t)
    frac0 = torch.tensor(crystal.centres_A) @ inv0
    rot0 = torch.tensor(crystal.rotations)
    rot_scale = 1.0 / max(1.0, model.extent_A)

    def unpack(x):
        cell = cell0_t + x[:9].reshape(3, 3)
        shift = x[9 : 9 + 3 * n_mol].reshape(n_mol, 3)
        omega = x[9 + 3 * n_mol :].reshape(n_mol, 3) * rot_scale
        centres = (frac0 + shift @ inv0) @ cell
        rot = rotation_matrices(omega) @ rot0
        return cell, centres, rot

    def fun(x):
        xt = torch.tensor(x, requires_grad=True)
        cell, centres, rot = unpack(xt)
        coords = centres[:, None, :] + torch.einsum("na,zba->znb", body, rot)
        energy = model.energy_kjmol(cell[None], coords[None])[0]
        (grad,) = torch.autograd.grad(energy, xt)
        return float(energy.detach()), grad.numpy().astype(float)

    x0 = np.zeros(9 + 6 * n_mol)
    e0 = fun(x0)[0]
    if not np.isfinite(e0):
        raise RuntimeError("force-field energy is not finite at the start structure")
    lengths = np.linalg.norm(cell0, axis=1)
    bounds = [(-0.3 * lengths[i // 3], 0.3 * lengths[i // 3]) for i in range(9)]
    bounds += [(-4.0, 4.0)] * (3 * n_mol) + [(None, None)] * (3 * n_mol)
    res = minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": max_iter, "gtol": gtol, "ftol": 1e-12, "maxcor": 30})
    with torch.no_grad():
        cell, centres, rot = unpack(torch.tensor(res.x))
    shift = res.x[9 : 9 + 3 * n_mol].reshape(n_mol, 3)
    shift = shift - shift.mean(axis=0)
    angles = np.linalg.norm(res.x[9 + 3 * n_mol :].reshape(n_mol, 3) * rot_scale, axis=1)
    return {
        "e_start_kjmol": float(e0),
        "e_min_kjmol": float(res.fun),
        "dv_percent": 100.0 * (abs(float(torch.linalg.det(cell))) / abs(np.linalg.det(cell0)) - 1.0),
        "centre_shift_A": float(np.sqrt((shift**2).sum(axis=1).mean())),
        "rotation_deg": float(np.degrees(np.sqrt((angles**2).mean()))),
        "n_iter": int(res.nit),
        "converged": bool(res.success),
        "cell_A": cell.numpy(),
        "rotations": rot.numpy(),
        "centres_A": centres.numpy(),
    }


def relaxation_features(
    atoms_list: Sequence[Atoms],
    molecule: RigidMolecule | None = None,
    charge_method: str = "resp",
    max_iter: int = 300,
    cutoff_A: float = 12.0,
    cache_key: str = "",
    progress=None,
) -> np.ndarray:
    """Force-field relaxation features of given crystal structures.

    Every structure is made a :class:`RigidCrystal` of one shared rigid molecule (the first
    molecule of the first structure unless ``molecule`` is given, so all structures of a
    landscape see the same charges) and relaxed with :func:`relax_rigid`.

    Args:
        atoms_list: ``n`` periodic structures of the same molecule (ASE Atoms, any Z).
        molecule: the rigid molecule; None cuts it from ``atoms_list[0]``.
        charge_method: "resp" or "xtb" (used only when ``molecule`` is None).
        max_iter: L-BFGS-B iteration limit per structure.
        cutoff_A: exp-6 cutoff of the energy model (A).
        cache_key: readable part of the charge-cache key.
        progress: optional callable, called once per finished structure.

    Returns:
        Array ``(n, 5)``, columns :data:`FEATURE_NAMES`: FF lattice energy at the given
        geometry (rigid copies; kJ/mol per molecule), relaxation energy E_min - E_start
        (<= 0, kJ/mol per molecule), volume change on relaxation (%), RMS rigid-body centre
        shift (A) and RMS rotation (degrees).

    Raises:
        SetupError: empty input, unsupported elements, several kinds of molecule, or a
            structure whose molecules the rigid copy cannot fit.
    """
    from sim_backends.csp.forcefield import LatticeEnergyModel

    if not len(atoms_list):
        raise SetupError("relaxation_features: no structures given")
    if molecule is None:
        a0 = atoms_list[0]
        molecule = rigid_crystal(a0.get_chemical_symbols(), a0.positions, a0.cell.array,
                                 charge_method=charge_method, cache_key=cache_key).molecule
    model = LatticeEnergyModel(molecule, cutoff_A=cutoff_A)
    out = np.empty((len(atoms_list), len(FEATURE_NAMES)))
    for i, atoms in enumerate(atoms_list):
        crystal = rigid_crystal(atoms.get_chemical_symbols(), atoms.positions, atoms.cell.array, molecule=molecule)
        try:
            r = relax_rigid(model, crystal, max_iter=max_iter)
        except (RuntimeError, ValueError) as exc:
            raise SetupError(f"structure {i}: force-field relaxation failed: {exc}") from None
        out[i] = (r["e_start_kjmol"], r["e_min_kjmol"] - r["e_start_kjmol"], r["dv_percent"],
                  r["centre_shift_A"], r["rotation_deg"])
        if progress is not None:
            progress()
    return out


def cached_relaxation_features(
    atoms_list: Sequence[Atoms],
    ids: Sequence[str],
    csv_path: str | Path,
    write: bool = False,
    comment: str = "",
    **kwargs,
) -> np.ndarray:
    """:func:`relaxation_features`, read from a CSV cache when it has every id.

    Args:
        atoms_list: ``n`` structures (as for :func:`relaxation_features`).
        ids: ``n`` structure ids (the CSV key).
        csv_path: cache file with columns ``id`` and :data:`FEATURE_NAMES`; lines starting
            with ``#`` are comments.
        write: (re)write the cache when it had to compute.
        comment: first (``#``) line of a written cache, e.g. the command that regenerates it.
        **kwargs: passed to :func:`relaxation_features`.

    Returns:
        Array ``(n, 5)``, columns :data:`FEATURE_NAMES`, rows in the order of ``ids``.
    """
    import csv

    path = Path(csv_path)
    if len(ids) != len(atoms_list):
        raise SetupError(f"{len(ids)} ids for {len(atoms_list)} structures")
    if path.is_file():
        with open(path, newline="") as fh:
            rows = {r["id"]: r for r in csv.DictReader(ln for ln in fh if not ln.startswith("#"))}
        if all(i in rows for i in ids):
            try:
                return np.array([[float(rows[i][k]) for k in FEATURE_NAMES] for i in ids])
            except (KeyError, ValueError):
                pass  # malformed cache: recompute
    feats = relaxation_features(atoms_list, **kwargs)
    if write:
        lines = [f"# {comment or CACHE_HEADER}", "id," + ",".join(FEATURE_NAMES)]
        lines += [f"{i}," + ",".join(f"{v:.6g}" for v in row) for i, row in zip(ids, feats)]
        path.write_text("\n".join(lines) + "\n")
    return feats


#: first line of a cache written by :func:`cached_relaxation_features`
CACHE_HEADER = (
    "W99 exp-6 + RESP (HF/6-31G*) rigid-molecule relaxation features, sim_backends/ff_relax.py; "
    "regenerate with python -m sim_backends.ff_relax LANDSCAPE_DIR LEVEL OTHER_LEVEL"
)


def main(argv: list[str] | None = None) -> None:
    """CLI: write ``<landscape>/<name>_ff_relax_<LEVEL>.csv`` for one level of a landscape."""
    import argparse
    import sys

    import torch

    from sim_backends.landscape import Landscape, LandscapeError

    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description="force-field relaxation features of a CSP landscape")
    parser.add_argument("landscape", type=Path, help="landscape directory (sim_backends.landscape table layout)")
    parser.add_argument("level", help="level whose geometries are relaxed, e.g. MACE")
    parser.add_argument("expensive", help="the other level of the landscape (structures broken at either level are left out), e.g. PBE_MBD")
    parser.add_argument("--max-iter", type=int, default=300)
    args = parser.parse_args(argv)
    try:
        land = Landscape.read(args.landscape, [args.level, args.expensive])
        out = cache_path(args.landscape, land.name, args.level)
        feats = cached_relaxation_features(
            land.atoms(args.level), land.ids, out, write=True, max_iter=args.max_iter,
            cache_key=f"{land.name}:{args.level}",
            comment=f"{CACHE_HEADER}; this file: OMP_NUM_THREADS=1 .venv/bin/python -m sim_backends.ff_relax "
                    f"{args.landscape} {args.level} {args.expensive} --max-iter {args.max_iter}",
        )
    except (LandscapeError, SetupError) as exc:
        sys.exit(f"ff_relax: error: {exc}")
    print(f"{out}: {len(feats)} structures")


def cache_path(landscape_dir: str | Path, name: str, level: str) -> Path:
    """Where the relaxation-feature cache of a landscape level lives."""
    return Path(landscape_dir) / f"{name}_ff_relax_{level}.csv"


if __name__ == "__main__":
    main()

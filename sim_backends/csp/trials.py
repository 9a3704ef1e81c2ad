"""Quasi-random trial crystal structures for rigid molecules (Z' = 1 or more).

A trial is a point in the search space of one space group: cell parameters, the
fractional position of the molecular centre of mass and the molecular orientation.
Points come from a scrambled Sobol sequence (``scipy.stats.qmc.Sobol``, seeded), so a
fixed seed gives the same trials and the space is covered more evenly than by
pseudo-random numbers:

* cell shape: log-uniform length ratios up to ``max_aspect``; angles uniform in
  [60, 120] degrees where the crystal system leaves them free, rejecting nearly
  flat triclinic cells; the cell is first scaled to ``V = Z * V_mol`` with ``V_mol``
  the sum of Hofmann's mean atomic volumes in crystals (Hofmann, Acta Cryst. B58,
  489, 2002);
* centre: uniform fractional position in the unit cell (the symmetry images fill the
  rest of the cell, so this covers the asymmetric unit uniformly, several times);
* orientation: a uniform rotation from three Sobol dimensions (Shoemake, Graphics
  Gems III, 124, 1992).

With ``z_prime`` = Z' > 1 the asymmetric unit holds Z' copies of the same rigid molecule,
each with its own centre and orientation (3 + 3 Sobol dimensions each), the cell is first
scaled to ``V = Z Z' V_mol``, and every contact test covers all Z Z' molecules. Arrays of a
Z' > 1 trial set carry a molecule axis: centres (B, Z', 3), quaternions (B, Z', 4); Z' = 1
keeps (B, 3) and (B, 4) and the same Sobol stream as before.

Each trial is then scaled uniformly (fractional centres and orientations kept) to
the smallest scale factor in ``scale_range`` at which no intermolecular contact is
shorter than ``overlap_ratio`` times the sum of the Bondi van der Waals radii (Bondi,
J. Phys. Chem. 68, 441, 1964; H = 1.10 A from Rowland & Taylor, J. Phys. Chem. 100,
7384, 1996), found by bisection for all trials at once. This removes overlaps (the
"expand the cell" trick) and also contracts sparse trials, so every trial starts
near van der Waals contact. Then each lattice vector in turn is shortened as far as
the same test allows ("squeezing", down to half its length), so trials are dense in
every direction; on pyrazine this cut the minimiser's energy calls by ~40 %.
Trials that still overlap at the largest scale (far too
sparse to be useful) or have a lattice vector shorter than ``min_length_A`` are
rejected.

The torch geometry helpers :func:`cell_matrix` and :func:`molecule_coords` build the
Cartesian coordinates of all Z molecules from these variables; the minimiser uses
the same functions so that symmetry is kept exactly.

Over 500 lines on purpose: the cell parametrisation, the overlap test (numba and torch
paths) and the trial generator that squeezes cells with them share array layouts and are
changed together.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sim_backends.csp.spacegroups import SpaceGroup, get_space_group

if TYPE_CHECKING:
    import torch

    from sim_backends.csp.rigid import RigidMolecule

#: Hofmann (2002) mean atomic volumes in organic crystals, Angstrom^3
HOFMANN_VOLUME_A3: dict[str, float] = {
    "H": 5.08, "C": 13.87, "N": 11.8, "O": 11.39, "F": 11.17, "S": 25.2, "Cl": 25.8,
}
#: Bondi van der Waals radii, Angstrom (H from Rowland & Taylor 1996)
VDW_RADIUS_A: dict[str, float] = {
    "H": 1.10, "C": 1.70, "N": 1.55, "O": 1.52, "F": 1.47, "S": 1.80, "Cl": 1.75,
}
#: 1 amu / A^3 in g/cm^3
AMU_PER_A3_TO_GCM3 = 1.66053906660


def molecular_volume_A3(symbols: tuple[str, ...] | list[str]) -> float:
    """Hofmann volume estimate of one molecule in a crystal (Angstrom^3)."""
    try:
        return float(sum(HOFMANN_VOLUME_A3[s] for s in symbols))
    except KeyError as exc:
        raise ValueError(f"no Hofmann volume for element {exc.args[0]!r}") from None


# --------------------------------------------------------------------------- geometry


def cell_matrix(params: torch.Tensor) -> torch.Tensor:
    """Lattice vectors from cell parameters, in the standard orientation.

    Args:
        params: (B, 6) a, b, c in Angstrom and alpha, beta, gamma in radians.

    Returns:
        (B, 3, 3) rows a, b, c: a along x, b in the xy plane (pymatgen's convention
        up to a rotation).
    """
    import torch

    a, b, c, al, be, ga = params.unbind(-1)
    ca, cb, cg, sg = torch.cos(al), torch.cos(be), torch.cos(ga), torch.sin(ga)
    zero = torch.zeros_like(a)
    cx = c * cb
    cy = c * (ca - cb * cg) / sg
    cz = torch.sqrt(torch.clamp(c * c - cx * cx - cy * cy, min=1e-8))
    va = torch.stack([a, zero, zero], -1)
    vb = torch.stack([b * cg, b * sg, zero], -1)
    vc = torch.stack([cx, cy, cz], -1)
    return torch.stack([va, vb, vc], -2)


def metric_ok(angles_rad: np.ndarray, min_volume_fraction: float = 0.45) -> np.ndarray:
    """Whether cells with these angles are far from flat.

    Args:
        angles_rad: (B, 3) alpha, beta, gamma.
        min_volume_fraction: minimum of V / (a b c).

    Returns:
        (B,) booleans.
    """
    c = np.cos(angles_rad)
    g = 1 - (c**2).sum(-1) + 2 * c.prod(-1)
    return np.sqrt(np.clip(g, 0, None)) >= min_volume_fraction


def rotation_from_quaternion(q: torch.Tensor) -> torch.Tensor:
    """(B, 4) unit quaternions (w, x, y, z) -> (B, 3, 3) rotation matrices."""
    import torch

    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def uniform_quaternions(u: np.ndarray) -> np.ndarray:
    """Shoemake's map from (B, 3) uniforms in [0, 1) to uniform unit quaternions (B, 4)."""
    u1, u2, u3 = u[:, 0], 2 * math.pi * u[:, 1], 2 * math.pi * u[:, 2]
    r1, r2 = np.sqrt(1 - u1), np.sqrt(u1)
    return np.stack([r2 * np.cos(u3), r1 * np.sin(u2), r1 * np.cos(u2), r2 * np.sin(u3)], -1)


def molecule_coords(
    sg: SpaceGroup,
    cell_A: torch.Tensor,
    centre_frac: torch.Tensor,
    rotation: torch.Tensor,
    body_A: torch.Tensor,
) -> torch.Tensor:
    """Cartesian coordinates of all Z symmetry copies of a rigid molecule.

    Each image's centre is wrapped into the unit cell (the wrapping shift is a
    lattice vector, so energies are unaffected and gradients pass through).

    Args:
        sg: the space group.
        cell_A: (B, 3, 3) lattice vectors as rows, Angstrom.
        centre_frac: (B, 3) fractional centre of the reference molecule.
        rotation: (B, 3, 3) rotation from the body frame to the Cartesian frame.
        body_A: (n_atoms, 3) body-frame coordinates (centred), Angstrom.

    Returns:
        (B, Z, n_atoms, 3) Cartesian coordinates, Angstrom.
    """
    import torch

    dt = cell_A.dtype
    rot_ops = torch.tensor(np.array(sg.rotations), dtype=dt)
    tr_ops = torch.tensor(np.array(sg.translations), dtype=dt)
    inv_cell = torch.linalg.inv(cell_A)
    centre_cart = centre_frac.unsqueeze(1) @ cell_A  # (B,1,3)
    cart = centre_cart + body_A.unsqueeze(0) @ rotation.transpose(1, 2)  # (B,n,3)
    frac = cart @ inv_cell  # (B,n,3)
    frac_img = torch.einsum("oij,bnj->boni", rot_ops, frac) + tr_ops[None, :, None, :]
    centre_img = torch.einsum("oij,bj->boi", rot_ops, centre_frac) + tr_ops[None]
    shift = -torch.floor(centre_img.detach())  # (B,Z,3)
    frac_img = frac_img + shift.unsqueeze(2)
    return torch.einsum("boni,bij->bonj", frac_img, cell_A)


# --------------------------------------------------------------------------- contacts


def min_contact_ratio(cell_A: torch.Tensor, coords_A: torch.Tensor, radii_A: torch.Tensor,
                      max_ratio: float = 1.0, chunk: int = 128) -> torch.Tensor:
    """Closest intermolecular contact relative to the sum of van der Waals radii.

    Args:
        cell_A: (B, 3, 3) lattice vectors as rows.
        coords_A: (B, Z, n_atoms, 3) Cartesian coordinates, molecular centres in the cell.
        radii_A: (n_atoms,) van der Waals radii.
        max_ratio: contacts are searched up to this ratio; larger results are
            reported as ``max_ratio`` (no contact that close).
        chunk: structures processed at once (bounds memory).

    Returns:
        (B,) min over atom pairs in different molecules (any lattice image) of
        d_ij / (r_i + r_j), capped at ``max_ratio``.
    """
    import torch

    out = []
    for start in range(0, cell_A.shape[0], chunk):
        out.append(_min_contact_chunk(cell_A[start:start + chunk], coords_A[start:start + chunk],
                                      radii_A, max_ratio))
    return torch.cat(out) if out else torch.zeros(0, dtype=cell_A.dtype)


def _contact_kernel(cells, coords, radii, max_ratio, reach, grid):  # pragma: no cover - numba
    """Compiled core of :func:`_min_contact_chunk`: the same images, pairs and minimum."""
    n_b, n_mol, n_at = coords.shape[0], coords.shape[1], coords.shape[2]
    n_k = grid.shape[0]
    out = np.full(n_b, max_ratio)
    cen = np.empty((n_mol, 3))
    shifts = np.empty((n_k, 3))
    zero = np.empty(n_k, dtype=np.bool_)
    for k in range(n_k):
        zero[k] = grid[k, 0] == 0.0 and grid[k, 1] == 0.0 and grid[k, 2] == 0.0
    for b in range(n_b):
        for m in range(n_mol):
            for d in range(3):
                acc = 0.0
                for a in range(n_at):
                    acc += coords[b, m, a, d]
                cen[m, d] = acc / n_at
        for k in range(n_k):
            for d in range(3):
                shifts[k, d] = grid[k, 0] * cells[b, 0, d] + grid[k, 1] * cells[b, 1, d] + grid[k, 2] * cells[b, 2, d]
        best = max_ratio
        for i in range(n_mol):
            for j in range(n_mol):
                for k in range(n_k):
                    if i == j and zero[k]:
                        continue
                    dx = cen[j, 0] + shifts[k, 0] - cen[i, 0]
                    dy = cen[j, 1] + shifts[k, 1] - cen[i, 1]
                    dz = cen[j, 2] + shifts[k, 2] - cen[i, 2]
                    if math.sqrt(dx * dx + dy * dy + dz * dz) >= reach:
                        continue
                    for a in range(n_at):
                        for c in range(n_at):
                            ex = coords[b, i, a, 0] - (coords[b, j, c, 0] + shifts[k, 0])
                            ey = coords[b, i, a, 1] - (coords[b, j, c, 1] + shifts[k, 1])
                            ez = coords[b, i, a, 2] - (coords[b, j, c, 2] + shifts[k, 2])
                            ratio = math.sqrt(ex * ex + ey * ey + ez * ez) / (radii[a] + radii[c])
                            if ratio < best:
                                best = ratio
        out[b] = best
    return out


@functools.lru_cache(maxsize=1)
def _compiled_contact():
    """The numba-compiled :func:`_contact_kernel` (cached on disk like the pair kernel)."""
    from sim_backends.csp.pairkernel import njit_cached

    return njit_cached(_contact_kernel)


def _min_contact_chunk(cell, coords, radii, max_ratio):
    """One chunk of :func:`min_contact_ratio`: molecule pairs whose centroids are within
    ``2 r_mol + 2 r_vdW,max max_ratio`` over a lattice-image grid sized for the chunk, then the
    closest atom pair of each (compiled; the torch version below is the test reference)."""
    import torch

    cell_np = np.ascontiguousarray(cell.detach().numpy(), dtype=np.float64)
    xyz = np.ascontiguousarray(coords.detach().numpy(), dtype=np.float64)
    rad = np.ascontiguousarray(radii.detach().numpy(), dtype=np.float64)
    centres = xyz.mean(2)
    r_mol = float(np.sqrt(((xyz - centres[:, :, None]) ** 2).sum(-1)).max())
    reach = 2 * r_mol + 2 * float(rad.max()) * max_ratio
    widths = 1.0 / np.linalg.norm(np.linalg.inv(cell_np), axis=1)
    n_img = np.ceil(reach / widths).max(0).astype(int)
    axes = [np.arange(-k, k + 1, dtype=np.float64) for k in n_img]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    out = _compiled_contact()(cell_np, xyz, rad, float(max_ratio), reach, np.ascontiguousarray(grid))
    return torch.from_numpy(out).to(cell.dtype)


def _min_contact_chunk_torch(cell, coords, radii, max_ratio):
    """Reference (torch) version of :func:`_min_contact_chunk`, for tests."""
    import torch

    n_b, n_mol, n_at, _ = coords.shape
    centres = coords.mean(2)  # (B,Z,3)
    r_mol = float((coords - centres[:, :, None]).norm(dim=-1).max())
    reach = 2 * r_mol + 2 * float(radii.max()) * max_ratio
    inv = torch.linalg.inv(cell)
    widths = 1.0 / inv.norm(dim=1)  # (B,3) perpendicular widths
    n_img = torch.ceil(reach / widths).amax(0).long().tolist()
    grid = torch.cartesian_prod(*[torch.arange(-k, k + 1, dtype=cell.dtype) for k in n_img])
    shifts = torch.einsum("kl,bld->bkd", grid, cell)  # (B,K,3)
    dc = centres[:, None, :, None, :] + shifts[:, None, None] - centres[:, :, None, None, :]
    near = dc.norm(dim=-1) < reach  # (B,Z,Z,K)
    zero = (grid == 0).all(1)
    near &= ~(torch.eye(n_mol, dtype=torch.bool)[None, :, :, None] & zero[None, None, None, :])
    b, i, j, k = near.nonzero().unbind(1)
    res = torch.full((n_b,), max_ratio, dtype=cell.dtype)
    if b.numel() == 0:
        return res
    xa = coords[b, i]  # (P,n,3)
    xb = coords[b, j] + shifts[b, k][:, None, :]
    ratio = torch.cdist(xa, xb) / (radii[:, None] + radii[None, :])
    pair_min = ratio.flatten(1).amin(1)
    return res.scatter_reduce(0, b, pair_min, reduce="amin")


# --------------------------------------------------------------------------- trials


@dataclass
class TrialSet:
    """Trial structures of one space group (numpy, float64).

    Attributes:
        space_group: the group; Z = ``space_group.z``.
        cell_params: (B, 6) a, b, c (Angstrom), alpha, beta, gamma (degrees).
        centre_frac: (B, 3) fractional centre of the reference molecule; (B, Z', 3) for
            Z' > 1 (one per independent molecule).
        quaternions: (B, 4) orientation of the reference molecule (w, x, y, z); (B, Z', 4).
        n_generated: Sobol points drawn to obtain these B trials.
        n_rejected: points rejected (overlap, sparse or degenerate cells).
    """

    space_group: SpaceGroup
    cell_params: np.ndarray
    centre_frac: np.ndarray
    quaternions: np.ndarray
    n_generated: int = 0
    n_rejected: int = 0

    def __len__(self) -> int:
        return int(self.cell_params.shape[0])

    @property
    def z_prime(self) -> int:
        """Independent molecules in the asymmetric unit (1 when the centres are (B, 3))."""
        return 1 if np.ndim(self.centre_frac) == 2 else int(np.shape(self.centre_frac)[1])

    def subset(self, idx: np.ndarray | slice) -> TrialSet:
        """The trials at ``idx``."""
        return TrialSet(self.space_group, self.cell_params[idx], self.centre_frac[idx],
                        self.quaternions[idx])


def coords_numpy(sg: SpaceGroup, cell_params: np.ndarray, centre: np.ndarray,
                 quat: np.ndarray, body_A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Numpy wrapper of :func:`cell_matrix` + :func:`molecule_coords`.

    Args:
        cell_params: (B, 6) with angles in degrees; centre (B, 3); quat (B, 4); for Z' > 1
            centre (B, Z', 3) and quat (B, Z', 4).

    Returns:
        cells (B, 3, 3) and coords (B, Z, n_atoms, 3), Angstrom; for Z' > 1 (B, Z' Z, n_atoms, 3),
        the Z images of independent molecule 0 first, then those of molecule 1, ...
    """
    import torch

    p = torch.as_tensor(cell_params, dtype=torch.float64).clone()
    p[:, 3:] = torch.deg2rad(p[:, 3:])
    cell = cell_matrix(p)
    body = torch.tensor(np.array(body_A, dtype=float))
    centre = np.asarray(centre, dtype=float)
    quat = np.asarray(quat, dtype=float)
    if centre.ndim == 2:
        centre, quat = centre[:, None], quat[:, None]
    parts = [molecule_coords(sg, cell, torch.as_tensor(centre[:, j]),
                             rotation_from_quaternion(torch.as_tensor(quat[:, j])), body)
             for j in range(centre.shape[1])]
    return cell.numpy(), torch.cat(parts, 1).numpy()


def generate_trials(
    molecule: RigidMolecule,
    space_group: str | SpaceGroup,
    n_trials: int,
    seed: int = 0,
    overlap_ratio: float = 0.75,
    scale_range: tuple[float, float] = (0.8, 1.6),
    max_aspect: float = 4.0,
    min_length_A: float = 2.5,
    max_draws_factor: int = 50,
    squeeze: bool = True,
    z_prime: int = 1,
) -> TrialSet:
    """Draw ``n_trials`` accepted trial structures (see the module docstring).

    Args:
        molecule: the rigid molecule (body-frame ``coords_A``, ``symbols``).
        space_group: symbol or :class:`SpaceGroup`.
        n_trials: number of accepted trials wanted (> 0).
        seed: Sobol scrambling seed; the same seed gives the same trials.
        overlap_ratio: minimum accepted closest contact / vdW sum.
        scale_range: range of uniform length scale factors tried, relative to a cell
            of volume ``Z V_mol`` (0.8 -> V = 0.51 Z V_mol, 1.6 -> 4.1 Z V_mol).
        max_aspect: largest ratio of two cell lengths before scaling.
        min_length_A: reject cells with a shorter lattice vector.
        max_draws_factor: stop after drawing this many times ``n_trials`` points.
        squeeze: after the uniform scaling, shorten each lattice vector in turn (a, b,
            c) as far as the overlap test allows (bisection, down to half its length),
            so trials start dense in every direction.
        z_prime: independent molecules in the asymmetric unit (see the module docstring).

    Returns:
        A :class:`TrialSet`; may hold fewer than ``n_trials`` if too many points were
        rejected (never more).

    Raises:
        ValueError: unknown space group or ``n_trials <= 0`` (one line).
    """
    from scipy.stats import qmc

    if not isinstance(n_trials, (int, np.integer)) or isinstance(n_trials, bool) or n_trials <= 0:
        raise ValueError(f"n_trials must be a positive integer, got {n_trials!r}")
    if not isinstance(z_prime, (int, np.integer)) or isinstance(z_prime, bool) or not 1 <= z_prime <= 4:
        raise ValueError(f"z_prime must be an integer from 1 to 4, got {z_prime!r}")
    sg = space_group if isinstance(space_group, SpaceGroup) else get_space_group(space_group)
    body = np.asarray(molecule.coords_A, dtype=float)
    radii = np.array([VDW_RADIUS_A.get(s, 1.8) for s in molecule.symbols])
    v_mol = molecular_volume_A3(molecule.symbols)
    free = sg.free_cell_parameters

    # dims: 0-2 cell lengths, 3-5 angles, then Z' centres (3 each), then Z' orientations (3 each)
    # (Z' = 1: 6-8 centre, 9-11 orientation)
    zp = int(z_prime)
    engine = qmc.Sobol(d=6 + 6 * zp, scramble=True, seed=seed)
    cells: list[np.ndarray] = []
    centres: list[np.ndarray] = []
    quats: list[np.ndarray] = []
    n_drawn = 0
    while len(cells) < n_trials and n_drawn < max_draws_factor * n_trials:
        n_draw = int(2 ** math.ceil(math.log2(min(4096, max(64, 2 * (n_trials - len(cells)))))))
        u = engine.random(n_draw)
        n_drawn += n_draw
        ang = np.full((n_draw, 3), 90.0)
        for k in (3, 4, 5):
            if k in free:
                ang[:, k - 3] = 60.0 + 60.0 * u[:, k]
        lengths = np.exp(np.log(max_aspect) * u[:, 0:3])
        cosines = np.cos(np.deg2rad(ang))
        shape_vol = lengths.prod(-1) * np.sqrt(
            np.clip(1 - (cosines**2).sum(-1) + 2 * cosines.prod(-1), 1e-12, None))
        lengths *= np.cbrt(sg.z * zp * v_mol / shape_vol)[:, None]
        params = np.concatenate([lengths, ang], -1)
        ok = metric_ok(np.deg2rad(ang))
        u = u[ok]
        params = params[ok]
        if zp == 1:
            centre, quat = u[:, 6:9], uniform_quaternions(u[:, 9:12])
        else:
            centre = u[:, 6:6 + 3 * zp].reshape(-1, zp, 3)
            quat = np.stack([uniform_quaternions(u[:, 6 + 3 * zp + 3 * j:9 + 3 * zp + 3 * j])
                             for j in range(zp)], 1)
        scale = _smallest_scale(sg, params, centre, quat, body, radii, overlap_ratio, scale_range)
        keep = np.isfinite(scale)
        params[keep, :3] *= scale[keep, None]
        if squeeze and keep.any():
            params[keep] = _squeeze_axes(sg, params[keep], centre[keep], quat[keep], body, radii,
                                         overlap_ratio, min_length_A)
        keep &= params[:, :3].min(1) >= min_length_A
        for i in np.nonzero(keep)[0][: n_trials - len(cells)]:
            cells.append(params[i])
            centres.append(centre[i])
            quats.append(quat[i])
    n_rej = n_drawn - len(cells)
    if not cells:
        mol_axis = () if zp == 1 else (zp,)
        return TrialSet(sg, np.zeros((0, 6)), np.zeros((0, *mol_axis, 3)), np.zeros((0, *mol_axis, 4)),
                        n_drawn, n_rej)
    return TrialSet(sg, np.array(cells), np.array(centres), np.array(quats), n_drawn, n_rej)


def _squeeze_axes(sg, params, centre, quat, body, radii, overlap_ratio, min_length_A,
                  n_bisect: int = 6) -> np.ndarray:
    """Shorten a, b, c in turn to the smallest factor in [0.5, 1] passing the overlap test."""
    import torch

    radii_t = torch.as_tensor(radii, dtype=torch.float64)
    params = params.copy()

    def passes(p: np.ndarray) -> np.ndarray:
        cell, xyz = coords_numpy(sg, p, centre, quat, body)
        ratio = min_contact_ratio(torch.as_tensor(cell), torch.as_tensor(xyz), radii_t,
                                  max_ratio=overlap_ratio + 0.01)
        return (ratio.numpy() >= overlap_ratio) & (p[:, :3].min(1) >= min_length_A)

    for k in range(3):
        lo, hi = np.full(len(params), 0.5), np.ones(len(params))
        for _ in range(n_bisect):
            mid = 0.5 * (lo + hi)
            trial = params.copy()
            trial[:, k] *= mid
            ok = passes(trial)
            hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid)
        params[:, k] *= hi
    return params


def _smallest_scale(sg, params, centre, quat, body, radii, overlap_ratio, scale_range,
                    n_bisect: int = 8) -> np.ndarray:
    """Smallest uniform length scale in ``scale_range`` with no contact below ``overlap_ratio``.

    Bisection on the scale factor for all trials at once (fractional centres and
    orientations fixed). Returns (B,) scales, +inf where even the largest scale overlaps.
    """
    import torch

    radii_t = torch.as_tensor(radii, dtype=torch.float64)

    def passes(scales: np.ndarray) -> np.ndarray:
        p = params.copy()
        p[:, :3] *= scales[:, None]
        cell, xyz = coords_numpy(sg, p, centre, quat, body)
        ratio = min_contact_ratio(torch.as_tensor(cell), torch.as_tensor(xyz), radii_t,
                                  max_ratio=overlap_ratio + 0.01)
        return ratio.numpy() >= overlap_ratio

    n = len(params)
    lo = np.full(n, scale_range[0])
    hi = np.full(n, scale_range[1])
    if n == 0:
        return hi
    ok_hi = passes(hi)
    ok_lo = passes(lo)
    for _ in range(n_bisect):
        mid = 0.5 * (lo + hi)
        ok = passes(mid)
        hi = np.where(ok, mid, hi)
        lo = np.where(ok, lo, mid)
    return np.where(ok_lo, scale_range[0], np.where(ok_hi, hi, np.inf))

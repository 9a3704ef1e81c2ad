"""Batched rigid-body lattice-energy minimisation of trial crystal structures.

Structures of the same space group share Z, so their coordinates stack into one
(B, Z, n_atoms, 3) tensor and one call of
:meth:`~sim_backends.csp.forcefield.LatticeEnergyModel.energy_kjmol` gives every
energy; one backward pass gives every gradient.

Variables per structure (all scaled so that a unit change moves atoms by roughly one
Angstrom, which keeps the optimiser's curvature estimates well conditioned):

* ``L * log(a), L * log(b), L * log(c)`` with ``L = (Z V_mol)^(1/3)``;
* free angles (crystal system) as ``angle = 90 deg + 60 deg * tanh(x / (L pi/3))``,
  which keeps them in (30, 150) degrees, away from degenerate cells;
* the fractional centre of the reference molecule times ``L``;
* a rotation vector times the molecular radius, applied on the left of the trial
  orientation (``R = exp([w]x) R0``).

Coordinates are built from these with the space-group operations
(:func:`~sim_backends.csp.trials.molecule_coords`), so symmetry is kept exactly and
gradients come from autograd through the energy model -- or, for models with the
compiled pair kernel (``pair_kernel="numba"``, the default), from the kernel's analytic
gradients and the chain rule of this map written out in numpy
(:meth:`CrystalVariables._energy_and_grad_numpy`), which avoids ~150 small tensor
operations and their backward per evaluation.

The optimiser, :func:`minimise_batch`, is a batched L-BFGS (Nocedal & Wright,
Numerical Optimization, 2nd ed., Alg. 7.4, two-loop recursion) with a per-structure
Armijo backtracking line search: every iteration evaluates each active structure once
at its own trial step, accepts or shrinks its step independently, and drops
structures from the batch as they converge (max |gradient| < ``gtol`` or energy change
< ``ftol`` for 3 accepted steps). :func:`minimise_scipy` is the baseline: the same
variables and energy, one structure at a time, ``scipy.optimize.minimize`` with
``method="L-BFGS-B"`` and analytic gradients.

A minimisation can continue from another's final optimiser state (``warm_start``:
variables, reference rotations and L-BFGS memory), e.g. a full-model polish of minima
found with a cheaper model.

An optional pressure adds ``p V / Z`` (1 GPa A^3 = 0.602214 kJ/mol).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sim_backends.csp.spacegroups import SpaceGroup
from sim_backends.csp.trials import (
    TrialSet, cell_matrix, molecular_volume_A3, molecule_coords, rotation_from_quaternion,
)

if TYPE_CHECKING:
    import torch

    from sim_backends.csp.forcefield import LatticeEnergyModel

GPA_A3_TO_KJMOL = 0.602214076
_ANGLE_HALF_RANGE = math.pi / 3


@dataclass
class MinimisedSet:
    """Minimised structures of one space group (numpy, float64).

    Attributes:
        space_group: the group searched.
        cell_params: (B, 6) a, b, c (A), alpha, beta, gamma (degrees).
        centre_frac: (B, 3) fractional centre of the reference molecule.
        rotation: (B, 3, 3) body-to-Cartesian rotation of the reference molecule.
        cells_A: (B, 3, 3) lattice vectors as rows.
        coords_A: (B, Z, n_atoms, 3) Cartesian coordinates.
        energy_kjmol: (B,) lattice energy per molecule (+ pV/Z if a pressure was set).
        max_grad: (B,) final max |gradient| in scaled variables (kJ/mol per ~A).
        n_iter: (B,) accepted iterations.
        converged: (B,) whether the convergence test was met (else max_iter hit or
            the line search stalled).
        n_batch_evals: number of batched energy+gradient calls made.
        state: optimiser state to continue from (see ``warm_start`` of
            :func:`minimise_batch`): ``x`` (B, n_var) scaled variables, ``r0`` (B, 3, 3)
            reference rotations, L-BFGS memory ``s``, ``y`` (B, m, n_var), ``rho``,
            ``valid`` (B, m).
    """

    space_group: SpaceGroup
    cell_params: np.ndarray
    centre_frac: np.ndarray
    rotation: np.ndarray
    cells_A: np.ndarray
    coords_A: np.ndarray
    energy_kjmol: np.ndarray
    max_grad: np.ndarray
    n_iter: np.ndarray
    converged: np.ndarray
    n_batch_evals: int = 0

    def __len__(self) -> int:
        return int(self.energy_kjmol.shape[0])

    @property
    def density_gcm3(self) -> np.ndarray:
        """(B,) densities (needs ``mass_amu`` set by :func:`attach_mass`)."""
        vol = np.abs(np.linalg.det(self.cells_A))
        return self.space_group.z * self.mass_amu / vol * 1.66053906660

    mass_amu: float = 0.0
    state: dict[str, np.ndarray] | None = None

    def subset_state(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """The optimiser state of structures ``idx`` (for ``warm_start``)."""
        if self.state is None:
            raise ValueError("no optimiser state stored")
        return {k: v[idx] for k, v in self.state.items()}


class CrystalVariables:
    """Maps scaled optimisation variables to cells and coordinates for one space group.

    Args:
        space_group: the group (fixes Z and the free cell parameters).
        molecule: object with ``symbols`` and body-frame ``coords_A`` (n_atoms, 3).
        model: the energy model (``energy_kjmol(cell (B,3,3), coords (B,Z,n,3))``).
        pressure_gpa: optional external pressure.
    """

    def __init__(self, space_group: SpaceGroup, molecule: Any, model: LatticeEnergyModel,
                 pressure_gpa: float = 0.0) -> None:
        import torch

        self.sg = space_group
        self.model = model
        self.free_angles = [k - 3 for k in space_group.free_cell_parameters if k >= 3]
        self.body = torch.tensor(np.array(molecule.coords_A, dtype=float))
        self.len_scale = float(np.cbrt(space_group.z * molecular_volume_A3(molecule.symbols)))
        self.ang_scale = self.len_scale * _ANGLE_HALF_RANGE
        self.rot_scale = max(1.0, float(self.body.norm(dim=1).max()))
        self._body_np = self.body.numpy()
        self.pressure_gpa = float(pressure_gpa)
        self.n_var = 3 + len(self.free_angles) + 3 + 3

    def encode(self, trials: TrialSet) -> tuple[np.ndarray, np.ndarray]:
        """Trial set -> (x (B, n_var), R0 (B, 3, 3))."""
        import torch

        p = trials.cell_params
        parts = [self.len_scale * np.log(p[:, :3])]
        if self.free_angles:
            ang = np.deg2rad(p[:, [3 + k for k in self.free_angles]])
            t = np.clip((ang - math.pi / 2) / _ANGLE_HALF_RANGE, -0.999, 0.999)
            parts.append(self.ang_scale * np.arctanh(t))
        parts.append(self.len_scale * trials.centre_frac)
        parts.append(np.zeros((len(p), 3)))
        r0 = rotation_from_quaternion(torch.as_tensor(trials.quaternions, dtype=torch.float64))
        return np.concatenate(parts, 1), r0.numpy()

    def decode(self, x: torch.Tensor, r0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, n_var) -> cell params (B, 6; radians), cells (B,3,3), centre (B,3), rotation (B,3,3)."""
        import torch

        n = x.shape[0]
        lengths = torch.exp(x[:, :3] / self.len_scale)
        angles = torch.full((n, 3), math.pi / 2, dtype=x.dtype)
        k = 3
        if self.free_angles:
            m = len(self.free_angles)
            free = math.pi / 2 + _ANGLE_HALF_RANGE * torch.tanh(x[:, k:k + m] / self.ang_scale)
            angles = angles.index_put((torch.arange(n)[:, None], torch.tensor(self.free_angles)[None]), free)
            k += m
        centre = x[:, k:k + 3] / self.len_scale
        w = x[:, k + 3:k + 6] / self.rot_scale
        rot = _rodrigues(w) @ r0
        params = torch.cat([lengths, angles], 1)
        return params, cell_matrix(params), centre, rot

    def energy(self, x: torch.Tensor, r0: torch.Tensor) -> torch.Tensor:
        """(B,) energy per molecule (kJ/mol) at variables x; +inf for invalid cells."""
        import torch

        _, cell, centre, rot = self.decode(x, r0)
        coords = molecule_coords(self.sg, cell, centre, rot, self.body)
        vol = torch.linalg.det(cell)
        ok = torch.isfinite(vol) & (vol > 1.0) & torch.isfinite(coords).flatten(1).all(1)
        out = torch.full((x.shape[0],), math.inf, dtype=x.dtype)
        if bool(ok.any()):
            idx = ok.nonzero().squeeze(1)
            e = self.model.energy_kjmol(cell[idx], coords[idx]).to(x.dtype)
            if self.pressure_gpa:
                e = e + self.pressure_gpa * vol[idx] / self.sg.z * GPA_A3_TO_KJMOL
            out = out.index_put((idx,), e)
        return out

    def energy_and_grad(self, x: np.ndarray | torch.Tensor, r0: torch.Tensor,
                        chunk: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies (B,) and gradients (B, n_var) w.r.t. the scaled variables.

        Evaluated in sub-batches of ``chunk`` structures: the energy model is
        memory-bound for large batches, and 8-32 structures per call amortise the
        per-call overhead without spilling the caches.
        """
        import torch

        x = torch.as_tensor(x, dtype=torch.float64)
        if getattr(self.model, "pair_kernel", None) == "numba":
            r0_np = np.asarray(r0, dtype=np.float64)
            parts = [self._energy_and_grad_numpy(x[i:i + chunk].numpy(), r0_np[i:i + chunk])
                     for i in range(0, x.shape[0], chunk)]
            return (torch.from_numpy(np.concatenate([p[0] for p in parts])),
                    torch.from_numpy(np.concatenate([p[1] for p in parts])))
        if x.shape[0] > chunk:
            parts = [self.energy_and_grad(x[i:i + chunk], r0[i:i + chunk], chunk)
                     for i in range(0, x.shape[0], chunk)]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        xv = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            e = self.energy(xv, r0)
            finite = torch.isfinite(e)
            if bool(finite.any()):
                (g,) = torch.autograd.grad(e[finite].sum(), xv)
            else:
                g = torch.zeros_like(xv)
        g = torch.where(torch.isfinite(g), g, torch.zeros_like(g))
        return e.detach(), g.detach()

    def _energy_and_grad_numpy(self, x: np.ndarray, r0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`energy_and_grad` for a ``pair_kernel="numba"`` model, without autograd.

        The same map x -> (cell, coordinates) as :meth:`decode` and
        :func:`~sim_backends.csp.trials.molecule_coords`, in numpy, and its chain rule
        written out: with H the cell (rows), R = exp([w]x) R0 and fractional atom positions
        f_on = W_o (c + b_n R^T H^-1) + t_o + s_o of image o, atom n (W_o, t_o the space-group
        operation, s_o the wrapping shift, c the fractional centre), coords_on = f_on H, so
        dE/dH = sum f_on^T G_on - H^-T (sum cart_n^T G'_n) H^-T + (c^T sum_n G'_n) with
        G'_n = sum_o (G_on H^T) W_o H^-T, dE/dc = sum_n G'_n H^T (plus the direct c term), and
        dE/dR = sum_n G'_n^T b_n. Rodrigues: R(w) = I + a K + b K^2 with a = sin t / t,
        b = (1 - cos t) / t^2, t = |w|. Cell: :func:`~sim_backends.csp.trials.cell_matrix`.
        Replaces ~150 small tensor operations and their autograd backward per call (they cost
        as much as the compiled pair kernel itself in stage-1 minimisations).

        Args:
            x: (B, n_var) scaled variables; r0: (B, 3, 3) reference rotations.

        Returns:
            energies (B,) kJ/mol per molecule (+inf where the cell is invalid) and gradients
            (B, n_var) (zero where invalid).
        """
        n = x.shape[0]
        big_l, r_scale = self.len_scale, self.rot_scale
        lengths = np.exp(x[:, :3] / big_l)
        angles = np.full((n, 3), math.pi / 2)
        k = 3
        m = len(self.free_angles)
        if m:
            th = np.tanh(x[:, k:k + m] / self.ang_scale)
            angles[:, self.free_angles] = math.pi / 2 + _ANGLE_HALF_RANGE * th
            k += m
        centre = x[:, k:k + 3] / big_l
        w = x[:, k + 3:k + 6] / r_scale
        # Rodrigues, with the same small-angle branch as _rodrigues
        t2 = (w * w).sum(1)
        t = np.sqrt(t2 + 1e-30)
        small = t < 1e-4
        a_rod = np.where(small, 1 - t2 / 6, np.sin(t) / t)
        b_rod = np.where(small, 0.5 - t2 / 24, 2 * np.sin(t / 2) ** 2 / (t2 + 1e-30))
        kmat = np.zeros((n, 3, 3))
        kmat[:, 0, 1], kmat[:, 0, 2], kmat[:, 1, 2] = -w[:, 2], w[:, 1], -w[:, 0]
        kmat[:, 1, 0], kmat[:, 2, 0], kmat[:, 2, 1] = w[:, 2], -w[:, 1], w[:, 0]
        kk = kmat @ kmat
        rod = np.eye(3) + a_rod[:, None, None] * kmat + b_rod[:, None, None] * kk
        rot = rod @ r0
        # cell_matrix
        la, lb, lc = lengths[:, 0], lengths[:, 1], lengths[:, 2]
        ca, cb, cg = np.cos(angles[:, 0]), np.cos(angles[:, 1]), np.cos(angles[:, 2])
        sa, sb, sg = np.sin(angles[:, 0]), np.sin(angles[:, 1]), np.sin(angles[:, 2])
        cx = lc * cb
        cy = lc * (ca - cb * cg) / sg
        cz2 = lc * lc - cx * cx - cy * cy
        clamped = cz2 < 1e-8
        cz = np.sqrt(np.maximum(cz2, 1e-8))
        cell = np.zeros((n, 3, 3))
        cell[:, 0, 0] = la
        cell[:, 1, 0], cell[:, 1, 1] = lb * cg, lb * sg
        cell[:, 2, 0], cell[:, 2, 1], cell[:, 2, 2] = cx, cy, cz
        vol = cell[:, 0, 0] * cell[:, 1, 1] * cell[:, 2, 2]  # lower triangular
        # molecule_coords
        ops_w = np.asarray(self.sg.rotations, dtype=float)
        ops_t = np.asarray(self.sg.translations, dtype=float)
        body = self._body_np
        with np.errstate(all="ignore"):
            inv_cell = np.linalg.inv(cell)
        # (matmul rather than einsum throughout: numpy's einsum is ~10x slower at these sizes)
        ops_wt = ops_w.transpose(0, 2, 1)
        cart = centre[:, None, :] @ cell + body @ rot.transpose(0, 2, 1)  # (B, n, 3)
        frac = cart @ inv_cell
        frac_img = frac[:, None] @ ops_wt + ops_t[None, :, None, :]  # (B, Z, n, 3)
        centre_img = centre[:, None, None, :] @ ops_wt + ops_t[None, :, None, :]  # (B, Z, 1, 3)
        frac_img += -np.floor(centre_img)
        coords = frac_img @ cell[:, None]

        energy = np.full(n, math.inf)
        grad = np.zeros_like(x)
        ok = np.isfinite(vol) & (vol > 1.0) & np.isfinite(coords).reshape(n, -1).all(1)
        if not ok.any():
            return energy, grad
        idx = np.nonzero(ok)[0]
        e, g_cell, g_xyz = self.model.energy_and_grad_numpy(cell[idx], coords[idx])
        if self.pressure_gpa:
            p_v = self.pressure_gpa * GPA_A3_TO_KJMOL / self.sg.z
            e = e + p_v * vol[idx]
            g_cell = g_cell + p_v * vol[idx, None, None] * inv_cell[idx].transpose(0, 2, 1)
        energy[idx] = e
        cell, inv_cell, frac_img, cart, centre = cell[idx], inv_cell[idx], frac_img[idx], cart[idx], centre[idx]
        # coords = frac_img @ H
        n_b = len(idx)
        g_cell = g_cell + frac_img.reshape(n_b, -1, 3).transpose(0, 2, 1) @ g_xyz.reshape(n_b, -1, 3)
        g_frac = ((g_xyz @ cell.transpose(0, 2, 1)[:, None]) @ ops_w[None]).sum(1)
        # frac = cart @ H^-1
        g_inv = cart.transpose(0, 2, 1) @ g_frac
        g_cell -= inv_cell.transpose(0, 2, 1) @ g_inv @ inv_cell.transpose(0, 2, 1)
        g_cart = g_frac @ inv_cell.transpose(0, 2, 1)
        # cart = c H + body R^T
        g_cart_sum = g_cart.sum(1)
        g_centre = (cell @ g_cart_sum[:, :, None])[:, :, 0]
        g_cell += centre[:, :, None] * g_cart_sum[:, None, :]
        g_rot = g_cart.transpose(0, 2, 1) @ body
        g_rod = g_rot @ r0[idx].transpose(0, 2, 1)
        # Rodrigues: dE/dw = 2 w (a' <G,K> + b' <G,K^2>) + a vee(G) + b vee(G K^T + K^T G)
        kv, kkv, wv, t2v, tv = kmat[idx], kk[idx], w[idx], t2[idx], t[idx]
        series = tv < 1e-2
        with np.errstate(all="ignore"):
            da = np.where(series, -1 / 6 + t2v / 60, (tv * np.cos(tv) - np.sin(tv)) / (2 * tv**3))
            db = np.where(series, -1 / 24 + t2v / 360, (tv * np.sin(tv) - 2 * (1 - np.cos(tv))) / (2 * tv**4))
        da = np.where(small[idx], -1 / 6, da)
        db = np.where(small[idx], -1 / 24, db)
        inner_k = (g_rod * kv).sum((1, 2))
        inner_kk = (g_rod * kkv).sum((1, 2))

        def vee(mat):
            return np.stack([mat[:, 2, 1] - mat[:, 1, 2], mat[:, 0, 2] - mat[:, 2, 0], mat[:, 1, 0] - mat[:, 0, 1]], 1)

        kt = kv.transpose(0, 2, 1)
        g_w = (2 * wv * (da * inner_k + db * inner_kk)[:, None] + a_rod[idx, None] * vee(g_rod)
               + b_rod[idx, None] * vee(g_rod @ kt + kt @ g_rod))
        # cell_matrix backward
        g0, g1, g2 = g_cell[:, 0], g_cell[:, 1], g_cell[:, 2]
        lb_, lc_ = lb[idx], lc[idx]
        ca_, cb_, cg_, sa_, sb_, sg_ = ca[idx], cb[idx], cg[idx], sa[idx], sb[idx], sg[idx]
        cz_, cl_ = cz[idx], clamped[idx]
        gcx = np.where(cl_, g2[:, 0], g2[:, 0] - g2[:, 2] * cx[idx] / cz_)
        gcy = np.where(cl_, g2[:, 1], g2[:, 1] - g2[:, 2] * cy[idx] / cz_)
        gcc = np.where(cl_, 0.0, g2[:, 2] * lc_ / cz_)
        g_len = np.stack([g0[:, 0], g1[:, 0] * cg_ + g1[:, 1] * sg_,
                          gcc + gcx * cb_ + gcy * (ca_ - cb_ * cg_) / sg_], 1)
        g_ang = np.stack([
            -gcy * lc_ * sa_ / sg_,
            -gcx * lc_ * sb_ + gcy * lc_ * sb_ * cg_ / sg_,
            -g1[:, 0] * lb_ * sg_ + g1[:, 1] * lb_ * cg_ + gcy * lc_ * (cb_ - ca_ * cg_) / sg_**2,
        ], 1)
        # variables
        gx = np.empty((len(idx), x.shape[1]))
        gx[:, :3] = g_len * lengths[idx] / big_l
        k = 3
        if m:
            gx[:, k:k + m] = g_ang[:, self.free_angles] * (_ANGLE_HALF_RANGE / self.ang_scale) * (1 - th[idx] ** 2)
            k += m
        gx[:, k:k + 3] = g_centre / big_l
        gx[:, k + 3:k + 6] = g_w / r_scale
        grad[idx] = np.where(np.isfinite(gx), gx, 0.0)
        return energy, grad

    def finish(self, x: np.ndarray, r0: np.ndarray) -> dict[str, np.ndarray]:
        """Cell parameters (degrees), cells, centres, rotations and coordinates at x."""
        import torch

        with torch.no_grad():
            p, cell, centre, rot = self.decode(torch.as_tensor(x), torch.as_tensor(r0))
            coords = molecule_coords(self.sg, cell, centre, rot, self.body)
        p = p.numpy().copy()
        p[:, 3:] = np.rad2deg(p[:, 3:])
        return {"cell_params": p, "cells_A": cell.numpy(), "centre_frac": np.mod(centre.numpy(), 1.0),
                "rotation": rot.numpy(), "coords_A": coords.numpy()}


def _rodrigues(w: torch.Tensor) -> torch.Tensor:
    """(B, 3) rotation vectors -> (B, 3, 3) matrices, smooth at w = 0."""
    import torch

    theta2 = (w * w).sum(-1, keepdim=True)
    theta = torch.sqrt(theta2 + 1e-30)
    small = theta < 1e-4
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, 2 * torch.sin(theta / 2) ** 2 / (theta2 + 1e-30))
    zero = torch.zeros_like(w[:, 0])
    k = torch.stack([
        torch.stack([zero, -w[:, 2], w[:, 1]], -1),
        torch.stack([w[:, 2], zero, -w[:, 0]], -1),
        torch.stack([-w[:, 1], w[:, 0], zero], -1),
    ], -2)
    eye = torch.eye(3, dtype=w.dtype).expand_as(k)
    return eye + a[..., None] * k + b[..., None] * (k @ k)


def minimise_batch(
    trials: TrialSet,
    molecule: Any,
    model: LatticeEnergyModel,
    gtol: float = 0.05,
    ftol: float = 1e-7,
    max_iter: int = 1000,
    history: int = 10,
    max_step: float = 0.5,
    pressure_gpa: float = 0.0,
    chunk: int = 8,
    warm_start: dict[str, np.ndarray] | None = None,
) -> MinimisedSet:
    """Minimise all trials of one space group together (batched L-BFGS).

    Args:
        trials: trial structures (one space group).
        molecule: the rigid molecule (``symbols``, body-frame ``coords_A``, ``mass_amu``).
        model: energy model built for this molecule.
        gtol: converged when max |gradient| (kJ/mol per scaled unit ~ A) is below this.
        ftol: ... or when the energy changed by less than this (kJ/mol) on 3 steps in a row.
        max_iter: maximum accepted steps per structure.
        history: L-BFGS memory (pairs).
        max_step: largest change of any scaled variable in one step (~A).
        pressure_gpa: external pressure.
        chunk: structures per energy-model call (speed knob only; larger suits cheap,
            short-cutoff models).
        warm_start: continue from a previous minimisation's ``state`` (same space group
            and molecule, possibly another energy model) instead of the trials' own
            variables: the same variables and reference rotations, and its L-BFGS memory
            as the initial curvature model. Used by the staged CSP protocol: the cheap
            stage-1 model's curvature is close to the full model's, so the stage-2 polish
            needs fewer iterations than a cold start (which first probes with a 0.1 A step).

    Returns:
        :class:`MinimisedSet` in the order of the trials.
    """
    import torch

    var = CrystalVariables(trials.space_group, molecule, model, pressure_gpa)
    x0, r0_np = var.encode(trials)
    if warm_start is not None:
        x0, r0_np = np.asarray(warm_start["x"], dtype=float), np.asarray(warm_start["r0"], dtype=float)
        if x0.shape != (len(trials), var.n_var) or r0_np.shape != (len(trials), 3, 3):
            raise ValueError(f"warm_start holds {x0.shape} variables, expected ({len(trials)}, {var.n_var})")
    n, d = x0.shape
    dt = torch.float64
    x = torch.as_tensor(x0, dtype=dt).clone()
    r0 = torch.as_tensor(r0_np, dtype=dt)
    f, g = var.energy_and_grad(x, r0, chunk)
    n_evals = 1
    s_hist = torch.zeros(n, history, d, dtype=dt)
    y_hist = torch.zeros(n, history, d, dtype=dt)
    rho = torch.zeros(n, history, dtype=dt)
    valid = torch.zeros(n, history, dtype=torch.bool)
    if warm_start is not None and warm_start.get("s") is not None:
        m = min(history, warm_start["s"].shape[1])  # the newest m pairs
        s_hist[:, -m:] = torch.as_tensor(warm_start["s"][:, -m:], dtype=dt)
        y_hist[:, -m:] = torch.as_tensor(warm_start["y"][:, -m:], dtype=dt)
        rho[:, -m:] = torch.as_tensor(warm_start["rho"][:, -m:], dtype=dt)
        valid[:, -m:] = torch.as_tensor(warm_start["valid"][:, -m:], dtype=torch.bool)
    done = ~torch.isfinite(f)  # trials that cannot even be evaluated are left as they are
    converged = torch.zeros(n, dtype=torch.bool)
    n_iter = torch.zeros(n, dtype=torch.long)
    n_small = torch.zeros(n, dtype=torch.long)
    n_back = torch.zeros(n, dtype=torch.long)
    alpha = torch.ones(n, dtype=dt)
    direction = torch.zeros(n, d, dtype=dt)
    need_dir = torch.ones(n, dtype=torch.bool)

    gmax = g.abs().amax(1)
    converged |= gmax < gtol
    done |= converged
    while not bool(done.all()):
        act = (~done).nonzero().squeeze(1)
        nd = act[need_dir[act]]
        if nd.numel():
            dirs = _two_loop(g[nd], s_hist[nd], y_hist[nd], rho[nd], valid[nd])
            descent = (dirs * g[nd]).sum(1) < 0
            if not bool(descent.all()):
                bad = nd[~descent]
                valid[bad] = False
                dirs[~descent] = -g[bad] * _first_step_scale(g[bad])[:, None]
            direction[nd] = dirs
            alpha[nd] = 1.0
            n_back[nd] = 0
            need_dir[nd] = False
        step_cap = max_step / direction[act].abs().amax(1).clamp_min(1e-300)
        alpha[act] = torch.minimum(alpha[act], step_cap)
        x_try = x[act] + alpha[act, None] * direction[act]
        f_try, g_try = var.energy_and_grad(x_try, r0[act], chunk)
        n_evals += 1
        slope = (g[act] * direction[act]).sum(1)
        armijo = torch.isfinite(f_try) & (f_try <= f[act] + 1e-4 * alpha[act] * slope)

        acc = act[armijo]
        if acc.numel():
            s = x_try[armijo] - x[acc]
            y = g_try[armijo] - g[acc]
            sy = (s * y).sum(1)
            good = sy > 1e-10 * (s.norm(dim=1) * y.norm(dim=1)).clamp_min(1e-300)
            upd = acc[good]
            s_hist[upd] = torch.cat([s_hist[upd, 1:], s[good, None]], 1)
            y_hist[upd] = torch.cat([y_hist[upd, 1:], y[good, None]], 1)
            rho[upd] = torch.cat([rho[upd, 1:], (1.0 / sy[good])[:, None]], 1)
            valid[upd] = torch.cat([valid[upd, 1:], torch.ones(len(upd), 1, dtype=torch.bool)], 1)
            df = (f[acc] - f_try[armijo]).abs()
            x[acc], f[acc], g[acc] = x_try[armijo], f_try[armijo], g_try[armijo]
            n_iter[acc] += 1
            n_small[acc] = torch.where(df < ftol, n_small[acc] + 1, torch.zeros_like(n_small[acc]))
            need_dir[acc] = True
            conv = (g[acc].abs().amax(1) < gtol) | (n_small[acc] >= 3)
            converged[acc] |= conv
            done[acc] |= conv | (n_iter[acc] >= max_iter)

        rej = act[~armijo]
        if rej.numel():
            # quadratic interpolation of the step, safeguarded to [0.1, 0.5] of the old one
            a_old = alpha[rej]
            df = f_try[~armijo] - f[rej] - a_old * slope[~armijo]
            a_new = -slope[~armijo] * a_old**2 / (2 * df.clamp_min(1e-300))
            a_new = torch.where(torch.isfinite(f_try[~armijo]) & torch.isfinite(a_new),
                                a_new.clamp(0.1 * a_old, 0.5 * a_old), 0.25 * a_old)
            alpha[rej] = a_new
            n_back[rej] += 1
            stalled = n_back[rej] > 30
            if bool(stalled.any()):
                st = rej[stalled]
                restart = valid[st].any(1)
                # first stall: drop the history and retry from steepest descent; second: stop
                valid[st[restart]] = False
                need_dir[st[restart]] = True
                done[st[~restart]] = True

    x_np = x.numpy()
    geo = var.finish(x_np, r0_np)
    out = MinimisedSet(
        space_group=trials.space_group,
        energy_kjmol=f.numpy(),
        max_grad=g.abs().amax(1).numpy(),
        n_iter=n_iter.numpy(),
        converged=converged.numpy(),
        n_batch_evals=n_evals,
        mass_amu=float(getattr(molecule, "mass_amu", 0.0)),
        state={"x": x_np.copy(), "r0": np.asarray(r0_np, dtype=float), "s": s_hist.numpy(),
               "y": y_hist.numpy(), "rho": rho.numpy(), "valid": valid.numpy()},
        **geo,
    )
    return out


def _first_step_scale(g: torch.Tensor) -> torch.Tensor:
    """Initial inverse-Hessian scale: first step moves the largest variable by 0.1."""
    return 0.1 / g.abs().amax(1).clamp_min(1e-12)


def as_trials(res: MinimisedSet) -> TrialSet:
    """Minimised structures as a :class:`TrialSet`, to restart a minimisation from them.

    Args:
        res: minimised structures (cell parameters in degrees, rotations (B, 3, 3)).

    Returns:
        Trial set with the same cells, centres and orientations (w, x, y, z quaternions).
    """
    from scipy.spatial.transform import Rotation

    quat_xyzw = Rotation.from_matrix(res.rotation).as_quat()
    return TrialSet(res.space_group, np.array(res.cell_params, dtype=float),
                    np.array(res.centre_frac, dtype=float), quat_xyzw[:, [3, 0, 1, 2]])


def _two_loop(g, s, y, rho, valid):
    """Batched L-BFGS two-loop recursion; history ordered oldest -> newest.

    Args:
        g: (B, D) gradients; s, y: (B, m, D); rho: (B, m); valid: (B, m) bool (torch).

    Returns:
        (B, D) search directions -H g (torch). Computed in numpy on the shared buffers:
        the ~4 m small operations cost ~4x less there than as torch operations.
    """
    import torch

    g_np, s_np, y_np, rho_np = g.numpy(), s.numpy(), y.numpy(), rho.numpy()
    vf = valid.numpy().astype(g_np.dtype)
    m = s_np.shape[1]
    q = g_np.copy()
    a = np.zeros_like(rho_np)
    for k in range(m - 1, -1, -1):
        a[:, k] = vf[:, k] * rho_np[:, k] * np.einsum("bd,bd->b", s_np[:, k], q)
        q -= a[:, k, None] * y_np[:, k]
    yy = np.einsum("bd,bd->b", y_np[:, -1], y_np[:, -1])
    sy = np.einsum("bd,bd->b", s_np[:, -1], y_np[:, -1])
    first = 0.1 / np.maximum(np.abs(g_np).max(1), 1e-12)  # as _first_step_scale
    gamma = np.where(valid.numpy()[:, -1], sy / np.maximum(yy, 1e-300), first)
    r = gamma[:, None] * q
    for k in range(m):
        b = vf[:, k] * rho_np[:, k] * np.einsum("bd,bd->b", y_np[:, k], r)
        r += s_np[:, k] * (a[:, k] - b)[:, None]
    return torch.from_numpy(-r)


def minimise_scipy(
    trials: TrialSet,
    molecule: Any,
    model: LatticeEnergyModel,
    gtol: float = 0.05,
    max_iter: int = 1000,
    pressure_gpa: float = 0.0,
) -> MinimisedSet:
    """Baseline: each trial minimised on its own with SciPy's L-BFGS-B.

    Same variables and energy as :func:`minimise_batch`; float64 energies with
    analytic (autograd) gradients, ``options={"gtol": gtol, "maxiter": max_iter}``.
    """
    import torch
    from scipy.optimize import minimize

    var = CrystalVariables(trials.space_group, molecule, model, pressure_gpa)
    x0, r0_np = var.encode(trials)
    xs, fs, gs, its, conv = [], [], [], [], []
    n_evals = 0
    for i in range(len(x0)):
        r0 = torch.as_tensor(r0_np[i:i + 1])

        def fun(v, r0=r0):
            e, g = var.energy_and_grad(v[None], r0)
            val = float(e[0])
            if not math.isfinite(val):
                return 1e10, np.zeros_like(v)
            return val, g[0].numpy()

        res = minimize(fun, x0[i], jac=True, method="L-BFGS-B",
                       options={"gtol": gtol, "maxiter": max_iter})
        n_evals += int(res.nfev)
        xs.append(res.x)
        fs.append(float(res.fun))
        gs.append(float(np.abs(res.jac).max()))
        its.append(int(res.nit))
        conv.append(bool(res.success))
    x_np = np.array(xs).reshape(len(x0), -1)
    geo = var.finish(x_np, r0_np)
    return MinimisedSet(
        space_group=trials.space_group, energy_kjmol=np.array(fs), max_grad=np.array(gs),
        n_iter=np.array(its), converged=np.array(conv), n_batch_evals=n_evals,
        mass_amu=float(getattr(molecule, "mass_amu", 0.0)), **geo,
    )

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

With Z' > 1 independent molecules (same rigid molecule) the centre and rotation
variables repeat per molecule (cell, angles, centre 1, rotation 1, centre 2, ...); the
molecules' images are concatenated (all Z images of molecule 0, then molecule 1's), the
pair energy is summed over the whole cell (no symmetry-adapted sum: the molecules are not
all images of one), and the compiled variable map is applied per molecule with the cell
gradient summed over them. Energies stay per molecule (the cell's Z Z' molecules).

Coordinates are built from these with the space-group operations
(:func:`~sim_backends.csp.trials.molecule_coords`), so symmetry is kept exactly and
gradients come from autograd through the energy model -- or, for models with the
compiled pair kernel (``pair_kernel="numba"``, the default), from the kernel's analytic
gradients and the chain rule of this map, compiled (:mod:`sim_backends.csp.varmap`), which
avoids ~150 small tensor operations and their backward per evaluation. Because every
molecule is a symmetry image of the reference one, the pair energy is summed over the
reference molecule's pairs only, weighted by Z (``symmetry_adapted``; the same energy and
the same gradient in these variables as the whole-cell sum, 2.3x fewer pairs at Z = 4).

The optimiser, :func:`minimise_batch`, is a batched L-BFGS (Nocedal & Wright,
Numerical Optimization, 2nd ed., Alg. 7.4, two-loop recursion; the initial inverse Hessian
scaled per variable group) with a per-structure
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

Over 500 lines on purpose: the batched L-BFGS minimiser, its crystal variable map and the
SciPy reference minimiser the tests check it against share one variable layout.
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
#: |x| / angle scale beyond which a free angle counts as pinned at its limit (tanh = 0.999,
#: within 0.06 deg of 30 or 150 deg)
_PINNED_ANGLE_X = math.atanh(0.999)
#: accepted steps in a row with a pinned angle before a trajectory is stopped (oxalic acid,
#: 128 stage-1 trials in each of P2_1/c, P-1, C2/c, P2_1, Cc: with 100 no trial that would have
#: converged is lost -- some touch the limit and come back, after up to ~60 steps -- and the two
#: 1,000-step runs stop; P2_1/c and C2/c units cost 35-60 % less)
_PINNED_ITERATIONS = 100


@dataclass
class MinimisedSet:
    """Minimised structures of one space group (numpy, float64).

    Attributes:
        space_group: the group searched.
        cell_params: (B, 6) a, b, c (A), alpha, beta, gamma (degrees).
        centre_frac: (B, 3) fractional centre of the reference molecule ((B, Z', 3) for Z' > 1).
        rotation: (B, 3, 3) body-to-Cartesian rotation of the reference molecule ((B, Z', 3, 3)).
        cells_A: (B, 3, 3) lattice vectors as rows.
        coords_A: (B, Z Z', n_atoms, 3) Cartesian coordinates.
        energy_kjmol: (B,) lattice energy per molecule (+ pV/Z if a pressure was set).
        max_grad: (B,) final max |gradient| in scaled variables (kJ/mol per ~A).
        n_iter: (B,) accepted iterations.
        converged: (B,) whether the convergence test was met (else max_iter hit, the
            line search stalled or a free cell angle stayed at its 30/150 degree limit).
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
        return self.coords_A.shape[1] * self.mass_amu / vol * 1.66053906660

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
        symmetry_adapted: for ``pair_kernel="numba"`` models, sum the pair energy over the
            reference molecule's pairs only, weighted by Z (every molecule is an image of it,
            so the energy and the gradient in these variables are the same as the full
            cell sum's, with Z^2/2 molecule-pair blocks replaced by Z - 1/2), and add the
            rigid molecule's intramolecular Coulomb correction as the constant it is.
            ``False`` evaluates the whole cell and every term, as a generic optimiser calling
            the model on the P1 coordinates would. With ``z_prime`` > 1 the pair sum is the
            whole cell's either way (the rigid intramolecular constant is still used).
        z_prime: independent molecules in the asymmetric unit (module docstring).
    """

    def __init__(self, space_group: SpaceGroup, molecule: Any, model: LatticeEnergyModel,
                 pressure_gpa: float = 0.0, symmetry_adapted: bool = True, z_prime: int = 1) -> None:
        import torch

        self.sg = space_group
        self.model = model
        self.free_angles = [k - 3 for k in space_group.free_cell_parameters if k >= 3]
        self.body = torch.tensor(np.array(molecule.coords_A, dtype=float))
        self.z_prime = int(z_prime)
        self.len_scale = float(np.cbrt(space_group.z * self.z_prime * molecular_volume_A3(molecule.symbols)))
        self.ang_scale = self.len_scale * _ANGLE_HALF_RANGE
        self.rot_scale = max(1.0, float(self.body.norm(dim=1).max()))
        self._body_np = np.ascontiguousarray(self.body.numpy())
        self._free_np = np.array(self.free_angles, dtype=np.int64)
        self._ops_w = np.ascontiguousarray(space_group.rotations, dtype=np.float64)
        self._ops_t = np.ascontiguousarray(space_group.translations, dtype=np.float64)
        self.pressure_gpa = float(pressure_gpa)
        self.symmetry_adapted = bool(symmetry_adapted)
        #: index of the first molecular variable (after the cell lengths and free angles)
        self.k_mol = 3 + len(self.free_angles)
        self.n_var = self.k_mol + 6 * self.z_prime

    def encode(self, trials: TrialSet) -> tuple[np.ndarray, np.ndarray]:
        """Trial set -> (x (B, n_var), R0 (B, 3, 3); (B, Z', 3, 3) for Z' > 1)."""
        import torch

        if trials.z_prime != self.z_prime:
            raise ValueError(f"trials have Z' = {trials.z_prime}, the variables Z' = {self.z_prime}")
        p = trials.cell_params
        parts = [self.len_scale * np.log(p[:, :3])]
        if self.free_angles:
            ang = np.deg2rad(p[:, [3 + k for k in self.free_angles]])
            t = np.clip((ang - math.pi / 2) / _ANGLE_HALF_RANGE, -0.999, 0.999)
            parts.append(self.ang_scale * np.arctanh(t))
        centre = np.asarray(trials.centre_frac, dtype=float).reshape(len(p), self.z_prime, 3)
        for j in range(self.z_prime):
            parts.append(self.len_scale * centre[:, j])
            parts.append(np.zeros((len(p), 3)))
        quat = torch.as_tensor(np.asarray(trials.quaternions, dtype=float).reshape(-1, 4))
        r0 = rotation_from_quaternion(quat).numpy()
        r0 = r0 if self.z_prime == 1 else r0.reshape(len(p), self.z_prime, 3, 3)
        return np.concatenate(parts, 1), r0

    def molecule_x(self, x: np.ndarray, j: int) -> np.ndarray:
        """The Z' = 1 variable vector (cell, centre, rotation) of independent molecule ``j``."""
        k = self.k_mol
        return np.ascontiguousarray(np.concatenate([x[:, :k], x[:, k + 6 * j:k + 6 * j + 6]], 1))

    def coords(self, cell: torch.Tensor, centre: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
        """Coordinates (B, Z Z', n, 3) of :meth:`decode`'s cell, centres and rotations."""
        import torch

        if self.z_prime == 1:
            return molecule_coords(self.sg, cell, centre, rot, self.body)
        return torch.cat([molecule_coords(self.sg, cell, centre[:, j], rot[:, j], self.body)
                          for j in range(self.z_prime)], 1)

    def decode(self, x: torch.Tensor, r0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, n_var) -> cell params (B, 6; radians), cells (B,3,3), centre (B,3), rotation (B,3,3)
        (for Z' > 1 centres (B, Z', 3) and rotations (B, Z', 3, 3))."""
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
        params = torch.cat([lengths, angles], 1)
        if self.z_prime == 1:
            centre = x[:, k:k + 3] / self.len_scale
            w = x[:, k + 3:k + 6] / self.rot_scale
            return params, cell_matrix(params), centre, _rodrigues(w) @ r0
        centre = torch.stack([x[:, k + 6 * j:k + 6 * j + 3] for j in range(self.z_prime)], 1) / self.len_scale
        rot = torch.stack([_rodrigues(x[:, k + 6 * j + 3:k + 6 * j + 6] / self.rot_scale) @ r0[:, j]
                           for j in range(self.z_prime)], 1)
        return params, cell_matrix(params), centre, rot

    def energy(self, x: torch.Tensor, r0: torch.Tensor) -> torch.Tensor:
        """(B,) energy per molecule (kJ/mol) at variables x; +inf for invalid cells."""
        import torch

        _, cell, centre, rot = self.decode(x, r0)
        coords = self.coords(cell, centre, rot)
        vol = torch.linalg.det(cell)
        ok = torch.isfinite(vol) & (vol > 1.0) & torch.isfinite(coords).flatten(1).all(1)
        out = torch.full((x.shape[0],), math.inf, dtype=x.dtype)
        if bool(ok.any()):
            idx = ok.nonzero().squeeze(1)
            e = self.model.energy_kjmol(cell[idx], coords[idx]).to(x.dtype)
            if self.pressure_gpa:
                e = e + self.pressure_gpa * vol[idx] / (self.sg.z * self.z_prime) * GPA_A3_TO_KJMOL
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
        r0 = torch.as_tensor(r0, dtype=torch.float64)
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
        :func:`~sim_backends.csp.trials.molecule_coords`, and its chain rule written out, both
        compiled (:mod:`sim_backends.csp.varmap`): with H the cell (rows), R = exp([w]x) R0 and
        fractional atom positions f_on = W_o (c + b_n R^T H^-1) + t_o + s_o of image o, atom n
        (W_o, t_o the space-group operation, s_o the wrapping shift, c the fractional centre),
        coords_on = f_on H, so dE/dH = sum f_on^T G_on - H^-T (sum cart_n^T G'_n) H^-T +
        (c^T sum_n G'_n) with G'_n = sum_o (G_on H^T) W_o H^-T, dE/dc = sum_n G'_n H^T, and
        dE/dR = sum_n G'_n^T b_n. Rodrigues: R(w) = I + a K + b K^2 with a = sin t / t,
        b = (1 - cos t) / t^2, t = |w|. Cell: :func:`~sim_backends.csp.trials.cell_matrix`.
        Replaces ~150 small tensor operations and their autograd backward per call.

        Args:
            x: (B, n_var) scaled variables; r0: (B, 3, 3) reference rotations.

        Returns:
            energies (B,) kJ/mol per molecule (+inf where the cell is invalid) and gradients
            (B, n_var) (zero where invalid).
        """
        from sim_backends.csp import varmap

        if self.z_prime > 1:
            return self._energy_and_grad_zprime(x, r0)
        n = x.shape[0]
        consts = (self._free_np, self.len_scale, self.ang_scale, self.rot_scale)
        state = varmap.forward(x, r0, *consts, self._ops_w, self._ops_t, self._body_np)
        cell, inv_cell, coords, vol = state[0], state[1], state[2], state[5]
        energy = np.full(n, math.inf)
        grad = np.zeros_like(x)
        ok = np.isfinite(vol) & (vol > 1.0) & np.isfinite(coords).reshape(n, -1).all(1)
        if not ok.any():
            return energy, grad
        if not ok.all():
            idx = np.nonzero(ok)[0]
            state = tuple(a[idx] for a in state)
            cell, inv_cell, coords, vol, r0 = state[0], state[1], state[2], state[5], r0[idx]
        e, g_cell, g_xyz = self.model.energy_and_grad_numpy(cell, coords, symmetric=self.symmetry_adapted,
                                                             rigid=self.symmetry_adapted)
        if self.pressure_gpa:
            p_v = self.pressure_gpa * GPA_A3_TO_KJMOL / self.sg.z
            e = e + p_v * vol
            g_cell = g_cell + p_v * vol[:, None, None] * inv_cell.transpose(0, 2, 1)
        energy[ok] = e
        grad[ok] = varmap.backward(g_cell, g_xyz, state, r0, *consts, self._ops_w, self._body_np, self.n_var)
        return energy, grad

    def _energy_and_grad_zprime(self, x: np.ndarray, r0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_energy_and_grad_numpy` for Z' > 1: the compiled map of each independent
        molecule (:meth:`molecule_x`, its own R0), the images concatenated, the whole-cell pair
        sum, and the chain rule per molecule with the cell-variable gradients summed (dE/dcell
        of the energy model enters once)."""
        from sim_backends.csp import varmap

        n, k = x.shape[0], self.k_mol
        consts = (self._free_np, self.len_scale, self.ang_scale, self.rot_scale)
        r0 = np.asarray(r0, dtype=np.float64)
        states = [varmap.forward(self.molecule_x(x, j), np.ascontiguousarray(r0[:, j]), *consts,
                                 self._ops_w, self._ops_t, self._body_np) for j in range(self.z_prime)]
        cell, inv_cell, vol = states[0][0], states[0][1], states[0][5]
        coords = np.concatenate([st[2] for st in states], 1)
        energy = np.full(n, math.inf)
        grad = np.zeros_like(x)
        ok = np.isfinite(vol) & (vol > 1.0) & np.isfinite(coords).reshape(n, -1).all(1)
        if not ok.any():
            return energy, grad
        idx = np.nonzero(ok)[0]
        states = [tuple(a[idx] for a in st) for st in states]
        e, g_cell, g_xyz = self.model.energy_and_grad_numpy(cell[idx], coords[idx], symmetric=False, rigid=True)
        if self.pressure_gpa:
            p_v = self.pressure_gpa * GPA_A3_TO_KJMOL / (self.sg.z * self.z_prime)
            e = e + p_v * vol[idx]
            g_cell = g_cell + p_v * vol[idx][:, None, None] * inv_cell[idx].transpose(0, 2, 1)
        energy[ok] = e
        z = self.sg.z
        g = np.zeros((len(idx), self.n_var))
        for j, st in enumerate(states):
            g_cell_j = g_cell if j == 0 else np.zeros_like(g_cell)
            gj = varmap.backward(g_cell_j, np.ascontiguousarray(g_xyz[:, j * z:(j + 1) * z]), st,
                                 np.ascontiguousarray(r0[idx, j]), *consts, self._ops_w, self._body_np, k + 6)
            g[:, :k] += gj[:, :k]
            g[:, k + 6 * j:k + 6 * j + 6] = gj[:, k:]
        grad[ok] = g
        return energy, grad

    def finish(self, x: np.ndarray, r0: np.ndarray) -> dict[str, np.ndarray]:
        """Cell parameters (degrees), cells, centres, rotations and coordinates at x."""
        import torch

        with torch.no_grad():
            p, cell, centre, rot = self.decode(torch.as_tensor(x), torch.as_tensor(r0))
            coords = self.coords(cell, centre, rot)
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
    symmetry_adapted: bool = True,
    group_scaling: bool = True,
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
        symmetry_adapted: symmetry-unique pair sums (see :class:`CrystalVariables`).
        group_scaling: initial inverse Hessian of each L-BFGS step scaled per variable group
            (cell lengths, free angles, centre, rotation: s.y / y.y of the newest pair
            restricted to the group) instead of one scalar for all. The groups have different
            units and stiffness (a rotation by 1 "A" of arc moves every atom, a cell length
            change of 1 A moves the neighbours), so one scalar fits none of them. Measured on
            64 oxalic acid trials in each of P2_1/c, P-1, P2_12_12_1 and Pbca: 14-16 % fewer
            energy evaluations for the stage-1 and the full model, the same lowest minima.

    Returns:
        :class:`MinimisedSet` in the order of the trials.
    """
    var = CrystalVariables(trials.space_group, molecule, model, pressure_gpa, symmetry_adapted,
                           z_prime=trials.z_prime)
    x0, r0_np = var.encode(trials)
    if warm_start is not None:
        x0, r0_np = np.asarray(warm_start["x"], dtype=float), np.asarray(warm_start["r0"], dtype=float)
        r0_shape = (len(trials), 3, 3) if var.z_prime == 1 else (len(trials), var.z_prime, 3, 3)
        if x0.shape != (len(trials), var.n_var) or r0_np.shape != r0_shape:
            raise ValueError(f"warm_start holds {x0.shape} variables, expected ({len(trials)}, {var.n_var})")
    n, d = x0.shape
    x = np.array(x0, dtype=np.float64)
    r0 = np.asarray(r0_np, dtype=np.float64)

    def evaluate(xs: np.ndarray, r0s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        e, g = var.energy_and_grad(xs, r0s, chunk)
        return np.asarray(e, dtype=np.float64), np.asarray(g, dtype=np.float64)

    # (the optimiser state is numpy: its ~30 small indexing operations per iteration cost
    # several times less there than as torch operations)
    f, g = evaluate(x, r0)
    n_evals = 1
    s_hist = np.zeros((n, history, d))
    y_hist = np.zeros((n, history, d))
    rho = np.zeros((n, history))
    valid = np.zeros((n, history), dtype=bool)
    if warm_start is not None and warm_start.get("s") is not None:
        m = min(history, warm_start["s"].shape[1])  # the newest m pairs
        s_hist[:, -m:] = warm_start["s"][:, -m:]
        y_hist[:, -m:] = warm_start["y"][:, -m:]
        rho[:, -m:] = warm_start["rho"][:, -m:]
        valid[:, -m:] = warm_start["valid"][:, -m:]
    done = ~np.isfinite(f)  # trials that cannot even be evaluated are left as they are
    converged = np.zeros(n, dtype=bool)
    n_iter = np.zeros(n, dtype=np.int64)
    n_small = np.zeros(n, dtype=np.int64)
    n_back = np.zeros(n, dtype=np.int64)
    alpha = np.ones(n)
    direction = np.zeros((n, d))
    need_dir = np.ones(n, dtype=bool)

    converged |= np.abs(g).max(1) < gtol
    done |= converged
    angle_idx = np.arange(3, 3 + len(var.free_angles))
    n_pinned = np.zeros(n, dtype=np.int64)
    groups = None
    if group_scaling:
        k = var.k_mol
        mol = [np.arange(k + 6 * j, k + 6 * j + 6) for j in range(var.z_prime)]
        groups = [np.arange(0, 3), np.arange(3, k), np.concatenate([m[:3] for m in mol]),
                  np.concatenate([m[3:] for m in mol])]
        groups = [gr for gr in groups if gr.size]
    while not done.all():
        act = np.nonzero(~done)[0]
        nd = act[need_dir[act]]
        if nd.size:
            dirs = _two_loop(g[nd], s_hist[nd], y_hist[nd], rho[nd], valid[nd], groups)
            descent = (dirs * g[nd]).sum(1) < 0
            if not descent.all():
                bad = nd[~descent]
                valid[bad] = False
                dirs[~descent] = -g[bad] * _first_step_scale(g[bad])[:, None]
            direction[nd] = dirs
            alpha[nd] = 1.0
            n_back[nd] = 0
            need_dir[nd] = False
        dir_a = direction[act]
        step_cap = max_step / np.maximum(np.abs(dir_a).max(1), 1e-300)
        alpha[act] = np.minimum(alpha[act], step_cap)
        a_act = alpha[act]
        x_try = x[act] + a_act[:, None] * dir_a
        f_try, g_try = evaluate(x_try, r0[act])
        n_evals += 1
        f_act = f[act]
        slope = (g[act] * dir_a).sum(1)
        with np.errstate(invalid="ignore"):
            armijo = np.isfinite(f_try) & (f_try <= f_act + 1e-4 * a_act * slope)

        acc = act[armijo]
        if acc.size:
            s = x_try[armijo] - x[acc]
            y = g_try[armijo] - g[acc]
            sy = (s * y).sum(1)
            good = sy > 1e-10 * np.maximum(np.linalg.norm(s, axis=1) * np.linalg.norm(y, axis=1), 1e-300)
            upd = acc[good]
            if upd.size:
                s_hist[upd, :-1] = s_hist[upd, 1:]
                s_hist[upd, -1] = s[good]
                y_hist[upd, :-1] = y_hist[upd, 1:]
                y_hist[upd, -1] = y[good]
                rho[upd, :-1] = rho[upd, 1:]
                rho[upd, -1] = 1.0 / sy[good]
                valid[upd, :-1] = valid[upd, 1:]
                valid[upd, -1] = True
            df = np.abs(f_act[armijo] - f_try[armijo])
            x[acc], f[acc], g[acc] = x_try[armijo], f_try[armijo], g_try[armijo]
            n_iter[acc] += 1
            n_small[acc] = np.where(df < ftol, n_small[acc] + 1, 0)
            need_dir[acc] = True
            conv = (np.abs(g[acc]).max(1) < gtol) | (n_small[acc] >= 3)
            converged[acc] |= conv
            done[acc] |= conv | (n_iter[acc] >= max_iter)
            if angle_idx.size:
                # a free angle at its limit (30 or 150 deg): the cell has left the reduced settings
                # and slides along the asymptote of the angle map with a vanishing gradient (seen:
                # 1,000 iterations at beta = 150 deg, 60 % of a unit's stage-1 CPU). The same
                # packing in a reduced cell is another trial's job; stop this one, not converged.
                pinned = (np.abs(x[acc][:, angle_idx]) > _PINNED_ANGLE_X * var.ang_scale).any(1)
                n_pinned[acc] = np.where(pinned, n_pinned[acc] + 1, 0)
                done[acc] |= (n_pinned[acc] >= _PINNED_ITERATIONS) & ~conv

        rej = act[~armijo]
        if rej.size:
            # quadratic interpolation of the step, safeguarded to [0.1, 0.5] of the old one
            a_old = a_act[~armijo]
            f_rej = f_try[~armijo]
            with np.errstate(all="ignore"):
                curv = f_rej - f_act[~armijo] - a_old * slope[~armijo]
                a_new = -slope[~armijo] * a_old**2 / (2 * np.maximum(curv, 1e-300))
                ok = np.isfinite(f_rej) & np.isfinite(a_new)
                a_new = np.where(ok, np.clip(a_new, 0.1 * a_old, 0.5 * a_old), 0.25 * a_old)
            alpha[rej] = a_new
            n_back[rej] += 1
            stalled = n_back[rej] > 30
            if stalled.any():
                st = rej[stalled]
                restart = valid[st].any(1)
                # first stall: drop the history and retry from steepest descent; second: stop
                valid[st[restart]] = False
                need_dir[st[restart]] = True
                done[st[~restart]] = True

    geo = var.finish(x, r0)
    out = MinimisedSet(
        space_group=trials.space_group,
        energy_kjmol=f,
        max_grad=np.abs(g).max(1),
        n_iter=n_iter,
        converged=converged,
        n_batch_evals=n_evals,
        mass_amu=float(getattr(molecule, "mass_amu", 0.0)),
        state={"x": x.copy(), "r0": r0.copy(), "s": s_hist, "y": y_hist, "rho": rho, "valid": valid},
        **geo,
    )
    return out


def _first_step_scale(g: np.ndarray) -> np.ndarray:
    """Initial inverse-Hessian scale: first step moves the largest variable by 0.1."""
    return 0.1 / np.maximum(np.abs(g).max(1), 1e-12)


def as_trials(res: MinimisedSet) -> TrialSet:
    """Minimised structures as a :class:`TrialSet`, to restart a minimisation from them.

    Args:
        res: minimised structures (cell parameters in degrees, rotations (B, 3, 3)).

    Returns:
        Trial set with the same cells, centres and orientations (w, x, y, z quaternions).
    """
    from scipy.spatial.transform import Rotation

    rot = np.asarray(res.rotation, dtype=float)
    quat_xyzw = Rotation.from_matrix(rot.reshape(-1, 3, 3)).as_quat()
    quat = quat_xyzw[:, [3, 0, 1, 2]].reshape(rot.shape[:-2] + (4,))
    return TrialSet(res.space_group, np.array(res.cell_params, dtype=float),
                    np.array(res.centre_frac, dtype=float), quat)


def _two_loop(g, s, y, rho, valid, groups=None):
    """Batched L-BFGS two-loop recursion; history ordered oldest -> newest.

    Args:
        g: (B, D) gradients; s, y: (B, m, D); rho: (B, m); valid: (B, m) bool (numpy).
        groups: optional list of index arrays: the initial inverse Hessian is scaled per group.

    Returns:
        (B, D) search directions -H g (compiled, :func:`~sim_backends.csp.varmap._two_loop_kernel`).
    """
    from sim_backends.csp.varmap import compiled_two_loop

    group_of = np.zeros(g.shape[1], dtype=np.int64)
    for i, idx in enumerate(groups or []):
        group_of[idx] = i
    return compiled_two_loop()(np.ascontiguousarray(g), np.ascontiguousarray(s), np.ascontiguousarray(y),
                               np.ascontiguousarray(rho), np.ascontiguousarray(valid), group_of,
                               max(1, len(groups or [])))


def _two_loop_numpy(g, s, y, rho, valid, groups=None):
    """Reference (vectorised numpy) version of :func:`_two_loop`, for tests."""
    vf = valid.astype(g.dtype)
    m = s.shape[1]
    q = g.copy()
    a = np.zeros_like(rho)
    for k in range(m - 1, -1, -1):
        a[:, k] = vf[:, k] * rho[:, k] * np.einsum("bd,bd->b", s[:, k], q)
        q -= a[:, k, None] * y[:, k]
    yy = np.einsum("bd,bd->b", y[:, -1], y[:, -1])
    sy = np.einsum("bd,bd->b", s[:, -1], y[:, -1])
    gamma = np.where(valid[:, -1], sy / np.maximum(yy, 1e-300), _first_step_scale(g))
    if groups is None:
        r = gamma[:, None] * q
    else:
        gam = np.repeat(gamma[:, None], g.shape[1], 1)
        for idx in groups:
            syg = (s[:, -1, idx] * y[:, -1, idx]).sum(1)
            yyg = (y[:, -1, idx] ** 2).sum(1)
            okg = valid[:, -1] & (syg > 0) & (yyg > 0)
            gam[:, idx] = np.where(okg, syg / np.maximum(yyg, 1e-300), gamma)[:, None]
        r = gam * q
    for k in range(m):
        b = vf[:, k] * rho[:, k] * np.einsum("bd,bd->b", y[:, k], r)
        r += s[:, k] * (a[:, k] - b)[:, None]
    return -r


def minimise_scipy(
    trials: TrialSet,
    molecule: Any,
    model: LatticeEnergyModel,
    gtol: float = 0.05,
    max_iter: int = 1000,
    pressure_gpa: float = 0.0,
    symmetry_adapted: bool = False,
) -> MinimisedSet:
    """Baseline: each trial minimised on its own with SciPy's L-BFGS-B.

    Same variables and energy as :func:`minimise_batch`; float64 energies with
    analytic gradients, ``options={"gtol": gtol, "maxiter": max_iter}``. By default the
    energy is evaluated on the whole cell (``symmetry_adapted=False``), as a generic
    optimiser driving the model through its P1 coordinates does.
    """
    import torch
    from scipy.optimize import minimize

    var = CrystalVariables(trials.space_group, molecule, model, pressure_gpa, symmetry_adapted,
                           z_prime=trials.z_prime)
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

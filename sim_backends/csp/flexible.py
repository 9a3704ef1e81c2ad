"""Crystal structure prediction for flexible molecules: conformers sampled with the packing.

:func:`run_flexible_csp` contract:

1. a conformer ensemble (:func:`~sim_backends.csp.conformers.build_ensemble`: GFN2-xTB
   conformers within a window, charges per conformer) is built from the SMILES;
2. trial generation samples the conformer with the cell, position and orientation: the
   trial budget is split evenly over the conformers (stratified sampling of the discrete
   conformer coordinate) and each conformer's share goes through the rigid-molecule search
   (:func:`~sim_backends.csp.run.run_csp`: Sobol trials per space group, staged batched
   minimisation, its own sampling-convergence test) with its own seed;
3. the lattice energy of every minimum is the intermolecular energy (W99 exp-6 + Ewald point
   charges, the conformer's charges) plus the conformer's intramolecular energy relative to
   the gas-phase global-minimum conformer (GFN2-xTB, the ensemble's level);
4. the ``relax_top`` lowest minima are relaxed again with the flexible torsions
   (:class:`~sim_backends.csp.intramolecular.TorsionSet`) free together with the cell and the
   rigid-body variables, in the search space group: E = E_inter(W99 + Ewald, charges of the
   starting conformer kept fixed) + E_intra(GFN2-xTB of the isolated molecule at the crystal
   geometry, relative to the same gas-phase global minimum). GFN2-xTB is the intramolecular
   model because it is the level that ranks the ensemble, so a rigid conformer's energy and a
   relaxed molecule's energy share one zero with no offset to fit (about 14 ms per energy and
   gradient for a 20-atom molecule); bond lengths and angles stay at the conformer's values.
   Minima not relaxed keep their rigid-conformer energy, an upper bound of their relaxed one;
5. duplicates are merged only between minima whose torsions agree within
   ``torsion_tol_deg`` (modulo symmetry and mirror image, see
   :meth:`TorsionSet.distance_deg`) and which pymatgen's StructureMatcher matches
   (:func:`~sim_backends.csp.dedupe.merge_candidate`), so conformational polymorphs with the
   same heavy-atom packing stay apart;
6. the result is an ordinary :class:`~sim_backends.landscape.Landscape` (same files and
   records as rigid CSP); ``meta["conformers"]`` lists the ensemble (energies, torsions,
   level, trials per conformer and that conformer's sampling-convergence record, the
   ``meta["convergence"]`` of its search), ``meta["minimum_conformers"]`` maps each minimum id to its
   starting conformer, final torsions, intramolecular energy and whether it was relaxed.

Default charges (:data:`FLEX_DEFAULT_CHARGES`): GFN2-xTB Mulliken charges per conformer, from
the Hamiltonian of the intramolecular term and a fraction of a second per conformer (RESP needs
an HF/6-31G* ESP fit per conformer). They are the default because the search ranks the
experimental crystals of the benchmark molecules (``benchmarks/csp_flexible.py``) closer to the
global minimum with them than with RESP charges; their absolute lattice energies are too weak
(the X23 comparison of the same benchmark), so pass ``charges="resp"`` for lattice energies.

Importing this module is cheap; torch, rdkit, tblite and pymatgen are imported inside functions.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from sim_backends.base import SetupError
from sim_backends.landscape import Landscape, LandscapeEntry

#: default point charges of flexible CSP (module docstring)
FLEX_DEFAULT_CHARGES = "xtb"
#: torsion difference (deg) above which two minima are different conformational polymorphs
TORSION_TOL_DEG = 30.0
#: extra molecular extent (A) allowed for torsion changes in the pair-search reach
_EXTENT_MARGIN_A = 1.5
#: level label of flexible lattice energies
FLEX_LEVEL = ("W99 exp-6 + Ewald point charges (intermolecular) + GFN2-xTB conformer energy relative to "
              "the gas-phase global minimum (intramolecular)")


class FlexibleCrystal:
    """Energy and gradient of one crystal of a flexible molecule in its search space group.

    Variables: the scaled crystal variables of :class:`~sim_backends.csp.minimise.CrystalVariables`
    (cell, fractional centre, rotation) followed by one variable per torsion, the angle
    (radians) times the RMS distance of its moving atoms from the axis (so a unit step moves
    atoms by about 1 A, like the other variables).

    Args:
        space_group: the search space group.
        conformer_molecule: the starting conformer (RigidMolecule, principal frame, charges).
        torsions: the molecule's :class:`TorsionSet`.
        intra: :class:`~sim_backends.csp.intramolecular.IntramolecularModel` (zero at the
            ensemble's global minimum).
        cutoff_A: real-space cutoff of the W99 + Ewald model.
    """

    def __init__(self, space_group: Any, conformer_molecule: Any, torsions: Any, intra: Any,
                 cutoff_A: float = 12.0) -> None:
        from sim_backends.csp.forcefield import LatticeEnergyModel
        from sim_backends.csp.minimise import CrystalVariables
        from sim_backends.csp.pairkernel import kernel_params

        self.sg = space_group
        self.molecule = conformer_molecule
        self.torsions = torsions
        self.intra = intra
        model = LatticeEnergyModel(conformer_molecule, cutoff_A=cutoff_A)
        model.extent_A += _EXTENT_MARGIN_A  # torsion changes move atoms away from the centroid
        model._kernel_params = kernel_params(model)
        self.model = model
        self.var = CrystalVariables(space_group, conformer_molecule, model)
        self.body0 = np.array(conformer_molecule.coords_A, dtype=float)
        self.phi0 = np.radians(torsions.torsions_deg(self.body0)) if len(torsions) else np.zeros(0)
        lever = []
        for t, side in zip(torsions.atoms, torsions.moving):
            axis = self.body0[t[2]] - self.body0[t[1]]
            axis /= np.linalg.norm(axis)
            rel = self.body0[list(side)] - self.body0[t[1]]
            perp = rel - np.outer(rel @ axis, axis)
            lever.append(max(0.5, float(np.sqrt((perp ** 2).sum(1).mean()))))
        self.lever = np.array(lever)
        self.n_cryst = self.var.n_var
        self.n_var = self.n_cryst + len(torsions)

    def body(self, phi: np.ndarray) -> np.ndarray:
        """Body-frame coordinates with torsions ``phi`` (radians)."""
        if not len(self.torsions):
            return self.body0
        return self.torsions.set_torsions(self.body0, np.degrees(phi))

    def encode(self, cell_params: np.ndarray, centre_frac: np.ndarray, quaternion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n_var,) variables (torsions at the conformer's values) and the reference rotation."""
        from sim_backends.csp.trials import TrialSet

        x, r0 = self.var.encode(TrialSet(self.sg, np.asarray(cell_params, float)[None],
                                         np.asarray(centre_frac, float)[None], np.asarray(quaternion, float)[None]))
        return np.concatenate([x[0], self.phi0 * self.lever]), r0[0]

    def energy_terms(self, v: np.ndarray, r0: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
        """(E_inter, E_intra, gradient (n_var,), body coordinates) at variables ``v``."""
        from sim_backends.csp import varmap

        var = self.var
        phi = v[self.n_cryst:] / self.lever if len(self.torsions) else np.zeros(0)
        body = np.ascontiguousarray(self.body(phi))
        x = np.ascontiguousarray(v[None, :self.n_cryst])
        r0b = np.ascontiguousarray(r0[None])
        consts = (var._free_np, var.len_scale, var.ang_scale, var.rot_scale)
        state = varmap.forward(x, r0b, *consts, var._ops_w, var._ops_t, body)
        cell, inv_cell, coords, vol = state[0], state[1], state[2], state[5]
        if not (np.isfinite(vol).all() and vol[0] > 1.0 and np.isfinite(coords).all()):
            return math.inf, math.inf, np.zeros(self.n_var), body
        e_inter, g_cell, g_xyz = self.model.energy_and_grad_numpy(cell, coords, symmetric=True, rigid=False)
        g_x = varmap.backward(g_cell, g_xyz, state, r0b, *consts, var._ops_w, body, var.n_var)[0]
        grad = np.zeros(self.n_var)
        grad[:self.n_cryst] = g_x
        e_intra, g_intra = self.intra.energy_and_grad(body)
        if len(self.torsions):
            # coords_on = b_n A_o + const (rows), A_o = R^T H^-1 W_o^T H: dE/db_n = sum_o g_on A_o^T
            rot = _rotation(var, v[None, :self.n_cryst], r0b)[0]
            h, hinv = cell[0], inv_cell[0]
            ops = np.asarray(self.sg.rotations, dtype=float)
            a_ops = np.einsum("ij,jk,olk,lm->oim", rot.T, hinv, ops, h)
            g_body = np.einsum("ona,oba->nb", g_xyz[0], a_ops) + g_intra
            jac = self.torsions.torsion_jacobian(body)  # (k, n, 3) per radian
            grad[self.n_cryst:] = np.einsum("kna,na->k", jac, g_body) / self.lever
        return float(e_inter[0]), float(e_intra), grad, body

    def relax(self, v0: np.ndarray, r0: np.ndarray, gtol: float = 0.05, max_iter: int = 600,
              max_torsion_change_deg: float = 90.0) -> dict[str, Any]:
        """L-BFGS-B (SciPy) from ``v0``; returns energies, structure and torsions at the minimum.

        Torsions may move at most ``max_torsion_change_deg`` from their start (bounds), and the
        result is flagged not ``converged`` when the molecule grew beyond the pair-search reach
        of the model (its extent margin) or the gradient test failed.

        Raises:
            RuntimeError: a GFN2-xTB single point failed (one line).
        """
        from scipy.optimize import minimize

        def fun(v):
            e_inter, e_intra, g, _ = self.energy_terms(v, r0)
            e = e_inter + e_intra
            if not math.isfinite(e):
                return 1e10, np.zeros_like(v)
            return e, g

        span = np.radians(max_torsion_change_deg) * self.lever
        bounds = [(None, None)] * self.n_cryst + [(v0[k] - span[i], v0[k] + span[i])
                                                  for i, k in enumerate(range(self.n_cryst, self.n_var))]
        res = minimize(fun, v0, jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"gtol": gtol, "maxiter": max_iter})
        e_inter, e_intra, g, body = self.energy_terms(res.x, r0)
        extent = float(np.linalg.norm(body - body.mean(0), axis=1).max())
        within = extent <= self.model.extent_A
        return {"v": res.x, "energy_kjmol": e_inter + e_intra, "inter_kjmol": e_inter, "intra_kjmol": e_intra,
                "max_grad": float(np.abs(g).max()), "converged": bool(np.abs(g).max() < 5 * gtol and within),
                "n_evals": int(res.nfev), "body": body, **self.geometry(res.x, r0)}

    def geometry(self, v: np.ndarray, r0: np.ndarray) -> dict[str, np.ndarray]:
        """Cell (3, 3) and coordinates (Z, n, 3) at variables ``v``."""
        from sim_backends.csp import varmap

        var = self.var
        phi = v[self.n_cryst:] / self.lever if len(self.torsions) else np.zeros(0)
        body = np.ascontiguousarray(self.body(phi))
        consts = (var._free_np, var.len_scale, var.ang_scale, var.rot_scale)
        state = varmap.forward(np.ascontiguousarray(v[None, :self.n_cryst]), np.ascontiguousarray(r0[None]),
                               *consts, var._ops_w, var._ops_t, body)
        return {"cell_A": state[0][0], "coords_A": state[2][0]}


def _rotation(var: Any, x: np.ndarray, r0: np.ndarray) -> np.ndarray:
    """(B, 3, 3) body-to-Cartesian rotations at crystal variables x."""
    import torch

    with torch.no_grad():
        _, _, _, rot = var.decode(torch.as_tensor(x), torch.as_tensor(r0))
    return rot.numpy()


def dedupe_conformational(candidates: list[Any], torsions: Any, torsion_tol_deg: float = TORSION_TOL_DEG) -> list[Any]:
    """Unique minima, lowest first: candidates (:class:`~sim_backends.csp.dedupe.Candidate` with
    ``payload["torsions_deg"]``) merge only when their torsions agree within ``torsion_tol_deg``
    (:meth:`TorsionSet.distance_deg`) and :func:`~sim_backends.csp.dedupe.merge_candidate`
    matches them; multiplicities add up.

    Two candidates with the same ``payload["landscape"]`` (not None) that are both unrelaxed
    (``payload["relaxed"]`` false) are unique minima of one rigid-conformer landscape, which
    :func:`~sim_backends.csp.dedupe.dedupe` has already compared with the same test, so they
    are not compared again (the same result; on paracetamol, whose two conformers' torsions
    agree modulo the ring flip, this is most of the StructureMatcher calls)."""
    from bisect import bisect_left

    from sim_backends.csp.dedupe import MATCHER_KWARGS, _matcher, merge_candidate

    energy_tol = 1.0  # merge_candidate's energy tolerance (kJ/mol): only these need the torsion test
    matcher = _matcher(dict(MATCHER_KWARGS))
    kept: list[Any] = []
    energies: list[float] = []  # of kept, ascending (a representative never moves down: cands ascend)
    for cand in sorted(candidates, key=lambda c: c.energy_kjmol):
        near = kept[bisect_left(energies, cand.energy_kjmol - energy_tol):]
        src = None if cand.payload.get("relaxed") else cand.payload.get("landscape")
        same_conf = [k for k in near
                     if not (src is not None and k.payload.get("landscape") == src and not k.payload.get("relaxed"))
                     and torsions.distance_deg(k.payload["torsions_deg"], cand.payload["torsions_deg"])
                     <= torsion_tol_deg]
        if merge_candidate(same_conf, cand, energy_tol_kjmol=energy_tol, matcher=matcher,
                           kept_sorted=True) is None:
            kept.append(cand)
            energies.append(cand.energy_kjmol)
    return kept


def pose_from_minimum(minimum: LandscapeEntry, molecule: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Cell parameters (6; degrees), fractional centre (3) and quaternion (w, x, y, z) of the
    reference molecule (the first ``n_atoms`` sites) of a rigid-molecule CSP minimum, and the
    RMSD (A) of the fit of ``molecule``'s body coordinates onto it (atom order as stored)."""
    from scipy.spatial.transform import Rotation

    from sim_backends.csp.rigid import _kabsch

    st = minimum.structure
    cell = np.array(st.lattice.matrix)
    n = molecule.n_atoms
    mol0 = np.array(st.cart_coords[:n])
    rot, trans, rmsd = _kabsch(np.asarray(molecule.coords_A, float), mol0)
    lengths = np.linalg.norm(cell, axis=1)
    ang = [math.degrees(math.acos(np.dot(cell[i], cell[j]) / (lengths[i] * lengths[j])))
           for i, j in ((1, 2), (0, 2), (0, 1))]
    # the body origin is the molecule's centre of mass; _kabsch superposes centroids, so map the origin
    centre_cart = trans
    centre = centre_cart @ np.linalg.inv(cell)
    q = Rotation.from_matrix(rot).as_quat()
    return np.concatenate([lengths, ang]), centre, q[[3, 0, 1, 2]], rmsd


def run_flexible_csp(
    smiles_or_ensemble: Any,
    n_trials: int,
    space_groups: str | list[str] | None = None,
    seed: int = 0,
    energy_window_kjmol: float = 20.0,
    out_dir: str | Path | None = None,
    progress: bool = True,
    charges: str | None = None,
    cache_dir: str | Path | None = None,
    max_rotatable_bonds: int | None = None,
    conformer_window_kjmol: float | None = None,
    n_embed: int = 30,
    max_conformers: int = 12,
    relax_top: int = 20,
    relax_margin_kjmol: float = 5.0,
    torsion_tol_deg: float = TORSION_TOL_DEG,
    cutoff_A: float = 12.0,
    **csp_kwargs: Any,
) -> Landscape:
    """CSP of a flexible molecule (see the module docstring).

    Args:
        smiles_or_ensemble: SMILES or a :class:`~sim_backends.csp.conformers.ConformerEnsemble`.
        n_trials: total trial budget, split evenly over the conformers.
        space_groups, seed, energy_window_kjmol, out_dir, progress, cache_dir,
            cutoff_A: as for :func:`~sim_backends.csp.run.run_csp`.
        charges: "xtb", "resp" or "none", per conformer; None: :data:`FLEX_DEFAULT_CHARGES`.
        max_rotatable_bonds: rotatable-bond limit (default
            :data:`~sim_backends.csp.conformers.MAX_ROTATABLE_BONDS_DEFAULT`).
        conformer_window_kjmol: conformer energy window (GFN2-xTB, kJ/mol; default
            :data:`~sim_backends.csp.conformers.CONFORMER_WINDOW_DEFAULT`).
        n_embed, max_conformers: ensemble settings.
        relax_top: minima (lowest first, within the window plus ``relax_margin_kjmol``)
            relaxed with free torsions; 0 keeps every conformer rigid.
        relax_margin_kjmol: extra window of the minima considered for relaxation.
        torsion_tol_deg: torsion tolerance of the duplicate test.
        **csp_kwargs: passed to each conformer's ``run_csp`` (protocol, batch_size, sampling,
            executor, gtol, ...).

    Raises:
        SetupError: molecule refused (too many rotatable bonds, ...); ValueError: bad settings.
    """
    from sim_backends.csp.conformers import (
        CONFORMER_WINDOW_DEFAULT, MAX_ROTATABLE_BONDS_DEFAULT, ConformerEnsemble, build_ensemble,
    )
    from sim_backends.csp.dedupe import Candidate, to_structure
    from sim_backends.csp.intramolecular import IntramolecularModel
    from sim_backends.csp.run import csp_entry, run_csp, validate_csp_arguments
    from sim_backends.csp.spacegroups import get_space_group, parse_space_groups

    from sim_backends.csp.run import MAX_TRIALS_DEFAULT

    validate_csp_arguments(n_trials, energy_window_kjmol=energy_window_kjmol, seed=seed, cutoff_A=cutoff_A,
                           max_trials=csp_kwargs.get("max_trials", MAX_TRIALS_DEFAULT))
    for name, value in (("relax_top", relax_top),):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    for name, value in (("relax_margin_kjmol", relax_margin_kjmol), ("torsion_tol_deg", torsion_tol_deg)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    groups = parse_space_groups(space_groups)
    charges = FLEX_DEFAULT_CHARGES if charges is None else charges
    t_start = time.perf_counter()
    c_start = time.process_time()
    if isinstance(smiles_or_ensemble, ConformerEnsemble):
        ens = smiles_or_ensemble
    elif isinstance(smiles_or_ensemble, str):
        ens = build_ensemble(
            smiles_or_ensemble, charges=charges, cache_dir=cache_dir, seed=seed, n_embed=n_embed,
            window_kjmol=CONFORMER_WINDOW_DEFAULT if conformer_window_kjmol is None else conformer_window_kjmol,
            max_rotatable_bonds=MAX_ROTATABLE_BONDS_DEFAULT if max_rotatable_bonds is None else max_rotatable_bonds,
            max_conformers=max_conformers)
    else:
        raise SetupError(f"flexible CSP needs a SMILES or a ConformerEnsemble, got {type(smiles_or_ensemble).__name__}")
    ensemble_cpu_s = time.process_time() - c_start
    n_conf = len(ens)
    if n_trials < n_conf:
        raise ValueError(f"n_trials {n_trials} is below the number of conformers ({n_conf}); "
                         "give at least one trial per conformer")
    shares = [n_trials // n_conf + (1 if k < n_trials % n_conf else 0) for k in range(n_conf)]
    cands: list[Candidate] = []
    conf_meta = []
    cpu_search = 0.0
    n_minimised = n_converged = 0
    for conf, n_k in zip(ens.conformers, shares):
        land = run_csp(conf.molecule, n_k, space_groups=[g.symbol for g in groups], seed=seed + 7919 * conf.index,
                       energy_window_kjmol=energy_window_kjmol + relax_margin_kjmol, progress=progress,
                       charges=charges, cache_dir=cache_dir, cutoff_A=cutoff_A, search_cells=True, **csp_kwargs)
        cpu_search += float(land.meta.get("minimise_cpu_s", 0.0)) + float(land.meta.get("trials_cpu_s", 0.0))
        n_minimised += int(land.meta.get("n_minimised", 0))
        n_converged += int(land.meta.get("n_converged", 0))
        conv = land.meta.get("convergence", {})
        conf_meta.append({**conf.to_dict(), "n_trials": int(land.meta.get("n_trials", n_k)),
                          "n_trials_budget": int(n_k), "n_unique_minima": len(land),
                          "stopped_by": conv.get("stopped_by"), "converged": conv.get("converged"),
                          "convergence": conv})
        for m in land.minima:
            cands.append(Candidate(m.energy_kjmol + conf.energy_kjmol, m.density_gcm3, m.structure,
                                   {"search_space_group": m.search_space_group, "z": m.z, "conformer": conf.index,
                                    "landscape": conf.index,
                                    "torsions_deg": list(conf.torsions_deg), "intra_kjmol": conf.energy_kjmol,
                                    "relaxed": False, "rigid_minimum": m},
                                   multiplicity=m.multiplicity))
    cands.sort(key=lambda c: c.energy_kjmol)
    c_relax = time.process_time()
    n_relaxed = n_relax_failed = 0
    relax_evals = 0
    if cands and relax_top and len(ens.torsions):
        e_cut = cands[0].energy_kjmol + energy_window_kjmol + relax_margin_kjmol
        intra = IntramolecularModel(ens.symbols, ens.reference_energy_kjmol)
        for cand in [c for c in cands if c.energy_kjmol <= e_cut][:relax_top]:
            conf = ens.conformers[cand.payload["conformer"]]
            sg = get_space_group(cand.payload["search_space_group"])
            crystal = FlexibleCrystal(sg, conf.molecule, ens.torsions, intra, cutoff_A=cutoff_A)
            params, centre, quat, rmsd = pose_from_minimum(cand.payload["rigid_minimum"], conf.molecule)
            if rmsd > 1e-3:
                continue  # not a pose of this conformer (should not happen); keep it rigid
            v0, r0 = crystal.encode(params, centre, quat)
            try:
                out = crystal.relax(v0, r0)
            except RuntimeError:
                n_relax_failed += 1
                continue  # a failed GFN2-xTB SCF: the minimum keeps its rigid-conformer energy
            relax_evals += out["n_evals"]
            if not (out["converged"] and out["energy_kjmol"] <= cand.energy_kjmol + 1e-6):
                n_relax_failed += 1
                continue
            z = out["coords_A"].shape[0]
            vol = abs(float(np.linalg.det(out["cell_A"])))
            cand.energy_kjmol = out["energy_kjmol"]
            cand.density_gcm3 = z * ens.mass_amu / vol * 1.66053906660
            cand.structure = to_structure(ens.symbols, out["cell_A"], out["coords_A"])
            cand._heavy = cand._reduced = None
            cand.payload.update({"relaxed": True, "intra_kjmol": out["intra_kjmol"],
                                 "torsions_deg": [float(t) for t in ens.torsions.torsions_deg(out["body"])]})
            n_relaxed += 1
    relax_cpu_s = time.process_time() - c_relax
    cands.sort(key=lambda c: c.energy_kjmol)
    e_min = cands[0].energy_kjmol if cands else math.inf
    kept = dedupe_conformational([c for c in cands if c.energy_kjmol <= e_min + energy_window_kjmol],
                                 ens.torsions, torsion_tol_deg)
    minima, per_min = [], {}
    for k, c in enumerate(kept):
        mid = f"m{k + 1:04d}"
        minima.append(csp_entry(mid, c.energy_kjmol, c.density_gcm3, c.structure, c.payload["z"],
                                c.payload["search_space_group"], c.multiplicity))
        per_min[mid] = {"conformer": c.payload["conformer"], "relaxed": c.payload["relaxed"],
                        "intra_kjmol": round(float(c.payload["intra_kjmol"]), 4),
                        "torsions_deg": [round(float(t), 2) for t in c.payload["torsions_deg"]]}
    meta = {
        "flexible": True, "level": FLEX_LEVEL, "conformer_level": ens.level,
        "conformers": conf_meta, "n_conformers": n_conf, "n_rotatable_bonds": ens.n_rotatable,
        "conformer_window_kjmol": ens.window_kjmol, "n_conformers_embedded": ens.n_embedded,
        "torsions": [list(t) for t in ens.torsions.atoms], "minimum_conformers": per_min,
        "relax_top": int(relax_top), "n_relaxed": n_relaxed, "n_relax_failed": n_relax_failed,
        "relax_evals": relax_evals,
        "relax_cpu_s": relax_cpu_s, "ensemble_cpu_s": ensemble_cpu_s, "search_cpu_s": cpu_search,
        "n_trials_requested": int(n_trials), "n_trials": int(sum(c["n_trials"] for c in conf_meta)),
        "n_minimised": n_minimised, "n_converged": n_converged, "n_unique": len(minima),
        "space_groups": [g.symbol for g in groups], "seed": int(seed),
        "energy_window_kjmol": float(energy_window_kjmol), "charge_method": ens.conformers[0].molecule.charge_method,
        "cutoff_A": cutoff_A, "wall_s": time.perf_counter() - t_start,
        "cpu_s": time.process_time() - c_start,
    }
    landscape = Landscape(ens.smiles, minima, meta, levels={"ff": f"{FLEX_LEVEL}, {meta['charge_method']} charges"})
    if out_dir is not None:
        landscape.write(out_dir)
    return landscape


#: accepted values of ``run_csp(flexible=...)``
FLEXIBLE_MODES = ("auto", "rigid", "always")


def flexible_smiles(smiles_or_molecule: Any, flexible: str = "auto") -> str | None:
    """The SMILES to search as a flexible molecule, or None for the rigid-molecule path.

    ``"auto"``: a SMILES string (not a file, not a molecule object) with at least one
    flexible bond (:func:`~sim_backends.csp.conformers.count_flexible_bonds`: the rotatable
    bonds of the rigidity rule plus cross-conjugated links such as paracetamol's C(aryl)-N
    anilide bond); ``"always"``: any SMILES string; ``"rigid"``: never.

    Raises:
        ValueError: unknown mode (one line).
    """
    if flexible not in FLEXIBLE_MODES:
        raise ValueError(f"flexible must be one of {', '.join(FLEXIBLE_MODES)}, got {flexible!r}")
    if flexible == "rigid" or not isinstance(smiles_or_molecule, str):
        return None
    text = smiles_or_molecule.strip()
    if Path(text).suffix.lower() in {".smi", ".txt", ".xyz", ".mol", ".sdf"} or Path(text).is_file():
        return None
    from rdkit import Chem, RDLogger

    from sim_backends.csp.conformers import count_flexible_bonds

    RDLogger.DisableLog("rdApp.*")
    try:
        mol = Chem.MolFromSmiles(text) if len(text) < 10_000 else None
    finally:
        RDLogger.EnableLog("rdApp.*")
    if mol is None:
        return None  # the rigid path reports the invalid input
    return text if flexible == "always" or count_flexible_bonds(mol) > 0 else None


def conformer_lines(landscape: Landscape) -> list[str]:
    """Printable summary of the conformers a flexible CSP used (empty for rigid CSP): per conformer
    its trials and minima, then its search's per-space-group sampling lines
    (:func:`~sim_backends.csp.sampling.convergence_lines`); the budget warnings are
    :func:`conformer_warnings` (stderr, and the JSON's ``warnings``)."""
    from sim_backends.csp.sampling import convergence_lines

    meta = landscape.meta
    if not meta.get("flexible"):
        return []
    lines = [f"conformers used: {meta['n_conformers']} within {meta['conformer_window_kjmol']:g} kJ/mol "
             f"({meta['conformer_level']}); {meta['n_rotatable_bonds']} rotatable bond(s), torsions "
             f"{meta['torsions']} (atom indices)",
             f"lattice energies: {meta['level']}; {meta['n_relaxed']} lowest minima relaxed with free torsions"]
    used: dict[int, int] = {}
    for rec in meta.get("minimum_conformers", {}).values():
        used[rec["conformer"]] = used.get(rec["conformer"], 0) + 1
    for c in meta["conformers"]:
        tors = ", ".join(f"{t:.1f}" for t in c["torsions_deg"])
        lines.append(f"  conformer {c['index']}: dE_intra {c['energy_kjmol']:.2f} kJ/mol (GFN2-xTB), torsions "
                     f"[{tors}] deg, {c['n_trials']} trials, {used.get(c['index'], 0)} minima in the landscape")
        lines += ["  " + ln for ln in convergence_lines(c.get("convergence") or {}) if ln.startswith("  ")]
    return lines


def conformer_warnings(landscape: Landscape) -> list[str]:
    """Per conformer whose search the trial budget ended before it converged, its warning
    (``"conformer 1: the trial budget ended the search ..."``, without a "WARNING: " prefix);
    empty for rigid CSP."""
    from sim_backends.csp.sampling import convergence_warning

    if not landscape.meta.get("flexible"):
        return []
    return [f"conformer {c['index']}: {w}" for c in landscape.meta.get("conformers", [])
            if (w := convergence_warning(c.get("convergence") or {}))]

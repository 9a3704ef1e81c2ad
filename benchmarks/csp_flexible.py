"""Benchmark ``csp_flexible``: CSP of flexible molecules from SMILES, and its cost against rigid CSP.

Per molecule (paracetamol form I, COD 7105573, P2_1/n Z=4; succinic acid, X23 beta, P2_1/c Z=2
on an inversion centre; oxalic acid, X23 alpha and beta, one O=C-C=O torsion; 1,4-cyclohexanedione,
X23, P2_1 Z=2, no rotatable bond but ring conformers: the crystal's twist-boat is the GFN2-xTB
gas-phase minimum, 0.17 A heavy-atom RMSD; ethyl carbamate, X23, P-1 Z=2, two rotatable bonds,
shipped in data/reference/x23_extra and used only as a recovery check; aspirin form I, CCDC 185472,
neutron 100 K, P2_1/c Z=4, three torsions, shipped in data/reference/aspirin, a recovery check without
an X23 lattice energy and not in the default run: ``--systems aspirin``)
:func:`sim_backends.csp.flexible.run_flexible_csp` runs from
the SMILES (GFN2-xTB conformer ensemble, trials split over the conformers, W99 + Ewald +
GFN2-xTB intramolecular energy, torsion relaxation of the lowest minima), and the table
reports: whether the experimental crystal is found (pymatgen StructureMatcher on heavy atoms,
ltol 0.3, stol 0.4, angle_tol 10, scale=True, as :meth:`Landscape.find_match`), its rank and
gap to the global minimum (kJ/mol per molecule), the torsion RMSD (deg, modulo period and
mirror image) between the experimental molecule and the closest ensemble conformer and the
matched minimum, the lattice energy of the match with and without the intramolecular term
(X23 reference), the heavy-atom RMSD (A, symmetry-aware, mirror image allowed) of the experimental
molecule to the closest ensemble conformer (the only conformer measure of a ring without torsions),
and CPU seconds (ensemble, search, relaxation).

Baseline measured in the same run (throughput): minimised trials per CPU second of the rigid
search of one conformer (the gas-phase global minimum as a rigid molecule) and of the flexible
search, the same number of trials, same space groups and settings.

Run:  OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/csp_flexible.py
          [--n-trials 20000] [--systems paracetamol,succinic_acid,oxalic_acid,14-cyclohexanedione,ethyl_carbamate(,aspirin)]
          [--charges resp|xtb] [--throughput-trials 1024] [--dedupe-trials 1536] [--sampling converged|fixed] [--space-groups P2_1/c] [--x23-only] [--relax-top 20]
Progress (one JSON line per finished step) goes to benchmarks/results/csp_flexible_progress.jsonl
(or a name with the non-default arguments); the summary to benchmarks/results/csp_flexible.json
for the default arguments, else to a file named after them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: name -> (SMILES, space groups searched ("" = the ten default groups), experimental description,
#: reference crystals (names of :func:`reference`) the landscape is matched against)
SYSTEMS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "paracetamol": ("CC(=O)Nc1ccc(O)cc1", "", "form I, P2_1/n Z=4 (COD 7105573, 100 K)", ("paracetamol",)),
    "succinic_acid": ("OC(=O)CCC(=O)O", "", "beta, P2_1/c Z=2 on -1 (X23, PBE+TS)", ("succinic_acid",)),
    "oxalic_acid": ("OC(=O)C(=O)O", "", "alpha Pcab Z=4 and beta P2_1/c Z=2 on -1 (X23, PBE+TS)",
                    ("oxalic_acid_alpha", "oxalic_acid_beta")),
    "14-cyclohexanedione": ("O=C1CCC(=O)CC1", "", "twist-boat ring, P2_1 Z=2 (X23, PBE+TS)",
                            ("14-cyclohexanedione",)),
    "ethyl_carbamate": ("CCOC(N)=O", "", "P-1 Z=2 (X23, PBE+TS; data/reference/x23_extra)", ("ethyl_carbamate",)),
    "aspirin": ("CC(=O)Oc1ccccc1C(=O)O", "", "form I, P2_1/c Z=4 (CCDC 185472, neutron, 100 K; data/reference/aspirin)",
                ("aspirin",)),
}
#: X23 reference lattice energies (kJ/mol per molecule, data/reference/x23/x23_lattice_energies.csv)
X23_REFERENCE = {"succinic_acid": -130.30, "oxalic_acid_alpha": -96.30, "oxalic_acid_beta": -96.10,
                 "14-cyclohexanedione": -88.60, "ethyl_carbamate": -86.30}
#: crystals of the X23 set shipped outside data/reference/x23 (recovery checks only, so the 17-crystal
#: X23 benchmarks do not change): name -> extxyz file of the PBE+TS crystal
X23_EXTRA = {"ethyl_carbamate": "data/reference/x23_extra/ethyl_carbamate_crystal.extxyz"}
#: aspirin form I (neutron, 100 K; no X23 reference lattice energy, so the X23 lattice step skips it)
ASPIRIN_CIF = "data/reference/aspirin/aspirin_form_I_CCDC185472.cif"
DEFAULTS = {"n_trials": 20000, "systems": "paracetamol,succinic_acid,oxalic_acid,14-cyclohexanedione,ethyl_carbamate",
            "charges": "xtb", "workers": 2, "throughput_trials": 1024, "sampling": "converged", "space_groups": "", "x23_only": False, "dedupe_trials": 0,
            "relax_top": 20}


def reference(name: str):
    """The experimental crystal as a pymatgen Structure."""
    from pymatgen.core import Structure

    if name == "paracetamol":
        return Structure.from_file(str(ROOT / "data/reference/cod/COD_7105573_paracetamol_form_I.cif"))
    if name == "aspirin":
        return Structure.from_file(str(ROOT / ASPIRIN_CIF))
    if name in X23_EXTRA:
        from ase.io import read
        from pymatgen.io.ase import AseAtomsAdaptor

        return AseAtomsAdaptor.get_structure(read(ROOT / X23_EXTRA[name]))
    from csp_recovery import reference_structure

    return reference_structure(name)


def experimental_torsions(structure, smiles: str, torsions) -> list[list[float]]:
    """Torsion values (deg) of one molecule of ``structure`` for every atom mapping of the
    SMILES' hydrogen-complete graph onto it (graph symmetry gives several)."""
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    from sim_backends.csp.intramolecular import dihedral_deg
    from sim_backends.csp.rigid import split_molecules

    symbols = [s.specie.symbol for s in structure]
    idx, xyz = split_molecules(symbols, structure.cart_coords, structure.lattice.matrix)[0]
    sym = [symbols[i] for i in idx]
    block = f"{len(sym)}\n\n" + "\n".join(f"{s} {x:.6f} {y:.6f} {z:.6f}" for s, (x, y, z) in zip(sym, xyz))
    exp = Chem.MolFromXYZBlock(block)
    rdDetermineBonds.DetermineConnectivity(exp)
    template = Chem.AddHs(Chem.MolFromSmiles(Chem.MolToSmiles(Chem.MolFromSmiles(smiles))))
    plain = Chem.RWMol(template)
    for b in plain.GetBonds():
        b.SetBondType(Chem.BondType.SINGLE)
        b.SetIsAromatic(False)
    for a in plain.GetAtoms():
        a.SetIsAromatic(False)
        a.SetNoImplicit(True)
    query = Chem.AdjustQueryProperties(plain.GetMol())
    out = []
    for match in exp.GetSubstructMatches(query, uniquify=False, maxMatches=64):
        out.append([dihedral_deg(xyz[[match[i] for i in t]]) for t in torsions.atoms])
    return out


def conformer_rmsd(structure, ens) -> list[float]:
    """Heavy-atom RMSD (A) of one experimental molecule of ``structure`` to each ensemble
    conformer (RDKit GetBestRMS over the graph symmetries, the better of the conformer and its
    mirror image)."""
    import numpy as np
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds, rdMolAlign

    from sim_backends.csp.rigid import split_molecules

    def heavy_mol(sym, xyz):
        keep = [k for k, e in enumerate(sym) if e != "H"]
        block = f"{len(keep)}\n\n" + "\n".join(f"{sym[k]} {x:.6f} {y:.6f} {z:.6f}"
                                              for k, (x, y, z) in zip(keep, xyz[keep]))
        m = Chem.MolFromXYZBlock(block)
        rdDetermineBonds.DetermineConnectivity(m)
        return m

    symbols = [s.specie.symbol for s in structure]
    idx, xyz = split_molecules(symbols, structure.cart_coords, structure.lattice.matrix)[0]
    exp = heavy_mol([symbols[i] for i in idx], np.asarray(xyz))
    out = []
    for c in ens.conformers:
        sym, coords = list(c.molecule.symbols), np.asarray(c.molecule.coords_A)
        out.append(min(rdMolAlign.GetBestRMS(heavy_mol(sym, coords * f), exp)
                       for f in (np.ones(3), np.array([-1.0, 1.0, 1.0]))))
    return out


def torsion_rmsd(torsions, exp_sets: list[list[float]], values: list[float]) -> float | None:
    """Smallest RMS torsion difference (deg) over atom mappings, modulo period and mirror image
    (None for a molecule without flexible torsions)."""
    import numpy as np

    if not len(torsions):
        return None
    p = np.asarray(torsions.period_deg)
    best = float("inf")
    for exp in exp_sets:
        for sign in (1.0, -1.0):
            d = (np.asarray(exp) - sign * np.asarray(values) + p / 2) % p - p / 2
            best = min(best, float(np.sqrt((d ** 2).mean())))
    return best


def _done(progress_path: Path, step: str, key: str, value: str) -> dict | None:
    """The last record of ``step`` for ``key == value`` in the progress file (resume), or None."""
    if not progress_path.exists():
        return None
    hit = None
    for line in progress_path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if rec.get("step") == step and rec.get(key) == value:
            hit = rec
    return hit


def run_system(name: str, args, progress_path: Path) -> dict:
    from agent.executor import csp_executor
    from sim_backends.csp.conformers import build_ensemble
    from sim_backends.csp.flexible import run_flexible_csp

    done = _done(progress_path, "search", "system", name)
    if done is not None:
        print(f"{name}: search already in {progress_path.name} (resumed)", flush=True)
        # the description is static text of SYSTEMS (a corrected description replaces a logged one)
        return {**{k: v for k, v in done.items() if k != "step"}, "experiment": SYSTEMS[name][2]}
    smiles, groups, exp_text, ref_names = SYSTEMS[name]
    groups = args.space_groups or groups or None
    c0, t0 = time.process_time(), time.perf_counter()
    ens = build_ensemble(smiles, charges=args.charges)
    ens_cpu = time.process_time() - c0
    refs = {r: reference(r) for r in ref_names}
    exp_sets = {r: experimental_torsions(st, ens.smiles, ens.torsions) for r, st in refs.items()}
    conf_rmsd = {r: [torsion_rmsd(ens.torsions, e, c.torsions_deg) for c in ens.conformers]
                 for r, e in exp_sets.items()}
    conf_xyz_rmsd = {r: conformer_rmsd(st, ens) for r, st in refs.items()}
    _log(progress_path, {"system": name, "step": "ensemble", "n_conformers": len(ens), "cpu_s": ens_cpu,
                         "conformers": ens.summary(), "exp_torsion_rmsd_deg": conf_rmsd,
                         "exp_heavy_rmsd_A": conf_xyz_rmsd})
    c1 = time.process_time()
    out_dir = ROOT / "runs" / progress_path.name.replace("_progress.jsonl", "") / name
    with csp_executor(args.workers) as executor:
        land = run_flexible_csp(ens, args.n_trials, space_groups=groups, charges=args.charges, progress=False,
                                sampling=args.sampling, relax_top=args.relax_top, executor=executor,
                                out_dir=out_dir)
    main_cpu = time.process_time() - c1
    # with Ray workers the trial generation + minimisation CPU is measured in the workers, not here
    worker_cpu = float(land.meta["search_cpu_s"]) if args.workers > 1 else 0.0
    conv = [{**{k: c.get(k) for k in ("index", "n_trials", "stopped_by", "converged")},
             "per_space_group": {g: {k: st.get(k) for k in ("n_trials", "n_low_minima", "converged")}
                                 for g, st in (c.get("convergence") or {}).get("per_space_group", {}).items()}}
            for c in land.meta["conformers"]]
    row = {"system": name, "smiles": ens.smiles, "experiment": exp_text,
           "space_groups": land.meta["space_groups"], "n_trials_budget": args.n_trials,
           "n_trials": land.meta["n_trials"], "n_minimised": land.meta["n_minimised"],
           "n_conformers": len(ens), "n_torsions": len(ens.torsions), "n_unique": len(land),
           "conformers": ens.summary(), "ensemble_cpu_s": ens_cpu,
           "search_cpu_s": land.meta["search_cpu_s"], "relax_cpu_s": land.meta["relax_cpu_s"],
           "n_relaxed": land.meta["n_relaxed"], "workers": args.workers,
           "cpu_s": ens_cpu + main_cpu + worker_cpu, "wall_s": time.perf_counter() - t0,
           "load_avg_1min_end": os.getloadavg()[0], "convergence": conv,
           "global_min_kjmol": land.minima[0].energy_kjmol if land.minima else None,
           "global_min_space_group": land.minima[0].space_group if land.minima else None,
           "landscape_dir": str(out_dir.relative_to(ROOT)), "forms": []}
    for r, st in refs.items():
        hit = land.find_match(st)
        tors = [t for t in conf_rmsd[r] if t is not None]
        form = {"reference": r, "found": hit is not None,
                "closest_conformer_torsion_rmsd_deg": min(tors) if tors else None,
                "closest_conformer_heavy_rmsd_A": min(conf_xyz_rmsd[r])}
        if hit is not None:
            rank, m, rms = hit
            rec = land.meta["minimum_conformers"][m.id]
            form.update({"rank": rank, "gap_kjmol": m.energy_kjmol - land.minima[0].energy_kjmol, "rms": rms,
                         "space_group": m.space_group, "match_conformer": rec["conformer"],
                         "match_relaxed": rec["relaxed"],
                         "match_torsion_rmsd_deg": torsion_rmsd(ens.torsions, exp_sets[r], rec["torsions_deg"]),
                         "E_latt_kjmol": m.energy_kjmol, "E_latt_no_intra_kjmol": m.energy_kjmol - rec["intra_kjmol"],
                         "intra_kjmol": rec["intra_kjmol"]})
        if r in X23_REFERENCE:
            form["E_latt_X23_kjmol"] = X23_REFERENCE[r]
        form["experiment_relaxed"] = relaxed_experiment(st, ens, land)
        row["forms"].append(form)
    _log(progress_path, {"step": "search", **row})
    return row


def relaxed_experiment(structure, ens, land) -> dict:
    """Where the experimental crystal lands on the search's own energy model (the diagnosis of a
    missed or high-ranked form).

    Each ensemble conformer (its own charges, as searched) that fits every molecule of the
    experimental cell within 1 A RMSD (all atoms, Kabsch) replaces them as a rigid copy; the crystal
    is relaxed in P1 over the cell and the rigid-body coordinates (W99 + Ewald, 12 A cutoff, as the
    search's final stage) and its lattice energy is E_inter + the conformer's GFN2-xTB energy, the
    landscape's energy of an unrelaxed minimum. Per conformer: fit RMSD, energy, gap to the
    landscape's global minimum, the rank it would take (1 + minima below it), the space group of
    the relaxed crystal (spglib via pymatgen, symprec 0.1) and the first five landscape minima it
    matches (:meth:`Landscape.find_matches`, heavy atoms, stol 0.4: loose enough to match another
    conformer in a similar packing, so each match lists its conformer and torsions; a match of the
    same conformer at rms ~0 has the same energy when the search found that basin)."""
    import numpy as np

    from sim_backends.base import SetupError
    from sim_backends.csp.dedupe import detect_space_group, to_structure
    from sim_backends.csp.forcefield import LatticeEnergyModel
    from sim_backends.ff_relax import relax_rigid, rigid_crystal

    sym = [s.specie.symbol for s in structure]
    pos, cell = structure.cart_coords, structure.lattice.matrix
    energies = np.array([m.energy_kjmol for m in land.minima])
    e0 = float(energies.min()) if len(energies) else float("nan")
    out = {"conformers": []}
    for conf in ens.conformers:
        try:
            crystal = rigid_crystal(sym, pos, cell, molecule=conf.molecule, max_fit_rmsd_A=1.0)
        except SetupError as exc:
            out["conformers"].append({"conformer": conf.index, "fit": str(exc)})
            continue
        res = relax_rigid(LatticeEnergyModel(conf.molecule), crystal)
        body = np.asarray(conf.molecule.coords_A)
        coords = res["centres_A"][:, None, :] + np.einsum("na,zba->znb", body, res["rotations"])
        relaxed = to_structure(list(conf.molecule.symbols), res["cell_A"], coords)
        e = res["e_min_kjmol"] + conf.energy_kjmol
        hits = land.find_matches(relaxed)[:5]
        out["conformers"].append({
            "conformer": conf.index, "fit_rmsd_A": crystal.fit_rmsd_A, "E_start_kjmol": res["e_start_kjmol"] + conf.energy_kjmol,
            "E_latt_kjmol": e, "gap_kjmol": e - e0, "rank_if_added": int((energies < e - 1e-9).sum()) + 1,
            "dv_percent": res["dv_percent"], "converged": res["converged"],
            "space_group": detect_space_group(relaxed)[0],
            "matches": [{"rank": k, "id": h.id, "E_kjmol": h.energy_kjmol, "rms": rms,
                         **land.meta["minimum_conformers"][h.id]} for k, h, rms in hits]})
    ok = [c for c in out["conformers"] if "E_latt_kjmol" in c]
    if ok:
        out["best"] = min(ok, key=lambda c: c["E_latt_kjmol"])
    return out


def x23_at_experiment(name: str, smiles: str, charges: str, progress_path: Path) -> dict:
    """X23 lattice energy of a flexible molecule with and without the intramolecular term
    (kJ/mol per molecule, W99 + Ewald with ``charges`` fitted to the molecule placed).

    Two crystals, both relaxed over the cell and the rigid-body coordinates (P1) from the X23
    (PBE+TS) structure: (a) the X23 molecule as it is, (b) the molecule this model uses, the
    nearest GFN2-xTB minimum relaxed from the X23 molecule, superposed on every site. The
    intramolecular term is the GFN2-xTB energy of the placed molecule above the GFN2-xTB
    gas-phase global-minimum conformer of the ensemble (for (a) it includes the PBE+TS vs
    GFN2-xTB bond-geometry mismatch, so (b) is the model's figure)."""
    from ase.io import read

    from sim_backends.csp.charges import compute_charges
    from sim_backends.csp.conformers import build_ensemble
    from sim_backends.csp.forcefield import LatticeEnergyModel
    from sim_backends.csp.intramolecular import IntramolecularModel
    from sim_backends.csp.rigid import RigidMolecule, gfn2_relaxed_geometry, symmetry_classes
    from sim_backends.ff_relax import relax_rigid, rigid_crystal

    key = f"{name}:{charges}"
    done = _done(progress_path, "x23_lattice", "key", key)
    if done is not None:
        return {k: v for k, v in done.items() if k != "step"}
    path = X23_EXTRA.get(name, "data/reference/x23/x23_pbe_ts_crystals.extxyz")
    frame = {f.info["name"]: f for f in read(ROOT / path, ":")}[name]
    sym, pos, cell = frame.get_chemical_symbols(), frame.positions, frame.cell.array
    crystal = rigid_crystal(sym, pos, cell, charge_method=charges, cache_key=f"x23:{name}")
    mol = crystal.molecule
    out = relax_rigid(LatticeEnergyModel(mol), crystal)
    ens = build_ensemble(smiles, charges="none")
    intra_model = IntramolecularModel(mol.symbols, ens.reference_energy_kjmol)
    intra = intra_model.energy_and_grad(mol.coords_A)[0]
    relaxed = gfn2_relaxed_geometry(mol.symbols, mol.coords_A, what=name)
    intra_relaxed = intra_model.energy_and_grad(relaxed)[0]
    neutral = RigidMolecule.from_atoms(list(mol.symbols), relaxed)
    fit = compute_charges(neutral.symbols, neutral.coords_A, charges,
                          symmetry_classes(neutral.symbols, neutral.coords_A), cache_key=f"x23-gfn2:{name}")
    gmol = neutral.with_charges(fit.charges_e, fit.method, fit.rrms)
    gcrystal = rigid_crystal(sym, pos, cell, molecule=gmol)
    gout = relax_rigid(LatticeEnergyModel(gmol), gcrystal)
    row = {"key": key, "system": name, "charges": mol.charge_method,
           "E_inter_at_x23_kjmol": out["e_start_kjmol"], "E_inter_relaxed_kjmol": out["e_min_kjmol"],
           "intra_x23_geometry_kjmol": intra, "E_latt_relaxed_kjmol": out["e_min_kjmol"] + intra,
           "gfn2_fit_rmsd_A": gcrystal.fit_rmsd_A,
           "intra_gfn2_relaxed_kjmol": intra_relaxed, "E_inter_gfn2_molecule_relaxed_kjmol": gout["e_min_kjmol"],
           "E_latt_gfn2_molecule_kjmol": gout["e_min_kjmol"] + intra_relaxed,
           "dv_percent_gfn2_molecule": gout["dv_percent"], "E_latt_X23_kjmol": X23_REFERENCE[name]}
    _log(progress_path, {"step": "x23_lattice", **row})
    return row


def throughput(args, progress_path: Path) -> dict:
    """Minimised trials per CPU second, rigid vs flexible, succinic acid in P2_1 and P-1."""
    from sim_backends.csp.conformers import build_ensemble
    from sim_backends.csp.flexible import run_flexible_csp
    from sim_backends.csp.run import run_csp

    n, groups = args.throughput_trials, "P2_1,P-1"
    done = _done(progress_path, "throughput", "n_trials", n)
    if done is not None:
        return {k: v for k, v in done.items() if k != "step"}
    ens = build_ensemble("OC(=O)CCC(=O)O", charges=args.charges)
    c0 = time.process_time()
    rigid = run_csp(ens.conformers[0].molecule, n, space_groups=groups, progress=False, sampling="fixed")
    rigid_cpu = time.process_time() - c0
    c0 = time.process_time()
    flex = run_flexible_csp(ens, n, space_groups=groups, progress=False, sampling="fixed")
    flex_cpu = time.process_time() - c0
    row = {"molecule": "succinic acid", "n_trials": n, "space_groups": groups,
           "rigid_minimised": rigid.meta["n_minimised"], "rigid_cpu_s": rigid_cpu,
           "flexible_minimised": flex.meta["n_minimised"], "flexible_cpu_s": flex_cpu,
           "flexible_relax_cpu_s": flex.meta["relax_cpu_s"], "flexible_n_relaxed": flex.meta["n_relaxed"],
           "n_conformers": len(ens),
           "rigid_per_cpu_s": rigid.meta["n_minimised"] / rigid_cpu,
           "flexible_per_cpu_s": flex.meta["n_minimised"] / flex_cpu}
    row["ratio_rigid_over_flexible"] = row["rigid_per_cpu_s"] / row["flexible_per_cpu_s"]
    _log(progress_path, {"step": "throughput", **row})
    return row


def _previous_dedupe(cands: list) -> list[tuple[float, int]]:
    """The dedupe before commit 03fa591 (the baseline of :func:`dedupe_speed`): heavy atoms by copy +
    remove_species, Niggli, pymatgen ``get_primitive_structure`` once per candidate, then
    ``StructureMatcher.fit(skip_structure_reduction=True)`` per pair; (energy, multiplicity) of
    the unique minima."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from sim_backends.csp.dedupe import MATCHER_KWARGS, keeps_hydrogens

    sm = StructureMatcher(**MATCHER_KWARGS)

    def reduced(c):
        if c._reduced is None:
            st = c.structure.copy()
            if not keeps_hydrogens(c.structure, c.payload.get("z")):
                st.remove_species(["H"])
            c._reduced = st.get_reduced_structure(reduction_algo="niggli").get_primitive_structure()
        return c._reduced

    kept: list = []
    for c in sorted(cands, key=lambda c: c.energy_kjmol):
        match = None
        for rep in reversed(kept):
            if c.energy_kjmol - rep.energy_kjmol > 1.0:
                break
            if abs(c.density_gcm3 - rep.density_gcm3) <= 0.03 and sm.fit(reduced(rep), reduced(c),
                                                                        skip_structure_reduction=True):
                match = rep
                break
        if match is None:
            kept.append(c)
        else:
            match.multiplicity += c.multiplicity
    return [(c.energy_kjmol, c.multiplicity) for c in kept]


def dedupe_speed(n_trials: int, progress_path: Path) -> dict:
    """Main-process dedupe CPU of one search, previous code (baseline) vs the product's.

    The search: paracetamol, the gas-phase global-minimum GFN2-xTB conformer (xtb charges) as a
    rigid molecule, ``n_trials`` trials over P2_1/c, P-1, P2_12_12_1 (fixed sampling, in this
    process), run by :func:`~sim_backends.csp.run.run_csp`; its minima (the arguments of its
    landscape step, kept when it calls it) are deduplicated again by :func:`_previous_dedupe` and
    by :func:`~sim_backends.csp.dedupe.dedupe`, each from fresh candidates. Both must give the
    same unique minima and multiplicities."""
    import sim_backends.csp.run as run
    from sim_backends.csp.conformers import build_ensemble
    from sim_backends.csp.dedupe import dedupe

    done = _done(progress_path, "dedupe_speed", "n_trials", n_trials)
    if done is not None:
        return {k: v for k, v in done.items() if k != "step"}
    ens = build_ensemble(SYSTEMS["paracetamol"][0], charges="xtb")
    seen: dict = {}
    landscape_step = run._build_landscape

    def keep_args(molecule, results, window):
        seen["args"] = (molecule, results, window)
        return landscape_step(molecule, results, window)

    run._build_landscape = keep_args
    try:
        c0 = time.process_time()
        land = run.run_csp(ens.conformers[0].molecule, n_trials, space_groups="P2_1/c,P-1,P2_12_12_1",
                           sampling="fixed", progress=False, energy_window_kjmol=25.0)
        search_cpu = time.process_time() - c0
    finally:
        run._build_landscape = landscape_step
    molecule, results, window = seen["args"]
    e_max = run._lowest(results) + window
    c0 = time.process_time()
    before = _previous_dedupe(run._candidates(molecule, results, e_max))
    cpu_before = time.process_time() - c0
    c0 = time.process_time()
    after = [(c.energy_kjmol, c.multiplicity) for c in dedupe(run._candidates(molecule, results, e_max))]
    cpu_after = time.process_time() - c0
    row = {"n_trials": n_trials, "molecule": "paracetamol conformer 0 (rigid), xtb charges",
           "space_groups": "P2_1/c,P-1,P2_12_12_1", "n_in_window": len(run._candidates(molecule, results, e_max)),
           "n_unique_before": len(before), "n_unique_after": len(after), "same_unique_set": before == after,
           "dedupe_cpu_s_before": cpu_before, "dedupe_cpu_s_after": cpu_after,
           "speedup": cpu_before / cpu_after, "run_csp_cpu_s": search_cpu,
           "run_csp_tracker_dedupe_s": land.meta.get("tracker_dedupe_s"),
           "run_csp_landscape_s": land.meta.get("landscape_s")}
    _log(progress_path, {"step": "dedupe_speed", **row})
    return row


def _log(path: Path, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record, default=float) + "\n")
    print(json.dumps(record, default=float)[:400], flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-trials", type=int, default=DEFAULTS["n_trials"])
    ap.add_argument("--systems", default=DEFAULTS["systems"])
    ap.add_argument("--charges", choices=("resp", "xtb"), default=DEFAULTS["charges"])
    ap.add_argument("--throughput-trials", type=int, default=DEFAULTS["throughput_trials"],
                    help="trials of the rigid-vs-flexible throughput comparison (0: skip)")
    ap.add_argument("--sampling", choices=("converged", "fixed"), default=DEFAULTS["sampling"])
    ap.add_argument("--space-groups", default=DEFAULTS["space_groups"],
                    help="override the per-system space groups (comma-separated) for a short run")
    ap.add_argument("--workers", type=int, default=DEFAULTS["workers"],
                    help="CSP worker processes (local Ray when > 1, as crystal-agent csp --workers)")
    ap.add_argument("--relax-top", type=int, default=DEFAULTS["relax_top"],
                    help="lowest minima relaxed with free torsions (run_flexible_csp relax_top)")
    ap.add_argument("--dedupe-trials", type=int, default=DEFAULTS["dedupe_trials"],
                    help="only the dedupe CPU comparison (previous vs current code) on a paracetamol search "
                         "of this many trials (0: not run)")
    ap.add_argument("--x23-only", action="store_true",
                    help="only the X23 lattice energies at the experimental geometry (no search, no throughput)")
    args = ap.parse_args(argv)
    systems = [s for s in args.systems.split(",") if s]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or args.n_trials < 1 or args.throughput_trials < 0 or args.workers < 1 or args.dedupe_trials < 0:
        print(f"csp_flexible: error: unknown systems {unknown} or bad counts (known: {', '.join(SYSTEMS)})",
              file=sys.stderr)
        return 2
    changed = [k.replace("_", "-") if getattr(args, k) is True else f"{k.replace('_', '-')}-{getattr(args, k)}"
               for k in DEFAULTS if getattr(args, k) != DEFAULTS[k]]
    stem = "csp_flexible" + ("_" + "_".join(changed).replace(",", "-").replace("/", "") if changed else "")
    results = ROOT / "benchmarks/results"
    results.mkdir(parents=True, exist_ok=True)
    progress_path = results / f"{stem}_progress.jsonl"
    if args.dedupe_trials:
        row = dedupe_speed(args.dedupe_trials, progress_path)
        print(f"\ndedupe of {row['n_in_window']} minima ({row['n_trials']} trials, {row['molecule']}, "
              f"{row['space_groups']}): previous code {row['dedupe_cpu_s_before']:.2f} CPU s, {row['n_unique_before']} "
              f"unique; now {row['dedupe_cpu_s_after']:.2f} CPU s, {row['n_unique_after']} unique "
              f"(x{row['speedup']:.2f}, same set: {row['same_unique_set']})")
        summary = {"benchmark": "csp_flexible", "args": vars(args), "dedupe_speed": row}
        (results / f"{stem}.json").write_text(json.dumps(summary, indent=1, default=float))
        print(json.dumps(summary, default=float))
        return 0 if row["same_unique_set"] else 1
    rows = [] if args.x23_only else [run_system(s, args, progress_path) for s in systems]
    # the lattice-energy comparison with both charge models (the search's first)
    x23 = [x23_at_experiment(r, SYSTEMS[s][0], q, progress_path) for s in systems for r in SYSTEMS[s][3]
           if r in X23_REFERENCE for q in dict.fromkeys((args.charges, "resp", "xtb"))]
    tp = throughput(args, progress_path) if args.throughput_trials and not args.x23_only else None
    print(f"\nFlexible CSP from SMILES ({args.charges} charges per conformer; energies kJ/mol per molecule, "
          "W99 + Ewald + GFN2-xTB intramolecular rel. to the gas-phase global minimum)")
    print(f"{'system/form':22s} {'trials':>7s} {'conf':>4s} {'found':>5s} {'rank':>4s} {'gap':>6s} {'tRMSD ens':>9s} {'RMSD A':>6s} "
          f"{'tRMSD min':>9s} {'E_latt':>8s} {'E_noIntra':>9s} {'X23':>7s} {'CPU s':>7s} {'wall s':>7s}")
    for r in rows:
        for fm in r["forms"]:
            f = lambda k, fmt: format(fm[k], fmt) if fm.get(k) is not None else "-"  # noqa: E731
            print(f"{fm['reference']:22s} {r['n_trials']:7d} {r['n_conformers']:4d} {str(fm['found']):>5s} "
                  f"{f('rank', '4d'):>4s} {f('gap_kjmol', '6.2f'):>6s} {f('closest_conformer_torsion_rmsd_deg', '9.1f'):>9s} "
                  f"{f('closest_conformer_heavy_rmsd_A', '6.2f'):>6s} "
                  f"{f('match_torsion_rmsd_deg', '9.1f'):>9s} {f('E_latt_kjmol', '8.2f'):>8s} "
                  f"{f('E_latt_no_intra_kjmol', '9.2f'):>9s} {f('E_latt_X23_kjmol', '7.1f'):>7s} "
                  f"{r['cpu_s']:7.0f} {r['wall_s']:7.0f}")
    if x23:
        print("\nX23 lattice energies of the flexible members (kJ/mol per molecule; W99 + Ewald, crystal relaxed "
              "over cell + rigid bodies from the X23 PBE+TS structure; intra = GFN2-xTB energy above the gas-phase "
              "global-minimum conformer)")
        print(f"{'crystal':20s} {'charges':18s} {'X23 mol, no intra':>17s} {'GFN2 mol, no intra':>18s} "
              f"{'intra':>6s} {'GFN2 mol + intra':>16s} {'X23 ref':>8s}")
    for r in x23:
        print(f"{r['system']:20s} {r['charges']:18s} {r['E_inter_relaxed_kjmol']:17.1f} "
              f"{r['E_inter_gfn2_molecule_relaxed_kjmol']:18.1f} {r['intra_gfn2_relaxed_kjmol']:+6.1f} "
              f"{r['E_latt_gfn2_molecule_kjmol']:16.1f} {r['E_latt_X23_kjmol']:8.1f}")
    if tp:
        print(f"\nthroughput (baseline: rigid search of the global-minimum conformer, same {tp['n_trials']} trials, "
              f"{tp['space_groups']}): rigid {tp['rigid_per_cpu_s']:.2f} / flexible {tp['flexible_per_cpu_s']:.2f} "
              f"minimised trials per CPU s (ratio {tp['ratio_rigid_over_flexible']:.2f}x; flexible includes "
              f"{tp['flexible_relax_cpu_s']:.0f} CPU s torsion relaxation of {tp['flexible_n_relaxed']} minima)")
    summary = {"benchmark": "csp_flexible", "args": vars(args), "systems": rows, "x23_lattice": x23,
               "throughput": tp}
    (results / f"{stem}.json").write_text(json.dumps(summary, indent=1, default=float))
    print(json.dumps(summary, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())

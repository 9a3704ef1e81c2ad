"""Plots and tables of a campaign, written under ``runs/<name>/report/``.

* ``convergence.png``: every evaluation's objective value against evaluation number,
  coloured by fidelity, with the best expensive-level value found so far;
* ``fidelity_parity.png``: cheap vs expensive values for molecules computed at both;
* ``results.csv``: one row per molecule with its values at each fidelity.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.campaign import Campaign


def write_plots(campaign: Campaign) -> list[Path]:
    """Write the report files for ``campaign``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = campaign.directory / "report"
    out.mkdir(parents=True, exist_ok=True)
    cfg = campaign.cfg
    names = [b.name for b in cfg.backends]
    hist = campaign.history
    paths: list[Path] = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for f, name in enumerate(names):
        pts = [(h["n"], h["value"]) for h in hist if h["fidelity"] == f and h["value"] is not None
               and h["status"] == "ok"]
        if pts:
            x, y = zip(*pts, strict=True)
            ax.scatter(x, y, s=18, color=colours[f % 4], label=f"{name} (fidelity {f})", alpha=0.8)
    fails = [h["n"] for h in hist if h["status"] != "ok"]
    if fails:
        ax.scatter(fails, [ax.get_ylim()[0]] * len(fails), marker="x", color="k", label="failed")
    best = [(h["n"], h["best"]) for h in hist if h["best"] is not None]
    if best:
        x, y = zip(*best, strict=True)
        ax.step(x, y, where="post", color="k", lw=1.5, label=f"best {names[-1]}")
    ax.set_xlabel("evaluation number")
    ax.set_ylabel(cfg.objective)
    ax.set_title(f"campaign {cfg.name}: {cfg.direction} {cfg.objective}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = out / "convergence.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)

    by_mol: dict[int, dict[int, float]] = {}
    for i, f, v in campaign.observations:
        by_mol.setdefault(i, {})[f] = v
    if len(names) > 1:
        pairs = [(d[0], d[len(names) - 1]) for d in by_mol.values() if 0 in d and len(names) - 1 in d]
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        if pairs:
            x, y = zip(*pairs, strict=True)
            ax.scatter(x, y, s=20)
            lo, hi = min(x + y), max(x + y)
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel(f"{names[0]} {cfg.objective}")
        ax.set_ylabel(f"{names[-1]} {cfg.objective}")
        ax.set_title(f"{len(pairs)} molecules at both fidelities")
        fig.tight_layout()
        p = out / "fidelity_parity.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(p)

    if campaign.stage is not None:
        paths += _landscape_plots(campaign, out, plt)

    p = out / "results.csv"
    with p.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["smiles", "name"] + [f"{n}_{cfg.objective}" for n in names])
        for i, d in sorted(by_mol.items(), key=lambda kv: kv[1].get(len(names) - 1, float("inf"))):
            w.writerow([campaign.smiles[i], campaign.names[i]] + [d.get(f, "") for f in range(len(names))])
    paths.append(p)
    return paths


def _landscape_plots(campaign: Campaign, out: Path, plt: object) -> list[Path]:
    """Per refined landscape: :func:`landscape_plot` (``landscape_m<molecule id>.png``)
    and :func:`landscape_table` (``landscape_m<molecule id>.csv``)."""
    paths = []
    for mol_id in campaign.stage.landscapes:
        p = landscape_plot(campaign, mol_id, out / f"landscape_m{mol_id}.png", plt)
        if p is not None:
            paths.append(p)
            paths.append(landscape_table(campaign, mol_id, out / f"landscape_m{mol_id}.csv"))
    return paths


def landscape_table(campaign: Campaign, mol_id: int, path: Path) -> Path:
    """The ranked landscape as a CSV, one row per structure, lowest free energy first.

    Columns: ``id, density_gcm3, ff_kjmol`` (force field), ``static_kjmol`` (the refine
    level where computed, else the GP-corrected prediction), ``static_std_kjmol`` (0
    where computed), ``computed``, ``f_vib_kjmol`` (empty where not computed),
    ``g_kjmol`` = static + F_vib (F_vib of the uncomputed taken as the mean of the
    computed ones; equal to static without a free-energy level), ``rank_static``,
    ``rank_g``. Energies relative to the lowest, kJ/mol per molecule.
    """
    import numpy as np

    stage = campaign.stage
    land = stage.landscapes[mol_id]
    corr = stage.corrected_landscape(mol_id)
    static = corr["corrected_kjmol"].copy()
    std = corr["std_kjmol"].copy()
    for i, e in land.computed.items():
        static[i], std[i] = e, 0.0
    f_mean = float(np.mean(list(land.f_vib.values()))) if land.f_vib else 0.0
    f = np.array([land.f_vib.get(i, f_mean) for i in range(len(land.ids))])
    g = static + f
    dens = {r["id"]: r["density_gcm3"] for r in campaign.store.structures(mol_id)}
    rank_s = np.argsort(np.argsort(static, kind="stable"), kind="stable") + 1
    rank_g = np.argsort(np.argsort(g, kind="stable"), kind="stable") + 1
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "density_gcm3", "ff_kjmol", "static_kjmol", "static_std_kjmol", "computed",
                    "f_vib_kjmol", "g_kjmol", "rank_static", "rank_g"])
        for i in np.argsort(g, kind="stable"):
            fv = land.f_vib.get(int(i))
            w.writerow([land.ids[i], dens.get(land.ids[i]), f"{land.ff_kjmol[i] - land.ff_kjmol.min():.3f}",
                        f"{static[i] - static.min():.3f}", f"{std[i]:.3f}", int(i in land.computed),
                        "" if fv is None else f"{fv:.3f}", f"{g[i] - g.min():.3f}",
                        int(rank_s[i]), int(rank_g[i])])
    return path


def landscape_plot(campaign: Campaign, mol_id: int, path: Path, plt: object = None) -> Path | None:
    """Force-field vs GP-corrected energies against density (the landscape before and
    after correction), and the GP's held-out predictions vs the computed energies
    (leave-one-out, closed form with the hyperparameters fixed, so every point is a
    prediction for a structure the GP did not see). ``None`` before anything is computed.
    """
    import numpy as np

    if plt is None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    stage = campaign.stage
    land = stage.landscapes.get(mol_id)
    corr = stage.corrected_landscape(mol_id) if land is not None else None
    if corr is None:
        return None
    dens = {r["id"]: r["density_gcm3"] for r in campaign.store.structures(mol_id)}
    rho = np.array([dens.get(i) or np.nan for i in land.ids], dtype=float)
    computed = corr["computed"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=False)
    ax = axes[0]
    ax.scatter(rho, land.ff_kjmol - land.ff_kjmol.min(), s=14, c="0.6", label="force field")
    e = corr["corrected_kjmol"] - corr["corrected_kjmol"].min()
    ax.errorbar(rho, e, yerr=corr["std_kjmol"], fmt="o", ms=3, color="tab:blue", alpha=0.6,
                lw=0.6, label=f"corrected to {stage.cfg.refine.name} (GP mean ± 1σ)")
    ax.scatter(rho[computed], e[computed], s=40, facecolors="none", edgecolors="tab:red",
               label="computed")
    if land.f_vib:  # free energy G = E + F_vib where the phonons are computed
        fv = sorted(land.f_vib)
        f_mean = float(np.mean(list(land.f_vib.values())))
        ax.scatter(rho[fv], e[fv] + np.array([land.f_vib[i] for i in fv]) - f_mean, marker="v", s=36,
                   color="tab:green", label=f"+ F_vib ({stage.cfg.free_energy.name}), rel. to mean", zorder=4)
    if land.observed:
        obs = sorted(land.observed)
        ax.scatter(rho[obs], e[obs], marker="*", s=160, color="gold", edgecolors="k",
                   label="observed in lab", zorder=5)
    ax.set_xlabel("density / g cm$^{-3}$")
    ax.set_ylabel("relative lattice energy / kJ mol$^{-1}$")
    ax.set_title(f"{land.smiles}: landscape before and after correction")
    ax.legend(fontsize=7)
    ax = axes[1]
    true = np.array([land.computed[i] for i in computed])
    held = corr.get("held_out_kjmol")
    pred = held if held is not None else corr["corrected_kjmol"][computed]
    ax.scatter(true, pred, s=20)
    lo, hi = float(min(true.min(), pred.min())), float(max(true.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel(f"computed {stage.cfg.refine.name} energy / kJ mol$^{{-1}}$")
    what = "held-out (LOO) GP prediction" if held is not None else "GP-corrected energy"
    ax.set_ylabel(f"{what} / kJ mol$^{{-1}}$")
    mae = f", LOO MAE {np.mean(np.abs(pred - true)):.2f} kJ/mol" if held is not None else ""
    ax.set_title(f"{len(computed)} of {len(land.ids)} structures computed{mae}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

"""newuser45a #1-#3: an ESF level's landscape mobility is the Boltzmann mean over its
``n_structures`` lowest minima only; the record says which share of the window's Boltzmann
weight those carry, its sd is widened for the rest (sim_backends.mobility.window_coverage),
and status, esf_results.csv and the ESF map say "6 of 41 in window, 52% of the Boltzmann
weight" -- or that the share was not recorded (the shipped data set's replays)."""

from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import pytest

from sim_backends.base import BackendError
from sim_backends.mobility import SD_ENERGY_ONLY, window_coverage

#: the synthetic landscape: relative energies (kJ/mol) 0, 0.5, 1, 2 in a 7 kJ/mol window, 9 outside
E0 = -100.0
REL = {"m1": 0.0, "m2": 0.5, "m3": 1.0, "m4": 2.0, "m5": 9.0}
#: hand-computed at 300 K (kT = 2.494339 kJ/mol): Boltzmann factors 1, 0.818359, 0.669712,
#: 0.448514 (m5 outside); m2 and m4 without a mobility: (0.818359 + 0.448514) / 2.936585
W_U = 0.431410


def test_window_coverage_of_a_synthetic_landscape():
    energies = {sid: E0 + e for sid, e in REL.items()}
    cov = window_coverage(energies, {"m1": 1.0, "m3": 3.0}, 1.8, 0.3, 7.0, temperature_K=300.0)
    assert (cov["n_in_window"], cov["n_with_mobility"]) == (4, 2)
    assert cov["uncomputed_weight"] == pytest.approx(W_U, abs=1e-6)
    assert cov["sd_energy"] == 0.3
    assert cov["sd"] == pytest.approx(math.hypot(0.3, W_U * math.sqrt(2.0)), rel=1e-5)  # sd of (1, 3): sqrt 2
    assert "2 structures without a mobility (43% of the Boltzmann weight)" in cov["sd_covers"]
    # hotter: the uncomputed structures weigh more
    assert window_coverage(energies, {"m1": 1.0, "m3": 3.0}, 1.8, 0.3, 7.0,
                           temperature_K=600.0)["uncomputed_weight"] > W_U


def test_agent_esf_report_uses_the_same_function():
    """Moved to sim_backends so an ESF level can call it; one copy of the formula."""
    import agent.esf_report as rep

    assert rep.window_coverage is window_coverage and rep.SD_ENERGY_ONLY == SD_ENERGY_ONLY


class _Min:
    def __init__(self, sid, rel):
        self.id, self.energy_kjmol, self.space_group, self.z = sid, E0 + rel, "P2_1/c", 2
        self.structure = SimpleNamespace(density=1.2)

    def cif(self):
        return self.id


def _fake_landscape(monkeypatch):
    """landscape_record without a CSP or transfer integrals: the synthetic landscape, m2's
    transfer integrals failing, mobilities 1.0 (m1), 3.0 (m3) ..."""
    import sim_backends.csp
    import sim_backends.mobility
    import sim_backends.structures
    import sim_backends.transfer

    minima = [_Min(sid, rel) for sid, rel in REL.items()]
    land = type("Land", (), {"minima": minima, "meta": {}, "__len__": lambda self: len(minima)})()
    mu = {"m1": 1.0, "m3": 3.0, "m4": 5.0}

    def transfer(crystal, *_a, **_k):
        if crystal == "m2":
            raise BackendError("dimer SCF not converged")
        d = SimpleNamespace(hole={"j_eff_meV": 5.0}, electron={"j_eff_meV": 4.0})
        return SimpleNamespace(sid=crystal, dimers=[d], manifolds={"hole": {"n": 1}}, warnings=[], notes=[])

    monkeypatch.setattr(sim_backends.csp, "run_csp", lambda *a, **k: land)
    monkeypatch.setattr(sim_backends.structures, "load_crystal", lambda cif, smiles: cif)
    monkeypatch.setattr(sim_backends.transfer, "crystal_transfer", transfer)
    monkeypatch.setattr(sim_backends.mobility, "crystal_mobility", lambda tr, lam, t, **kw: (
        {"mobility_hole_cm2Vs": mu[tr.sid], "mobility_hole_max_cm2Vs": mu[tr.sid]},
        {"hole": {"model": sim_backends.mobility.MARCUS_NAME, "exact": {"iso": mu[tr.sid]}}}))


def test_landscape_record_carries_the_uncomputed_weight(monkeypatch):
    """n_structures = 3 of the 4 structures in the window, m2 failing: the mean is over m1 and
    m3; m2 (failed) and m4 (beyond the cap) carry the uncomputed weight."""
    from sim_backends.esf import coverage_extra, landscape_record, landscape_values

    _fake_landscape(monkeypatch)
    rec = landscape_record("c1ccccc1", 10.0, n_trials=20, n_structures=3, window_kjmol=7.0,
                           energy_sd_kjmol=0.0, temperature_K=300.0)
    assert rec["n_minima_in_window"] == 4 and [s["id"] for s in rec["structures"]] == ["m1", "m2", "m3"]
    lm = rec["landscape_mobility_hole_cm2Vs"]
    b3 = math.exp(-1.0 / (8.314462618e-3 * 300.0))
    assert lm["mean"] == pytest.approx((1.0 + 3.0 * b3) / (1.0 + b3))  # the computed structures only
    assert lm["n_in_window"] == 2 and lm["sd_energy"] == 0.0
    assert lm["uncomputed_weight"] == pytest.approx(W_U, abs=1e-6)
    assert lm["sd"] == pytest.approx(W_U * math.sqrt(2.0), rel=1e-5)
    assert "2 structures without a mobility (43% of the Boltzmann weight)" in lm["sd_covers"]
    values = landscape_values(10.0, rec)
    assert values["landscape_mobility_hole_sd_cm2Vs"] == pytest.approx(lm["sd"])
    assert values["n_structures_in_window"] == 2.0  # its meaning: the structures the mean is over
    assert coverage_extra(rec) == {"n_minima_in_window": 4, "uncomputed_weight": lm["uncomputed_weight"],
                                   "sd_energy": 0.0, "sd_covers": lm["sd_covers"]}


def test_the_level_puts_the_coverage_in_its_result(monkeypatch):
    from sim_backends.base import EvalInput
    from sim_backends.registry import get_backend

    _fake_landscape(monkeypatch)
    backend = get_backend("esf-landscape", lambda_hole_kjmol=10.0, n_structures=3, energy_sd_kjmol=0.0)
    r = backend.evaluate(EvalInput("c1ccccc1"))
    assert r.ok, r.reason
    assert r.extra["n_minima_in_window"] == 4 and r.extra["uncomputed_weight"] == pytest.approx(W_U, abs=1e-6)
    assert r.extra["level"].endswith("Boltzmann mean over at most the 3 lowest structures within 7 kJ/mol")


def test_boltzmann_mean_text():
    from sim_backends.esf import boltzmann_mean_text, weight_share_text

    assert boltzmann_mean_text(7.0, 6) == "Boltzmann mean over at most the 6 lowest structures within 7 kJ/mol"
    cov = {"n_computed": 6, "n_with_mobility": 6, "n_in_window": 41, "uncomputed_weight": 0.482}
    assert boltzmann_mean_text(7.0, 6, cov) == ("Boltzmann mean over the 6 lowest of 41 structures within "
                                                "7 kJ/mol (52% of the weight)")
    assert boltzmann_mean_text(7.0, 6, {**cov, "n_with_mobility": 5}) == (
        "Boltzmann mean over 5 of the 6 lowest of 41 structures within 7 kJ/mol (52% of the weight)")
    assert boltzmann_mean_text(7.0, 6, {**cov, "uncomputed_weight": None}).endswith(
        "(share of the weight not recorded)")
    whole = {**cov, "n_computed": 4, "n_with_mobility": 4, "n_in_window": 4, "uncomputed_weight": 0.0}
    assert boltzmann_mean_text(7.0, 6, whole) == "Boltzmann mean over all 4 structures within 7 kJ/mol"
    assert boltzmann_mean_text(7.0, 6, {**cov, "n_in_window": None, "uncomputed_weight": None}) == (
        "Boltzmann mean over the 6 lowest structures within 7 kJ/mol (share of the window not recorded)")
    assert (weight_share_text(0.999), weight_share_text(0.001), weight_share_text(1.0)) == (">99%", "<1%", "100%")


def _cfg():
    from agent.config import BackendConfig

    return SimpleNamespace(backends=[BackendConfig(name="esf-proxy"), BackendConfig(name="esf-refined"),
                                     BackendConfig(name="replay-esf-refined")])


def _ev(backend, values, extra, mid=1):
    return SimpleNamespace(structure_id=None, backend=backend, ok=True, values=values, extra=extra, molecule_id=mid)


def _pyrene_like():
    """A molecule-stage result as esf-refined now stores it: 6 of 41 in window, 52% of the weight."""
    structures = [{"id": f"m{i:04d}", "energy_kjmol": -100.2 + 0.12 * i, "mobility_hole_cm2Vs": 0.5 + 0.3 * i,
                   "density_gcm3": 1.25 + 0.01 * i, "space_group": "P2_1/c", "z": 4} for i in range(1, 7)]
    values = {"log10_landscape_mobility_hole": 0.1, "landscape_mobility_hole_cm2Vs": 1.26,
              "landscape_mobility_hole_sd_cm2Vs": 0.4, "n_structures_in_window": 6.0, "reorg_energy_kjmol": 8.0}
    extra = {"structures": structures, "n_minima_in_window": 41, "uncomputed_weight": 0.482, "sd_energy": 0.3,
             "sd_covers": "energy ranking and 35 structures without a mobility (48% of the Boltzmann weight) at the "
                          "spread of the 6 computed mobilities; J, lambda and transport-model errors not included"}
    return _ev("esf-refined", values, extra)


def test_status_csv_and_map_state_the_share(tmp_path):
    from agent.esf_report import _molecule_stage, esf_lines, esf_map_figure, write_esf_table
    from sim_backends.base import EvalInput
    from sim_backends.registry import get_backend

    replayed = get_backend("replay-esf-refined").evaluate(EvalInput("c1ccccc1"))
    assert replayed.ok and "uncomputed_weight" not in replayed.extra and "n_minima_in_window" not in replayed.extra
    recs = _molecule_stage([_pyrene_like(), _ev("replay-esf-refined", replayed.values, replayed.extra, mid=2)],
                           _cfg(), {1: ("pyrene", "c1cc2ccc3cccc4ccc(c1)c2c34"), 2: ("benzene", "c1ccccc1")}, False)
    for r in recs:
        e0 = min(x["energy_kjmol"] for x in r["structures"])
        for x in r["structures"]:
            x["rel_kjmol"] = x["energy_kjmol"] - e0
        r["global_minimum"] = r["structures"][0]
    pyrene, benzene = recs
    assert (pyrene["n_in_window"], pyrene["n_with_mobility"], pyrene["uncomputed_weight"]) == (41, 6, 0.482)
    assert pyrene["sd_covers"].startswith("energy ranking and 35 structures without a mobility")
    assert pyrene["level"].endswith("Boltzmann mean over the 6 lowest of 41 structures within 7 kJ/mol "
                                    "(52% of the weight)"), pyrene["level"]
    assert "within 7 kJ/mol" not in benzene["level"]  # a replay names the data set, no window claim
    assert benzene["n_in_window"] is None and benzene["uncomputed_weight"] is None  # not invented
    text = "\n".join(esf_lines(recs))
    assert "the lowest 6 of 41 structures in window, 52% of the Boltzmann weight;" in text
    assert "the lowest 6 structures in window, share of the window not recorded;" in text
    rows = list(csv.DictReader(write_esf_table(recs, tmp_path / "esf_results.csv").open()))
    assert (rows[0]["n_in_window"], rows[0]["n_with_mobility_in_window"], rows[0]["boltzmann_weight_with_mobility"],
            rows[0]["n_structures"]) == ("41", "6", "0.518", "6")
    assert (rows[1]["n_in_window"], rows[1]["boltzmann_weight_with_mobility"]) == ("", "")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = esf_map_figure(recs, plt, 7.0, title="campaign t: ESF maps")
    fig.savefig(tmp_path / "esf_map.png", dpi=110)
    panels = [ax for ax in fig.axes if ax.get_title()]
    title = panels[0].get_title().replace("\n", " ")
    assert "pyrene: 6 of 41 in window (52% of the Boltzmann weight) (molecule stage)" in title, title
    assert "share of the window not recorded" in panels[1].get_title().replace("\n", " ")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax, rec in zip(panels, recs, strict=True):  # above the computed structures: hatched, not shaded as sampled
        top = max(x["rel_kjmol"] for x in rec["structures"])

        def y_range(patch, ax=ax):
            ys = ax.transData.inverted().transform(patch.get_window_extent(renderer))[:, 1]
            return pytest.approx(sorted(ys), abs=0.05)

        grey = [p for p in ax.patches if len(set(p.get_facecolor()[:3])) == 1 or p.get_hatch()]
        (hatched,) = [p for p in grey if p.get_hatch()]
        (solid,) = [p for p in grey if not p.get_hatch()]
        assert y_range(solid) == [0.0, top] and y_range(hatched) == [top, 7.0]
        labels = ax.get_legend_handles_labels()[1]
        assert "mean of the computed ± 1 sd" in labels
        assert any(x.startswith("rest of the 7 kJ/mol window") for x in labels), labels
    plt.close(fig)

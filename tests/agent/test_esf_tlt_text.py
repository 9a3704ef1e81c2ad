"""How status names a mobility that comes from transient localisation theory (outside Marcus
hopping's regime, sim_backends/tlt.py): the global-minimum line says so and gives the hopping
value beside it; a hopping value or an older record says nothing extra. Fast: no calculation."""

from __future__ import annotations

from agent.esf_report import _model_of, _model_text
from sim_backends.tlt import TLT_NAME



def test_a_tlt_structure_is_named_with_its_hopping_value():
    gm = {"mobility_hole_cm2Vs": 0.69, "transport_model": TLT_NAME, "mobility_hole_marcus_cm2Vs": 0.772}
    assert _model_text(gm) == f" ({TLT_NAME}; Marcus hopping 0.77 cm2/(V s))"
    assert _model_text({**gm, "mobility_hole_marcus_cm2Vs": None}) == f" ({TLT_NAME})"
    assert _model_text({"mobility_hole_cm2Vs": 0.69, "transport_model": "Marcus hopping"}) == " (Marcus hopping)"
    assert _model_text({"mobility_hole_cm2Vs": 0.69}) == ""  # records made before TLT


def test_a_structure_stage_result_is_read_as_tlt_from_its_model():
    assert _model_of(TLT_NAME, 2.4) == {"transport_model": TLT_NAME, "mobility_hole_marcus_cm2Vs": 2.4}
    assert _model_of(TLT_NAME, None) == {"transport_model": TLT_NAME, "mobility_hole_marcus_cm2Vs": None}
    assert _model_of("Marcus hopping", 2.4) == {"transport_model": "Marcus hopping"}
    assert _model_of(None, None) == {}  # a record made before TLT


def test_the_esf_map_marks_the_structures_with_a_tlt_mobility():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from agent.esf_report import esf_map_figure
    from test_esf_report47_window_map import _structure_rec

    rec = _structure_rec()
    rec["structures"][1] = {**rec["structures"][1], "transport_model": TLT_NAME, "mobility_hole_marcus_cm2Vs": 4.1}
    fig = esf_map_figure([rec], plt, 7.0)
    try:
        (labels,) = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes[:1]]
        assert "TLT mobility (2|J| > lambda+): 1 of 2" in labels, labels
    finally:
        plt.close(fig)
    fig = esf_map_figure([_structure_rec()], plt, 7.0)  # hopping values only: no such entry
    try:
        assert not [t for t in fig.axes[0].get_legend().get_texts() if "TLT" in t.get_text()]
    finally:
        plt.close(fig)


def test_esf_results_csv_names_the_model_and_the_hopping_value(tmp_path):
    import csv

    from agent.esf_report import write_esf_table
    from test_esf_report47_window_map import _structure_rec

    rec = _structure_rec()
    tlt = {**rec["structures"][0], "transport_model": TLT_NAME, "mobility_hole_marcus_cm2Vs": 4.1}
    rec = {**rec, "structures": [tlt, rec["structures"][1]], "global_minimum": tlt}
    (row,) = csv.DictReader(write_esf_table([rec], tmp_path / "esf_results.csv").open())
    assert row["global_minimum_transport_model"] == TLT_NAME
    assert row["global_minimum_mobility_hole_marcus_cm2Vs"] == "4.1" and row["n_structures_tlt"] == "1"
    (row,) = csv.DictReader(write_esf_table([_structure_rec()], tmp_path / "hop.csv").open())
    assert (row["global_minimum_transport_model"], row["global_minimum_mobility_hole_marcus_cm2Vs"],
            row["n_structures_tlt"]) == ("", "", "0")

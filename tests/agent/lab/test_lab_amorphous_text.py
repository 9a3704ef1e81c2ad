"""An amorphous lab result reads as amorphous, not as a verdict held with no confidence
(newuser46a #8): status and the run summary said ``PXRD: amorphous, confidence 0.00`` and
``not fed back: the pattern matches no structure of the landscape`` for a right amorphous
verdict. A result that matches no form now names no confidence but the closest structure
and its WCC score, e.g. ``amorphous (no Bragg peaks); no form identified (best crystalline
match m5-m0006, WCC 0.49)``.

Real simulated lab and identification (four forms of target I), the record stored as the
lab stage stores it, and the text made from the store by :func:`agent.lab.summary.lab_results`."""

from __future__ import annotations

import pytest

from agent.lab.base import LabRequest
from agent.lab.simulated import SimulatedLab
from agent.lab.testing import target_i_landscape
from conftest import write_config

SMILES = "Oc1ccccc1"


@pytest.fixture(scope="module")
def results():
    """(landscape ids, {outcome: (request, lab result, identification record)}) for the
    first amorphous and the first crystalline result the lab gives."""
    from agent.lab.feedback import identification_record

    entries = list(target_i_landscape())[:4]
    lab = SimulatedLab(entries, seed=0, failure_scale=2.0)  # amorphous in ~1 of 6
    ids, structures = [e.id for e in entries], [e.structure for e in entries]
    found = {}
    for n in range(1, 60):
        req = LabRequest(f"am-m1-{n}", SMILES, "cooling", "ethanol", 298.15)
        status = lab.run_experiment(req)
        if status.state == "done" and status.result.outcome not in found and status.result.outcome != "mixture":
            record, _ = identification_record(status.result, ids, structures, make_figure=False)
            found[status.result.outcome] = (req, status.result, record)
        if {"amorphous", "crystalline"} <= set(found):
            return ids, found
    raise AssertionError(f"no amorphous and crystalline results in 59 draws: {sorted(found)}")


def _lab_text(tmp_path, entries, drop_closest=False):
    """lab_results + lab_lines of the given (request, result, record) entries, as a store holds them."""
    from agent.config import load_config
    from agent.lab.summary import lab_lines, lab_results
    from agent.store import Store

    cfg = load_config(write_config(tmp_path, [f"{SMILES} target_i"], """
objective = "reorg_energy_kjmol"
max_evaluations = 10
[[backends]]
name = "xtb-reorg"
[structures]
enabled = true
budget_evaluations = 4
csp = {name = "csp-ff"}
refine = {name = "xtb-crystal"}
[lab]
adapter = "simulated"
"""))
    store = Store(tmp_path / "store.sqlite")
    try:
        store.add_molecules([(SMILES, "target_i", True, "")])
        (mol,) = store.molecules()
        for req, result, record in entries:
            ident = record.to_dict()
            if drop_closest:  # a record written before the closest structure was kept
                del ident["closest_structure_id"]
            store.add_lab_experiment(req.request_id, mol["id"], req.to_dict(), None, "submitted")
            store.update_lab_experiment(req.request_id, state="done", result_json=result.to_dict(),
                                        matched_structure_id=record.matched_structure_id,
                                        confidence=record.confidence, identification_json=ident)
        lab = lab_results(store, cfg, [], directory=tmp_path)
        return lab, lab_lines(lab)
    finally:
        store.close()


def test_an_amorphous_result_reads_as_amorphous_with_its_closest_form_as_a_score(results, tmp_path):
    ids, found = results
    req, result, record = found["amorphous"]
    assert result.metadata["simulated_truth"]["outcome"] == "amorphous"
    assert not record.is_match and record.confidence == 0.0 and record.matched_structure_id is None
    assert record.closest_structure_id in ids  # kept in the record now
    lab, lines = _lab_text(tmp_path, [found["amorphous"]])
    (exp,) = lab["experiments"]
    assert exp["closest_structure_id"] == record.closest_structure_id and exp["score"] == record.score
    line = lines[1]
    expected = (f"PXRD: amorphous (no Bragg peaks); no form identified "
                f"(best crystalline match {record.closest_structure_id}, WCC {record.score:.2f})")
    assert line.endswith(expected), line
    assert "confidence" not in line
    assert lines[2] == "    not fed back: an amorphous product is not a crystal form of the landscape"
    assert "matches no structure" not in "\n".join(lines)


def test_a_record_without_the_closest_form_still_reads_as_amorphous(results, tmp_path):
    _, found = results
    _, _, record = found["amorphous"]
    _, lines = _lab_text(tmp_path, [found["amorphous"]], drop_closest=True)
    assert lines[1].endswith(f"PXRD: amorphous (no Bragg peaks); no form identified "
                             f"(best crystalline match WCC {record.score:.2f})"), lines[1]


def test_a_matched_crystalline_result_keeps_its_confidence_and_an_unknown_form_says_no_match(results, tmp_path):
    from dataclasses import replace

    _, found = results
    req, result, record = found["crystalline"]
    assert record.is_match and record.matched_structure_id == result.metadata["simulated_truth"]["forms"][0][0]
    _, lines = _lab_text(tmp_path, [found["crystalline"]])
    assert f"PXRD: crystalline; matched {record.matched_structure_id} (" in lines[1]
    assert lines[1].endswith(f", confidence {record.confidence:.2f}")
    assert "Bragg" not in lines[1]
    # the same pattern had its form been missing from the landscape: a crystalline unknown
    unknown = replace(record, matched_structure_id=None, confidence=0.0, is_match=False, components=[],
                      score=0.62, closest_structure_id="other-form")
    (tmp_path / "u").mkdir()
    _, lines = _lab_text(tmp_path / "u", [(req, result, unknown)])
    assert lines[1].endswith("PXRD: crystalline; no form identified (best match other-form, WCC 0.62, "
                             "too low for a match)"), lines[1]
    assert lines[2] == "    not fed back: the pattern matches no structure of the landscape"

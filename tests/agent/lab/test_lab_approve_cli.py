"""``crystal-agent lab approve ID`` run where the other commands are run (the project
directory, campaigns under runs/) finds the campaign whose queue holds the request; ``--campaign
NAME [--runs-dir DIR]`` names it; without either a missing queue is one line saying what to give
(newuser37 M7: the id printed by ``status`` failed without ``--campaign-dir``)."""

from agent.cli import main
from agent.lab.base import LabRequest
from agent.lab.safety import ApprovalQueue

REQ = {"smiles": "O=C1CCC(=O)CC1", "method": "slurry", "solvent": "water", "temperature_K": 298.0}


def _queue(runs, campaign, request_id):
    q = ApprovalQueue(runs / campaign / "lab_approvals.sqlite")
    q.add(LabRequest(request_id=request_id, **REQ))
    q.close()


def test_approve_finds_the_campaign_by_request_id(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    _queue(runs, "other", "other-m1-1")
    _queue(runs, "netlab", "netlab-m1-1")
    assert main(["lab", "approve", "netlab-m1-1"]) == 0
    assert "approved 1" in capsys.readouterr().out
    q = ApprovalQueue(runs / "netlab" / "lab_approvals.sqlite")
    assert q.get("netlab-m1-1")["state"] == "approved"
    q.close()
    q = ApprovalQueue(runs / "other" / "lab_approvals.sqlite")
    assert q.get("other-m1-1")["state"] == "pending"
    q.close()
    assert main(["lab", "approve", "--all", "--campaign", "other", "--runs-dir", str(runs)]) == 0
    assert "approved 1" in capsys.readouterr().out


def test_approve_without_a_queue_says_what_to_give(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["lab", "approve", "nope-m1-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give --campaign NAME or --campaign-dir DIR" in err, err

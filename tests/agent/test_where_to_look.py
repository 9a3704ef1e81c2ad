"""newuser50 #8: a finished run ends by saying where its report and MLflow store are."""

from __future__ import annotations


def test_where_to_look_names_report_and_mlflow(tmp_path, monkeypatch):
    from agent.cli import where_to_look

    camp = tmp_path / "runs" / "demo"
    (camp / "report").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert where_to_look(camp, tracking=True) == "report: runs/demo/report/ (start with summary.txt)"
    (tmp_path / "runs" / "mlflow.db").write_bytes(b"")
    assert where_to_look(camp, tracking=True) == ("report: runs/demo/report/ (start with summary.txt); "
                                                  "MLflow: mlflow ui --backend-store-uri sqlite:///runs/mlflow.db")
    assert "MLflow" not in where_to_look(camp, tracking=False)
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # outside the working directory: absolute paths, a valid sqlite URI
    line = where_to_look(camp, tracking=True)
    assert f"report: {camp.resolve()}/report/" in line and f"sqlite:///{tmp_path.resolve()}/runs/mlflow.db" in line


def test_no_report_no_line(tmp_path):
    from agent.cli import where_to_look

    assert where_to_look(tmp_path / "runs" / "none", tracking=True) == ""

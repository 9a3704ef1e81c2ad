"""MLflow tracking: a view of the campaign store, never the source of truth.

One experiment per campaign (named after it) holding one run per launch of the
campaign lineage: the run id is kept in the store so ``resume`` continues the same
run. Logged: the config as params; per told result and per refit the metrics
``best_found``, ``budget_spent_cpu_s``, ``n_evaluations``, ``n_failed`` and
``surrogate_holdout_mae`` (step = number of stored evaluations); the surrogate as an
MLflow pyfunc model at each refit; the convergence plot as an artifact.

The default store is ``sqlite:///<runs_dir>/mlflow.db`` with artifacts under
``<runs_dir>/mlartifacts/``; browse with
``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db``.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.campaign import Campaign


def default_tracking_uri(runs_dir: str | Path) -> str:
    return f"sqlite:///{Path(runs_dir).resolve() / 'mlflow.db'}"


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for i, x in enumerate(v):
                out.update(_flatten(x, f"{key}.{i}."))
        else:
            out[key] = str(v)[:500]
    return out


class Tracker:
    """Logs a campaign to MLflow.

    Args:
        campaign: the campaign to track.
        runs_dir: where the default SQLite store and artifacts live.
        uri: tracking URI overriding the default.
    """

    def __init__(self, campaign: Campaign, runs_dir: str | Path, uri: str | None = None) -> None:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
        import mlflow
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic", "sqlalchemy"):  # after import: mlflow sets its own
            logging.getLogger(name).setLevel(logging.ERROR)

        self.campaign = campaign
        self.runs_dir = Path(runs_dir)
        self.uri = uri or campaign.cfg.tracking.uri or default_tracking_uri(runs_dir)
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        name = campaign.cfg.name
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            artifacts = (self.runs_dir.resolve() / "mlartifacts" / name).as_uri()
            exp_id = self.client.create_experiment(name, artifact_location=artifacts)
        else:
            exp_id = exp.experiment_id
        run_id = campaign.store.get_meta("mlflow_run_id")
        if run_id is None or self._run_missing(run_id):
            run = self.client.create_run(exp_id, run_name=f"{name}-campaign")
            run_id = run.info.run_id
            campaign.store.set_meta("mlflow_run_id", run_id)
            params = _flatten(campaign.cfg.model_dump(mode="json"))
            from mlflow.entities import Param

            items = [Param(k, v) for k, v in params.items()]
            for i in range(0, len(items), 90):
                self.client.log_batch(run_id, params=items[i : i + 90])
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        self.experiment_id = exp_id
        self._logged_refits = int(campaign.store.get_meta("mlflow_logged_refits", "0") or 0)
        self._lab_counts: tuple[int, int] | None = None
        self._logged_structure_refits = 0
        self._structure_surrogate: dict[int, str] = {}  # molecule id -> surrogate tag already set

    def _run_missing(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
            return False
        except Exception:  # noqa: BLE001 - a deleted or foreign run: start a new one
            return True

    def log_progress(self) -> None:
        """Per told result: budget and best-found metrics at step n_evaluations."""
        from mlflow.entities import Metric

        c = self.campaign
        step = c.n_evaluations
        import time

        ts = int(time.time() * 1000)
        metrics = {
            "n_evaluations": float(c.n_evaluations),
            "n_failed": float(c.n_failed),
            "budget_spent_cpu_s": c.spent_cpu_s,
        }
        best = c.best_value()
        if best is not None:
            metrics["best_found"] = best
        for name, n in c.n_by_backend.items():
            metrics[f"n_{name}"] = float(n)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()]
        )

    def log_refit(self) -> None:
        """After a surrogate refit: held-out error, and the surrogate as an MLflow model."""
        c = self.campaign
        if c.n_refits <= self._logged_refits or c.surrogate is None:
            return
        self._logged_refits = c.n_refits
        c.store.set_meta("mlflow_logged_refits", str(c.n_refits))
        if c.last_holdout_mae is not None:
            self.client.log_metric(
                self.run_id, "surrogate_holdout_mae", c.last_holdout_mae, step=c.n_evaluations
            )
        self.client.log_metric(self.run_id, "n_refits", c.n_refits, step=c.n_evaluations)
        if c.cfg.tracking.log_models:
            self._log_surrogate_model()

    def _log_surrogate_model(self) -> None:
        import mlflow
        import pandas as pd
        from mlflow.models import infer_signature

        from agent.mlflow_model import MoleculeSurrogateModel

        c = self.campaign
        s = c.cfg.surrogate
        blob = {
            "state_dict": c.surrogate.state_dict(),
            "n_fidelities": len(c.cfg.backends),
            "fingerprint": {"n_bits": s.fingerprint_bits, "radius": s.fingerprint_radius},
        }
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = Path(tmp) / "surrogate_state.pkl"
            path.write_bytes(pickle.dumps(blob))
            with mlflow.start_run(run_id=self.run_id):
                mlflow.pyfunc.log_model(
                    name=f"surrogate_refit_{c.n_refits:04d}",
                    python_model=MoleculeSurrogateModel(),
                    artifacts={"state": str(path)},
                    code_paths=None,
                    pip_requirements=["crystal-agent", "torch==2.13.0", "botorch", "rdkit"],
                    signature=infer_signature(
                        pd.DataFrame({"smiles": ["c1ccccc1"]}),
                        pd.DataFrame(
                            {"smiles": ["c1ccccc1"]}
                            | {f"{k}_{f}": [0.0] for f in range(len(c.cfg.backends))
                               for k in ("mean", "std")}
                        ),
                    ),
                    step=c.n_evaluations,
                )

    def log_lab(self) -> None:
        """Lab experiments sent and identified, with the measured-vs-simulated plots."""
        lab = self.campaign.lab
        if lab is None:
            return
        rows = self.campaign.store.lab_experiments()
        step = self.campaign.n_evaluations
        counts = (len(rows), sum(r["state"] == "done" for r in rows))
        if counts != self._lab_counts:  # the runner calls this every loop; log changes only
            self._lab_counts = counts
            self.client.log_metric(self.run_id, "lab_experiments_sent", counts[0], step=step)
            self.client.log_metric(self.run_id, "lab_results", counts[1], step=step)
        for rec in lab.new_records:
            self.client.log_metric(self.run_id, "lab_match_confidence", rec["confidence"], step=step)
            self.client.log_dict(self.run_id, rec, f"lab/{rec['request_id']}.json")
        for path in lab.figures:
            self.client.log_artifact(self.run_id, str(path), artifact_path="lab")
        lab.new_records.clear()
        lab.figures.clear()

    def log_structure_refits(self) -> None:
        """Per structure-stage Delta-GP refit: its held-out (leave-one-out) MAE and
        calibration factor as metrics, which surrogate it is as a tag
        (``structure_surrogate_m<id>``: ``soap-delta-gp`` or ``fragment-dimer-gp``) (step = structures computed at the refine level,
        one series per molecule, ``..._m<molecule id>``), and the landscape before and
        after correction with the held-out parity plot as an artifact
        (``structure_refits/landscape_m<id>_n<computed>.png``)."""
        stage = self.campaign.stage
        if stage is None or len(stage.refits) <= self._logged_structure_refits:
            return
        from agent.report import landscape_plot

        new = stage.refits[self._logged_structure_refits:]
        self._logged_structure_refits = len(stage.refits)
        for rec in new:
            mol, step = rec["molecule_id"], rec["n_computed"]
            if rec["loo_mae_kjmol"] is not None:
                self.client.log_metric(self.run_id, f"structure_gp_loo_mae_kjmol_m{mol}",
                                       rec["loo_mae_kjmol"], step=step)
            self.client.log_metric(self.run_id, f"structure_gp_calibration_m{mol}", rec["calibration"],
                                   step=step)
            if rec.get("surrogate") and self._structure_surrogate.get(mol) != rec["surrogate"]:
                self.client.set_tag(self.run_id, f"structure_surrogate_m{mol}", rec["surrogate"])
                self._structure_surrogate[mol] = rec["surrogate"]
        for mol in sorted({rec["molecule_id"] for rec in new}):
            step = max(rec["n_computed"] for rec in new if rec["molecule_id"] == mol)
            with tempfile.TemporaryDirectory() as tmp:
                p = landscape_plot(self.campaign, mol, Path(tmp) / f"landscape_m{mol}_n{step:03d}.png")
                if p is not None:
                    self.client.log_artifact(self.run_id, str(p), artifact_path="structure_refits")

    def log_plots(self) -> list[Path]:
        """Write the campaign's plots under runs/<name>/report/ and log them as artifacts."""
        from agent.report import write_plots

        paths = write_plots(self.campaign)
        for p in paths:
            self.client.log_artifact(self.run_id, str(p), artifact_path="plots")
        return paths

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

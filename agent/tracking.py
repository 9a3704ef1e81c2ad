"""MLflow tracking: a view of the campaign store, never the source of truth.

Metrics come from the store: the counters of the evaluations, and the store's events
after the last one logged (``molecule_refit``, ``structure_refit``, ``lab_result``; the
cursor is kept in the store's meta ``mlflow_event_cursor``), so what a stage records is
logged whether or not the process that recorded it is the one logging. Model artifacts
are the stages' fitted models (the only thing not in the store).

One experiment per campaign (named after it, tagged ``mlflow.experimentKind =
custom_model_development`` so MLflow 3 opens it in the classic model-training view,
not the GenAI one) holding one run per launch of the campaign lineage: the run id is
kept in the store so ``resume`` continues the same run. Logged: the config as params.

Every metric's step is the number of evaluations told (stored) when its value arose, so
all series share one x-axis; a count that is a quantity of its own (structures computed,
structures with a property value) is a metric, not a step. Per new evaluation count the
metrics ``best_found`` (its unit, quantity, direction and level of theory in the run tags
``best_found.*``, and the molecule: ``best_found.molecule``, ``.smiles``, ``.molecule_id``;
a tag ``molecule.m<id>`` names each molecule whose id is in a metric or artifact name),
``budget_spent_cpu_s`` (CPU seconds measured in the workers),
``budget_spent_wall_s`` (the tasks' wall times added up), ``elapsed_wall_s`` (the launcher's
wall time over the campaign's runs), ``n_evaluations``, ``n_failed``, ``n_<backend>`` and, with
``[[constraints]]``, ``n_infeasible`` (``best_found`` is over the feasible molecules)
and, with a structure stage whose first level is a lattice energy,
``best_lattice_energy_kjmol_per_mol_m<id>`` (the lowest computed, per landscape) (each
logged once, the last one at the end of a run); per molecule-surrogate refit
``surrogate_holdout_mae_<unit>`` (:func:`holdout_mae_metric`, the objective's unit;
``surrogate_holdout_mae`` in runs logged before 2026-12-06), ``n_molecule_refits`` and,
from :data:`MIN_CALIBRATION_N` held-out top-level values on, ``surrogate_holdout_z_std``,
``surrogate_holdout_coverage_68`` and ``_95`` (the top level predicted with the cheaper
values known, :meth:`~agent.surrogates.molecule_gp.MoleculeSurrogate.calibration`); per
structure-surrogate refit ``structures_computed_m<id>``, ``structure_gp_loo_mae_kjmol_m<id>``
and, from :data:`MIN_CALIBRATION_N` computed structures on, ``structure_gp_calibration_m<id>``
(:meth:`Tracker._log_structure_refits`); with a lab, ``lab_experiments_sent`` and
``lab_results`` when they change (one point per step, :meth:`Tracker._log_lab_counts`) and
``lab_match_confidence`` per identified result; for a structure stage with property
levels, per new value ``landscape_<key>_m<id>`` (the landscape's Boltzmann mean; its level
of theory, the property level on the ranking level's energies, in the run tag
``landscape_<key>_m<id>.level``, its unit in ``.unit``),
``..._sd_energy`` (its spread from the energy ranking alone) and ``..._n_with_value``, and
at the end of a run ``..._sd`` (the sd the report prints: structures of the window without
a value included) with ``..._n_in_window``, ``..._n_with_value_in_window`` and
``..._window_share`` (the share of the window's Boltzmann weight on the structures with a value).

Artifacts: the report's plots under ``plots/``, its tables and text (``summary.txt``,
``results.csv``, ``landscape_model_m<id>.csv``, ...) under ``report/``, the CIFs and
structure tables of ``runs/<name>/structures/`` under ``structures/``; for a campaign with
ESF levels, the ESF maps (``esf_maps/esf_map_n<landscapes>.png``, :mod:`agent.esf_report`)
at the first refit after each new molecule-stage landscape result, and at the end of a run.

Models are logged when they change materially, not at every refit: the molecule
surrogate (an MLflow pyfunc named ``molecule_surrogate_<objective>_refit_<n>``,
:mod:`agent.mlflow_model`, predicting ``<objective>_<level>_mean`` / ``_std`` per level,
unit and level of theory in its tags) when ``MODEL_LOG_MIN_NEW_TOP``
new top-level results arrived or its training set grew by ``MODEL_LOG_GROWTH`` since
the last logged one; a structure-level Delta-GP (a pickled artifact
``structure_models/m<id>_n<computed>.pkl``, cloudpickled, with the structures and energies it was
trained on; not an MLflow model: it loads with ``pickle.load`` under the same code version)
under the same rule per molecule. :meth:`Tracker.finish_models` logs the
final models, so the last logged model of each kind has seen the last result (the run tag
``molecule_surrogate.latest_model`` is the full ``models:/<id>`` URI of the newest molecule
surrogate, to pass to ``mlflow.pyfunc.load_model`` as it is).

The tracking URI is checked before use (:func:`check_tracking_uri`): an HTTP server
must answer within ``HTTP_TIMEOUT_S`` (MLflow's own retries are bounded likewise), a
file or SQLite store must lie in an existing directory (MLflow would create a
missing tree silently); each failure is one line (:class:`TrackingError`).

The default store is ``sqlite:///<runs_dir>/mlflow.db`` with artifacts under
``<runs_dir>/mlartifacts/``; browse with
``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db``.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from agent.campaign import Campaign


#: seconds an MLflow tracking server has to answer (connection and each request)
HTTP_TIMEOUT_S = 10
#: log the molecule / structure model after this many new top-level results ...
#: a molecule id in an artifact's file name (``landscape_m36.png``, ``esf_m98_m0001.cif``,
#: ``m36-m0001.cif``; not the zero-padded structure id ``m0001``)
MOLECULE_ID_IN_NAME = re.compile(r"(?:^|_)m([1-9]\d*)(?=[_.-])")
MODEL_LOG_MIN_NEW_TOP = 5
#: ... or when its training set grew by this fraction since the last logged model
MODEL_LOG_GROWTH = 0.2
#: held-out top-level values below which no z spread or coverage is logged (with 2-4
#: values a coverage of 1.0 says nothing about calibration), and computed structures below
#: which no structure-GP calibration factor is logged (it sits at its floor there)
MIN_CALIBRATION_N = 5
#: the experiment tag and value that make MLflow 3's UI show the classic (non-GenAI) view
EXPERIMENT_KIND_TAG = ("mlflow.experimentKind", "custom_model_development")
#: report files logged under the artifact path ``plots/``; the report's other files go under ``report/``
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be used (one-line message)."""


def default_tracking_uri(runs_dir: str | Path) -> str:
    return f"sqlite:///{Path(runs_dir).resolve() / 'mlflow.db'}"


def tracking_uri(cfg: Any, runs_dir: str | Path) -> str:
    """The campaign's tracking URI: ``[tracking] uri`` or the default under ``runs_dir``."""
    return cfg.tracking.uri or default_tracking_uri(runs_dir)


def check_campaign_tracking(uri: str, runs_dir: str | Path) -> None:
    """:func:`check_tracking_uri` for a campaign under ``runs_dir``, whose default store
    may lie in a runs directory that the campaign is about to create."""
    check_tracking_uri(uri, default=uri == default_tracking_uri(runs_dir))


def check_tracking_uri(uri: str, *, default: bool = False) -> None:
    """Refuse a tracking URI MLflow cannot use, in one line (:class:`TrackingError`).

    HTTP(S): the server's port must accept a connection within ``HTTP_TIMEOUT_S``.
    ``sqlite:///PATH``, ``file://PATH`` or a bare path: no component of the path may be
    a file, and the directory holding the store must exist, except for the ``default``
    store (under the runs directory, which a campaign creates). Other schemes
    (databases, Databricks) are left to MLflow.
    """
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        try:
            port = parsed.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise TrackingError(f"tracking: bad port in the tracking URI {uri!r}") from None
        if not parsed.hostname:
            raise TrackingError(f"tracking: no host in the tracking URI {uri!r}")
        try:
            with socket.create_connection((parsed.hostname, port), timeout=HTTP_TIMEOUT_S):
                pass
        except OSError as exc:
            why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
            raise TrackingError(
                f"tracking: cannot reach the MLflow server at {uri}: {why} (start it, fix "
                "[tracking] uri, or set [tracking] enabled = false)") from None
        return
    if scheme == "sqlite":
        store_dir = Path(uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else parsed.path).parent
    elif scheme == "file":
        store_dir = Path(parsed.path).parent
    elif scheme == "" or (len(scheme) == 1 and uri[1:2] == ":"):
        store_dir = Path(uri).parent
    else:
        return
    for d in (store_dir, *store_dir.parents):
        if d.exists():
            if not d.is_dir():
                raise TrackingError(f"tracking: {d} in the tracking URI {uri!r} is a file, "
                                    "not a directory")
            break
    if not store_dir.is_dir() and not default:
        raise TrackingError(f"tracking: directory {store_dir} of the tracking URI {uri!r} does "
                            "not exist; create it first")


def _material(n_now: int, n_top_now: int, n_logged: int, n_top_logged: int) -> bool:
    """Whether a model trained on ``n_now`` results (``n_top_now`` at the top level)
    differs materially from the last logged one (``n_logged``, ``n_top_logged``)."""
    if n_logged <= 0:
        return n_now > 0
    return (n_top_now - n_top_logged >= MODEL_LOG_MIN_NEW_TOP
            or n_now >= (1.0 + MODEL_LOG_GROWTH) * n_logged)


#: units as they appear in metric names
_UNIT_SLUGS = {"kJ/mol": "kjmol", "kJ/mol per molecule": "kjmol_per_mol", "eV": "ev", "g/cm3": "gcm3",
               "cm2/(V s)": "cm2Vs", "log10 cm2/(V s)": "log10_cm2Vs", "s": "s", "A": "A"}


def holdout_mae_metric(objective: str) -> str:
    """The molecule surrogate's held-out MAE metric, its unit in the name (the objective's:
    ``surrogate_holdout_mae_kjmol`` for a reorganisation energy, ``..._dimensionless`` for a
    count). Runs logged before 2026-12-06 have it as ``surrogate_holdout_mae``."""
    import re

    from agent.summary import quantity

    unit = quantity(objective)[2]
    slug = _UNIT_SLUGS.get(unit) or re.sub(r"[^A-Za-z0-9]+", "_", unit).strip("_") or "dimensionless"
    return f"surrogate_holdout_mae_{slug}"


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
        # a server that stops answering fails a call within about a minute, not 10+ minutes
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(HTTP_TIMEOUT_S))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        import mlflow
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic", "sqlalchemy"):  # after import: mlflow sets its own
            logging.getLogger(name).setLevel(logging.ERROR)
        # its database errors come back to us as exceptions (one line from the runner); this
        # logger would print each with a full SQLAlchemy traceback first (newuser44b #4)
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

        self.campaign = campaign
        self.runs_dir = Path(runs_dir)
        self.uri = uri or tracking_uri(campaign.cfg, runs_dir)
        check_campaign_tracking(self.uri, runs_dir)
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        name = campaign.cfg.name
        try:
            exp = self.client.get_experiment_by_name(name)
        except Exception as exc:  # noqa: BLE001 - any store failure: one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise TrackingError(f"tracking: cannot use the MLflow store {self.uri}: {first}") from None
        kind_tag, kind = EXPERIMENT_KIND_TAG
        if exp is None:
            artifacts = (self.runs_dir.resolve() / "mlartifacts" / name).as_uri()
            exp_id = self.client.create_experiment(name, artifact_location=artifacts,
                                                   tags={kind_tag: kind})
        else:
            exp_id = exp.experiment_id
            if exp.tags.get(kind_tag) != kind:
                self.client.set_experiment_tag(exp_id, kind_tag, kind)
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
            self._tag_config_changes(run_id, campaign.cfg)
        self.run_id = run_id
        self.experiment_id = exp_id
        # the evaluation count last logged by log_progress, in this run (a resumed run
        # continues it, so no step is logged twice)
        progress = campaign.store.get_meta("mlflow_progress_logged") or ""
        run_of, _, step = progress.partition(":")
        self._progress_step = int(step) if run_of == run_id and step.lstrip("-").isdigit() else -1
        self._best_tagged: int | None = None  # the pool index the best_found.* molecule tags name
        self._molecules_tagged: set[int] = set()  # molecule ids with a molecule.m<id> tag
        self._landscape_tagged: set[str] = set()  # landscape property metrics with their .level tag
        self._set_unit_tags()
        cursor = campaign.store.get_meta("mlflow_event_cursor")
        if cursor is None:  # a run tracked before the cursor existed logged its events then
            events = campaign.store.events() if run_id == campaign.store.get_meta("mlflow_run_id") \
                and campaign.store.get_meta("mlflow_logged_refits") is not None else []
            cursor = str(events[-1]["event_id"]) if events else "0"
        self._cursor = int(cursor)
        logged = campaign.store.get_meta("mlflow_model_logged", "0,0") or "0,0"
        self._model_logged = tuple(int(x) for x in logged.split(","))  # (n_obs, n_top) of last model
        self._structure_model_logged: dict[int, int] = {}  # molecule id -> n_computed of last model
        # lab counts not yet logged: (evaluation count, {metric: value}) (_log_lab_counts)
        self._lab_pending: tuple[int, dict[str, float]] | None = None
        self._points: dict[str, tuple[int, float] | None] = {}  # metric -> last (step, value)
        self._structure_surrogate: dict[int, str] = {}  # molecule id -> surrogate tag already set
        self._esf_logged = -1  # molecule-stage landscape results in the last logged ESF map

    def _tag_config_changes(self, run_id: str, cfg: Any) -> None:
        """A run's params are its config when it started, and MLflow keeps them as they are;
        a later change (``crystal-agent refine`` raising the budgets, ``resume
        --max-evaluations``) becomes a tag ``config_now.<key>`` with the value the campaign
        runs under now, and ``config_changed`` lists those keys."""
        from mlflow.entities import RunTag

        logged = self.client.get_run(run_id).data.params
        now = _flatten(cfg.model_dump(mode="json"))
        changed = sorted(k for k, v in now.items() if k in logged and logged[k] != v)
        if changed:
            tags = [RunTag(f"config_now.{k}", now[k]) for k in changed]
            tags.append(RunTag("config_changed", ", ".join(changed)[:5000]))
            self.client.log_batch(run_id, tags=tags)

    def _run_missing(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
            return False
        except Exception:  # noqa: BLE001 - a deleted or foreign run: start a new one
            return True

    def _set_unit_tags(self) -> None:
        """What the unit-less metric names mean, as run tags: ``best_found.unit``,
        ``best_found.quantity``, ``best_found.level`` (the objective's top level of theory)
        and ``best_found.direction``; with a structure stage, the level of
        ``best_lattice_energy_kjmol_per_mol_m<id>``."""
        from mlflow.entities import RunTag

        from agent.summary import ENERGY_UNIT, level_of_theory, quantity

        cfg = self.campaign.cfg
        label, _, unit = quantity(cfg.objective)
        top = cfg.backends[-1]
        tags = {
            "best_found.quantity": f"{label} ({cfg.objective})",
            "best_found.unit": unit or "dimensionless",
            "best_found.level": f"{level_of_theory(top)} ({top.name})",
            "best_found.direction": cfg.direction,
        }
        if self.campaign.stage is not None and self._lattice_level() is not None:
            level = self._lattice_level()
            tags["best_lattice_energy.level"] = f"{level_of_theory(level)} ({level.name})"
            tags["best_lattice_energy.unit"] = ENERGY_UNIT
        self.client.log_batch(self.run_id, tags=[RunTag(k, v[:5000]) for k, v in tags.items()])

    def _lattice_level(self) -> Any:
        """The structure level whose computed values are lattice energies (the first one,
        when it reports ``energy_kjmol``), or None."""
        from agent.stages.structure import level_value_keys

        structures = self.campaign.cfg.structures
        try:
            levels, keys = structures.level_configs(), level_value_keys(structures)
        except Exception:  # noqa: BLE001 - an unknown backend: no such metric
            return None
        return levels[0] if levels and keys and keys[0] == "energy_kjmol" else None

    def _name_best(self, index: int) -> None:
        """Run tags ``best_found.molecule``, ``best_found.smiles`` and ``best_found.molecule_id``
        for the best molecule (set when it changes), so the MLflow UI says which one it is."""
        m = self.campaign.molecules
        if index == self._best_tagged:
            return
        mol_id = int(m.mol_ids[index])
        self.client.set_tag(self.run_id, "best_found.molecule", m.names[index])
        self.client.set_tag(self.run_id, "best_found.smiles", m.smiles[index])
        self.client.set_tag(self.run_id, "best_found.molecule_id", f"m{mol_id}")
        self._tag_molecule(mol_id)
        self._best_tagged = index

    def _tag_molecule(self, mol_id: int) -> None:
        """Run tag ``molecule.m<id>`` = name (SMILES): what the ``_m<id>`` of a metric or
        artifact name stands for (set once per molecule)."""
        if mol_id in self._molecules_tagged:
            return
        m = self.campaign.molecules
        i = m.index_of.get(mol_id)
        if i is None:
            return
        name, smiles = m.names[i], m.smiles[i]
        self.client.set_tag(self.run_id, f"molecule.m{mol_id}", name if name == smiles else f"{name} ({smiles})")
        self._molecules_tagged.add(mol_id)

    def log_progress(self) -> None:
        """Budget and best-found metrics at step n_evaluations, once per evaluation count
        (a call that finds the count already logged does nothing): ``n_evaluations``,
        ``n_failed``, ``budget_spent_cpu_s``, ``budget_spent_wall_s``, ``best_found``
        (unit and level in the run's ``best_found.*`` tags), ``n_<backend>``, with
        constraints ``n_infeasible``, and with a structure stage whose first level is a
        lattice energy, ``best_lattice_energy_kjmol_per_mol_m<molecule id>``: the lowest
        lattice energy computed at that level for each landscape."""
        from mlflow.entities import Metric

        c = self.campaign
        step = c.n_evaluations
        if step == self._progress_step:
            return
        import time

        ts = int(time.time() * 1000)
        metrics = {
            "n_evaluations": float(c.n_evaluations),
            "n_failed": float(c.n_failed),
            "budget_spent_cpu_s": c.spent_cpu_s,
            "budget_spent_wall_s": c.spent_wall_s,  # the tasks' wall times added up
            "elapsed_wall_s": c.store.elapsed_s(now=time.time())[0],  # the launcher's, over its runs
        }
        best = c.molecules.best_index()
        if best is not None:
            metrics["best_found"] = best[1]
            self._name_best(best[0])
        if c.cfg.constraints:  # molecules a [[constraints]] bound excludes (best_found is over the others)
            metrics["n_infeasible"] = float(len(c.infeasible))
        for name, n in c.n_by_backend.items():
            metrics[f"n_{name}"] = float(n)
        if c.stage is not None:
            for mol in c.stage.landscapes:  # the ids of the per-landscape metrics and artifacts
                self._tag_molecule(int(mol))
        if c.stage is not None and self._lattice_level() is not None:
            for mol, land in sorted(c.stage.landscapes.items()):
                energies = [e for e in land.computed.values() if np.isfinite(e)]
                if energies:
                    metrics[f"best_lattice_energy_kjmol_per_mol_m{mol}"] = min(energies)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()]
        )
        self._progress_step = step
        c.store.set_meta("mlflow_progress_logged", f"{self.run_id}:{step}")
        self._log_lab_counts()  # counts held at an earlier evaluation count are logged now

    def log_events(self) -> None:
        """Log the store's events since the last logged one (see the module docstring)."""
        c = self.campaign
        events = c.store.events(after_id=self._cursor)
        if not events:
            return
        structure_refits = []
        for ev in events:
            if ev["kind"] == "molecule_refit":
                step = int(ev.get("n_evaluations", c.n_evaluations))
                if ev.get("holdout_mae") is not None:
                    self.client.log_metric(self.run_id, holdout_mae_metric(c.cfg.objective),
                                           ev["holdout_mae"], step=step)
                # the top level's held-out calibration (cheaper values known), once enough
                # values are held out for a coverage to mean something
                top = ev.get("holdout_calibration")
                if top and int(top.get("n", 0)) >= MIN_CALIBRATION_N:
                    for name in ("z_std", "coverage_68", "coverage_95"):
                        self.client.log_metric(self.run_id, f"surrogate_holdout_{name}", top[name], step=step)
                self.client.log_metric(self.run_id, "n_molecule_refits", ev["n_refit"], step=step)
            elif ev["kind"] == "structure_refit":
                structure_refits.append(ev)
            elif ev["kind"] == "lab_result" and ev.get("state") == "done":
                self._log_lab_result(ev)
            elif ev["kind"] == "landscape_property":  # agent/stages/properties.py
                key = f"landscape_{ev['value_key']}_m{ev['molecule_id']}"
                self._tag_landscape_property(key, ev)
                # the spread from the energy ranking alone; the sd the report prints (window
                # coverage included) is logged as <key>_sd at the end of a run
                self._log_new_points({key: ev["mean"], f"{key}_sd_energy": ev["sd"],
                                      f"{key}_n_with_value": ev["n_structures"]},
                                     int(ev.get("n_evaluations", c.n_evaluations)))
        if any(ev["kind"] == "molecule_refit" for ev in events):
            self._maybe_log_molecule_model(final=False)
            self._maybe_log_esf_map()
        if structure_refits:
            self._log_structure_refits(structure_refits)
        self._log_lab_counts()
        self._cursor = events[-1]["event_id"]
        c.store.set_meta("mlflow_event_cursor", str(self._cursor))

    def _maybe_log_molecule_model(self, *, final: bool) -> None:
        """The molecule surrogate as an MLflow model when it changed materially since the
        last logged one (see the module docstring), or, ``final``, whenever it has seen
        results the last logged one has not."""
        c = self.campaign
        surrogate = c.molecules.surrogate
        if surrogate is None:
            return
        trained_f = np.asarray(surrogate.obs_f)  # the fidelity of each training result
        n_obs, n_top = len(trained_f), int(np.sum(trained_f == c.molecules.top_fidelity))
        last_obs, last_top = self._model_logged
        changed = (n_obs, n_top) != (last_obs, last_top)
        if c.cfg.tracking.log_models and changed and (
            final or _material(n_obs, n_top, last_obs, last_top)
        ):
            self._log_surrogate_model()
            self._model_logged = (n_obs, n_top)
            c.store.set_meta("mlflow_model_logged", f"{n_obs},{n_top}")

    def _log_surrogate_model(self) -> None:
        """The molecule surrogate as an MLflow pyfunc model named
        ``molecule_surrogate_<objective>_refit_<n>`` (model type ``molecule-surrogate``),
        predicting ``<objective>_<level>_mean`` / ``_std`` per level
        (:mod:`agent.mlflow_model`). Its tags say the objective, unit and level of theory
        of each output column (``output.<column>``); its params are the surrogate's own
        (fingerprint, levels, training counts), not the campaign's config, which stays on
        the run: the logged model is created first (:func:`mlflow.initialize_logged_model`),
        so ``log_model`` does not copy the run's params onto it."""
        import mlflow
        import pandas as pd
        from mlflow.models import infer_signature

        from agent.mlflow_model import MoleculeSurrogateModel, output_columns
        from agent.report import NON_NEGATIVE
        from agent.summary import level_of_theory, quantity, shown_name

        c = self.campaign
        s = c.cfg.surrogate
        backends = list(c.cfg.backends)
        shown = [shown_name(b, c.cfg.objective) for b in backends]
        columns = output_columns(c.cfg.objective, [b.name for b in backends], shown)
        label, _, unit = quantity(c.cfg.objective)
        unit = unit or "dimensionless"
        lower = NON_NEGATIVE.get(c.cfg.objective)
        blob = {
            "state_dict": c.molecules.surrogate.state_dict(),
            "n_fidelities": len(backends),
            "fingerprint": {"n_bits": s.fingerprint_bits, "radius": s.fingerprint_radius},
            "columns": columns,
            "lower_bound": lower,
        }
        trained_f = np.asarray(c.molecules.surrogate.obs_f)
        tags = {
            "objective": c.cfg.objective,
            "quantity": label,
            "unit": unit,
            "campaign": c.cfg.name,
            "outputs": "per level (cheapest first): <objective>_<level>_mean and _std, the "
                       "prediction and its 1-sigma in the unit above",
        }
        if lower is not None:
            tags["outputs"] += (f"; _mean and _std are those of the GP's Gaussian truncated at {lower:g} "
                                "(physics bounds the quantity from below), the raw GP posterior is "
                                "_gp_mean and _gp_std")
        for f, (b, col, name) in enumerate(zip(backends, columns, shown, strict=True)):
            f_label, _, f_unit = quantity(name)
            tags[f"output.{col}"] = (f"{f_label}, {f_unit or 'dimensionless'}, {level_of_theory(b)} "
                                     f"({b.name}), fidelity {f}")
        params = {
            "fingerprint_bits": s.fingerprint_bits,
            "fingerprint_radius": s.fingerprint_radius,
            "levels": ", ".join(b.name for b in backends),
            "n_training_results": len(trained_f),
            "n_training_results_top_level": int(np.sum(trained_f == c.molecules.top_fidelity)),
            "n_refit": c.molecules.n_refits,
            "n_evaluations": c.n_evaluations,
        }
        kinds = ("mean", "std") + (("gp_mean", "gp_std") if lower is not None else ())
        example_out = {"smiles": ["c1ccccc1"]} | {f"{col}_{k}": [0.0] for col in columns for k in kinds}
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path = Path(tmp) / "surrogate_state.pkl"
            path.write_bytes(pickle.dumps(blob))
            # no ``mlflow.start_run`` around this: leaving its block ends the run (FINISHED)
            # while the campaign is still running (newuser44b #2); the logged model names its
            # run instead (``source_run_id``)
            model = mlflow.initialize_logged_model(
                name=f"molecule_surrogate_{c.cfg.objective}_refit_{c.molecules.n_refits:04d}",
                source_run_id=self.run_id, model_type="molecule-surrogate",
                tags={k: v[:5000] for k, v in tags.items()},
                params={k: str(v) for k, v in params.items()},
                experiment_id=self.experiment_id,
            )
            mlflow.pyfunc.log_model(
                model_id=model.model_id,
                python_model=MoleculeSurrogateModel(),
                artifacts={"state": str(path)},
                code_paths=None,
                pip_requirements=["crystal-agent", "torch==2.13.0", "botorch", "rdkit"],
                signature=infer_signature(pd.DataFrame({"smiles": ["c1ccccc1"]}),
                                          pd.DataFrame(example_out)),
                step=c.n_evaluations,
            )
        # the newest among the run's logged models, found without reading their list (newuser45a #11)
        self.client.set_tag(self.run_id, "molecule_surrogate.latest_model", f"models:/{model.model_id}")

    def _log_lab_counts(self, *, final: bool = False) -> None:
        """Lab experiments sent and identified, ``lab_experiments_sent`` and ``lab_results``
        (step = evaluations told), each logged only when its value changed, one point per
        step: the counts at an evaluation count are held until the count moves on (or,
        ``final``, the run ends), so a request sent and its result arriving at the same
        evaluation count give one point of each, not two values at one step."""
        if self.campaign.lab is None:
            return
        rows = self.campaign.store.lab_experiments()
        counts = {"lab_experiments_sent": len(rows),
                  "lab_results": sum(r["state"] == "done" for r in rows)}
        step = self.campaign.n_evaluations
        if self._lab_pending is not None and self._lab_pending[0] < step:
            self._log_new_points(self._lab_pending[1], self._lab_pending[0], on_change=True)
        self._lab_pending = (step, counts)
        if final:
            self._log_new_points(counts, step, on_change=True)
            self._lab_pending = None

    def _tag_landscape_property(self, key: str, event: dict[str, Any]) -> None:
        """Run tags ``<key>.level`` (whose value the landscape property metric ``key`` is: the
        structure stage's property level on its ranking level's energies, each with its
        backend, as ``best_found.level`` names the molecule stage's) and ``<key>.unit``, and
        the molecule's tag; set once per metric."""
        if key in self._landscape_tagged:
            return
        from agent.stages.properties import is_property_level
        from agent.summary import level_of_theory, quantity

        levels = self.campaign.cfg.structures.level_configs()
        prop = next((lv for lv in levels if lv.name == event["level"]), None)
        rank = next((lv for lv in levels if not is_property_level(lv.name)), None)
        if prop is None or rank is None:
            return
        self.client.set_tag(self.run_id, f"{key}.level",
                            f"structure stage: {level_of_theory(prop)} ({prop.name}), Boltzmann-weighted on "
                            f"{level_of_theory(rank)} ({rank.name}) energies")
        self.client.set_tag(self.run_id, f"{key}.unit", quantity(event["value_key"])[2])
        self._tag_molecule(int(event["molecule_id"]))
        self._landscape_tagged.add(key)

    def _last_point(self, key: str) -> tuple[int, float] | None:
        """(step, value) of the metric's point at its highest step in this run (read from
        MLflow once per tracker, then kept), or None."""
        if key not in self._points:
            hist = self.client.get_metric_history(self.run_id, key)
            last = max(hist, key=lambda m: (m.step, m.timestamp), default=None)
            self._points[key] = None if last is None else (int(last.step), float(last.value))
        return self._points[key]

    def _log_new_points(self, metrics: dict[str, float], step: int, *, on_change: bool = False,
                        final: bool = False) -> None:
        """Log each metric at ``step`` unless the run already has a point of it at that step
        or a later one (so a replayed event logs nothing), or, ``on_change``, its last point
        has the same value. ``final`` (the values the report prints, logged at the end of a
        run, with ``on_change``) may add a second point at the last point's step when the value
        differs: MLflow's latest value of the metric is then the report's (newuser50 #10: the
        last event's 0.4808 against the report's 0.4823, whose point at the same step was
        dropped)."""
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = []
        for key, value in metrics.items():
            last = self._last_point(key)
            if last is not None and (step < last[0] or (step == last[0] and not final)
                                     or (on_change and last[1] == float(value))):
                continue
            t = ts
            if last is not None and step == last[0]:  # a final point: later than the one it supersedes
                t = max([ts] + [m.timestamp + 1 for m in self.client.get_metric_history(self.run_id, key)])
            batch.append(Metric(key, float(value), t, int(step)))
            self._points[key] = (int(step), float(value))
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def _log_lab_result(self, event: dict[str, Any]) -> None:
        """One identified lab result: its confidence, identification record and the
        measured-vs-simulated plot."""
        import json

        from agent.stages.lab import pxrd_figure_path

        c = self.campaign
        rid = event["request_id"]
        row = next((r for r in c.store.lab_experiments() if r["request_id"] == rid), None)
        if row is None or not row["identification_json"]:
            return
        record = {"request_id": rid, "molecule_id": row["molecule_id"],
                  **json.loads(row["identification_json"])}
        if record.get("confidence") is not None:
            self.client.log_metric(self.run_id, "lab_match_confidence", record["confidence"],
                                   step=c.n_evaluations)
        self.client.log_dict(self.run_id, record, f"lab/{rid}.json")
        path = pxrd_figure_path(c.directory, rid)
        if path.exists():
            self.client.log_artifact(self.run_id, str(path), artifact_path="lab")

    def _log_structure_refits(self, new: list[dict[str, Any]]) -> None:
        """Per ``structure_refit`` event, one series per molecule (``..._m<molecule id>``)
        at step = evaluations told when the refit happened, like every other metric:
        ``structures_computed_m<id>`` (structures computed at the first structure level, the
        refit's training set), the held-out (leave-one-out) MAE and, from
        :data:`MIN_CALIBRATION_N` computed structures on, the calibration factor (with fewer
        it sits at its floor and says nothing); which surrogate it is as a tag
        (``structure_surrogate_m<id>``: ``soap-delta-gp`` or ``fragment-dimer-gp``); and the
        landscape before and after correction with the held-out parity plot as an artifact
        (``structure_refits/landscape_m<id>_n<computed>.png``)."""
        from agent.report import landscape_plot

        c = self.campaign
        for rec in new:
            mol, n = rec["molecule_id"], int(rec["n_computed"])
            metrics = {f"structures_computed_m{mol}": n}
            if rec["loo_mae_kjmol"] is not None:
                metrics[f"structure_gp_loo_mae_kjmol_m{mol}"] = rec["loo_mae_kjmol"]
            if n >= MIN_CALIBRATION_N:
                metrics[f"structure_gp_calibration_m{mol}"] = rec["calibration"]
            # events recorded before they carried the evaluation count: the current one
            self._log_new_points(metrics, int(rec.get("n_evaluations", c.n_evaluations)))
            if rec.get("surrogate") and self._structure_surrogate.get(mol) != rec["surrogate"]:
                self.client.set_tag(self.run_id, f"structure_surrogate_m{mol}", rec["surrogate"])
                self._structure_surrogate[mol] = rec["surrogate"]
        if self.campaign.stage is None:
            return
        for mol in sorted({rec["molecule_id"] for rec in new}):
            step = max(rec["n_computed"] for rec in new if rec["molecule_id"] == mol)
            with tempfile.TemporaryDirectory() as tmp:
                p = landscape_plot(self.campaign, mol, Path(tmp) / f"landscape_m{mol}_n{step:03d}.png")
                if p is not None:
                    self.client.log_artifact(self.run_id, str(p), artifact_path="structure_refits")
            self._maybe_log_structure_model(mol, final=False)

    def _maybe_log_structure_model(self, molecule_id: int, *, final: bool) -> None:
        """Log the landscape's Delta-GP (cloudpickled, with the structures and energies it
        was trained on; load with ``pickle.load``) when it changed materially since the last logged one, or, ``final``,
        whenever it has seen structures that one has not."""
        stage = self.campaign.stage
        land = stage.landscapes.get(molecule_id) if stage is not None else None
        if land is None or land.model is None or not self.campaign.cfg.tracking.log_models:
            return
        trained = land.model_computed or {}
        n, last = len(trained), self._structure_model_logged.get(molecule_id, 0)
        if n == last or not (final or _material(n, n, last, last)):
            return
        blob = {
            "molecule_id": molecule_id, "smiles": land.smiles, "level": stage.refine.name,
            "model": land.model,
            "trained_on_kjmol": {land.ids[i]: e for i, e in sorted(trained.items())},
        }
        import cloudpickle  # the models hold GPyTorch kernels with lambdas

        try:
            data = cloudpickle.dumps(blob)
        except Exception as exc:  # noqa: BLE001 - never lose a finished campaign over this
            why = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            self.client.set_tag(self.run_id, f"structure_model_m{molecule_id}_error", why)
            print(f"crystal-agent: structure model m{molecule_id} not logged ({why})",
                  file=sys.stderr)
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"m{molecule_id}_n{n:03d}.pkl"
            path.write_bytes(data)
            self.client.log_artifact(self.run_id, str(path), artifact_path="structure_models")
        self._structure_model_logged[molecule_id] = n

    def _maybe_log_esf_map(self) -> None:
        """The ESF maps as an artifact when molecule-stage landscape results arrived since
        the last logged map (counted from the campaign's per-backend counters)."""
        from agent.esf_report import LANDSCAPE_KEY
        from sim_backends.registry import UnknownBackendError, backend_class

        c = self.campaign
        n = 0
        for b in c.cfg.backends:
            try:
                if LANDSCAPE_KEY in getattr(backend_class(b.name), "computes", ()):
                    n += int(c.n_by_backend.get(b.name, 0))
            except UnknownBackendError:
                continue
        if n == 0 or n == self._esf_logged:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from agent.esf_report import esf_map_figure, esf_results, esf_window

        fig = esf_map_figure(esf_results(c.store, c.cfg), plt, esf_window(c.cfg),
                             title=f"campaign {c.cfg.name}: ESF maps")
        self._esf_logged = n
        if fig is None:
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"esf_map_n{n:03d}.png"
            fig.savefig(path, dpi=100)
            plt.close(fig)
            self.client.log_artifact(self.run_id, str(path), artifact_path="esf_maps")

    def finish_models(self) -> None:
        """At the end of a run (after :meth:`agent.campaign.Campaign.refit_final`): log
        the events left and each model that has seen results its last logged version has
        not, so the last logged models are the final ones."""
        c = self.campaign
        self.log_events()
        self._log_lab_counts(final=True)
        self._maybe_log_molecule_model(final=True)
        self._maybe_log_esf_map()
        if c.stage is not None:
            for mol in sorted(c.stage.landscapes):
                self._maybe_log_structure_model(mol, final=True)
        from sim_backends.density_model import MODEL_FILE

        if (Path(c.directory) / MODEL_FILE).is_file():  # the learned SCF guess (scf_guess="learned")
            self.client.log_artifact(self.run_id, str(Path(c.directory) / MODEL_FILE), artifact_path="scf_guess")

    def _log_landscape_properties(self) -> None:
        """The structure stage's landscape mobilities as the report prints them: mean and
        sd (:func:`agent.esf_report.window_coverage`: widened for the window's structures
        without a mobility) under ``landscape_<value key>_m<id>`` and ``..._sd``, with the
        number of window structures with a mobility and in the window and the share of the
        window's Boltzmann weight on those with one (``..._window_share``, 0-1), at step =
        evaluations told at the end of the run (each only when it changed since its last point)."""
        c = self.campaign
        if c.stage is None or not c.store.events("landscape_property"):
            return
        from agent.esf_report import esf_results

        latest = {(int(e["molecule_id"]), e["level"]): e for e in c.store.events("landscape_property")}
        for rec in esf_results(c.store, c.cfg):
            ev = latest.get((rec["molecule_id"], rec["backend"])) if rec["source"] == "structure stage" else None
            if ev is None:
                continue
            key = f"landscape_{ev['value_key']}_m{rec['molecule_id']}"
            metrics = {key: rec["mean"], f"{key}_sd": rec["sd"], f"{key}_n_in_window": rec["n_in_window"]}
            if rec.get("n_with_mobility") is not None:
                metrics[f"{key}_n_with_value_in_window"] = rec["n_with_mobility"]
            if rec.get("uncomputed_weight") is not None:  # the share status prints beside the value
                metrics[f"{key}_window_share"] = 1.0 - float(rec["uncomputed_weight"])
            self._log_new_points(metrics, c.n_evaluations, on_change=True, final=True)

    def log_plots(self) -> list[Path]:
        """Write the campaign's report under runs/<name>/report/ and log it as artifacts:
        figures under ``plots/``, tables and text (``summary.txt``, ``results.csv``,
        ``landscape_model_m<id>.csv``, ...) under ``report/``, the CIFs and tables of
        ``runs/<name>/structures/`` under ``structures/``."""
        from agent.report import write_plots

        paths = write_plots(self.campaign)
        self._log_landscape_properties()  # after write_plots saved the final structure ranking
        structures = (Path(self.campaign.directory) / "structures").resolve()
        for p in paths:
            # the CIFs and structure tables of runs/<name>/structures/ under structures/,
            # the report's figures under plots/, its tables and text under report/
            if Path(p).resolve().parent == structures:
                folder = "structures"
            else:
                folder = "plots" if Path(p).suffix.lower() in PLOT_SUFFIXES else "report"
            self.client.log_artifact(self.run_id, str(p), artifact_path=folder)
            for mol_id in MOLECULE_ID_IN_NAME.findall(Path(p).name):  # esf_m98_m0001.cif, m36-m0001.cif
                self._tag_molecule(int(mol_id))
        return paths

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

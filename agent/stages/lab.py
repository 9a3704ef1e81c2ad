"""The lab stage: send molecules with a predicted landscape to a lab robot, identify the
measured PXRD pattern against the landscape, and record the observed forms.

Work runs outside the executor (the lab adapter), so :meth:`LabStage.ask` proposes no
requests; the scheduler calls :meth:`LabStage.step` each loop. It reads the landscapes
from the store's ``structures`` table (the lowest ``[structures] max_structures`` per
molecule, as the structure stage sees them) and writes what it identifies to the
``observed_forms`` table, which the structure stage reads: the stages never see each
other.

Each molecule is sent once, under conditions the simulated lab's phase rules allow
(:func:`agent.lab.substances.suggest_conditions`: e.g. slow evaporation from ethanol at
298.15 K, growth from the vapour for high-melting polyaromatics, in-situ
cryocrystallisation for liquids), or under those set in ``[lab] conditions`` /
``molecule_conditions`` (:meth:`agent.lab.config.LabConfig.request_conditions`).
Every experiment is a row of the store's ``lab_experiments`` table (request, ticket,
state, result, identification), written when it is submitted and when its result is
identified, so a killed campaign re-polls its open experiments on resume.
An identified form is observed only when its (calibrated) confidence reaches
``[lab] min_confidence`` (default 0.5); a mixture makes both components observed under
the same gate (its confidence is the major phase's: a mixture no better established than
a single form feeds back nothing).
Requests are idempotent on their id (``<campaign>-m<molecule id>-<n>``), so
re-submitting after a crash creates no second experiment. The measured-vs-simulated
plot of each identified result is written to ``report/lab/<request id>_pxrd.png``
(:func:`pxrd_figure_path`).

With an adapter that simulates from predicted structures (``takes_landscape``, e.g.
``simulated``) and ``landscape = "campaign"`` (the default), one adapter per molecule
draws its outcomes from the campaign's own predicted landscape (CSP energies, lower
forms more likely, with kinetic noise and failures); it is built like any adapter
(:func:`agent.lab.base.get_adapter`, so one that reaches hardware is still behind the
approval gate). Other adapters are shared by all molecules.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.config import CampaignConfig
    from agent.lab.base import LabAdapter
    from agent.stages.base import Request
    from agent.store import Evaluation, Store
    from sim_backends.base import EvalResult

NAME = "lab"


def pxrd_figure_path(directory: Path, request_id: str) -> Path:
    """Where the measured-vs-simulated plot of lab request ``request_id`` is written."""
    return Path(directory) / "report" / "lab" / f"{request_id}_pxrd.png"


class LabStage:
    """Lab experiments for a campaign with a ``[lab]`` table (see the module docstring)."""

    name = NAME
    waits_for: tuple[str, ...] = ()

    def __init__(self, cfg: CampaignConfig, directory: Path) -> None:
        self.campaign_name = cfg.name
        self.seed = cfg.seed
        self.max_structures = cfg.structures.max_structures
        self.cfg = cfg.lab
        self.directory = Path(directory)
        self.store: Store | None = None
        self._adapters: dict[int, LabAdapter] = {}
        self._landscapes: dict[int, Any] = {}  # molecule id -> its stored Landscape, parsed once
        self._announced: set[str] = set()  # requests held for approval that this process printed
        self._shared: LabAdapter | None = None

    # -- the Stage protocol ---------------------------------------------------------------
    def restore(self, store: Store) -> None:
        """Keep the store; record the forms identified before (stores of schema < 3 have
        the identifications but not the ``observed_forms`` rows)."""
        self.store = store
        if not store.writable:
            return
        for row in store.lab_experiments():
            if row["state"] == "done" and row["identification_json"]:
                ident = json.loads(row["identification_json"])
                observed = _observed_forms(ident, self.cfg.min_confidence)
                if observed:
                    store.add_observed_forms(row["molecule_id"], observed, row["request_id"])

    def owns(self, evaluation: Evaluation) -> bool:
        return False

    def ask(self, n: int, pending: Sequence[Request]) -> list[Request]:
        return []

    def records(self, request: Request, result: EvalResult) -> dict[str, Any]:
        return {}

    def tell(self, request: Request | None, evaluation: Evaluation) -> None:
        pass

    def is_exhausted(self, pending: Sequence[Request], budget: bool = True) -> bool:
        return not self.open_experiments()

    def step(self) -> bool:
        """Submit experiments for new landscapes, poll open ones; True while any is open."""
        self.submit_ready()
        self.poll()
        return bool(self.open_experiments())

    def close(self) -> None:
        for a in [*self._adapters.values(), self._shared]:
            if a is not None:
                a.close()

    # -- landscapes (from the store) ------------------------------------------------------
    def _landscape(self, molecule_id: int) -> Any:
        """The molecule's stored CSP minima as a :class:`~sim_backends.landscape.Landscape`
        (read once: the store's landscape of a molecule is committed with its CSP result
        and never changes; each CIF is parsed at most once for the simulated lab and
        every identification)."""
        if molecule_id not in self._landscapes:
            from sim_backends.landscape import Landscape

            rows = self.store.structures(molecule_id)[: self.max_structures]
            land = Landscape.from_records(self._smiles(molecule_id), rows)
            if not rows:
                return land  # no CSP result yet: not cached
            self._landscapes[molecule_id] = land
        return self._landscapes[molecule_id]

    def _landscape_molecules(self) -> list[int]:
        return sorted({int(r["molecule_id"]) for r in self.store.structures()})

    def _smiles(self, molecule_id: int) -> str:
        return next(m["smiles"] for m in self.store.molecules() if m["id"] == molecule_id)

    # -- adapters -----------------------------------------------------------------------
    def _uses_campaign_landscape(self) -> bool:
        from agent.lab.base import adapter_class

        return adapter_class(self.cfg.adapter).takes_landscape and self.cfg.landscape == "campaign" \
            and "landscape" not in self.cfg.params

    def adapter_for(self, molecule_id: int) -> LabAdapter:
        if self._uses_campaign_landscape():
            if molecule_id not in self._adapters:
                from agent.lab.base import get_adapter

                entries = self._landscape(molecule_id).minima
                self._adapters[molecule_id] = get_adapter(
                    self.cfg.adapter, campaign_dir=str(self.directory), auto_approve=self.cfg.auto_approve,
                    daily_budget=self.cfg.daily_budget,
                    **{"seed": self.seed, **self.cfg.params,
                       "landscape": {self._smiles(molecule_id): entries}})
            return self._adapters[molecule_id]
        if self._shared is None:
            from agent.lab.config import build_adapter

            self._shared = build_adapter(self.cfg, self.directory)
        return self._shared

    # -- submit / poll ------------------------------------------------------------------
    def open_experiments(self) -> list[Any]:
        return [r for r in self.store.lab_experiments()
                if r["state"] not in ("done", "failed", "cancelled")]

    def submit_ready(self) -> int:
        """Send one experiment per landscape molecule that has none yet."""
        from agent.lab.base import LabError, LabRequest

        sent = {r["molecule_id"] for r in self.store.lab_experiments()}
        n = 0
        for mol_id in self._landscape_molecules():
            if mol_id in sent:
                continue
            smiles = self._smiles(mol_id)
            req = LabRequest(request_id=f"{self.campaign_name}-m{mol_id}-1", smiles=smiles,
                             **self.cfg.request_conditions(smiles))  # suggested, or set in [lab]
            try:
                ticket = self.adapter_for(mol_id).submit(req)
                state, reason, tdict = "submitted", "", ticket.to_dict()
            except LabError as exc:
                state, reason, tdict = "failed", str(exc).splitlines()[0], None
            self.store.add_lab_experiment(req.request_id, mol_id, req.to_dict(), tdict, state, reason)
            self.store.log_event("lab_submitted", request_id=req.request_id,
                                 molecule_id=mol_id, state=state, reason=reason)
            n += 1
        return n

    def poll(self) -> int:
        """Poll open experiments; identify finished ones. Returns how many finished."""
        from agent.lab.base import LabError, LabTicket, UnknownTicketError

        n_done = 0
        for row in self.open_experiments():
            if row["ticket_json"] is None:
                continue
            mol_id = row["molecule_id"]
            adapter = self.adapter_for(mol_id)
            ticket = LabTicket.from_dict(json.loads(row["ticket_json"]))
            try:
                status = adapter.poll(ticket)
            except UnknownTicketError:
                # an in-memory lab lost it (restart): the request id makes resubmission safe
                from agent.lab.base import LabRequest

                req = LabRequest.from_dict(json.loads(row["request_json"]))
                ticket = adapter.submit(req)
                self.store.update_lab_experiment(row["request_id"], ticket_json=ticket.to_dict())
                continue
            except LabError as exc:
                self.store.log_event("lab_poll_error", request_id=row["request_id"],
                                     reason=str(exc).splitlines()[0])
                continue
            if status.state == "awaiting_approval" and row["request_id"] not in self._announced:
                # the run waits for a person: say so once per run, with the command to run
                self._announced.add(row["request_id"])
                print(f"lab: {status.reason or 'held for approval'} (the campaign waits for it; "
                      f"from another directory add --campaign-dir {self.directory})",
                      file=sys.stderr, flush=True)
            if status.state == row["state"]:
                continue
            if not status.is_terminal:
                self.store.update_lab_experiment(row["request_id"], state=status.state,
                                                 reason=status.reason or "")
                continue
            n_done += 1
            if status.state != "done" or status.result is None:
                self.store.update_lab_experiment(
                    row["request_id"], state=status.state, reason=status.reason or "",
                    finished_at=time.time())
                self.store.log_event("lab_result", request_id=row["request_id"],
                                     state=status.state, reason=status.reason)
                continue
            self._identify(row["request_id"], mol_id, status.result)
        return n_done

    def _identify(self, request_id: str, mol_id: int, result: Any) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from agent.lab.feedback import identification_record

        land = self._landscape(mol_id)
        record, fig = identification_record(result, land.ids, land.structures())
        if fig is not None:
            path = pxrd_figure_path(self.directory, request_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=110)
            plt.close(fig)
        observed = _observed_forms(record.to_dict(), self.cfg.min_confidence)
        self.store.update_lab_experiment(
            request_id, state="done", result_json=result.to_dict(),
            matched_structure_id=record.matched_structure_id, confidence=record.confidence,
            identification_json=record.to_dict(), finished_at=time.time())
        if observed:
            self.store.add_observed_forms(mol_id, observed, request_id)
        self.store.log_event(
            "lab_result", request_id=request_id, state="done", outcome=record.outcome,
            matched_structure_id=record.matched_structure_id, confidence=record.confidence,
            is_mixture=record.is_mixture, observed=observed, molecule_id=mol_id)


def _observed_forms(ident: dict[str, Any], min_confidence: float) -> list[str]:
    """Structure ids an identification record makes observed, only when its confidence
    reaches ``min_confidence``: both components of a mixture, or the single match.

    A mixture passes the same gate as a single form: its minor component is never written
    back on weaker evidence than a single identification would need."""
    if not (ident["is_match"] and ident["matched_structure_id"] and ident["confidence"] >= min_confidence):
        return []
    if ident["is_mixture"]:
        return [c[0] for c in ident["components"]]
    return [ident["matched_structure_id"]]

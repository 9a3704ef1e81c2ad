"""The lab stage of a campaign: send molecules with a predicted landscape to a lab robot,
identify the measured PXRD pattern against the landscape, and feed the observed form
back into the structure-level acquisition.

Each molecule is sent once, under conditions the simulated lab's phase rules allow
(:func:`agent.lab.substances.suggest_conditions`: slow evaporation from ethanol at
298.15 K, or an in-situ cold crystallisation for compounds that are liquid or gaseous
at room temperature). Every experiment is a row of the store's ``lab_experiments`` table (request, ticket,
state, result, identification), written when it is submitted and when its result is
identified, so a killed campaign re-polls its open experiments on resume. A single
identified form is fed back as observed only when its (calibrated) confidence reaches
``[lab] min_confidence`` (default 0.5); a mixture feeds back both components. Requests
are idempotent on their id (``<campaign>-m<molecule id>-<n>``), so re-submitting after
a crash creates no second experiment.

With the ``simulated`` adapter and ``landscape = "campaign"`` the simulated robot
draws its outcomes from the campaign's own predicted landscape (force-field energies,
lower forms more likely, with kinetic noise and failures).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.campaign import Campaign
    from agent.lab.base import LabAdapter


class LabStage:
    """Lab bookkeeping for a :class:`~agent.campaign.Campaign` with a ``[lab]`` table."""

    def __init__(self, campaign: Campaign) -> None:
        self.campaign = campaign
        self.cfg = campaign.cfg.lab
        self._adapters: dict[int, LabAdapter] = {}
        self._shared: LabAdapter | None = None
        self.new_records: list[dict[str, Any]] = []  # identified since last drained
        self.figures: list[Path] = []

    # -- adapters -----------------------------------------------------------------------
    def _uses_campaign_landscape(self) -> bool:
        return self.cfg.adapter == "simulated" and self.cfg.landscape == "campaign" and (
            "landscape" not in self.cfg.params
        )

    def adapter_for(self, molecule_id: int) -> LabAdapter:
        if self._uses_campaign_landscape():
            if molecule_id not in self._adapters:
                from agent.lab.landscape import LandscapeEntry
                from agent.lab.simulated import SimulatedLab
                from pymatgen.core import Structure

                land = self.campaign.stage.landscapes[molecule_id]
                entries = [
                    LandscapeEntry(sid, Structure.from_str(cif, fmt="cif"), float(e))
                    for sid, cif, e in zip(land.ids, land.cifs, land.ff_kjmol, strict=True)
                ]
                self._adapters[molecule_id] = SimulatedLab(
                    landscape={land.smiles: entries}, seed=self.campaign.cfg.seed, **self.cfg.params
                )
            return self._adapters[molecule_id]
        if self._shared is None:
            from agent.lab.config import build_adapter

            self._shared = build_adapter(self.cfg, self.campaign.directory)
        return self._shared

    # -- submit / poll ------------------------------------------------------------------
    def open_experiments(self) -> list[Any]:
        return [r for r in self.campaign.store.lab_experiments()
                if r["state"] not in ("done", "failed", "cancelled")]

    def submit_ready(self) -> int:
        """Send one experiment per landscape molecule that has none yet."""
        from agent.lab.base import LabError, LabRequest
        from agent.lab.substances import suggest_conditions

        stage = self.campaign.stage
        if stage is None:
            return 0
        sent = {r["molecule_id"] for r in self.campaign.store.lab_experiments()}
        n = 0
        for mol_id, land in stage.landscapes.items():
            if mol_id in sent:
                continue
            req = LabRequest(request_id=f"{self.campaign.cfg.name}-m{mol_id}-1", smiles=land.smiles,
                             **suggest_conditions(land.smiles))  # type: ignore[arg-type]
            try:
                ticket = self.adapter_for(mol_id).submit(req)
                state, reason, tdict = "submitted", "", ticket.to_dict()
            except LabError as exc:
                state, reason, tdict = "failed", str(exc).splitlines()[0], None
            self.campaign.store.add_lab_experiment(req.request_id, mol_id, req.to_dict(), tdict,
                                                   state, reason)
            self.campaign.store.log_event("lab_submitted", request_id=req.request_id,
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
                self.campaign.store.update_lab_experiment(row["request_id"],
                                                          ticket_json=ticket.to_dict())
                continue
            except LabError as exc:
                self.campaign.store.log_event("lab_poll_error", request_id=row["request_id"],
                                              reason=str(exc).splitlines()[0])
                continue
            if status.state == row["state"]:
                continue
            if not status.is_terminal:
                self.campaign.store.update_lab_experiment(row["request_id"], state=status.state,
                                                          reason=status.reason or "")
                continue
            n_done += 1
            if status.state != "done" or status.result is None:
                self.campaign.store.update_lab_experiment(
                    row["request_id"], state=status.state, reason=status.reason or "",
                    finished_at=time.time())
                self.campaign.store.log_event("lab_result", request_id=row["request_id"],
                                              state=status.state, reason=status.reason)
                continue
            self._identify(row["request_id"], mol_id, status.result)
        return n_done

    def _identify(self, request_id: str, mol_id: int, result: Any) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from pymatgen.core import Structure

        from agent.lab.feedback import identification_record

        land = self.campaign.stage.landscapes[mol_id]
        structures = [Structure.from_str(c, fmt="cif") for c in land.cifs]
        record, fig = identification_record(result, list(land.ids), structures)
        out = self.campaign.directory / "report" / "lab"
        out.mkdir(parents=True, exist_ok=True)
        if fig is not None:
            path = out / f"{request_id}_pxrd.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            self.figures.append(path)
        observed = _observed_forms(record.to_dict(), self.cfg.min_confidence)
        self.campaign.store.update_lab_experiment(
            request_id, state="done", result_json=result.to_dict(),
            matched_structure_id=record.matched_structure_id, confidence=record.confidence,
            identification_json=record.to_dict(), finished_at=time.time())
        for sid in observed:
            self.campaign.stage.mark_observed(mol_id, sid)
        self.campaign.store.log_event(
            "lab_result", request_id=request_id, state="done", outcome=record.outcome,
            matched_structure_id=record.matched_structure_id, confidence=record.confidence,
            is_mixture=record.is_mixture, observed=observed)
        self.new_records.append({"request_id": request_id, "molecule_id": mol_id,
                                 **record.to_dict()})

    def reload_observed(self) -> None:
        """On resume: mark the forms identified earlier as observed again."""
        for row in self.campaign.store.lab_experiments():
            if row["state"] == "done" and row["identification_json"]:
                ident = json.loads(row["identification_json"])
                for sid in _observed_forms(ident, self.cfg.min_confidence):
                    self.campaign.stage.mark_observed(row["molecule_id"], sid)

    def close(self) -> None:
        for a in [*self._adapters.values(), self._shared]:
            if a is not None:
                a.close()


def _observed_forms(ident: dict[str, Any], min_confidence: float) -> list[str]:
    """Structure ids an identification record makes observed: both components of a
    mixture, or the single match when its confidence reaches ``min_confidence``."""
    if ident["is_mixture"]:
        return [c[0] for c in ident["components"]]
    if ident["is_match"] and ident["matched_structure_id"] and ident["confidence"] >= min_confidence:
        return [ident["matched_structure_id"]]
    return []

"""A simulated crystallisation lab: outcomes drawn from a predicted energy landscape.

Requests the physics forbids are refused (one-line reason, see
:func:`agent.lab.substances.crystallisation_problem`): a solution method outside its
solvent's liquid range, or a listed compound above the temperature where its solid is
stable at 1 atm (e.g. acetylene, which sublimes at 189.3 K, from ethanol at 298 K).
:meth:`SimulatedLab.submit` refuses them at once (:class:`~agent.lab.base.LabRequestError`);
:meth:`SimulatedLab.run_experiment` on such a request gives a failed experiment with the
reason.

Which form crystallises is modelled as a Boltzmann-like choice over the landscape's
low (free) energy forms at an effective temperature, perturbed by kinetic noise, the
usual caricature of Ostwald's rule of stages vs thermodynamic control:

    p_i  proportional to  exp(-(G_i + b_i(solvent) + k_i) / (R * T_eff))   if G_i - G_min <= W,
    p_i  = 0                                                               otherwise,

* ``G_i``: free energy (or lattice energy) of form i, kJ/mol per molecule;
* ``W``: the energy window of observable polymorphs, ``energy_window_kjmol`` (default
  7.2 kJ/mol: 95 % of the observed polymorph pairs of Nyman & Day, CrystEngComm 17,
  5154 (2015) lie closer in lattice energy); forms further above the minimum are not
  what a lab crystallises;
* ``b_i(solvent)``: a fixed, reproducible solvent bias per (solvent, form), N(0, 1 kJ/mol)
  (solvation changes relative nucleation rates);
* ``k_i``: per-experiment kinetic noise, N(0, sigma_method);
* ``T_eff = temperature_K * t_factor_method``.

Methods (:data:`agent.lab.base.METHOD_DESCRIPTIONS`): slurry ripening approaches the
thermodynamic form (low T factor and noise), slow evaporation is intermediate, crash
cooling, sublimation and in-situ cryocrystallisation of the neat liquid (modelled like
sublimation) give more metastable forms. Some experiments give no crystals (failed), amorphous solid (a hump pattern),
or a mixture of two forms. The product's PXRD pattern is simulated with
:func:`agent.lab.pxrd.simulate_pxrd` (thermal expansion, zero shift, broadening,
texture, background, counting noise), its thermal expansion scaled with the experiment
temperature (``temperature_K``).

Every random draw of an experiment comes from a generator seeded by the lab seed and
the request's draw key (:func:`draw_key`): the same request always gives the same
result, also across lab restarts and campaign resumes. A campaign's request id,
``<campaign>-m<molecule id>-<n>`` (:mod:`agent.stages.lab`), is keyed by the molecule
(its SMILES) and ``n`` only, not by the campaign name, so the same config and seed give
the same robot outcomes under any ``--name`` (newuser46a #7); any other request id is
the key itself (as before). Experiment durations are drawn the same way; time comes
from an injectable ``clock`` (seconds), so tests control ordering without sleeping.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from agent.lab.base import LabAdapter, LabRequest, LabRequestError, LabResult, LabStatus, LabTicket, UnknownTicketError

if TYPE_CHECKING:
    from sim_backends.landscape import LandscapeEntry

R_KJMOL_K = 0.008314462618  # gas constant, kJ/(mol K)


@dataclass(frozen=True)
class MethodModel:
    """How a crystallisation method maps onto the outcome model.

    Attributes:
        t_factor: effective temperature / experiment temperature.
        kinetic_sd_kjmol: standard deviation of the kinetic noise (kJ/mol).
        p_no_crystals: probability that nothing crystallises.
        p_amorphous: probability of an amorphous product.
        p_mixture: probability of a concomitant two-form product.
    """

    t_factor: float
    kinetic_sd_kjmol: float
    p_no_crystals: float
    p_amorphous: float
    p_mixture: float


METHOD_MODELS: dict[str, MethodModel] = {
    "slurry": MethodModel(1.0, 0.5, 0.02, 0.01, 0.05),
    "slow_evaporation": MethodModel(1.5, 1.5, 0.08, 0.03, 0.12),
    "cooling": MethodModel(2.0, 2.5, 0.10, 0.08, 0.15),
    "sublimation": MethodModel(1.8, 2.0, 0.05, 0.02, 0.10),
    # solvent-free growth from the neat liquid: modelled like growth from the vapour
    "cryocrystallisation": MethodModel(1.8, 2.0, 0.05, 0.02, 0.10),
}


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "little")


#: the end of a campaign's request id, ``<campaign>-m<molecule id>-<n>`` (:mod:`agent.stages.lab`)
_CAMPAIGN_REQUEST_ID = re.compile(r"-m[0-9]+-([0-9]+)$")


def draw_key(request: LabRequest) -> tuple[str, ...]:
    """What seeds the random draws of ``request`` (with the lab seed).

    A campaign's request ``<campaign>-m<molecule id>-<n>``: ``("molecule", SMILES, n)``,
    so two campaigns of the same config and seed under different names (or with the
    molecule at another place of the pool) get the same outcomes. Any other request id:
    ``(request_id,)``, the seeding the lab always had. The request carries all of it, so
    a lab server (:mod:`agent.lab.server`) draws the same without a protocol change.
    """
    match = _CAMPAIGN_REQUEST_ID.search(request.request_id)
    if match is None:
        return (request.request_id,)
    return ("molecule", request.smiles, str(int(match.group(1))))


@dataclass
class _Experiment:
    ticket: LabTicket
    request: LabRequest
    submitted_s: float
    queue_s: float
    run_s: float
    cancelled: bool = False
    status: LabStatus | None = None  # cached terminal status


class SimulatedLab(LabAdapter):
    """A lab robot simulated on a predicted landscape of one (or several) molecules.

    Args:
        landscape: candidate structures of the molecule, or a mapping
            SMILES -> candidates for several molecules.
        seed: lab seed; with the request's :func:`draw_key` it fixes every draw of an
            experiment.
        queue_delay_s: (low, high) uniform time an experiment waits before it runs.
        run_delay_s: (low, high) uniform running time.
        clock: time source in seconds (default ``time.monotonic``); inject a fake
            clock in tests.
        noise_level: PXRD noise level ("low", "default", "high").
        smiles: if given (with a list landscape), requests for other molecules fail.
        failure_scale: multiplies the no-crystal / amorphous probabilities (0 turns
            failures off, e.g. for benchmarks of identification).
        energy_window_kjmol: only forms within this of the landscape's minimum
            crystallise.

    Raises:
        LabRequestError: empty landscape.
    """

    name: ClassVar[str] = "simulated"
    reaches_hardware: ClassVar[bool] = False
    takes_landscape: ClassVar[bool] = True

    def __init__(
        self,
        landscape: Sequence[LandscapeEntry] | Mapping[str, Sequence[LandscapeEntry]],
        seed: int = 0,
        queue_delay_s: tuple[float, float] = (0.0, 1.0),
        run_delay_s: tuple[float, float] = (1.0, 5.0),
        clock: Callable[[], float] | None = None,
        noise_level: str = "default",
        smiles: str | None = None,
        failure_scale: float = 1.0,
        energy_window_kjmol: float = 7.2,
    ) -> None:
        from agent.lab.pxrd import conditions

        if isinstance(landscape, Mapping):
            self._landscapes = {k: list(v) for k, v in landscape.items()}
        else:
            self._landscapes = {smiles or "*": list(landscape)}
        if not self._landscapes or any(not v for v in self._landscapes.values()):
            raise LabRequestError("simulated lab needs a non-empty landscape")
        conditions(noise_level)  # validates
        self.seed = int(seed)
        self.queue_delay_s = queue_delay_s
        self.run_delay_s = run_delay_s
        self.clock = clock or time.monotonic
        self.noise_level = noise_level
        self.failure_scale = float(failure_scale)
        if not float(energy_window_kjmol) >= 0.0:
            raise LabRequestError(f"energy_window_kjmol must be >= 0, got {energy_window_kjmol!r}")
        self.energy_window_kjmol = float(energy_window_kjmol)
        self._experiments: dict[str, _Experiment] = {}
        self._lock = threading.Lock()

    def add_molecule(self, smiles: str, candidates: Sequence[LandscapeEntry]) -> None:
        """Serve requests for ``smiles`` from ``candidates`` (kept when already set)."""
        if not candidates:
            raise LabRequestError(f"no candidate forms for {smiles!r}")
        with self._lock:
            self._landscapes.setdefault(smiles, list(candidates))

    # -- the outcome model -------------------------------------------------------------
    def _landscape_for(self, smiles: str) -> list[LandscapeEntry]:
        if smiles in self._landscapes:
            return self._landscapes[smiles]
        if "*" in self._landscapes:
            return self._landscapes["*"]
        raise LabRequestError(f"the simulated lab has no landscape for {smiles!r}")

    def outcome_probabilities(self, request: LabRequest, kinetic_noise: Sequence[float] | None = None) -> list[float]:
        """Probabilities over the landscape's forms for ``request`` (sum to 1).

        Args:
            request: the experiment.
            kinetic_noise: per-form kinetic offsets (kJ/mol); zeros if None.
        """
        import numpy as np

        entries = self._landscape_for(request.smiles)
        model = METHOD_MODELS[request.method]
        g = np.array([e.ranking_energy_kjmol for e in entries], float)
        bias = np.array(
            [np.random.default_rng(_seed("solvent", request.solvent, e.id)).normal(0.0, 1.0) for e in entries]
        )
        k = np.zeros(len(entries)) if kinetic_noise is None else np.asarray(kinetic_noise, float)
        x = -(g + bias + k) / (R_KJMOL_K * request.temperature_K * model.t_factor)
        x[g - g.min() > self.energy_window_kjmol] = -np.inf
        w = np.exp(x - x[np.isfinite(x)].max())
        return list(w / w.sum())

    def draw_outcome(self, request: LabRequest) -> dict[str, Any]:
        """The experiment's outcome (deterministic in the seed and :func:`draw_key`).

        Returns:
            ``{"outcome": "refused" | "no_crystals" | "amorphous" | "crystalline" |
            "mixture", "forms": [(structure_id, fraction), ...]}``, with ``"reason"``
            when refused.
        """
        import numpy as np

        from agent.lab.substances import crystallisation_problem

        entries = self._landscape_for(request.smiles)
        problem = crystallisation_problem(request.smiles, request.method, request.solvent, request.temperature_K)
        if problem is not None:
            return {"outcome": "refused", "forms": [], "reason": problem}
        model = METHOD_MODELS[request.method]
        rng = np.random.default_rng(_seed(self.seed, "outcome", *draw_key(request)))
        u = rng.uniform()
        if u < model.p_no_crystals * self.failure_scale:
            return {"outcome": "no_crystals", "forms": []}
        if u < (model.p_no_crystals + model.p_amorphous) * self.failure_scale:
            return {"outcome": "amorphous", "forms": []}
        p = np.asarray(self.outcome_probabilities(request, rng.normal(0.0, model.kinetic_sd_kjmol, len(entries))))
        first = int(rng.choice(len(entries), p=p))
        if np.count_nonzero(p) > 1 and rng.uniform() < model.p_mixture:
            rest = p.copy()
            rest[first] = 0.0
            second = int(rng.choice(len(entries), p=rest / rest.sum()))
            minor = float(rng.uniform(0.2, 0.45))
            forms = [(entries[first].id, 1 - minor), (entries[second].id, minor)]
            return {"outcome": "mixture", "forms": forms}
        return {"outcome": "crystalline", "forms": [(entries[first].id, 1.0)]}

    def run_experiment(self, request: LabRequest) -> LabStatus:
        """Carry out ``request`` now: draw the outcome and measure it."""
        import numpy as np

        from agent.lab.pxrd import simulate_amorphous, simulate_pxrd

        drawn = self.draw_outcome(request)
        rng = np.random.default_rng(_seed(self.seed, "measure", *draw_key(request)))
        meta: dict[str, Any] = {
            "method": request.method, "solvent": request.solvent, "temperature_K": request.temperature_K,
            "lab": "simulated", "noise_level": self.noise_level,
        }
        if drawn["outcome"] == "refused":
            return LabStatus("failed", reason=f"refused: {drawn['reason']}")
        if drawn["outcome"] == "no_crystals":
            return LabStatus("failed", reason=f"no crystals formed ({request.method}, {request.solvent or 'no solvent'})")
        if drawn["outcome"] == "amorphous":
            x, y, info = simulate_amorphous(rng, self.noise_level)
            meta["simulated_truth"] = {"outcome": "amorphous", "forms": []}
            return LabStatus("done", LabResult(request.request_id, "amorphous", tuple(x), tuple(y), metadata=meta))
        by_id = {e.id: e for e in self._landscape_for(request.smiles)}
        phases = [(by_id[sid].structure, frac) for sid, frac in drawn["forms"]]
        x, y, info = simulate_pxrd(phases, rng, self.noise_level, temperature_K=request.temperature_K)
        props: dict[str, float] = {}
        if "density_gcm3" in request.measure:
            # measured density of the product: volume-weighted over phases, thermally
            # expanded as in the PXRD draw, +-0.5 % flotation error
            vols = [float(np.prod(ph["expansion"])) for ph in info["phases"]]
            dens = sum(frac * by_id[sid].structure.density / v for (sid, frac), v in zip(drawn["forms"], vols))
            props["density_gcm3"] = float(dens * (1 + rng.normal(0.0, 0.005)))
        meta["simulated_truth"] = {
            "outcome": drawn["outcome"],
            "forms": [[sid, frac] for sid, frac in drawn["forms"]],
            "zero_shift_deg": info["zero_shift_deg"],
            "expansion": [ph["expansion"] for ph in info["phases"]],
        }
        result = LabResult(request.request_id, drawn["outcome"], tuple(float(v) for v in x), tuple(float(v) for v in y), properties=props, metadata=meta)
        return LabStatus("done", result)

    def durations_s(self, request: LabRequest) -> tuple[float, float]:
        """(queue, run) durations of the experiment in seconds (deterministic)."""
        import numpy as np

        rng = np.random.default_rng(_seed(self.seed, "delay", *draw_key(request)))
        return float(rng.uniform(*self.queue_delay_s)), float(rng.uniform(*self.run_delay_s))

    # -- the adapter protocol ----------------------------------------------------------
    def submit(self, request: LabRequest) -> LabTicket:
        """Queue ``request``; :class:`LabRequestError` (one line) at once for a molecule
        without landscape or conditions the physics forbids."""
        from agent.lab.substances import crystallisation_problem

        if not isinstance(request, LabRequest):
            raise LabRequestError(f"submit needs a LabRequest, got {type(request).__name__}")
        self._landscape_for(request.smiles)
        problem = crystallisation_problem(request.smiles, request.method, request.solvent, request.temperature_K)
        if problem is not None:
            raise LabRequestError(f"refused: {problem}")
        with self._lock:
            exp = self._experiments.get(request.request_id)
            if exp is not None:
                if exp.request != request:
                    raise LabRequestError(f"request_id {request.request_id!r} was already used for a different request")
                return exp.ticket
            ticket = LabTicket(f"sim-{request.request_id}", request.request_id, self.name)
            queue_s, run_s = self.durations_s(request)
            self._experiments[request.request_id] = _Experiment(ticket, request, self.clock(), queue_s, run_s)
            return ticket

    def _get(self, ticket: LabTicket) -> _Experiment:
        exp = self._experiments.get(getattr(ticket, "request_id", None))  # type: ignore[arg-type]
        if exp is None or exp.ticket != ticket:
            raise UnknownTicketError(f"unknown ticket {ticket!r}")
        return exp

    def poll(self, ticket: LabTicket) -> LabStatus:
        with self._lock:
            exp = self._get(ticket)
            if exp.status is not None:
                return exp.status
            if exp.cancelled:
                return LabStatus("cancelled", reason="cancelled by request")
            elapsed = self.clock() - exp.submitted_s
            if elapsed < exp.queue_s:
                return LabStatus("queued")
            if elapsed < exp.queue_s + exp.run_s:
                return LabStatus("running")
            request = exp.request
        status = self.run_experiment(request)  # outside the lock: takes ~0.1 s
        with self._lock:
            if exp.status is None:
                exp.status = status
            return exp.status

    def cancel(self, ticket: LabTicket) -> LabStatus:
        with self._lock:
            exp = self._get(ticket)
            if exp.status is None and not exp.cancelled:
                if self.clock() - exp.submitted_s < exp.queue_s + exp.run_s:
                    exp.cancelled = True
                    exp.status = LabStatus("cancelled", reason="cancelled by request")
        return self.poll(ticket)

    def health(self) -> dict[str, Any]:
        with self._lock:
            n_open = sum(1 for e in self._experiments.values() if e.status is None)
        return {
            "ok": True, "adapter": self.name, "n_experiments": len(self._experiments), "n_open": n_open,
            "molecules": sorted(self._landscapes), "n_forms": {k: len(v) for k, v in self._landscapes.items()},
        }

"""Convergence-driven CSP sampling: when to stop drawing trials, and where to draw them.

A CSP search samples each space group in rounds. After every round the polished
(full-model) minima of each space group are merged into that group's list of unique
minima (the same StructureMatcher test as the landscape dedupe), and each unique
minimum counts the trials that ended in it. The *low-energy region* is every minimum
within :attr:`ConvergenceCriteria.window_kjmol` of the global minimum found so far
(over all space groups). A space group is converged when it has had at least
``min_trials`` trials and either

* every low-energy minimum found in it has been found at least ``min_count`` times AND
  its most recent rounds covering at least ``round_trials`` trials (one full round) found
  no new low-energy minimum, or
* the rate of new low-energy minima is below ``max_new_rate`` per trial, measured over
  its most recent rounds covering at least ``rate_trials`` trials.

The counts alone are not enough: in a group's first 130-190 trials every low minimum is
new, and a few of them can each have been hit 3 times while one trial in 20 still finds
another new low minimum (newuser46a #4). Requiring a quiet round of ``round_trials``
trials bounds the new-minimum rate (zero of 64: below 3/64 per trial at 95 %) on top of
the counts, which are what says the known minima's basins have been sampled.

Unconverged groups share the next round's trials (``round_trials`` times the number of
searched groups, capped by what is left of the budget) in proportion to ``1 + the
number of new low-energy minima they found in their last round``, so groups where new
low minima keep appearing get more trials. The search ends when every group is
converged (``stopped_by = "converged"``) or the trial budget is spent first
(``"budget"``; the landscape is then not known to be converged and callers warn).

:meth:`ConvergenceTracker.summary` is what the landscape records under
``meta["convergence"]``: the criteria, ``stopped_by``, and per space group its trials,
rounds, low-energy minima with their counts (lowest first), the recent new-minima rate,
whether and why it counts as converged.

Importing this module is cheap (pymatgen is imported inside the dedupe helpers).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from sim_backends.csp.dedupe import Candidate, merge_candidate


@dataclass(frozen=True)
class ConvergenceCriteria:
    """When a space group's low-energy region counts as converged (module docstring).

    Attributes:
        window_kjmol: the low-energy region, kJ/mol per molecule above the global minimum.
        min_count: every low-energy minimum found at least this many times, and none new
            in the last ``round_trials`` trials (or more: whole rounds), or ...
        max_new_rate: ... fewer new low-energy minima per trial than this over the last
            ``rate_trials`` trials (or more: whole rounds) of the group.
        rate_trials: trials the new-minima rate is measured over.
        min_trials: trials a group has at least before it can count as converged.
        round_trials: trials per space group in a round (the first round; later rounds
            redistribute ``round_trials`` x number of groups over the unconverged ones), and
            the trials without a new low-energy minimum the ``min_count`` test needs.
    """

    window_kjmol: float = 5.0
    min_count: int = 3
    max_new_rate: float = 0.005
    rate_trials: int = 256
    min_trials: int = 128
    round_trials: int = 64

    def validate(self) -> None:
        """Refuse meaningless criteria (one-line ValueError naming the field)."""
        for name in ("min_count", "rate_trials", "min_trials", "round_trials"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"convergence {name} must be an integer >= 1, got {v!r}")
        for name in ("window_kjmol", "max_new_rate"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"convergence {name} must be a finite number > 0, got {v!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ConvergenceCriteria:
        """Criteria from a dict of field overrides; unknown keys are a ValueError."""
        d = dict(d or {})
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown convergence setting {unknown[0]!r}; known: "
                             f"{', '.join(cls.__dataclass_fields__)}")
        crit = cls(**d)
        crit.validate()
        return crit


@dataclass
class _Tracked:
    """One unique minimum of a space group: its representative and when it was first found."""

    cand: Candidate
    first_round: int


@dataclass
class _Group:
    symbol: str
    minima: list[_Tracked] = field(default_factory=list)
    round_trials: list[int] = field(default_factory=list)   # trials per round of this group
    round_index: list[int] = field(default_factory=list)    # global round number of each


class ConvergenceTracker:
    """Per-space-group bookkeeping of a CSP search (see the module docstring).

    Args:
        groups: the searched space-group symbols.
        criteria: the convergence criteria.
    """

    #: minima kept for bookkeeping: up to this far (kJ/mol) above the window, because the
    #: global minimum can still drop
    MARGIN_KJMOL = 1.0

    def __init__(self, groups: list[str], criteria: ConvergenceCriteria) -> None:
        self.criteria = criteria
        self.groups = {g: _Group(g) for g in groups}
        self.n_rounds = 0
        self.e_global = math.inf
        self.stopped_by = ""

    # -- input ---------------------------------------------------------------------------
    def add_round(self, trials: dict[str, int], minima: dict[str, list[Candidate]]) -> None:
        """Record one round: ``trials[g]`` trials drawn in group g, which ended in the
        polished minima ``minima[g]`` (Candidates with their multiplicities: trials each)."""
        r = self.n_rounds
        self.n_rounds += 1
        for cands in minima.values():
            for c in cands:
                if math.isfinite(c.energy_kjmol):
                    self.e_global = min(self.e_global, c.energy_kjmol)
        e_keep = self.e_global + self.criteria.window_kjmol + self.MARGIN_KJMOL
        for g, n in trials.items():
            if n <= 0:
                continue
            grp = self.groups[g]
            grp.round_trials.append(int(n))
            grp.round_index.append(r)
            kept = [t.cand for t in grp.minima]
            for c in sorted(minima.get(g, []), key=lambda c: c.energy_kjmol):
                if not c.energy_kjmol <= e_keep:
                    continue
                if merge_candidate(kept, c) is None:
                    kept.append(c)
                    grp.minima.append(_Tracked(c, r))

    # -- state ---------------------------------------------------------------------------
    def low_minima(self, g: str) -> list[_Tracked]:
        """Minima of group g in the low-energy window of the current global minimum."""
        cut = self.e_global + self.criteria.window_kjmol
        return sorted((t for t in self.groups[g].minima if t.cand.energy_kjmol <= cut),
                      key=lambda t: t.cand.energy_kjmol)

    def n_trials(self, g: str) -> int:
        return sum(self.groups[g].round_trials)

    def recent_new(self, g: str, trials: int) -> tuple[int, int]:
        """(new low-energy minima, trials) of the group's latest rounds covering at least
        ``trials`` trials (all its rounds if it has fewer)."""
        grp = self.groups[g]
        n, rounds = 0, set()
        for k in range(len(grp.round_trials) - 1, -1, -1):
            n += grp.round_trials[k]
            rounds.add(grp.round_index[k])
            if n >= trials:
                break
        return sum(t.first_round in rounds for t in self.low_minima(g)), n

    def new_rate(self, g: str) -> tuple[float, int]:
        """(new low-energy minima per trial, trials it is measured over) over the group's
        latest rounds covering at least ``rate_trials`` trials (fewer if it has fewer)."""
        new, n = self.recent_new(g, self.criteria.rate_trials)
        if n == 0:
            return math.nan, 0
        return new / n, n

    def new_in_last_round(self, g: str) -> int:
        grp = self.groups[g]
        if not grp.round_index:
            return 0
        last = grp.round_index[-1]
        return sum(t.first_round == last for t in self.low_minima(g))

    def status(self, g: str) -> dict[str, Any]:
        """Convergence state of group g (JSON-able): ``n_trials, n_rounds, n_low_minima,
        counts`` (trials per low-energy minimum, lowest first), ``low_energies_kjmol``,
        ``min_count``, ``new_low_rate_per_trial``, ``rate_over_trials``, ``converged``,
        ``reason``."""
        c = self.criteria
        low = self.low_minima(g)
        counts = [int(t.cand.multiplicity) for t in low]
        rate, over = self.new_rate(g)
        n = self.n_trials(g)
        all_k = all(k >= c.min_count for k in counts)
        # the counts test also needs a full round (round_trials trials) with no new low minimum
        q_new, q_over = self.recent_new(g, c.round_trials)
        quiet = q_over >= c.round_trials and q_new == 0
        slow = over >= c.rate_trials and rate < c.max_new_rate
        rate_text = (f"{rate:.3f} new per trial over the last {over} trials (>= {c.max_new_rate:g})"
                     if over >= c.rate_trials else
                     f"the rate test needs {c.rate_trials} trials, {over} so far")
        if n < c.min_trials:
            converged, reason = False, f"fewer than {c.min_trials} trials"
        elif not low:
            converged = True
            reason = f"no minimum within {c.window_kjmol:g} kJ/mol of the global minimum in {n} trials"
        elif all_k and quiet:
            converged = True
            reason = (f"all {len(low)} minima within {c.window_kjmol:g} kJ/mol found >= {c.min_count} times, "
                      f"none new in the last {q_over} trials")
        elif slow:
            converged, reason = True, (f"{rate * over:.0f} new low-energy minima in the last {over} "
                                       f"trials (< {c.max_new_rate:g} per trial)")
        elif all_k:
            converged = False
            reason = (f"all {len(low)} low-energy minima found >= {c.min_count} times, but {q_new} of them "
                      f"new in the last {q_over} trials (the count test needs {c.round_trials} trials "
                      f"without a new one); {rate_text}")
        else:
            converged = False
            n_rare = sum(k < c.min_count for k in counts)
            reason = f"{n_rare} of {len(low)} low-energy minima found fewer than {c.min_count} times; {rate_text}"
        return {"n_trials": n, "n_rounds": len(self.groups[g].round_trials), "n_low_minima": len(low),
                "counts": counts, "low_energies_kjmol": [round(t.cand.energy_kjmol, 4) for t in low],
                "min_count": min(counts) if counts else None,
                "new_low_rate_per_trial": None if math.isnan(rate) else round(rate, 5),
                "rate_over_trials": over, "converged": converged, "reason": reason}

    def converged(self, g: str) -> bool:
        return bool(self.status(g)["converged"])

    @property
    def all_converged(self) -> bool:
        return all(self.converged(g) for g in self.groups)

    # -- decisions -----------------------------------------------------------------------
    def first_round(self, budget: int) -> dict[str, int]:
        """Trials per group in the first round: ``round_trials`` each, or the budget split
        evenly when it is smaller than that."""
        groups = list(self.groups)
        if budget < self.criteria.round_trials * len(groups):
            return _split(budget, {g: 1.0 for g in groups})
        return {g: self.criteria.round_trials for g in groups}

    def allocate(self, budget_left: int) -> dict[str, int]:
        """Trials per unconverged group in the next round (empty when all are converged or
        no budget is left): ``round_trials`` x groups, capped by ``budget_left``, in
        proportion to 1 + the new low-energy minima of each group's last round."""
        active = [g for g in self.groups if not self.converged(g)]
        if not active or budget_left <= 0:
            return {}
        total = min(budget_left, self.criteria.round_trials * len(self.groups))
        return _split(total, {g: 1.0 + self.new_in_last_round(g) for g in active})

    def summary(self) -> dict[str, Any]:
        """JSON-able record for ``landscape.meta["convergence"]``."""
        per = {g: self.status(g) for g in self.groups}
        return {"criteria": asdict(self.criteria), "stopped_by": self.stopped_by,
                "converged": all(s["converged"] for s in per.values()), "n_rounds": self.n_rounds,
                "global_min_kjmol": None if not math.isfinite(self.e_global) else self.e_global,
                "per_space_group": per}


def _split(total: int, weights: dict[str, float]) -> dict[str, int]:
    """``total`` split in proportion to ``weights`` (largest remainder; zeros dropped)."""
    wsum = sum(weights.values())
    raw = {g: total * w / wsum for g, w in weights.items()}
    out = {g: int(math.floor(v)) for g, v in raw.items()}
    for g in sorted(raw, key=lambda g: (out[g] - raw[g], g))[: total - sum(out.values())]:
        out[g] += 1
    return {g: n for g, n in out.items() if n > 0}


def convergence_lines(conv: dict[str, Any]) -> list[str]:
    """Human-readable lines of a ``meta["convergence"]`` record: one per space group and a
    warning when the budget ended the search before the landscape converged."""
    if not conv:
        return []
    c = conv.get("criteria", {})
    lines = []
    for g, s in conv.get("per_space_group", {}).items():
        counts = s.get("counts") or []
        shown = ",".join(str(k) for k in counts[:8]) + (",..." if len(counts) > 8 else "")
        rate, over = s.get("new_low_rate_per_trial"), s.get("rate_over_trials")
        rate_text = "-" if rate is None else f"{rate:.3f}/trial" + (f" over the last {over} trials" if over else "")
        lines.append(f"  {g:<11} {s['n_trials']:>6} trials, {s['n_low_minima']:>3} minima within "
                     f"{c.get('window_kjmol', '?')} kJ/mol (found x{shown or '-'}), new-minima rate "
                     f"{rate_text}: {'converged' if s['converged'] else 'NOT converged'} ({s['reason']})")
    if warning := convergence_warning(conv):
        lines.append(f"WARNING: {warning}")
    return lines


def convergence_warning(conv: dict[str, Any]) -> str | None:
    """The warning (without its "WARNING: " prefix) of a ``meta["convergence"]`` record
    whose search the trial budget ended before the landscape converged, else None."""
    if not (conv.get("stopped_by") == "budget" and not conv.get("converged")):
        return None
    n_bad = sum(not s["converged"] for s in conv.get("per_space_group", {}).values())
    return (f"the trial budget ended the search before the low-energy region converged "
            f"({n_bad} space group{'s' if n_bad != 1 else ''} not converged); raise --n-trials")


def stopped_by_text(stopped_by: str | None) -> str:
    """What ended a search, in words, for ``meta["convergence"]["stopped_by"]``."""
    return {"converged": "convergence", "budget": "the trial budget",
            "fixed": "the fixed trial budget (sampling = fixed)"}.get(stopped_by or "", str(stopped_by))


def sampling_mode_text(sampling: str | None) -> str:
    """The sampling mode in words (``meta["sampling"]``): "converged" is the mode's setting,
    printed as "convergence-driven" so that it does not read as a verdict beside "stopped by the
    trial budget" (newuser46a #9)."""
    return {"converged": "convergence-driven", "fixed": "fixed"}.get(sampling or "", str(sampling))

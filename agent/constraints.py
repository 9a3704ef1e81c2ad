"""Feasibility constraints on molecule-level values (``[[constraints]]`` in the config).

A constraint names a value some molecule-level backend computes (``value``) and bounds
it (``max`` and/or ``min``, in that value's unit), with a reason a chemist would give
(``why``), e.g. a hole-transport campaign's hole injection::

    [[constraints]]
    value = "ip_gas_ev"
    max = 7.5
    why = "hole injection from gold"

Contract:

* **Which value counts.** A molecule's value is the one its most accurate successful
  molecule-level result reports: the highest-fidelity level that reports it (the first
  such result if there are several). An evaluation that does not report the value says
  nothing; a molecule without the value yet is feasible until a result says otherwise.
* **Infeasible** = that value outside a bound. An infeasible molecule keeps its results
  (the surrogate still learns from them) but is never the campaign's best, never given
  CSP by the structure stage, and is listed with its reason by ``status``. A more accurate
  level can overturn a cheaper one's verdict either way.
* **Proposals** (the molecule stage). A backend may declare the typical error of a value
  (``value_sd``, e.g. the IP calibration's leave-one-out RMSE). When a higher level of
  the campaign reports the same value with a smaller error, a cheap verdict is not final:
  the molecule's probability of lying within the bounds, p = Phi((max - v) / sd) (and the
  same for ``min``), weights its acquisition (its cost is divided by p: expected
  improvement times the probability of feasibility, i.e. constrained EI, Gardner et al.,
  ICML 2014), and an infeasible molecule stays open to those levels while p >=
  :data:`P_FEASIBLE_MIN`. Otherwise (no such level, or p below it) an infeasible molecule is
  never proposed again, and a feasible one is weighted 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.config import ConstraintConfig

#: an infeasible molecule stays open to a more accurate level that reports the constrained
#: value while its probability of lying within the bounds is at least this (module docstring)
P_FEASIBLE_MIN = 0.05


def feasibility_probability(values: Mapping[str, tuple[float, float]],
                            constraints: Sequence[ConstraintConfig]) -> float:
    """Probability that every constrained value lies within its bounds, each value
    normal with mean and sd ``values[key] = (value, sd)`` (sd 0: the value is exact);
    constraints on values not in ``values`` count as met."""
    import math

    p = 1.0
    for c in constraints:
        if c.value not in values:
            continue
        v, sd = values[c.value]
        for bound, side in ((c.max, 1.0), (c.min, -1.0)):
            if bound is None:
                continue
            margin = side * (bound - v)
            p *= (1.0 if margin >= 0 else 0.0) if sd <= 0 else 0.5 * math.erfc(-margin / (sd * math.sqrt(2.0)))
    return p


def violation(values: Mapping[str, Any], constraints: Sequence[ConstraintConfig]) -> str | None:
    """The first constraint ``values`` break, as a one-line reason (value and bound with
    their unit, why), e.g. ``ip_gas_ev = 8.25 eV > 7.5 eV (hole injection)``; None when
    they break none (or report none of the constrained values). The level of theory of the
    value is not in it (the molecule stage's verdicts, which know no backend, must read the
    same): ``status`` names the levels once (:func:`constraint_levels`)."""
    import math

    from agent.summary import quantity

    for c in constraints:
        v = values.get(c.value)
        if v is None or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            continue
        v = float(v)
        why = f" ({c.why})" if c.why else ""
        unit = f" {u}" if (u := quantity(c.value)[2]) else ""
        if c.max is not None and v > c.max:
            return f"{c.value} = {_beyond(v, c.max)}{unit} > {c.max:g}{unit}{why}"
        if c.min is not None and v < c.min:
            return f"{c.value} = {_beyond(v, c.min)}{unit} < {c.min:g}{unit}{why}"
    return None


def value_level(backend: str, key: str) -> tuple[str, float | None]:
    """The level of theory and typical error (sd in the value's unit; None when not
    declared) of value ``key`` as ``backend`` reports it: the backend's ``value_levels``
    and ``value_sd`` (a replay's: those of the level it replays, ``estimated_as``);
    ``("", None)`` when it declares no level for ``key``."""
    from sim_backends.registry import UnknownBackendError, backend_class

    name = backend
    for _ in range(2):  # the backend, then the level a replay stands for
        try:
            cls = backend_class(name)
        except UnknownBackendError:
            return "", None
        if key in cls.value_levels:
            sd = cls.value_sd.get(key)
            return cls.value_levels[key], None if sd is None else float(sd)
        name = str(getattr(cls, "estimated_as", "") or "")
        if not name:
            break
    return "", None


def constraint_levels(backends: Iterable[str], constraints: Sequence[ConstraintConfig]) -> dict[str, list[str]]:
    """Constrained value -> the levels of theory (:func:`value_level`) the campaign's
    ``backends`` (names, cheapest first) report it at, each once; values no backend declares
    a level for are left out."""
    out: dict[str, list[str]] = {}
    for key in dict.fromkeys(c.value for c in constraints):
        levels = list(dict.fromkeys(lv for b in backends if (lv := value_level(b, key)[0])))
        if levels:
            out[key] = levels
    return out


def _beyond(v: float, bound: float) -> str:
    """``v`` with the fewest significant digits (3 to 8) that keep it visibly past ``bound``."""
    for digits in range(3, 9):
        text = f"{v:.{digits}g}"
        if float(text) != float(f"{bound:g}"):
            return text
    return repr(v)


def describe(constraints: Sequence[ConstraintConfig]) -> str:
    """``ip_gas_ev <= 7.5 eV (hole injection from Au)``; bounds joined by ``; ``."""
    from agent.summary import quantity

    parts = []
    for c in constraints:
        unit = f" {u}" if (u := quantity(c.value)[2]) else ""
        lo = f"{c.min:g}{unit} <= " if c.min is not None else ""
        hi = f" <= {c.max:g}{unit}" if c.max is not None else ""
        parts.append(f"{lo}{c.value}{hi}" + (f" ({c.why})" if c.why else ""))
    return "; ".join(parts)


def infeasible_molecules(evaluations: Iterable[Any], constraints: Sequence[ConstraintConfig]) -> dict[int, str]:
    """Molecule id -> reason, from stored evaluations (objects with ``molecule_id``,
    ``structure_id``, ``fidelity``, ``ok`` and ``values``): the molecules whose counted
    values (:func:`constrained_values`) break a constraint (module docstring)."""
    out: dict[int, str] = {}
    if not constraints:
        return out
    for mid, vals in constrained_values(evaluations, (c.value for c in constraints)).items():
        if (reason := violation(vals, constraints)) is not None:
            out[mid] = reason
    return out


def constrained_sources(evaluations: Iterable[Any], keys: Iterable[str]) -> dict[int, dict[str, tuple[float, int, str]]]:
    """Molecule id -> key -> (value, fidelity, backend) of the result that counts for it:
    the highest-fidelity successful molecule-level result that reports the key, the first
    of those (module docstring)."""
    import math

    keys = list(dict.fromkeys(keys))
    out: dict[int, dict[str, tuple[float, int, str]]] = {}
    if not keys:
        return out
    for ev in evaluations:
        if ev.structure_id is not None or not ev.ok:
            continue
        for k in keys:
            v = ev.values.get(k)
            if v is None or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                continue
            mol = out.setdefault(int(ev.molecule_id), {})
            if k not in mol or int(ev.fidelity) > mol[k][1]:
                mol[k] = (float(v), int(ev.fidelity), str(ev.backend))
    return out


def constrained_values(evaluations: Iterable[Any], keys: Iterable[str]) -> dict[int, dict[str, float]]:
    """Molecule id -> each of ``keys`` as the result that counts reports it
    (:func:`constrained_sources`)."""
    return {m: {k: v[0] for k, v in d.items()} for m, d in constrained_sources(evaluations, keys).items()}

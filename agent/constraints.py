"""Feasibility constraints on molecule-level values (``[[constraints]]`` in the config).

A constraint names a value some molecule-level backend computes (``value``) and bounds
it (``max`` and/or ``min``, in that value's unit), with a reason a chemist would give
(``why``), e.g. a hole-transport campaign's hole injection::

    [[constraints]]
    value = "ip_gas_ev"
    max = 7.5
    why = "hole injection from gold"

Contract: a molecule is infeasible as soon as any successful evaluation of it, at any
level, reports the value outside its bounds (a value is a property of the molecule, so
the first level that computes it decides; an evaluation that does not report the value
says nothing). An infeasible molecule keeps its results (the surrogate still learns
from them) but is never proposed again, never the campaign's best, never given CSP by
the structure stage, and is listed with its reason by ``status``. A molecule without the
value yet is feasible until a result says otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.config import ConstraintConfig


def violation(values: Mapping[str, Any], constraints: Sequence[ConstraintConfig]) -> str | None:
    """The first constraint ``values`` break, as a one-line reason (value, bound, why);
    None when they break none (or report none of the constrained values)."""
    import math

    for c in constraints:
        v = values.get(c.value)
        if v is None or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            continue
        v = float(v)
        why = f" ({c.why})" if c.why else ""
        if c.max is not None and v > c.max:
            return f"{c.value} = {_beyond(v, c.max)} > {c.max:g}{why}"
        if c.min is not None and v < c.min:
            return f"{c.value} = {_beyond(v, c.min)} < {c.min:g}{why}"
    return None


def _beyond(v: float, bound: float) -> str:
    """``v`` with the fewest significant digits (3 to 8) that keep it visibly past ``bound``."""
    for digits in range(3, 9):
        text = f"{v:.{digits}g}"
        if float(text) != float(f"{bound:g}"):
            return text
    return repr(v)


def describe(constraints: Sequence[ConstraintConfig]) -> str:
    """``ip_gas_ev <= 7.5 (hole injection from Au)``; bounds joined by ``; ``."""
    parts = []
    for c in constraints:
        lo = f"{c.min:g} <= " if c.min is not None else ""
        hi = f" <= {c.max:g}" if c.max is not None else ""
        parts.append(f"{lo}{c.value}{hi}" + (f" ({c.why})" if c.why else ""))
    return "; ".join(parts)


def infeasible_molecules(evaluations: Iterable[Any], constraints: Sequence[ConstraintConfig]) -> dict[int, str]:
    """Molecule id -> reason, from stored evaluations (objects with ``molecule_id``,
    ``structure_id``, ``ok`` and ``values``): the first violating molecule-level result of
    each molecule (module docstring)."""
    out: dict[int, str] = {}
    if not constraints:
        return out
    for ev in evaluations:
        if ev.structure_id is not None or not ev.ok or ev.molecule_id in out:
            continue
        reason = violation(ev.values, constraints)
        if reason is not None:
            out[int(ev.molecule_id)] = reason
    return out


def constrained_values(evaluations: Iterable[Any], keys: Iterable[str]) -> dict[int, dict[str, float]]:
    """Molecule id -> each of ``keys`` as the molecule's first successful molecule-level
    result reports it (stored evaluations, as :func:`infeasible_molecules` reads them)."""
    keys = list(dict.fromkeys(keys))
    out: dict[int, dict[str, float]] = {}
    if not keys:
        return out
    for ev in evaluations:
        if ev.structure_id is not None or not ev.ok:
            continue
        for k in keys:
            if k in ev.values:
                out.setdefault(int(ev.molecule_id), {}).setdefault(k, float(ev.values[k]))
    return out


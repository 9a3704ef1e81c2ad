"""Declared backend parameters, checked before anything is created or run.

A backend declares the parameters it reads as ``params_schema`` (see
:class:`sim_backends.base.Backend`): a mapping from each parameter name to a check, a
callable that takes the value and raises ``ValueError`` (or ``TypeError``) with a short
reason naming the value. :func:`check_schema` refuses a key the schema does not list and
a value its check rejects, with a one-line :class:`~sim_backends.base.ParamsError` that
names the key; a nested check (e.g. the phonon backend's ``force_params``) that raises
``ParamsError`` itself gets its key prefixed (``force_params.method``). Checks across
several keys (``n_trials`` against ``max_trials``) belong in the backend's
``check_params`` override.

The checks here are the building blocks: integers and real numbers in closed or open
ranges (booleans are not numbers, floats must be finite), booleans, one of fixed
choices, strings, and names PySCF knows (exchange-correlation functionals through
libxc, Gaussian basis sets). The PySCF checks import PySCF (a few seconds) only when a
config names a DFT parameter. Importing this module is cheap.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from sim_backends.base import ParamsError, SetupError

#: a parameter check: raises ValueError/TypeError (or ParamsError for nested keys) if bad
Check = Callable[[Any], None]


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def is_integer(value: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(lo: int, hi: int | None = None) -> Check:
    """An integer in ``[lo, hi]`` (no upper bound when ``hi`` is None)."""
    span = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"

    def check(value: Any) -> None:
        if not is_integer(value) or value < lo or (hi is not None and value > hi):
            raise ValueError(f"must be an integer {span}, got {_shown(value)}")
    return check


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> Check:
    """A finite real number with ``lo <= x`` (``lo < x`` if ``lo_open``) and ``x <= hi``."""
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"<= {hi:g}")
    span = " and ".join(parts)

    def check(value: Any) -> None:
        ok = is_real(value) and (lo is None or (value > lo if lo_open else value >= lo)) \
            and (hi is None or value <= hi)
        if not ok:
            raise ValueError(f"must be a finite number{' ' + span if span else ''}, got {_shown(value)}")
    return check


def boolean(value: Any) -> None:
    """true or false."""
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {_shown(value)}")


def one_of(*choices: Any) -> Check:
    """One of ``choices`` (compared with ==, booleans only equal to booleans)."""
    def check(value: Any) -> None:
        if not any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in choices):
            raise ValueError(f"must be one of {', '.join(_shown(c) for c in choices)}; got {_shown(value)}")
    return check


def text(value: Any) -> None:
    """A non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, got {_shown(value)}")


def space_groups(value: Any) -> None:
    """Space groups as one comma-separated string (``"P2_1/c,P-1"``), each one CSP supports."""
    text(value)
    from sim_backends.csp.spacegroups import parse_space_groups

    parse_space_groups(value)


def table(value: Any) -> None:
    """A table (dict) with string keys, e.g. another backend's parameters."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"must be a table of named values, got {_shown(value)}")


def strings(value: Any) -> None:
    """A list of non-empty strings."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"must be a list of non-empty strings, got {_shown(value)}")


def integers(n: int, lo: int = 1, hi: int | None = None) -> Check:
    """A list of ``n`` integers, each in ``[lo, hi]``."""
    each = integer(lo, hi)

    def check(value: Any) -> None:
        if not isinstance(value, (list, tuple)) or len(value) != n:
            raise ValueError(f"must be a list of {n} integers, got {_shown(value)}")
        for v in value:
            each(v)
    return check


def either(*checks: Check, reason: str) -> Check:
    """Accepted by any of ``checks``; else ``reason`` (with the value) is the error."""
    def check(value: Any) -> None:
        for c in checks:
            try:
                c(value)
                return
            except (ValueError, TypeError):
                continue
        raise ValueError(f"{reason}, got {_shown(value)}")
    return check


def optional(check: Check) -> Check:
    """None (the backend's default) or a value ``check`` accepts."""
    def check_optional(value: Any) -> None:
        if value is not None:
            check(value)
    return check_optional


def xc_functional(value: Any) -> None:
    """An exchange-correlation functional PySCF's libxc interface can parse ("b3lyp")."""
    text(value)
    from pyscf.dft import libxc

    try:
        libxc.parse_xc(value)
    except Exception:  # noqa: BLE001 - libxc raises KeyError/ValueError/AssertionError
        raise ValueError(f"{_shown(value)} is not a functional PySCF (libxc) knows") from None


def basis_set(value: Any) -> None:
    """A Gaussian basis set PySCF has for H and C (every organic molecule has both)."""
    text(value)
    from pyscf.gto import basis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "install basis-set-exchange" hint for unknown names
        try:
            for element in ("H", "C"):
                if not basis.load(value, element):
                    raise ValueError
        except Exception:  # noqa: BLE001 - BasisNotFoundError, KeyError, ...
            raise ValueError(f"{_shown(value)} is not a basis set PySCF has for H and C") from None


def check_schema(backend: str, schema: Mapping[str, Check], params: Mapping[str, Any]) -> None:
    """Refuse a key ``schema`` does not list or a value its check rejects.

    Raises:
        ParamsError: naming the key (the first unknown one, in sorted order, or the first
            bad value in the schema's order) and the reason, on one line.
    """
    unknown = sorted(set(params) - set(schema))
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], list(schema), n=1, cutoff=0.75)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ParamsError(unknown[0], f"unknown {backend} parameter; {hint}known: {', '.join(sorted(schema))}")
    for key, check in schema.items():
        if key not in params:
            continue
        try:
            check(params[key])
        except ParamsError as exc:
            raise ParamsError(f"{key}.{exc.key}", exc.reason) from None
        except (ValueError, TypeError, SetupError) as exc:
            raise ParamsError(key, " ".join(str(exc).split()) or type(exc).__name__) from None

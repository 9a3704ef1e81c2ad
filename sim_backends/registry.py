"""An explicit, lazy registry of backends.

Backends in this repository are listed in :data:`BUILTIN` as ``"module:Class"``
strings, so listing them imports nothing heavy. Out-of-tree packages register through
the ``crystal_agent.backends`` entry-point group. A backend class that declares
``internal = True`` (self-tests, replays of stored results, fault injection) stays usable
by name but is not offered to users (:func:`user_facing`, ``crystal-agent backends``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sim_backends.base import Backend

BUILTIN: dict[str, str] = {
    "xtb-reorg": "sim_backends.reorg:XtbReorgBackend",
    "dft-reorg": "sim_backends.reorg:DftReorgBackend",
    "replay": "sim_backends.replay:ReplayBackend",
    "replay-xtb-reorg": "sim_backends.replay:ReplayXtbReorgBackend",
    "replay-dft-reorg": "sim_backends.replay:ReplayDftReorgBackend",
    "replay-csp": "sim_backends.replay:ReplayCspBackend",
    "replay-crystal": "sim_backends.replay:ReplayCrystalBackend",
    "diagnostic": "sim_backends.diagnostic:DiagnosticBackend",
    "_faulty": "sim_backends.faulty:FaultyBackend",
    "csp-ff": "sim_backends.csp.backend:CSPBackend",
    "xtb-crystal": "sim_backends.xtb_crystal:XtbCrystalBackend",
    "phonon": "sim_backends.phonons:PhononBackend",
    "dft-crystal": "sim_backends.dft_crystal:DftCrystalBackend",
    "transfer-xtb": "sim_backends.transfer:XtbTransferBackend",
    "transfer-dft": "sim_backends.transfer:DftTransferBackend",
    "mobility-xtb": "sim_backends.mobility:XtbMobilityBackend",
    "mobility-dft": "sim_backends.mobility:DftMobilityBackend",
    "esf-proxy": "sim_backends.esf:EsfProxyBackend",
    "esf-landscape": "sim_backends.esf:EsfLandscapeBackend",
    "esf-refined": "sim_backends.esf:EsfRefinedBackend",
    "replay-esf-proxy": "sim_backends.esf:ReplayEsfProxyBackend",
    "replay-esf-quick": "sim_backends.esf:ReplayEsfQuickBackend",
    "replay-esf-refined": "sim_backends.esf:ReplayEsfRefinedBackend",
}


class UnknownBackendError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want one clean line
        return str(self.args[0])


def register(name: str, target: str) -> None:
    """Register ``target`` (``"module:Class"``) under ``name``."""
    BUILTIN[name] = target


def _entry_points() -> dict[str, str]:
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group="crystal_agent.backends")}


def available() -> dict[str, str]:
    """All registered backend names mapped to their ``module:Class`` targets."""
    return {**_entry_points(), **BUILTIN}


def backend_class(name: str) -> type[Backend]:
    targets = available()
    if name not in targets:
        raise UnknownBackendError(
            f"unknown backend {name!r}; registered: {', '.join(sorted(targets))}"
        )
    module, _, cls = targets[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def get_backend(name: str, **params: Any) -> Backend:
    """Instantiate the backend registered as ``name`` with ``params``."""
    return backend_class(name)(**params)


def user_facing() -> dict[str, str]:
    """The registered backends offered to users: those whose class is not ``internal``.

    Imports each backend's module (cheap: backends load heavy libraries inside methods);
    one that cannot be imported is listed, so the user sees it and why it fails.
    """
    out = {}
    for name, target in available().items():
        try:
            if getattr(backend_class(name), "internal", False):
                continue
        except Exception:  # noqa: BLE001 - shown to the user by `crystal-agent backends`
            pass
        out[name] = target
    return out

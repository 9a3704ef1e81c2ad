"""The structure stage's corrected landscapes, kept so that they are fitted once.

:meth:`~agent.stages.structure.StructureStage.corrected_landscape` (the surrogate-corrected
energies of every structure of a landscape, its leave-one-out predictions and skill) needs a
fitted surrogate, and for a fragment-DFT level the fragment terms of every structure (D3,
Ewald point charges and xTB dimer baselines): tens of seconds to minutes. A report draws it
several times (plot, table, structures, summary), and ``crystal-agent report`` opens the
campaign read-only, without the run's fitted models. So:

* in memory, a result is kept per landscape with the :func:`fingerprint` of everything the
  fit depends on, and returned again while that is unchanged;
* the process that holds the campaign's lock (a run, at its end) saves the results in the
  store (meta key :data:`CORRECTED_META`, :func:`encode`); a read-only ``report`` or
  ``status`` uses a saved result whose fingerprint matches (:func:`decode`) and fits only
  when none does (a campaign stopped before its end, or changed since).

The fingerprint covers the landscape (ids, force-field energies), the computed values and
dimer records, the ``[structures]`` config, the campaign seed, the skill-test settings and
:data:`CORRECTED_FORMAT`; a change of the surrogate code itself is not seen (the saved
result is then the one of the run, as ``status``'s saved posterior is).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any

import numpy as np

#: store meta key of the saved corrected landscapes (JSON: molecule id -> :func:`encode`)
CORRECTED_META = "corrected_landscapes"
#: version of the saved form and of what the fingerprint covers
CORRECTED_FORMAT = 2


def fingerprint(stage: Any, land: Any) -> str:
    """Digest of the inputs of ``stage.corrected_landscape`` for ``land`` (module docstring)."""
    from agent.refine_acquisition import MIN_SKILL_N, SKILL_MIX, SKILL_SCORE

    payload = {
        "format": CORRECTED_FORMAT,
        "ids": list(land.ids),
        "ff": [round(float(e), 6) for e in land.ff_kjmol],
        "computed": sorted((int(i), float(v)) for i, v in land.computed.items()),
        "records": {str(i): land.dimer_records.get(i) for i in sorted(land.computed)},
        "structures": stage.cfg.model_dump(mode="json"),
        "seed": stage.campaign_cfg.seed,
        "skill": [MIN_SKILL_N, SKILL_MIX, SKILL_SCORE],
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _floats(values: Any) -> list[float] | None:
    return None if values is None else [float(v) for v in np.asarray(values, dtype=float)]


def _array(values: list[float] | None) -> np.ndarray | None:
    return None if values is None else np.array(values, dtype=float)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def encode(result: dict[str, Any], digest: str) -> dict[str, Any]:
    """A ``corrected_landscape`` result as plain data (NaN kept: Python's JSON reads it back)."""
    out = {
        "fingerprint": digest,
        "corrected_kjmol": _floats(result["corrected_kjmol"]),
        "std_kjmol": _floats(result["std_kjmol"]),
        "held_out_kjmol": _floats(result.get("held_out_kjmol")),
        "loo_mae_kjmol": _float(result.get("loo_mae_kjmol")),
    }
    out["skill"] = None if result.get("skill") is None else asdict(result["skill"])
    out["ranking_model"] = result["ranking_model"]
    return out


def decode(entry: dict[str, Any], land: Any) -> dict[str, Any]:
    """:func:`encode`'s data back as a ``corrected_landscape`` result for ``land``."""
    from agent.refine_acquisition import Skill

    out = {
        "ff_kjmol": land.ff_kjmol,
        "corrected_kjmol": _array(entry["corrected_kjmol"]),
        "std_kjmol": _array(entry["std_kjmol"]),
        "computed": np.array(sorted(land.computed)),
        "held_out_kjmol": _array(entry.get("held_out_kjmol")),
        "loo_mae_kjmol": _float(entry.get("loo_mae_kjmol")),
    }
    out["skill"] = None if entry["skill"] is None else Skill(**entry["skill"])
    out["ranking_model"] = str(entry["ranking_model"])
    return out


def copy_result(result: dict[str, Any]) -> dict[str, Any]:
    """A copy whose arrays the caller may change without changing the kept result."""
    return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in result.items()}


def load_saved(store: Any, molecule_id: int, digest: str, land: Any) -> dict[str, Any] | None:
    """The saved result of ``molecule_id`` when its fingerprint is ``digest``, else None."""
    raw = store.get_meta(CORRECTED_META) if store is not None else None
    if not raw:
        return None
    try:
        entry = json.loads(raw).get(str(molecule_id))
        if not entry or entry.get("fingerprint") != digest:
            return None
        return decode(entry, land)
    except (ValueError, KeyError, TypeError):  # a damaged or older entry: fit again
        return None


def save(store: Any, results: dict[int, tuple[str, dict[str, Any]]]) -> None:
    """Save ``{molecule id: (fingerprint, result)}`` in the store (the lock holder only)."""
    if store is None or not getattr(store, "writable", False) or not results:
        return
    data = {str(mol_id): encode(result, digest) for mol_id, (digest, result) in results.items()}
    store.set_meta(CORRECTED_META, json.dumps(data))

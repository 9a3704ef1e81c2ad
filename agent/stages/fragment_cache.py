"""The fragment terms of a landscape, kept on disk so that each campaign computes them once.

A fragment-DFT structure level needs, for every structure of a landscape, the cheap terms of
:func:`sim_backends.fragment_terms.landscape_fragment_terms` (D3, point-charge Ewald, dimer
descriptors and the GFN2-/GFN1-xTB and D3 dimer baselines): seconds for a small molecule, a few
CPU minutes for a landscape of acenes (a pentacene dimer costs ~0.25 CPU s per xTB method). A
campaign process computes them when its structure stage first needs the surrogate; a resumed
run, ``crystal-agent refine`` and a ``report`` without the run's saved corrected landscapes
are new processes. So the terms are saved under the campaign directory and read back when
everything they depend on is unchanged.

Contract:

* :func:`key` digests what the terms depend on: :data:`FORMAT`, the SMILES, the fragment
  settings of the level's backend, the baselines, the descriptor, and every structure
  (species, cell and positions to 1e-5 A). Anything else changed gives another key, so a
  stale file is never used; a change of the code computing the terms needs a new
  :data:`FORMAT`.
* :func:`load` returns the terms of a matching file, or None when there is none or it cannot
  be read (then the caller computes them again; nothing fails because of the cache).
* :func:`save` writes atomically (a temporary file renamed into place): a killed process
  leaves the old file or none, never a half-written one. Plain JSON (gzip), no pickle.

Importing this module is cheap.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

#: version of the saved form and of the computation behind it
FORMAT = 1
#: directory of the files, under the campaign directory
SUBDIR = Path("cache") / "fragment_terms"


def key(smiles: str, settings: dict[str, Any], baselines: list[str] | tuple[str, ...], descriptor: str,
        atoms_list: list[Any]) -> str:
    """Digest of the inputs of a landscape's fragment terms (module docstring)."""
    import numpy as np

    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT, "smiles": smiles, "settings": settings,
                         "baselines": list(baselines), "descriptor": descriptor},
                        sort_keys=True, default=str).encode())
    for a in atoms_list:
        h.update(np.asarray(a.get_atomic_numbers(), dtype=np.int64).tobytes())
        h.update(np.round(np.asarray(a.cell[:], dtype=float), 5).tobytes())
        h.update(np.round(np.asarray(a.get_positions(), dtype=float), 5).tobytes())
    return h.hexdigest()


def path(directory: str | Path, molecule_id: int, digest: str) -> Path:
    """The cache file of one landscape's terms."""
    return Path(directory) / SUBDIR / f"m{int(molecule_id)}-{digest[:20]}.json.gz"


def _encode(terms: Any) -> dict[str, Any]:
    import numpy as np

    def plain(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            return {"__array__": v.tolist(), "dtype": str(v.dtype), "shape": list(v.shape)}
        return v

    return {name: plain(getattr(terms, name)) for name in terms.__dataclass_fields__}


def _decode(entry: dict[str, Any]) -> Any:
    import numpy as np

    from sim_backends.fragment_terms import FragmentTerms

    def value(v: Any) -> Any:
        if isinstance(v, dict) and "__array__" in v:
            return np.array(v["__array__"], dtype=v["dtype"]).reshape(v["shape"])
        return v

    out = {k: value(v) for k, v in entry.items()}
    out["keys"] = [(int(i), int(j), tuple(int(s) for s in shift)) for i, j, shift in out["keys"]]
    return FragmentTerms(**out)


def load(directory: str | Path | None, molecule_id: int, digest: str) -> list[Any] | None:
    """The saved terms of a landscape with this key; None when absent or unreadable."""
    if directory is None:
        return None
    p = path(directory, molecule_id, digest)
    try:
        with gzip.open(p, "rt", encoding="utf-8") as fh:
            data = json.load(fh)
        if data.get("key") != digest:
            return None
        return [_decode(e) for e in data["terms"]]
    except (OSError, ValueError, KeyError, TypeError, EOFError):  # absent, damaged or older: compute again
        return None


def save(directory: str | Path | None, molecule_id: int, digest: str, terms: list[Any]) -> Path | None:
    """Write the terms atomically; None (nothing written) without a directory or on a write
    error (a full disk must not fail the campaign: the terms are recomputed next time)."""
    if directory is None:
        return None
    p = path(directory, molecule_id, digest)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=p.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as raw, gzip.open(raw, "wt", encoding="utf-8") as fh:
                json.dump({"key": digest, "terms": [_encode(t) for t in terms]}, fh, allow_nan=True)
            os.replace(tmp, p)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        return None
    return p

"""Campaign directories on disk: ``runs/<name>/`` with the store, and the hidden
folders of creations in progress.

A campaign is created in a hidden ``.NAME.creating-*`` folder and renamed into place
(:meth:`agent.campaign.Campaign.create`); :func:`remove_stale_creations` removes the
folder of a creation killed outright (SIGKILL) once it is a minute old and unlocked;
:func:`discard_unstarted` frees the name of a campaign whose start failed.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from agent.config import ConfigError, check_name
from agent.store import Store

STORE_FILE = "store.sqlite"


def campaign_dir(runs_dir: str | Path, name: str) -> Path:
    """``runs_dir/name`` after checking that ``name`` is one safe path component and
    ``runs_dir`` is (or can become) a directory (one-line ConfigError otherwise)."""
    check_name(name)
    runs_dir = Path(runs_dir)
    existing = next((p for p in (runs_dir, *runs_dir.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"runs-dir {runs_dir}: {existing} is not a directory")
    return runs_dir / name


_CREATING = ".creating-"
#: a hidden creation folder this old (seconds) and not locked was left by a killed creation
STALE_CREATION_S = 60.0


def remove_stale_creations(runs_dir: Path, min_age_s: float = STALE_CREATION_S) -> list[Path]:
    """Remove the hidden ``.NAME.creating-*`` folders in ``runs_dir`` that a creation killed
    before its rename left behind (SIGKILL, OOM): those unchanged for ``min_age_s``
    seconds whose store lock no process holds. Returns the folders removed."""
    import fcntl

    removed = []
    now = time.time()
    for path in Path(runs_dir).glob(f".*{_CREATING}*"):
        try:
            if path.is_symlink() or not path.is_dir() or now - path.stat().st_mtime < min_age_s:
                continue
            lock = path / "lock"
            if lock.exists():
                fd = os.open(lock, os.O_RDONLY)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a creation in progress
                finally:
                    os.close(fd)
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def discard_unstarted(directory: Path) -> bool:
    """Remove a campaign directory in which nothing was evaluated or sent to a lab (after a
    start that failed, e.g. without a connection to the Ray cluster), so that its name is
    free again. Returns True if it was removed; a campaign in use or damaged is kept."""
    from agent.store import StoreDamagedError, StoreLockedError

    try:
        with Store(directory / STORE_FILE, lock=True) as store:
            if store.count_evaluations()[0] or store.lab_experiments():
                return False
    except (StoreLockedError, StoreDamagedError, OSError):
        return False
    shutil.rmtree(directory, ignore_errors=True)
    return True

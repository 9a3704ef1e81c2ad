"""The molecule pool of a campaign: read, validated and summarised before anything is
created (empty, all-invalid or oversized pools refused, one line each).

An invalid entry (SMILES RDKit cannot parse, several fragments, unsupported elements,
charged or radical, too large) is kept, flagged with its reason, so ``status --invalid``
can list it; duplicates (same canonical SMILES) are dropped. A backend with lone-pair CSP
charges is refused when a valid molecule of the pool is searched as flexible
(:func:`check_charges_for_pool`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from agent.config import CampaignConfig, ConfigError

if TYPE_CHECKING:
    from agent.store import Store

#: largest pool file read (a pool of max_pool_molecules SMILES is far smaller)
MAX_POOL_BYTES = 256 * 1024**2


_INVALID_KINDS = (  # (pattern in the SetupError reason, summary label)
    (r"characters; the limit", "too long"),
    (r"^invalid SMILES", "unparsable SMILES"),
    (r"fragments", "several fragments"),
    (r"unsupported element\(s\) ([A-Za-z, ]+);", "unsupported element"),
    (r"net charge", "charged"),
    (r"unpaired electron", "radical"),
    (r"heavy atoms", "too large"),
)


def _invalid_label(reason: str) -> str:
    for pattern, label in _INVALID_KINDS:
        m = re.search(pattern, reason)
        if m:
            return f"{label}: {m.group(1)}" if m.groups() else label
    return "invalid"


def summarise_invalid(reasons: list[str]) -> str:
    """``"2 unparsable SMILES, 1 unsupported element: Fe"`` for a list of SetupError reasons."""
    counts: dict[str, int] = {}
    for r in reasons:
        label = _invalid_label(r)
        counts[label] = counts.get(label, 0) + 1
    return ", ".join(f"{n} {label}" for label, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def pool_summary(store: Store, name: str) -> str:
    """One line on the stored pool, e.g. ``pool: 147 molecules``, or with refused entries
    ``pool: 144 valid molecules of 147 entries; 3 invalid (2 unparsable SMILES, 1 unsupported
    element: Fe); see `crystal-agent status NAME --invalid```."""
    mols = store.molecules()
    bad = [m["reason"] for m in mols if not m["is_valid"]]
    line = f"pool: {len(mols)} molecule{'s' if len(mols) != 1 else ''}"
    if bad:  # the count is of entries: say how many of them are run
        n_ok = len(mols) - len(bad)
        line = (f"pool: {n_ok} valid molecule{'s' if n_ok != 1 else ''} of {len(mols)} entries; "
                f"{len(bad)} invalid ({summarise_invalid(bad)}); see `crystal-agent status {name} --invalid`")
    created = next(iter(store.events("created")), {})
    dups = created.get("duplicates") or []
    n_dups = int(created.get("n_duplicates", len(dups)))
    if n_dups:
        shown = ", ".join(f"{d['name'] or d['smiles']} = {d['kept']}" for d in dups[:3])
        line += (f"; {n_dups} duplicate line{'s' if n_dups != 1 else ''} dropped ({shown}"
                 + (", ..." if n_dups > 3 else "") + ")")
    return line


def validate_entry(smiles: object) -> tuple[str, bool, str]:
    """``(SMILES, is_valid, reason)`` of one pool entry, as the campaign judges it
    (:func:`sim_backends.molecule.validate_smiles`): the canonical SMILES, True, ``""`` when it
    is valid; else the entry as given (cut to 200 characters), False and the one-line reason
    (unparsable, unsupported element, several fragments, charged, radical, too large)."""
    from sim_backends.molecule import validate_smiles

    try:
        return validate_smiles(smiles), True, ""
    except Exception as exc:  # SetupError
        shown = smiles if isinstance(smiles, str) else repr(smiles)
        return (shown if len(shown) <= 200 else shown[:197] + "..."), False, str(exc)


def validated_pool(cfg: CampaignConfig,
                   duplicates: list[dict[str, str | None]] | None = None) -> list[tuple[str, str | None, bool, str]]:
    """The pool as ``(smiles, name, is_valid, reason)`` rows, refused when it is empty,
    too large or holds no valid molecule. A later line with the same canonical SMILES is
    dropped; ``duplicates`` (a list, optional) receives one ``{"smiles", "name", "kept"}``
    per dropped line (``kept``: the name of the entry kept)."""
    from sim_backends.molecule import read_pool

    try:
        size = cfg.pool.stat().st_size
        if size > MAX_POOL_BYTES:
            raise ConfigError(f"config error: pool: {cfg.pool}: file too large ({size:,} bytes; "
                              f"the limit is {MAX_POOL_BYTES:,})")
        entries = read_pool(cfg.pool)
    except UnicodeDecodeError:
        raise ConfigError(f"config error: pool: {cfg.pool}: not UTF-8 text") from None
    except IsADirectoryError:
        raise ConfigError(f"config error: pool: {cfg.pool} is a directory, not a file of SMILES") from None
    except FileNotFoundError:
        raise ConfigError(f"config error: pool: file not found: {cfg.pool}") from None
    if not entries:
        raise ConfigError(f"config error: pool: no molecules in {cfg.pool}")
    if len(entries) > cfg.max_pool_molecules:
        raise ConfigError(f"config error: pool: {len(entries):,} molecules; the limit is "
                          f"{cfg.max_pool_molecules:,} (raise max_pool_molecules to allow it)")
    rows = []
    seen: dict[str, str] = {}  # canonical SMILES -> the kept entry's name (or SMILES)
    for smi, name in entries:
        canon, ok, reason = validate_entry(smi)
        if canon in seen:
            if duplicates is not None:
                duplicates.append({"smiles": smi, "name": name, "kept": seen[canon]})
            continue
        seen[canon] = name or canon
        rows.append((canon, name, ok, reason))
    if not any(r[2] for r in rows):
        raise ConfigError(
            f"config error: pool: no valid molecule among {len(rows)} entries "
            f"({summarise_invalid([r[3] for r in rows])})"
        )
    return rows


#: CSP charge models with off-atom lone-pair sites, which only a rigid molecule can carry
#: (:func:`sim_backends.csp.run.run_csp` refuses them for a molecule searched as flexible)
LONE_PAIR_CHARGES = ("resp-lp", "resp-lpn")


def check_charges_for_pool(cfg: CampaignConfig, rows: list[tuple[str, str | None, bool, str]]) -> None:
    """Refuse, in one line before anything is created, a backend configured with lone-pair
    charges (:data:`LONE_PAIR_CHARGES`) when the pool holds a valid molecule that CSP searches
    as flexible (:func:`sim_backends.csp.flexible.flexible_smiles`): every CSP of such a
    molecule would fail. Backends that leave ``charges`` unset choose by molecule."""
    configured = [(f"backends.{i}", b) for i, b in enumerate(cfg.backends)]
    st = cfg.structures
    if st.enabled:
        configured.append(("structures.csp", st.csp))
        configured += [(f"structures.levels.{i}", lv) for i, lv in enumerate(st.level_configs())]
    lone_pair = [(where, b) for where, b in configured if b.params.get("charges") in LONE_PAIR_CHARGES]
    if not lone_pair:
        return
    from sim_backends.csp.flexible import flexible_smiles

    n_valid = sum(1 for r in rows if r[2])
    by_mode: dict[str, list[str]] = {}  # flexible mode -> the valid molecules searched as flexible
    for where, b in lone_pair:
        mode = str(b.params.get("flexible", "auto"))  # csp-ff's own choice; other CSP users search by "auto"
        if mode not in by_mode:  # each SMILES parsed once per mode, not once per backend
            by_mode[mode] = [name or smi for smi, name, ok, _ in rows if ok and flexible_smiles(smi, mode) is not None]
        flexible = by_mode[mode]
        if flexible:
            shown = ", ".join(flexible[:3]) + (", ..." if len(flexible) > 3 else "")
            raise ConfigError(
                f"config error: {where}.params.charges: {b.params['charges']!r} (lone-pair sites) is for rigid "
                f"molecules, but {len(flexible)} of {n_valid} valid pool molecules "
                f"{'is' if len(flexible) == 1 else 'are'} searched as flexible ({shown}); use 'resp' or 'xtb', "
                "or leave charges unset")

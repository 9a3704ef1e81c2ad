"""A replay backend: stored results of real calculations, served back by SMILES.

Decision logic (acquisition, budgets, stopping) and benchmarks at scale need many
evaluations; replaying a table of results computed earlier with the real backends
makes them fast and exactly reproducible. The table is a CSV file with a header::

    smiles,level,reorg_energy_kjmol,wall_s
    c1ccc2ccccc2c1,xtb-reorg,12.94,0.17
    c1ccc2ccccc2c1,dft-reorg,18.05,41.2

Columns: ``smiles`` (any valid SMILES; canonicalised on load), ``level`` (or
``backend``) naming the level a row belongs to, then numeric value columns. Empty
cells are missing values; a ``name`` column is ignored. A ``wall_s`` column, if
present, is the recorded cost of the original calculation and is reported in
``extra`` (never as a value).

"Wide" tables with one row per molecule and one column per level, such as
``smiles,name,xtb_reorg_kjmol,dft_reorg_kjmol,xtb_wall_s,dft_wall_s``, are read by
mapping columns to value names with ``columns`` and naming the cost column::

    ReplayBackend(table="t.csv", columns={"reorg_energy_kjmol": "dft_reorg_kjmol"},
                  cost_column="dft_wall_s", fidelity=1)

Params:
    table (str): path of the CSV file (required).
    level (str | None): rows of this level only; may be omitted when the table has a
        single level.
    fidelity (int, 0): fidelity this replayed level stands for.
    cost_s (float, 1.0): the cost estimate to report (CPU seconds); when omitted and
        the table has a cost column, that molecule's recorded wall time is used.
    columns (dict[str, str] | None): value name -> table column; only these values
        are returned, and a molecule with an empty mapped cell has no stored result.
    cost_column (str, "wall_s"): the column holding the recorded cost in seconds.

Each instance has its own ``fidelity`` (an instance attribute shadowing the class
attribute), so one campaign can replay several levels of a ladder.

Replays standing in for one level of a real backend derive from :class:`RecordedReplay`
(the real backend's cost estimate before the run, the recorded CPU seconds charged
after it) and are made one class per level by :func:`replay_backend` from a table of
levels: ``replay-xtb-reorg`` / ``replay-dft-reorg`` here (:data:`REORG_TABLE`), the ESF
replays in :mod:`sim_backends.esf`.

Structure-keyed replays of a stored multi-level CSP landscape (a directory in the layout
of ``data/landscapes/*`` or ``data/reference/landscapes/target_I``), for benchmarks and
stage tests that drive the real campaign: ``replay-csp`` serves the landscape's
cheap-level structures as the CSP stage's output, ``replay-crystal`` each structure's
stored energy at another level, charged the stored CPU seconds of that calculation
(see :class:`ReplayCspBackend`, :class:`ReplayCrystalBackend`). Both are internal
(usable from a campaign TOML, hidden from ``crystal-agent backends``).

Over 500 lines on purpose: the replay backends (molecule-level tables, structure-keyed
landscapes) share the table loading, parameter schema and CPU-charging rules of
ReplayBackend.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from sim_backends import params as check
from sim_backends.base import Backend, EvalInput, EvalResult, SetupError
from sim_backends.reorg import DFT_IP_SD_EV, XTB_IP_SD_EV

_COST_COLUMN = "wall_s"
_TEXT_COLUMNS = frozenset({"name"})


@lru_cache(maxsize=16)
def _load_table(path: str, mtime_ns: int) -> dict[tuple[str, str], dict[str, float]]:
    """Parse a replay CSV into {(canonical smiles, level): {column: value}}.

    ``mtime_ns`` is only part of the cache key, so an edited file is re-read.
    """
    from sim_backends.molecule import validate_smiles

    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        if "smiles" not in fields:
            raise SetupError(f"replay table {path} has no 'smiles' column")
        level_col = "level" if "level" in fields else "backend" if "backend" in fields else None
        table: dict[tuple[str, str], dict[str, float]] = {}
        for i, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            try:
                canon = validate_smiles(row["smiles"], max_heavy_atoms=10**6)
            except SetupError:
                continue  # a stored row for an invalid molecule cannot be asked for
            level = row.get(level_col, "") if level_col else ""
            values: dict[str, float] = {}
            for key, text in row.items():
                if key in ("smiles", level_col) or key in _TEXT_COLUMNS or text == "":
                    continue
                try:
                    values[key] = float(text)
                except ValueError:
                    raise SetupError(f"replay table {path} line {i}: {key}={text!r} is not a number") from None
            table[(canon, level)] = values
    return table


class ReplayBackend(Backend):
    """Serve stored results for a level from a CSV table (see module docstring)."""

    name = "replay"
    version = "1"
    fidelity = 0
    target = "molecule"
    computes = ("reorg_energy_kjmol",)
    objective_key = "reorg_energy_kjmol"
    description = "replays stored results of real calculations from a CSV table"
    internal = True

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        try:
            self.fidelity = int(params.get("fidelity", 0))
        except (TypeError, ValueError):
            raise SetupError(f"replay: fidelity must be an integer, got {params.get('fidelity')!r}") from None

    def _table(self, params: dict[str, Any]) -> tuple[dict[tuple[str, str], dict[str, float]], str]:
        path = params.get("table")
        if not path:
            raise SetupError("replay: param 'table' (path of a CSV file) is required")
        p = Path(str(path)).expanduser()
        if not p.is_file():
            raise SetupError(f"replay table not found: {p}")
        table = _load_table(str(p.resolve()), p.stat().st_mtime_ns)
        levels = sorted({lvl for _, lvl in table})
        level = params.get("level")
        if level is None:
            if len(levels) > 1:
                raise SetupError(f"replay: table has levels {levels}; set param 'level'")
            level = levels[0] if levels else ""
        elif str(level) not in levels:
            raise SetupError(f"replay: level {level!r} not in table (has {levels})")
        return table, str(level)

    def _lookup(self, inp: EvalInput) -> tuple[str, str, dict[str, float]]:
        from sim_backends.molecule import validate_smiles

        table, level = self._table(inp.params)
        canon = validate_smiles(inp.smiles)
        row = table.get((canon, level))
        where = f" at level '{level}'" if level else ""
        if row is None:
            raise SetupError(f"no stored result for '{canon}'{where}")
        columns = inp.params.get("columns")
        if columns:
            if not isinstance(columns, dict):
                raise SetupError("replay: param 'columns' must map value names to table columns")
            missing = [c for c in columns.values() if c not in row]
            if missing:
                raise SetupError(f"no stored result for '{canon}'{where} in column(s) {', '.join(missing)}")
            cost_col = str(inp.params.get("cost_column", _COST_COLUMN))
            mapped = {name: row[col] for name, col in columns.items()}
            if cost_col in row:
                mapped[_COST_COLUMN] = row[cost_col]
            row = mapped
        elif str(inp.params.get("cost_column", _COST_COLUMN)) in row:
            row = {**row, _COST_COLUMN: row[str(inp.params.get("cost_column", _COST_COLUMN))]}
        return canon, level, row

    def cost_estimate(self, inp: EvalInput) -> float:
        params = {**self.params, **inp.params}
        if "cost_s" in params:
            return float(params["cost_s"])
        try:
            _, _, row = self._lookup(EvalInput(inp.smiles, params=params))
        except SetupError:
            return 1.0
        return float(row.get(_COST_COLUMN, 1.0))

    def _evaluate(self, inp: EvalInput) -> tuple[dict[str, float], dict[str, Any]]:
        canon, level, row = self._lookup(inp)
        values = {k: v for k, v in row.items() if k != _COST_COLUMN}
        extra: dict[str, Any] = {"replayed_level": level, "smiles": canon}
        if _COST_COLUMN in row:
            extra["recorded_wall_s"] = row[_COST_COLUMN]
        return values, extra


#: the stored GFN2-xTB and B3LYP/6-31G//GFN2-xTB reorganisation energies of the pool
#: of ``examples/pool.smi`` (written by ``benchmarks/make_reorg_table.py``)
REORG_TABLE = Path(__file__).resolve().parents[1] / "data" / "benchmarks" / "reorg_table.csv"


class RecordedReplay(Backend):
    """Base of the replays of one level's stored results, looked up by molecule.

    ``cost_estimate`` is what a campaign knows before running the level: the real
    backend's size-based estimate (:attr:`estimated_as` with :attr:`estimated_params`,
    overridden by an ``estimated_params`` param: the protocol the table was computed
    with), built once per instance; a ``cost_s`` param fixes it; 1.0 where the real
    backend cannot estimate (e.g. an invalid SMILES). ``evaluate`` charges the result
    the CPU seconds recorded for the original calculation (:meth:`recorded_cpu_s`; wall
    seconds too), so a campaign's budget and cost model see what the real backend spent.
    Subclasses read the table; :func:`replay_backend` makes one class per level.
    """

    internal = True
    #: the real backend whose size-based ``cost_estimate`` this replay reports
    estimated_as: ClassVar[str] = ""
    #: its params (the protocol the stored results were computed with)
    estimated_params: ClassVar[dict[str, Any]] = {}
    #: the params read here, for the ``params_schema`` of a subclass that declares one
    recorded_params_schema: ClassVar[dict[str, Any]] = {
        "cost_s": check.number(0.0, lo_open=True), "estimated_params": check.table}

    def cost_estimate(self, inp: EvalInput) -> float:
        from sim_backends.registry import get_backend

        if "cost_s" in self.params:
            return float(self.params["cost_s"])
        estimated = {**self.estimated_params, **dict(self.params.get("estimated_params") or {})}
        try:
            # built once per instance: a registry lookup scans the installed entry
            # points (~30 ms), which a 20,000-molecule pool's costs cannot pay per molecule
            if getattr(self, "_estimator", None) is None:
                self._estimator = get_backend(self.estimated_as, **estimated)
            return float(self._estimator.cost_estimate(inp))
        except Exception:  # noqa: BLE001 - e.g. an invalid SMILES: no size to scale with
            return 1.0

    def recorded_cpu_s(self, inp: EvalInput, result: EvalResult) -> float | None:
        """CPU seconds recorded for ``inp``'s stored calculation (None: nothing to charge)."""
        raise NotImplementedError

    def evaluate(self, inp: EvalInput) -> EvalResult:
        result = super().evaluate(inp)
        charged = self.recorded_cpu_s(inp, result)
        if charged is None:
            return result
        return replace(result, cpu_s=float(charged), wall_s=float(charged))


R = TypeVar("R", bound=RecordedReplay)


def replay_backend(base: type[R], name: str, description: str, **level: Any) -> type[R]:
    """The replay backend of one level of ``base``'s stored table, registered as ``name``.

    The class is ``base`` with the level's class attributes (``fidelity``,
    ``estimated_as``, ``estimated_params`` and what ``base`` reads, e.g. a table column),
    named after ``name`` (``replay-xtb-reorg`` -> ``ReplayXtbReorgBackend``, the module
    attribute the registry's ``"module:Class"`` names) in ``base``'s module.
    """
    cls_name = "".join(part.capitalize() for part in name.split("-")) + "Backend"
    return type(base)(cls_name, (base,), {
        "__module__": base.__module__, "__qualname__": cls_name, "__doc__": f"{description}.",
        "name": name, "description": description, **level})


class _ReorgReplay(RecordedReplay, ReplayBackend):
    """Replay of one level of :data:`REORG_TABLE` (:class:`RecordedReplay`: the real
    backend's estimate, charged the recorded cost).

    The charge is the recorded wall time of the original single-threaded calculation
    (its ``cost_column``). A molecule without a stored value at this level is a setup
    failure (as an invalid input would be). Params are those of :class:`ReplayBackend`;
    ``table`` defaults to :data:`REORG_TABLE`; ``estimated_params`` (dict) overrides the
    real backend's params of the size-based estimate.
    """

    value_column: ClassVar[str] = ""
    cost_column: ClassVar[str] = ""
    #: the table column of the level's adiabatic Delta-SCF IP (kJ/mol); where a row has it,
    #: the replay reports ``ip_gas_ev`` calibrated as the real backend calibrates it
    ip_column: ClassVar[str] = ""

    def __init__(self, **params: Any) -> None:
        defaults = {"table": str(REORG_TABLE), "fidelity": self.fidelity,
                    "columns": {"reorg_energy_kjmol": self.value_column},
                    "cost_column": self.cost_column}
        super().__init__(**{**defaults, **params})

    def recorded_cpu_s(self, inp: EvalInput, result: EvalResult) -> float | None:
        return result.extra.get("recorded_wall_s")

    def _evaluate(self, inp: EvalInput) -> tuple[dict[str, float], dict[str, Any]]:
        from sim_backends import reorg

        values, extra = super()._evaluate(inp)
        table, level = self._table(inp.params)
        ip = table.get((extra["smiles"], level), {}).get(self.ip_column) if self.ip_column else None
        if ip is not None:
            calibrate = (reorg.gas_ionisation_energy_ev if self.estimated_as == "xtb-reorg"
                         else reorg.dft_gas_ionisation_energy_ev)
            values["ip_gas_ev"] = calibrate(ip)
        return values, extra


#: stored GFN2-xTB hole reorganisation energies (kJ/mol) of :data:`REORG_TABLE`
ReplayXtbReorgBackend = replay_backend(
    _ReorgReplay, "replay-xtb-reorg", "replays stored GFN2-xTB lambda+ (kJ/mol) of the demo pool",
    fidelity=0, value_column="xtb_reorg_kjmol", cost_column="xtb_wall_s", estimated_as="xtb-reorg",
    ip_column="xtb_ip_adiabatic_kjmol", computes=("reorg_energy_kjmol", "ip_gas_ev"),
    value_sd={"ip_gas_ev": XTB_IP_SD_EV})
#: stored B3LYP/6-31G//GFN2-xTB hole reorganisation energies (kJ/mol) of :data:`REORG_TABLE`
#: (only part of the pool has one)
ReplayDftReorgBackend = replay_backend(
    _ReorgReplay, "replay-dft-reorg", "replays stored B3LYP/6-31G//GFN2-xTB lambda+ (kJ/mol) of the demo pool",
    fidelity=1, value_column="dft_reorg_kjmol", cost_column="dft_wall_s", estimated_as="dft-reorg",
    estimated_params={"functional": "b3lyp", "basis": "6-31g", "geometry": "xtb"},
    ip_column="dft_ip_adiabatic_kjmol", computes=("reorg_energy_kjmol", "ip_gas_ev"),
    value_sd={"ip_gas_ev": DFT_IP_SD_EV})


def reorg_table_values(path: Path = REORG_TABLE) -> tuple[list[str], list[float], list[float]]:
    """Canonical SMILES of the table's molecules with a GFN2-xTB value (first row of a
    duplicate kept, invalid SMILES skipped), their xTB and DFT lambda+ in kJ/mol (NaN
    where the table has no DFT value)."""
    from sim_backends.molecule import validate_smiles

    smiles: list[str] = []
    xtb: list[float] = []
    dft: list[float] = []
    with Path(path).open(newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                canon = validate_smiles(row["smiles"])
            except SetupError:
                continue
            if not row.get("xtb_reorg_kjmol") or canon in smiles:
                continue
            smiles.append(canon)
            xtb.append(float(row["xtb_reorg_kjmol"]))
            dft.append(float(row["dft_reorg_kjmol"]) if row.get("dft_reorg_kjmol") else float("nan"))
    return smiles, xtb, dft


# -- structure-keyed replay of a stored multi-level CSP landscape ----------------------------


def _landscape_dir(params: dict[str, Any]) -> Path:
    path = params.get("landscape")
    if not path:
        raise SetupError("param 'landscape' (a landscape directory, e.g. data/landscapes/formamide_dft) is required")
    p = Path(str(path)).expanduser()
    if not p.is_dir():
        raise SetupError(f"landscape directory not found: {p}")
    return p.resolve()


def stored_landscape(directory: str, cheap: str, level: str) -> dict[str, Any]:
    """A stored landscape at ``cheap`` and ``level`` (table layout of
    :meth:`sim_backends.landscape.Landscape.read`), as the replays serve it; read once per
    process while the directory's files keep their size and modification time.

    Returns:
        dict with ``name``, ``ids`` (kept structures, table order), ``cheap_kjmol`` and
        ``level_kjmol`` (relative energies, kJ/mol per molecule, 0 at each level's minimum),
        ``cifs`` (P1 CIFs of the cheap-level structures), ``z``, ``density_gcm3``,
        ``n_atoms``, ``periodic_xtb`` (the level is periodic GFN2-xTB), ``cpu_s`` (stored CPU seconds of each structure's ``level`` calculation,
        None where the table has none), ``n_unique_dimers`` (None where absent),
        ``dimers`` (id -> stored per-dimer records of a fragment-DFT level), ``smiles``
        (from ``run.json``, None when not stored), ``fragment_settings`` (the
        two-body decomposition of a fragment-DFT level from ``run.json``, else None),
        ``formulas`` (element -> atoms per cell of each structure) and ``geometry_digest``
        (of the served cheap-level cells and positions, rounded to 1e-4 A).

    Raises:
        SetupError: the directory cannot be read at these levels.
    """
    try:
        stamp = tuple(sorted((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in Path(directory).iterdir()
                             if f.is_file()))
    except OSError:
        stamp = ()
    return _stored_landscape(directory, cheap, level, stamp)


@lru_cache(maxsize=8)
def _stored_landscape(directory: str, cheap: str, level: str, stamp: tuple) -> dict[str, Any]:
    """:func:`stored_landscape` for one state (``stamp``) of the directory's files."""
    import hashlib
    import json
    from collections import Counter

    from sim_backends.landscape import Landscape, LandscapeError

    try:
        land = Landscape.read(directory, [cheap, level])
    except LandscapeError as exc:
        raise SetupError(str(exc)) from None
    table = next(Path(directory).glob("*landscape.csv"))
    with table.open(newline="") as fh:
        rows = {r["id"]: r for r in csv.DictReader(fh)}

    def column(name: str, kind: type) -> list | None:
        vals = [rows[i].get(name, "") for i in land.ids]
        return None if any(v in ("", None) for v in vals) else [kind(float(v)) for v in vals]

    run_path = Path(directory) / "run.json"
    run = json.loads(run_path.read_text()) if run_path.is_file() else {}
    dimers: dict[str, list] = {}
    rec_path = Path(directory) / "dft_results.jsonl"
    if rec_path.is_file() and level == run.get("expensive_level"):
        for line in rec_path.read_text().splitlines():
            if line.strip() and (r := json.loads(line)).get("dimers"):
                dimers[str(r["id"])] = r["dimers"]
    settings = run.get("expensive_settings") or {}
    fragment = None
    if dimers and all(i in dimers for i in land.ids) and settings.get("two_body", True):
        fragment = {"cutoff_A": float(settings.get("cutoff_A", 3.0)),
                    "cutoff_mode": str(settings.get("cutoff_mode", "contact")),
                    "functional": str(settings.get("functional", "pbe"))}
    dens = [m.density_gcm3 for m in land.minima]
    geometry = hashlib.sha1()
    for m in land.minima:  # the served cheap-level structures, rounded: a digest stable across readers
        geometry.update(np.asarray(m.atoms.numbers, dtype=np.int64).tobytes())
        geometry.update(np.round(np.asarray(m.atoms.cell, dtype=float), 4).tobytes())
        geometry.update(np.round(np.asarray(m.atoms.positions, dtype=float), 4).tobytes())
    return {
        "name": land.name, "ids": list(land.ids),
        "cheap_kjmol": land.energies(cheap), "level_kjmol": land.energies(level),
        "cifs": [m.cif() for m in land.minima], "z": [int(m.z) for m in land.minima],
        "density_gcm3": None if any(not np.isfinite(d) for d in dens) else [float(d) for d in dens],
        "n_atoms": [int(m.n_atoms) for m in land.minima],
        "cpu_s": column("cpu_s", float), "n_unique_dimers": column("n_unique_dimers", int),
        "dimers": dimers, "smiles": run.get("smiles") or None, "fragment_settings": fragment,
        # periodic GFN2-xTB: formamide_big's run.json names it ``xtb_method``, make_landscape.py's
        # ``expensive_level = "xtb"``
        "periodic_xtb": level == "xtb" and bool(run.get("xtb_method") or run.get("expensive_level") == "xtb"),
        "formulas": [dict(Counter(m.atoms.get_chemical_symbols())) for m in land.minima],
        "geometry_digest": geometry.hexdigest()[:16],
    }


def _landscape_schema(**more: Any) -> dict[str, Any]:
    from sim_backends import params as check

    return {"landscape": check.text, "cheap": check.text, "level": check.text, **more}


def _stored(params: dict[str, Any]) -> dict[str, Any]:
    for key in ("cheap", "level"):
        if not params.get(key):
            raise SetupError(f"param {key!r} (a level of the landscape table) is required")
    return stored_landscape(str(_landscape_dir(params)), str(params["cheap"]), str(params["level"]))


class ReplayCspBackend(Backend):
    """A stored landscape's cheap-level structures served as a CSP result.

    Params: ``landscape`` (directory, table layout of :meth:`sim_backends.landscape.Landscape.read`),
    ``cheap`` and ``level`` (its two levels), ``n`` (int, optional: only the ``n`` lowest
    at the cheap level). Returns ``n_minima`` and ``global_min_energy_kjmol`` with
    ``extra["landscape"]`` records (id, cheap-level energy relative to the lowest kept
    structure in kJ/mol per molecule, density, Z, P1 CIF), as ``csp-ff`` returns them.
    A molecule other than the landscape's (``run.json`` ``smiles``, when stored) is a
    setup failure. The cost charged is none (the stored landscape's CSP is not counted:
    the benchmarks compare structure-level strategies on the same landscape).
    """

    name = "replay-csp"
    version = "2"
    target = "molecule"
    computes = ("n_minima", "global_min_energy_kjmol")
    objective_key = "global_min_energy_kjmol"
    description = "replays a stored CSP landscape (cheap level) as the CSP stage's output"
    internal = True

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        from sim_backends import params as check

        check.check_schema(cls.name, _landscape_schema(n=check.integer(1)), params)

    def cost_estimate(self, inp: EvalInput) -> float:
        return 1.0

    def _evaluate(self, inp: EvalInput) -> tuple[dict[str, float], dict[str, Any]]:
        from sim_backends.molecule import validate_smiles

        canon = validate_smiles(inp.smiles)
        land = _stored(inp.params)
        if land["smiles"] and validate_smiles(land["smiles"]) != canon:
            raise SetupError(f"replay-csp: landscape {land['name']} is of {land['smiles']}, not {canon}")
        order = sorted(range(len(land["ids"])), key=lambda i: (land["cheap_kjmol"][i], i))
        if inp.params.get("n"):
            order = order[: int(inp.params["n"])]
        dens = land["density_gcm3"]
        records = [{"id": land["ids"][i], "energy_kjmol": float(land["cheap_kjmol"][i]),
                    "density_gcm3": None if dens is None else dens[i], "space_group": None,
                    "z": land["z"][i], "multiplicity": 1, "cif": land["cifs"][i]} for i in order]
        return ({"n_minima": float(len(records)), "global_min_energy_kjmol": records[0]["energy_kjmol"]},
                {"landscape": records, "replayed": f"{land['name']} ({inp.params['cheap']})"})

    def evaluate(self, inp: EvalInput) -> EvalResult:
        return replace(super().evaluate(inp), cpu_s=0.0)


#: prior CPU seconds per symmetry-unique dimer (fragment DFT) and per (cell atoms)^3
#: (periodic levels); the campaign's cost model rescales both to the charged CPU seconds
_PRIOR_S_PER_DIMER = 4.0
_PRIOR_S_PER_ATOM3 = 1e-4


class ReplayCrystalBackend(Backend):
    """A stored landscape's energies at one level, served per structure.

    Params: as :class:`ReplayCspBackend` (``landscape``, ``cheap``, ``level``; the same
    values, so structure ids match) and ``fragment`` (bool, default True: declare the
    stored fragment-DFT decomposition, so the campaign models the level per dimer).

    Returns ``energy_kjmol``: the structure's ``level`` energy relative to the lowest
    kept structure, kJ/mol per molecule; for a fragment-DFT level ``extra["dimers"]`` are
    the stored per-dimer records (as ``dft-crystal`` returns them). The result's
    ``cpu_s`` is the stored CPU seconds of that calculation (``cpu_s`` column of the
    table); where none is stored, the prior estimate below (``extra["cpu_s_source"]``
    says which). ``cost_estimate`` is what a campaign knows before running it: the
    number of symmetry-unique dimers x 4 s for a fragment-DFT level (geometry only),
    ``xtb-crystal``'s own estimate for a periodic GFN2-xTB level (``run.json`` with
    ``xtb_method``, or ``expensive_level = "xtb"`` as ``make_landscape.py`` writes it), else
    1e-4 s x (atoms per cell)^3; 0 without a structure.
    """

    name = "replay-crystal"
    version = "2"
    fidelity = 1
    target = "structure"
    computes = ("energy_kjmol",)
    objective_key = "energy_kjmol"
    description = "replays a stored landscape's energies at one level, per structure"
    internal = True

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        from sim_backends import params as check

        check.check_schema(cls.name, _landscape_schema(fragment=check.boolean), params)

    def fragment_terms_settings(self) -> dict[str, Any] | None:
        if not bool(self.params.get("fragment", True)):
            return None
        try:
            return _stored(self.params)["fragment_settings"]
        except SetupError:
            return None

    def _index(self, inp: EvalInput) -> tuple[dict[str, Any], int]:
        land = _stored(inp.params)
        sid = (inp.structure_id or "").split("-", 1)[-1]
        try:
            return land, land["ids"].index(sid)
        except ValueError:
            raise SetupError(f"replay-crystal: no stored {inp.params['level']} energy for structure "
                             f"{inp.structure_id!r} in {land['name']}") from None

    def cost_estimate(self, inp: EvalInput) -> float:
        if not inp.structure_cif or not inp.structure_id:
            return 0.0
        try:
            land, i = self._index(EvalInput(inp.smiles, params={**self.params, **inp.params},
                                            structure_id=inp.structure_id))
        except SetupError:
            return 0.0
        if land["fragment_settings"] is not None and land["n_unique_dimers"] is not None:
            return _PRIOR_S_PER_DIMER * land["n_unique_dimers"][i]
        if land["periodic_xtb"]:
            from sim_backends.registry import get_backend

            return float(get_backend("xtb-crystal").cost_estimate(inp))
        return _PRIOR_S_PER_ATOM3 * land["n_atoms"][i] ** 3

    def _evaluate(self, inp: EvalInput) -> tuple[dict[str, float], dict[str, Any]]:
        land, i = self._index(inp)
        extra: dict[str, Any] = {"level": f"{inp.params['level']} (stored, {land['name']})"}
        if land["cpu_s"] is not None:
            extra["stored_cpu_s"], extra["cpu_s_source"] = land["cpu_s"][i], "stored"
        else:
            extra["stored_cpu_s"], extra["cpu_s_source"] = self.cost_estimate(inp), "estimate"
        sid = land["ids"][i]
        if self.fragment_terms_settings() is not None and sid in land["dimers"]:
            extra["dimers"] = land["dimers"][sid]
        return {"energy_kjmol": float(land["level_kjmol"][i])}, extra

    def evaluate(self, inp: EvalInput) -> EvalResult:
        result = super().evaluate(inp)
        if not result.ok:
            return result
        return replace(result, cpu_s=float(result.extra["stored_cpu_s"]))

"""A seeded corpus of bad inputs for the ``crystal-agent`` command line.

Used by ``tests/agent/test_fuzz_cli.py`` (a few dozen cases per category, in-process) and
``benchmarks/fuzz_cli.py`` (a larger corpus, each case in a subprocess with a timeout).
Every case is bad input: the contract is one line on stderr, a non-zero exit, no
traceback, no hang, and no campaign store left behind by a refused ``run``.

A case is a :class:`Case`; ``case.make(tmp)`` writes its files into the empty directory
``tmp`` and returns the argv (without the program name). ``runs`` in every argv is
``tmp / "runs"``. Categories and who owns the fix where it is not the CLI/config/store:
``config``, ``pool``, ``names``, ``args``, ``store`` (CLI, config, store), ``csp``
(CSP arguments), ``lab`` (PXRD pattern and CIF files for ``lab identify``), ``connect``
(unreachable Ray cluster or tracking server, tracking URIs under a file or a missing
directory, resources a task can never get: these are checked when the campaign starts,
so their cases need the real campaign loop).
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.config import _dump_toml as to_toml
from agent.config import _toml_value

CATEGORIES = ("config", "pool", "names", "args", "store", "csp", "lab", "connect")
OWNER = {"csp": "helper F (CSP arguments)", "lab": "helper E (lab identify)",
         "connect": "helper C (Ray/MLflow connections, resources)"}

GOOD_POOL = ["CCO ethanol", "c1ccccc1 benzene", "CC(=O)O acetic_acid", "c1ccncc1 pyridine"]

BASE = {
    "name": "f",
    "pool": "pool.smi",
    "objective": "n_heavy_atoms",
    "batch_size": 1,
    "max_evaluations": 2,
    "surrogate": {"n_initial": 1},
    "tracking": {"enabled": False},
    "executor": {"num_cpus": 1, "task_timeout_s": 20.0, "max_retries": 0},
    "backends": [{"name": "diagnostic"}],
}

#: (dotted key, bad values): every value makes the config unusable
BAD_VALUES: list[tuple[str, list[object]]] = [
    ("batch_size", [True, 0, -1, 1.5, "4", [], float("nan")]),
    ("seed", [-1, True, 1.5, "0", -(10**30)]),
    ("max_evaluations", [0, -5, True, 2.5, "10"]),
    ("max_cpu_hours", [0, -1.0, float("nan"), float("inf"), True, "1"]),
    ("direction", ["up", 1, True, ""]),
    ("objective", ["nope", 1, "", "reorg_energy_kjmol"]),
    ("name", [".", "..", "/", "a/b", "x" * 300, "", "a\u0001b", " ", "../escape", "-"]),
    ("pool", ["missing.smi", 5, "", True, "."]),
    ("executor.num_cpus", [0, -1, True, 1.5]),
    ("executor.task_timeout_s", [0, -1, float("nan"), True]),
    ("executor.max_retries", [-1, True, 0.5]),
    ("executor.cpus_per_task", [0, -1, float("nan")]),
    ("stop.patience_iterations", [0, True, -3]),
    ("stop.target", [float("nan"), "low", True]),
    ("surrogate.n_initial", [0, True]),
    ("surrogate.fingerprint_bits", [0, True, 10]),
    ("surrogate.holdout_fraction", [1.0, -0.1, float("nan")]),
    ("backends", [[], "diagnostic", [{"name": "nope"}], [{"name": "diagnostic"}, {"name": "diagnostic"}],
                  [{"name": "dft-crystal"}], [{"name": "diagnostic", "budget_evaluations": -1}],
                  [{"name": "diagnostic", "cost_s": 0}], [{}], [{"name": 3}],
                  [{"name": "diagnostic", "params": 5}]]),
    ("structures", [{"enabled": "yes"}, {"enabled": True, "budget_evaluations": 100},
                    {"enabled": True, "refine": {"name": "nope"}}, {"enabled": True, "csp": {"name": "nope"}},
                    {"enabled": True, "dimer_baselines": ["mp2"]}, {"enabled": True, "top_k": 0}]),
    ("lab", [{"adapter": "nope"}, {"daily_budget": -1}, {"params": {"token": "x"}}]),
    ("tracking", [{"enabled": "no"}, {"uri": 5}]),
]


@dataclass(frozen=True)
class Case:
    category: str
    label: str
    make: Callable[[Path], list[str]]
    runs_command: bool = False  # `run`: a refused one must leave no store behind


def _with(cfg: dict, dotted: str, value: object) -> dict:
    out = json.loads(json.dumps(cfg))
    keys = dotted.split(".")
    node = out
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    if keys[0] == "lab":
        out["structures"] = {"enabled": True, "budget_evaluations": 1}
        out["max_evaluations"] = 3
    return out


def write_campaign(tmp: Path, cfg: dict | None = None, pool: list[str] | None = None,
                   text: str | None = None) -> Path:
    (tmp / "pool.smi").write_text("\n".join(GOOD_POOL if pool is None else pool) + "\n")
    path = tmp / "c.toml"
    path.write_text(to_toml(BASE if cfg is None else cfg) if text is None else text)
    return path


def _run(tmp: Path, config: Path, *extra: str) -> list[str]:
    return ["run", str(config), "--runs-dir", str(tmp / "runs"), "--quiet", *extra]


def created_store(tmp: Path, name: str = "f") -> Path:
    """A campaign created (not run) under ``tmp/runs``; returns its store path."""
    from agent.campaign import Campaign
    from agent.config import load_config

    cfg = write_campaign(tmp, dict(BASE, name=name))
    Campaign.create(load_config(cfg), tmp / "runs").close()
    return tmp / "runs" / name / "store.sqlite"


# -- generators ---------------------------------------------------------------------------

def config_cases(rng: random.Random, n: int) -> list[Case]:
    out = []
    pairs = [(k, v) for k, vals in BAD_VALUES for v in vals]
    for key, value in rng.sample(pairs, min(n, len(pairs))):
        label = f"{key} = {_toml_value(value)[:40]}"
        out.append(Case("config", label, lambda t, k=key, v=value: _run(t, write_campaign(t, _with(BASE, k, v))),
                        runs_command=True))
    text = to_toml(BASE)
    raw = [
        ("unknown key", text + f"colour_{rng.randrange(999)} = 1\n"),
        ("duplicate key", text + "seed = 1\nseed = 2\n"),
        ("unterminated string", text[: rng.randrange(5, 40)] + '"open'),
        ("empty file", ""),
        ("binary", bytes(rng.randrange(256) for _ in range(300)).decode("latin-1")),
        ("3000-deep arrays", "x = " + "[" * 3000 + "]" * 3000 + "\n"),
        ("3000-deep tables", "x = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n"),
        ("huge file", text + "# pad\n" * 400_000),
        ("missing backends", to_toml({k: v for k, v in BASE.items() if k != "backends"})),
    ]
    for label, body in raw:
        out.append(Case("config", label, lambda t, b=body: _run(t, write_campaign(t, text=b)), runs_command=True))
    out.append(Case("config", "config is a directory", lambda t: _run(t, t)))
    out.append(Case("config", "config missing", lambda t: _run(t, t / "nope.toml")))
    return out


def pool_cases(rng: random.Random, n: int) -> list[Case]:
    junk = ["not-a-smiles", "C1CC", "[Fe]", "[Na+].[Cl-]", "[CH3]", "C" * 60, "[NH4+]", "c1cc",
            "Cl[Pt](Cl)(N)N", "C(" * 50, "%%%", "[U]", "O=[Se]=O", "[Hg]", "C.C"]
    cases: list[tuple[str, list[str] | bytes]] = [
        ("empty pool", []),
        ("comments only", ["# nothing", "", "   # more"]),
        ("one million C(", ["C(" * 1_000_000]),
        ("binary pool", bytes(range(128, 256)) * 8),
    ]
    for i in range(max(0, n - len(cases))):
        k = rng.randrange(1, 6)
        cases.append((f"all invalid #{i}", [f"{rng.choice(junk)} m{j}" for j in range(k)]))
    out = []
    for label, pool in cases:
        def make(t: Path, p=pool) -> list[str]:
            cfg = write_campaign(t)
            if isinstance(p, bytes):
                (t / "pool.smi").write_bytes(p)
            else:
                (t / "pool.smi").write_text("\n".join(p) + ("\n" if p else ""))
            return _run(t, cfg)
        out.append(Case("pool", label, make, runs_command=True))
    out.append(Case("pool", "pool is a directory",
                    lambda t: _run(t, write_campaign(t, dict(BASE, pool=".")))))
    out.append(Case("pool", "over max_pool_molecules",
                    lambda t: _run(t, write_campaign(t, dict(BASE, max_pool_molecules=2))), runs_command=True))
    return out


BAD_NAMES = [".", "..", "/", "a/b", "/abs/x", "x" * 300, "", "bad\x01name", "tab\tname", ".hidden",
             "a b", "../../etc", "é", "name\n2", "-"]


def name_cases(rng: random.Random, n: int) -> list[Case]:
    out = []
    combos = [(cmd, name) for cmd in ("run", "status", "resume", "report", "refine") for name in BAD_NAMES]
    for cmd, name in rng.sample(combos, min(n, len(combos))):
        def make(t: Path, c=cmd, nm=name) -> list[str]:
            if c == "run":
                return _run(t, write_campaign(t), "--name", nm)
            (t / "runs").mkdir()
            return [c, nm, "--runs-dir", str(t / "runs")]
        out.append(Case("names", f"{cmd} {name[:20]!r}", make, runs_command=cmd == "run"))
    return out


def args_cases(rng: random.Random, n: int) -> list[Case]:
    def runs_file(t: Path) -> Path:
        (t / "afile").write_text("x")
        return t / "afile"

    specs: list[tuple[str, Callable[[Path], list[str]], bool]] = []
    for v in ("0", "-1", "abc", "1e3", "", "2.5"):
        specs.append((f"run --max-evaluations {v!r}", lambda t, v=v: _run(t, write_campaign(t), "--max-evaluations", v), True))
        specs.append((f"resume --max-evaluations {v!r}", lambda t, v=v: (created_store(t), ["resume", "f", "--runs-dir", str(t / "runs"), "--max-evaluations", v])[1], False))
    specs += [
        ("run --runs-dir file", lambda t: ["run", str(write_campaign(t)), "--runs-dir", str(runs_file(t))], False),
        ("run --runs-dir under a file", lambda t: ["run", str(write_campaign(t)), "--runs-dir", str(runs_file(t) / "r")], False),
        ("status --runs-dir file", lambda t: ["status", "f", "--runs-dir", str(runs_file(t))], False),
        ("status of a missing campaign", lambda t: ["status", "ghost", "--runs-dir", str(t)], False),
        ("resume of a missing campaign", lambda t: ["resume", "ghost", "--runs-dir", str(t)], False),
        ("report of a missing campaign", lambda t: ["report", "ghost", "--runs-dir", str(t)], False),
        ("refine --budget -1", lambda t: (created_store(t), ["refine", "f", "--runs-dir", str(t / "runs"), "--budget", "-1"])[1], False),
        ("refine without a structure stage", lambda t: (created_store(t), ["refine", "f", "--runs-dir", str(t / "runs")])[1], False),
        ("run twice with one name", lambda t: (created_store(t), _run(t, t / "c.toml"))[1], False),
        ("unknown subcommand", lambda t: ["fly"], False),
        ("no subcommand", lambda t: [], False),
        ("run without config", lambda t: ["run"], False),
        ("unknown option", lambda t: ["status", "f", "--colour"], False),
        ("lab approve without queue", lambda t: ["lab", "approve", "--all", "--campaign-dir", str(t)], False),
    ]
    rng.shuffle(specs)
    return [Case("args", label, make, runs_command=r) for label, make, r in specs[:n]]


def store_cases(rng: random.Random, n: int) -> list[Case]:
    def damaged(kind: str, frac: float = 0.5) -> Callable[[Path], Path]:
        def make(t: Path) -> Path:
            path = created_store(t)
            if kind == "truncate":
                data = path.read_bytes()
                path.write_bytes(data[: int(len(data) * frac)])
            elif kind.startswith("drop ") and kind != "drop column":
                db = sqlite3.connect(path)
                db.execute(f"DROP TABLE {kind[5:]}")
                db.commit()
                db.close()
            elif kind == "drop column":
                db = sqlite3.connect(path)
                db.execute("ALTER TABLE evaluations DROP COLUMN values_json")
                db.commit()
                db.close()
            elif kind == "empty":
                path.write_bytes(b"")
            elif kind == "garbage":
                path.write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
            elif kind == "directory":
                path.unlink()
                path.mkdir()
            elif kind.startswith("config "):
                db = sqlite3.connect(path)
                value = {"config garbage": "[[[not toml", "config missing": None,
                         "config budget 0": None, "config unknown backend": None}[kind]
                if kind == "config missing":
                    db.execute("DELETE FROM meta WHERE key = 'config_toml'")
                else:
                    old = db.execute("SELECT value FROM meta WHERE key = 'config_toml'").fetchone()[0]
                    if kind == "config budget 0":
                        value = old.replace("max_evaluations = 2", "max_evaluations = 0")
                    elif kind == "config unknown backend":
                        value = old.replace('"diagnostic"', '"gone"')
                    db.execute("UPDATE meta SET value = ? WHERE key = 'config_toml'", (value,))
                db.commit()
                db.close()
            return path
        return make

    kinds: list[str] = ["drop evaluations", "drop molecules", "drop meta", "drop events", "drop structures",
             "drop lab_experiments", "drop column", "empty", "garbage", "directory", "config garbage",
             "config missing", "config budget 0", "config unknown backend"]
    kinds += [f"truncate {f:.2f}" for f in (rng.uniform(0.05, 0.7) for _ in range(6))]
    out = []
    for kind in kinds:
        for cmd in ("status", "resume", "report", "refine"):
            if (cmd, kind) == ("status", "config unknown backend"):
                continue  # status of a campaign whose backend is gone is still shown
            frac = float(kind.split()[1]) if kind.startswith("truncate") else 0.5
            make_store = damaged("truncate" if kind.startswith("truncate") else kind, frac)
            out.append(Case("store", f"{cmd}: {kind}",
                            lambda t, m=make_store, c=cmd: (m(t), [c, "f", "--runs-dir", str(t / "runs")])[1]))
    rng.shuffle(out)
    return out[:n]


def csp_cases(rng: random.Random, n: int) -> list[Case]:
    base = ["csp", "C=O", "--n-trials", "4", "--charges", "xtb", "--space-groups", "P-1"]

    def with_opt(opt: str, value: str) -> list[str]:
        argv = list(base)
        if opt in argv:
            argv[argv.index(opt) + 1] = value
        else:
            argv += [opt, value]
        return argv

    specs = [(f"{o} {v}", lambda t, o=o, v=v: with_opt(o, v)) for o, vals in (
        ("--n-trials", ["0", "-5", "1000000000000", "abc", "1e3"]),
        ("--energy-window", ["nan", "inf", "-1", "abc"]),
        ("--space-groups", ["P9", "", ",,", "P2_1/c,nope"]),
        ("--charges", ["none", "RESP"]),
        ("--workers", ["0", "-2", "100000"]),
        ("--top", ["-1", "x"]),
    ) for v in vals]
    mol_specs = {
        "invalid SMILES": lambda t: "not-a-smiles",
        "metal": lambda t: "[Fe]",
        "missing file": lambda t: str(t / "missing.xyz"),
        "empty xyz": lambda t: (t / "m.xyz").write_text("") and str(t / "m.xyz") or str(t / "m.xyz"),
        "garbage cif": lambda t: (t / "bad.cif").write_text("data_x\n_cell_length_a abc\n") and str(t / "bad.cif"),
        "huge SMILES": lambda t: "C(" * 60_000,  # one argv string is at most 128 KiB
    }
    for label, mol in mol_specs.items():
        specs.append((f"molecule {label}", lambda t, m=mol: ["csp", m(t), "--n-trials", "4", "--charges", "xtb"]))
    rng.shuffle(specs)
    return [Case("csp", label, make) for label, make in specs[:n]]


def _good_cif_dir(t: Path) -> Path:
    import shutil

    src = Path(__file__).resolve().parents[1] / "data" / "reference" / "cod"
    d = t / "cifs"
    d.mkdir()
    for cif in sorted(src.rglob("*.cif"))[:3]:
        shutil.copy(cif, d / cif.name)
    return d


def lab_cases(rng: random.Random, n: int) -> list[Case]:
    def pattern(t: Path, text: str | bytes) -> str:
        p = t / "p.xy"
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(p)

    good = "\n".join(f"{x:.2f} {abs((x * 7) % 13 - 6):.3f}" for x in [5 + 0.05 * i for i in range(600)])
    patterns = {
        "empty pattern": "",
        "one column": "\n".join(str(5 + 0.1 * i) for i in range(50)),
        "text": "hello world\nfoo bar\n",
        "nan intensities": "\n".join(f"{5 + 0.1 * i} nan" for i in range(50)),
        "inf angles": "\n".join(f"inf {i}" for i in range(50)),
        "negative angles": "\n".join(f"{-10 - i} {i}" for i in range(50)),
        "binary": bytes(rng.randrange(256) for _ in range(2000)),
        "single point": "10 100\n",
        "all zero": "\n".join(f"{5 + 0.1 * i} 0" for i in range(100)),
    }
    specs = [(label, lambda t, x=x: ["lab", "identify", pattern(t, x), "--structures", str(_good_cif_dir(t))])
             for label, x in patterns.items()]

    def cif_dir(t: Path, body: str) -> str:
        d = t / "cifs"
        d.mkdir()
        (d / "x.cif").write_text(body)
        return str(d)

    huge = ("data_x\n_cell_length_a 1000000\n_cell_length_b 1000000\n_cell_length_c 1000000\n"
            "_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\n"
            "_symmetry_space_group_name_H-M 'P 1'\nloop_\n_atom_site_label\n_atom_site_type_symbol\n"
            "_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\nC1 C 0 0 0\n")
    cifs = {
        "garbage CIF": "this is not a cif",
        "CIF without atoms": "data_x\n_cell_length_a 5\n_cell_length_b 5\n_cell_length_c 5\n",
        "CIF with 1e6 A cell": huge,
        "CIF with zero cell": huge.replace("1000000", "0"),
    }
    for label, body in cifs.items():
        specs.append((label, lambda t, b=body: ["lab", "identify", pattern(t, good), "--structures", cif_dir(t, b)]))
    specs += [
        ("empty CIF dir", lambda t: (t / "e").mkdir() or ["lab", "identify", pattern(t, good), "--structures", str(t / "e")]),
        ("missing CIF dir", lambda t: ["lab", "identify", pattern(t, good), "--structures", str(t / "none")]),
        ("missing pattern", lambda t: ["lab", "identify", str(t / "none.xy"), "--structures", str(t)]),
        ("--wavelength X", lambda t: ["lab", "identify", pattern(t, good), "--structures", str(_good_cif_dir(t)), "--wavelength", "X"]),
        ("--top -1", lambda t: ["lab", "identify", pattern(t, good), "--structures", str(_good_cif_dir(t)), "--top", "x"]),
    ]
    rng.shuffle(specs)
    return [Case("lab", label, make) for label, make in specs[:n]]


def connect_cases(rng: random.Random, n: int) -> list[Case]:
    def cfg_with(**tables: dict) -> Callable[[Path], list[str]]:
        def make(t: Path) -> list[str]:
            cfg = json.loads(json.dumps(BASE))
            for key, value in tables.items():
                cfg[key] = {**cfg.get(key, {}), **value}
            (t / "afile").write_text("x")
            text = to_toml(cfg).replace("@T@", str(t))
            return _run(t, write_campaign(t, text=text))
        return make

    specs = [
        ("executor address 127.0.0.1:1", cfg_with(executor={"address": "127.0.0.1:1"})),
        ("--address 127.0.0.1:1", lambda t: _run(t, write_campaign(t), "--address", "127.0.0.1:1")),
        ("tracking uri http://127.0.0.1:1", cfg_with(tracking={"enabled": True, "uri": "http://127.0.0.1:1"})),
        ("tracking uri under a file", cfg_with(tracking={"enabled": True, "uri": "sqlite:///@T@/afile/mlflow.db"})),
        ("tracking uri under a missing directory",
         cfg_with(tracking={"enabled": True, "uri": "sqlite:///@T@/missing/deeper/mlflow.db"})),
        ("cpus_per_task > num_cpus", cfg_with(executor={"num_cpus": 1, "cpus_per_task": 4.0})),
    ]
    rng.shuffle(specs)
    return [Case("connect", label, make, runs_command=True) for label, make in specs[:n]]


GENERATORS = {
    "config": config_cases, "pool": pool_cases, "names": name_cases, "args": args_cases,
    "store": store_cases, "csp": csp_cases, "lab": lab_cases, "connect": connect_cases,
}


def corpus(seed: int = 0, per_category: int = 12, categories: tuple[str, ...] = CATEGORIES) -> list[Case]:
    """The seeded corpus: up to ``per_category`` cases from each category."""
    out = []
    for cat in categories:
        out += GENERATORS[cat](random.Random(f"{seed}-{cat}"), per_category)[:per_category]
    return out


def stores_left(tmp: Path) -> list[Path]:
    """Campaign stores (and half-built temporary directories) under ``tmp/runs``."""
    runs = tmp / "runs"
    if not runs.is_dir():
        return []
    return sorted(p for p in runs.rglob("*") if p.name == "store.sqlite" or p.name.startswith("."))

from pathlib import Path

import pytest

from agent.config import ConfigError, config_to_toml, load_config, parse_config

BASE = """
objective = "reorg_energy_kjmol"
[[backends]]
name = "xtb-reorg"
"""


def _write(tmp_path: Path, body: str) -> Path:
    (tmp_path / "pool.smi").write_text("c1ccccc1 benzene\n")
    p = tmp_path / "c.toml"
    p.write_text('pool = "pool.smi"\n' + body)
    return p


def test_valid_config_resolves_pool(tmp_path):
    cfg = load_config(_write(tmp_path, BASE))
    assert cfg.pool == (tmp_path / "pool.smi").resolve()
    assert cfg.backends[0].name == "xtb-reorg"
    assert cfg.direction == "minimize"


def test_unknown_key_is_one_line_naming_key(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, BASE + "bogus_key = 1\n"))
    msg = str(e.value)
    assert "\n" not in msg and "backends.0.bogus_key" in msg and "unknown key" in msg


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, 'batch_size = "four"\n' + BASE))
    assert "batch_size" in str(e.value) and "\n" not in str(e.value)


def test_missing_file_and_missing_pool(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    p = tmp_path / "c.toml"
    p.write_text('pool = "missing.smi"\n' + BASE)
    with pytest.raises(ConfigError, match="pool: file not found"):
        load_config(p)
    # newuser38 C4: a directory said "file not found"
    p.write_text('pool = "."\n' + BASE)
    with pytest.raises(ConfigError, match=r"pool: .* is a directory, not a file of SMILES"):
        load_config(p)


def test_invalid_toml(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("name = [unterminated\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(p)


def test_round_trip_through_toml(tmp_path):
    import tomllib

    cfg = load_config(_write(tmp_path, 'seed = 7\n' + BASE + 'params = {basis = "sto-3g"}\n'))
    again = parse_config(tomllib.loads(config_to_toml(cfg)))
    assert again == cfg


def test_dimer_baselines_key(tmp_path):
    from sim_backends.fragment_terms import DEFAULT_BASELINES

    cfg = load_config(_write(tmp_path, BASE + "[structures]\nenabled = true\n"))
    assert tuple(cfg.structures.dimer_baselines) == DEFAULT_BASELINES
    cfg = load_config(_write(tmp_path, BASE + "[structures]\nenabled = true\ndimer_baselines = []\n"))
    assert cfg.structures.dimer_baselines == []
    import tomllib

    assert parse_config(tomllib.loads(config_to_toml(cfg))).structures.dimer_baselines == []
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, BASE + '[structures]\ndimer_baselines = ["gfn2-xtb", "mp2"]\n'))
    assert "structures.dimer_baselines" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("line", [
    "batch_size = true", "seed = -1", "seed = 1.5", "max_evaluations = 0", "max_evaluations = true",
    "max_cpu_hours = nan", "max_cpu_hours = inf", "batch_size = 2.0", 'name = ".."', 'name = "."',
    'name = "a/b"', f'name = "{"x" * 101}"', 'name = ".hidden"', "max_pool_molecules = 0",
    "surrogate.fingerprint_bits = 1000000000",
])
def test_strict_values_are_one_line_errors(tmp_path, line):
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, line + "\n" + BASE))
    key = line.split()[0]
    assert key in str(e.value) and "\n" not in str(e.value)


def test_absurd_cpu_budget_is_refused_with_the_ceiling(tmp_path):
    """newuser37 C9: max_cpu_hours = 1e9 (114,000 CPU years) was accepted silently; above
    the documented ceiling (1e6 CPU hours) it is a one-line config error naming the key,
    the ceiling and the way to ask for no budget; the ceiling itself is accepted."""
    from agent.config import MAX_CPU_HOURS

    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, "max_cpu_hours = 1e9\n" + BASE))
    msg = str(e.value)
    assert msg.startswith("config error: max_cpu_hours: 1e+09 CPU hours (114,077 CPU years)"), msg
    assert "ceiling of 1,000,000" in msg and "leave max_cpu_hours out" in msg and "\n" not in msg
    assert load_config(_write(tmp_path, f"max_cpu_hours = {MAX_CPU_HOURS:g}\n" + BASE)).max_cpu_hours == MAX_CPU_HOURS


def test_check_name():
    from agent.config import check_name

    assert check_name("demo-2026.12_a") == "demo-2026.12_a"
    for bad in ("", ".", "..", "/", "a/b", "/abs", "x" * 101, "tab\tname", "nul\x00", "é"):
        with pytest.raises(ConfigError):
            check_name(bad)


def test_deep_huge_and_binary_files(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("x = " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(p)
    p.write_text("#" * 1_000_001)
    with pytest.raises(ConfigError, match="too large"):
        load_config(p)
    p.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(p)


def test_check_runnable_against_registries(tmp_path):
    from agent.config import check_runnable

    check_runnable(load_config(_write(tmp_path, BASE)))
    cases = {
        'objective = "n_heavy_atoms"\n': "does not compute objective",
        BASE.replace("xtb-reorg", "nope"): "unknown backend 'nope'",
        BASE.replace("xtb-reorg", "dft-crystal"): "structure-level",
        BASE + '[structures]\nenabled = true\nrefine = {name = "nope"}\n': "structures.refine.name",
        BASE + '[structures]\nenabled = true\nrefine = {name = "xtb-reorg"}\n': "not a structure-level",
    }
    for body, msg in cases.items():
        cfg = load_config(_write(tmp_path, body if body.startswith(BASE) else body + BASE.replace(
            'objective = "reorg_energy_kjmol"\n', "")))
        with pytest.raises(ConfigError, match=msg):
            check_runnable(cfg)
    with pytest.raises(ConfigError, match="unknown lab adapter 'nope'"):
        load_config(_write(tmp_path, BASE + "[structures]\nenabled = true\n[lab]\nadapter = \"nope\"\n"))


@pytest.mark.parametrize("line", ["daily_budget = true", 'auto_approve = "yes"', "adapter = 1"])
def test_lab_table_is_strict(tmp_path, line):
    body = BASE + "[structures]\nenabled = true\n[lab]\n" + line + "\n"
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, body))
    assert "lab." + line.split()[0] in str(e.value) and "\n" not in str(e.value)


def test_a_misspelt_key_gets_the_close_one():
    """newuser49 #11: ``max_cpu_hour = 0.2`` said only "unknown key"; a misspelt key now names
    the close one of its own section (config sections, a backend's params), a key like no
    other none."""
    from agent.config import ConfigError, parse_config

    base = {"name": "x", "pool": "p.smi", "backends": [{"name": "xtb-reorg"}]}
    for extra, said in (({"max_cpu_hour": 0.2}, "max_cpu_hour: unknown key; did you mean 'max_cpu_hours'?"),
                        ({"surrogate": {"screen_pol": "on"}}, "surrogate.screen_pol: unknown key; did you mean "
                                                              "'screen_pool'?"),
                        ({"zzz": 1}, "zzz: unknown key")):
        with pytest.raises(ConfigError) as e:
            parse_config({**base, **extra})
        assert str(e.value) == f"config error: {said}"
    from sim_backends.params import ParamsError, check_schema

    with pytest.raises(ParamsError, match="did you mean 'n_trials'"):
        check_schema("esf-refined", {"n_trials": int, "seed": int}, {"n_trails": 3})

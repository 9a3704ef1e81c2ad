"""Every option of ``csp`` and ``lab serve`` says what it does and its default (newuser34)."""

from __future__ import annotations

import argparse

import pytest


def _subparser(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = action.choices[name]
    return parser


def _helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    return {a.option_strings[-1]: a.help or "" for a in parser._actions if a.option_strings}


@pytest.mark.parametrize("option, needle", [
    ("--energy-window", "default 20"), ("--top", "default 15"), ("--seed", "default 0"),
    ("--workers", "1 (default)"), ("--sampling", "converged (default)"), ("--out", "nothing is written"),
    ("--n-trials", "default 10,000"), ("--charges", "xtb seconds"),
])
def test_csp_help_states_defaults(option, needle):
    from agent.cli import build_parser

    helps = _helps(_subparser(build_parser(), "csp"))
    assert needle in helps[option], helps[option]


@pytest.mark.parametrize("option, needle", [
    ("--host", "default 127.0.0.1"), ("--port", "default 8765"), ("--seed", "default 0"),
    ("--noise", "default (the default)"), ("--db", "default runs/lab_server.sqlite"),
])
def test_lab_serve_help_states_defaults(option, needle):
    from agent.cli import build_parser

    helps = _helps(_subparser(build_parser(), "lab", "serve"))
    assert needle in helps[option], helps[option]


def test_ctrl_c_inside_a_compiled_kernel_exits_as_interrupted(monkeypatch, capsys):
    """numba reports an interrupted kernel as "SystemError: ... returned a result with an
    exception set" caused by the KeyboardInterrupt: still "interrupted", exit 130
    (newuser37 M8), not an unexpected error."""
    import agent.cli as cli_mod

    def interrupted_kernel(args):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise SystemError("CPUDispatcher(<function _pair_kernel>) returned a result with an "
                              "exception set") from exc

    monkeypatch.setattr(cli_mod, "cmd_backends", interrupted_kernel)
    assert cli_mod.main(["backends"]) == cli_mod.EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err.strip() == "crystal-agent: interrupted"
    monkeypatch.setattr(cli_mod, "cmd_backends", lambda args: 1 / 0)
    assert cli_mod.main(["backends"]) == cli_mod.EXIT_UNEXPECTED
    assert "unexpected ZeroDivisionError" in capsys.readouterr().err

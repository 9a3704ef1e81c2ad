"""The ``crystal-agent`` command line.

    crystal-agent run CONFIG [--name NAME] [--runs-dir DIR] [--address ADDR] [--max-evaluations N]
    crystal-agent resume NAME [--runs-dir DIR] [--address ADDR] [--max-evaluations N] [--cpu-hours H]
    crystal-agent status NAME [--runs-dir DIR] [--json] [--invalid]
    crystal-agent report NAME [--runs-dir DIR] [--verbose]
    crystal-agent backends
    crystal-agent csp ...       (crystal structure prediction, see `crystal-agent csp -h`)
    crystal-agent refine NAME   (structure-level refinement, see `crystal-agent refine -h`)
    crystal-agent lab ...       (lab-robot adapters, see `crystal-agent lab -h`)

Every expected failure (bad config, bad argument, missing file, a damaged store, a
read-only store or a full disk, which say so and that the store is intact, a campaign
already running, ...) prints one line ``crystal-agent: error: ...`` on stderr and
exits with status 2; an unexpected exception prints one line naming its type (exit 1;
``crystal-agent --debug ...`` shows the traceback); an interrupted campaign exits with 130.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import os
import re
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from sim_backends.csp.cli import positive_int  # argparse type, shared with the csp sub-command
from agent import interrupt

EXIT_USAGE = 2
EXIT_UNEXPECTED = 1
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell reports a process killed by it


class CliError(Exception):
    """An expected failure with a one-line message."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (``PROG: error: ... (see PROG -h)``);
    subcommand parsers inherit it."""

    def error(self, message: str) -> None:  # type: ignore[override]
        msg = " ".join(message.split())
        self.exit(EXIT_USAGE, f"{self.prog}: error: {msg} (see {self.prog} -h)\n")


def _runs_dir(args: argparse.Namespace) -> Path:
    return Path(args.runs_dir or os.environ.get("CRYSTAL_AGENT_RUNS", "runs"))


_RESUME = re.compile(r"`crystal-agent resume ([^`\s]+)`")


def with_runs_dir(text: str, args: argparse.Namespace) -> str:
    """``text`` with each ```crystal-agent resume NAME``` hint given ``--runs-dir DIR`` (quoted
    for a shell if needed) when the campaign is not under the default ``runs/``, so that
    the command printed works as it is."""
    runs = getattr(args, "runs_dir", None) or os.environ.get("CRYSTAL_AGENT_RUNS") or ""
    if not runs or Path(runs).resolve() == Path("runs").resolve():
        return text
    return _RESUME.sub(lambda m: f"`crystal-agent resume {m.group(1)} --runs-dir {shlex.quote(runs)}`", text)


def _store_path(args: argparse.Namespace) -> Path | None:
    """The store of the campaign a command works on, when known (for error messages)."""
    from agent.campaign import STORE_FILE, campaign_dir

    if getattr(args, "store_path", None) is not None:
        return args.store_path
    name = getattr(args, "name", None)
    if getattr(args, "command", None) not in ("resume", "status", "report", "refine") or not isinstance(name, str):
        return None
    try:
        return campaign_dir(_runs_dir(args), name) / STORE_FILE
    except Exception:  # noqa: BLE001 - a bad name was refused already
        return None


def _print_status(status: object, as_json: bool, store: object, cfg: object,
                  args: argparse.Namespace | None = None) -> None:
    """The status (:func:`agent.summary.status_record`): units and level of theory on every
    figure, and the structure-stage results when there is a structure stage."""
    from agent.summary import status_lines, status_record

    rec = status_record(status, store, cfg)
    if as_json:
        print(json.dumps(rec, indent=2, sort_keys=True, default=str))
        return
    text = "\n".join(status_lines(rec))
    print(with_runs_dir(text, args) if args is not None else text)


def where_to_look(directory: Path, tracking: bool) -> str:
    """``report: runs/NAME/report/ (start with summary.txt); MLflow: mlflow ui --backend-store-uri
    sqlite:///runs/mlflow.db``: the line a finished run ends with (paths relative to the
    working directory where they are under it); empty when no report was written."""
    report = Path(directory) / "report"
    if not report.is_dir():
        return ""

    def shown(p: Path) -> str:
        try:
            return str(p.resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            return str(p.resolve())

    text = f"report: {shown(report)}/ (start with summary.txt)"
    db = Path(directory).parent / "mlflow.db"
    if tracking and db.is_file():
        text += f"; MLflow: mlflow ui --backend-store-uri sqlite:///{shown(db)}"
    return text


def _run_loop(campaign: object, args: argparse.Namespace, on_start: object = None,
              show_status: object = None) -> int:
    """Run ``campaign`` and print its final status, unless ``show_status(status)`` is False."""
    from agent.runner import CampaignInterrupted, run_campaign

    try:
        status = run_campaign(
            campaign, _runs_dir(args), address=args.address, progress=not args.quiet,
            **({"on_start": on_start} if on_start is not None else {}),
        )
        if show_status is None or show_status(status):
            _print_status(status, False, campaign.store, campaign.cfg, args)
            line = where_to_look(campaign.directory, campaign.cfg.tracking.enabled)
            if line:
                print(line)
    except CampaignInterrupted as exc:
        print(f"crystal-agent: {with_runs_dir(str(exc), args)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        campaign.close()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from agent.campaign import Campaign
    from agent.config import load_config

    runs_dir = _runs_dir(args)
    if Path(args.config).is_dir():
        raise CliError(f"{args.config} is a directory; `crystal-agent run` expects a campaign "
                       "config file (TOML), e.g. `crystal-agent run examples/demo.toml`")
    cfg = load_config(args.config)
    updates = {}
    if args.name is not None:
        updates["name"] = args.name
    if args.max_evaluations is not None:
        updates["max_evaluations"] = args.max_evaluations
    if updates:
        from agent.config import parse_config

        cfg = parse_config({**cfg.model_dump(mode="json", exclude_none=True), **updates})
    from agent.config import check_runnable
    from agent.runner import preflight

    for note in check_runnable(cfg):  # create checks again; its non-fatal notes, said once here
        print(f"crystal-agent: warning: {note}", file=sys.stderr, flush=True)
    preflight(cfg, runs_dir, args.address)  # cluster and tracking reachable: before creating
    from agent.campaign import STORE_FILE

    args.store_path = runs_dir / f".{cfg.name}.creating" / STORE_FILE  # errors until created: nothing to resume
    campaign = Campaign.create(cfg, runs_dir)
    args.store_path = campaign.store.path
    from agent.campaign import discard_unstarted, pool_summary

    def started() -> None:  # Ray started or the cluster joined: a refused start printed nothing
        print(pool_summary(campaign.store, cfg.name), flush=True)

    try:
        return _run_loop(campaign, args, on_start=started)
    except Exception:
        discard_unstarted(campaign.directory)  # a failed start leaves nothing behind
        raise


def cmd_resume(args: argparse.Namespace) -> int:
    from agent.campaign import STORE_FILE, Campaign, campaign_dir
    from agent.store import Store

    if args.max_evaluations is not None:  # a budget below what is done: refused before anything is stored
        path = campaign_dir(_runs_dir(args), args.name) / STORE_FILE
        if path.is_file():
            with Store(path, readonly=True) as store:
                done = store.count_evaluations()[0]
            if args.max_evaluations < done:
                raise CliError(f"--max-evaluations {args.max_evaluations} is below the {done} evaluations "
                               f"campaign {args.name!r} has done; give {done} or more")
    campaign = Campaign.open(args.name, _runs_dir(args), max_evaluations=args.max_evaluations)
    try:
        if args.cpu_hours:  # more CPU time, stored: reopened with it
            from agent.refine_cli import add_cpu_hours, check_cpu_hours

            check_cpu_hours(campaign.cfg, args.cpu_hours)
            add_cpu_hours(campaign, campaign.cfg, args.cpu_hours, "resume")
            campaign.close()
            campaign = Campaign.open(args.name, _runs_dir(args))
        n_before = campaign.n_evaluations
        for line in campaign.version_warnings():
            print(f"crystal-agent: warning: {line}", file=sys.stderr)
    except BaseException:
        campaign.close()
        raise
    code = _run_loop(campaign, args)
    if code == 0:
        done = Campaign.open(args.name, _runs_dir(args), readonly=True)
        try:
            if done.n_evaluations == n_before:  # a budget that binds still binds: say which
                reason = done.status().stop_reason or "nothing left to evaluate"
                hint = ("; `--cpu-hours H` adds CPU time" if reason.startswith("compute budget")
                        and "--cpu-hours" not in reason else "")
                print(f"crystal-agent: nothing to resume: {reason}{hint}", file=sys.stderr)
        finally:
            done.close()
    return code


def cmd_status(args: argparse.Namespace) -> int:
    from agent.campaign import STORE_FILE, campaign_dir, campaign_status, load_stored_config
    from agent.store import Store

    path = campaign_dir(_runs_dir(args), args.name) / STORE_FILE
    if not path.exists():
        raise CliError(f"no campaign {args.name!r} in {_runs_dir(args).resolve()}")
    with Store(path, readonly=True) as store:  # writes nothing: works on a read-only store too
        if args.invalid:
            return _print_invalid(store, as_json=args.json)
        cfg = load_stored_config(store)
        _print_status(campaign_status(store, cfg), args.json, store, cfg, args)
    return 0


def _print_invalid(store: object, as_json: bool) -> int:
    """The pool entries the campaign refused, with the reason for each."""
    bad = [dict(smiles=m["smiles"], name=m["name"], reason=m["reason"])
           for m in store.molecules() if not m["is_valid"]]
    if as_json:
        print(json.dumps(bad, indent=2))
        return 0
    print(f"{len(bad)} invalid pool entries")
    for m in bad:
        print(f"{m['smiles']}  {m['name'] or '-'}  {m['reason']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from agent.campaign import Campaign, campaign_dir
    from agent.report import report_summary, write_plots
    from agent.store import error_kind

    directory = campaign_dir(_runs_dir(args), args.name)
    if directory.is_dir() and not os.access(directory, os.W_OK):
        raise CliError(_report_read_only(args, directory, "the folder cannot be written"))
    campaign = Campaign.open(args.name, _runs_dir(args), readonly=True)
    try:
        paths = write_plots(campaign, progress=_report_progress)
        print("\n".join(str(p) for p in paths) if args.verbose else "\n".join(report_summary(paths)))
    except OSError as exc:
        kind = error_kind(exc)
        if kind not in ("readonly", "full"):
            raise
        why = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        if kind == "full":
            raise CliError(f"disk full: cannot write the report of {args.name!r} ({why}); free space and "
                           "run `crystal-agent report` again (the store is intact)") from None
        raise CliError(_report_read_only(args, directory, why)) from None
    finally:
        campaign.close()
    return 0


def _report_read_only(args: argparse.Namespace, directory: Path, why: str) -> str:
    """The one line for a report that cannot be written into its read-only campaign folder."""
    return (f"read-only: cannot write the report into {directory} ({why}); `crystal-agent status "
            f"{args.name}` reads the campaign as it is; for the report, copy the folder into a writable "
            f"DIR and run `crystal-agent report {args.name} --runs-dir DIR`")


def _report_progress(text: str) -> None:
    """A slow step of ``report`` (stderr, so that stdout stays the summary or list of files)."""
    print(f"report: {text}", file=sys.stderr, flush=True)


def cmd_backends(args: argparse.Namespace) -> int:
    from sim_backends.registry import backend_class, user_facing

    rows = []
    for name in sorted(user_facing()):
        try:
            cls = backend_class(name)
            rows.append((name, cls.target, str(cls.fidelity), ", ".join(cls.computes), cls.description))
        except Exception as exc:  # noqa: BLE001 - list what cannot load, with why
            rows.append((name, "?", "?", "", f"cannot load: {exc}"))
    if args.json:
        keys = ("name", "target", "fidelity", "computes", "description")
        print(json.dumps([dict(zip(keys, r, strict=True)) for r in rows], indent=2))
        return 0
    width = max(len(r[0]) for r in rows)
    print(f"{'name':<{width}}  target     fid  computes")
    for name, target, fid, computes, desc in rows:
        print(f"{name:<{width}}  {target:<9}  {fid:>3}  {computes}")
        if desc:
            print(f"{'':<{width}}  {desc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from agent import __version__

    parser = OneLineParser(
        prog="crystal-agent",
        description="Active-learning discovery agent for molecular crystals.",
    )
    parser.add_argument("--version", action="version", version=f"crystal-agent {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--runs-dir", help="campaign directory root (default: runs/)")

    p = sub.add_parser("run", help="start a campaign from a TOML config")
    p.add_argument("config", help="campaign TOML file")
    p.add_argument("--name", help="campaign name (default: from the config)")
    common(p)
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    p.add_argument("--max-evaluations", type=positive_int, help="override the evaluation budget")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("resume", help="continue a stopped or killed campaign")
    p.add_argument("name")
    common(p)
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    p.add_argument("--max-evaluations", type=positive_int,
                   help="raise or lower the evaluation budget")
    p.add_argument("--cpu-hours", type=float, default=0.0,
                   help="extra CPU hours for a campaign with max_cpu_hours (stored)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("status", help="summarise a campaign")
    p.add_argument("name")
    common(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--invalid", action="store_true",
                   help="list the pool entries refused as invalid, with reasons")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("report", help="write a campaign's plots and tables")
    p.add_argument("name")
    common(p)
    p.add_argument("--verbose", "-v", action="store_true",
                   help="print every file written (default: the directories, with counts)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("backends", help="list registered backends")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_backends)

    from agent.executor import csp_executor
    from sim_backends.csp.cli import add_csp_parser

    add_csp_parser(sub, executor_factory=csp_executor)  # Ray for --workers > 1, never nested
    for module, adder in (
        ("agent.refine_cli", "add_refine_parser"),
        ("agent.lab.cli", "add_lab_parser"),
    ):
        getattr(importlib.import_module(module), adder)(sub)
    return parser


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _interrupted(exc: BaseException) -> bool:
    """A KeyboardInterrupt is in ``exc``'s cause or context chain (a compiled function that
    was interrupted reports "returned a result with an exception set" as a SystemError)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (see the module docstring)."""
    if argv is None and threading.current_thread() is threading.main_thread():
        # run as a program: `kill`, `timeout`, SLURM and systemd stop it as Ctrl-C does, from
        # the first moment (the campaign runner keeps this while Ray, which sets its own, runs)
        signal.signal(signal.SIGTERM, interrupt.on_sigterm)
        interrupt.handle_sigint()  # a Ctrl-C a library swallows is recorded too
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before a command started (parsing, imports)
        print("crystal-agent: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:  # reported, or the command ended: a later call in this process starts afresh
        interrupt.clear()


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage error (one line printed), --help or --version
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    import sqlite3

    from pydantic import ValidationError

    from agent.config import ConfigError
    from agent.executor import ExecutorError
    from agent.store import StoreDamagedError, StoreLockedError, store_error
    from agent.tracking import TrackingError
    from sim_backends.base import BackendError
    from sim_backends.registry import UnknownBackendError

    expected = (
        CliError, ConfigError, StoreLockedError, StoreDamagedError, UnknownBackendError,
        BackendError, ValidationError, ValueError, OSError, ExecutorError, TrackingError,
    )
    try:
        interrupt.check()  # a SIGTERM an import swallowed (a library's bare `except:`)
        rc = int(args.func(args) or 0)
        sys.stdout.flush()
        return rc
    except KeyboardInterrupt:
        print("crystal-agent: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`crystal-agent ... | head`): quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        if _interrupted(exc):  # Ctrl-C inside a compiled kernel (numba, torch) wrapped as another error
            print("crystal-agent: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if args.debug:
            raise
        if isinstance(exc, sqlite3.DatabaseError) or (
                isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)):
            # disk full and read-only say so (the store is intact); only corruption is "damaged"
            exc = store_error(exc, _store_path(args))
        if isinstance(exc, expected):
            print(f"crystal-agent: error: {with_runs_dir(_first_line(exc), args)}", file=sys.stderr)
            return EXIT_USAGE
        print(f"crystal-agent: error: unexpected {type(exc).__name__}: {_first_line(exc)} "
              "(rerun with `crystal-agent --debug ...` for the traceback)", file=sys.stderr)
        return EXIT_UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())

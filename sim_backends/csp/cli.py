"""``crystal-agent csp``: run crystal structure prediction from the command line.

    crystal-agent csp SMILES_OR_FILE [--n-trials N] [--sampling converged|fixed]
                      [--space-groups P2_1/c,P-1] [--out DIR] [--seed S] [--json]
                      [--charges resp-lpn|resp|resp-lp|xtb] [--workers W] [--energy-window E] [--max-trials M]
                      [--z-prime 1|2|1,2] [--racemic] [--overwrite]

``--n-trials`` is the trial budget (default :data:`DEFAULT_TRIAL_BUDGET`): with the default
converged sampling the search stops earlier when every space group's low-energy region
is converged (:mod:`sim_backends.csp.sampling`); ``--sampling fixed`` draws all of them.
Prints a table of the lowest minima, then per space group how converged it is, with a
WARNING line on stderr when the budget ended the search first (every warning, :func:`csp_warnings`,
goes to stderr), or, with ``--json``, one JSON object: the level of theory (``level``, and
``levels`` per level key), ``energy_unit`` (kJ/mol per molecule), ``warnings`` (every warning
the text mode prints, also in ``meta.warnings``), ``notes``, ``meta`` (``convergence``
included) and the landscape records without CIF text. The table's title gives the wall and
CPU seconds of the command (``wall_s_total``, ``cpu_s_total`` in ``meta`` and ``run.json``,
:func:`command_cpu_s`). Progress goes to stderr: a rich bar on a terminal, else (a log file,
a pipe, and always with ``--json``) a plain line at most every :attr:`PlainProgress.every_s`
seconds. Writes the landscape to ``--out`` when given; a landscape already there is replaced
with a line on stderr saying so, and one of another molecule is refused (exit 2, nothing
touched) unless ``--overwrite`` is given. Every argument is validated before anything is computed or created
(:func:`sim_backends.csp.run.validate_csp_arguments`; ``--n-trials`` above 200,000 needs
``--max-trials``). Errors are one line on stderr with exit code 2. An interruption (Ctrl-C,
SIGTERM) says what ``--out`` holds (:func:`interrupted_text`: nothing, during the search) before
crystal-agent's "interrupted" (exit 130).

Importing this module is cheap (argparse only).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

from sim_backends.csp import DEFAULT_TRIAL_BUDGET  # the trial budget when --n-trials is not given

#: the unit of every energy the sub-command prints
ENERGY_UNIT = "kJ/mol per molecule"


def add_csp_parser(subparsers: Any, executor_factory: Any = None) -> argparse.ArgumentParser:
    """Add the ``csp`` sub-command to an argparse ``subparsers`` object.

    ``executor_factory(n_workers)`` is a context manager yielding the
    :class:`~sim_backends.executor.MapExecutor` the run uses (``crystal-agent`` passes
    :func:`agent.executor.csp_executor`: Ray for ``--workers`` > 1); without one the run
    is in-process and ``--workers`` > 1 is refused."""
    p = subparsers.add_parser(
        "csp", help="crystal structure prediction for a rigid or flexible molecule (W99 force field)",
        description="Crystal structure prediction: Sobol trials, batched rigid-body "
                    "lattice-energy minimisation, duplicate removal.")
    p.add_argument("molecule", metavar="SMILES_OR_FILE",
                   help="SMILES, or a .smi/.txt file (first SMILES) or .xyz/.mol/.sdf geometry")
    p.add_argument("--n-trials", type=int, default=DEFAULT_TRIAL_BUDGET,
                   help=f"trial budget (default {DEFAULT_TRIAL_BUDGET:,}); converged sampling may stop earlier")
    p.add_argument("--sampling", choices=("converged", "fixed"), default="converged",
                   help="converged (default): trials in rounds until the low-energy region of every space "
                        "group is converged or the budget is spent; fixed: all --n-trials, split evenly")
    p.add_argument("--space-groups", default=None,
                   help="comma-separated symbols or numbers, e.g. P2_1/c,P-1 or 14,2: P1, P-1, P2_1, C2, Cc, "
                        "P2_1/c, C2/c, P2_12_12_1, Pna2_1, Pbca; other settings (P2_1/n, I2/a) are searched "
                        "in the standard one (default: all ten)")
    p.add_argument("--out", default=None,
                   help="directory for landscape.csv, CIFs, plot and run.json (default: none; without "
                        "--out nothing is written, the results are only printed). A landscape written there "
                        "before is replaced (its files deleted, other files kept; a line on stderr says so); "
                        "one of another molecule is refused unless --overwrite is given")
    p.add_argument("--overwrite", action="store_true",
                   help="let --out replace a landscape of a different molecule (the same molecule's is "
                        "always replaced)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Sobol trial sequences (>= 0, default 0)")
    p.add_argument("--charges", choices=("resp", "resp-lp", "resp-lpn", "xtb"), default=None,
                   help="point charges: RESP fit to the HF/6-31G* ESP (pyscf) with lone-pair sites on the "
                        "N acceptors (resp-lpn), without sites (resp), with sites on N and O (resp-lp), or "
                        "GFN2-xTB (default: resp-lpn for a rigid molecule, xtb for a "
                        "flexible one, which takes resp or xtb only). RESP takes minutes for a larger molecule (~15 CPU min for "
                        "C26H16); xtb seconds. Charges are cached per molecule")
    p.add_argument("--workers", type=int, default=1,
                   help="parallel Ray workers (CPUs of an embedded Ray; with RAY_ADDRESS set, tasks go "
                        "to that cluster); 1 (default): in this process")
    p.add_argument("--energy-window", type=float, default=20.0,
                   help="keep minima within this many kJ/mol (per molecule) of the lowest (default 20)")
    p.add_argument("--max-trials", type=int, default=None,
                   help="raise the upper limit of --n-trials (default 200,000; memory grows with it)")
    p.add_argument("--flexible", choices=("auto", "rigid", "always"), default="auto",
                   help="auto: a molecule with rotatable bonds is searched with its conformer ensemble "
                        "(GFN2-xTB), intramolecular energies and torsion relaxation; always: every "
                        "SMILES is; rigid: never (rotatable bonds refused)")
    p.add_argument("--max-rotatable-bonds", type=int, default=None,
                   help="refuse flexible molecules with more rotatable bonds (default 4)")
    p.add_argument("--z-prime", default="1",
                   help="Z' values searched: 1 (default), 2 or 1,2; Z'=2 (two independent molecules) "
                        "runs in the given --space-groups, or by default in P2_1/c, P-1, P2_12_12_1, P2_1. "
                        "Z'=2 is costly: pyrrole (10 atoms) with 1,2 took 465 CPU s (12 min wall) and the "
                        "default 10,000 trials did not converge it; give it --n-trials 30000 or more "
                        "(~25 CPU min for 10 atoms; README)")
    p.add_argument("--racemic", action="store_true",
                   help="for a SMILES with assigned stereocentres (one enantiomer): search the racemic compound "
                        "in every space group; by default such a molecule is searched only in the Sohncke groups "
                        "(P2_12_12_1, P2_1, C2, P1), whose crystals hold one enantiomer")
    p.add_argument("--top", type=positive_int, default=15, help="rows printed in the table (>= 1, default 15)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run_csp_command, csp_executor_factory=executor_factory)
    return p


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (also used by ``crystal-agent``'s own options)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def run_csp_command(args: argparse.Namespace) -> int:
    """Run the ``csp`` sub-command; returns the exit code (2 on bad input)."""
    import os
    import time
    from pathlib import Path

    t_cmd, cpu_cmd = time.monotonic(), os.times()
    stage, plain, previous = "search", None, None  # what an interruption (Ctrl-C, SIGTERM) leaves: _interrupted

    from sim_backends.base import BackendError
    from sim_backends.csp.run import MAX_TRIALS_DEFAULT, run_csp, validate_csp_arguments
    from sim_backends.csp.spacegroups import parse_space_groups, parse_z_prime, setting_notes

    try:
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1 (1 runs in this process), got {args.workers}")
        max_trials = MAX_TRIALS_DEFAULT if args.max_trials is None else args.max_trials
        validate_csp_arguments(args.n_trials, energy_window_kjmol=args.energy_window,
                               n_workers=args.workers, seed=args.seed, max_trials=max_trials,
                               sampling=args.sampling, max_rotatable_bonds=args.max_rotatable_bonds)
        factory = getattr(args, "csp_executor_factory", None)
        if args.workers > 1 and factory is None:
            raise ValueError("--workers > 1 needs a Ray executor (run it as crystal-agent csp)")
        if args.workers > (os.cpu_count() or 1) and not os.environ.get("RAY_ADDRESS"):
            raise ValueError(f"--workers {args.workers} is more than the {os.cpu_count()} CPUs here")
        from sim_backends.csp.chirality import stereo_policy

        stereo = stereo_policy(args.molecule, args.racemic)
        parse_space_groups(args.space_groups, stereo.sohncke_only)
        parse_z_prime(args.z_prime)
        if stereo.note:
            print(f"note: {stereo.note}", file=sys.stderr)
        for line in setting_notes(args.space_groups):  # P2_1/n given: searched (and written) as P2_1/c
            print(f"note: {line}", file=sys.stderr)
        if args.out is not None:
            _check_out_dir(Path(args.out))
            previous = previous_landscape(Path(args.out))
            given = input_smiles(args.molecule) if previous is not None else None
            if given is not None and not getattr(args, "overwrite", False) and not same_molecule(given, previous[0]):
                raise ValueError(f"--out {args.out} holds the landscape of {previous[0] or 'an unnamed molecule'} "
                                 f"({previous[1]} structures), not of {args.molecule}: give --overwrite to replace it, "
                                 "or another --out")
        from sim_backends.csp.charges import stage_messages
        from sim_backends.executor import InProcessExecutor

        # a rich bar only on a terminal (and never with --json: it draws on stdout); else plain lines on stderr
        bar = not args.json and sys.stderr.isatty()
        with stage_messages(), (factory or _in_process)(args.workers) as executor:
            in_process = isinstance(executor, InProcessExecutor)
            plain = None if bar else PlainProgress(executor, args.n_trials, t_cmd)
            landscape = run_csp(
                args.molecule, args.n_trials, space_groups=args.space_groups, seed=args.seed,
                energy_window_kjmol=args.energy_window, out_dir=None,
                progress=bar, executor=plain or executor,
                charges=args.charges, max_trials=max_trials, sampling=args.sampling,
                flexible=args.flexible, max_rotatable_bonds=args.max_rotatable_bonds,
                z_prime=args.z_prime, racemic=args.racemic,
            )
            if plain is not None:
                plain.finish()
        if args.out is not None:
            if previous is not None:
                print(f"replacing the landscape of {previous[0] or 'an unnamed molecule'} ({previous[1]} structures) "
                      f"in {args.out}", file=sys.stderr)
            stage = "writing"
            landscape.write(args.out)
            stage = "written"
        landscape.meta["cpu_s_total"] = round(command_cpu_s(cpu_cmd, landscape.meta, in_process), 2)
        landscape.meta["wall_s_total"] = round(time.monotonic() - t_cmd, 2)
        if args.out is not None:  # run.json has the totals, the writing's CPU included
            run_json = Path(args.out) / "run.json"
            data = json.loads(run_json.read_text())
            data.update({k: landscape.meta[k] for k in ("cpu_s_total", "wall_s_total")})
            run_json.write_text(json.dumps(data, indent=2, default=str))
    except (ValueError, BackendError, OSError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"crystal-agent csp: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # crystal-agent prints "interrupted" and exits 130
        print(interrupted_text(args.out, stage, time.monotonic() - t_cmd, plain.trials if plain else None,
                               previous is not None), file=sys.stderr)
        raise
    warnings, notes = csp_warnings(landscape), csp_notes(landscape)
    if args.json:
        level = landscape.levels[landscape.level_keys[0]]
        print(json.dumps({"smiles": landscape.smiles, "level": level, "levels": landscape.levels,
                          "energy_unit": ENERGY_UNIT, "warnings": warnings, "notes": notes,
                          "meta": {**landscape.meta, "warnings": warnings},
                          "minima": landscape.to_records(with_cif=False)}, default=str))
        for line in warnings:
            print(f"WARNING: {line}", file=sys.stderr)
        return 0
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from sim_backends.csp.dedupe import format_z_prime

    e0 = landscape.minima[0].energy_kjmol if landscape.minima else 0.0
    table = Table(title=f"CSP {escape(landscape.smiles)}: {len(landscape)} unique minima from "
                        f"{landscape.meta.get('n_trials')} trials "
                        f"({landscape.meta['wall_s_total']:.0f} s wall, {landscape.meta['cpu_s_total']:.0f} CPU s)\n"
                        f"{landscape.levels[landscape.level_keys[0]]}; "
                        f"E_latt, dE in {ENERGY_UNIT}, density in g/cm3; searched in: the space group "
                        "of the trials; found: trials that ended in the minimum")
    for col in ("id", "E_latt", "dE", "density", "space group", "searched in", "Z", "Z'", "found"):
        # never truncate a space-group symbol (P2_12_1... could be No. 18 or 19)
        table.add_column(col, justify="right", no_wrap=True, overflow="fold" if col == "id" else "ignore",
                         min_width=len(col))
    for m in landscape.minima[: args.top]:
        table.add_row(m.id, f"{m.energy_kjmol:.2f}", f"{m.energy_kjmol - e0:.2f}",
                      f"{m.density_gcm3:.3f}", m.space_group, m.search_space_group, str(m.z),
                      format_z_prime(m.z_prime), str(m.multiplicity))
    console = Console()
    if not console.is_terminal:  # a file or pipe: whole rows, not clipped to 80 columns
        from rich.measure import Measurement

        wide = Measurement.get(console, console.options.update(width=10_000), table).maximum
        console = Console(width=max(console.width, wide))
    console.print(table)
    for line in notes:
        print(f"note: {line}")
    if landscape.meta.get("flexible"):
        from sim_backends.csp.flexible import conformer_lines

        for line in conformer_lines(landscape):
            print(line)
    from sim_backends.csp.sampling import convergence_lines, sampling_mode_text, stopped_by_text

    conv = landscape.meta.get("convergence") or {}
    lines = [ln for ln in convergence_lines(conv) if not ln.startswith("WARNING")]  # warnings: below
    if lines:
        n_rounds = conv.get("n_rounds")
        print(f"sampling ({sampling_mode_text(landscape.meta.get('sampling'))}, {n_rounds} "
              f"round{'' if n_rounds == 1 else 's'}, stopped by "
              f"{stopped_by_text(conv.get('stopped_by'))}), per space group searched:")
        for line in lines:
            print(line)
    for line in warnings:
        print(f"WARNING: {line}", file=sys.stderr)
    if args.out:
        print(f"landscape written to {args.out}: landscape.csv, cif/<id>.cif (symmetrised, with "
              "energies), landscape.png, run.json")
    return 0


def interrupted_text(out: str | None, stage: str, elapsed_s: float, trials: int | None = None,
                     had_landscape: bool = False) -> str:
    """The line an interrupted ``csp`` prints (before crystal-agent's "interrupted"): what is in
    ``--out``. The landscape is written only when the search has ended (a search stopped half-way
    is not a landscape whose convergence the files could state), so an interruption during the
    search writes nothing; one while writing leaves an incomplete set of files (newuser46a #6)."""
    done = f"{int(elapsed_s) // 60} min {int(elapsed_s) % 60} s" + (
        f", {trials:,} trials minimised" if trials is not None else "")
    if stage == "writing":
        return (f"crystal-agent csp: interrupted while writing the landscape to --out {out} ({done}): the files "
                "there are incomplete; rerun to replace them")
    if stage == "written":
        return (f"crystal-agent csp: interrupted after the landscape was written to --out {out} ({done}); "
                "its run.json lacks the command's CPU and wall totals")
    where = (f"nothing was written to --out {out}" + ("; the landscape already there is unchanged"
                                                        if had_landscape else "")
             if out is not None else "nothing was written (no --out given)")
    return (f"crystal-agent csp: interrupted during the search ({done}): {where}; the landscape is written "
            "only when the search ends")


def csp_warnings(landscape: Any) -> list[str]:
    """Every warning of a CSP run, as the CLI prints them on stderr (without the "WARNING: "
    prefix) and lists them in its JSON: the trial budget ending the search unconverged (rigid:
    :func:`~sim_backends.csp.sampling.convergence_warning`; flexible: per conformer,
    :func:`~sim_backends.csp.flexible.conformer_warnings`), then ``meta["warnings"]`` (the
    force field's domain, collapsed minimisations)."""
    from sim_backends.csp.flexible import conformer_warnings
    from sim_backends.csp.sampling import convergence_warning

    budget = convergence_warning(landscape.meta.get("convergence") or {})
    return [*([budget] if budget else []), *conformer_warnings(landscape), *(landscape.meta.get("warnings") or [])]


def csp_notes(landscape: Any) -> list[str]:
    """Caveats on the energies that are not warnings (the "note:" lines of the CLI)."""
    if str(landscape.meta.get("charge_method") or "").startswith("xtb"):
        better = "resp" if landscape.meta.get("flexible") else "resp-lpn"  # the conformer search takes no sites
        return [f"with GFN2-xTB Mulliken charges the lattice energies are 20-50 kJ/mol per molecule too weak "
                f"(they rank structures; use --charges {better} for lattice energies)"]
    return []


class PlainProgress:
    """The search's progress as plain lines on stderr, for a stderr that is not a terminal
    (nohup, SLURM, a pipe) and for ``--json`` (stdout keeps the JSON), where a rich bar is
    drawn once or not at all (``crystal-agent run`` does the same: :class:`agent.runner.PlainProgress`).

    Wraps the run's :class:`~sim_backends.executor.MapExecutor` and counts the minimisation
    units as they complete: trials minimised of the budget (converged sampling may stop
    earlier), their converged minima (before duplicate removal), stage-2 re-minimisations,
    elapsed time since the command started; a line at most every :attr:`every_s` seconds (the
    first unit's at once), and the last by :meth:`finish`."""

    every_s = 10.0

    def __init__(self, executor: Any, budget: int, start: float | None = None, stream: Any = None) -> None:
        import time

        self.executor, self.budget = executor, int(budget)
        self.start = time.monotonic() if start is None else start
        self.stream = stream
        self.trials = self.converged = self.polished = 0
        self.last: float | None = None
        self.shown = (0, 0)

    @property
    def n_workers(self) -> int:
        return self.executor.n_workers

    def map_unordered(self, fn: Any, items: Any, shared: tuple[Any, ...] = ()) -> Any:
        import time

        for result in self.executor.map_unordered(fn, items, shared=shared):
            if isinstance(result, dict) and "energy_kjmol" in result:
                n = len(result["energy_kjmol"])
                if result.get("n_generated", 1):  # a unit of new trials (stage 1, or the full protocol)
                    self.trials += n
                    self.converged += int(sum(bool(c) for c in result.get("converged", ())))
                else:  # given trials: stage-2 re-minimisation of stage-1 minima
                    self.polished += n
                now = time.monotonic()
                if self.last is None or now - self.last >= self.every_s:
                    self._line()
            yield result

    def finish(self) -> None:
        """The last line, when the counts changed since the one shown."""
        if self.shown != (self.trials, self.polished):
            self._line()

    def _line(self) -> None:
        import time

        self.last = time.monotonic()
        self.shown = (self.trials, self.polished)
        elapsed = int(self.last - self.start)
        polished = f", {self.polished:,} re-minimised with the full model" if self.polished else ""
        print(f"csp: {self.trials:,} of at most {self.budget:,} trials minimised, {self.converged:,} converged "
              f"minima (before duplicate removal){polished}, "
              f"{elapsed // 3600}:{elapsed // 60 % 60:02d}:{elapsed % 60:02d} elapsed",
              file=self.stream or sys.stderr, flush=True)


def command_cpu_s(start: Any, meta: dict[str, Any], in_process: bool) -> float:
    """CPU seconds (user + system) of the command since ``start`` (an :func:`os.times` result):
    this process's own CPU, plus, for an in-process run, its waited-for children's (what
    ``time`` counts), or, for workers elsewhere (Ray), their CPU as the landscape records it
    (:func:`workers_cpu_s`; the children's is left out there, as Ray's worker processes could be
    among them, and so is the CPU of Ray's own daemons). The interpreter's start-up and imports
    before the command (about 1.5 CPU s) are not counted: for an in-process run the figure is
    that much below ``time``'s user + sys (9.0 vs 10.5 s for a 512-trial benzoquinone run)."""
    import os

    now = os.times()
    own = (now.user - start.user) + (now.system - start.system)
    if in_process:
        return own + (now.children_user - start.children_user) + (now.children_system - start.children_system)
    return own + workers_cpu_s(meta)


def workers_cpu_s(meta: dict[str, Any]) -> float:
    """The CPU seconds of the minimisation units (trial generation and minimisation) a CSP
    landscape's ``meta`` records: ``search_cpu_s`` of a flexible search, else ``trials_cpu_s`` +
    ``minimise_cpu_s``."""
    if meta.get("flexible"):
        return float(meta.get("search_cpu_s") or 0.0)
    return float(meta.get("trials_cpu_s") or 0.0) + float(meta.get("minimise_cpu_s") or 0.0)


def previous_landscape(out: "Path") -> tuple[str, int] | None:
    """``(smiles, number of structures)`` of the landscape written into ``out`` before (its
    ``landscape.csv`` and ``run.json``), None when there is none."""
    import csv

    table = out / "landscape.csv"
    if not table.is_file():
        return None
    try:
        with open(table, newline="") as fh:
            reader = csv.DictReader(fh)
            if "id" not in (reader.fieldnames or []):
                return None  # not a table Landscape.write wrote (it would not touch it)
            n = sum(1 for _ in reader)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    try:
        smiles = str(json.loads((out / "run.json").read_text()).get("smiles") or "")
    except (OSError, ValueError, AttributeError):
        smiles = ""
    return smiles, n


def input_smiles(molecule: str) -> str | None:
    """The SMILES of the ``csp`` input, cheaply, before the run: the text, a .smi/.txt file's
    first SMILES, a geometry file's perceived one (its name's stem when the bonds cannot be
    perceived, as the run names it); None for an input the run itself refuses (no such file, a
    text that is not a SMILES), so that its error is the one given."""
    from pathlib import Path

    from sim_backends.csp.run import (
        _GEOMETRY_SUFFIXES, _SMILES_SUFFIXES, _parses_as_smiles, _perceive_smiles, smiles_from_file,
    )

    path = Path(str(molecule).strip())
    suffix = path.suffix.lower()
    try:
        if suffix in _SMILES_SUFFIXES | _GEOMETRY_SUFFIXES and not path.is_file():
            return None
        if suffix in _SMILES_SUFFIXES:
            return smiles_from_file(path)
        if suffix in _GEOMETRY_SUFFIXES:
            from ase.io import read

            atoms = read(path)
            return _perceive_smiles(atoms.get_chemical_symbols(), atoms.get_positions()) or path.stem
    except Exception:  # noqa: BLE001 - an unreadable file is refused by the run itself
        return None
    text = str(molecule).strip()
    return text if _parses_as_smiles(text) else None


def same_molecule(a: str, b: str) -> bool:
    """Whether two SMILES name the same molecule (RDKit canonical SMILES, stereo included;
    the strings themselves when either does not parse)."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    try:
        ma, mb = (Chem.MolFromSmiles(x) if x and len(x) < 10_000 else None for x in (a, b))
    finally:
        RDLogger.EnableLog("rdApp.*")
    if ma is None or mb is None:
        return a.strip() == b.strip()
    return Chem.MolToSmiles(ma) == Chem.MolToSmiles(mb)


@contextlib.contextmanager
def _in_process(n_workers: int) -> Any:
    from sim_backends.executor import InProcessExecutor

    yield InProcessExecutor()


def _check_out_dir(out: "Path") -> None:
    """Refuse an ``--out`` that cannot become a directory, before the run (OSError)."""
    import os

    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a directory")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise PermissionError(f"--out {out}: {parent} is not a writable directory")
    if parent != out:  # try the first directory to create (e.g. /proc/x: ENOENT, not EACCES)
        first = out
        while first.parent != parent:
            first = first.parent
        try:
            first.mkdir()
            first.rmdir()
        except OSError as exc:
            raise OSError(f"cannot create --out directory {out}: {exc.strerror or exc}") from None

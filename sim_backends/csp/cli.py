"""``crystal-agent csp``: run crystal structure prediction from the command line.

    crystal-agent csp SMILES_OR_FILE [--n-trials N] [--sampling converged|fixed]
                      [--space-groups P2_1/c,P-1] [--out DIR] [--seed S] [--json]
                      [--charges resp-lpn|resp|resp-lp|xtb] [--workers W] [--energy-window E] [--max-trials M]
                      [--z-prime 1|2|1,2] [--racemic]

``--n-trials`` is the trial budget (default :data:`DEFAULT_TRIAL_BUDGET`): with the default
converged sampling the search stops earlier when every space group's low-energy region
is converged (:mod:`sim_backends.csp.sampling`); ``--sampling fixed`` draws all of them.
Prints a table of the lowest minima, then per space group how converged it is, with a
WARNING line on stderr when the budget ended the search first (every warning, :func:`csp_warnings`,
goes to stderr), or, with ``--json``, one JSON object: the level of theory (``level``, and
``levels`` per level key), ``energy_unit`` (kJ/mol per molecule), ``warnings`` (every warning
the text mode prints, also in ``meta.warnings``), ``notes``, ``meta`` (``convergence``
included) and the landscape records without CIF text. Writes the landscape to ``--out``
when given. Every argument is validated before anything is computed or created
(:func:`sim_backends.csp.run.validate_csp_arguments`; ``--n-trials`` above 200,000 needs
``--max-trials``). Errors are one line on stderr with exit code 2.

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
                        "--out nothing is written, the results are only printed)")
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
                        "runs in the given --space-groups, or by default in P2_1/c, P-1, P2_12_12_1, P2_1")
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
    from pathlib import Path

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
        from sim_backends.csp.charges import stage_messages

        with stage_messages(), (factory or _in_process)(args.workers) as executor:
            landscape = run_csp(
                args.molecule, args.n_trials, space_groups=args.space_groups, seed=args.seed,
                energy_window_kjmol=args.energy_window, out_dir=args.out,
                progress=not args.json and sys.stderr.isatty(), executor=executor,
                charges=args.charges, max_trials=max_trials, sampling=args.sampling,
                flexible=args.flexible, max_rotatable_bonds=args.max_rotatable_bonds,
                z_prime=args.z_prime, racemic=args.racemic,
            )
    except (ValueError, BackendError, OSError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"crystal-agent csp: error: {msg}", file=sys.stderr)
        return 2
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
                        f"({landscape.meta.get('wall_s', 0):.0f} s wall)\n{landscape.levels[landscape.level_keys[0]]}; "
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
    from sim_backends.csp.sampling import convergence_lines, stopped_by_text

    conv = landscape.meta.get("convergence") or {}
    lines = [ln for ln in convergence_lines(conv) if not ln.startswith("WARNING")]  # warnings: below
    if lines:
        print(f"sampling ({landscape.meta.get('sampling')}, {conv.get('n_rounds')} rounds, stopped by "
              f"{stopped_by_text(conv.get('stopped_by'))}), per space group searched:")
        for line in lines:
            print(line)
    for line in warnings:
        print(f"WARNING: {line}", file=sys.stderr)
    if args.out:
        print(f"landscape written to {args.out}: landscape.csv, cif/<id>.cif (symmetrised, with "
              "energies), landscape.png, run.json")
    return 0


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

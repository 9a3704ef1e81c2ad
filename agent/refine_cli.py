"""``crystal-agent refine NAME``: run (more of) the structure-level refinement stage of a
campaign on its stored CSP landscapes, without spending anything on the molecule stage.

    crystal-agent refine NAME [--runs-dir DIR] [--budget N] [--cpu-hours H] [--address ADDR] [--quiet]

``--budget N`` runs N more structure-stage evaluations than were done (default: continue
to the budget already configured): it sets ``[structures] budget_evaluations`` to the
stage's evaluations done + N and ``max_evaluations`` so that the molecule stage's share
(``max_evaluations`` less the structure budget) is unchanged and N more fit, in the stored
config, and prints one line saying so. ``--cpu-hours H`` adds H CPU hours to ``max_cpu_hours`` the same
way. A campaign whose CPU budget is spent is refused in one line, its stored config
unchanged, unless ``--cpu-hours`` raises it. The campaign config must enable the
structure stage (``[structures] enabled = true``). When nothing was refined (no budget
left, nothing left to evaluate) the status is not printed, only one line on stderr saying
why, with what would add more (exit 0).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_refine_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("refine", help="run the structure-level refinement stage of a campaign")
    p.add_argument("name", help="campaign name")
    p.add_argument("--runs-dir", help="campaign directory root (default: runs/)")
    p.add_argument("--budget", type=int, default=0, help="extra structure-stage evaluations")
    p.add_argument("--cpu-hours", type=float, default=0.0,
                   help="extra CPU hours for a campaign with max_cpu_hours")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_refine_command)


def check_cpu_hours(cfg: Any, hours: float) -> None:
    """Refuse ``--cpu-hours hours`` for ``cfg`` in one line: not a finite number >= 0, no CPU
    budget to raise, or a budget above :data:`agent.config.MAX_CPU_HOURS`."""
    import math

    from agent.cli import CliError
    from agent.config import MAX_CPU_HOURS

    if not (math.isfinite(hours) and hours >= 0):
        raise CliError("--cpu-hours must be a finite number >= 0")
    if hours and cfg.max_cpu_hours is None:
        raise CliError(f"campaign {cfg.name!r} has no CPU budget (max_cpu_hours) to raise; leave out --cpu-hours")
    if hours and cfg.max_cpu_hours + hours > MAX_CPU_HOURS:
        raise CliError(f"--cpu-hours {hours:g} would make the budget {cfg.max_cpu_hours + hours:g} CPU hours, "
                       f"above the ceiling of {MAX_CPU_HOURS:,.0f}; give the hours you mean")


def add_cpu_hours(campaign: Any, cfg: Any, hours: float, command: str) -> Any:
    """``cfg`` with ``hours`` more CPU hours, stored with the ``campaign`` (a later resume
    continues to it; :func:`agent.campaign.write_config`); says so in one line. Checked
    first by :func:`check_cpu_hours`."""
    from agent.campaign import write_config

    before = cfg.max_cpu_hours
    cfg = cfg.model_copy(update={"max_cpu_hours": round(before + hours, 9)})  # 0.2 + 0.01, not 0.21000000000000002
    write_config(campaign.store, campaign.directory, cfg)
    print(f"{command}: {cfg.name}: CPU budget (max_cpu_hours) {before:g} -> {cfg.max_cpu_hours:g} "
          "CPU h (stored: a later resume continues to it)", flush=True)
    return cfg


def run_refine_command(args: argparse.Namespace) -> int:
    from agent.campaign import Campaign
    from agent.campaign import write_config
    from agent.cli import CliError, _run_loop, _runs_dir

    if args.budget < 0:
        raise CliError("--budget must be >= 0")
    stages = ("structures", "lab")
    campaign = Campaign.open(args.name, _runs_dir(args), readonly=True)
    try:
        if campaign.stage is None:
            raise CliError(
                f"campaign {args.name!r} has no structure stage, and an existing campaign's stages cannot be "
                f"changed (its store holds its config); to refine structures, start a new campaign with "
                f"[structures] enabled = true: `crystal-agent run` of an edited copy of "
                f"{campaign.directory / 'config.toml'} under a new name"
            )
        cfg, n_done = campaign.cfg, campaign.n_evaluations
        stages = tuple(s for s in stages if s in campaign.stages)
        check_cpu_hours(cfg, args.cpu_hours)
        # what the run would charge first for tasks a killed run left unfinished counts too
        spent = campaign.spent_cpu_s + campaign.store.unsettled_cpu_s()[0]
        if (cfg.max_cpu_hours is not None and not args.cpu_hours
                and spent >= cfg.max_cpu_hours * 3600):
            raise CliError(f"campaign {args.name!r} has spent its CPU budget ({spent:.0f} of "
                           f"{cfg.max_cpu_hours * 3600:.0f} CPU s); `--cpu-hours H` adds CPU time")
    finally:
        campaign.close()
    campaign = Campaign.open(args.name, _runs_dir(args), stages=stages)
    try:
        if args.budget:  # N more structure-stage evaluations: a new stored config, reopened
            n_stage = campaign.n_by_stage.get("structures", 0)
            structures = cfg.structures.model_copy(update={"budget_evaluations": n_stage + args.budget})
            before = cfg
            # the molecule stage's share (max_evaluations less the structure budget) stays as it was
            cfg = cfg.model_copy(update={
                "structures": structures,
                "max_evaluations": max(cfg.max_evaluations - cfg.structures.budget_evaluations
                                       + structures.budget_evaluations, n_done + args.budget),
            })
            write_config(campaign.store, campaign.directory, cfg)
            print(f"refine: {args.name}: structure-stage budget (structures.budget_evaluations) "
                  f"{before.structures.budget_evaluations} -> {structures.budget_evaluations} "
                  f"({n_stage} done + {args.budget}), total budget (max_evaluations) {before.max_evaluations} "
                  f"-> {cfg.max_evaluations} evaluations (stored: a later resume continues to it)", flush=True)
            campaign.close()
            campaign = Campaign.open(args.name, _runs_dir(args), stages=stages)
        if args.cpu_hours:  # more CPU time: the same way
            cfg = add_cpu_hours(campaign, cfg, args.cpu_hours, "refine")
            campaign.close()
            campaign = Campaign.open(args.name, _runs_dir(args), stages=stages)
        campaign.store.log_event("refine", budget=args.budget, cpu_hours=args.cpu_hours)
        n_before = campaign.n_evaluations
    except BaseException:
        campaign.close()
        raise
    code = _run_loop(campaign, args, show_status=lambda status: status.n_evaluations != n_before)
    if code == 0:
        done = Campaign.open(args.name, _runs_dir(args), readonly=True)
        try:
            if done.n_evaluations == n_before:
                reason = done.status().stop_reason or "nothing left to evaluate"
                option, hint = (("--cpu-hours", "; `--cpu-hours H` adds CPU time") if reason.startswith("compute budget")
                                else ("", "") if args.budget
                                else ("--budget", "; `--budget N` adds structure-stage evaluations"))
                if option in reason:  # the reason gives that hint already ("" is in every reason: no hint)
                    hint = ""
                print(f"crystal-agent: nothing refined: {reason}{hint}", file=sys.stderr)
        finally:
            done.close()
    return code

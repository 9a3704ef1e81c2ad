"""Campaign configuration: a TOML file validated with pydantic.

Unknown keys and wrong types are errors; :func:`load_config` turns pydantic's
multi-line report into one line naming the offending key, e.g.::

    config error: backends.0.budget_evaluations: Input should be a valid integer

Paths in the file (the molecule pool) are resolved relative to the file.

Types are strict (``batch_size = true`` is not the integer 1, ``seed = 1.5`` is not an
integer) and floats must be finite. A campaign name is one safe path component
(:func:`check_name`). :func:`check_runnable` checks what the config names against the
registries (backends and the objective they compute, lab adapters); a campaign is created
or reopened only after it passes. A config file is at most :data:`MAX_CONFIG_BYTES`.

Non-fatal notes: :func:`config_warnings` (also ``CampaignConfig.warnings`` and what
:func:`check_runnable` returns) lists, one line each, what a valid config does that its
author likely did not mean, e.g. a structure stage whose CSP searches otherwise than the ESF
level whose landscape it re-ranks; ``crystal-agent run`` prints them on stderr.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from agent.lab.config import LabConfig
from sim_backends.fragment_terms import DEFAULT_BASELINES


#: largest accepted campaign config file (a config is a few hundred bytes)
MAX_CONFIG_BYTES = 1_000_000
#: longest accepted campaign name (characters)
MAX_NAME_CHARS = 100
#: ceiling of ``max_cpu_hours``: a million CPU hours (114 CPU years, a year of a 114-core
#: node) is beyond any campaign this runs; a larger value is a typo or a "no limit" wish
#: (leave ``max_cpu_hours`` out for no CPU budget)
MAX_CPU_HOURS = 1e6
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
#: built-in lab landscapes (:func:`agent.lab.config.load_landscape`); else a CIF folder
LAB_LANDSCAPES = ("campaign", "target_I", "x23")


class ConfigError(ValueError):
    """A campaign config that cannot be used; the message is one line. ``lines`` (from
    :func:`parse_config`) holds one entry per invalid key; the message names them all, their
    shared prefix once: ``config error: pool: Field required; backends: Field required``."""

    def __init__(self, message: str = "", lines: list[str] | None = None) -> None:
        self.lines = list(lines) if lines else [message]
        super().__init__(_one_line(self.lines) if lines else message)


def _one_line(lines: list[str]) -> str:
    """``lines`` joined by ``"; "``, a prefix they share up to ``config error: `` stated once."""
    marker = "config error: "
    heads = {ln[: ln.find(marker) + len(marker)] if marker in ln else None for ln in lines}
    head = heads.pop() if len(heads) == 1 else None
    if head is None:
        return "; ".join(lines)
    return head + "; ".join(ln[len(head):] for ln in lines)


def check_name(name: object) -> str:
    """Return ``name`` if it is a usable campaign name, else raise a one-line ConfigError.

    A name is one path component of letters, digits, ``_``, ``-`` and ``.``, not starting
    with ``.`` (so never ``.``, ``..`` or hidden), at most :data:`MAX_NAME_CHARS` long.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError("name: give a campaign name")
    shown = repr(name if len(name) <= 40 else name[:37] + "...")
    if len(name) > MAX_NAME_CHARS:
        raise ConfigError(f"name: {shown} has {len(name)} characters; the limit is {MAX_NAME_CHARS}")
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"name: {shown} is not one path component of letters, digits, '_', '-', '.' "
            "(not starting with '.')"
        )
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class BackendConfig(_Strict):
    """One backend the campaign may use.

    Attributes:
        name: registry name (``crystal-agent backends`` lists them).
        params: options passed to the backend (functional, basis, ...).
        budget_evaluations: at most this many evaluations with this backend.
        cost_s: override of the backend's own cost estimate (CPU seconds).
    """

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    budget_evaluations: int | None = Field(default=None, ge=0)
    cost_s: float | None = Field(default=None, gt=0)


class StructureLevelConfig(BackendConfig):
    """One structure level (``[[structures.levels]]``): a structure-level backend and the
    value it contributes, ``value`` (default: the backend's declared ``objective_key``)."""

    value: str | None = None


class ExecutorConfig(_Strict):
    """Ray executor settings; ``address`` None means an embedded local Ray."""

    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1)
    cpus_per_task: float = Field(default=1.0, gt=0)
    task_timeout_s: float = Field(default=7200.0, gt=0)  # wall-clock backstop per attempt
    task_cpu_limit_s: float | None = Field(default=1800.0, gt=0)  # CPU s per attempt, in the worker
    max_retries: int = Field(default=1, ge=0)
    # niceness the embedded Ray's workers add to this process's (0: the campaign's own
    # priority; Ray's default would be 15); a cluster's workers keep the cluster's setting
    worker_niceness: int = Field(default=0, ge=0, le=19)


class StopConfig(_Strict):
    """Stop criteria besides the budgets.

    Attributes:
        target: stop once the best expensive-level objective is at least this good.
        patience_iterations: stop after this many told batches without improvement.
    """

    target: float | None = None
    patience_iterations: int | None = Field(default=None, ge=1)


class ConstraintConfig(_Strict):
    """A feasibility bound on a molecule-level value (``[[constraints]]``,
    :mod:`agent.constraints`): ``value`` (a key some ``[[backends]]`` entry computes), ``max``
    and/or ``min`` in its unit, and ``why`` (printed with every molecule it excludes)."""

    value: str
    max: float | None = None
    min: float | None = None
    why: str = ""

    @model_validator(mode="after")
    def _bounded(self) -> ConstraintConfig:
        if self.max is None and self.min is None:
            raise ValueError(f"{self.value!r} needs max and/or min")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError(f"{self.value!r} has min {self.min:g} > max {self.max:g}")
        return self


class SurrogateConfig(_Strict):
    """Molecule-level GP settings."""

    fingerprint_bits: int = Field(default=2048, ge=64, le=65536)  # pool x bits float32 in memory
    fingerprint_radius: int = Field(default=2, ge=1, le=4)
    n_initial: int = Field(default=4, ge=1)
    holdout_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    #: the GP's kernel (:data:`agent.surrogates.molecule_gp.KERNELS`); unset: the module's
    #: default (:data:`~agent.surrogates.molecule_gp.KERNEL`), written into the campaign's
    #: stored config when it is created, so a later change of default never switches a
    #: running campaign; a stored config without it (made before the option) keeps Tanimoto
    kernel: Literal["tanimoto", "tanimoto+descriptors"] | None = None
    #: "on": run the cheapest level on every molecule of the pool before the acquisition (a
    #: screen), also where the top level cannot follow within the budget (a molecule whose
    #: expensive level never fits is otherwise never evaluated at all); each screening task
    #: must still fit the budget left. "auto": screen when the whole screen is expected to
    #: cost at most :data:`agent.stages.molecule.SCREEN_AUTO_FRACTION` of the budget. "off":
    #: the cheapest level only where the top level can follow. Unset: the default of
    #: :data:`agent.stages.molecule.SCREEN_POOL`, written into the campaign's stored config
    #: when it is created (a campaign stored without it keeps "off")
    screen_pool: Literal["on", "auto", "off"] | None = None


def _acquisition_default(name: str) -> Any:
    from agent import refine_acquisition

    return getattr(refine_acquisition, name)


class StructureAcquisitionConfig(_Strict):
    """Settings of the structure-level acquisition
    (:func:`agent.refine_acquisition.select_structures`); the defaults are that module's.
    ``explore = false`` switches exploration when confident off, ``skill_test = false``
    the skill test; ``n_initial`` is the size of a space-filling initial design."""

    explore: bool = True
    explore_above: float = Field(default_factory=lambda: _acquisition_default("EXPLORE_ABOVE"), gt=0, le=1)
    explore_fraction: float = Field(default_factory=lambda: _acquisition_default("EXPLORE_FRACTION"),
                                    ge=0, le=1)
    skill_test: bool = True
    skill_ratio: float = Field(default_factory=lambda: _acquisition_default("SKILL_RATIO"), gt=0)
    n_initial: int = Field(default=0, ge=0)

    def select_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``select_structures`` these settings stand for."""
        return {"explore_above": self.explore_above if self.explore else None,
                "explore_fraction": self.explore_fraction,
                "skill_ratio": self.skill_ratio if self.skill_test else None,
                "n_initial": self.n_initial}


class StructureStageConfig(_Strict):
    """The structure stage: CSP for the best molecules, then structure-level refinement.

    Attributes:
        enabled: run the stage at all.
        budget_evaluations: evaluations reserved for this stage (CSP + refinement);
            the molecule stage gets ``max_evaluations`` minus this.
        n_molecules: CSP for this many molecules, best at the top molecule fidelity.
        csp: the CSP backend (a molecule-level backend returning a landscape).
        refine: the structure-level backend the acquisition chooses structures for
            (the expensive level; the CSP force field is the cheap level).
        free_energy: optional vibrational free-energy level (e.g. ``phonon`` with an
            xTB force backend) for structures whose static energy is computed; the
            low-energy set is then ranked by E + F_vib, and the acquisition splits the
            budget between the two levels (:func:`agent.refine_acquisition.split_levels`).
        levels: the structure levels as a list (``[[structures.levels]]``), an
            alternative to ``refine`` and ``free_energy``: the first level is the one
            the landscape is ranked and refined by, a second one (optional) adds its
            value to the first's (E + F_vib). Giving ``levels`` sets ``refine`` and
            ``free_energy`` from it; giving both forms is refused unless they agree.
        max_structures: keep at most this many lowest-energy minima per landscape.
        top_k, window_kjmol: the low-energy set the acquisition tries to identify.
        dimer_baselines: for fragment-DFT refinement (``dft-crystal``), the cheap dimer
            interaction energies computed for every dimer and given to the dimer GP as inputs
            (:mod:`sim_backends.fragment_terms`); ``[]`` for none. They help on large
            landscapes and can hurt on small ones (``benchmarks/refinement.py``).
        acquisition: the acquisition's settings (:class:`StructureAcquisitionConfig`).
        cpu_share: with a compute budget (``max_cpu_hours``), the share of it the molecule
            stage leaves to this stage: a molecule-stage task starts only when its expected
            cost (with its cost margin) fits the budget left less what is still reserved
            (the share less what this stage has spent). None (default): this stage gets
            what the molecule stage's tasks leave, which varies with their measured CPU.
    """

    enabled: bool = False
    budget_evaluations: int = Field(default=10, ge=1)
    cpu_share: float | None = Field(default=None, gt=0, lt=1)
    n_molecules: int = Field(default=1, ge=1)
    csp: BackendConfig = Field(
        default_factory=lambda: BackendConfig(name="csp-ff")  # its default: a converged search
    )
    refine: BackendConfig = Field(default_factory=lambda: BackendConfig(name="xtb-crystal"))
    free_energy: BackendConfig | None = None
    levels: list[StructureLevelConfig] | None = None
    max_structures: int = Field(default=60, ge=2)
    top_k: int = Field(default=5, ge=1)
    window_kjmol: float = Field(default=10.0, gt=0)
    dimer_baselines: list[Literal["gfn2-xtb", "gfn1-xtb", "d3"]] = Field(
        default_factory=lambda: list(DEFAULT_BASELINES))
    acquisition: StructureAcquisitionConfig = Field(default_factory=StructureAcquisitionConfig)

    @model_validator(mode="before")
    @classmethod
    def _levels_to_refine(cls, data: Any) -> Any:
        """``levels`` sets ``refine`` (first level) and ``free_energy`` (second)."""
        if not isinstance(data, dict) or data.get("levels") is None:
            return data
        levels = data["levels"]
        from agent.stages.properties import is_property_level

        prop = [isinstance(lv, dict) and is_property_level(str(lv.get("name"))) for lv in levels] \
            if isinstance(levels, list) else []
        n_energy = len(prop) - sum(prop)
        if not isinstance(levels, list) or not 1 <= n_energy <= 2 or sum(prop) > 1 or prop[0]:
            raise ValueError("levels: give one or two energy levels (a ranking level and optionally "
                             "a level whose value is added to it), then at most one property level")
        plain = [{k: v for k, v in lv.items() if k != "value"} if isinstance(lv, dict) else lv
                 for lv, p in zip(levels, prop, strict=True) if not p]
        derived = {"refine": plain[0], "free_energy": plain[1] if len(plain) > 1 else None}
        out = dict(data)
        for key, want in derived.items():
            if key in data and data[key] is not None and data[key] != want:
                raise ValueError(f"{key}: give the structure levels either as levels or as "
                                 "refine/free_energy, not both")
            out[key] = want
        return out

    def level_configs(self) -> list[StructureLevelConfig]:
        """The structure levels in order (``refine``, then ``free_energy`` if set)."""
        if self.levels is not None:
            return list(self.levels)
        return [StructureLevelConfig(**b.model_dump())
                for b in (self.refine, self.free_energy) if b is not None]


class TrackingConfig(_Strict):
    enabled: bool = True
    uri: str | None = None  # default sqlite:///<runs_dir>/mlflow.db
    log_models: bool = True


class CampaignConfig(_Strict):
    """The whole campaign.

    Attributes:
        name: campaign name (store at ``runs/<name>/``).
        pool: file with one SMILES per line (optional name after whitespace).
        objective: value to optimise, as computed by the backends.
        direction: "minimize" or "maximize".
        backends: the fidelity ladder, cheapest first.
        batch_size: how many requests are in flight at once (at most).
        synchronous: ask for the next batch only when the whole previous batch has
            finished, and tell the stages its results in submission order, so the
            decisions depend only on the results and the seed, never on which worker
            finished first. Results that differ only in their last digits (SCF warm
            starts depend on what a worker computed before: ~1e-6 kJ/mol) give the same
            decisions, as the structure surrogates round their targets to 0.01 kJ/mol
            (:data:`agent.surrogates.base.TARGET_DECIMALS`; a value within that noise of a
            rounding boundary still can differ). Measured CPU seconds, which depend on the
            machine load, steer the decisions where costs weigh them: with
            ``max_cpu_hours`` (the molecule stage's per-level costs and budget checks, the
            stop) and between two structure energy levels; with one structure level and
            no CPU budget they do not. Workers idle while the slowest task of a batch runs.
            Default false: a free worker gets new work at once.
        seed: random seed; with replayed backends decisions are deterministic.
        max_evaluations: total evaluations (all backends).
        max_cpu_hours: total compute budget (CPU seconds measured in the workers, failed
            evaluations included); at most :data:`MAX_CPU_HOURS` (leave it out for none).
        max_pool_molecules: refuse larger pools (raise it explicitly for a big screen).
        constraints: feasibility bounds on molecule-level values (:mod:`agent.constraints`);
            an infeasible molecule is never proposed again nor reported as the best.
    """

    name: str = "campaign"
    pool: Path = Field(strict=False)
    objective: str = "reorg_energy_kjmol"
    direction: Literal["minimize", "maximize"] = "minimize"
    backends: list[BackendConfig] = Field(min_length=1)
    batch_size: int = Field(default=4, ge=1)
    synchronous: bool = False
    seed: int = Field(default=0, ge=0)
    max_evaluations: int = Field(default=50, ge=1)
    max_cpu_hours: float | None = Field(default=None, gt=0)
    stop: StopConfig = Field(default_factory=StopConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    surrogate: SurrogateConfig = Field(default_factory=SurrogateConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    structures: StructureStageConfig = Field(default_factory=StructureStageConfig)
    lab: LabConfig | None = None
    max_pool_molecules: int = Field(default=100_000, ge=1)
    constraints: list[ConstraintConfig] = Field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        """The config's non-fatal notes, one line each (:func:`config_warnings`)."""
        return config_warnings(self)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        try:
            return check_name(v)
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("name: ")) from None

    @field_validator("max_cpu_hours")
    @classmethod
    def _plausible_cpu_budget(cls, v: float | None, info: ValidationInfo) -> float | None:
        # a stored campaign's budget is read as stored (it may predate the ceiling)
        if v is not None and v > MAX_CPU_HOURS and not (info.context or {}).get("stored"):
            raise ValueError(f"{v:g} CPU hours ({v / 8766:,.0f} CPU years) is above the ceiling of "
                             f"{MAX_CPU_HOURS:,.0f}; give the budget you mean, or leave max_cpu_hours out "
                             "for no CPU budget")
        return v

    @model_validator(mode="after")
    def _unique_backends(self) -> CampaignConfig:
        names = [b.name for b in self.backends]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ValueError("each backend may be listed once; repeated: "
                             + ", ".join(f"{n} ({names.count(n)}x)" for n in twice))
        if self.lab is not None and not self.structures.enabled:
            raise ValueError("lab: needs the structure stage ([structures] enabled = true)")
        if self.lab is not None:
            from agent.lab.base import ADAPTERS

            if self.lab.adapter not in ADAPTERS:
                raise ValueError(f"lab.adapter: unknown lab adapter {self.lab.adapter!r}; "
                                 f"registered: {', '.join(sorted(ADAPTERS))}")
        if self.structures.cpu_share is not None and self.max_cpu_hours is None:
            raise ValueError("structures.cpu_share: a share of the compute budget needs max_cpu_hours")
        if self.structures.enabled and self.structures.budget_evaluations >= self.max_evaluations:
            raise ValueError(
                f"structures.budget_evaluations ({self.structures.budget_evaluations}"
                f"{'' if 'budget_evaluations' in self.structures.model_fields_set else ', its default'}) "
                f"must leave evaluations for the molecule stage (max_evaluations = {self.max_evaluations})"
            )
        return self


#: at most this many errors of one config are listed (the rest are counted)
MAX_LISTED_ERRORS = 20


def _model_at(loc: tuple[Any, ...]) -> Any:
    """The config model class whose key ``loc`` names (list indices skipped), else None."""
    import typing

    from pydantic import BaseModel

    def model_in(annotation: Any) -> Any:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return annotation
        return next((m for a in typing.get_args(annotation) if (m := model_in(a)) is not None), None)

    model: Any = CampaignConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        model = None if field is None else model_in(field.annotation)
        if model is None:
            return None
    return model


def did_you_mean(loc: tuple[Any, ...]) -> str:
    """``; did you mean 'max_cpu_hours'?`` for a misspelt key (newuser49 #11), else ''."""
    import difflib

    model = _model_at(loc)
    if model is None or not loc or not isinstance(loc[-1], str):
        return ""
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


def _error_line(err: Any) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key" + did_you_mean(tuple(err["loc"]))
    elif (err["type"] != "value_error" and isinstance(err.get("input"), (bool, int, float, str))
          and len(repr(err["input"])) <= 40):
        msg += f" (got {err['input']!r})"
    return f"{loc}: {msg}"


def _error_lines(exc: ValidationError) -> list[str]:
    """One line per invalid key (its first error), at most :data:`MAX_LISTED_ERRORS`, so a
    config with several mistakes is fixed in one go."""
    lines: dict[tuple, str] = {}
    for err in exc.errors():
        lines.setdefault(tuple(err["loc"]), _error_line(err))
    out = list(lines.values())
    if len(out) > MAX_LISTED_ERRORS:
        out = out[: MAX_LISTED_ERRORS - 1] + [f"(+{len(out) - MAX_LISTED_ERRORS + 1} more errors)"]
    return out


def parse_config(data: dict[str, Any], base_dir: Path | None = None, *, stored: bool = False) -> CampaignConfig:
    """Validate a config mapping; relative pool paths resolve against ``base_dir``.
    ``stored``: a campaign's stored config, read back (limits on new configs that a
    campaign made before them may exceed, :data:`MAX_CPU_HOURS`, are not applied)."""
    try:
        cfg = CampaignConfig.model_validate(data, context={"stored": stored})
    except ValidationError as exc:
        raise ConfigError(lines=[f"config error: {line}" for line in _error_lines(exc)]) from None
    if base_dir is not None and not cfg.pool.is_absolute():
        cfg = cfg.model_copy(update={"pool": (base_dir / cfg.pool).resolve()})
    return cfg


def parse_toml(text: str, where: str) -> dict[str, Any]:
    """TOML text as a mapping; one-line ConfigError for invalid or absurdly nested TOML."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config error: {where}: invalid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"config error: {where}: invalid TOML: nested too deeply") from None


def load_config(path: str | Path) -> CampaignConfig:
    """Read and validate a campaign TOML file (one-line :class:`ConfigError` if bad)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config error: {path}: file too large ({size:,} bytes; "
                          f"the limit is {MAX_CONFIG_BYTES:,})")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"config error: {path}: not UTF-8 text") from None
    cfg = parse_config(parse_toml(text, str(path)), base_dir=path.parent.resolve())
    if cfg.pool.is_dir():
        raise ConfigError(f"config error: pool: {cfg.pool} is a directory, not a file of SMILES")
    if not cfg.pool.is_file():
        raise ConfigError(f"config error: pool: file not found: {cfg.pool}")
    return cfg


def check_runnable(cfg: CampaignConfig, *, params: bool = True) -> list[str]:
    """Check the backends and their objective against the registry (one-line ConfigError);
    return the config's non-fatal notes (:func:`config_warnings`).

    Every ``[[backends]]`` entry must be a registered molecule-level backend that computes
    ``objective``, and (a new campaign: ``params``) no two of them may compute it the same
    way (the same declared level of the value, ``value_levels``: the ESF levels' lambda+
    is one GFN2-xTB calculation, so a higher ESF level cannot refine it, only spend CPU on
    it); the structure stage's backends must be registered, its ``refine`` and
    ``free_energy`` levels structure-level ones. Every backend's ``params`` must pass its
    declared check (:meth:`sim_backends.base.Backend.check_params`: known keys, types,
    ranges, names PySCF knows); the error names the key, e.g.
    ``config error: structures.csp.params.n_trials: ...``; ``params=False`` skips that
    (viewing a stored campaign needs no runnable parameters). Lab adapters are checked by
    the config, the lab landscape here (a built-in name or an existing folder).
    """
    from sim_backends.base import ParamsError
    from sim_backends.registry import UnknownBackendError, backend_class, user_facing

    def cls_of(where: str, b: BackendConfig) -> Any:
        try:
            cls = backend_class(b.name)
        except UnknownBackendError:
            raise ConfigError(
                f"config error: {where}.name: unknown backend {b.name!r}; "
                f"available: {', '.join(sorted(user_facing()))}"
            ) from None
        try:
            if params:
                cls.check_params(b.params)
        except ParamsError as exc:
            raise ConfigError(f"config error: {where}.params.{exc.key}: {exc.reason}") from None
        return cls

    for i, b in enumerate(cfg.backends):
        cls = cls_of(f"backends.{i}", b)
        if cls.target != "molecule":
            raise ConfigError(f"config error: backends.{i}.name: {b.name!r} is a {cls.target}-level "
                              "backend; give it under [structures]")
        if cfg.objective not in cls.computes:
            raise ConfigError(
                f"config error: backends: {b.name!r} does not compute objective "
                f"{cfg.objective!r} (it computes {', '.join(cls.computes) or 'nothing'})"
            )
    # a new campaign only (params=True): a stored one made before this check stays viewable
    declared = [(b.name, b.params.get("fidelity", backend_class(b.name).fidelity)) for b in cfg.backends] \
        if params else []
    for (lo, f_lo), (hi, f_hi) in zip(declared, declared[1:]):
        if f_hi <= f_lo:  # the ladder is read cheapest first: its last level is the objective's
            raise ConfigError(
                f"config error: backends: the fidelity ladder must go from cheap to expensive, but "
                f"{hi!r} (fidelity {f_hi}) comes after {lo!r} (fidelity {f_lo}); list the cheapest first")
    if params:
        _refuse_repeated_objective_level(cfg)
    for i, c in enumerate(cfg.constraints):
        computed = list(dict.fromkeys(k for b in cfg.backends for k in backend_class(b.name).computes))
        if c.value not in computed:
            raise ConfigError(f"config error: constraints.{i}.value: no backend of [[backends]] computes "
                              f"{c.value!r}; they compute {', '.join(computed)}")
    if cfg.lab is not None and cfg.lab.landscape not in LAB_LANDSCAPES and not Path(
            cfg.lab.landscape).is_dir():
        raise ConfigError(f"config error: lab.landscape: {cfg.lab.landscape!r} is neither one of "
                          f"{', '.join(LAB_LANDSCAPES)} nor a folder of CIF files")
    st = cfg.structures
    if st.enabled:
        cls_of("structures.csp", st.csp)
        for key, b in (("refine", st.refine), ("free_energy", st.free_energy)):
            if b is not None and cls_of(f"structures.{key}", b).target != "structure":
                raise ConfigError(f"config error: structures.{key}.name: {b.name!r} is not a "
                                  "structure-level backend")
        for i, lv in enumerate(st.level_configs()):
            cls = backend_class(lv.name)
            value = lv.value or cls.objective_key
            if value is None or value not in cls.computes:
                raise ConfigError(
                    f"config error: structures.levels.{i}.value: {lv.name!r} does not compute "
                    f"{value!r} (it computes {', '.join(cls.computes) or 'nothing'})")
    return config_warnings(cfg)


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _refuse_repeated_objective_level(cfg: CampaignConfig) -> None:
    """One-line ConfigError when two ``[[backends]]`` levels report the objective at the same
    declared level of theory (:func:`agent.constraints.value_level`): the same computation,
    so the higher one adds no fidelity (newuser43 F1: lambda+ on an ESF ladder)."""
    from agent.constraints import value_level
    from agent.summary import value_computation

    by_level: dict[str, list[str]] = {}
    for b in cfg.backends:
        if value_level(b.name, cfg.objective)[0]:
            by_level.setdefault(value_computation(b, cfg.objective), []).append(b.name)
    for level, names in by_level.items():
        if len(names) > 1:
            raise ConfigError(
                f"config error: backends: {_names(names)} compute {cfg.objective} the same way ({level}): "
                f"a ladder's levels must differ for its objective; keep one of them (the others would spend "
                f"CPU on the same value)")


def config_warnings(cfg: CampaignConfig) -> list[str]:
    """The config's non-fatal notes, one line each (module docstring): a structure stage whose
    ``csp-ff`` search differs from the run_csp call of the highest ESF landscape level of
    ``[[backends]]`` (the landscape whose global minimum and mobilities the ESF results report)
    in any of :data:`sim_backends.esf.CSP_SEARCH_KEYS`: the two landscapes, their global minima
    and their structure ids differ (newuser43 F2). Unknown backends are left to
    :func:`check_runnable`."""
    out: list[str] = []
    st = cfg.structures
    if st.enabled and st.csp is not None and st.csp.name == "csp-ff":
        from sim_backends.esf import csp_search_differences, esf_csp_search

        esf = [b for b in cfg.backends if esf_csp_search(b.name, dict(b.params)) is not None]
        if esf:
            top = esf[-1]
            diff = csp_search_differences(dict(st.csp.params), top.name, dict(top.params))
            if diff:
                out.append(
                    f"structures.csp searches otherwise than {top.name}, whose landscape the ESF results "
                    f"report ({'; '.join(diff)}): the two landscapes will differ (each its own global minimum, "
                    f"the same structure id naming different crystals, no mobility reused); give "
                    f"structures.csp the {top.name} search (as examples/esf.toml does)")
    return out


def config_to_toml(cfg: CampaignConfig) -> str:
    """Serialise a config back to TOML (for the copy kept in the campaign store)."""
    return _dump_toml(cfg.model_dump(mode="json", exclude_none=True))


def _toml_value(v: Any) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _dump_toml(data: dict[str, Any]) -> str:
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    arrays: list[tuple[str, list[dict[str, Any]]]] = []
    for k, v in data.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            arrays.append((k, v))
        else:
            lines.append(f"{k} = {_toml_value(v)}")
    for k, v in tables:
        lines += ["", f"[{k}]"] + [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items()]
    for k, items in arrays:
        for item in items:
            lines += ["", f"[[{k}]]"] + [f"{kk} = {_toml_value(vv)}" for kk, vv in item.items()]
    return "\n".join(lines) + "\n"

"""Profiles: visible files that map a real spec onto another world (the embedded toy world).

A profile rewrites the raw spec mapping before validation: model, datasets and eval tasks by name;
N, max_seq_len, steps and learning rates by explicit factors. `unlearnspec show SPEC --toy` prints
the result. Files named `*_world.yaml` under profiles/ are toy-world configs, not mapping profiles.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional

from pydantic import Field, PositiveInt, ValidationError

from unlearnspec import worlds
from unlearnspec.errors import Problem, UserError
from unlearnspec.spec.cluster import ClusterProfile, SlurmSection, _OneLineText, is_cluster_data, load_cluster
from unlearnspec.spec.training import LdsSpec, OptimizerName
from unlearnspec.spec.yamlio import read_yaml_file, validation_problems_for

PROFILE_DIR = Path(__file__).resolve().parents[1] / "profiles"
"""Shipped profiles (package data; specs/profiles/ links to them so they stay visible in the project)."""


Scale = Annotated[float, Field(gt=0, le=1e6)]
"""A factor a profile multiplies a count, length, step count or learning rate by (a toy world shrinks them)."""


class _Section(_OneLineText):
    """A profile section: strict, and every text one line without control characters."""


class ProfileModel(_Section):
    """Replaces every spec's model section."""

    toy: str
    """Toy model name."""
    dtype: Literal["float32", "float64"] = "float32"
    """Parameter dtype on the toy world."""
    attn_implementation: Literal["eager", "sdpa"] = "eager"
    """Attention kernel."""


class ProfileData(_Section):
    """Maps hub datasets to toy corpora and scales the grid."""

    corpora: dict[str, str]
    """Hub dataset (`path` or `path/config`) -> toy corpus name."""
    count_scale: Scale
    """N is multiplied by this (rounded, at least 1)."""
    min_chars: int = Field(ge=0)
    """Replaces select.min_chars (toy passages are short)."""
    max_seq_len_scale: Scale
    """max_seq_len (and declared score columns) are multiplied by this (rounded, at least 8)."""


class ProfileTraining(_Section):
    """Scales the optimisation to the toy's size."""

    steps_scale: Scale
    """max_steps and warmup_steps are multiplied by this (rounded, at least 1)."""
    lr_scale: dict[OptimizerName, Scale]
    """Per optimizer: every learning rate of the grid is multiplied by this."""


class ProfileMagic(_Section):
    """MAGIC settings on the toy world."""

    query_loss: Literal["answer_continuation", "answer_letter"]
    """Query loss used on the toy tasks."""
    storage: Literal["ram", "disk"] = "ram"
    """Where kept parameter states live."""
    lds: Optional[LdsSpec] = None
    """`magic.lds` given to every score spec that sets none, so toy score runs carry their validation and
    `doctor --toy` can read it."""
    lds_max_steps: Optional[PositiveInt] = None
    """Give `lds` only to score specs of at most this many (mapped) training steps; unset: to all. LDS costs
    `subsets` + 1 retrainings of the whole run."""


class ProfileEval(_Section):
    """Evaluation settings on the toy world."""

    batch_size: int = Field(gt=0)
    """lm-eval batch size."""


class Profile(_Section):
    """A mapping profile (e.g. specs/profiles/toy.yaml)."""

    name: str
    """Short name recorded in results (e.g. toy)."""
    world: Optional[str] = None
    """Toy world config file, relative to this profile."""
    model: ProfileModel
    """Model replacement."""
    data: ProfileData
    """Data mapping."""
    tasks: dict[str, str]
    """lm-eval task name -> toy task name (evaluation and MAGIC queries)."""
    training: ProfileTraining
    """Training scaling."""
    magic: ProfileMagic
    """MAGIC settings."""
    eval: ProfileEval
    """Evaluation settings."""
    output_prefix: str
    """Output dirs `runs/x` become `<output_prefix>/x`, so toy runs never mix with real ones."""
    drop_recorded_baseline: bool = True
    """Drop the spec's recorded baseline numbers (they belong to the real model)."""
    threads: Optional[int] = Field(default=None, gt=0, le=1024)
    """torch CPU threads for runs through this profile (tiny models on a shared CPU run faster on one)."""
    slurm: Optional[SlurmSection] = None
    """Resources of this profile's jobs under `run --executor slurm` (a `--cluster` file replaces them)."""


def default_toy_profile() -> Path:
    path = PROFILE_DIR / "toy.yaml"
    if not path.is_file():
        raise UserError.one(
            str(path),
            "the toy profile is missing from the installed package (reinstall unlearnspec); or pass --profile PATH.",
        )
    return path


def is_world_file(path: Path) -> bool:
    return path.name.endswith("_world.yaml") or path.name.endswith("_world.yml")


def load_profile(path: Path) -> Any:
    """Validate a profile file (a mapping profile, or a `*_world.yaml` toy-world config)."""
    if is_world_file(path):
        return worlds.get().check_config(path)
    data, node = read_yaml_file(path)
    if not isinstance(data, dict):
        raise UserError.one(str(path), "a profile must be a YAML mapping.")
    if is_cluster_data(data):  # a site file (slurm resources), e.g. profiles/slurm_example.yaml
        try:
            return ClusterProfile.model_validate(data)
        except ValidationError as exc:
            raise UserError(validation_problems_for(ClusterProfile, exc, data, node, str(path))) from None
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        raise UserError(validation_problems_for(Profile, exc, data, node, str(path))) from None
    problems = []
    named = [("models", "model.toy", profile.model.toy)]
    named += [("corpora", f"data.corpora.{hub}", corpus) for hub, corpus in profile.data.corpora.items()]
    named += [("tasks", f"tasks.{task}", toy) for task, toy in profile.tasks.items()]
    for kind, field, value in named:
        problem = worlds.unknown(kind, value)
        if problem is not None:
            problems.append(Problem(str(path), field, f"{problem}."))
    if profile.world is not None and not (path.parent / profile.world).is_file():
        problems.append(Problem(str(path), "world", f"world file {profile.world} not found next to the profile."))
    if problems:
        raise UserError(problems)
    return profile


def world_config_path(profile_path: Path) -> Optional[Path]:
    profile = load_profile(profile_path)
    return (profile_path.parent / profile.world).resolve() if profile.world else None


def _is_int(value: Any) -> bool:
    """An int written as an int: `True` is an int to Python but never a count (strict validation
    refuses it later, so the profile must not turn it into a number first)."""
    return isinstance(value, int) and not isinstance(value, bool)


MAX_SCALED = 2**53
"""Largest count, length or step count a profile may produce (a float holds it exactly)."""


def _scaled(value: int, factor: float, floor: int, field: str = "", where: str = "") -> int:
    """value x factor, rounded, at least `floor`; a result beyond MAX_SCALED (or an int beyond float range)
    is a UserError naming the spec field and the profile's factor, not an OverflowError."""
    try:
        out = value * factor
    except OverflowError:
        out = float("inf")
    if not out <= MAX_SCALED:
        raise UserError.one(
            where or "profile",
            f"{value} scaled by the profile's factor {factor:g} is {out:.3g}, beyond "
            f"{MAX_SCALED:,}; lower the spec's value or the profile's scale.",
            loc=field,
        )
    return max(floor, int(round(out)))


def _lr(value: Any, factor: float) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(f"{value * factor:.6g}")  # no 1.0000000000000002e-4 noise in resolved specs
        except OverflowError:
            return float("inf")  # an int beyond float range: the spec's lr check refuses it, naming the field
    return value


@dataclass(frozen=True)
class MappedKnob:
    """One knob a profile changed: `field: before -> after (why)`, printed when a run starts and in the plan."""

    field: str
    before: Any
    after: Any
    why: str

    def __str__(self) -> str:
        return f"{self.field}: {_shown(self.before)} -> {_shown(self.after)} ({self.why})"

    def short(self) -> str:
        """`field before -> after`, without the reason (the compact form a long run starts with)."""
        return f"{self.field} {_shown(self.before)} -> {_shown(self.after)}"


def _shown(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_shown(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def apply_profile(
    data: dict[str, Any], profile_path: Path, spec_path: Path, changes: Optional[list[MappedKnob]] = None
) -> dict[str, Any]:
    """The raw spec mapping rewritten through the profile (the input is not modified). `changes`, when given,
    receives one MappedKnob per knob whose value the mapping changed, with the profile field that changed it."""
    profile = load_profile(profile_path)
    if not isinstance(profile, Profile):
        what = (
            "a cluster file (pass it with --cluster)" if isinstance(profile, ClusterProfile) else "a toy-world config"
        )
        raise UserError.one(str(profile_path), f"this is {what}, not a mapping profile; use specs/profiles/toy.yaml.")
    out = copy.deepcopy(data)
    model = out.get("model")
    if isinstance(model, dict) and model.get("toy") is not None:
        # Already a toy-world spec (e.g. the resolved spec.yaml of a toy run dir): mapping it again
        # would scale N, max_seq_len, steps and LRs twice. Its producers are still mapped when loaded.
        return out
    where = f"{spec_path} (through profile {profile_path})"
    found: list[MappedKnob] = changes if changes is not None else []

    def note(field: str, before: Any, after: Any, why: str) -> None:
        if before != after:
            found.append(MappedKnob(field, before, after, f"{why}; profile {profile.name}"))

    def section(name: str) -> dict[str, Any]:
        value = out.get(name)
        return value if isinstance(value, dict) else {}

    before_model = out.get("model")
    out["model"] = profile.model.model_dump()
    if isinstance(before_model, dict):
        note("model", before_model.get("name_or_path"), f"toy:{profile.model.toy}", "model.toy")
        for key in ("dtype", "attn_implementation"):
            note(f"model.{key}", before_model.get(key), out["model"][key], f"model.{key}")

    data_sec = section("data")
    _map_source(data_sec, profile, where, profile_path, "data", note)
    if isinstance(data_sec.get("retain"), dict):  # an unlearning objective's retain set, mapped the same way
        _map_source(data_sec["retain"], profile, where, profile_path, "data.retain", note)
    attack = section("attack")
    if isinstance(attack.get("data"), dict):  # the attack's held-out forget rows: mapped as `data` is
        _map_source(attack["data"], profile, where, profile_path, "attack.data", note)
    _map_lr(attack, profile, "attack", note)  # its step counts are counts: never scaled
    width = profile.data.max_seq_len_scale
    if _is_int(data_sec.get("max_seq_len")):
        before, data_sec["max_seq_len"] = (
            data_sec["max_seq_len"],
            _scaled(data_sec["max_seq_len"], width, 8, "data.max_seq_len", where),
        )
        note(
            "data.max_seq_len",
            before,
            data_sec["max_seq_len"],
            f"data.max_seq_len_scale {width:g}, rounded, at least 8",
        )
    for src_name, src in section("scores").items():
        if isinstance(src, dict) and _is_int(src.get("columns")):
            before, src["columns"] = (
                src["columns"],
                _scaled(src["columns"], width, 8, f"scores.{src_name}.columns", where),
            )
            note(
                f"scores.{src_name}.columns",
                before,
                src["columns"],
                f"data.max_seq_len_scale {width:g}, rounded, at least 8",
            )

    training = section("training")
    steps_scale = profile.training.steps_scale
    for key in ("max_steps", "warmup_steps"):
        if _is_int(training.get(key)):
            floor = 1 if key == "max_steps" else 0
            before, training[key] = training[key], _scaled(training[key], steps_scale, floor, f"training.{key}", where)
            note(
                f"training.{key}",
                before,
                training[key],
                f"training.steps_scale {steps_scale:g}, rounded, at least {floor}",
            )
    _map_lr(training, profile, "training", note)

    def task(name: Any) -> Any:
        return profile.tasks.get(name, name) if isinstance(name, str) else name

    ev = section("eval")
    for i, t in enumerate(ev.get("tasks", []) if isinstance(ev.get("tasks"), list) else []):
        if isinstance(t, dict):
            before, t["name"] = t.get("name"), task(t.get("name"))
            note(f"eval.tasks[{i}].name", before, t["name"], "tasks")
    for knob in ("hazard_task", "general_task"):  # reporting knobs name evaluated tasks: mapped like them
        if knob in ev:
            before, ev[knob] = ev[knob], task(ev[knob])
            note(f"eval.{knob}", before, ev[knob], "tasks")
    if ev:
        note("eval.batch_size", ev.get("batch_size", 8), profile.eval.batch_size, "eval.batch_size")
        ev["batch_size"] = profile.eval.batch_size
    magic = section("magic")
    if magic:
        note("magic.storage", magic.get("storage", "ram"), profile.magic.storage, "magic.storage")
        magic["storage"] = profile.magic.storage
        steps = training.get("max_steps")
        short = profile.magic.lds_max_steps is None or (isinstance(steps, int) and steps <= profile.magic.lds_max_steps)
        if profile.magic.lds is not None and magic.get("lds") is None and short:
            magic["lds"] = profile.magic.lds.model_dump()
            note("magic.lds", None, magic["lds"], "magic.lds: toy score runs carry their validation")
        query = magic.get("query")
        if isinstance(query, dict):
            before_task, before_loss = query.get("task"), query.get("loss", "answer_continuation")
            query["task"] = task(query.get("task"))
            query["loss"] = profile.magic.query_loss
            note("magic.query.task", before_task, query["task"], "tasks")
            note("magic.query.loss", before_loss, query["loss"], "magic.query_loss")
    baseline = section("baseline")
    if profile.drop_recorded_baseline and "recorded" in baseline:
        note("baseline.recorded", "the recorded numbers", None, "drop_recorded_baseline: they belong to the real model")
        del baseline["recorded"]
    output = section("output")
    if isinstance(output.get("dir"), str):
        rel = output["dir"]
        rel = rel[len("runs/") :] if rel.startswith("runs/") else rel
        output["dir"] = f"{profile.output_prefix.rstrip('/')}/{rel}"
    return out


def _map_lr(section: dict[str, Any], profile: Profile, loc: str, note: Callable[[str, Any, Any, str], None]) -> None:
    """A section's `lr` (one or a list) scaled by the profile's factor for its `optimizer.name`, in place."""
    opt = section.get("optimizer")
    name = opt.get("name") if isinstance(opt, dict) else None
    factor = profile.training.lr_scale.get(name) if isinstance(name, str) else None  # type: ignore[call-overload]
    if factor is not None and "lr" in section:
        lr = section.get("lr")
        section["lr"] = [_lr(v, factor) for v in lr] if isinstance(lr, list) else _lr(lr, factor)
        note(f"{loc}.lr", lr, section["lr"], f"training.lr_scale.{name} {factor:g}")


def _map_source(
    source: dict[str, Any],
    profile: Profile,
    where: str,
    profile_path: Path,
    loc: str,
    note: Callable[[str, Any, Any, str], None],
) -> None:
    """A data source's hub dataset -> its toy corpus, its N scaled and its filter replaced (in place); each
    changed knob is reported through `note(field, before, after, why)`."""
    hub = source.get("hub")
    if isinstance(hub, dict):
        keys = [f"{hub.get('path')}/{hub.get('name')}", str(hub.get("path"))]
        corpus = next((profile.data.corpora[k] for k in keys if k in profile.data.corpora), None)
        if corpus is None:
            raise UserError.one(
                where,
                f"no toy corpus for dataset {keys[0] if hub.get('name') else keys[1]}; add it to data.corpora of {profile_path}.",
                loc=f"{loc}.hub",
            )
        note(
            f"{loc}.hub",
            " ".join(str(v) for v in (hub.get("path"), hub.get("name")) if v),
            f"toy corpus {corpus}",
            "data.corpora",
        )
        del source["hub"]
        source["toy"] = {"corpus": corpus}
    select = source.get("select")
    scale = profile.data.count_scale
    if isinstance(select, dict):
        if _is_int(select.get("count")):
            before, select["count"] = select["count"], _scaled(select["count"], scale, 1, f"{loc}.select.count", where)
            note(f"{loc}.select.count", before, select["count"], f"data.count_scale {scale:g}, rounded, at least 1")
        note(
            f"{loc}.select.min_chars",
            select.get("min_chars", 0),
            profile.data.min_chars,
            "data.min_chars: toy passages are short",
        )
        select["min_chars"] = profile.data.min_chars
        if _is_int(select.get("offset")):
            before, select["offset"] = (
                select["offset"],
                _scaled(select["offset"], scale, 0, f"{loc}.select.offset", where),
            )
            note(f"{loc}.select.offset", before, select["offset"], f"data.count_scale {scale:g}, rounded")


def slurm_settings(cluster: Optional[Path], profile: Optional[Path]) -> tuple[SlurmSection, str]:
    """The SLURM section to use and where it came from: --cluster FILE, else the mapping profile's
    `slurm:` section, else a UserError naming both ways to give it."""
    if cluster is not None:
        return load_cluster(cluster).slurm, str(cluster)
    if profile is not None:
        loaded = load_profile(profile)
        if isinstance(loaded, ClusterProfile):
            return loaded.slurm, str(profile)
        if isinstance(loaded, Profile) and loaded.slurm is not None:
            return loaded.slurm, f"{profile} (slurm section)"
    raise UserError.one(
        "--cluster",
        "--executor slurm needs the cluster's resources: pass --cluster FILE "
        "(see specs/profiles/slurm_example.yaml), or use a profile with a `slurm:` section.",
    )

"""Schemas and limits of every file the toolkit reads (issue #28, "Hostile files and bad input").

Checkpoints, runs, traces and reports are data that may come from someone else. Everything read from
them is checked here, once, before it is used: types, ranges and sizes. A bad value is a one-line
``ValueError`` (the callers re-raise it as ``ConfigError`` / ``CheckpointError``) naming the file, the
field, the value and what is allowed, e.g. ``checkpoint runs/x/config.json: deter=-64 must be in 1..8192``.

* ``CONFIG_RULES``: a type and a range for every field of ``xdreamer.config.Config``
  (``check_config``; used by ``Config.validate``, ``Config.from_dict`` and ``parse_overrides``).
* ``EnvSpecModel`` / ``ManifestModel``: a checkpoint's ``manifest.json`` (``validate_manifest``).
* ``validate_trainer_state``: the ``trainer.pt`` a run resumes from (after ``torch.load(weights_only=True)``).
* ``validate_trace_meta``: the JSON ``meta`` record of a trace ``.npz`` (``xdreamer.explain.trace``).
* ``validate_report_table``: a failure report's ``summary.csv`` (``xdreamer.app``).

The size caps below bound what a file can make the toolkit allocate; each says why it is where it is.
This module imports pydantic (and pandas/torch only inside the functions that take their objects), so
it is imported lazily by ``xdreamer.config``: ``import xdreamer`` stays light.
"""

from __future__ import annotations

import functools
import json
import math
import re
from typing import TYPE_CHECKING, Annotated, Any, Mapping

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, ValidationError, create_model, \
    model_validator

from .config import COMPILE_MODES, PRECISIONS, ConfigError
from .worldmodels.settings import schema_rules as worldmodels_rules

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

# ---- file size caps (bytes read before parsing; a hostile file cannot make us read gigabytes) -------------
MAX_CONFIG_BYTES = 1 << 20  # a config.json is ~2 KB
MAX_MANIFEST_BYTES = 16 << 20  # a bundled manifest is ~5 KB; eval records grow with episodes
MAX_POINTER_BYTES = 4096  # checkpoints/latest holds one folder name
# safetensors header slack over the tensors' bytes: 8 bytes of length, a JSON entry per tensor (name, dtype, shape,
# offsets: ~150 bytes at the debug preset's 61 tensors), alignment padding and optional __metadata__.
SAFETENSORS_HEADER_SLACK = 64 * 1024
SAFETENSORS_HEADER_PER_TENSOR = 512
# trainer.pt: AdamW keeps two moments per parameter (2x the weights) plus step counters and RNG states.
TRAINER_STATE_SLACK = 16 << 20

# ---- value caps ---------------------------------------------------------------------------------------
MAX_UNITS = 8192  # deter / hidden / mlp_units: deter 10^7 would allocate 1.2 PB (GRU weight 3*deter x 2*deter)
MAX_LATENT = 1024  # stoch / classes each (paper 32 x 32)
MAX_LATENT_SIZE = 16384  # stoch * classes: 16x the paper's 1,024; every head reads a feature of this size
MAX_CNN_DEPTH = 1024  # the encoder's last conv has 8 * cnn_depth channels (paper 48)
MAX_BATCH = 4096  # paper 16 (50 in the paper-era code)
MAX_LENGTH = 10_000  # paper 50
MAX_HORIZON = 1000  # paper 15; imagination keeps horizon x batch x length states
MAX_COUNT = 10**12  # agent steps, cadences: far beyond any run (Atari 200M frames = 5e7 agent steps)
MAX_SEED = 2**32 - 1  # numpy's seed range
MAX_ACTIONS = 1024  # Atari's full action set has 18; a continuous MuJoCo action has at most ~20 dimensions
MAX_OBS_SIDE = 4096  # channels / height / width of an observation (64 x 64 here)
MAX_NAME = 1000  # any name or short text field
MAX_NAMES = 4096  # entries in a list of names


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: a hostile value must not make a message megabytes long."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ---- rule constructors: an Annotated pydantic type whose failure message states the allowed range ---------
def Int(lo: int, hi: int) -> Any:
    """An integer (never a bool or a float) in ``lo..hi``."""

    def check(value: int) -> int:
        if not lo <= value <= hi:
            raise ValueError(f"must be in {lo}..{hi}")
        return value

    return Annotated[int, Strict(), AfterValidator(check)]


def Float(lo: float = -math.inf, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False) -> Any:
    """A finite number (NaN and infinities refused) in the given interval; ints are taken as floats."""
    if math.isinf(lo) and math.isinf(hi):
        text = "a finite number"
    elif math.isinf(hi):
        text = f"a finite number {'>' if lo_open else '>='} {lo:g}"
    elif math.isinf(lo):
        text = f"a finite number {'<' if hi_open else '<='} {hi:g}"
    else:
        text = f"a finite number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def check(value: float) -> float:
        ok = math.isfinite(value) and (lo < value if lo_open else lo <= value) and (
            value < hi if hi_open else value <= hi)
        if not ok:
            raise ValueError(f"must be {text}")
        return float(value)

    return Annotated[float, Strict(), AfterValidator(check)]


def Choice(*options: str) -> Any:
    """One of ``options`` (the message keeps the wording tests and users know: "is not one of ...")."""

    def check(value: str) -> str:
        if value not in options:
            raise ValueError(f"is not one of {', '.join(options)}")
        return value

    return Annotated[str, Strict(), AfterValidator(check)]


def Text(max_len: int = MAX_NAME, min_len: int = 0, pattern: str | None = None, what: str | None = None) -> Any:
    """A string of ``min_len..max_len`` characters, matching ``pattern`` (full match) when given."""
    compiled = re.compile(pattern) if pattern else None

    def check(value: str) -> str:
        if not min_len <= len(value) <= max_len:
            raise ValueError(f"must be a string of {min_len}..{max_len} characters")
        if compiled is not None and not compiled.fullmatch(value):
            raise ValueError(f"must be {what or 'a string matching ' + pattern}")
        return value

    return Annotated[str, Strict(), AfterValidator(check)]


Bool = Annotated[bool, Strict()]
Names = Annotated[list[Text(MAX_NAME)], Field(max_length=MAX_NAMES)]
Sha256 = Text(64, 64, r"[0-9a-f]{64}", "64 lowercase hex digits (a sha256)")
Seed = Int(0, 2**63 - 1)

# auto | cpu | cuda | cuda:N | mps (``check_device`` in xdreamer.config adds "is it available here").
DEVICE_PATTERN = r"auto|cpu|mps|cuda(:[0-9]{1,3})?"
Device = Text(16, 1, DEVICE_PATTERN, "auto, cpu, cuda, cuda:N or mps")
# Env ids are "family:name" or "module:attr"; no control characters (they end up in file names and logs).
EnvId = Text(200, 1, r"[^\x00-\x1f\x7f]+", "an env id without control characters")

# ---- Config ------------------------------------------------------------------------------------------------
# learning rates: > 0 and finite, no upper cap: tests/test_training.py drives a run to divergence with 1e30
Rate = Float(0.0, lo_open=True)
Scale = Float(0.0, 1e4)  # loss weights and the like: >= 0, finite
Unit = Float(0.0, 1.0)  # probabilities and mixing weights
Discount = Float(0.0, 1.0, lo_open=True)  # (0, 1]: 0 would divide by zero in the horizon weights

# One entry per field of xdreamer.config.Config (``config_model`` checks that the two agree).
CONFIG_RULES: dict[str, Any] = {
    # run
    "env": EnvId,
    "seed": Int(0, MAX_SEED),
    "steps": Int(1, MAX_COUNT),
    "device": Device,
    "precision": Choice(*PRECISIONS),
    "threads": Int(0, 1024),  # 0 = torch's default; -3 made torch.set_num_threads raise
    "compile": Choice(*COMPILE_MODES),
    # env protocol
    "action_repeat": Int(1, 1000),
    "time_limit": Int(1, 10**9),  # -1 used to load silently (an env that never times out)
    "sticky": Unit,
    "noops": Int(0, 100_000),
    # schedule
    "prefill": Int(0, MAX_COUNT),
    "train_every": Int(1, MAX_COUNT),  # the loop takes step % train_every
    "train_steps": Int(1, 10_000),
    "pretrain": Int(0, 1_000_000),
    # 0 turns a cadence off (training.Every never fires; tests and docs use eval_every=0 video_every=0) ...
    "eval_every": Int(0, MAX_COUNT),
    # ... but every evaluation that does run (also the final one) needs an episode: evaluation.evaluate refuses 0.
    "eval_episodes": Int(1, 100_000),
    "log_every": Int(0, MAX_COUNT),
    "video_every": Int(0, MAX_COUNT),
    # Step checkpoints are what --resume and a killed run rely on; 0 silently turned them off (#28).
    "checkpoint_every": Int(1, MAX_COUNT),
    "checkpoint_minutes": Float(0.0, 1e7, lo_open=True),  # 0 would write a checkpoint after every step
    "keep_checkpoints": Int(1, 1_000_000),
    # replay
    "batch": Int(1, MAX_BATCH),  # batch 1e9 used to be accepted (an image batch of 4 TB)
    "length": Int(2, MAX_LENGTH),  # the world model learns from transitions: at least 2 steps
    "replay_capacity": Int(1, 10**10),
    "prioritize_ends": Bool,
    "replay_chunk": Int(0, 10_000_000),  # 0 = whole episodes only
    # world model
    "cnn_depth": Int(1, MAX_CNN_DEPTH),
    "decoder": Choice("dreamerv2", "dreamerv3"),
    "mlp_layers": Int(1, 64),
    "mlp_units": Int(1, MAX_UNITS),
    "deter": Int(1, MAX_UNITS),
    "hidden": Int(1, MAX_UNITS),
    "stoch": Int(1, MAX_LATENT),
    "classes": Int(1, MAX_LATENT),
    "unimix": Float(0.0, 1.0, hi_open=True),  # 1 would make the latent uniform noise
    "embed_norm": Choice("none", "batch"),
    "atari_actions": Choice("minimal", "full"),
    "algo": Choice("dreamerv1", "dreamerv2", "dreamerv3", "worldmodels"),
    "expl_amount": Unit,
    "dyn_scale": Scale,
    "rep_scale": Scale,
    "critic_reg": Scale,
    "eval_latent": Choice("sample", "mode"),
    "clip_rewards": Choice("tanh", "identity"),
    "pred_discount": Bool,
    "kl_scale": Scale,
    "kl_balance": Unit,
    "kl_free": Scale,
    "kl_free_avg": Bool,
    "discount_scale": Scale,
    "reward_scale": Scale,
    "model_lr": Rate,
    "repr_lr": Float(0.0, 1.0),  # 0 = model_lr
    # actor-critic
    "actor_lr": Rate,
    "critic_lr": Rate,
    "adam_eps": Float(0.0, 1.0, lo_open=True),
    "grad_clip": Float(0.0, lo_open=True),  # -1 clipped every gradient to nothing
    "weight_decay": Float(0.0, 1.0),
    "horizon": Int(1, MAX_HORIZON),
    "discount": Discount,  # NaN or -5 used to be accepted
    "discount_lambda": Discount,
    "actor_grad": Choice("auto", "reinforce", "dynamics", "both"),
    "actor_grad_mix": Unit,
    "actor_ent": Float(0.0, 100.0),
    "actor_min_std": Float(0.0, 100.0, lo_open=True),  # 0 lets a continuous actor's log-probability be infinite
    "slow_target_update": Int(1, MAX_COUNT),  # updates % slow_target_update
    "slow_target_fraction": Float(0.0, 1.0, lo_open=True),
}
CONFIG_RULES.update(worldmodels_rules(Int, Float, Choice, Bool))  # the wm_* fields (xdreamer/worldmodels/settings.py)


@functools.lru_cache(maxsize=None)
def config_model() -> type[BaseModel]:
    """The pydantic model of ``Config`` built from ``CONFIG_RULES`` (once; building it costs a few ms)."""
    from dataclasses import fields

    from .config import Config

    names = [f.name for f in fields(Config)]
    if set(names) != set(CONFIG_RULES):  # a programming error: a new Config field needs a rule here
        raise RuntimeError(f"schema.CONFIG_RULES and Config disagree: {sorted(set(names) ^ set(CONFIG_RULES))}")
    return create_model("ConfigModel", __config__=ConfigDict(extra="forbid"),
                        **{name: (CONFIG_RULES[name], ...) for name in names})


def check_config(values: Mapping[str, Any]) -> None:
    """Raise ``ConfigError`` (one line: ``field=value must be ...``) unless ``values`` (a complete
    ``Config.to_dict()``) is within every field's range and the fields fit together."""
    try:
        config_model().model_validate(dict(values))
    except ValidationError as exc:
        raise ConfigError(first_error(exc)) from None
    latent = values["stoch"] * values["classes"]
    if latent > MAX_LATENT_SIZE:
        raise ConfigError(f"stoch*classes={values['stoch']}*{values['classes']}={latent} must be at most "
                          f"{MAX_LATENT_SIZE} (every head reads a feature of that size)")


_TYPE_TEXT = {
    "int_type": "must be an integer", "float_type": "must be a number", "string_type": "must be a string",
    "bool_type": "must be true or false", "list_type": "must be a list", "dict_type": "must be a JSON object",
    "model_type": "must be a JSON object", "model_attributes_type": "must be a JSON object",
    "missing": "is missing", "extra_forbidden": "is not a known field",
}


def first_error(exc: ValidationError) -> str:
    """The first problem of a pydantic ``ValidationError`` as one line: ``field.sub=value must be ...``."""
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(part) for part in err["loc"])
    if err["type"] == "value_error":
        text = str(err.get("ctx", {}).get("error", err["msg"]))
    else:
        text = _TYPE_TEXT.get(err["type"], err["msg"])
    text = " ".join(text.split())  # one line whatever the message held
    if err["type"] == "missing":
        return f"{loc} is missing"
    if err["type"] == "extra_forbidden":
        return f"unknown field {loc!r}"
    return f"{loc}={_short(err['input'])} {text}" if loc else text


def _json_kind(value: Any) -> str:
    return {type(None): "null", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


# ---- env spec and manifest ----------------------------------------------------------------------------------
class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnvSpecModel(_Model):
    """``EnvSpec.to_dict()`` as stored in a manifest (``env``) and a trace's meta (``spec``)."""

    id: EnvId
    obs_shape: Annotated[list[Int(1, MAX_OBS_SIDE)], Field(min_length=3, max_length=3)]
    discrete: Bool
    num_actions: Int(1, MAX_ACTIONS)
    action_names: Annotated[list[Text(MAX_NAME)], Field(max_length=MAX_ACTIONS)] = []
    object_names: Names = []
    can_branch: Bool = False
    max_steps: Int(0, MAX_COUNT) = 0

    @model_validator(mode="after")
    def _names_fit(self) -> "EnvSpecModel":
        # the explainers index action_names by action: a list of another length is a corrupt spec
        if self.action_names and len(self.action_names) != self.num_actions:
            raise ValueError(f"env.action_names has {len(self.action_names)} names for "
                             f"num_actions={self.num_actions}")
        return self


class EvalModel(BaseModel):
    """An evaluation record (``EvalResult.to_dict``): the numbers the toolkit prints and tabulates."""

    model_config = ConfigDict(extra="allow")
    mean: Float()
    std: Float(0.0)
    episodes: Int(0, 10_000_000) | None = None
    returns: Annotated[list[Float()], Field(max_length=10_000_000)] | None = None
    lengths: Annotated[list[Int(0, MAX_COUNT)], Field(max_length=10_000_000)] | None = None
    seed: Seed | None = None
    policy: Text(100) | None = None
    env: EnvId | None = None


class BundleModel(BaseModel):
    """``manifest["bundle"]`` of a bundled checkpoint (``xdreamer.bundle``; read by ``markdown_row``)."""

    model_config = ConfigDict(extra="allow")
    eval_mode: EvalModel
    eval_random: EvalModel
    episodes: Int(1, 10_000_000)
    seed: Seed
    train_wall_s: Float(0.0) | None = None
    train_commands: Annotated[list[Text(100_000)], Field(max_length=10_000)] = []
    source: Text(100_000) | None = None
    cpu: Text(MAX_NAME) | None = None


class ManifestModel(BaseModel):
    """A checkpoint's ``manifest.json``. Extra fields are kept (bundles and tools add records); the ones
    the toolkit reads are typed."""

    model_config = ConfigDict(extra="allow")
    format_version: Int(1, 1)
    env: EnvSpecModel
    steps: Int(0, MAX_COUNT)
    updates: Int(0, MAX_COUNT) = 0
    weights_sha256: Sha256
    env_frames: Int(0, MAX_COUNT * 1000) | None = None
    created: Text(100) | None = None
    versions: Annotated[dict[Text(100), Text(MAX_NAME)], Field(max_length=1000)] | None = None
    commit: Text(100) | None = None
    hardware: Text(MAX_NAME) | None = None
    train_episodes: Int(0, MAX_COUNT) | None = None
    train_wall_s: Float(0.0) | None = None
    eval: EvalModel | None = None
    bundle: BundleModel | None = None


def _validated(model: type[BaseModel], value: object, where: str, what: str = "", kind: str | None = None) -> dict:
    """``value`` as read if it is a dict that ``model`` accepts, else a one-line ``ValueError``:
    ``"<where>: <what> must be a JSON object, not <kind>"`` or ``"<where>: <what><field>=<value> must be ..."``."""
    if not isinstance(value, dict):
        raise ValueError(f"{where}: {what}must be {kind or 'a JSON object'}, not {_json_kind(value)}")
    try:
        model.model_validate(value)
    except ValidationError as exc:
        raise ValueError(f"{where}: {what}{first_error(exc)}") from None
    return value


def validate_manifest(manifest: object, where: str) -> dict[str, Any]:
    """``manifest`` (parsed JSON) if it is a valid manifest, else ``ValueError("<where>: field=value must be
    ...")``. The dict is returned as read (extra fields included)."""
    return _validated(ManifestModel, manifest, where)


def validate_env_spec(spec: object, where: str) -> dict[str, Any]:
    """``spec`` if it is a valid ``EnvSpec.to_dict()``, else ``ValueError`` naming ``where`` and the field."""
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: env spec must be a JSON object, not {_json_kind(spec)}")
    return _validated(EnvSpecModel, spec, where, "env.")


# ---- trainer.pt ------------------------------------------------------------------------------------------------
def _json_object_text(value: str) -> str:
    if len(value) > 1 << 20:
        raise ValueError("must be at most 1 MB of JSON")
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError):
        raise ValueError("must be a JSON object (a numpy generator state)") from None
    if not isinstance(parsed, dict):
        raise ValueError("must be a JSON object (a numpy generator state)")
    return value


def _uint8_vector(value: Any) -> Any:
    import torch

    if not (isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.dim() == 1
            and value.numel() <= 1 << 20):
        raise ValueError("must be a 1-D uint8 tensor (torch.get_rng_state())")
    return value


JsonObjectText = Annotated[str, Strict(), AfterValidator(_json_object_text)]


class TrainerStateModel(BaseModel):
    """``Trainer._trainer_state()`` as ``trainer.pt`` holds it."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    step: Int(0, MAX_COUNT)
    episodes: Int(0, MAX_COUNT)
    updates: Int(0, MAX_COUNT)
    pretrained: Bool
    wall_s: Float(0.0) = 0.0
    optimizers: dict[Text(100), dict[Text(100), Any]]
    torch_rng: Annotated[Any, AfterValidator(_uint8_vector)]
    numpy_rng: JsonObjectText
    replay_rng: JsonObjectText

    @model_validator(mode="after")
    def _optimizer_states(self) -> "TrainerStateModel":
        for name, state in self.optimizers.items():
            if not {"state", "param_groups"} <= set(state) or not isinstance(state["param_groups"], list) \
                    or not isinstance(state["state"], dict):
                raise ValueError(f"optimizers.{name} is not an optimizer state_dict (state, param_groups)")
        return self


def validate_trainer_state(state: object, where: str) -> dict[str, Any]:
    """``state`` (what ``torch.load(trainer.pt, weights_only=True)`` returned) if it has the structure the
    trainer restores, else ``ValueError`` naming ``where`` and the field."""
    if not isinstance(state, dict):
        raise ValueError(f"{where}: trainer state must be a dict, not {type(state).__name__}")
    return _validated(TrainerStateModel, state, where)


# ---- trace meta ----------------------------------------------------------------------------------------------
class ObjectEffectsMetaModel(BaseModel):
    """``meta["object_effects"]`` of a trace whose steps were attributed to their objects
    (``explain.objects.record_object_effects``, ``xdreamer record --objects``)."""

    model_config = ConfigDict(extra="forbid")
    objects: Names
    variants: Names
    k: Int(0, 10_000)
    shift: Int(1, 10_000)
    horizon: Int(1, 10_000)
    saturated_above: Float(0.0, 1.0)
    every: Int(1, 10_000_000) = 1  # ``record --objects-every``: every N-th step attributed (absent before it existed)


class TraceMetaModel(BaseModel):
    """The ``meta`` record of a trace written by ``xdreamer.explain.trace.record``/``save``. ``format`` and
    ``version`` are only typed here: ``load_trace`` compares them with its constants and says which."""

    model_config = ConfigDict(extra="allow")
    format: Text(100)
    version: Int(0, 1_000_000)
    checkpoint: Text(100_000) | None = None
    weights_sha256: Sha256 | None = None
    weights_fingerprint: Sha256
    env: EnvId
    spec: EnvSpecModel
    seed: Seed
    policy: Choice("mode", "sample")
    episodes: Int(0, 10_000_000)
    max_steps: Int(0, MAX_COUNT) | None = None
    created: Text(100)
    discount: Discount
    discount_lambda: Discount
    clip_rewards: Choice("tanh", "identity")
    columns: Annotated[list[Text(200)], Field(max_length=10_000)] | None = None
    object_effects: ObjectEffectsMetaModel | None = None

    @model_validator(mode="after")
    def _env_is_spec(self) -> "TraceMetaModel":
        if self.env != self.spec.id:
            raise ValueError(f"env={_short(self.env)} differs from spec.id={_short(self.spec.id)}")
        return self


def validate_trace_meta(meta: object, path: Any) -> dict[str, Any]:
    """``meta`` (the parsed JSON ``meta`` record of the trace ``path``) if valid, else a one-line
    ``ValueError("corrupt trace file <path>: meta field=value must be ...")``. Returns the dict as read."""
    return _validated(TraceMetaModel, meta, f"corrupt trace file {path}", "meta ")


# ---- report tables ------------------------------------------------------------------------------------------
REPORT_TEXT_COLUMNS = ("case", "checkpoint", "detector")
REPORT_INT_COLUMNS = ("episode", "step")
REPORT_FLOAT_COLUMNS = ("score",)
MAX_REPORT_ROWS = 1_000_000  # a report holds max_cases rows per checkpoint and detector (a few hundred)
MAX_REPORT_INT = 2**53  # episode / step: exact in a float64 column


def validate_report_table(table: "pd.DataFrame", path: Any) -> "pd.DataFrame":
    """A cleaned copy of a report's ``summary.csv`` (as ``pandas.read_csv`` returned it): ``case``,
    ``checkpoint``, ``detector`` strings of at most 1000 characters, ``episode`` and ``step`` non-negative
    ints (int64), ``score`` finite floats; other columns untouched. Raises a one-line ``ValueError`` naming
    ``path``, the row (1-based, and its CSV line) and the column."""
    import numpy as np
    import pandas as pd

    if not isinstance(table, pd.DataFrame):
        raise ValueError(f"{path}: not a table")
    missing = [c for c in (*REPORT_TEXT_COLUMNS, *REPORT_INT_COLUMNS, *REPORT_FLOAT_COLUMNS) if c not in table.columns]
    if missing:
        raise ValueError(f"{path} lacks the column(s) {', '.join(missing)}")
    if len(table) > MAX_REPORT_ROWS:
        raise ValueError(f"{path} has {len(table)} rows; a report has at most {MAX_REPORT_ROWS}")
    out = table.copy()

    def fail(row: int, column: str, problem: str | None) -> None:
        where = f"{path}: row {row + 1} (line {row + 2}), column {column}"
        if problem is None:
            raise ValueError(f"{where} is empty")
        value = table[column].iloc[row]
        value = value.item() if isinstance(value, np.generic) else value  # 1.5, not np.float64(1.5)
        raise ValueError(f"{where}: {_short(value)} {problem}")

    def first(mask: Any) -> int | None:
        hits = np.flatnonzero(np.asarray(mask, dtype=bool))
        return int(hits[0]) if len(hits) else None

    for column in REPORT_TEXT_COLUMNS:
        values = table[column]
        bad = first(values.isna())
        if bad is not None:
            fail(bad, column, None)
        text = values.astype(str)
        bad = first(text.str.len() > MAX_NAME)
        if bad is not None:
            fail(bad, column, f"is longer than {MAX_NAME} characters")
        out[column] = text.astype(object)
    for column in (*REPORT_INT_COLUMNS, *REPORT_FLOAT_COLUMNS):
        values = table[column]
        if values.dtype == bool:
            arr = np.full(len(values), np.nan)
        else:
            arr = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        with np.errstate(invalid="ignore"):
            if column in REPORT_FLOAT_COLUMNS:
                bad = first(~np.isfinite(arr))
                if bad is not None:
                    fail(bad, column, "is not a finite number")
                out[column] = arr
            else:
                bad = first(~np.isfinite(arr) | (arr < 0) | (arr > MAX_REPORT_INT) | (arr != np.floor(arr)))
                if bad is not None:
                    fail(bad, column, f"is not an integer in 0..{MAX_REPORT_INT}")
                out[column] = arr.astype(np.int64)
    return out


__all__ = ["CONFIG_RULES", "check_config", "config_model", "first_error", "EnvSpecModel", "ManifestModel",
           "validate_manifest", "validate_env_spec", "validate_trainer_state", "validate_trace_meta",
           "validate_report_table", "DEVICE_PATTERN"]

"""Typed, frozen run configuration with named presets.

One flat dataclass holds every knob. ``defaults`` are DreamerV2's released Atari
configuration (danijar/dreamerv2 ``configs.yaml``, ``defaults`` + ``atari`` blocks,
commit 07d906e); presets override it in the order given, so ``--preset atari small``
means "the paper's Atari config, shrunk to CPU size". ``--set key=value`` overrides
any field after the presets. Unknown keys, values that do not parse as the field's type
and values outside the field's range (``xdreamer.schema.CONFIG_RULES``, issue #28) are
errors (``ConfigError``, one line), never silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
import re
from dataclasses import dataclass, fields
from typing import Any, Iterable, Mapping

from .worldmodels.settings import PRESETS as WORLDMODELS_PRESETS, WorldModelsFields


PRECISIONS = ("float32", "bfloat16")  # float32, or bfloat16 autocast
# torch.compile modes for the networks (Agent.compile_networks); "off" is the eager path.
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")


class ConfigError(ValueError):
    """A bad preset name, unknown key, unparsable or out-of-range value, or a device this machine lacks."""


@dataclass(frozen=True)
class Config(WorldModelsFields):  # World Models' fields (wm_*) live with the member: xdreamer/worldmodels/settings.py
    # --- run -------------------------------------------------------------------------
    env: str = "toy:catch"
    seed: int = 0
    steps: int = 50_000_000  # agent steps (atari block: steps 5e7 = 2e8 frames)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "float32"  # float32 | bfloat16 (autocast); paper used fp16, see reference §9.4
    threads: int = 0  # torch intra-op threads, 0 = torch default
    compile: str = "off"  # torch.compile mode for the networks: off | default | reduce-overhead | max-autotune

    # Member of the family (issue #29): dreamerv1 (Hafner et al. 2020, xdreamer/dreamerv1.py) | dreamerv2 (Hafner et
    # al. 2021) | dreamerv3 (Hafner et al. 2023,
    # xdreamer/dreamerv3.py); the ``dreamerv3`` preset sets it with that paper's hyperparameters. worldmodels (Ha &
    # Schmidhuber 2018, xdreamer/worldmodels/, issue #30): the ``worldmodels*`` presets set it.
    algo: str = "dreamerv2"

    # --- env protocol (DreamerV2 atari wrapper defaults) -------------------------------
    action_repeat: int = 4  # atari: action_repeat 4; dmc_vision: 2
    time_limit: int = 27_000  # agent steps (atari: time_limit 27000 = 108k frames)
    sticky: float = 0.25  # atari: sticky actions, repeat_action_probability 0.25
    noops: int = 30  # atari: up to 30 no-op starts
    # Atari action set: "minimal" is the released code's (dreamerv2 common/envs.py Atari(all_actions=False)), and
    # every bundled Atari agent's; "full" (18 actions) is the DreamerV2 paper's evaluation protocol (issue #29), in
    # the ``atari-paper`` preset. The action count sets the actor's output size, so a checkpoint keeps its own.
    atari_actions: str = "minimal"

    # --- schedule ---------------------------------------------------------------------
    prefill: int = 50_000  # atari: prefill 50000 random agent steps
    train_every: int = 16  # atari: train_every 16 agent steps
    train_steps: int = 1  # updates per train call
    pretrain: int = 1  # updates right after prefill (configs.yaml: pretrain 1)
    eval_every: int = 250_000  # atari: eval_every 2.5e5
    eval_episodes: int = 1  # configs.yaml: eval_eps 1
    log_every: int = 10_000  # atari: log_every 1e4
    video_every: int = 250_000  # open-loop prediction video cadence (agent steps)
    checkpoint_every: int = 100_000  # agent steps
    checkpoint_minutes: float = 15.0  # also checkpoint when this much wall time passed
    keep_checkpoints: int = 2

    # --- replay -----------------------------------------------------------------------
    batch: int = 16  # dataset.batch 16 (final code; paper-era 50, see preset atari-paper)
    length: int = 50  # dataset.length 50
    replay_capacity: int = 2_000_000  # replay.capacity 2e6 steps
    prioritize_ends: bool = True  # replay.prioritize_ends True
    # Store a running episode every this many steps as a chunk, so that training sees it before it ends
    # (0: whole episodes only, dreamerv2's default replay.ongoing False; DreamerV3 streams 1024-step chunks).
    # On a CPU an Atari episode that a collapsed policy stalls lasts the 27,000-step limit, over an hour.
    replay_chunk: int = 0

    # --- world model ------------------------------------------------------------------
    cnn_depth: int = 48  # encoder/decoder cnn_depth 48
    decoder: str = "dreamerv2"  # dreamerv2 (1x1 start, kernels 5,5,6,6) | dreamerv3 (4x4 start); nets.ConvDecoder
    mlp_layers: int = 4  # heads: 4 x 400, ELU
    mlp_units: int = 400
    deter: int = 600  # atari rssm deter 600
    hidden: int = 600  # atari rssm hidden 600
    stoch: int = 32  # 32 categorical variables ...
    classes: int = 32  # ... with 32 classes each
    unimix: float = 0.0  # uniform mix into latent categoricals; DreamerV2 none, DreamerV3 0.01
    # Not in the paper (DreamerV2: none): "batch" normalises the image embedding over the batch (batch norm
    # without affine parameters, running statistics when acting or analysing) before the posterior reads it.
    # It removes the component that all frames share, which otherwise drives every frame's latent towards one
    # class early in training; with it the toy game's 4x4 ball is learnt (docs/training.md "Learning on CPU").
    embed_norm: str = "none"
    clip_rewards: str = "tanh"  # atari: clip_rewards tanh; dmc_vision: identity
    pred_discount: bool = True  # atari: pred_discount True; dmc_vision: False
    kl_scale: float = 0.1  # loss_scales.kl 0.1 (beta)
    kl_balance: float = 0.8  # kl.balance 0.8 (alpha)
    kl_free: float = 0.0  # kl.free 0.0 (free nats; dmc_vision 1.0)
    kl_free_avg: bool = True  # kl.free_avg True
    discount_scale: float = 5.0  # loss_scales.discount 5.0
    # DreamerV3 only (its KL replaces kl_scale / kl_balance): dynamics and representation loss scales (§2: 0.5, 0.1).
    dyn_scale: float = 0.5
    rep_scale: float = 0.1
    # DreamerV3 only: weight of the critic's regulariser towards its EMA copy's predictions (§2: 1.0).
    critic_reg: float = 1.0
    reward_scale: float = 1.0  # loss_scales.reward 1.0
    model_lr: float = 2e-4  # model_opt.lr 2e-4
    # Not in the paper (0 = model_lr for everything): a separate rate for the representation model
    # q(z_t | h_t, x_t), i.e. the encoder and the posterior head, while prior, decoder and heads keep
    # model_lr. An experiment knob for the toy game's ball (docs/faithfulness.md "Known limitations").
    repr_lr: float = 0.0
    # --- actor-critic -----------------------------------------------------------------
    actor_lr: float = 4e-5  # actor_opt.lr 4e-5
    critic_lr: float = 1e-4  # critic_opt.lr 1e-4
    adam_eps: float = 1e-5  # *_opt.eps 1e-5
    grad_clip: float = 100.0  # *_opt.clip 100
    # *_opt.wd 1e-6: dreamerv2's Optimizer multiplies every weight by (1 - wd) before each step, not scaled by the
    # learning rate (common/other.py ``_apply_weight_decay``; AdamW's lr * wd would be 2e-10, a no-op in float32).
    weight_decay: float = 1e-6
    horizon: int = 15  # imag_horizon 15
    discount: float = 0.999  # atari: discount 0.999
    discount_lambda: float = 0.95  # discount_lambda 0.95
    actor_grad: str = "auto"  # auto -> reinforce (discrete) / dynamics (continuous); or reinforce|dynamics|both
    actor_grad_mix: float = 0.1  # actor_grad_mix 0.1 (weight of dynamics backprop when actor_grad=both)
    actor_ent: float = 1e-3  # atari: actor_ent 1e-3 (eta)
    actor_min_std: float = 0.1  # continuous actor: min_std 0.1
    # DreamerV1 only (xdreamer/dreamerv1.py): exploration while collecting, additive Gaussian noise of this std on
    # continuous actions or epsilon-greedy with this epsilon (danijar/dreamer expl_amount 0.3); 0 = none (V2, V3).
    expl_amount: float = 0.0
    slow_target_update: int = 100  # slow_target_update 100 updates
    slow_target_fraction: float = 1.0  # slow_target_fraction 1 (hard copy)
    # Latents when evaluating: "sample" as dreamerv2's released config (eval_state_mean False: agent.py ``policy``
    # samples the posterior in every mode), "mode" the posterior's most likely class (deterministic; what every
    # explanation replays, and what configs written before this field evaluated with: LEGACY_DEFAULTS).
    eval_latent: str = "sample"

    # ----------------------------------------------------------------------------------
    def replace(self, **changes: Any) -> "Config":
        return parse_overrides(self, changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Config":
        """The defaults with ``data`` (e.g. a parsed config.json) applied and validated; anything but a
        mapping of known keys to in-range values is a one-line ConfigError. A key that ``data`` lacks takes its
        ``LEGACY_DEFAULTS`` value where it has one (what a run saved before the field existed did)."""
        if not isinstance(data, Mapping):
            kind = {type(None): "null", list: "a list", str: "a string", bool: "a boolean", int: "a number",
                    float: "a number"}.get(type(data), type(data).__name__)
            raise ConfigError(f"a config must be a JSON object of key: value pairs, not {kind}")
        legacy = {k: v for k, v in LEGACY_DEFAULTS.items() if k not in data}
        return parse_overrides(cls(), {**legacy, **data})

    def validate(self) -> "Config":
        """``self`` if every field is within its range (``xdreamer.schema.CONFIG_RULES``), else ConfigError
        ``field=value must be ...``."""
        from .schema import check_config

        check_config(self.to_dict())
        return self


# Fields added after checkpoints were shipped, with the value a config.json that lacks them ran with (issue #29: a
# bundled agent must reproduce its manifest). ``Config()`` itself holds the paper's / released config's value.
LEGACY_DEFAULTS: dict[str, Any] = {"eval_latent": "mode"}


# Presets only change numbers; they are merged in the order given on the command line.
PRESETS: dict[str, dict[str, Any]] = {
    # The paper's Atari configuration is the default; the preset exists so that commands read
    # like the paper and compose (``--preset atari small``).
    "atari": {},
    # Paper-era batch (dreamerv2 commits 0216d33..6124db4 used dataset.batch 50).
    # The paper's evaluation protocol: the full 18-action set (issue #29; the released code uses the minimal set).
    "atari-paper": {"batch": 50, "atari_actions": "full"},
    # The paper's DMC-vision block (configs.yaml ``dmc_vision``), used for MuJoCo from pixels.
    "mujoco": {
        "action_repeat": 2, "deter": 200, "hidden": 200, "kl_scale": 1.0, "kl_free": 1.0,
        "actor_grad": "dynamics", "actor_ent": 1e-4, "discount": 0.99, "model_lr": 3e-4,
        "actor_lr": 8e-5, "critic_lr": 8e-5, "clip_rewards": "identity", "pred_discount": False,
        "train_every": 5, "prefill": 1000, "pretrain": 100, "time_limit": 500,
        "eval_every": 10_000, "log_every": 1000, "video_every": 10_000,
    },
    # DreamerV3 (Hafner et al. 2023, arXiv:2301.04104v1, Table of hyperparameters; xdreamer/dreamerv3.py): one set
    # for every domain. Sizes are separate presets (dreamerv3-xs ... dreamerv3-xl, the paper's model sizes); compose
    # e.g. ``--preset dreamerv3 dreamerv3-s`` or, on a CPU, ``--preset dreamerv3 small toy``.
    "dreamerv3": {
        "algo": "dreamerv3",
        "unimix": 0.01,  # 1 % unimix (latents and actor)
        "kl_free": 1.0, "dyn_scale": 0.5, "rep_scale": 0.1,  # free bits 1; beta_dyn 0.5, beta_rep 0.1
        "reward_scale": 1.0, "discount_scale": 1.0,  # beta_pred 1 for image, reward and continue
        "clip_rewards": "identity",  # symlog two-hot instead of clipping
        "discount": 0.997,  # horizon 333: gamma = 1 - 1/333
        "discount_lambda": 0.95, "horizon": 15,
        "actor_ent": 3e-4,
        "slow_target_update": 1, "slow_target_fraction": 0.02,  # critic EMA decay 0.98
        "critic_reg": 1.0,
        "model_lr": 1e-4, "actor_lr": 3e-5, "critic_lr": 3e-5,
        "adam_eps": 1e-8, "grad_clip": 1000.0,  # the world model's (actor-critic: eps 1e-5, clip 100)
        "weight_decay": 0.0,
        "batch": 16, "length": 64,
        "decoder": "dreamerv3",
    },
    # DreamerV1 (Hafner et al. 2020; danijar/dreamer ``define_config``, xdreamer/dreamerv1.py): Gaussian latents 30 +
    # GRU 200, free nats 3 with KL scale 1, actor by value gradients, gamma 0.99, lambda 0.95, horizon 15, model lr
    # 6e-4 and actor / value lr 8e-5, Adam eps 1e-7 (tf.optimizers.Adam's default), clip 100, batch 50 x 50, no
    # discount head, exploration noise 0.3; the DMC protocol (action repeat 2, unclipped rewards, 1000 steps = 500
    # agent steps). On a CPU compose ``--preset dreamerv1 toy`` (toy's sizes and rates); presets that set classes
    # (small, debug) go before it: the Gaussian latent needs classes 1.
    "dreamerv1": {
        "algo": "dreamerv1", "stoch": 30, "classes": 1, "deter": 200, "hidden": 200, "cnn_depth": 32,
        "mlp_units": 400, "mlp_layers": 4, "kl_free": 3.0, "kl_scale": 1.0, "kl_free_avg": True,
        "discount": 0.99, "discount_lambda": 0.95, "horizon": 15, "actor_ent": 0.0, "expl_amount": 0.3,
        "model_lr": 6e-4, "actor_lr": 8e-5, "critic_lr": 8e-5, "adam_eps": 1e-7, "grad_clip": 100.0,
        "weight_decay": 0.0, "batch": 50, "length": 50, "pred_discount": False, "clip_rewards": "identity",
        "action_repeat": 2, "time_limit": 500, "prefill": 2500, "train_every": 5, "pretrain": 100,
    },
    # DreamerV3 on the toy games at the toy preset's CPU budget (issue #29; compose last: ``--preset dreamerv3 small
    # toy dreamerv3-toy``). A departure from the paper's one set of hyperparameters: ``toy`` runs the world model at
    # lr 3e-3, 30x the paper's 1e-4, and at that rate the paper's KL weights (0.5 / 0.1) and loose clipping (1000,
    # eps 1e-8) let the posterior collapse to near one-hot codes before the 4x4 ball is in them (held-out ball MSE 1.00
    # after 2,000 world-model updates on seed 2). DreamerV2's values fix it only together (docs/family.md "Why the
    # world model is slow"): KL scale 0.1 x balance 0.8 (dreamerv2 configs.yaml ``kl.scale 0.1, balance 0.8``), the
    # 1x1-start decoder, and the model optimiser's clip 100 / eps 1e-5 (dreamerv2 ``model_opt``).
    "dreamerv3-toy": {
        "dyn_scale": 0.08, "rep_scale": 0.02, "decoder": "dreamerv2", "grad_clip": 100.0, "adam_eps": 1e-5,
    },
    # The paper's model sizes (Table B.1: GRU units, CNN multiplier, dense units, MLP layers).
    "dreamerv3-xs": {"deter": 256, "hidden": 256, "cnn_depth": 24, "mlp_units": 256, "mlp_layers": 1},
    "dreamerv3-s": {"deter": 512, "hidden": 512, "cnn_depth": 32, "mlp_units": 512, "mlp_layers": 2},
    "dreamerv3-m": {"deter": 1024, "hidden": 1024, "cnn_depth": 48, "mlp_units": 640, "mlp_layers": 3},
    "dreamerv3-l": {"deter": 2048, "hidden": 2048, "cnn_depth": 64, "mlp_units": 768, "mlp_layers": 4},
    "dreamerv3-xl": {"deter": 4096, "hidden": 4096, "cnn_depth": 96, "mlp_units": 1024, "mlp_layers": 5},
    # CPU-sized: same algorithm, smaller networks and cadence. Only numbers shrink.
    "small": {
        "cnn_depth": 16, "mlp_layers": 2, "mlp_units": 200, "deter": 200, "hidden": 200,
        "stoch": 16, "classes": 16, "batch": 16, "length": 32, "prefill": 2_000,
        "train_every": 4, "replay_capacity": 200_000, "replay_chunk": 1000, "eval_every": 5_000, "eval_episodes": 5,
        "log_every": 1_000, "video_every": 10_000, "checkpoint_every": 5_000,
        "checkpoint_minutes": 5.0, "steps": 200_000,
        # Smaller nets learn with larger steps (DreamerV1/dmc rates): model 3e-4, AC 8e-5 -> CPU budget.
        "model_lr": 6e-4, "actor_lr": 2e-4, "critic_lr": 2e-4,
    },
    # CPU learning preset for the built-in diagnostic games (toy:catch*), on top of ``small``
    # (``--preset small toy``). Measured on this project's 2-core CPU; see docs/training.md "Learning on CPU".
    "toy": {
        "cnn_depth": 8, "deter": 128, "hidden": 128, "mlp_units": 128, "batch": 16, "length": 16,
        # Episodes are < 100 steps: discount 0.99 as in dreamerv2's dmc configs (configs.yaml dmc: discount 0.99).
        "discount": 0.99,
        "prefill": 1000, "train_every": 2,
        # Larger steps than the paper's (model 2e-4, actor 4e-5, critic 1e-4): with a few thousand updates
        # the world model draws the ball only at model_lr 3e-3 in our runs (2e-4..6e-4 did not within 2,000).
        "model_lr": 3e-3, "actor_lr": 4e-4, "critic_lr": 4e-4,
        # Batch-normalised image embedding (not in the paper; Config.embed_norm): without it the posterior collapses
        # to one code before it carries toy:catch's 4x4 ball (docs/training.md "Learning on CPU").
        "embed_norm": "batch",
        # Reward loss x2: the toy presets were tuned (docs/training.md "Learning on CPU") when the reward head's loss was
        # (r - mu)^2, twice dreamerv2's Normal(mu, 1) NLL 0.5 (r - mu)^2 (issue #29); this keeps their balance of
        # reward against image and KL terms.
        "reward_scale": 2.0,
        # Entropy 1e-2 (dreamerv2 atari 1e-3 let the 3-action policy collapse before the ball was seen).
        "actor_ent": 1e-2,
        # EMA critic target (DreamerV1 / DreamerV3 style, fraction 0.02 per update) instead of a hard copy
        # every 100 updates: over a few thousand updates the hard copy refreshes the bootstrap too rarely.
        "slow_target_update": 1, "slow_target_fraction": 0.02,
        "eval_every": 1000, "eval_episodes": 10, "log_every": 250, "video_every": 2000,
        "checkpoint_every": 1000, "checkpoint_minutes": 5.0,
    },
    # Tiny: exercises every code path in seconds. Numbers only.
    "debug": {
        "cnn_depth": 8, "mlp_layers": 2, "mlp_units": 64, "deter": 64, "hidden": 64,
        "stoch": 8, "classes": 8, "batch": 4, "length": 16, "horizon": 5, "prefill": 200,
        "train_every": 8, "replay_capacity": 10_000, "eval_every": 500, "eval_episodes": 1,
        "log_every": 100, "video_every": 500, "checkpoint_every": 500, "steps": 1_000,
        "slow_target_update": 10,
    },
    **WORLDMODELS_PRESETS,
}


def _coerce(name: str, typ: Any, value: Any) -> Any:
    """Parse ``value`` (a string from the CLI or a JSON value) as the field's type; ranges are checked
    afterwards, on the whole config (``Config.validate``)."""
    typ = {"int": int, "float": float, "str": str, "bool": bool}.get(typ, typ)
    if typ is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower() if isinstance(value, (str, numbers.Integral)) else None
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={_short(value)} is not a boolean")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (str, numbers.Real)):
            raise ConfigError(f"{name}={_short(value)} is not an integer")
        if isinstance(value, numbers.Integral):
            return int(value)
        try:
            number = float(value.replace("_", "")) if isinstance(value, str) else float(value)
        except ValueError:
            raise ConfigError(f"{name}={_short(value)} is not an integer") from None
        if not number.is_integer():  # also NaN and infinities ("1e400")
            raise ConfigError(f"{name}={_short(value)} is not an integer")
        return int(number)
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (str, numbers.Real)):
            raise ConfigError(f"{name}={_short(value)} is not a number")
        try:  # NaN and infinities parse here and are refused by the range check (#28)
            return float(value.replace("_", "")) if isinstance(value, str) else float(value)
        except (ValueError, OverflowError):  # OverflowError: a JSON integer beyond a double
            raise ConfigError(f"{name}={_short(value)} is not a number") from None
    if not isinstance(value, str):  # a JSON list or object must not become its repr
        raise ConfigError(f"{name}={_short(value)} is not a string")
    return value


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


_FIELDS = {f.name: f for f in fields(Config)}


def parse_overrides(base: Config, changes: Mapping[str, Any]) -> Config:
    """Return ``base`` with ``changes`` applied; unknown keys and bad values raise ConfigError."""
    parsed = {}
    for key, value in changes.items():
        if not isinstance(key, str):
            raise ConfigError(f"config keys are strings, got {_short(key)}")
        if key not in _FIELDS:
            close = [k for k in _FIELDS if key.split(".")[-1] in k or k in key]
            hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
            raise ConfigError(f"unknown config key {_short(key)}{hint}")
        parsed[key] = _coerce(key, _FIELDS[key].type, value)
    return dataclasses.replace(base, **parsed).validate()


def parse_set_args(items: Iterable[str]) -> dict[str, str]:
    """Parse ``key=value`` strings from ``--set``."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


# Presets that adjust another one and mean nothing without it: each must come after the preset it names (e.g.
# ``dreamerv3-toy`` alone would change a DreamerV2 run's optimiser and leave its algorithm as it was).
PRESET_NEEDS: dict[str, str] = {"dreamerv3-toy": "dreamerv3"}


def build_config(presets: Iterable[str] = (), overrides: Mapping[str, Any] | None = None,
                 base: Config | None = None) -> Config:
    """Merge presets in order over the defaults, then ``overrides``; validate the result."""
    cfg = base or Config()
    presets = list(presets)
    for i, name in enumerate(presets):
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
        need = PRESET_NEEDS.get(name)
        if need and (need not in presets[:i] or need in presets[i + 1:]):
            raise ConfigError(f"preset {name!r} adjusts {need!r}: give it after {need!r}, e.g. --preset {need} "
                              f"{' '.join(p for p in presets if p not in (need, name))} {name}".replace("  ", " "))
        cfg = parse_overrides(cfg, PRESETS[name])
    if overrides:
        cfg = parse_overrides(cfg, overrides)
    return cfg.validate()


def read_config_file(path: str | os.PathLike) -> Config:
    """The validated Config in the JSON file ``path`` (a run's or a checkpoint's config.json). Any problem
    (missing, not a regular file, over ``schema.MAX_CONFIG_BYTES``, not JSON, not an object, a bad field) is a
    one-line ConfigError that starts with ``path``."""
    from .schema import MAX_CONFIG_BYTES

    try:
        if not os.path.isfile(path):  # a folder, a FIFO (would block), a device
            raise ConfigError("missing or not a regular file" if not os.path.exists(path) else "not a regular file")
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(f"larger than {MAX_CONFIG_BYTES} bytes")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting too deep
            raise ConfigError(f"not valid JSON ({' '.join(str(exc).split())[:200]})") from None
        return Config.from_dict(data)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]{1,3})?")  # = schema.DEVICE_PATTERN


def check_device(text: str) -> str:
    """``text`` if it names a device this machine can run on: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or
    ``mps``; else a one-line ConfigError (an unknown name, or CUDA/MPS asked for where torch has none).
    ``auto`` always passes (it picks CUDA when there is one). Imports torch for the CUDA and MPS cases only."""
    if not isinstance(text, str) or not _DEVICE.fullmatch(text):
        raise ConfigError(f"unknown device {_short(text)}; use auto, cpu, cuda, cuda:N or mps")
    if text.startswith("cuda"):
        import torch

        if torch.version.cuda is None:
            raise ConfigError(f"--device {text}: this torch build has no CUDA (torch {torch.__version__}); "
                              "use --device cpu")
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {text}: no CUDA GPU is visible to this torch (torch {torch.__version__}, "
                              f"CUDA {torch.version.cuda}); use --device cpu")
        index = int(text.split(":", 1)[1]) if ":" in text else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                              f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif text == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise ConfigError(f"--device mps: MPS is not available to this torch (torch {torch.__version__}); "
                              "use --device cpu")
    return text

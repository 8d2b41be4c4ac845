"""The Dreamer agent: world model + actor-critic, acting in an env and learning from replay."""

from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from .behavior import ActorCritic
from .config import COMPILE_MODES, Config
from .envs import EnvSpec
from .nets import clone_outputs, compiled_outputs_need_clones, cpu_has_native_bf16, init_weights
from .rssm import State
from .world_model import WorldModel


def synchronize(device: torch.device | str) -> None:
    """Wait for the work queued on ``device`` (a no-op on CPU): before reading a clock on a GPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@functools.lru_cache(maxsize=None)
def _warn_slow_bfloat16() -> None:
    warnings.warn("precision=bfloat16 on a CPU without native bfloat16 matmuls (AVX512-BF16 or AMX): expect it to "
                  "run far slower than float32 here (0.34 vs 155 GFLOP/s on a 2-core AVX2 CPU); use "
                  "--set precision=float32", RuntimeWarning, stacklevel=3)


def member(algo: str) -> tuple[type[WorldModel], type[ActorCritic]]:
    """The world model and actor-critic classes of a member of the family (``Config.algo``). The one place that
    reads the member's name: each member lives in its own module (house rule 15)."""
    if algo == "dreamerv2":
        return WorldModel, ActorCritic
    if algo == "dreamerv1":
        from .dreamerv1 import ActorCriticV1, WorldModelV1

        return WorldModelV1, ActorCriticV1
    if algo == "dreamerv3":
        from .dreamerv3 import ActorCriticV3, WorldModelV3

        return WorldModelV3, ActorCriticV3
    raise ValueError(f"unknown algo {algo!r}; use dreamerv1, dreamerv2 or dreamerv3")


@dataclass
class PolicyState:
    """Carried between env steps: the posterior latent and the last action taken ``[B, A]``."""

    latent: State
    action: torch.Tensor


@contextlib.contextmanager
def frozen(module: nn.Module):
    """Temporarily stop parameter gradients of ``module`` (gradients still flow through it)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


class Agent(nn.Module):
    """Dreamer agent (DreamerV2, or the member ``cfg.algo`` names). ``wm`` is the world model, ``ac`` the actor-critic; ``cfg`` and ``spec``
    describe how it was built. Optimisers exist only after ``init_optimizers()`` (training)."""

    def __init__(self, cfg: Config, spec: EnvSpec, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.cfg, self.spec = cfg, spec
        world_model, actor_critic = member(cfg.algo)
        self.wm = world_model(cfg, spec.obs_shape[0], spec.num_actions, spec.discrete)
        self.ac = actor_critic(cfg, self.wm.rssm.feat_dim, spec.num_actions, spec.discrete)
        init_weights(self)
        self.ac.target_critic.load_state_dict(self.ac.critic.state_dict())
        self.device = resolve_device(device or cfg.device) if not isinstance(device, torch.device) else device
        self.to(self.device)
        self.updates = 0
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.last_timings: dict[str, float] = {}
        # Wait for the device where ``last_timings`` reads the clock (``xdreamer bench``); off, a GPU's times are
        # those of queueing its work. Off by default: a sync stalls the queue.
        self.sync_timings = False

    # ---- convenience -------------------------------------------------------------------
    @property
    def actor(self):
        return self.ac.actor

    @property
    def critic(self):
        return self.ac.critic

    def autocast(self):
        if self.cfg.precision == "bfloat16":
            if self.device.type == "cpu" and not cpu_has_native_bf16():
                _warn_slow_bfloat16()
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def compile_networks(self, mode: str | None = None) -> "Agent":
        """``torch.compile`` the networks in place (``cfg.compile`` unless ``mode`` is given).

        Compiled: encoder, decoder, reward/discount heads, actor, critics and the RSSM's two
        deterministic step functions (``RSSM.compile_steps``). Sampling, the loop over time and
        the losses stay eager, so the compiled path draws the same random numbers and computes
        the same values as the eager one up to floating-point reassociation
        (``tests/test_model.py::test_compiled_update_matches_eager``). Weights and state-dict
        keys are unchanged, so checkpoints do not depend on it. Shapes are fixed (``dynamic=False``):
        training, acting and imagination each compile once. ``reduce-overhead`` and ``max-autotune`` add CUDA
        graphs on GPU; there every compiled callable returns copies of its outputs (``nets.clone_outputs``).
        """
        mode = mode or self.cfg.compile
        if mode == "off":
            return self
        if mode not in COMPILE_MODES:
            raise ValueError(f"compile mode {mode!r} is not one of {', '.join(COMPILE_MODES)}")
        modules = [self.wm.encoder, self.wm.decoder, self.wm.reward_head, self.ac.actor.net, self.ac.critic,
                   self.ac.target_critic]
        if self.wm.discount_head is not None:
            modules.append(self.wm.discount_head)
        clone = compiled_outputs_need_clones(mode, self.device)
        for module in modules:
            module.compile(mode=mode, dynamic=False)
            if clone:  # nn.Module.__call__ runs ``_compiled_call_impl`` (what ``compile`` set) when it is set
                module._compiled_call_impl = clone_outputs(module._compiled_call_impl)
        self.wm.rssm.compile_steps(mode, clone=clone)
        return self

    def to_torch(self, data: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in data.items():
            if key in ("image", "action", "reward", "is_first", "is_last", "is_terminal"):
                out[key] = torch.as_tensor(np.asarray(value), device=self.device)
        return out

    # ---- acting -------------------------------------------------------------------------
    def initial_policy_state(self, batch: int = 1) -> PolicyState:
        return PolicyState(self.wm.rssm.initial(batch, self.device),
                           torch.zeros(batch, self.spec.num_actions, device=self.device))

    @torch.no_grad()
    def policy(self, obs: Mapping[str, Any], state: PolicyState | None = None, mode: str = "explore",
               sample_latent: bool | None = None) -> tuple[np.ndarray, PolicyState]:
        """One acting step for a batch of observations (``image`` ``[B, C, 64, 64]`` uint8,
        ``is_first`` ``[B]``). ``mode``: ``explore`` samples the actor, ``eval`` takes its mode.
        ``sample_latent``: sample the posterior (default: only in ``explore``; the analysis layer replays the
        deterministic ``eval`` path; evaluation passes ``cfg.eval_latent``).
        Returns the env actions (int ``[B]`` or float ``[B, A]``) and the next policy state."""
        if sample_latent is None:
            sample_latent = mode == "explore"
        image = torch.as_tensor(np.asarray(obs["image"]), device=self.device)
        is_first = torch.as_tensor(np.asarray(obs["is_first"]), device=self.device).float()
        if state is None:
            state = self.initial_policy_state(image.shape[0])
        with self.autocast():
            embed = self.wm.encode(image.float() / 255.0 - 0.5)
            latent, _ = self.wm.rssm.obs_step(state.latent, state.action, embed, is_first,
                                              sample=sample_latent)
            feat = self.wm.feat(latent)
            action = self.actor.explore(feat) if mode == "explore" else self.actor.mode(feat)
        action = action.float()
        latent = latent.map(lambda x: x.float())
        env_action = action.argmax(-1).cpu().numpy() if self.spec.discrete else action.cpu().numpy()
        return env_action, PolicyState(latent, action)

    def act(self, obs: Mapping[str, Any], state: PolicyState | None = None, mode: str = "explore",
            sample_latent: bool | None = None) -> tuple[Any, PolicyState]:
        """``policy`` for one env observation dict: returns the env action (int or float ``[A]``)."""
        actions, state = self.policy({"image": obs["image"][None], "is_first": np.array([obs["is_first"]])},
                                     state, mode=mode, sample_latent=sample_latent)
        return actions[0], state

    # ---- learning -----------------------------------------------------------------------
    def init_optimizers(self) -> None:
        cfg = self.cfg

        def adam(params, lr):
            # Adam eps 1e-5 (dreamerv2 Optimizer: eps, wd, clip); its weight decay is not AdamW's lr * wd but a
            # shrink by (1 - wd) per step, in ``_step``. Fused (one kernel per parameter) where PyTorch has it: the
            # world model's step 52 -> 15 ms at paper size (2-core AVX2 EPYC, docs/benchmarks.md, fifth session),
            # the same update up to float rounding.
            return torch.optim.Adam(params, lr=lr, eps=cfg.adam_eps, fused=self._fused_adam() or None)

        model_params = self.wm.parameters()
        if cfg.repr_lr > 0:  # two parameter groups only then, so the default optimiser state is unchanged
            repr_params = [*self.wm.encoder.parameters(), *self.wm.rssm.obs_out.parameters()]
            ids = {id(p) for p in repr_params}
            model_params = [{"params": [p for p in self.wm.parameters() if id(p) not in ids]},
                            {"params": repr_params, "lr": cfg.repr_lr}]
        self.optimizers = {"model": adam(model_params, cfg.model_lr),
                           "actor": adam(self.ac.actor.parameters(), cfg.actor_lr),
                           "critic": adam(self.ac.critic.parameters(), cfg.critic_lr)}

    def _fused_adam(self) -> bool:
        """Whether the optimizers run PyTorch's fused AdamW (CPU and CUDA)."""
        return self.device.type in ("cpu", "cuda")

    def _step(self, name: str, loss: torch.Tensor, params, skip: torch.Tensor) -> torch.Tensor:
        """Backward and optimizer step for ``loss``; returns the gradient norm before clipping. ``skip`` (a 0/1
        float tensor on the device) skips the parameter update when set. It is OR-ed in place with "this loss or
        its gradient norm is not finite", without reading either value on the host."""
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        skip.copy_(torch.maximum(skip, (~(torch.isfinite(loss) & torch.isfinite(norm))).float()))
        if self.cfg.weight_decay > 0:
            # dreamerv2 ``Optimizer._apply_weight_decay``: var.assign((1 - wd) * var) on every variable after clipping
            # and before the Adam step, whatever the learning rate. Not applied where the step is skipped.
            weights = [p for group in opt.param_groups for p in group["params"]]
            with torch.no_grad():
                torch._foreach_mul_(weights, 1 - self.cfg.weight_decay * (1 - skip))
        if getattr(opt, "_step_supports_amp_scaling", False):
            # The fused AdamW kernels skip the update (and undo the step count) where ``found_inf`` is set; this is
            # the protocol torch.amp.GradScaler uses (torch/amp/grad_scaler.py, ``GradScaler.step``).
            opt.grad_scale, opt.found_inf = None, skip
            try:
                opt.step()
            finally:
                del opt.grad_scale, opt.found_inf
        elif not bool(skip):  # unfused optimizers (other device types): a host sync instead
            opt.step()
        return norm

    def device_update(self, data: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One update of world model, actor and critic on a batch already on the device (``to_torch``): the
        metrics as 0-d tensors, and ``"skipped"``, 1 where a non-finite loss or gradient norm skipped that
        optimizer step and the later ones of this update. With fused optimizers (CPU, CUDA) and ``sync_timings`` off it
        reads no value on the host (no device synchronisation), so a GPU never waits for the CPU inside it;
        ``tests/test_model.py`` runs it on the meta device to check."""
        if not self.optimizers:
            self.init_optimizers()
        if self.updates % self.cfg.slow_target_update == 0:
            self.ac.update_target()
        t0 = time.perf_counter()
        skip = torch.zeros((), device=self.device)
        self.train()
        with self.autocast():
            model_loss, post, metrics = self.wm.loss(data)
        metrics["model_grad_norm"] = self._step("model", model_loss, self.wm.parameters(), skip)
        if self.sync_timings:
            synchronize(self.device)
        middle = time.perf_counter()
        start = post.detach().map(lambda x: x.flatten(0, 1).float())
        is_terminal = data["is_terminal"].flatten(0, 1)
        with frozen(self.wm), self.autocast():
            actor_loss, critic_loss, ac_metrics = self.ac.loss(self.wm, start, is_terminal)
        metrics.update(ac_metrics)
        metrics["actor_grad_norm"] = self._step("actor", actor_loss, self.ac.actor.parameters(), skip)
        metrics["critic_grad_norm"] = self._step("critic", critic_loss, self.ac.critic.parameters(), skip)
        metrics["skipped"] = skip
        if self.sync_timings:
            synchronize(self.device)
        self.last_timings = {"model_s": middle - t0, "behavior_s": time.perf_counter() - middle}
        return {k: (v.detach() if torch.is_tensor(v) else torch.tensor(v, device=self.device)).float().reshape(())
                for k, v in metrics.items()}

    def train_step(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """One update of world model, actor and critic on a replay batch ``[B, T]`` (``device_update``); returns
        its metrics as floats, read from the device in one transfer.

        A non-finite loss or gradient norm raises ``FloatingPointError``. Its optimizer step and the later ones of
        the update were skipped, so every parameter and optimizer state is as before the failing step."""
        metrics = self.device_update(self.to_torch(batch))
        values = dict(zip(metrics, torch.stack(list(metrics.values())).tolist()))  # the update's one host sync
        if values.pop("skipped"):
            name = next((k for part in ("model", "actor", "critic") for k in (f"{part}_loss", f"{part}_grad_norm")
                         if not math.isfinite(values[k])), "a loss")
            raise FloatingPointError(f"{name.replace('_', ' ')} is not finite ({values.get(name)}), so this update's "
                                     "optimizer steps from there on were skipped; lower the learning rate or use "
                                     "--set precision=float32")
        self.updates += 1
        return values

    # ---- (de)serialisation of the learnable state -----------------------------------------
    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}

    def optimizer_state(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_optimizer_state(self, state: Mapping[str, Any]) -> None:
        if not self.optimizers:
            self.init_optimizers()
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])
            for group in opt.param_groups:  # a saved state carries its run's implementation flag; use this device's
                group["fused"] = self._fused_adam() or None
                # States saved by AdamW (before issue #29) carry its lr-scaled decay; the decay is ``_step``'s now.
                group["weight_decay"], group["decoupled_weight_decay"] = 0.0, False
                for p in group["params"]:  # fused steps keep their step counts next to the parameters
                    step = opt.state.get(p, {}).get("step")
                    if torch.is_tensor(step):
                        opt.state[p]["step"] = step.to(p.device, torch.float32)

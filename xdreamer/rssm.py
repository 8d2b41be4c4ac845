"""Recurrent state-space model with 32x32 categorical latents (DreamerV2, Hafner et al. 2021, §2).

Latent state per step: ``deter`` h_t ``[B, deter]`` (layer-normed GRU), ``stoch`` z_t
``[B, stoch, classes]`` one-hot (straight-through gradients), and the ``logits`` it was
drawn from. ``feat = concat(h_t, flatten(z_t))``.

Time alignment (drawn once, here; replay and training follow it)::

    replay row t:   image o_t   action a_{t-1}   reward r_t   is_first_t
                                   |
    prior   p(z_t | h_t),  h_t = GRU(h_{t-1}, z_{t-1}, a_{t-1})
    post    q(z_t | h_t, o_t)

So ``observe(embed, action, is_first)`` consumes ``action[:, t]`` as the action that *led to*
``o_t``; on ``is_first`` the previous state and action are zeroed (a new episode).
This module holds the only implementation of ``observe`` / ``imagine``; training,
evaluation and the analysis layer all call it.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch
from torch import nn

from .nets import (ELU, LayerNormGRUCell, LoopWeight, autocast_dtype, clone_outputs, linear_onehot, lookup_columns,
                   sample_categorical, straight_through_onehot)


class State(NamedTuple):
    """RSSM latent state; leading dims are ``[B]`` for one step or ``[B, T]`` for sequences."""

    deter: torch.Tensor  # [..., deter]
    stoch: torch.Tensor  # [..., stoch, classes] one-hot (straight-through)
    logits: torch.Tensor  # [..., stoch, classes]

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "State":
        return State(*(fn(x) for x in self))

    def detach(self) -> "State":
        return self.map(torch.Tensor.detach)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, int) and not isinstance(index, bool):
            return tuple.__getitem__(self, index)
        return self.map(lambda x: x[index])


def stack_states(states: list[State], dim: int = 1) -> State:
    return State(*(torch.stack(parts, dim) for parts in zip(*states)))


# ``observe(loop_weights=True)`` applies from this many entries in the GRU's gate weight on. Measured in alternating
# updates on a 2-core AVX2 EPYC (docs/experiments/loop_weights.py): paper size (1800 x 1200 = 2.16 M) world model
# 4.77 -> 4.65 s and 5.27 -> 5.15 s; the small preset (600 x 400 = 0.24 M) 0.538 -> 0.540 s, toy (0.1 M)
# 0.164 -> 0.166 s and debug 0.059 -> 0.062 s, where a step's weights are too small for the gathered gradient to
# pay for the extra Python calls per step.
LOOP_WEIGHTS_MIN_GRU = 1_000_000

Policy = Callable[[torch.Tensor], torch.Tensor]  # feat [B, F] -> action [B, A]
Intervention = Callable[[int, State], State]  # (step index 1..H, prior state) -> state


class RSSM(nn.Module):
    # The latent's description for the analysis layer (issue #29): "categorical" (stoch x classes one-hots, logits
    # per class) here; DreamerV1's ``GaussianRSSM`` is "gaussian" (stoch [.., S, 1], logits = (mean, std) [.., S, 2]).
    latent_kind = "categorical"

    def __init__(self, embed_dim: int, action_dim: int, deter: int = 600, hidden: int = 600,
                 stoch: int = 32, classes: int = 32, unimix: float = 0.0) -> None:
        super().__init__()
        self.deter_size, self.stoch_size, self.classes = deter, stoch, classes
        # DreamerV3 (Hafner et al. 2023, "unimix"): mix 1% uniform into every categorical so that
        # probabilities never reach 0 or 1; 0.0 is DreamerV2.
        self.unimix = unimix
        self.action_dim = action_dim
        self.img_in = nn.Sequential(nn.Linear(stoch * classes + action_dim, hidden), ELU())
        self.gru = LayerNormGRUCell(hidden, deter)
        self.img_out = nn.Sequential(nn.Linear(deter, hidden), ELU(), nn.Linear(hidden, stoch * classes))
        self.obs_out = nn.Sequential(nn.Linear(deter + embed_dim, hidden), ELU(),
                                     nn.Linear(hidden, stoch * classes))
        self._core_compiled = False

    # ---- state helpers --------------------------------------------------------------------
    @property
    def feat_dim(self) -> int:
        return self.deter_size + self.stoch_size * self.classes

    def initial(self, batch: int, device: torch.device | str = "cpu") -> State:
        zeros = torch.zeros(batch, self.stoch_size, self.classes, device=device)
        return State(torch.zeros(batch, self.deter_size, device=device), zeros, zeros.clone())

    @staticmethod
    def get_feat(state: State) -> torch.Tensor:
        """``[..., deter + stoch * classes]``."""
        return torch.cat([state.deter, state.stoch.flatten(-2)], -1)

    def relaxed_stoch(self, logits: torch.Tensor) -> torch.Tensor:
        """A smooth stand-in for the sampled latent, for gradients through the posterior (the analysis layer):
        the class probabilities ``[..., stoch, classes]``."""
        return logits.softmax(-1)

    def mode_stoch(self, logits: torch.Tensor) -> torch.Tensor:
        """The most likely latent: the one-hot of each variable's most likely class ``[..., stoch, classes]``."""
        return nn.functional.one_hot(logits.argmax(-1), self.classes).to(logits.dtype)

    def _stoch_from_logits(self, flat_logits: torch.Tensor, sample: bool) -> tuple[torch.Tensor, torch.Tensor]:
        # Distributions in float32 also under bf16 autocast: sampling, KL and entropies need the precision.
        logits = flat_logits.float().reshape(*flat_logits.shape[:-1], self.stoch_size, self.classes)
        probs = logits.softmax(-1)
        if self.unimix > 0:
            probs = (1 - self.unimix) * probs + self.unimix / self.classes
            logits = probs.log()  # the mixed distribution is the one the KL and entropies see
        if sample:
            index = sample_categorical(probs)
        else:
            index = probs.argmax(-1)
        return straight_through_onehot(probs, index), logits

    # ---- one step -----------------------------------------------------------------------
    def img_step(self, prev: State, prev_action: torch.Tensor, sample: bool = True, lookup: bool = False) -> State:
        """Prior step: ``h_t = GRU(h_{t-1}, [z_{t-1}, a_{t-1}])``, ``z_t ~ p(z_t | h_t)``.

        ``lookup``: ``prev.stoch`` is one-hot (a sampled state): where it needs no gradient and is large enough,
        its share of the first layer is a lookup (``nets.linear_onehot``; the same numbers up to float rounding)."""
        columns = lookup_columns(prev.stoch) if lookup else None
        deter, flat_logits = self._prior_core(prev.stoch.flatten(-2), prev_action, prev.deter, columns)
        stoch, logits = self._stoch_from_logits(flat_logits, sample)
        return State(deter, stoch, logits)

    def _prior_core(self, stoch: torch.Tensor, action: torch.Tensor, deter: torch.Tensor,
                    columns: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The deterministic part of a prior step (no sampling): ``(h_t, prior logits)``; with ``columns``
        (``nets.lookup_columns`` of the one-hot ``stoch``) its share of ``img_in`` is a lookup.
        ``compile_steps`` replaces it with a compiled version; sampling stays eager, so both paths
        draw the same random numbers."""
        if columns is None:
            hidden = self.img_in(torch.cat([stoch, action], -1))
        else:
            hidden = self.img_in[1](linear_onehot(self.img_in[0], action, stoch, columns, onehot_first=True))
        deter = self.gru(hidden, deter)
        return deter, self.img_out(deter)

    def _post_core(self, deter: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        """Posterior logits from ``h_t`` and the image embedding (no sampling)."""
        return self.obs_out(torch.cat([deter, embed], -1))

    def compile_steps(self, mode: str = "default", clone: bool = False) -> None:
        """``torch.compile`` the deterministic step functions (prior, posterior, observe loop) in place (fixed
        shapes). ``clone``: return copies of their outputs (``nets.clone_outputs``; needed under CUDA graphs)."""
        wrap = clone_outputs if clone else (lambda fn: fn)
        self._prior_core = wrap(torch.compile(self._prior_core, mode=mode, dynamic=False))
        self._post_core = wrap(torch.compile(self._post_core, mode=mode, dynamic=False))
        self._observe_core = wrap(torch.compile(self._observe_core, mode=mode, dynamic=False))
        self._core_compiled = True  # observe's loop_weights path stays eager: it keeps the compiled core

    def obs_step(self, prev: State, prev_action: torch.Tensor, embed: torch.Tensor,
                 is_first: torch.Tensor, sample: bool = True) -> tuple[State, State]:
        """Posterior step. ``is_first`` ``[B]`` zeroes the previous state and action."""
        keep = (1.0 - is_first.to(prev.deter.dtype)).unsqueeze(-1)
        prev = State(prev.deter * keep, prev.stoch * keep.unsqueeze(-1), prev.logits * keep.unsqueeze(-1))
        prior = self.img_step(prev, prev_action * keep, sample)
        post_stoch, post_logits = self._stoch_from_logits(self._post_core(prior.deter, embed), sample)
        return State(prior.deter, post_stoch, post_logits), prior

    # ---- sequences ------------------------------------------------------------------------
    def observe(self, embed: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor,
                state: State | None = None, sample: bool = True, loop_weights: bool = False
                ) -> tuple[State, State]:
        """Posterior and prior over a sequence.

        embed ``[B, T, E]``, action ``[B, T, A]`` (``action[:, t]`` = a_{t-1}), is_first ``[B, T]``.
        Returns ``(post, prior)`` with leading dims ``[B, T]``.

        ``loop_weights`` (the training loss; eager only): the four weights the loop uses at every step compute
        their gradients once over all steps (:class:`~xdreamer.nets.LoopWeight`), for a backward that runs in
        one call. Same numbers up to float rounding. Only for large models (``LOOP_WEIGHTS_MIN_GRU``).
        """
        B, T = embed.shape[:2]
        assert action.shape[:2] == (B, T) and is_first.shape == (B, T), (embed.shape, action.shape, is_first.shape)
        if state is None:
            state = self.initial(B, embed.device)
        # The same computation as a loop of ``obs_step`` (tests/test_model.py::test_observe_equals_step_loop),
        # rearranged so that everything that does not feed the recurrence runs once over all B x T rows
        # instead of T times over B rows (at paper size B = 16: small, slow matmuls): the action's and the
        # embedding's shares of the first layers (linear maps split by input columns), and the prior's
        # logits, which nothing inside the loop reads. Only the posterior sample feeds the next step.
        keep = 1.0 - is_first.to(embed.dtype)  # [B, T]
        stoch_dim = self.stoch_size * self.classes
        in_linear, post_linear = self.img_in[0], self.obs_out[0]
        w_in_stoch = in_linear.weight[:, :stoch_dim]
        action_part = nn.functional.linear(action * keep.unsqueeze(-1), in_linear.weight[:, stoch_dim:],
                                           in_linear.bias)  # [B, T, hidden]
        w_post_deter = post_linear.weight[:, :self.deter_size]
        embed_part = nn.functional.linear(embed, post_linear.weight[:, self.deter_size:], post_linear.bias)
        low = autocast_dtype(embed.device)
        if low is not None:
            # Cast the weight slices once, not once per step, and keep the precomputed shares in float32 so
            # that the two partial products are summed at full precision, as inside the one matmul they split.
            w_in_stoch, w_post_deter = w_in_stoch.to(low), w_post_deter.to(low)
            action_part, embed_part = action_part.float(), embed_part.float()
        deter, stoch = state.deter, state.stoch.flatten(-2)
        deters, posts, post_logits = [], [], []
        if (loop_weights and torch.is_grad_enabled() and not self._core_compiled
                and self.gru.linear.weight.numel() >= LOOP_WEIGHTS_MIN_GRU):
            weights = [w_in_stoch, self.gru.linear.weight, w_post_deter, self.obs_out[2].weight]
            core = functools.partial(self._observe_core_loop,
                                     *(LoopWeight(w.to(w_in_stoch.dtype)) for w in weights))  # autocast: cast once
        else:
            core = functools.partial(self._observe_core, w_in_stoch=w_in_stoch, w_post_deter=w_post_deter)
        # unbind: one backward node for all steps' slices (indexing ``[:, t]`` adds a zero-filled [B, T, .]
        # gradient per step)
        action_parts, embed_parts, keeps = action_part.unbind(1), embed_part.unbind(1), keep.unbind(1)
        for t in range(T):
            k = keeps[t].unsqueeze(-1)
            deter, logits = core(stoch * k, deter * k, action_parts[t], embed_parts[t])
            post_stoch, logits = self._stoch_from_logits(logits, sample)
            stoch = post_stoch.flatten(-2)
            deters.append(deter)
            posts.append(post_stoch)
            post_logits.append(logits)
        deter = torch.stack(deters, 1)
        prior_stoch, prior_logits = self._stoch_from_logits(self.img_out(deter), sample)
        post = State(deter, torch.stack(posts, 1), torch.stack(post_logits, 1))
        return post, State(deter, prior_stoch, prior_logits)

    def _observe_core_loop(self, in_stoch: LoopWeight, gru: LoopWeight, post_deter: LoopWeight, post_out: LoopWeight,
                           stoch: torch.Tensor, deter: torch.Tensor, action_part: torch.Tensor,
                           embed_part: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``_observe_core`` with its four weights as :class:`LoopWeight` s (``observe(loop_weights=True)``)."""
        hidden = self.img_in[1](in_stoch(stoch) + action_part)
        deter = self.gru(hidden, deter, linear=gru)
        hidden = self.obs_out[1](post_deter(deter) + embed_part)
        return deter, post_out(hidden) + self.obs_out[2].bias

    def _observe_core(self, stoch: torch.Tensor, deter: torch.Tensor, action_part: torch.Tensor,
                      embed_part: torch.Tensor, w_in_stoch: torch.Tensor, w_post_deter: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of ``observe``'s recurrence (no sampling): ``(h_t, posterior logits)``, given the
        precomputed action and embedding shares of the first layers."""
        hidden = self.img_in[1](nn.functional.linear(stoch, w_in_stoch) + action_part)
        deter = self.gru(hidden, deter)
        hidden = self.obs_out[1](nn.functional.linear(deter, w_post_deter) + embed_part)
        return deter, self.obs_out[2](hidden)

    def imagine(self, start: State, policy: Policy | None = None, horizon: int = 15,
                actions: torch.Tensor | None = None, intervene: Intervention | None = None,
                sample: bool = True, lookup: bool = False) -> tuple[State, torch.Tensor]:
        """Roll the prior forward from ``start`` ``[B]`` for ``horizon`` steps.

        Actions come from ``policy(feat.detach())`` or, where ``actions`` ``[B, H, A]`` is given,
        from it (a fixed sequence); a policy may also follow after a given prefix (``actions``
        shorter than ``horizon``). ``intervene(i, state)`` may replace the imagined state at
        step ``i`` (1..H) before it is used further: latent interventions for the analysis layer.

        Returns ``(states, actions)``: states ``[B, H+1]`` with ``states[:, 0] = start`` and
        ``actions`` ``[B, H+1, A]`` where ``actions[:, i]`` led to ``states[:, i]``
        (``actions[:, 0]`` is zero), matching dreamerv2 ``WorldModel.imagine``.

        ``lookup`` (``img_step``): ``start``'s latents, like every imagined one, are one-hot samples (a posterior
        or prior state, not the all-zero initial state). Off with ``intervene``, which may set other values.
        """
        if actions is None and policy is None:
            raise ValueError("imagine needs a policy or an action sequence")
        fixed = 0 if actions is None else actions.shape[1]
        lookup = lookup and intervene is None
        if fixed < horizon and policy is None:
            raise ValueError(f"{fixed} actions given for horizon {horizon} and no policy to continue")
        B = start.deter.shape[0]
        states = [start]
        acts = [torch.zeros(B, self.action_dim, device=start.deter.device, dtype=start.deter.dtype)]
        state = start
        for i in range(horizon):
            if i < fixed:
                action = actions[:, i]
            else:
                action = policy(self.get_feat(state).detach())
            state = self.img_step(state, action, sample, lookup)
            if intervene is not None:
                state = intervene(i + 1, state)
            states.append(state)
            acts.append(action)
        return stack_states(states), torch.stack(acts, 1)

    # ---- KL ----------------------------------------------------------------------------------
    @staticmethod
    def kl(lhs_logits: torch.Tensor, rhs_logits: torch.Tensor) -> torch.Tensor:
        """KL(lhs || rhs) summed over the categorical variables: ``[...]``."""
        lp, lq = lhs_logits.float().log_softmax(-1), rhs_logits.float().log_softmax(-1)
        return (lp.exp() * (lp - lq)).sum((-1, -2))

    def kl_loss(self, post: State, prior: State, balance: float, free: float,
                free_avg: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """KL balancing (DreamerV2 §2, Algorithm 2): ``alpha`` trains the prior toward the
        posterior, ``1 - alpha`` regularises the posterior toward the prior.

        Returns ``(loss, kl_value)`` where ``kl_value`` ``[B, T]`` is KL(post || prior).
        """
        value_post = self.kl(post.logits, prior.logits.detach())  # gradient -> posterior only
        value_prior = self.kl(post.logits.detach(), prior.logits)  # gradient -> prior only
        if free_avg:
            loss_post = value_post.mean().clamp(min=free)
            loss_prior = value_prior.mean().clamp(min=free)
        else:
            loss_post = value_post.clamp(min=free).mean()
            loss_prior = value_prior.clamp(min=free).mean()
        loss = balance * loss_prior + (1 - balance) * loss_post
        return loss, value_post.detach()  # KL(post || prior): the same numbers as value_prior

"""Actor-critic learned in imagination (DreamerV2 §2.2, dreamerv2 ``agent.py: ActorCritic``).

Imagined trajectories start from every posterior state of the replay batch and roll the
prior forward ``horizon`` steps under the actor. Timing, batch-major (``[N, H+1]``)::

    Actions:     0   [a1]  [a2]   a3          actions[:, i] led to states[:, i]
                    ^  |  ^  |  ^  |
                   /   v /   v /   v
    States:     [z0]->[z1]-> z2 -> z3
    Targets:     t0   [t1]  [t2]              lambda-returns, bootstrap from v(z_H)
    Baselines:  [v0]  [v1]   v2    v3
    Weights:    [ 1]  [w1]   w2    w3         cumulative predicted discounts
    Actor loss:       l1    l2  (states 0..H-2)   Critic loss on states 0..H-1
"""

from __future__ import annotations

import copy
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import (Categorical, Independent, Normal, OneHotCategorical, TanhTransform,
                                 TransformedDistribution)

from .config import Config
from .nets import MLP, sample_categorical, straight_through_onehot
from .rssm import State


def lambda_return(reward: torch.Tensor, value: torch.Tensor, discount: torch.Tensor,
                  bootstrap: torch.Tensor, lambda_: float) -> torch.Tensor:
    """TD(lambda) returns along dim 1 (dreamerv2 ``common.lambda_return``).

    reward, value, discount ``[N, T]``, bootstrap ``[N]``. Returns ``[N, T]`` with
    ``R_t = r_t + d_t * ((1 - lambda) * v_{t+1} + lambda * R_{t+1})`` and ``R_T = bootstrap``.
    """
    assert reward.shape == value.shape == discount.shape, (reward.shape, value.shape, discount.shape)
    next_values = torch.cat([value[:, 1:], bootstrap[:, None]], 1)
    inputs = reward + discount * next_values * (1 - lambda_)
    returns = []
    last = bootstrap
    for t in reversed(range(reward.shape[1])):
        last = inputs[:, t] + discount[:, t] * lambda_ * last
        returns.append(last)
    return torch.stack(returns[::-1], 1)


class OneHot(OneHotCategorical):
    """``OneHotCategorical(logits=...)`` with no argument checks, those of its inner ``Categorical`` included: torch
    builds that one without passing ``validate_args``, so by default it checks the logits, a host sync (a GPU stall)
    at every imagination step. ``tests/test_model.py`` runs updates on the meta device, where a sync fails."""

    def __init__(self, logits: torch.Tensor) -> None:
        self._categorical = Categorical(logits=logits, validate_args=False)
        super(OneHotCategorical, self).__init__(self._categorical.batch_shape, self._categorical.param_shape[-1:],
                                                validate_args=False)


class Actor(nn.Module):
    """feat -> action distribution: one-hot categorical (discrete) or tanh-Normal (continuous).

    dreamerv2 uses a truncated normal for continuous control; torch has no reparameterised
    truncated normal, so this uses DreamerV1's tanh-transformed Normal with the same
    ``min_std`` -- an approximation, documented in docs/faithfulness.md.
    """

    def __init__(self, feat_dim: int, action_dim: int, discrete: bool, layers: int, units: int,
                 min_std: float, latents: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.discrete, self.action_dim, self.min_std = discrete, action_dim, min_std
        self.net = MLP(feat_dim, action_dim if discrete else 2 * action_dim, layers, units, onehot_tail=latents)

    def forward(self, feat: torch.Tensor) -> torch.distributions.Distribution:
        return self.distribution(self.net(feat).float())  # distributions in float32 also under bf16 autocast

    def distribution(self, out: torch.Tensor) -> torch.distributions.Distribution:
        """The action distribution from the network's output ``self.net(feat)``."""
        if self.discrete:
            return OneHot(out)
        mean, std = out.chunk(2, -1)
        std = 2 * torch.sigmoid(std / 2) + self.min_std  # dreamerv2 trunc_normal std parameterisation
        base = Normal(mean, std, validate_args=False)
        return Independent(TransformedDistribution(base, TanhTransform(cache_size=1), validate_args=False), 1,
                           validate_args=False)

    def sample(self, feat: torch.Tensor) -> torch.Tensor:
        """A differentiable sample: straight-through one-hot or reparameterised continuous."""
        return self.sample_from(self(feat))

    def explore(self, feat: torch.Tensor) -> torch.Tensor:
        """The action taken while collecting experience: a sample (members may add exploration noise)."""
        return self.sample(feat)

    def sample_from(self, dist: torch.distributions.Distribution) -> torch.Tensor:
        if self.discrete:
            return straight_through_onehot(dist.probs, sample_categorical(dist.probs))
        return dist.rsample()

    def mode(self, feat: torch.Tensor) -> torch.Tensor:
        out = self.net(feat)
        if self.discrete:
            return F.one_hot(out.argmax(-1), self.action_dim).float()
        return torch.tanh(out.chunk(2, -1)[0])

    def entropy(self, dist: torch.distributions.Distribution) -> torch.Tensor:
        if self.discrete:
            return dist.entropy()
        return -dist.log_prob(dist.rsample())  # single-sample estimate (no closed form after tanh)

    def log_prob(self, dist: torch.distributions.Distribution, action: torch.Tensor) -> torch.Tensor:
        if self.discrete:  # straight-through samples are one-hot only up to rounding
            return (action * dist.logits).sum(-1)
        return dist.log_prob(action.clamp(-1 + 1e-6, 1 - 1e-6))


class ActorCritic(nn.Module):
    def __init__(self, cfg: Config, feat_dim: int, action_dim: int, discrete: bool) -> None:
        super().__init__()
        self.cfg = cfg
        latents = (cfg.stoch, cfg.classes)  # the feature ends in the sampled latents (RSSM.get_feat)
        self.actor = Actor(feat_dim, action_dim, discrete, cfg.mlp_layers, cfg.mlp_units, cfg.actor_min_std,
                           latents)
        self.critic = MLP(feat_dim, 1, cfg.mlp_layers, cfg.mlp_units, onehot_tail=latents)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        grad = cfg.actor_grad
        self.actor_grad = ("reinforce" if discrete else "dynamics") if grad == "auto" else grad

    def value(self, feat: torch.Tensor, target: bool = False, columns: torch.Tensor | None = None) -> torch.Tensor:
        """The critic's (or slow critic's) value ``[...]``; ``columns``: ``WorldModel.latent_columns(feat)``."""
        return (self.target_critic if target else self.critic)(feat, columns).squeeze(-1)

    def update_target(self) -> None:
        mix = self.cfg.slow_target_fraction
        with torch.no_grad():
            for d, s in zip(self.target_critic.parameters(), self.critic.parameters()):
                d.mul_(1 - mix).add_(mix * s)

    def imagine(self, world_model, start: State, is_terminal: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Imagine ``horizon`` steps from ``start`` ``[N]``; returns the trajectory ``[N, H+1]``.

        ``actor_out`` ``[N, H, A]`` holds the actor network's outputs on states 0..H-1 as the actions were drawn,
        with gradients to the actor's parameters even under ``no_grad`` (REINFORCE). The actor loss reuses them
        instead of running the actor again over states 0..H-2 (at paper size 11,200 rows, ~25 GFLOP of ~760 per
        update)."""
        outs: list[torch.Tensor] = []

        def policy(feat: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():  # feat arrives detached: the graph reaches only the actor
                out = self.actor.net(feat, self.actor.net.lookup_columns(feat)).float()
            outs.append(out)
            return self.actor.sample_from(self.actor.distribution(out))

        # Every state here is sampled, so the first layers that read the latents look them up (``nets.MLP``,
        # ``RSSM.img_step``) where no gradient flows into the states (REINFORCE; with dynamics backprop they
        # need one and run as matmuls).
        states, actions = world_model.imagine(start, policy, self.cfg.horizon, lookup=True)
        feat = world_model.feat(states)
        columns = world_model.latent_columns(feat)
        discount = world_model.discount(feat, columns)
        if is_terminal is not None:
            # The first state is a real posterior state: use the true discount (dreamerv2 ``imagine``).
            discount = torch.cat([(self.cfg.discount * (1 - is_terminal.float()))[:, None], discount[:, 1:]], 1)
        weight = torch.cumprod(torch.cat([torch.ones_like(discount[:, :1]), discount[:, :-1]], 1), 1)
        with torch.enable_grad():  # the stack too, or under no_grad it would cut the graph
            actor_out = torch.stack(outs, 1)
        return {"feat": feat, "action": actions, "reward": world_model.reward(feat, columns), "discount": discount,
                "weight": weight, "actor_out": actor_out, "columns": columns}

    def target(self, seq: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lambda-returns [N, H], slow critic's values [N, H+1])``; the values are also the actor's
        baseline (dreamerv2 ``slow_baseline: True``), so they are computed once."""
        value = self.value(seq["feat"], target=True, columns=seq.get("columns"))
        return lambda_return(seq["reward"][:, :-1], value[:, :-1], seq["discount"][:, :-1],
                             value[:, -1], self.cfg.discount_lambda), value

    def actor_loss(self, seq: dict[str, torch.Tensor], target: torch.Tensor, slow_value: torch.Tensor
                   ) -> tuple[torch.Tensor, dict]:
        dist = self.actor.distribution(seq["actor_out"][:, :-1])  # the outputs that drew the actions (``imagine``)
        if self.actor_grad == "dynamics":
            objective = target[:, 1:]
        else:
            baseline = slow_value[:, :-2]  # slow_baseline True: the slow critic on states 0..H-2
            advantage = (target[:, 1:] - baseline).detach()
            objective = self.actor.log_prob(dist, seq["action"][:, 1:-1].detach()) * advantage
            if self.actor_grad == "both":
                mix = self.cfg.actor_grad_mix
                objective = mix * target[:, 1:] + (1 - mix) * objective
        entropy = self.actor.entropy(dist)
        objective = objective + self.cfg.actor_ent * entropy
        weight = seq["weight"].detach()
        loss = -(weight[:, :-2] * objective).mean()
        return loss, {"actor_entropy": entropy.mean().detach()}

    def critic_loss(self, seq: dict[str, torch.Tensor], target: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, critic's values on states 0..H-1)``."""
        columns = seq.get("columns")
        value = self.value(seq["feat"][:, :-1].detach(), columns=None if columns is None else columns[:, :-1])
        # dreamerv2 critic ``mse`` dist, Normal(v, 1): -log p = 0.5 (v - target)^2, weighted by cumulative discounts.
        return 0.5 * (seq["weight"][:, :-1].detach() * (value - target.detach()).pow(2)).mean(), value

    def loss(self, world_model, start: State, is_terminal: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Returns ``(actor_loss, critic_loss, metrics)``. World-model parameters must be frozen
        by the caller (gradients flow through the dynamics to the actor, not into the model)."""
        if self.actor_grad == "reinforce":
            with torch.no_grad():  # no gradient path through imagination is used
                seq = self.imagine(world_model, start, is_terminal)
                target, slow_value = self.target(seq)
        else:
            seq = self.imagine(world_model, start, is_terminal)
            target, slow_value = self.target(seq)
        actor_loss, metrics = self.actor_loss(seq, target, slow_value)
        critic_loss, value = self.critic_loss(seq, target)
        metrics.update(actor_loss=actor_loss.detach(), critic_loss=critic_loss.detach(),
                       imag_reward=seq["reward"].mean().detach(), imag_return=target[:, 0].mean().detach(),
                       imag_value=value[:, 0].mean().detach())
        return actor_loss, critic_loss, metrics


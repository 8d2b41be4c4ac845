"""C: the linear controller of World Models (Ha & Schmidhuber 2018, §2.3): a_t = W [z_t, h_t] + b.

Continuous actions: a = tanh(W [z, h] + b) (hardmaru/WorldModelsExperiments ``carracing/model.py`` ``get_action``;
it then maps gas to (a + 1) / 2 and clips brake to [0, 1], where our env layer maps [-1, 1] linearly onto each
action's bounds). Discrete actions (the toy games): the action with the largest of W [z, h] + b.

For PPO (``ppo.py``) the same linear map is the policy's mean (continuous: a Gaussian over the pre-tanh action
with a state-independent log std, as Schulman et al. 2017's MuJoCo policies) or its logits (discrete: a
categorical), and a separate ``Critic`` (two tanh layers of 64, Schulman et al. 2017 §6.1) estimates the value.
CMA-ES (``cmaes.py``) searches the flat vector of W and b (``get_flat`` / ``set_flat``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Normal


class Controller(nn.Module):
    """Linear C over features ``[B, z + h]``; ``stochastic`` adds PPO's log std (continuous actions only)."""

    def __init__(self, feat_dim: int, num_actions: int, discrete: bool, stochastic: bool = False) -> None:
        super().__init__()
        self.discrete = discrete
        self.linear = nn.Linear(feat_dim, num_actions)
        nn.init.zeros_(self.linear.weight)  # CMA-ES and PPO both start from the zero controller
        nn.init.zeros_(self.linear.bias)
        self.log_std = nn.Parameter(torch.zeros(num_actions)) if stochastic and not discrete else None

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        """The pre-activation W [z, h] + b ``[B, A]``: logits (discrete) or the pre-tanh mean (continuous)."""
        return self.linear(feat)

    def act(self, feat: torch.Tensor) -> torch.Tensor:
        """The deterministic action: index ``[B]`` (discrete) or tanh of the linear map ``[B, A]``."""
        out = self.linear(feat)
        return out.argmax(-1) if self.discrete else torch.tanh(out)

    def dist(self, feat: torch.Tensor) -> Distribution:
        """PPO's policy: Categorical(logits) or Normal(pre-tanh mean, exp(log_std)) per action dimension."""
        out = self.linear(feat)
        if self.discrete:
            return Categorical(logits=out)
        assert self.log_std is not None, "a continuous controller needs stochastic=True for PPO"
        return Normal(out, self.log_std.exp().expand_as(out))

    def get_flat(self) -> torch.Tensor:
        """W and b as one vector (CMA-ES's search space: (z + h) x A + A numbers)."""
        return torch.cat([self.linear.weight.detach().flatten(), self.linear.bias.detach()])

    def set_flat(self, flat) -> None:
        flat = torch.as_tensor(flat, dtype=torch.float32)
        n = self.linear.weight.numel()
        assert flat.shape == (n + self.linear.bias.numel(),), flat.shape
        with torch.no_grad():
            self.linear.weight.copy_(flat[:n].view_as(self.linear.weight))
            self.linear.bias.copy_(flat[n:])


def env_action(discrete: bool, raw: torch.Tensor) -> torch.Tensor:
    """The env action for a sampled PPO action: the index, or tanh of the pre-tanh sample."""
    return raw if discrete else torch.tanh(raw)


class Critic(nn.Module):
    """PPO's value function on the features: two tanh layers of 64 (Schulman et al. 2017 §6.1), a linear output."""

    def __init__(self, feat_dim: int, units: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(feat_dim, units), nn.Tanh(), nn.Linear(units, units), nn.Tanh(),
                                 nn.Linear(units, 1))

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.net(feat)[..., 0]


def batched_act(flat: torch.Tensor, feat: torch.Tensor, num_actions: int, discrete: bool) -> torch.Tensor:
    """``Controller.act`` for N controllers at once: row i of ``flat`` ``[N, P]`` (``get_flat``'s layout) acts on
    row i of ``feat`` ``[N, F]``. Returns indices ``[N]`` or actions ``[N, A]``: CMA-ES's candidates in lockstep."""
    n, f = feat.shape
    assert flat.shape == (n, num_actions * f + num_actions), (flat.shape, feat.shape)
    weight = flat[:, :num_actions * f].view(n, num_actions, f)
    out = torch.bmm(weight, feat[:, :, None])[..., 0] + flat[:, num_actions * f:]
    return out.argmax(-1) if discrete else torch.tanh(out)

"""Dreams: rollouts inside M at temperature τ (paper §4.4-§5: "training inside of the dream").

``dream`` is the what-if rollout the analysis layer asks for: from a latent z and memory h, take a given first
action, then let C act on what M dreams. ``DreamEnv`` is the same loop as a batched env for training C in the dream:
it starts from the z of real first frames (hardmaru's DoomRNN dream env starts from ``initial_z`` of recorded
episodes), gives M's predicted reward, and ends an episode where M's done probability exceeds 0.5 (our threshold;
the paper's Doom dream ends on M's predicted death) or after ``max_steps``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .agent import WMState, WorldModelsAgent
from .mdnrnn import sample

DONE_THRESHOLD = 0.5


@dataclass
class DreamResult:
    """A dream of ``H`` steps for a batch of B starts (numpy arrays).

    ``z`` ``[B, H+1, z]`` (z_0 is the start), ``h`` ``[B, H+1, rnn]`` (M's memory before each step), ``action``
    ``[B, H]`` or ``[B, H, A]`` (a_0 is the given first action), ``reward`` / ``done_prob`` ``[B, H]`` (M's
    prediction after (z_t, a_t)), ``mixture`` ``[B, H, z, K]`` (the mixture weights z_{t+1} was drawn from, at τ),
    ``alive`` ``[B, H]`` (no predicted end before step t)."""

    z: np.ndarray
    h: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    done_prob: np.ndarray
    mixture: np.ndarray
    alive: np.ndarray
    temperature: float


@torch.no_grad()
def dream(agent: WorldModelsAgent, z: torch.Tensor, state: WMState | None, first_action, temperature: float = 1.0,
          horizon: int = 15, generator: torch.Generator | None = None) -> DreamResult:
    """What-if rollout through M: from ``z`` ``[B, z]`` and ``state`` (None: an empty memory), take
    ``first_action`` (an int, or a float ``[A]``, for every row), then C's deterministic action on [z_t, h_t];
    z_{t+1} is drawn from M at ``temperature`` with ``generator``. Returns a ``DreamResult``."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if horizon < 1:
        raise ValueError(f"horizon must be at least 1, got {horizon}")
    batch = z.shape[0]
    state = state or agent.initial_state(batch)
    first = torch.as_tensor(np.asarray(first_action), device=agent.device)
    if agent.spec.discrete:
        if first.shape != () or not 0 <= int(first) < agent.spec.num_actions:
            raise ValueError(f"first action must be an int in [0, {agent.spec.num_actions}), got {first_action!r}")
        first = first.long().expand(batch)
    else:
        if first.shape != (agent.spec.num_actions,):
            raise ValueError(f"first action must have shape ({agent.spec.num_actions},), got {tuple(first.shape)}")
        first = first.float().clamp(-1, 1).expand(batch, -1)
    zs, hs, actions, rewards, dones, mixtures = [z], [state.lstm[0]], [], [], [], []
    lstm = state.lstm
    for t in range(horizon):
        action = first if t == 0 else agent.controller.act(torch.cat([z, lstm[0]], -1))
        out, lstm = agent.mdn.step(z, agent.action_input(action), lstm)
        z = sample(out, temperature, generator)
        mixture = torch.softmax(out.logpi / temperature, -1)
        for seq, value in ((zs, z), (hs, lstm[0]), (actions, action), (rewards, out.reward),
                           (dones, torch.sigmoid(out.done_logit)), (mixtures, mixture)):
            seq.append(value)
    done_prob = torch.stack(dones, 1)
    ended = (done_prob > DONE_THRESHOLD).float()
    alive = torch.cat([torch.ones(batch, 1, device=agent.device), 1 - ended[:, :-1].cummax(1).values], 1)
    to_np = lambda x: x.cpu().numpy()  # noqa: E731
    return DreamResult(to_np(torch.stack(zs, 1)), to_np(torch.stack(hs, 1)), to_np(torch.stack(actions, 1)),
                       to_np(torch.stack(rewards, 1)), to_np(done_prob), to_np(torch.stack(mixtures, 1)),
                       to_np(alive.bool()), float(temperature))


class DreamEnv:
    """N dreams in lockstep for training C: ``reset`` rows, ``step`` actions; features are [z, h]."""

    def __init__(self, agent: WorldModelsAgent, starts: np.ndarray, temperature: float, max_steps: int,
                 generator: torch.Generator) -> None:
        """``starts`` ``[M, 2, z]``: mean and log-variance of q(z | o_0) of recorded first frames."""
        self.agent, self.temperature, self.max_steps, self.gen = agent, temperature, max_steps, generator
        self.starts = torch.as_tensor(starts, dtype=torch.float32, device=agent.device)

    def _draw(self, n: int) -> torch.Tensor:
        index = torch.randint(len(self.starts), (n,), generator=self.gen, device=self.starts.device)
        mean, logvar = self.starts[index, 0], self.starts[index, 1]
        return mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=self.gen, device=mean.device)

    def reset(self, n: int) -> torch.Tensor:
        """Start n dreams; returns their features ``[n, z + rnn]``."""
        self.z, self.state = self._draw(n), self.agent.initial_state(n)
        self.t = torch.zeros(n, dtype=torch.long, device=self.agent.device)
        return self.agent.feat(self.z, self.state)

    @torch.no_grad()
    def step(self, action: torch.Tensor, auto_reset: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Advance every dream by ``action``; returns (features, reward ``[n]``, done ``[n]`` bool). With
        ``auto_reset`` the rows that ended start again (their returned features are the new start's)."""
        out, lstm = self.agent.mdn.step(self.z, self.agent.action_input(action), self.state.lstm)
        self.z, self.state, self.t = sample(out, self.temperature, self.gen), WMState(lstm), self.t + 1
        done = (torch.sigmoid(out.done_logit) > DONE_THRESHOLD) | (self.t >= self.max_steps)
        if auto_reset and bool(done.any()):
            rows = done.nonzero()[:, 0]
            self.z[rows] = self._draw(len(rows))
            keep = (~done).float()[:, None]
            self.state = WMState((self.state.lstm[0] * keep, self.state.lstm[1] * keep))
            self.t = torch.where(done, torch.zeros_like(self.t), self.t)
        return self.agent.feat(self.z, self.state), out.reward, done

    @torch.no_grad()
    def returns(self, flat: torch.Tensor) -> np.ndarray:
        """Each controller ``flat[i]``'s return over one dream (episodes end at M's done or ``max_steps``) and the
        dream's length: float64 ``[N, 2]``, as ``rollouts.lockstep_returns``."""
        from .controller import batched_act

        n = len(flat)
        feat = self.reset(n)
        totals = torch.zeros(n, device=self.agent.device)
        lengths = torch.zeros(n, device=self.agent.device)
        alive = torch.ones(n, dtype=torch.bool, device=self.agent.device)
        while bool(alive.any()):
            action = batched_act(flat.to(self.agent.device), feat, self.agent.spec.num_actions,
                                 self.agent.spec.discrete)
            feat, reward, done = self.step(action)
            totals += reward * alive
            lengths += alive.float()
            alive &= ~done
        return torch.stack([totals, lengths], 1).double().cpu().numpy()

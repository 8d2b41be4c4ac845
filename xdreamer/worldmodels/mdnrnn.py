"""M: the MDN-RNN of World Models (Ha & Schmidhuber 2018, §2.2 and Appendix A.2).

An LSTM reads (z_t, a_t) and its output h_{t+1} parameterises P(z_{t+1} | a_t, z_t, h_t): for each of the z
dimensions a mixture of ``mixtures`` Gaussians (hardmaru/WorldModelsExperiments ``carracing/rnn/rnn.py``: log mixture
weights, means and log standard deviations per dimension), plus the reward r_{t+1} (a mean, squared error) and the
episode's end (a Bernoulli logit, as ctallec/world-models ``models/mdrnn.py`` and the paper's DoomRNN). The loss is
ctallec's ``(gmm + bce + mse) / (z + 2)``, with the mixture NLL summed over the dimensions.

Time alignment (the replay's, ``xdreamer/replay.py``): step t of an episode holds o_t and the action a_{t-1} that led
to it. M's input at t is (z_t, a_t = action[t+1]); its targets are z_{t+1}, reward[t+1] and is_terminal[t+1].

Temperature τ (rnn.py ``sample_sequence`` / ``get_pi_idx``): mixture logits are divided by τ before the softmax and
the chosen Gaussian's standard deviation is multiplied by sqrt(τ).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)

# An LSTM state (h, c), each [B, H]: h is the paper's "h", what C reads beside z.
LSTMState = tuple[torch.Tensor, torch.Tensor]


@dataclass
class MDNOutput:
    """M's prediction; leading dims ``[B]`` (one step) or ``[B, T]``. ``logpi``, ``mean``, ``logstd``:
    ``[..., z, K]``; ``reward``, ``done_logit``: ``[...]``."""

    logpi: torch.Tensor
    mean: torch.Tensor
    logstd: torch.Tensor
    reward: torch.Tensor
    done_logit: torch.Tensor


class MDNRNN(nn.Module):
    def __init__(self, z: int, action_dim: int, hidden: int = 256, mixtures: int = 5) -> None:
        super().__init__()
        self.z, self.action_dim, self.hidden, self.mixtures = z, action_dim, hidden, mixtures
        self.lstm = nn.LSTM(z + action_dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 3 * z * mixtures + 2)

    def initial(self, batch: int, device: torch.device | str = "cpu") -> LSTMState:
        """The zero LSTM state ``(h, c)``, each ``[batch, hidden]``."""
        zeros = torch.zeros(batch, self.hidden, device=device)
        return zeros, zeros.clone()

    def _heads(self, out: torch.Tensor) -> MDNOutput:
        raw = self.head(out)
        lead, zk = raw.shape[:-1], self.z * self.mixtures
        logits, mean, logstd = (raw[..., i * zk:(i + 1) * zk].reshape(*lead, self.z, self.mixtures) for i in range(3))
        return MDNOutput(F.log_softmax(logits, -1), mean, logstd.clamp(-10.0, 5.0), raw[..., -2], raw[..., -1])

    def forward(self, z: torch.Tensor, action: torch.Tensor,
                state: LSTMState | None = None) -> tuple[MDNOutput, LSTMState]:
        """Sequences z ``[B, T, z]`` and actions ``[B, T, A]`` -> predictions ``[B, T, ...]`` and the last state."""
        assert z.shape[-1] == self.z and action.shape[-1] == self.action_dim, (z.shape, action.shape)
        hc = None if state is None else (state[0][None].contiguous(), state[1][None].contiguous())
        out, (h, c) = self.lstm(torch.cat([z, action], -1), hc)
        return self._heads(out), (h[0], c[0])

    def step(self, z: torch.Tensor, action: torch.Tensor, state: LSTMState) -> tuple[MDNOutput, LSTMState]:
        """One step: z ``[B, z]``, action ``[B, A]``, state -> predictions ``[B, ...]`` and the next state."""
        out, state = self.forward(z[:, None], action[:, None], state)
        return MDNOutput(*(getattr(out, k)[:, 0] for k in ("logpi", "mean", "logstd", "reward", "done_logit"))), state

    def loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """ctallec's ``(gmm + bce + mse) / (z + 2)`` on a batch of windows (``windows``); the mixture NLL is
        also returned per dimension (``mdn/nll``), the number the unconditional baseline is compared with."""
        out, _ = self.forward(batch["z"], batch["action"])
        mask = batch["mask"]
        count = mask.sum().clamp(min=1.0)
        nll = -mixture_log_prob(out, batch["next_z"]).sum(-1)  # [B, T], summed over z
        mse = (out.reward - batch["reward"]).pow(2)
        bce = F.binary_cross_entropy_with_logits(out.done_logit, batch["done"], reduction="none")
        total = ((nll + mse + bce) * mask).sum() / count / (self.z + 2)
        with torch.no_grad():
            metrics = {"mdn/nll": float((nll * mask).sum() / count / self.z),
                       "mdn/reward_mse": float((mse * mask).sum() / count),
                       "mdn/done_bce": float((bce * mask).sum() / count)}
        return total, metrics


def mixture_log_prob(out: MDNOutput, target: torch.Tensor) -> torch.Tensor:
    """log P(target) per dimension ``[..., z]`` under the mixtures of ``out`` (target ``[..., z]``)."""
    x = target[..., None]
    log_normal = -0.5 * ((x - out.mean) * torch.exp(-out.logstd)).pow(2) - out.logstd - LOG_SQRT_2PI
    return torch.logsumexp(out.logpi + log_normal, -1)


def sample(out: MDNOutput, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """z ``[..., z]`` drawn from M's mixtures at temperature τ: component ~ softmax(logits / τ), then
    mean + exp(logstd) * sqrt(τ) * ε (hardmaru rnn.py). One draw of uniforms and one of normals, in that order."""
    probs = torch.softmax(out.logpi / temperature, -1)
    u = torch.rand(probs.shape[:-1], generator=generator, device=probs.device)[..., None]
    index = (probs.cumsum(-1) < u).sum(-1, keepdim=True).clamp(max=probs.shape[-1] - 1)
    mean = out.mean.gather(-1, index)[..., 0]
    std = out.logstd.gather(-1, index)[..., 0].exp()
    eps = torch.randn(mean.shape, generator=generator, device=mean.device)
    return mean + std * math.sqrt(temperature) * eps


# ---- data: the VAE-encoded episodes ("series", hardmaru series.py) -------------------------------------------
def windows(series: Sequence[Mapping[str, np.ndarray]], batch: int, length: int, rng: np.random.Generator,
            device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """``batch`` windows of ``length`` transitions from the encoded episodes (each: ``mean``, ``logvar`` ``[T, z]``,
    ``action`` ``[T, A]``, ``reward``, ``is_terminal`` ``[T]``), as ctallec's 32-step windows at random offsets.
    z is drawn from q(z | o) afresh for every window (rnn.py trains on sampled z). Episodes shorter than the
    window are padded and masked. Returns ``z``, ``action``, ``next_z`` ``[B, L, .]``, ``reward``, ``done``,
    ``mask`` ``[B, L]`` (float32 tensors)."""
    lengths = np.array([len(s["mean"]) - 1 for s in series])
    usable = np.flatnonzero(lengths >= 1)
    if not len(usable):
        raise ValueError("no encoded episode has a transition (episodes of one step only)")
    picks = rng.choice(usable, size=batch, p=lengths[usable] / lengths[usable].sum())
    zdim, adim = series[0]["mean"].shape[1], series[0]["action"].shape[1]
    out = {"z": np.zeros((batch, length, zdim), np.float32), "next_z": np.zeros((batch, length, zdim), np.float32),
           "action": np.zeros((batch, length, adim), np.float32), "reward": np.zeros((batch, length), np.float32),
           "done": np.zeros((batch, length), np.float32), "mask": np.zeros((batch, length), np.float32)}
    for row, index in enumerate(picks):
        episode, steps = series[index], int(lengths[index])
        start = int(rng.integers(0, steps - length + 1)) if steps > length else 0
        take = min(length, steps)
        span = slice(start, start + take + 1)
        z = episode["mean"][span] + np.exp(0.5 * episode["logvar"][span]) * rng.standard_normal(
            (take + 1, zdim)).astype(np.float32)
        out["z"][row, :take], out["next_z"][row, :take] = z[:-1], z[1:]
        out["action"][row, :take] = episode["action"][start + 1:start + take + 1]
        out["reward"][row, :take] = episode["reward"][start + 1:start + take + 1]
        out["done"][row, :take] = episode["is_terminal"][start + 1:start + take + 1]
        out["mask"][row, :take] = 1.0
    return {k: torch.as_tensor(v, device=device) for k, v in out.items()}


def train_mdnrnn(model: MDNRNN, series: Sequence[Mapping[str, np.ndarray]], cfg, rng: np.random.Generator,
                 progress: bool = False) -> list[dict[str, float]]:
    """``cfg.wm_rnn_steps`` Adam updates (``wm_rnn_lr``, gradient norm clipped to ``wm_rnn_clip``) on windows of
    ``wm_rnn_seq`` transitions, ``wm_rnn_batch`` at a time. Returns the metrics of every update."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.wm_rnn_lr)
    device = next(model.parameters()).device
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.wm_rnn_steps, desc="M (MDN-RNN)", unit="upd", dynamic_ncols=True)
    history = []
    model.train()
    try:
        for step in range(cfg.wm_rnn_steps):
            loss, metrics = model.loss(windows(series, cfg.wm_rnn_batch, cfg.wm_rnn_seq, rng, device))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"MDN-RNN loss is not finite ({float(loss)}) at update {step}; lower "
                                         "wm_rnn_lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.wm_rnn_clip)
            opt.step()
            history.append(metrics)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(nll=f"{metrics['mdn/nll']:.3f}")
    finally:
        if bar is not None:
            bar.close()
    model.eval()
    return history


def transitions(series: Sequence[Mapping[str, np.ndarray]], rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    """Every transition of each episode with z drawn once from q(z | o): ``z`` ``[T, z]`` (inputs z_0..z_{T-1}),
    ``action`` ``[T-1, A]`` (a_t) and ``next_z`` ``[T-1, z]``: fixed targets for comparing models."""
    out = []
    for episode in series:
        z = episode["mean"] + np.exp(0.5 * episode["logvar"]) * rng.standard_normal(episode["mean"].shape)
        z = z.astype(np.float32)
        out.append({"z": z[:-1], "action": episode["action"][1:].astype(np.float32), "next_z": z[1:]})
    return out


@torch.no_grad()
def heldout_nll(model: MDNRNN, data: Sequence[Mapping[str, np.ndarray]]) -> float:
    """M's mean NLL per z dimension of ``next_z`` over whole episodes from ``transitions`` (from a zero state)."""
    total, count = 0.0, 0
    device = next(model.parameters()).device
    for episode in data:
        if not len(episode["next_z"]):
            continue
        out, _ = model(*(torch.as_tensor(episode[k], device=device)[None] for k in ("z", "action")))
        total += float(-mixture_log_prob(out, torch.as_tensor(episode["next_z"], device=device)[None]).sum())
        count += episode["next_z"].size
    return total / max(count, 1)


def marginal_nll(train: Sequence[Mapping[str, np.ndarray]], test: Sequence[Mapping[str, np.ndarray]]) -> float:
    """The unconditional baseline: a Gaussian per z dimension fitted to the training targets' marginal, its mean
    NLL per dimension on the test targets (what M must beat by using z_t, a_t and its memory)."""
    fit = np.concatenate([e["next_z"] for e in train])
    target = np.concatenate([e["next_z"] for e in test])
    mean, std = fit.mean(0), fit.std(0) + 1e-6
    return float(np.mean(0.5 * ((target - mean) / std) ** 2 + np.log(std) + LOG_SQRT_2PI))

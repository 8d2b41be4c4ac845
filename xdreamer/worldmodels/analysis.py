"""World Models agents as the analysis layer reads an agent (issue #30): one view, so that record, what-if dreams,
grounded branches, saliency, latent attribution, HIGHLIGHTS, the audit, the failure report and the app run on a
World Models agent unchanged.

The analysis layer (``xdreamer/explain``, ``xdreamer/report``, the app) reads a Dreamer agent through a small
interface: ``wm.encode`` / ``wm.rssm.obs_step`` / ``wm.feat`` / ``actor`` on the acting path, ``wm.rssm.img_step``
and ``wm.imagine`` for dreams, ``wm.decode``, ``wm.reward``, ``wm.discount`` and ``ac.value`` for the heads, and the
latent's description (``latent_kind``, ``stoch_size``, ``classes``, ``deter_size``). World Models has every piece
of it; ``WorldModelsView`` lays them out under those names, holding the agent's own modules (no copy), each
registered once, so a deep copy re-initialised layer by layer (the randomisation checks) changes the agent it wraps:

=========================  =================================================================================
Dreamer (``rssm.py``)      World Models (Ha & Schmidhuber 2018)
=========================  =================================================================================
embed = encoder(o_t)       V's encoder; the embedding is (mean, log-variance) of q(z_t | o_t)  ``[B, 2z]``
deter h_t                  M's LSTM state after (z_{t-1}, a_{t-1}): (h, c) concatenated ``[B, 2 * rnn]``;
                           zero on an episode's first step (the agent starts from an empty memory)
post q(z_t | h_t, o_t)     V's q(z_t | o_t) (World Models' posterior does not read h): Gaussian, logits =
                           (mean, std) ``[B, z, 2]``, stoch = the mean (acting) or a sample
prior p(z_t | h_t)         M's mixture of ``wm_mixtures`` Gaussians per dimension; ``logits`` hold its moment-
                           matched Gaussian (mean, std) -- an approximation for display and for the KL that
                           the trace calls "surprise"; the weights themselves are traced as ``prior_mixture``
img_step (dreams)          M's LSTM step, then z drawn from the mixture at ``wm_temperature`` (``sample``) or,
                           deterministically, each dimension's most likely component's mean
feat                       [z, h]: C's input
actor                      C: logits (discrete) or the pre-tanh mean (continuous); a CMA-ES C is
                           deterministic, so its "probabilities" are a softmax of C's scores (the argmax is
                           its action); a PPO C's are its policy's
reward, discount           M's reward head and (1 - P(done)) x ``discount`` at h_t (M predicts r_t and the end
                           at t from the memory that read (z_{t-1}, a_{t-1}))
value                      PPO's critic; a CMA-ES agent has none (``has_critic`` False): traces record NaN,
                           dreams' Q_H is the discounted imagined reward without bootstrap, and value saliency
                           is refused
=========================  =================================================================================

``xdreamer.checkpoint.load`` returns this view for a World Models checkpoint; ``view.inner`` is the
``WorldModelsAgent`` (``xdreamer.worldmodels.load`` returns that one directly).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..agent import Agent, PolicyState
from ..behavior import OneHot
from ..nets import sample_categorical, straight_through_onehot
from ..rssm import RSSM, State
from .agent import WorldModelsAgent

# A CMA-ES controller is deterministic; where the shared code needs a distribution over continuous actions (entropy,
# the ``sample`` policy) it gets a tanh-Normal this narrow around C's action (our choice; documented above).
DETERMINISTIC_STD = 1e-3


def _gaussian_kl(lhs: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """KL(N(m1, s1) || N(m2, s2)) of diagonal Gaussians ``[..., S, 2]`` (mean, std), summed over S."""
    m1, s1 = lhs.float().unbind(-1)
    m2, s2 = rhs.float().unbind(-1)
    return (torch.log(s2 / s1) + (s1.pow(2) + (m1 - m2).pow(2)) / (2 * s2.pow(2)) - 0.5).sum(-1)


class _PosteriorHead(nn.Module):
    """V's two dense layers (mean, log-variance): the "posterior head" the randomisation checks re-initialise."""

    def __init__(self, mean: nn.Linear, logvar: nn.Linear) -> None:
        super().__init__()
        self.mean, self.logvar = mean, logvar


class _PriorHead(nn.Module):
    """M's output layer (mixture, reward, done): the "prior head"."""

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.head = head


class MDNLatent(nn.Module):
    """M as an RSSM: ``obs_step``, ``img_step``, ``imagine``, ``kl`` and the latent's description."""

    latent_kind = "gaussian"
    classes = 1
    imagine = RSSM.imagine  # the one imagination loop (its ``get_feat`` is this class's: C's [z, h] order)

    def __init__(self, inner: WorldModelsAgent) -> None:
        super().__init__()
        mdn, vae = inner.mdn, inner.vae
        self.lstm = mdn.lstm
        self.img_out = _PriorHead(mdn.head)
        self.obs_out = _PosteriorHead(vae.mean, vae.logvar)
        object.__setattr__(self, "_inner", inner)  # not a submodule: its modules are registered above, once
        self.stoch_size, self.rnn = inner.cfg.wm_z, inner.cfg.wm_rnn
        self.deter_size = 2 * self.rnn
        self.action_dim = inner.action_dim
        self.temperature = float(inner.cfg.wm_temperature)

    @property
    def feat_dim(self) -> int:
        return self.stoch_size + self.rnn

    def initial(self, batch: int, device: torch.device | str = "cpu") -> State:
        return State(torch.zeros(batch, self.deter_size, device=device),
                     torch.zeros(batch, self.stoch_size, 1, device=device),
                     torch.zeros(batch, self.stoch_size, 2, device=device))

    def get_feat(self, state: State) -> torch.Tensor:
        """C's input [z, h] ``[..., z + rnn]``."""
        return torch.cat([state.stoch[..., 0], state.deter[..., :self.rnn]], -1)

    # ---- the latent's description (shared with DreamerV1's Gaussian RSSM) ---------------------------------
    @staticmethod
    def relaxed_stoch(logits: torch.Tensor) -> torch.Tensor:
        return logits[..., :1]

    @staticmethod
    def mode_stoch(logits: torch.Tensor) -> torch.Tensor:
        return logits[..., :1]

    kl = staticmethod(_gaussian_kl)

    @staticmethod
    def _stoch_from_logits(flat: torch.Tensor, sample: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``img_out``'s flat (mean, std) -> (the mean ``[..., S, 1]``, logits ``[..., S, 2]``); the analysis layer
        uses it for the prior at a recorded h (``attribution.py``), never to sample."""
        mean, std = flat.float().chunk(2, -1)
        return mean[..., None], torch.stack([mean, std], -1)

    # ---- M's prediction at h_t -------------------------------------------------------------------------
    def mixture(self, deter: torch.Tensor, temperature: float = 1.0):
        """M's heads at h_t (``deter[..., :rnn]``): an ``MDNOutput`` (mixture over z_t, reward r_t, done logit)."""
        return self._inner.mdn._heads(deter[..., :self.rnn])

    def prior_logits(self, deter: torch.Tensor) -> torch.Tensor:
        """The mixture's moment-matched Gaussian (mean, std) ``[..., z, 2]``."""
        out = self.mixture(deter)
        pi = out.logpi.exp()
        mean = (pi * out.mean).sum(-1)
        var = (pi * (out.logstd.exp().pow(2) + out.mean.pow(2))).sum(-1) - mean.pow(2)
        return torch.stack([mean, var.clamp(min=1e-8).sqrt()], -1)

    def prior_flat(self, deter: torch.Tensor) -> torch.Tensor:
        return self.prior_logits(deter).transpose(-1, -2).flatten(-2)

    def step_extras(self, prior: State) -> dict[str, np.ndarray]:
        """What a trace keeps per step beside the Dreamer fields: M's mixture weights over z_t ``[z, K]``."""
        return {"prior_mixture": self.mixture(prior.deter).logpi.exp().float()[0].cpu().numpy()}

    def _draw(self, deter: torch.Tensor, sample: bool) -> torch.Tensor:
        """z_t from M's mixture at h_t: a draw at ``temperature`` (hardmaru's ``sample_sequence``), or each
        dimension's most likely component's mean."""
        out = self.mixture(deter)
        if sample:
            from .mdnrnn import sample as draw

            return draw(out, self.temperature)
        index = out.logpi.argmax(-1, keepdim=True)
        return out.mean.gather(-1, index)[..., 0]

    def _lstm(self, prev: State, prev_action: torch.Tensor) -> torch.Tensor:
        h, c = prev.deter[..., :self.rnn], prev.deter[..., self.rnn:]
        x = torch.cat([prev.stoch[..., 0], self._inner.action_input(prev_action)
                       if prev_action.shape[-1] != self.action_dim else prev_action.float()], -1)
        _, (h, c) = self.lstm(x[:, None], (h[None].contiguous(), c[None].contiguous()))
        return torch.cat([h[0], c[0]], -1)

    # ---- one step ------------------------------------------------------------------------------------
    def img_step(self, prev: State, prev_action: torch.Tensor, sample: bool = True, lookup: bool = False) -> State:
        """h_t = LSTM(z_{t-1}, a_{t-1}); z_t from M's mixture (``_draw``); logits: the moment-matched prior."""
        deter = self._lstm(prev, prev_action)
        return State(deter, self._draw(deter, sample)[..., None], self.prior_logits(deter))

    def obs_step(self, prev: State, prev_action: torch.Tensor, embed: torch.Tensor,
                 is_first: torch.Tensor, sample: bool = True) -> tuple[State, State]:
        """The acting step of ``WorldModelsAgent.policy``: the memory after (z_{t-1}, a_{t-1}) (empty on
        ``is_first``), and V's q(z_t | o_t) from ``embed`` (mean, log-variance) as the posterior."""
        keep = (1.0 - is_first.float())[:, None]
        deter = self._lstm(State(prev.deter * keep, prev.stoch * keep[..., None], prev.logits), prev_action * keep)
        deter = deter * keep  # the agent starts an episode from the zero memory, not from a step on zeros
        prior = State(deter, self.prior_logits(deter)[..., :1], self.prior_logits(deter))
        mean, logvar = embed.float().chunk(2, -1)
        std = torch.exp(0.5 * logvar)
        stoch = mean + std * torch.randn_like(std) if sample else mean
        return State(deter, stoch[..., None], torch.stack([mean, std], -1)), prior


class WorldModelView(nn.Module):
    """V and M under the world model's names: ``encode``, ``rssm``, ``feat``, ``decode``, ``reward``,
    ``discount``, ``imagine``."""

    def __init__(self, inner: WorldModelsAgent) -> None:
        super().__init__()
        self.encoder = inner.vae.encoder
        self.decoder_in, self.decoder = inner.vae.expand, inner.vae.decoder
        self.rssm = MDNLatent(inner)
        object.__setattr__(self, "_inner", inner)
        self.cfg = inner.cfg
        self.discrete = inner.spec.discrete
        self.action_dim = inner.action_dim

    def encode(self, image: torch.Tensor, batch_stats: bool = False) -> torch.Tensor:
        """Image ``[..., C, 64, 64]`` in [-0.5, 0.5] -> (mean, log-variance) of q(z | o) ``[..., 2z]``."""
        lead = image.shape[:-3]
        mean, logvar = self._inner.vae.encode((image + 0.5).reshape(-1, *image.shape[-3:]))
        return torch.cat([mean, logvar], -1).reshape(*lead, -1)

    def feat(self, state: State) -> torch.Tensor:
        return self.rssm.get_feat(state)

    def imagine(self, start: State, policy=None, horizon: int = 15, actions: torch.Tensor | None = None,
                intervene=None, sample: bool = True, lookup: bool = False) -> tuple[State, torch.Tensor]:
        return self.rssm.imagine(start, policy, horizon, actions, intervene, sample, lookup=False)

    def decode(self, feat: torch.Tensor) -> torch.Tensor:
        """V's decoder on the z part of ``feat``: the frame in [-0.5, 0.5] (a linear output is not clipped)."""
        z = feat[..., :self.rssm.stoch_size]
        out = self._inner.vae.decode(z.reshape(-1, z.shape[-1]))
        return out.reshape(*z.shape[:-1], *out.shape[1:]) - 0.5

    def reward(self, feat: torch.Tensor, columns=None) -> torch.Tensor:
        """M's predicted r_t at h_t (``feat``'s h part) ``[...]``."""
        return self._inner.mdn._heads(feat[..., self.rssm.stoch_size:]).reward

    def discount(self, feat: torch.Tensor, columns=None) -> torch.Tensor:
        """``discount`` x P(no end at t) from M's done head at h_t ``[...]`` (Dreamer's discount head predicts
        gamma x P(continue) the same way)."""
        done = self._inner.mdn._heads(feat[..., self.rssm.stoch_size:]).done_logit
        return self.cfg.discount * (1 - torch.sigmoid(done))


class _ControllerNet(nn.Module):
    """C's linear map, with PPO's log std appended for continuous actions (the Dreamer actor's ``net`` layout:
    logits, or (mean, std parameter) halves)."""

    def __init__(self, controller) -> None:
        super().__init__()
        self.linear = controller.linear
        self.discrete = controller.discrete
        self.log_std = controller.log_std  # a Parameter (PPO, continuous) or None

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        out = self.linear(feat)
        if self.discrete:
            return out
        if self.log_std is not None:
            log_std = self.log_std.expand_as(out)
        else:
            log_std = torch.full_like(out, math.log(DETERMINISTIC_STD))
        return torch.cat([out, log_std], -1)


class ControllerActor(nn.Module):
    """C as the Dreamer actor: ``forward`` (the distribution), ``mode``, ``sample``, ``explore``, ``entropy``."""

    def __init__(self, inner: WorldModelsAgent) -> None:
        super().__init__()
        self.net = _ControllerNet(inner.controller)
        self.discrete, self.action_dim = inner.spec.discrete, inner.action_dim

    def forward(self, feat: torch.Tensor) -> torch.distributions.Distribution:
        out = self.net(feat).float()
        if self.discrete:
            return OneHot(out)
        mean, log_std = out.chunk(2, -1)
        base = torch.distributions.Normal(mean, log_std.exp(), validate_args=False)
        return torch.distributions.Independent(torch.distributions.TransformedDistribution(
            base, torch.distributions.TanhTransform(cache_size=1), validate_args=False), 1, validate_args=False)

    def mode(self, feat: torch.Tensor) -> torch.Tensor:
        """C's own action (``Controller.act``): the one-hot of the largest score, or tanh of the linear map."""
        out = self.net(feat)
        if self.discrete:
            return F.one_hot(out.argmax(-1), self.action_dim).float()
        return torch.tanh(out.chunk(2, -1)[0])

    def sample(self, feat: torch.Tensor) -> torch.Tensor:
        dist = self(feat)
        if self.discrete:
            return straight_through_onehot(dist.probs, sample_categorical(dist.probs))
        return dist.rsample()

    explore = sample

    def entropy(self, dist: torch.distributions.Distribution) -> torch.Tensor:
        if self.discrete:
            return dist.entropy()
        return -dist.log_prob(dist.rsample())  # single-sample estimate, as the Dreamer actor's


class ControllerCritic(nn.Module):
    """``ac``: the actor and, for PPO, the critic (``value``)."""

    def __init__(self, inner: WorldModelsAgent) -> None:
        super().__init__()
        self.actor = ControllerActor(inner)
        self.critic = inner.critic  # None for CMA-ES

    def value(self, feat: torch.Tensor, target: bool = False, columns=None) -> torch.Tensor:
        """PPO's value; zeros without a critic (a bootstrap of zero: ``dreams`` then sums rewards only)."""
        if self.critic is None:
            return torch.zeros(feat.shape[:-1], device=feat.device)
        return self.critic(feat)


class WorldModelsView(nn.Module):
    """A ``WorldModelsAgent`` with the Dreamer agent's interface for the analysis layer (module docstring)."""

    def __init__(self, inner: WorldModelsAgent) -> None:
        super().__init__()
        self.wm = WorldModelView(inner)
        self.ac = ControllerCritic(inner)
        object.__setattr__(self, "inner", inner)
        # M learns the raw rewards (the series of ``train.py``): the analysis layer must not tanh-clip the real ones
        # it compares M's with (traces' reward targets, grounded branches' real_q) as it does for DreamerV2.
        self.cfg, self.spec, self.device = inner.cfg.replace(clip_rewards="identity"), inner.spec, inner.device
        self.updates = inner.updates
        self.manifest = getattr(inner, "manifest", None)
        self.path = getattr(inner, "path", None)
        self.eval()

    @property
    def actor(self) -> ControllerActor:
        return self.ac.actor

    @property
    def critic(self):
        return self.ac.critic

    @property
    def has_critic(self) -> bool:
        return self.ac.critic is not None

    @property
    def algo_label(self) -> str:
        return f"World Models ({self.cfg.wm_controller.upper() if self.cfg.wm_controller == 'ppo' else 'CMA-ES'})"

    def autocast(self):
        return contextlib.nullcontext()

    def weights(self) -> dict[str, torch.Tensor]:
        return self.inner.weights()

    initial_policy_state = Agent.initial_policy_state

    @torch.no_grad()
    def policy(self, obs: Mapping[str, Any], state: PolicyState | None = None, mode: str = "eval",
               sample_latent: bool | None = None) -> tuple[np.ndarray, PolicyState]:
        """``WorldModelsAgent.policy`` through the view (the analysis layer's acting path; the same actions:
        ``tests/test_worldmodels_analysis.py``). z is V's mean: ``sample_latent`` is ignored, as the agent ignores
        it (its config's ``eval_latent`` is DreamerV2's default, which does not apply here)."""
        image = torch.as_tensor(np.asarray(obs["image"]), device=self.device)
        is_first = torch.as_tensor(np.asarray(obs["is_first"]), device=self.device).float()
        state = state or self.initial_policy_state(image.shape[0])
        embed = self.wm.encode(image.float() / 255.0 - 0.5)
        latent, _ = self.wm.rssm.obs_step(state.latent, state.action, embed, is_first, sample=False)
        feat = self.wm.feat(latent)
        explore = mode == "explore" and self.has_critic  # a CMA-ES C is deterministic (``WorldModelsAgent``)
        action = (self.actor.sample(feat) if explore else self.actor.mode(feat)).float()
        env_action = action.argmax(-1).cpu().numpy() if self.spec.discrete else action.cpu().numpy()
        return env_action, PolicyState(latent, action)

    act = Agent.act  # ``policy`` for one observation dict, as the Dreamer agent's

    def fresh(self, seed: int = 0) -> "WorldModelsView":
        """The negative control (``explain.audit.randomised_copy``): a freshly initialised agent of the same
        architecture. C starts at zero in training (``Controller``), which would act constantly; here its weights
        are drawn like a Dreamer actor's layer (Glorot uniform), so the control acts on its inputs."""
        from ..nets import init_weights

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            inner = WorldModelsAgent(self.cfg, self.spec, device=self.device)
            init_weights(inner.controller.linear)
        view = WorldModelsView(inner)
        view.manifest, view.path = {}, self.path
        return view


def view(inner: WorldModelsAgent) -> WorldModelsView:
    """The analysis view of a loaded World Models agent (``xdreamer.checkpoint.load`` calls this)."""
    return WorldModelsView(inner)

"""DreamerV1 (Hafner et al. 2020, "Dream to Control: Learning Behaviors by Latent Imagination", ICLR) as a member of
the family (issue #29; house rule 15). The replay, envs, encoder/decoder, checkpoints, CLI and the analysis layer are
shared; what differs lives here. Values from the paper and its released code (danijar/dreamer ``define_config`` and
``models.py``):

- **Gaussian latents** (§3, "Latent dynamics"): the stochastic state is 30 diagonal Gaussians (``stoch_size 30``)
  beside a deterministic GRU state of 200 (``deter_size 200``, hidden 200); the heads read ``concat(h_t, z_t)``.
  ``std = softplus(raw) + 0.1`` (``RSSM`` ``min_stddev``). A plain GRU cell (no layer norm), ELU layers.
- **KL** (§3, code ``div = max(mean(KL[post || prior]), free_nats)``): no balancing; free nats 3 applied to the
  batch mean; scale 1.
- **Actor by value gradients** (§3, eq. 7): the actor maximises the lambda-returns of imagined trajectories by
  backpropagating them through the learned dynamics into its sampled actions (reparameterised tanh-Normal for
  continuous control; a straight-through one-hot sample for discrete actions, the paper's Atari extension,
  Appendix). The loss is ``-mean(discount * V_lambda)`` over all H returns with ``discount = cumprod([1, gamma..])``;
  no entropy bonus. The actor's Gaussian: ``mean = 5 tanh(mu / 5)``, ``std = softplus(sigma + raw_init) + 1e-4`` with
  ``raw_init = log(exp(5) - 1)`` (``action_init_std 5``).
- **Critic**: regresses the same lambda-returns (Normal(v, 1) NLL, weighted by the discounts); the returns bootstrap
  from the critic itself (no target network).
- **Exploration**: additive Gaussian noise 0.3 on continuous actions (``expl additive_gaussian``, ``expl_amount
  0.3``), epsilon-greedy with the same amount for discrete ones (``epsilon_greedy``), while collecting only
  (``Config.expl_amount``).
- Heads: reward 2 x 400, value 3 x 400, actor 4 x 400 (``DenseDecoder((), 2 | 3, num_units)``, ``ActionDecoder(.., 4,
  num_units)``); no discount head (``pcont False``).

Approximations (docs/family.md): the conv encoder/decoder keep DreamerV2's ELU (V1: ReLU) and kernel layout; the
actor's "mode" is ``tanh(mean)`` (V1 takes the most likely of 100 samples); one Adam setting (eps, clip 100) for all.

The latent's description for the analysis layer: ``State(deter, stoch, logits)`` with ``stoch`` ``[..., 30, 1]`` (a
sample, or the mean) and ``logits`` ``[..., 30, 2]`` holding the Gaussians' (mean, std); ``RSSM.latent_kind`` is
``"gaussian"``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .behavior import Actor, ActorCritic
from .config import Config
from .nets import MLP
from .rssm import RSSM, State
from .world_model import WorldModel

MIN_STD = 0.1  # RSSM std floor (danijar/dreamer models.RSSM: softplus(std) + 0.1)
ACTOR_INIT_STD = 5.0  # action_init_std 5
ACTOR_MEAN_SCALE = 5.0  # ActionDecoder mean_scale 5
ACTOR_MIN_STD = 1e-4  # ActionDecoder min_std 1e-4
REWARD_LAYERS, VALUE_LAYERS = 2, 3  # DenseDecoder((), 2 | 3, num_units); the actor uses cfg.mlp_layers (4)


class GRUCell(nn.Module):
    """A plain GRU cell (DreamerV1: ``tfkl.GRUCell``; PyTorch's cell computes the candidate with the reset gate
    applied after the recurrent matmul, as Keras' ``reset_after=True`` default does)."""

    def __init__(self, in_dim: int, size: int) -> None:
        super().__init__()
        self.cell = nn.GRUCell(in_dim, size)

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return self.cell(x, state)


class GaussianRSSM(RSSM):
    """RSSM with diagonal-Gaussian latents (module docstring): ``stoch`` ``[..., S, 1]``, ``logits`` = (mean, std)
    ``[..., S, 2]``. ``observe``, ``imagine`` and ``obs_step`` are DreamerV2's; the distributions are these."""

    latent_kind = "gaussian"

    def __init__(self, embed_dim: int, action_dim: int, deter: int = 200, hidden: int = 200, stoch: int = 30) -> None:
        super().__init__(embed_dim, action_dim, deter, hidden, stoch, classes=1)
        self.gru = GRUCell(hidden, deter)
        self.img_out = nn.Sequential(nn.Linear(deter, hidden), nn.ELU(), nn.Linear(hidden, 2 * stoch))
        self.obs_out = nn.Sequential(nn.Linear(deter + embed_dim, hidden), nn.ELU(), nn.Linear(hidden, 2 * stoch))

    def initial(self, batch: int, device: torch.device | str = "cpu") -> State:
        return State(torch.zeros(batch, self.deter_size, device=device),
                     torch.zeros(batch, self.stoch_size, 1, device=device),
                     torch.zeros(batch, self.stoch_size, 2, device=device))

    def _stoch_from_logits(self, flat_logits: torch.Tensor, sample: bool) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw = flat_logits.float().chunk(2, -1)
        std = F.softplus(raw) + MIN_STD
        stoch = mean + std * torch.randn_like(std) if sample else mean  # reparameterised sample, or the mean
        return stoch[..., None], torch.stack([mean, std], -1)

    def relaxed_stoch(self, logits: torch.Tensor) -> torch.Tensor:
        """The mean ``[..., S, 1]`` (smooth already)."""
        return logits[..., :1]

    def mode_stoch(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[..., :1]

    def img_step(self, prev: State, prev_action: torch.Tensor, sample: bool = True, lookup: bool = False) -> State:
        return super().img_step(prev, prev_action, sample, lookup=False)  # the latents are not one-hot

    def observe(self, embed, action, is_first, state=None, sample=True, loop_weights=False):
        return super().observe(embed, action, is_first, state, sample, loop_weights=False)

    @staticmethod
    def kl(lhs_logits: torch.Tensor, rhs_logits: torch.Tensor) -> torch.Tensor:
        """KL(N(m1, s1) || N(m2, s2)) of the diagonal Gaussians ``[..., S, 2]`` (mean, std), summed: ``[...]``."""
        m1, s1 = lhs_logits.float().unbind(-1)
        m2, s2 = rhs_logits.float().unbind(-1)
        return (torch.log(s2 / s1) + (s1.pow(2) + (m1 - m2).pow(2)) / (2 * s2.pow(2)) - 0.5).sum(-1)

    def kl_loss(self, post: State, prior: State, balance: float, free: float,
                free_avg: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """DreamerV1: ``max(mean KL[post || prior], free)`` (``free_avg``; else per step), gradients to both; no
        balancing (``balance`` is ignored). Returns ``(loss, KL [B, T])``."""
        value = self.kl(post.logits, prior.logits)
        loss = value.mean().clamp(min=free) if free_avg else value.clamp(min=free).mean()
        return loss, value.detach()

    @staticmethod
    def entropy(logits: torch.Tensor) -> torch.Tensor:
        """Differential entropy of the diagonal Gaussians, summed: ``[...]``."""
        std = logits.float()[..., 1]
        return (0.5 * math.log(2 * math.pi * math.e) + torch.log(std)).sum(-1)


class WorldModelV1(WorldModel):
    """DreamerV2's encoder and decoder around the Gaussian RSSM, with DreamerV1's reward head and loss."""

    def __init__(self, cfg: Config, channels: int, action_dim: int, discrete: bool) -> None:
        if cfg.classes != 1:
            raise ValueError(f"dreamerv1 has Gaussian latents: classes must be 1 (got {cfg.classes}); put the "
                             "dreamerv1 preset after presets that set classes (small, debug) or --set classes=1")
        super().__init__(cfg, channels, action_dim, discrete)
        self.rssm = GaussianRSSM(self.encoder.out_dim, action_dim, cfg.deter, cfg.hidden, cfg.stoch)
        feat = self.rssm.feat_dim
        self.reward_head = MLP(feat, 1, REWARD_LAYERS, cfg.mlp_units)
        self.discount_head = MLP(feat, 1, 3, cfg.mlp_units) if cfg.pred_discount else None  # pcont: 3 layers

    def latent_columns(self, feat: torch.Tensor) -> None:
        return None  # no one-hot latents to look up

    def loss(self, data):
        cfg = self.cfg
        inp = self.preprocess(data)
        embed = self.encode(inp["image"], batch_stats=True)
        post, prior = self.rssm.observe(embed, inp["action"], inp["is_first"])
        kl_loss, kl_value = self.rssm.kl_loss(post, prior, 0.0, cfg.kl_free, cfg.kl_free_avg)
        feat = self.rssm.get_feat(post)
        # Normal(mean, 1) likelihoods of image and reward (DenseDecoder / ConvDecoder): -log p = 0.5 (x - mu)^2.
        image_loss = 0.5 * (self.decoder(feat) - inp["image"]).pow(2).sum((-3, -2, -1)).mean()
        reward_loss = 0.5 * (self.reward(feat) - inp["reward"]).pow(2).mean()
        loss = image_loss + cfg.reward_scale * reward_loss + cfg.kl_scale * kl_loss
        metrics = {"image_loss": image_loss, "reward_loss": reward_loss, "kl_loss": kl_loss, "kl": kl_value.mean(),
                   "prior_entropy": self.rssm.entropy(prior.logits).mean(),
                   "post_entropy": self.rssm.entropy(post.logits).mean()}
        loss = self.add_discount_loss(loss, feat, inp, metrics)  # pcont: off by default in DreamerV1
        metrics["model_loss"] = loss
        return loss, post, metrics


class ActorV1(Actor):
    """DreamerV1's action decoder: tanh-Normal with ``mean = 5 tanh(mu / 5)`` and softplus std around an initial 5,
    or a straight-through one-hot categorical; exploration noise when collecting (``expl_amount``)."""

    def __init__(self, feat_dim: int, action_dim: int, discrete: bool, cfg: Config) -> None:
        super().__init__(feat_dim, action_dim, discrete, cfg.mlp_layers, cfg.mlp_units, ACTOR_MIN_STD, None)
        self.expl_amount = cfg.expl_amount
        self.raw_init_std = math.log(math.exp(ACTOR_INIT_STD) - 1)

    def distribution(self, out: torch.Tensor) -> torch.distributions.Distribution:
        if self.discrete:
            return super().distribution(out)
        from torch.distributions import Independent, Normal, TanhTransform, TransformedDistribution

        mean, std = out.chunk(2, -1)
        mean = ACTOR_MEAN_SCALE * torch.tanh(mean / ACTOR_MEAN_SCALE)
        std = F.softplus(std + self.raw_init_std) + ACTOR_MIN_STD
        base = Normal(mean, std, validate_args=False)
        return Independent(TransformedDistribution(base, TanhTransform(cache_size=1), validate_args=False), 1,
                           validate_args=False)

    def mode(self, feat: torch.Tensor) -> torch.Tensor:
        if self.discrete:
            return super().mode(feat)
        mean = self.net(feat).chunk(2, -1)[0]
        return torch.tanh(ACTOR_MEAN_SCALE * torch.tanh(mean / ACTOR_MEAN_SCALE))

    def explore(self, feat: torch.Tensor) -> torch.Tensor:
        """A sample plus DreamerV1's exploration: additive Gaussian noise (clipped to [-1, 1]) or epsilon-greedy."""
        action = self.sample(feat)
        amount = self.expl_amount
        if amount <= 0:
            return action
        if not self.discrete:
            return (action + amount * torch.randn_like(action)).clamp(-1, 1)
        random = F.one_hot(torch.randint(0, self.action_dim, action.shape[:-1], device=action.device),
                           self.action_dim).to(action.dtype)
        pick = torch.rand(action.shape[:-1], device=action.device) < amount
        return torch.where(pick[..., None], random, action)


class ActorCriticV1(ActorCritic):
    """DreamerV1's behaviour learning: the actor by value gradients through the dynamics, the critic on the same
    lambda-returns, bootstrapped from itself."""

    def __init__(self, cfg: Config, feat_dim: int, action_dim: int, discrete: bool) -> None:
        super().__init__(cfg, feat_dim, action_dim, discrete)
        self.actor = ActorV1(feat_dim, action_dim, discrete, cfg)
        self.critic = MLP(feat_dim, 1, VALUE_LAYERS, cfg.mlp_units)
        self.target_critic = MLP(feat_dim, 1, VALUE_LAYERS, cfg.mlp_units).requires_grad_(False)  # unused by V1
        self.actor_grad = "dynamics"  # eq. 7: analytic value gradients, for discrete actions too

    def target(self, seq: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lambda-returns [N, H], the critic's values [N, H+1])``: V1 bootstraps from the critic it trains."""
        from .behavior import lambda_return

        value = self.value(seq["feat"])
        return lambda_return(seq["reward"][:, :-1], value[:, :-1], seq["discount"][:, :-1], value[:, -1],
                             self.cfg.discount_lambda), value

    def actor_loss(self, seq: dict[str, torch.Tensor], target: torch.Tensor, value: torch.Tensor
                   ) -> tuple[torch.Tensor, dict]:
        """``-mean(discount * V_lambda)`` over the H returns, discount = cumprod([1, gamma_0, ..]) (dreamer.py)."""
        dist = self.actor.distribution(seq["actor_out"])
        entropy = self.actor.entropy(dist)
        objective = target + self.cfg.actor_ent * entropy
        loss = -(seq["weight"][:, :-1].detach() * objective).mean()
        return loss, {"actor_entropy": entropy.mean().detach()}

"""DreamerV3 (Hafner et al. 2023, "Mastering Diverse Domains through World Models", arXiv:2301.04104v1) as a
member of the family: its world-model loss and heads, and its actor-critic (house rule 15). The encoder, decoder,
RSSM, replay, envs, checkpoints, CLI and the analysis layer are DreamerV2's and shared; the analysis layer sees the
same interface (``reward`` and ``value`` return real-scale numbers, the latents are 32 x 32 categoricals).

What differs from DreamerV2, with the paper's section:

- Reward and critic predict two-hot distributions over 255 bins equally spaced in symlog space on [-20, 20];
  predictions are ``symexp(E[bin])`` (§2 "Symlog predictions", "Critic learning"); their output layers start at
  zero (§3, so that early predictions are 0 and do not mislead the returns).
- A continue head on ``1 - is_terminal`` (Bernoulli); the discount is gamma * P(continue) with gamma = 0.997, the
  paper's horizon of 333 steps.
- KL: ``dyn_scale * max(free, KL[sg(post) || prior]) + rep_scale * max(free, KL[post || sg(prior)])`` with
  free bits 1, scales 0.5 and 0.1 (§2 "World model learning").
- The image likelihood is the sum of squared errors (an MSE head, no 1/2).
- 1 % unimix in the latents (``RSSM.unimix``) and in the actor's categorical (§2).
- Returns are normalised by ``max(1, EMA(P95) - EMA(P5))`` of the lambda-returns, decay 0.99 (§2 "Actor learning");
  the advantage is ``(R - v) / scale`` and the entropy bonus 3e-4.
- The critic regresses the lambda-returns computed from its own values, regularised towards the predictions of its
  EMA copy (fraction 0.02 per update, scale 1, §2 "Critic learning"). The returns use the next state's reward and
  continue flag (R_t = r_{t+1} + gamma c_{t+1} ((1 - lambda) v_{t+1} + lambda R_{t+1})), as dreamerv3's code does.
- Heads and actor: LayerNorm + SiLU hidden layers (§3 "Architecture").

Approximations (docs/family.md): the convolutional encoder and decoder and the RSSM's own layers keep DreamerV2's ELU
without normalisation; one Adam (eps, clip) setting serves world model and actor-critic; pixels are not symlogged,
as in the paper (symlog applies to vector inputs, which no env here has).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .behavior import Actor, ActorCritic, OneHot, lambda_return
from .config import Config
from .nets import MLP
from .world_model import WorldModel, _entropy

BINS = 255  # §2: 255 bins
BIN_RANGE = 20.0  # bins span symlog values [-20, 20] (dreamerv3 ``DiscDist(low=-20, high=20)``)
RETURN_PERCENTILES = (0.05, 0.95)  # §2: 5th and 95th percentile of the returns in the batch
RETURN_DECAY = 0.99  # EMA decay of the percentiles
RETURN_LIMIT = 1.0  # the scale's floor: returns smaller than this are not amplified


def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * ln(1 + |x|) (§2, eq. 9)."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`symlog`: sign(x) * (exp(|x|) - 1)."""
    return torch.sign(x) * torch.expm1(x.abs())


def bins(device: torch.device | str = "cpu") -> torch.Tensor:
    """The 255 bin centres in symlog space ``[BINS]``."""
    return torch.linspace(-BIN_RANGE, BIN_RANGE, BINS, device=device)


def twohot(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """``x`` ``[...]`` (symlog space) as weights ``[..., BINS]`` on its two nearest bins, linear in the distance, so
    that the weighted mean of the bins is ``x`` (clipped to the bins' range). dreamerv3 ``DiscDist.log_prob``."""
    below = ((centres <= x[..., None]).sum(-1) - 1).clamp(0, len(centres) - 1)
    above = (len(centres) - (centres > x[..., None]).sum(-1)).clamp(0, len(centres) - 1)
    equal = below == above
    to_below = torch.where(equal, torch.ones_like(x), (centres[below] - x).abs())
    to_above = torch.where(equal, torch.ones_like(x), (centres[above] - x).abs())
    total = to_below + to_above
    return (F.one_hot(below, len(centres)) * (to_above / total)[..., None]
            + F.one_hot(above, len(centres)) * (to_below / total)[..., None])


def twohot_nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy ``[...]`` of the bin logits ``[..., BINS]`` against the two-hot code of ``symlog(target)``."""
    logits = logits.float()
    code = twohot(symlog(target.float()), bins(logits.device))
    return -(code * logits.log_softmax(-1)).sum(-1)


def twohot_mean(logits: torch.Tensor) -> torch.Tensor:
    """The prediction ``symexp(sum_i p_i b_i)`` ``[...]`` of bin logits ``[..., BINS]``."""
    logits = logits.float()
    return symexp((logits.softmax(-1) * bins(logits.device)).sum(-1))


def categorical_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL[p || q] of independent categoricals ``[..., stoch, classes]`` -> ``[...]`` (summed over the variables)."""
    p_log, q_log = p_logits.float().log_softmax(-1), q_logits.float().log_softmax(-1)
    return (p_log.exp() * (p_log - q_log)).sum((-1, -2))


def _head(in_dim: int, out_dim: int, cfg: Config, zero_output: bool) -> MLP:
    """A LayerNorm + SiLU MLP over the RSSM feature; ``zero_output`` marks its output layer for zeros at
    initialisation (``nets.init_weights``; §3: reward and critic start predicting 0)."""
    mlp = MLP(in_dim, out_dim, cfg.mlp_layers, cfg.mlp_units, onehot_tail=(cfg.stoch, cfg.classes), norm=True,
              act=nn.SiLU)
    mlp.zero_output = zero_output
    return mlp


class WorldModelV3(WorldModel):
    """DreamerV2's encoder, RSSM and decoder with DreamerV3's heads and loss."""

    def __init__(self, cfg: Config, channels: int, action_dim: int, discrete: bool) -> None:
        super().__init__(cfg, channels, action_dim, discrete)
        feat = self.rssm.feat_dim
        self.reward_head = _head(feat, BINS, cfg, zero_output=True)
        self.discount_head = _head(feat, 1, cfg, zero_output=False)  # the continue head, always present

    def reward(self, feat: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted reward ``[...]`` on the env's scale (``symexp`` of the two-hot mean)."""
        return twohot_mean(self.reward_head(feat, columns))

    def discount(self, feat: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """gamma * P(continue) ``[...]``; the head is trained on ``1 - is_terminal`` (not on gamma times it)."""
        return self.cfg.discount * torch.sigmoid(self.discount_head(feat, columns).squeeze(-1).float())

    def loss(self, data):
        cfg = self.cfg
        inp = self.preprocess(data)
        embed = self.encode(inp["image"], batch_stats=True)
        post, prior = self.rssm.observe(embed, inp["action"], inp["is_first"], loop_weights=True)
        dyn = categorical_kl(post.logits.detach(), prior.logits)  # [B, T]
        rep = categorical_kl(post.logits, prior.logits.detach())
        dyn_loss = dyn.clamp(min=cfg.kl_free).mean()  # free bits: no gradient below ``kl_free`` nats
        rep_loss = rep.clamp(min=cfg.kl_free).mean()
        feat = self.rssm.get_feat(post)
        image_loss = (self.decoder(feat) - inp["image"]).pow(2).sum((-3, -2, -1)).mean()
        reward_loss = twohot_nll(self.reward_head(feat), inp["reward"]).mean()
        cont = 1.0 - data["is_terminal"].float()
        discount_loss = F.binary_cross_entropy_with_logits(self.discount_head(feat).squeeze(-1).float(), cont)
        kl_loss = cfg.dyn_scale * dyn_loss + cfg.rep_scale * rep_loss
        loss = image_loss + cfg.reward_scale * reward_loss + cfg.discount_scale * discount_loss + kl_loss
        metrics = {"image_loss": image_loss, "reward_loss": reward_loss, "discount_loss": discount_loss,
                   "kl_loss": kl_loss, "dyn_loss": dyn_loss, "rep_loss": rep_loss, "kl": dyn.mean(),
                   "prior_entropy": _entropy(prior.logits).mean(), "post_entropy": _entropy(post.logits).mean(),
                   "model_loss": loss}
        return loss, post, metrics


class ActorV3(Actor):
    """The actor with LayerNorm + SiLU layers and ``unimix`` uniform mixed into its categorical (§2)."""

    def __init__(self, feat_dim: int, action_dim: int, discrete: bool, cfg: Config) -> None:
        super().__init__(feat_dim, action_dim, discrete, cfg.mlp_layers, cfg.mlp_units, cfg.actor_min_std,
                         (cfg.stoch, cfg.classes))
        self.net = _head(feat_dim, action_dim if discrete else 2 * action_dim, cfg, zero_output=False)
        self.unimix = cfg.unimix

    def distribution(self, out: torch.Tensor) -> torch.distributions.Distribution:
        if self.discrete and self.unimix > 0:
            probs = (1 - self.unimix) * out.softmax(-1) + self.unimix / self.action_dim
            return OneHot(probs.log())
        return super().distribution(out)


class ActorCriticV3(ActorCritic):
    """DreamerV3's actor-critic: two-hot critic with an EMA regulariser, percentile return normalisation."""

    def __init__(self, cfg: Config, feat_dim: int, action_dim: int, discrete: bool) -> None:
        super().__init__(cfg, feat_dim, action_dim, discrete)
        self.actor = ActorV3(feat_dim, action_dim, discrete, cfg)
        self.critic = _head(feat_dim, BINS, cfg, zero_output=True)
        self.target_critic = _head(feat_dim, BINS, cfg, zero_output=True).requires_grad_(False)
        # EMAs of the returns' 5th and 95th percentiles (dreamerv3 ``Moments``, starting at 0); saved with the weights.
        self.register_buffer("return_range", torch.zeros(2))  # [low, high]

    def value(self, feat: torch.Tensor, target: bool = False, columns: torch.Tensor | None = None) -> torch.Tensor:
        return twohot_mean((self.target_critic if target else self.critic)(feat, columns))

    def return_scale(self, returns: torch.Tensor, update: bool = True) -> torch.Tensor:
        """``max(1, EMA(P95) - EMA(P5))``, after folding ``returns``' percentiles into the EMAs (``update``)."""
        if update:
            with torch.no_grad():
                low, high = torch.quantile(returns.detach().float().flatten(),
                                           torch.tensor(RETURN_PERCENTILES, device=returns.device))
                self.return_range.mul_(RETURN_DECAY).add_((1 - RETURN_DECAY) * torch.stack([low, high]))
        return torch.clamp(self.return_range[1] - self.return_range[0], min=RETURN_LIMIT)

    def target(self, seq: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lambda-returns [N, H] of states 0..H-1, the critic's values [N, H+1])``. R_t reads the reward and
        discount of state t+1 (dreamerv3 ``VFunction.score``)."""
        value = self.value(seq["feat"], columns=seq.get("columns"))
        returns = lambda_return(seq["reward"][:, 1:], value[:, :-1], seq["discount"][:, 1:], value[:, -1],
                                self.cfg.discount_lambda)
        return returns, value

    def actor_loss(self, seq: dict[str, torch.Tensor], target: torch.Tensor, value: torch.Tensor
                   ) -> tuple[torch.Tensor, dict]:
        dist = self.actor.distribution(seq["actor_out"])  # states 0..H-1, the outputs that drew the actions
        scale = self.return_scale(target)
        advantage = (target - value[:, :-1]) / scale
        if self.actor_grad == "dynamics":
            objective = advantage  # gradients reach the actor through the returns (the dynamics)
        else:
            objective = self.actor.log_prob(dist, seq["action"][:, 1:].detach()) * advantage.detach()
            if self.actor_grad == "both":
                mix = self.cfg.actor_grad_mix
                objective = mix * advantage + (1 - mix) * objective
        entropy = self.actor.entropy(dist)
        weight = seq["weight"][:, :-1].detach()
        loss = -(weight * (objective + self.cfg.actor_ent * entropy)).mean()
        return loss, {"actor_entropy": entropy.mean().detach(), "return_scale": scale.detach()}

    def critic_loss(self, seq: dict[str, torch.Tensor], target: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        columns = seq.get("columns")
        columns = None if columns is None else columns[:, :-1]
        feat = seq["feat"][:, :-1].detach()
        logits = self.critic(feat, columns)
        with torch.no_grad():
            slow = twohot_mean(self.target_critic(feat, columns))
        loss = twohot_nll(logits, target.detach()) + self.cfg.critic_reg * twohot_nll(logits, slow)
        return (seq["weight"][:, :-1].detach() * loss).mean(), twohot_mean(logits.detach())

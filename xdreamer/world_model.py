"""DreamerV2 world model: encoder, RSSM, image decoder, reward and discount heads, and its loss.

The analysis layer talks to this interface (``preprocess``, ``encode``, ``observe``,
``imagine``, ``decode``, ``reward``, ``discount``, ``feat``), not to RSSM internals, so that
other members of the family (DreamerV1 Gaussian latents, DreamerV3 options) can plug in.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .config import Config
from .nets import MLP, ConvDecoder, ConvEncoder
from .rssm import RSSM, Intervention, Policy, State


class WorldModel(nn.Module):
    def __init__(self, cfg: Config, channels: int, action_dim: int, discrete: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.channels, self.action_dim, self.discrete = channels, action_dim, discrete
        self.encoder = ConvEncoder(channels, cfg.cnn_depth)
        self.embed_norm = EmbedBatchNorm(self.encoder.out_dim) if cfg.embed_norm == "batch" else None
        self.rssm = RSSM(self.encoder.out_dim, action_dim, cfg.deter, cfg.hidden, cfg.stoch, cfg.classes,
                         cfg.unimix)
        feat = self.rssm.feat_dim
        self.decoder = ConvDecoder(feat, channels, cfg.cnn_depth, cfg.decoder)
        latents = (cfg.stoch, cfg.classes)  # the feature ends in the sampled latents (RSSM.get_feat)
        self.reward_head = MLP(feat, 1, cfg.mlp_layers, cfg.mlp_units, onehot_tail=latents)
        self.discount_head = (MLP(feat, 1, cfg.mlp_layers, cfg.mlp_units, onehot_tail=latents)
                              if cfg.pred_discount else None)

    # ---- the one preprocessing -----------------------------------------------------------
    def preprocess(self, data: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Replay/env tensors -> model inputs.

        image uint8 ``[B, T, C, 64, 64]`` -> float in [-0.5, 0.5]; discrete actions (int
        ``[B, T]``) -> one-hot ``[B, T, A]``; reward clipped per ``clip_rewards``; ``discount`` =
        gamma * (1 - is_terminal) as the discount head's target (dreamerv2 ``preprocess``).
        """
        image = data["image"]
        assert image.dtype == torch.uint8, f"images must be uint8, got {image.dtype}"
        out = {"image": image.float() / 255.0 - 0.5, "action": self.action_input(data["action"]),
               "is_first": data["is_first"].float()}
        if "reward" in data:
            reward = data["reward"].float()
            out["reward"] = torch.tanh(reward) if self.cfg.clip_rewards == "tanh" else reward
        if "is_terminal" in data:
            out["discount"] = self.cfg.discount * (1.0 - data["is_terminal"].float())
        return out

    def action_input(self, action: torch.Tensor) -> torch.Tensor:
        if self.discrete:
            if action.dtype.is_floating_point and action.shape[-1:] == (self.action_dim,):
                return action  # already one-hot / relaxed
            return F.one_hot(action.long(), self.action_dim).float()
        return action.float()

    # ---- interface ----------------------------------------------------------------------
    def encode(self, image: torch.Tensor, batch_stats: bool = False) -> torch.Tensor:
        """Image ``[..., C, 64, 64]`` in [-0.5, 0.5] -> embedding ``[..., E]`` (normalised when
        ``embed_norm=batch``: over this batch with ``batch_stats``, as in the world-model loss, else
        with the running statistics)."""
        embed = self.encoder(image)
        if self.embed_norm is not None:
            embed = self.embed_norm(embed, batch_stats)
        return embed

    def observe(self, embed: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor,
                state: State | None = None, sample: bool = True) -> tuple[State, State]:
        return self.rssm.observe(embed, action, is_first, state, sample)

    def imagine(self, start: State, policy: Policy | None = None, horizon: int = 15,
                actions: torch.Tensor | None = None, intervene: Intervention | None = None,
                sample: bool = True, lookup: bool = False) -> tuple[State, torch.Tensor]:
        return self.rssm.imagine(start, policy, horizon, actions, intervene, sample, lookup)

    feat = staticmethod(RSSM.get_feat)

    def decode(self, feat: torch.Tensor) -> torch.Tensor:
        """Mean image in [-0.5, 0.5], ``[..., C, 64, 64]``."""
        return self.decoder(feat)

    def latent_columns(self, feat: torch.Tensor) -> torch.Tensor | None:
        """``[..., stoch]``: where the ones of ``feat``'s sampled latents sit, for the heads' ``columns`` (their
        first layers then look the latents up: ``nets.MLP``), or None where that does not apply
        (``nets.lookup_columns``). Only for features of sampled states."""
        return self.reward_head.lookup_columns(feat)

    def reward(self, feat: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted (clipped) reward ``[...]``; ``columns``: :meth:`latent_columns` of ``feat`` (optional)."""
        return self.reward_head(feat, columns).squeeze(-1)

    def discount(self, feat: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted gamma * P(continue) ``[...]``; constant gamma without a discount head.

        The head is trained on the soft target gamma * (1 - is_terminal), so its Bernoulli
        mean already includes gamma (dreamerv2 ``imagine``: ``disc = heads['discount'].mean()``).
        """
        if self.discount_head is None:
            return torch.full(feat.shape[:-1], self.cfg.discount, device=feat.device)
        return torch.sigmoid(self.discount_head(feat, columns).squeeze(-1))

    # ---- training loss -------------------------------------------------------------------
    def loss(self, data: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, State, dict[str, torch.Tensor]]:
        """World-model loss on a batch ``[B, T]``; returns ``(loss, post, metrics)``."""
        cfg = self.cfg
        inp = self.preprocess(data)
        embed = self.encode(inp["image"], batch_stats=True)
        post, prior = self.rssm.observe(embed, inp["action"], inp["is_first"], loop_weights=True)
        kl_loss, kl_value = self.rssm.kl_loss(post, prior, cfg.kl_balance, cfg.kl_free, cfg.kl_free_avg)
        feat = self.rssm.get_feat(post)
        # Unit-variance Gaussian image likelihood: -log p = 0.5 * sum (x - mu)^2 + const (const dropped).
        image_loss = 0.5 * (self.decoder(feat) - inp["image"]).pow(2).sum((-3, -2, -1)).mean()
        # Reward head: dreamerv2 ``mse`` dist is Normal(mu, 1) (common/nets.py ``DistLayer``), -log p = 0.5 (r - mu)^2.
        reward_loss = 0.5 * (self.reward(feat) - inp["reward"]).pow(2).mean()
        loss = image_loss + cfg.reward_scale * reward_loss + cfg.kl_scale * kl_loss
        metrics = {"image_loss": image_loss, "reward_loss": reward_loss, "kl_loss": kl_loss,
                   "kl": kl_value.mean(), "prior_entropy": _entropy(prior.logits).mean(),
                   "post_entropy": _entropy(post.logits).mean()}
        loss = self.add_discount_loss(loss, feat, inp, metrics)
        metrics["model_loss"] = loss
        return loss, post, metrics

    def add_discount_loss(self, loss: torch.Tensor, feat: torch.Tensor, inp: Mapping[str, torch.Tensor],
                          metrics: dict[str, torch.Tensor]) -> torch.Tensor:
        """``loss`` plus the discount head's Bernoulli likelihood of the soft target gamma * (1 - is_terminal),
        times ``discount_scale`` (dreamerv2 5; DreamerV1's pcont 10), where there is a discount head."""
        if self.discount_head is None:
            return loss
        logits = self.discount_head(feat).squeeze(-1)
        discount_loss = F.binary_cross_entropy_with_logits(logits, inp["discount"])
        metrics["discount_loss"] = discount_loss
        return loss + self.cfg.discount_scale * discount_loss


class EmbedBatchNorm(nn.Module):
    """Batch norm without affine parameters over the last axis of an embedding ``[..., E]``.

    ``batch_stats=True`` (the world-model loss) normalises with the mean and variance over all leading
    positions of this batch, gradients flowing through them as in batch norm (Ioffe & Szegedy 2015), and
    updates the running statistics (momentum 0.1, eps 1e-5: PyTorch's ``BatchNorm1d`` defaults). Otherwise
    (acting, analysis) it is a fixed affine map with the running statistics, so a single frame is handled the
    same as in a batch. Computed in float32 under autocast. The gradient through the batch mean is what
    matters: it removes the push that all frames share (normalising with detached running statistics
    collapsed like no normalisation, ``docs/experiments/bottleneck_ball.py``).
    """

    def __init__(self, dim: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, embed: torch.Tensor, batch_stats: bool = False) -> torch.Tensor:
        flat = embed.reshape(-1, embed.shape[-1]).to(self.running_mean.dtype)  # float32 under autocast
        out = F.batch_norm(flat, self.running_mean, self.running_var, None, None, batch_stats and flat.shape[0] > 1,
                           self.momentum, self.eps)
        return out.reshape(embed.shape)


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum((-1, -2))

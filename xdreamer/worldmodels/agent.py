"""The World Models agent: V, M and C together, acting in an env one observation at a time or in lockstep.

Acting (paper §2.3 / Figure 8): z_t = V(o_t) (the posterior mean here, so that a replayed episode is deterministic;
hardmaru's ``encode_obs`` samples), a_t = C([z_t, h_t]), then h_{t+1} = M's LSTM after (z_t, a_t). The agent has
what the shared code reads of a Dreamer agent (``cfg``, ``spec``, ``device``, ``updates``, ``weights()``, ``policy``,
``act``), so ``xdreamer.checkpoint.save`` writes it and ``xdreamer.evaluation.evaluate`` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..agent import resolve_device
from ..config import Config
from ..envs import EnvSpec
from .controller import Controller, Critic
from .mdnrnn import MDNRNN, LSTMState
from .vae import build as build_vae, to_unit


@dataclass
class WMState:
    """Carried between env steps: M's LSTM state ``(h, c)``, each ``[B, rnn]``."""

    lstm: LSTMState


class WorldModelsAgent(nn.Module):
    """``vae`` (V), ``mdn`` (M), ``controller`` (C) and, for PPO, ``critic``."""

    def __init__(self, cfg: Config, spec: EnvSpec, device: torch.device | str | None = None) -> None:
        super().__init__()
        if spec.obs_shape[1:] != (64, 64):
            raise ValueError(f"World Models reads 64x64 frames; env {spec.id} gives {tuple(spec.obs_shape)}")
        self.cfg, self.spec = cfg, spec
        self.action_dim = spec.num_actions  # one-hot for discrete actions
        self.vae = build_vae(cfg, spec.obs_shape[0])
        self.mdn = MDNRNN(cfg.wm_z, self.action_dim, cfg.wm_rnn, cfg.wm_mixtures)
        self.feat_dim = cfg.wm_z + cfg.wm_rnn
        ppo = cfg.wm_controller == "ppo"
        self.controller = Controller(self.feat_dim, spec.num_actions, spec.discrete, stochastic=ppo)
        self.critic = Critic(self.feat_dim) if ppo else None
        self.device = device if isinstance(device, torch.device) else resolve_device(device or cfg.device)
        self.to(self.device)
        self.updates = 0  # V, M and C updates (the manifest's ``updates``)
        self.eval()

    # ---- pieces the trainers and the analysis layer share -----------------------------------------------------
    def encode(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """z ``[B, z]``: V's posterior mean of uint8 frames ``[B, C, 64, 64]``."""
        return self.vae.encode(to_unit(images, self.device))[0]

    def feat(self, z: torch.Tensor, state: WMState) -> torch.Tensor:
        """C's input [z, h] ``[B, z + rnn]``."""
        return torch.cat([z, state.lstm[0]], -1)

    def action_input(self, action: torch.Tensor) -> torch.Tensor:
        """M's action input ``[B, A]``: one-hot of indices ``[B]`` (discrete) or the action itself."""
        if self.spec.discrete:
            return F.one_hot(action.long(), self.action_dim).float()
        return action.float()

    def initial_state(self, batch: int = 1) -> WMState:
        return WMState(self.mdn.initial(batch, self.device))

    def advance(self, z: torch.Tensor, action: torch.Tensor, state: WMState) -> WMState:
        """M's LSTM after (z_t, a_t): the memory for the next step (M's prediction itself is not needed)."""
        _, lstm = self.mdn.step(z, self.action_input(action), state.lstm)
        return WMState(lstm)

    def reset_where(self, state: WMState, is_first: torch.Tensor) -> WMState:
        """Zero the LSTM state of the batch rows that start an episode (``is_first`` ``[B]``)."""
        keep = (1.0 - is_first.float())[:, None]
        return WMState((state.lstm[0] * keep, state.lstm[1] * keep))

    # ---- acting (the interface of xdreamer.evaluation) ---------------------------------------------------------
    @torch.no_grad()
    def policy(self, obs: Mapping[str, Any], state: WMState | None = None, mode: str = "eval",
               sample_latent: bool | None = None) -> tuple[np.ndarray, WMState]:
        """One step for a batch (``image`` ``[B, C, 64, 64]`` uint8, ``is_first`` ``[B]``). ``mode`` ``eval``:
        C's deterministic action; ``explore``: a draw from PPO's policy (CMA-ES's C is deterministic).
        ``sample_latent`` is accepted for the shared evaluation code and ignored (z is V's mean).
        Returns env actions (int ``[B]`` or float ``[B, A]``) and the next state."""
        image = torch.as_tensor(np.asarray(obs["image"]), device=self.device)
        is_first = torch.as_tensor(np.asarray(obs["is_first"]), device=self.device)
        state = self.reset_where(state or self.initial_state(image.shape[0]), is_first)
        z = self.encode(image)
        feat = self.feat(z, state)
        if mode == "explore" and self.critic is not None:
            raw = self.controller.dist(feat).sample()
            action = raw if self.spec.discrete else torch.tanh(raw)
        else:
            action = self.controller.act(feat)
        state = self.advance(z, action, state)
        return action.cpu().numpy(), state

    def act(self, obs: Mapping[str, Any], state: WMState | None = None, mode: str = "eval",
            sample_latent: bool | None = None) -> tuple[Any, WMState]:
        """``policy`` for one env observation dict: the env action (int, or float ``[A]``) and the state."""
        actions, state = self.policy({"image": obs["image"][None], "is_first": np.array([obs["is_first"]])},
                                     state, mode=mode)
        return (int(actions[0]) if self.spec.discrete else actions[0]), state

    # ---- (de)serialisation ---------------------------------------------------------------------------------
    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}

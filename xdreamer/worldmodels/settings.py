"""World Models' block of the run configuration (issue #30): its fields, presets and value ranges.

``xdreamer.config.Config`` inherits ``WorldModelsFields``, so these are ordinary config fields (``--set
wm_popsize=16``, saved in every run's and checkpoint's ``config.json``, validated on load); DreamerV2/V3 ignore
them. Defaults are the paper's CarRacing setup (Ha & Schmidhuber 2018, arXiv:1803.10122, and its released code
hardmaru/WorldModelsExperiments ``carracing/``: ``vae/vae.py``, ``vae_train.py``, ``rnn/rnn.py``, ``train.py``);
presets only shrink numbers. This module imports nothing heavy: ``xdreamer.config`` imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

CONTROLLERS = ("cmaes", "ppo")


@dataclass(frozen=True)
class WorldModelsFields:
    # --- C: how the controller is trained ------------------------------------------------------------------
    wm_controller: str = "cmaes"  # paper: CMA-ES; "ppo": PPO on the same [z, h] features (issue #30)
    # Train C in M's dream instead of the real env (paper §4.4 / §5: DoomTakeCover); CarRacing in the paper: real env.
    wm_dream: bool = False
    # τ of the dream: mixture logits / τ and std * sqrt(τ) (hardmaru rnn.py ``sample_sequence``; paper Table 2
    # DoomTakeCover uses τ 0.1..1.3, best 1.15). 1.0 samples M as trained.
    wm_temperature: float = 1.0
    # --- data ---------------------------------------------------------------------------------------------
    wm_rollouts: int = 10_000  # paper §3: 10,000 random-policy rollouts of CarRacing
    # The iterative procedure (paper §5, for tasks a random policy does not explore): after the first pass, each
    # further iteration collects ``wm_rollouts`` more episodes with the trained C and retrains V, M and C on all of
    # them (from where they are). 1 = the single pass the paper's CarRacing agent used.
    wm_iterations: int = 1
    # Per step of an iteration's rollouts, the random policy acts instead of C with this probability (ours: C
    # alone, deterministic under CMA-ES, would collect one behaviour; the paper does not say).
    wm_explore: float = 0.1
    # --- V: the conv VAE -----------------------------------------------------------------------------------
    wm_z: int = 32  # paper §3 / vae.py z_size 32
    wm_vae_depth: int = 32  # encoder convs 32-64-128-256 (vae.py), i.e. depth x 1, 2, 4, 8
    wm_vae_lr: float = 1e-4  # vae_train.py learning_rate 0.0001 (Adam)
    wm_vae_batch: int = 100  # vae_train.py batch_size 100
    wm_vae_epochs: int = 10  # vae_train.py NUM_EPOCH 10
    # The decoder's last activation: "sigmoid" as vae.py; "linear" makes the output the mean of a unit-variance
    # Gaussian as DreamerV2's decoder (not in the paper). On the toy games' sparse frames (1.3 % of pixels lit) the
    # sigmoid starts saturated at 0: at the debug sizes V drew the paddle after 1,165 updates with it, after 233
    # with "linear" (docs/worldmodels.md "What is approximate").
    wm_vae_output: str = "sigmoid"
    # vae.py kl_tolerance 0.5: the KL term is max(KL, 0.5 * z_size) per frame (free bits; ctallec/world-models
    # uses the plain KL instead, which on a small data set spends z on nothing).
    wm_kl_tolerance: float = 0.5
    # --- M: the MDN-RNN -------------------------------------------------------------------------------------
    wm_rnn: int = 256  # paper §3 CarRacing: LSTM 256 units (rnn.py rnn_size 256)
    wm_mixtures: int = 5  # rnn.py num_mixture 5 (Gaussians per z dimension)
    wm_rnn_lr: float = 1e-3  # rnn.py learning_rate 0.001 (Adam)
    wm_rnn_batch: int = 100  # rnn.py batch_size 100
    wm_rnn_seq: int = 999  # rnn.py max_seq_len 1000 frames -> 999 transitions
    wm_rnn_steps: int = 4000  # rnn.py num_steps 4000 updates
    wm_rnn_clip: float = 1.0  # rnn.py grad_clip 1.0
    # --- C by CMA-ES ----------------------------------------------------------------------------------------
    wm_popsize: int = 64  # paper §3: population 64
    wm_cma_rollouts: int = 16  # paper §3: each candidate's fitness is its mean return over 16 rollouts
    wm_cma_sigma: float = 0.1  # carracing/train.py sigma_init 0.1
    # Cut each candidate's rollout after this many agent steps (its return so far is the fitness); 0 = whole
    # episodes, as the paper. Ours: a CPU budget for CMA-ES in the real env (CarRacing's 1,000-step episodes).
    wm_cma_steps: int = 0
    # hardmaru/WorldModelsExperiments carracing/README: about 200 generations (about 4 days on 64 cores) reach
    # about 890 (shared/reference/dreamer-implementations.md §7).
    wm_generations: int = 200
    wm_workers: int = 0  # processes evaluating candidates; 0 = one per CPU core (paper: 64 cores)
    # --- C by PPO (Schulman et al. 2017, arXiv:1707.06347, Table 3, the MuJoCo setting) ---------------------
    wm_ppo_lr: float = 3e-4  # Adam stepsize 3e-4
    wm_ppo_horizon: int = 2048  # horizon T 2048 env steps per iteration (over all parallel envs here)
    wm_ppo_envs: int = 1  # parallel envs (Table 3: one; Atari Table 5: 8)
    wm_ppo_epochs: int = 10  # epochs 10
    wm_ppo_minibatch: int = 64  # minibatch size 64
    wm_ppo_gamma: float = 0.99  # discount 0.99
    wm_ppo_lambda: float = 0.95  # GAE lambda 0.95
    wm_ppo_clip: float = 0.2  # clipping epsilon 0.2
    wm_ppo_ent: float = 0.0  # entropy coefficient: 0 (MuJoCo); Atari Table 5: 0.01
    wm_ppo_vf: float = 0.5  # value-loss coefficient c1 (Atari Table 5: 1; stable-baselines3 default 0.5)
    wm_ppo_iterations: int = 488  # 1e6 timesteps / 2048 (Table 3's MuJoCo budget)


# Presets (merged into ``xdreamer.config.PRESETS``); only numbers shrink, as every preset of the package.
PRESETS: dict[str, dict[str, Any]] = {
    # The paper's CarRacing setup: the field defaults above. ``--preset worldmodels`` picks the member.
    "worldmodels": {"algo": "worldmodels"},
    # CarRacing on a 2-core CPU: 1/50 of the data, a quarter of the population, the same architecture.
    "worldmodels-cpu": {
        "algo": "worldmodels", "wm_rollouts": 200, "wm_vae_epochs": 3, "wm_rnn_batch": 16, "wm_rnn_seq": 100,
        "wm_rnn_steps": 1000, "wm_popsize": 16, "wm_cma_rollouts": 4, "wm_generations": 50,
        "wm_ppo_iterations": 100, "eval_episodes": 5,
    },
    # Seconds per stage on the toy games (tests, smoke runs): narrower nets, a few updates, a tiny population.
    "worldmodels-debug": {
        "algo": "worldmodels", "wm_rollouts": 40, "wm_vae_depth": 8, "wm_vae_batch": 16, "wm_vae_lr": 1e-3,
        "wm_vae_epochs": 2, "wm_vae_output": "linear", "wm_rnn": 64, "wm_rnn_batch": 16, "wm_rnn_seq": 32,
        "wm_rnn_steps": 150,
        "wm_popsize": 8, "wm_cma_rollouts": 2, "wm_generations": 3, "wm_workers": 1,
        "wm_ppo_horizon": 256, "wm_ppo_envs": 4, "wm_ppo_minibatch": 64, "wm_ppo_epochs": 4,
        "wm_ppo_iterations": 3, "wm_ppo_ent": 0.01, "eval_episodes": 3,
    },
}

# Fields a resumed run may change (with ``xdreamer.training.RUNTIME_KEYS``): how fast, not what is learnt.
RUNTIME_KEYS = ("wm_workers",)


def schema_rules(Int: Callable[..., Any], Float: Callable[..., Any], Choice: Callable[..., Any],
                 Bool: Any) -> dict[str, Any]:
    """The range of every field above, built with ``xdreamer.schema``'s rule constructors (passed in, so this
    module does not import pydantic). Caps bound what a hostile config.json can make the toolkit allocate."""
    rate = Float(0.0, 1.0, lo_open=True)
    count = Int(1, 10**9)
    return {
        "wm_controller": Choice(*CONTROLLERS),
        "wm_dream": Bool,
        "wm_temperature": Float(0.0, 100.0, lo_open=True),  # 0 would divide the mixture logits by zero
        "wm_rollouts": count,
        "wm_iterations": Int(1, 1000),
        "wm_explore": Float(0.0, 1.0),
        "wm_z": Int(1, 1024),
        "wm_vae_depth": Int(1, 512),  # the last conv has 8 x depth channels
        "wm_vae_lr": rate,
        "wm_vae_batch": Int(1, 4096),
        "wm_vae_epochs": Int(0, 100_000),
        "wm_vae_output": Choice("sigmoid", "linear"),  # 0: the stage keeps V untrained (an ablation, cf. ctallec's M)
        "wm_kl_tolerance": Float(0.0, 100.0),
        "wm_rnn": Int(1, 8192),
        "wm_mixtures": Int(1, 64),
        "wm_rnn_lr": rate,
        "wm_rnn_batch": Int(1, 4096),
        "wm_rnn_seq": Int(1, 100_000),
        "wm_rnn_steps": Int(0, 10**9),
        "wm_rnn_clip": Float(0.0, lo_open=True),
        "wm_popsize": Int(2, 100_000),  # CMA-ES needs two candidates to rank
        "wm_cma_rollouts": count,
        "wm_cma_sigma": Float(0.0, 100.0, lo_open=True),
        "wm_cma_steps": Int(0, 10**9),
        "wm_generations": Int(0, 10**9),
        "wm_workers": Int(0, 1024),
        "wm_ppo_lr": rate,
        "wm_ppo_horizon": Int(1, 10**8),
        "wm_ppo_envs": Int(1, 1024),
        "wm_ppo_epochs": Int(1, 10_000),
        "wm_ppo_minibatch": Int(1, 10**8),
        "wm_ppo_gamma": Float(0.0, 1.0),
        "wm_ppo_lambda": Float(0.0, 1.0),
        "wm_ppo_clip": Float(0.0, 10.0, lo_open=True),
        "wm_ppo_ent": Float(0.0, 100.0),
        "wm_ppo_vf": Float(0.0, 1e4),
        "wm_ppo_iterations": Int(0, 10**9),
    }

"""A real learning run on CPU (issue 2): `--preset small toy` on the diagnostic game, from scratch.

Measured on this project's 2-core CPU (README "Learning on CPU"): after about 300 updates the actor's mode has
learned the best ball-blind strategy of `toy:catch-lanes` -- keep the paddle under the middle lane, which catches a
third of the balls (return -1.67 in expectation); by about 1,000 updates the world model has learned the 4x4 ball
and the actor follows it. This test trains 2,000 updates and asserts a return that no ball-blind policy reaches in
expectation, i.e. the agent sees the ball and acts on it. (`toy:catch`, where the ball may spawn in any of 61
columns, is not learnt by these budgets: README "Known limitations".)
"""

import pytest

import xdreamer
from xdreamer.config import build_config
from xdreamer.evaluation import evaluate
from xdreamer.training import make_env, train

LEARN_STEPS = 5_000  # 1,000 prefill steps + 4,000 steps at train_every 2 -> about 2,000 updates
EVAL_EPISODES = 50
# Measured here (2-core CPU, torch 2.13.0+cpu), 50 evaluation episodes (seed 7) after 5,000 steps:
#   seed 0: trained 1.96 ± 1.89, seed 1: 1.40 ± 2.00, seed 2: 5.00 ± 0.00; random -2.28 ± 2.03 on the same
#   episodes (-2.87 ± 1.74 over 500 episodes, seed 0). At 3,500 steps seed 2 was still -1.96, hence 5,000.
# Since RSSM.observe draws the prior's samples after the posterior's (2026-12-01; other random draws, same
# distribution): seed 0 1.96 ± 1.89, seed 1 5.00 ± 0.00 (`xdreamer train --env toy:catch-lanes --preset small
# toy --set steps=5000 seed=S`, then `xdreamer eval RUN --episodes 50 --seed 7`).
# The best ball-blind policy (paddle under the middle lane) returns -1.67 in expectation; over 50 episodes its
# standard error is about 0.28 (per-episode std about 2), so -0.5 is 4 standard errors above it, and 1.9 below
# the lowest measured run.
BLIND_OPTIMUM = -1.67
MIN_RETURN = -0.5


@pytest.mark.slow
def test_small_toy_preset_learns_to_see_the_ball(tmp_path):
    cfg = build_config(["small", "toy"], {"env": "toy:catch-lanes", "steps": LEARN_STEPS, "seed": 0,
                                          "eval_every": 10**9, "video_every": 10**9})
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.updates >= 1_950
    agent = xdreamer.load(tmp_path / "run")
    env = make_env(agent.cfg)
    trained = evaluate(agent, env, EVAL_EPISODES, seed=7)
    rand = evaluate(None, env, EVAL_EPISODES, seed=7, policy="random")
    print(f"trained {trained.mean:.2f} ± {trained.std:.2f}, random {rand.mean:.2f} ± {rand.std:.2f}")
    assert trained.mean >= MIN_RETURN > BLIND_OPTIMUM, (trained.mean, rand.mean)
    assert trained.mean > rand.mean, (trained.mean, rand.mean)  # and beats random on the very same episodes

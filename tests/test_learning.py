"""A real learning run on CPU (issue 2): `--preset small toy` on `toy:catch`, from scratch.

`toy:catch` drops a 4x4 ball in any of 61 columns. A policy that does not see the ball catches it only when it
happens to fall onto the 12-px paddle, 12 of the 61 columns wherever the paddle waits: 5 x (2 x 12/61 - 1) = -3.03
per episode in expectation; the random policy measures about the same (-2.84 ± 2.15 on the test's 50 episodes).
So a mean return well above that means the agent sees the ball and acts on it.

Measured on this project's 2-core CPU (docs/training.md "Learning on CPU"): the toy preset's world model draws the ball
after about 1,000 updates (its batch image loss falls below the undrawn ball's 8) and the actor then follows it.
This depends on the preset's `embed_norm=batch`: without it the posterior collapses to one code before it
carries the ball and the same run stays blind (docs/faithfulness.md "Known limitations", docs/experiments/bottleneck_ball.py).

Its time limit follows the machine's measured speed (#31): on a busy 2-core machine a newcomer's run hit
pytest's fixed 900 s at step 3,250 of 5,000, where alone it takes 290 s. See ``calibrated_time_limit``.
"""

import math

import pytest

import xdreamer
from xdreamer.config import build_config
from xdreamer.evaluation import evaluate, lockstep_envs
from xdreamer.training import make_env, train

LEARN_STEPS = 5_000  # 1,000 prefill steps + 4,000 steps at train_every 2 -> about 2,000 updates
EVAL_EPISODES = 50
# Measured here (2-core Intel Xeon VM, torch 2.13.0+cpu, 2026-12-01), 50 evaluation episodes (seed 7) after
# 5,000 steps (`xdreamer train --env toy:catch --preset small toy --set steps=5000 seed=S`, then
# `xdreamer eval RUN --episodes 50 --seed 7`): seed 0 2.20 ± 1.79, seed 1 3.72 ± 1.59, seed 2 -0.48 ± 1.99 (its
# world model draws the ball, image loss 2.7, but its actor catches fewer balls by then); random -2.84 ± 2.15 on the same
# episodes. Before `embed_norm=batch` the same preset gave -3.80 ± 1.33 (6,000 steps, 10 episodes; checkpoints/catch).
# The ball-blind optimum is -3.03; over 50 episodes the standard error of a mean is about 0.28 (per-episode std
# about 2), so -1.5 is over 5 standard errors above it and 1.0 below the lowest measured seed (another CPU's float
# rounding can turn seed 0's run into one like another seed's).
BLIND_OPTIMUM = 5 * (2 * 12 / 61 - 1)
MIN_RETURN = -1.5

# The time limit (#31). Measured alone on this project's 2-core machine: the whole test REFERENCE_TEST_S (issue #31)
# and the calibration update REFERENCE_UPDATE_S (median of 5 `small+toy` updates of `bench.bench_agent` after one
# warm-up; 0.244-0.265 s over four rounds, 2026-12-02, torch 2 threads; 2.0-2.6 s while another test suite ran).
# The test is ~2,000 updates plus env steps and 100 evaluation episodes, all slowed alike by a slower or busier
# machine, so its expected time is REFERENCE_TEST_S scaled by the measured update time.
# REFERENCE_TEST_S was 290 s until 2026-12-03, fewer than its own ~1,995 updates x 0.25 s: the test then took 1.5-2x
# its expected time (CI: 686 s at 0.376 s per calibration update, 765 s at 0.334 s; alone on the idle 2-core EPYC:
# 763 s at 0.349 s), leaving 1.5x to the limit. Now from that idle run: 763 s x 0.25 / 0.349 = 547 s.
REFERENCE_UPDATE_S = 0.25
REFERENCE_TEST_S = 550.0
TIME_LIMIT_MULTIPLE = 3.0  # room for load that starts after the calibration
TIME_LIMIT_FLOOR_S = 900.0  # never below the suite's own --timeout (pyproject.toml)


def time_limit_s(update_s: float) -> tuple[float, float]:
    """``(expected, limit)`` seconds of the learning test on a machine whose calibration update takes
    ``update_s`` seconds: the reference run scaled by the speed ratio, and a multiple of that, at least the floor."""
    if not (math.isfinite(update_s) and update_s > 0):
        raise ValueError(f"calibration update time must be finite and > 0, got {update_s!r}")
    expected = REFERENCE_TEST_S * update_s / REFERENCE_UPDATE_S
    return expected, max(TIME_LIMIT_FLOOR_S, TIME_LIMIT_MULTIPLE * expected)


@pytest.fixture
def calibrated_time_limit(request) -> float:
    """Time a few toy-preset updates now, on this machine under its current load, and make the extrapolated limit
    this test's pytest-timeout.

    How: pytest-timeout reads a test's ``timeout`` marker twice, when the test's protocol starts (for a limit over
    setup + call + teardown) and again when the call starts (for ``func_only=True``). The test's static marker is
    ``func_only=True``, so nothing is armed while this fixture runs (a few seconds); the marker it puts first on the
    item is the one pytest-timeout then arms for the call. A static limit cannot do this, and a limit set at
    collection would be measured minutes before the test, under another load."""
    from xdreamer.bench import bench_agent, min_and_median_s

    agent, batch = bench_agent("small+toy")
    _, update_s = min_and_median_s(lambda: agent.train_step(batch()), repeats=5)
    expected, limit = time_limit_s(update_s)
    request.node.add_marker(pytest.mark.timeout(limit, func_only=True), append=False)
    line = (f"{request.node.name}: {update_s:.3f} s per calibration update (reference {REFERENCE_UPDATE_S:.3f} s), "
            f"expected {expected:.0f} s, time limit {limit:.0f} s")
    request.node.user_properties.append(("time limit", line))  # tests/conftest.py prints it in the summary
    print(line)
    return limit


@pytest.mark.slow
@pytest.mark.timeout(TIME_LIMIT_FLOOR_S, func_only=True)  # replaced by calibrated_time_limit's, see there
def test_small_toy_preset_learns_to_see_the_ball(tmp_path, calibrated_time_limit):
    cfg = build_config(["small", "toy"], {"env": "toy:catch", "steps": LEARN_STEPS, "seed": 0,
                                          "eval_every": 10**9, "video_every": 10**9})
    assert cfg.embed_norm == "batch"
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.updates >= 1_950
    agent = xdreamer.load(tmp_path / "run")
    env = make_env(agent.cfg)
    with lockstep_envs(lambda: make_env(agent.cfg), EVAL_EPISODES) as more:  # as `xdreamer eval` (5x faster here)
        trained = evaluate(agent, env, EVAL_EPISODES, seed=7, more_envs=more)
    rand = evaluate(None, env, EVAL_EPISODES, seed=7, policy="random")
    print(f"trained {trained.mean:.2f} ± {trained.std:.2f}, random {rand.mean:.2f} ± {rand.std:.2f}")
    assert trained.mean >= MIN_RETURN > BLIND_OPTIMUM, (trained.mean, rand.mean)
    assert trained.mean > rand.mean, (trained.mean, rand.mean)  # and beats random on the very same episodes


def test_time_limit_follows_the_measured_speed():
    """The limit is a pure function of the calibration: at the reference speed 3x the reference time, on a slower or
    busier machine proportionally more, so a 2x slower machine passes with room to spare."""
    expected, limit = time_limit_s(REFERENCE_UPDATE_S)
    assert expected == pytest.approx(REFERENCE_TEST_S)
    assert limit == max(TIME_LIMIT_FLOOR_S, TIME_LIMIT_MULTIPLE * REFERENCE_TEST_S)
    for factor in (2.0, 4.8, 10.0):  # 4.8x: the newcomer's busy machine (3,250 steps in 900 s, #31)
        slow_expected, slow_limit = time_limit_s(factor * REFERENCE_UPDATE_S)
        assert slow_expected == pytest.approx(factor * REFERENCE_TEST_S)
        assert slow_limit >= max(TIME_LIMIT_FLOOR_S, TIME_LIMIT_MULTIPLE * factor * REFERENCE_TEST_S) - 1e-6
        assert slow_limit > 2 * slow_expected  # a run that also slows down 2x after the calibration still passes
    assert time_limit_s(4.8 * REFERENCE_UPDATE_S)[1] > 900 * 5_000 / 3_250  # the newcomer's run would have passed
    assert time_limit_s(0.1 * REFERENCE_UPDATE_S)[1] == TIME_LIMIT_FLOOR_S  # a fast machine keeps the floor
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            time_limit_s(bad)

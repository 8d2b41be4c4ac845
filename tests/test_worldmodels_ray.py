"""World Models' CMA-ES candidates on Ray (``xdreamer train --ray`` / ``--ray-address``, issue #30): the same fitness
as in-process (real env; the dream routes its tasks alike); Dreamer runs refuse the flag in one line."""

from __future__ import annotations

import numpy as np
import pytest

from test_worldmodels import agent_for

pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (an Evaluator joins a running Ray and leaves it running)."""
    from xdreamer.rayutil import start

    ray, started = start(None, num_cpus=2)
    yield ray
    if started:
        ray.shutdown()


@pytest.mark.parametrize("dream", [False], ids=["real-env"])  # the dream routes its tasks the same way
def test_ray_actors_give_the_in_process_fitness(dream, local_ray):
    from xdreamer.worldmodels.cmaes import Evaluator

    agent = agent_for(wm_cma_rollouts=2, wm_dream=dream)
    starts = None
    if dream:  # start latents of "recorded" first frames: any (mean, log-variance) pairs will do here
        starts = np.random.default_rng(1).normal(0, 1, (5, 2, agent.cfg.wm_z)).astype(np.float32)
    solutions = np.random.default_rng(0).normal(0, 0.5, (4, agent.controller.get_flat().numel()))
    local = Evaluator(agent, agent.cfg.replace(wm_workers=1), starts)
    remote = Evaluator(agent, agent.cfg.replace(wm_workers=2), starts, ray="local")
    try:
        a, b = local(solutions, 0), remote(solutions, 0)
    finally:
        local.close(), remote.close()
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert local.env_steps == remote.env_steps and len(set(a.round(6))) > 1


def test_ray_flags_are_for_world_models_and_a_bad_address_is_one_line(tmp_path, capsys):
    from xdreamer.cli import main

    assert main(["train", "--preset", "debug", "--env", "toy:catch", "--ray", "--logdir", str(tmp_path / "r")]) == 2
    assert "--ray evaluates World Models' CMA-ES candidates" in capsys.readouterr().err
    from xdreamer.worldmodels.cmaes import Evaluator

    agent = agent_for(wm_cma_rollouts=1)
    with pytest.raises(ValueError, match="--ray-address must be HOST:PORT"):
        Evaluator(agent, agent.cfg.replace(wm_workers=1), None, ray="nowhere")

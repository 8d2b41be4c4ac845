"""The paper-size what-if and IntegratedGradients with and without ``configure_cpu`` (kept freed memory).

    python docs/experiments/whatif_malloc.py plain   # glibc's malloc defaults (before the CLI configured it)
    python docs/experiments/whatif_malloc.py kept    # configure_cpu(), as every CLI command but `app` now does

Run the two in separate processes (mallopt is process-wide and cannot be undone). Times ``xdreamer bench``'s
what-if (18 branches x 15 steps, decoded) and one IntegratedGradients frame on a fresh paper-size agent: mean and
min of 5 calls after a warm-up, and the minor page faults of the last call.
"""

import resource
import sys
import time

import numpy as np
import torch

from xdreamer.agent import Agent
from xdreamer.config import build_config
from xdreamer.envs import EnvSpec
from xdreamer.explain.dreams import dream
from xdreamer.explain.saliency import saliency
from xdreamer.training import configure_cpu


def timed(fn, repeats: int = 5) -> str:
    fn()
    times, faults = [], 0
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    return f"mean {np.mean(times):.3f} s, min {min(times):.3f} s ({faults} minor page faults in the last call)"


if __name__ == "__main__":
    if sys.argv[1:] not in (["plain"], ["kept"]):
        sys.exit(__doc__)
    if sys.argv[1] == "kept":
        configure_cpu()
    cfg = build_config(["atari"], {})
    spec = EnvSpec(id="atari:Pong", obs_shape=(1, 64, 64), discrete=True, num_actions=6,
                   action_names=("NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"), object_names=(),
                   can_branch=True, max_steps=cfg.time_limit)
    torch.manual_seed(0)
    agent = Agent(cfg, spec, device="cpu")
    agent.eval()
    start = agent.wm.rssm.initial(1).map(lambda x: x.expand(18, *x.shape[1:]).contiguous())
    prefix = torch.nn.functional.one_hot(torch.arange(18) % 6, 6).float()[:, None]
    frame = np.random.default_rng(0).integers(0, 256, (1, 64, 64), dtype=np.uint8)
    print(sys.argv[1], "what-if:", timed(lambda: dream(agent, start, 15, prefix=prefix, decode=True)))
    print(sys.argv[1], "IntegratedGradients:",
          timed(lambda: saliency(agent, frame, None, None, method="integrated_gradients")))

import os

from xdreamer.threads import share_cpu

share_cpu()  # passive OpenMP waiting before torch loads, here and in the CLI/app processes tests start (#31)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("MUJOCO_GL", "egl")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def debug_cfg():
    from xdreamer.config import build_config

    return build_config(["debug"], {"env": "toy:catch"})


@pytest.fixture
def toy_spec():
    from xdreamer.envs import make

    env = make("toy:catch")
    spec = env.spec
    env.close()
    return spec


def random_batch(spec, batch: int, length: int, seed: int = 0) -> dict:
    """A replay-shaped batch of random data (uint8 images, int actions)."""
    rng = np.random.default_rng(seed)
    is_first = np.zeros((batch, length), bool)
    is_first[:, 0] = True
    is_terminal = np.zeros((batch, length), bool)
    is_terminal[:, -1] = rng.random(batch) < 0.5
    action = (rng.integers(0, spec.num_actions, (batch, length)).astype(np.int32) if spec.discrete
              else rng.uniform(-1, 1, (batch, length, spec.num_actions)).astype(np.float32))
    return {
        "image": rng.integers(0, 256, (batch, length, *spec.obs_shape), dtype=np.uint8),
        "action": action,
        "reward": rng.normal(size=(batch, length)).astype(np.float32),
        "is_first": is_first,
        "is_last": is_terminal.copy(),
        "is_terminal": is_terminal,
    }


def analysis_commands(ckpt, trace, out, saliency_method: str = "saliency") -> list[list[str]]:
    """The CLI's analysis entry points on a checkpoint of any member (issue #29): record a 10-step trace, then
    whatif (dream + grounded), saliency with the latent attribution, highlights, report and audit from it."""
    ckpt, trace = str(ckpt), str(trace)
    return [["record", ckpt, "--episodes", "1", "--max-steps", "10", "--out", trace, "--no-progress"],
            ["whatif", ckpt, "--trace", trace, "--step", "3", "--horizon", "4", "--grounded",
             "--json", str(out / "w.json"), "--no-progress"],
            ["saliency", ckpt, "--trace", trace, "--step", "4", "--method", saliency_method, "--latent",
             "--out", str(out / "s.png"), "--json", str(out / "s.json")],
            ["highlights", ckpt, "--trace", trace, "--k", "2", "--horizon", "3", "--min-gap", "2",
             "--json", str(out / "h.json"), "--no-progress"],
            ["report", ckpt, "--episodes", "1", "--max-steps", "20", "--no-clips", "--out", str(out / "report"),
             "--no-progress"],
            ["audit", ckpt, "--trace", trace, "--steps", "2", "5", "--methods", "saliency", "latent_ig",
             "--out", str(out / "audit"), "--no-progress"]]


def pytest_terminal_summary(terminalreporter):
    """Print the lines tests record as the user property "time limit" (the learning test's calibrated limit,
    tests/test_learning.py, #31), so they show in every run, not only with -s or on failure."""
    lines = dict.fromkeys(value for reports in terminalreporter.stats.values() for report in reports
                          for name, value in getattr(report, "user_properties", ()) if name == "time limit")
    if lines:
        terminalreporter.section("time limits")
        for line in lines:
            terminalreporter.write_line(line)

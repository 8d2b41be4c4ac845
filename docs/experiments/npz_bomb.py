"""Peak memory of reading a decompression-bomb trace: numpy's ``np.load`` (what ``load_trace`` did before
issue #28) against ``xdreamer whatif --trace BOMB`` (the bounded reader, ``xdreamer.npzfile``).

    python docs/experiments/npz_bomb.py [GIB]     # default 1: a ~1 MB file that inflates to GIB GiB

Builds the bomb from a 10-step trace of ``checkpoints/catch-lanes`` (``tests/hostile_files.py``), then runs
each reader in its own process and prints the file size, the exit status, the peak RSS of the process (MB)
and its wall time as one JSON object.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

PEAK = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); print(r.returncode); "
        "print((r.stderr.strip().splitlines() or [''])[-1])")
NP_LOAD = "import numpy as np, sys; z = np.load(sys.argv[1], allow_pickle=False); [z[k] for k in z.files]"


def measure(command: list[str]) -> dict:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PEAK, *command], capture_output=True, text=True, check=True)
    rss_kb, status, last = (out.stdout.split("\n", 2) + [""])[:3]
    return {"peak_rss_mb": round(int(rss_kb) / 1024, 1), "status": int(status), "stderr": last.strip(),
            "wall_s": round(time.perf_counter() - start, 2)}


def main() -> None:
    from hostile_files import make_bomb

    from xdreamer import checkpoint
    from xdreamer.envs import make
    from xdreamer.explain import record, save

    gib = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    with tempfile.TemporaryDirectory() as tmp:
        agent = checkpoint.load(REPO / "checkpoints" / "catch-lanes", device="cpu")
        env = make(agent.cfg.env)
        trace = save(record(agent, env, episodes=1, seed=0, max_steps=10), pathlib.Path(tmp) / "catch.npz")
        env.close()
        bomb = make_bomb(pathlib.Path(tmp) / "bomb.npz", trace, frames=int(gib * (1 << 30)) // 4096)
        result = {"bomb_file_mb": round(bomb.stat().st_size / 2**20, 2), "inflates_to_gib": gib,
                  "np_load": measure([sys.executable, "-c", NP_LOAD, str(bomb)]),
                  "xdreamer_whatif": measure([sys.executable, "-m", "xdreamer", "whatif",
                                              str(REPO / "checkpoints" / "catch-lanes"), "--trace", str(bomb),
                                              "--step", "0", "--no-progress"])}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

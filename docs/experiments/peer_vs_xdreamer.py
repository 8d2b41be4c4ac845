"""Issue 7's peer (sheeprl 0.8.4 ``dreamer_v2``) against xdreamer's ``atari`` preset on this machine, in rounds.

    python docs/experiments/peer_vs_xdreamer.py PEER_PYTHON [ROUNDS] [OUT]   # default 2 rounds, peer_vs_xdreamer.json

PEER_PYTHON is the interpreter of an environment with sheeprl installed (see ``peer_sheeprl.py``; e.g.
``/tmp/peer/bin/python``). Each round runs ``peer_sheeprl.py 3 5`` and then ``paper_updates.py 4 5 json`` (3 and 4
warm-up updates, 5 timed, float32, same batch shapes), each in a fresh process, one after the other (never at the
same time: they share the cores). Writes every run's numbers and the per-round ratio of seconds per update
(peer / xdreamer) to OUT, atomically. About 2.5 minutes per round on a 2-core CPU.
"""
import json
import pathlib
import subprocess
import sys

from xdreamer.checkpoint import atomic_write_text

HERE = pathlib.Path(__file__).resolve().parent


def last_json(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    peer_python = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    out = pathlib.Path(sys.argv[3] if len(sys.argv) > 3 else "peer_vs_xdreamer.json")
    runs = []
    for r in range(rounds):
        peer = last_json([peer_python, str(HERE / "peer_sheeprl.py"), "3", "5"])
        ours = last_json([sys.executable, str(HERE / "paper_updates.py"), "4", "5", "json"])
        ratio = peer["seconds_per_update"] / ours["seconds_per_update"]
        runs.append({"round": r + 1, "peer": peer, "xdreamer": ours, "ratio": round(ratio, 3)})
        print(f"round {r + 1}: peer {peer['seconds_per_update']:.2f} s, xdreamer {ours['seconds_per_update']:.2f} s, "
              f"{ratio:.2f}x", flush=True)
    doc = {"peer": "sheeprl 0.8.4 dreamer_v2 (docs/experiments/peer_sheeprl.py 3 5)",
           "xdreamer": "atari preset, float32 (docs/experiments/paper_updates.py 4 5 json)", "runs": runs}
    atomic_write_text(out, json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

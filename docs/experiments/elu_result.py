"""ELU whose backward uses its result (``nets.ELU``, in place) against ``F.elu``, inside whole updates.

    python docs/experiments/elu_result.py ROUNDS [PRESET]

Alternates the two in one process, update by update (``bench.alternating_updates``), at paper size by default
or at ``PRESET`` (e.g. ``small+toy``, the learning test's preset), float32. Prints world model, behaviour and both.
"""

import sys

from xdreamer import bench, nets


def use(in_place: bool):
    def switch(agent) -> None:
        nets.ELU.in_place = in_place
    return switch


if __name__ == "__main__":
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    preset = sys.argv[2] if len(sys.argv) > 2 else "atari"
    try:
        bench.alternating_updates({"F.elu": use(False), "ELU in place": use(True)}, rounds, preset,
                                  warmup=6 if preset == "atari" else 20)
    finally:
        nets.ELU.in_place = True

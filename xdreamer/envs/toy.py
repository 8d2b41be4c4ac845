"""Built-in diagnostic game `toy:catch` / `toy:catch-pixel` (pure numpy, fully deterministic given a seed).

A ball falls from the top of a 64x64 grayscale frame, 3 px per agent step; a 12x3 px paddle on rows 60..62 moves
3 px per step (actions NOOP, LEFT, RIGHT). When the ball reaches the paddle (top-left y >= 54, i.e. the 4x4 ball's
bottom edge is at rows 57..59, just above the paddle) the catch is resolved: reward +1 if the ball's centre column
lies within the paddle span, else -1. On the next step a new ball spawns at the top. After 5 balls the episode ends
with `is_last = is_terminal = True` (at most 94 agent steps).

`toy:catch` draws a 4x4 ball; `toy:catch-pixel` draws a single pixel at the 4x4 ball's centre (col x+2, row y+2,
"centre" rounded half up). Both games consume the same RNG stream and use the same catch rule (the centre column
x+2 in [paddle_x, paddle_x+11]), so for a given seed and action sequence they produce identical rewards and flags:
a controlled, minutes-on-CPU version of the one-pixel-ball failure (VideoPinball, Venture).

`toy:catch-lanes` is `toy:catch` with the ball spawning in one of 3 fixed lanes (ball columns 10, 30, 50) instead of
any column: the same game with far fewer distinct ball positions. A ball-blind policy can beat random here (a paddle
kept under the middle lane catches a third of the balls). It was the game of the end-to-end learning test while the
world model, without `embed_norm`, learnt the ball only here: world-model-only updates at the toy preset with
`embed_norm=none` drew it partly after 1,000 updates (held-out ball-pixel MSE 0.83) and better after 1,500 (0.69;
`python docs/experiments/world_model_ball.py 1500 env=toy:catch-lanes embed_norm=none`), where `toy:catch`'s ball
stays at 1.0, and `make("toy:catch-lanes", lanes=N)` with 6 or 16 evenly spaced lanes leaves it out too (0.96-1.0
through 1,500 updates). With the toy preset's `embed_norm=batch` `toy:catch` itself is learnt
(`tests/test_learning.py`). `lanes=N` is an experiment knob of `make` (not a config field); N lanes are spread
evenly over columns 0..60, and `lanes=61` is `toy:catch`'s RNG stream and game.

`toy:catch-pixel-lanes` is `toy:catch-lanes` with `toy:catch-pixel`'s one-pixel ball: with `toy:catch-lanes` it is
the controlled ball-size contrast at a budget where the 4x4 ball is learnt (same RNG stream, rewards and flags for
the same seed and actions; only the drawn ball differs).

Per ball spawn the RNG draws, in order: column x in [0, 60], start row y in [0, 4], drift dx in {-1, 0, 1}. The drift
is used only with `drift=True` (default off: straight down); when on, the ball bounces off the side walls.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .base import Env, EnvSpec, Obs, State, array_to_rng, box, check_int_fields, make_obs, rng_to_array

__all__ = ["CatchEnv", "make_toy", "TOY_GAMES"]

SIZE = 64
BALL = 4  # side of the big ball
PADDLE_W = 12
PADDLE_H = 3
PADDLE_Y = 60  # rows 60..62
PADDLE_SPEED = 3
FALL_SPEED = 3
RESOLVE_Y = 54  # ball top-left row at which the catch is resolved
BALLS_PER_EPISODE = 5
MAX_STEPS = 100
ACTION_NAMES = ("NOOP", "LEFT", "RIGHT")

TOY_GAMES = ("catch", "catch-pixel", "catch-lanes", "catch-pixel-lanes")
LANES = (10, 30, 50)  # toy:catch-lanes ball columns (top-left x): centres 12, 32, 52


def lane_columns(count: int) -> tuple[int, ...]:
    """Ball columns (top-left x) of a ``lanes=count`` game: 3 gives :data:`LANES`, more spread evenly over 0..60."""
    if count == len(LANES):
        return LANES
    if not 1 <= count <= SIZE - BALL + 1:
        raise ValueError(f"toy lanes must be in [1, {SIZE - BALL + 1}], got {count}")
    if count == 1:
        return ((SIZE - BALL) // 2,)
    return tuple(round(i * (SIZE - BALL) / (count - 1)) for i in range(count))


# Integer state vector layout (stored as int64 in get_state()).
_FIELDS = ("ball_x", "ball_y", "ball_dx", "paddle_x", "balls_done", "steps", "need_spawn", "done", "started")
# Public name of that layout: ``explain.objects`` moves and removes objects through it (issue #27).
STATE_FIELDS = _FIELDS


class CatchEnv(Env):
    """The catch game; `pixel=True` draws the ball as a single pixel."""

    def __init__(self, pixel: bool = False, seed: int | None = None, drift: bool = False, balls: int = BALLS_PER_EPISODE,
                 lanes: bool | int = False):
        if balls < 1 or balls > 5:
            raise ValueError(f"toy:catch balls must be in [1, 5] to keep episodes < {MAX_STEPS} steps, got {balls}")
        self.pixel = bool(pixel)
        self.drift = bool(drift)
        self.balls = int(balls)
        # lanes: False (any column), True (the 3 LANES) or a lane count (an experiment knob, see the module docstring)
        self.lane_x = () if lanes is False else lane_columns(len(LANES) if lanes is True else int(lanes))
        name = "toy:catch" + ("-pixel" if pixel else "") + ("-lanes" if self.lane_x else "")
        self.spec = EnvSpec(
            id=name,
            obs_shape=(1, SIZE, SIZE),
            discrete=True,
            num_actions=len(ACTION_NAMES),
            action_names=ACTION_NAMES,
            object_names=("ball", "paddle"),
            can_branch=True,
            max_steps=MAX_STEPS,
        )
        self._rng = np.random.default_rng(seed)
        self._s = dict.fromkeys(_FIELDS, 0)

    # ------------------------------------------------------------------ dynamics
    def _spawn(self) -> None:
        s = self._s
        if self.lane_x:
            s["ball_x"] = self.lane_x[int(self._rng.integers(0, len(self.lane_x)))]
        else:
            s["ball_x"] = int(self._rng.integers(0, SIZE - BALL + 1))
        s["ball_y"] = int(self._rng.integers(0, 5))
        dx = int(self._rng.integers(-1, 2))
        s["ball_dx"] = dx if self.drift else 0
        s["need_spawn"] = 0

    def reset(self, seed: int | None = None) -> Obs:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        s = self._s
        s.update(dict.fromkeys(_FIELDS, 0))
        s["paddle_x"] = (SIZE - PADDLE_W) // 2
        s["started"] = 1
        self._spawn()
        return self._obs(0.0, is_first=True)

    def step(self, action: Any) -> Obs:
        a = self._check_action(action)
        s = self._s
        if not s["started"] or s["done"]:
            raise RuntimeError(f"env {self.spec.id}: call reset() before step() (episode over or not started)")
        move = (0, -PADDLE_SPEED, PADDLE_SPEED)[a]
        s["paddle_x"] = int(np.clip(s["paddle_x"] + move, 0, SIZE - PADDLE_W))
        s["steps"] += 1
        reward = 0.0
        terminal = False
        if s["need_spawn"]:
            self._spawn()
        else:
            s["ball_y"] += FALL_SPEED
            x = s["ball_x"] + s["ball_dx"]
            if x < 0 or x > SIZE - BALL:  # bounce off the side walls
                s["ball_dx"] = -s["ball_dx"]
                x = s["ball_x"] + s["ball_dx"]
            s["ball_x"] = x
            if s["ball_y"] >= RESOLVE_Y:
                centre = s["ball_x"] + BALL // 2
                caught = s["paddle_x"] <= centre < s["paddle_x"] + PADDLE_W
                reward = 1.0 if caught else -1.0
                s["balls_done"] += 1
                s["need_spawn"] = 1
                terminal = s["balls_done"] >= self.balls
        truncated = s["steps"] >= MAX_STEPS
        if terminal or truncated:
            s["done"] = 1
        return self._obs(reward, is_last=terminal or truncated, is_terminal=terminal)

    # ------------------------------------------------------------------ rendering
    def _ball_box(self) -> tuple[int, int, int, int]:
        s = self._s
        if self.pixel:
            return s["ball_x"] + BALL // 2, s["ball_y"] + BALL // 2, 1, 1
        return s["ball_x"], s["ball_y"], BALL, BALL

    def _obs(self, reward: float, is_first: bool = False, is_last: bool = False, is_terminal: bool = False) -> Obs:
        s = self._s
        img = np.zeros((1, SIZE, SIZE), dtype=np.uint8)
        bx, by, bw, bh = self._ball_box()
        img[0, by : by + bh, bx : bx + bw] = 255
        px = s["paddle_x"]
        img[0, PADDLE_Y : PADDLE_Y + PADDLE_H, px : px + PADDLE_W] = 255
        objects = {"ball": box(bx, by, bw, bh), "paddle": box(px, PADDLE_Y, PADDLE_W, PADDLE_H)}
        return make_obs(img, reward, is_first, is_last, is_terminal, objects)

    def render(self) -> Obs:
        """Observation of the current state (e.g. after `set_state`), with reward 0 and no flags."""
        return self._obs(0.0)

    # ------------------------------------------------------------------ branching
    def get_state(self) -> State:
        state = self._state_header()
        state["rng"] = rng_to_array(self._rng)
        state["ints"] = np.array([self._s[k] for k in _FIELDS], dtype=np.int64)
        return state

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        self._check_state_header(state, ("rng", "ints"))
        # Every field in the range the game can reach: a trace's state with ball_x = 2**62 would restore and
        # then fail deep inside drawing (issue #28).
        bounds = {"ball_x": (0, SIZE - BALL), "ball_y": (0, SIZE), "ball_dx": (-1, 1), "paddle_x": (0, SIZE - PADDLE_W),
                  "balls_done": (0, self.balls), "steps": (0, MAX_STEPS), "need_spawn": (0, 1), "done": (0, 1),
                  "started": (0, 1)}
        assert tuple(bounds) == _FIELDS
        ints = check_int_fields(self.spec.id, state["ints"], bounds)
        array_to_rng(self._rng, state["rng"])
        self._s = ints


def make_toy(name: str, seed: int | None = None, **overrides: Any) -> CatchEnv:
    """Build `toy:<name>`; overrides: `drift` (bool, default False), `balls` (int, default 5) and, for the
    `-lanes` games, `lanes` (int, default 3: how many evenly spaced ball columns)."""
    if name not in TOY_GAMES:
        raise ValueError(f"unknown toy game 'toy:{name}'; known: {', '.join('toy:' + g for g in TOY_GAMES)}")
    allowed = {"drift", "balls"} | ({"lanes"} if "lanes" in name else set())
    bad = sorted(set(overrides) - allowed)
    if bad:
        raise ValueError(f"toy:{name}: unknown override(s) {bad}; allowed: {sorted(allowed)}")
    lanes = int(overrides.pop("lanes", len(LANES))) if "lanes" in name else False
    return CatchEnv(pixel="pixel" in name, lanes=lanes, seed=seed, **overrides)

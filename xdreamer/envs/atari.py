"""`atari:<Game>`: ALE (ale-py) games with the DreamerV2 preprocessing protocol and RAM object annotations.

`ALE/<Game>-v5` made with `frameskip=1`, sticky actions (`repeat_action_probability`, default 0.25) and the minimal
action set, wrapped in `gymnasium.wrappers.AtariPreprocessing(noop_max=30, frame_skip=4, screen_size=64,
grayscale_obs=True, grayscale_newaxis=True, terminal_on_life_loss=False)` (max-pool of the last two frames, INTER_AREA
resize of the full 210x160 screen, no crop). Episodes are cut (is_last, not terminal) after 27,000 agent steps.

Branching: `get_state()` stores the ALE state cloned *with* its RNG (so sticky actions replay bit-identically),
serialised with `ALEState.serialize()` into a uint8 array (no pickle), the gym env's numpy RNG (used for the
reset no-ops), the preprocessing wrapper's two max-pool frame buffers, lives/game-over flags and our step counter.

Ground-truth objects come from RAM (AtariARI table, Anand et al. 2019). RAM coordinates are not screen pixels; the
affine maps below were measured on ale-py 0.12.1 by running each game with random (or scripted) actions for
1,000-3,000 frames, locating the object in the raw 210x160 RGB screen (by its colour / as the only small connected
component of its colour) and taking the modal offset (or a least-squares fit where the slope is not 1) between
screen position and RAM value. They are approximate: the RAM is read after the last frame of the 4-frame skip while
the image is a max over the last two frames, objects flicker in some games, and the fit can be off by ~1 screen
pixel (~0.4 px at 64x64). Objects outside the play field (e.g. Pong/Breakout ball not in play, which the game
encodes as y=0) are reported as NaN. Boxes are [x, y, w, h] in 64x64 frame coordinates, where a raw screen pixel is
0.4 x 0.305 px (64/160 by 64/210); sizes are reported honestly even when below 1 px.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

from .base import Env, EnvSpec, Obs, State, array_to_rng, box, check_int_fields, make_obs, nan_box, rng_to_array

__all__ = ["AtariEnv", "make_atari", "RAM_OBJECTS", "RAM_EDITS", "RamEdit"]

SCREEN_H, SCREEN_W = 210, 160


def _lin(ram: np.ndarray, idx: int, scale: float, offset: float) -> float:
    return scale * float(ram[idx]) + offset


# Each entry: name -> (function ram -> (x, y) in raw screen pixels, (w, h) in raw screen pixels,
#                      valid play-field box (x0, y0, x1, y1) in raw pixels; outside it the object is absent)
_ObjFn = Callable[[np.ndarray], tuple[float, float]]

RAM_OBJECTS: dict[str, dict[str, tuple[_ObjFn, tuple[float, float], tuple[int, int, int, int]]]] = {
    # Pong, 1,500 random-action frames: ball colour (236,236,236) in rows 34..193:
    #   x = ram[49] - 49 (967/967 frames), y = ram[54] - 14 (867/970; else -15), ball 2x4 px.
    # Player (green, cols 140..143): y = ram[51] - 14 (-13 equally often), 4x16 px.
    # Enemy (orange, cols 16..19): y = ram[50] - 15, 4x16 px. Ball not in play: ram[54] == 0.
    "Pong": {
        "ball": (lambda r: (_lin(r, 49, 1, -49), _lin(r, 54, 1, -14)), (2, 4), (0, 34, 160, 194)),
        "player": (lambda r: (140.0, _lin(r, 51, 1, -14)), (4, 16), (0, 20, 160, 210)),
        "enemy": (lambda r: (16.0, _lin(r, 50, 1, -15)), (4, 16), (0, 20, 160, 210)),
    },
    # Breakout, 3,000 random-action frames (FIRE every 50): ball colour (200,72,72) in rows 93..187:
    #   x = ram[99] - 49 (2169/2170), y = ram[101] + 9 (2167/2170), ball 2x4 px.
    # Paddle: rows 189..192, x = ram[72] - 47, 16x4 px. Ball not in play: ram[101] == 0 (y = 9, inside the top wall).
    "Breakout": {
        "ball": (lambda r: (_lin(r, 99, 1, -49), _lin(r, 101, 1, 9)), (2, 4), (8, 32, 152, 196)),
        "player": (lambda r: (_lin(r, 72, 1, -47), 189.0), (16, 4), (0, 0, 160, 210)),
    },
    # VideoPinball, 1,200 random-action frames: the ball shares the wall colour (104,72,198); as a moving
    # foreground blob: x = ram[67] + 0 (1111/1200), y = ram[68] - 3 (1102/1200), 2x4 px.
    "VideoPinball": {
        "ball": (lambda r: (_lin(r, 67, 1, 0), _lin(r, 68, 1, -3)), (2, 4), (0, 0, 160, 210)),
    },
    # Venture, 1,010 scripted frames (UP/LEFT/RIGHT/DOWN runs in the overworld): the player is the only small
    # (1x2 px) component of the wall colour (168,48,143): x = ram[85] - 1 (719/762), y = 2 * ram[26] + 25
    # (729/762; least squares slope 1.994). Measured in the overworld only; inside rooms the mapping is assumed.
    "Venture": {
        "player": (lambda r: (_lin(r, 85, 1, -1), _lin(r, 26, 2, 25)), (1, 2), (0, 0, 160, 210)),
    },
}


@dataclasses.dataclass(frozen=True)
class RamEdit:
    """How object attribution (``explain/objects.py``, issue #27 item 2) moves or removes one object of a game.

    ``axis``: the axis of a move (the game's paddle axis, for every object of the game, so moves compare like with
    like). ``ram``: ``(index, RAM units per raw screen px)`` bytes shifted to move the object. ``knob``: paddle games
    (ALE drives Pong's and Breakout's paddles with a paddle controller whose resistance is ``ALEState``'s first
    int, not RAM): resistance units per raw px along ``axis``, or 0; ``knob_range``: the resistances over which the
    paddle's position follows the controller linearly (outside it the game holds the paddle at a wall). ``remove``:
    ``(index, value)`` bytes held to take the object out of play, or ``()`` where no RAM value means "absent".
    ``colour`` / ``region`` (raw ``x0, y0, x1, y1``) / ``size`` (raw ``w, h``): the pixel detector that verifies an
    edit on the raw screen (all pixels of ``colour`` in ``region``; a blob larger than ``size`` + 1 px is
    ambiguous). ``field``: the raw range of the object's top-left coordinate along ``axis`` where a moved object is
    still drawn whole (the colours and regions are RAM_OBJECTS' measurement's).
    """

    axis: str
    ram: tuple[tuple[int, float], ...]
    colour: tuple[int, int, int]
    region: tuple[int, int, int, int]
    size: tuple[int, int]
    field: tuple[int, int]
    knob: float = 0.0
    knob_range: tuple[int, int] = (0, 0)
    remove: tuple[tuple[int, int], ...] = ()


# Object edits (issue #27, item 2), measured on ale-py 0.12.1 against the bundled agents' seed-0 traces by writing
# each byte and detecting the object on the raw screen after the 4-frame skip (docs/experiments/atari_objects.py
# reports the landing rates). Where they differ from RAM_OBJECTS' read-out bytes (AtariARI, Anand et al. 2019), the
# read-out byte is a copy the game recomputes every frame, so writing it moves nothing:
#   Pong ball: x ram[49], y ram[54] (AtariARI ball_x/ball_y, slope 1); out of play: ram[54] == 0 (the serve state).
#   Pong enemy: ram[21] (the AI's paddle position; AtariARI's enemy_y ram[50] is a copy): +8 -> +8 px.
#   Pong player: ALE paddle resistance (+3,980 units per px down: least squares of ram[60] on the resistance over
#     the trace's resting frames, 2.51 per 10^4) and ram[60] / ram[51] (the smoothed position and its copy).
#   Breakout ball: x ram[99], y ram[101] (AtariARI); out of play: ram[101] == 0.
#   Breakout player: ALE paddle resistance and ram[72] (AtariARI player_x, smoothed). Sweep of the resistance (30 NOOP
#     frames each): x = 142 at 237,450 ... 8 at 777,450, linear, -4,030 units per px; below ~229,400 the game holds
#     the paddle at the right wall (x = 144), so a move starts from the wall's resistance, not the controller's.
# What does not land (docs/bench/atari_objects.json, 200 steps): Pong's enemy AI moves its paddle up to 4 px toward
# the ball on the frame it is drawn, so a move away from the ball lands 4 px short (63-71 % of enemy moves land); a
# moved ball that meets a wall or paddle bounces (5-6 % of ball moves miss); holding Breakout's ram[101] = 0 while
# the ball rises makes the game re-serve it (53 % of Breakout removals land).
# VideoPinball and Venture have read-out fits only: no edit was verified, so object attribution refuses them.
RAM_EDITS: dict[str, dict[str, RamEdit]] = {
    "Pong": {
        "ball": RamEdit("y", ((54, 1.0),), (236, 236, 236), (0, 34, 160, 194), (2, 4), (34, 190),
                        remove=((54, 0),)),
        "player": RamEdit("y", ((60, 1.0), (51, 1.0)), (92, 186, 92), (140, 34, 144, 194), (4, 16), (34, 178),
                          knob=3980.0, knob_range=(27450, 790196)),
        "enemy": RamEdit("y", ((21, 1.0),), (213, 130, 74), (16, 34, 20, 194), (4, 16), (34, 178)),
    },
    "Breakout": {
        "ball": RamEdit("x", ((99, 1.0),), (200, 72, 72), (8, 93, 152, 188), (2, 4), (8, 150),
                        remove=((101, 0),)),
        "player": RamEdit("x", ((72, 1.0),), (200, 72, 72), (8, 189, 152, 193), (16, 4), (8, 136),
                          knob=-4030.0, knob_range=(229400, 777000)),
    },
}

STICKY_PRIME = 24  # emulated frames that set the ALE's previous action in set_state (0.25^24 that one is left)
_DEFAULTS = dict(sticky=0.25, noops=30, time_limit=27000, size=64, grayscale=True, frame_skip=4, full_action_space=False)


def _register() -> None:
    import ale_py
    import gymnasium as gym

    if "ALE/Pong-v5" not in gym.registry:
        gym.register_envs(ale_py)


class AtariEnv(Env):
    """An ALE game with DreamerV2 preprocessing; see module docstring."""

    def __init__(
        self,
        game: str,
        seed: int | None = None,
        sticky: float = 0.25,
        noops: int = 30,
        time_limit: int = 27000,
        size: int = 64,
        grayscale: bool = True,
        frame_skip: int = 4,
        full_action_space: bool = False,
    ):
        import ale_py
        import gymnasium as gym
        from gymnasium.wrappers import AtariPreprocessing

        _register()
        gid = f"ALE/{game}-v5"
        if gid not in gym.registry:
            raise ValueError(f"unknown Atari game 'atari:{game}': {gid} is not in ale-py {ale_py.__version__} (e.g. atari:Pong)")
        self._ale_py = ale_py
        self.game = game
        self._raw_env = gym.make(
            gid,
            frameskip=1,
            repeat_action_probability=float(sticky),
            # Config.atari_actions: the minimal set (dreamerv2's released code) or all 18 (the paper's protocol).
            full_action_space=bool(full_action_space),
            disable_env_checker=True,
        )
        self._env = AtariPreprocessing(
            self._raw_env,
            noop_max=int(noops),
            frame_skip=int(frame_skip),
            screen_size=int(size),
            grayscale_obs=bool(grayscale),
            grayscale_newaxis=True,
            terminal_on_life_loss=False,
        )
        self._ale = self._raw_env.unwrapped.ale
        self._objects = RAM_OBJECTS.get(game, {})
        self._time_limit = int(time_limit)
        self._size = int(size)
        self._seed = seed
        self._steps = 0
        self._done = True
        self._started = False
        self._last_action = 0
        names = tuple(self._raw_env.unwrapped.get_action_meanings())
        self.spec = EnvSpec(
            id=f"atari:{game}",
            obs_shape=(1 if grayscale else 3, self._size, self._size),
            discrete=True,
            num_actions=len(names),
            action_names=names,
            object_names=tuple(self._objects),
            can_branch=True,
            max_steps=self._time_limit,
        )

    # ------------------------------------------------------------------ api
    def reset(self, seed: int | None = None) -> Obs:
        if seed is None and not self._started:
            seed = self._seed  # first reset uses the seed given to make()
        img, _ = self._env.reset(seed=seed)
        self._started = True
        self._last_action = 0  # the reset's no-ops: NOOP is index 0 of both action sets
        self._steps = 0
        self._done = False
        return self._obs(img, 0.0, is_first=True)

    def step(self, action: Any) -> Obs:
        a = self._check_action(action)
        if self._done:
            raise RuntimeError(f"env {self.spec.id}: call reset() before step() (episode over or not started)")
        img, reward, terminated, truncated, _ = self._env.step(a)
        self._last_action = a
        self._steps += 1
        truncated = bool(truncated) or self._steps >= self._time_limit
        terminated = bool(terminated)
        self._done = terminated or truncated
        return self._obs(img, float(reward), is_last=self._done, is_terminal=terminated)

    def render(self) -> Obs:
        """Observation of the current state (e.g. after `set_state`), with reward 0 and no flags."""
        # _get_obs max-pools buffer[1] into buffer[0] in place; repeating it is idempotent.
        return self._obs(self._env._get_obs(), 0.0)

    def close(self) -> None:
        self._env.close()

    # ------------------------------------------------------------------ helpers
    def _obs(self, img: np.ndarray, reward: float, is_first: bool = False, is_last: bool = False, is_terminal: bool = False) -> Obs:
        image = np.ascontiguousarray(np.transpose(img, (2, 0, 1)), dtype=np.uint8)
        ram = self._ale.getRAM().copy()
        return make_obs(image, reward, is_first, is_last, is_terminal, self.objects_from_ram(ram), ram=ram)

    def objects_from_ram(self, ram: np.ndarray) -> dict[str, np.ndarray]:
        """Object boxes [x, y, w, h] in `size` x `size` frame coordinates from a RAM snapshot (NaN if absent)."""
        sx, sy = self._size / SCREEN_W, self._size / SCREEN_H
        out: dict[str, np.ndarray] = {}
        for name, (fn, (w, h), (x0, y0, x1, y1)) in self._objects.items():
            x, y = fn(ram)
            if x0 <= x < x1 and y0 <= y < y1:
                out[name] = box(x * sx, y * sy, w * sx, h * sy)
            else:
                out[name] = nan_box()
        return out

    # ------------------------------------------------------------------ branching
    def get_state(self) -> State:
        if not self._started:
            raise RuntimeError(f"env {self.spec.id}: call reset() before get_state()")
        ale_state = self._ale.cloneState(include_rng=True)
        state = self._state_header()
        state["ale"] = np.frombuffer(ale_state.serialize(), dtype=np.uint8).copy()
        state["np_rng"] = rng_to_array(self._raw_env.unwrapped.np_random)
        state["obs_buffer"] = np.stack([b.copy() for b in self._env.obs_buffer])
        state["ints"] = np.array(
            [self._steps, int(self._done), int(self._env.lives), int(self._env.game_over), self._last_action],
            dtype=np.int64,
        )
        return state

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        self._check_state_header(state, ("ale", "np_rng", "obs_buffer", "ints"))
        fields = {"steps": (0, 10**9), "done": (0, 1), "lives": (0, 255), "game_over": (0, 1)}
        if np.asarray(state["ints"]).shape == (5,):  # states since #27 also hold the last action (older ones: 4)
            fields["last_action"] = (0, self.spec.num_actions - 1)
        ints = check_int_fields(self.spec.id, state["ints"], fields)
        raw = np.asarray(state["ale"], dtype=np.uint8).tobytes()
        if not self._started:
            # Gymnasium's OrderEnforcing wrapper refuses step() before a reset(), whatever state the emulator was
            # restored to: the grounded what-if from a saved trace restores into a fresh env (issue #31).
            self.reset(seed=0)
        if "last_action" in ints:
            # Sticky actions repeat the ALE's previous action with probability `sticky`, and that action is not in
            # the cloned state: restored out of order, a state would repeat whatever this env did last (10 of 150
            # random-action Pong steps re-ran differently, tests/test_envs.py). Act the recorded last action until
            # the ALE has surely taken it (0.25^24), then restore again: the emulator, RNG and paddles are the
            # state's, the previous action is the state's own.
            self._ale.restoreState(self._ale_py.ALEState(raw))
            action = self._raw_env.unwrapped._action_set[ints["last_action"]]
            for _ in range(STICKY_PRIME):
                self._ale.act(action)
        self._ale.restoreState(self._ale_py.ALEState(raw))
        array_to_rng(self._raw_env.unwrapped.np_random, state["np_rng"])
        buf = np.asarray(state["obs_buffer"], dtype=np.uint8)
        if buf.shape != (2,) + self._env.obs_buffer[0].shape:
            raise ValueError(f"state for {self.spec.id}: obs_buffer has shape {buf.shape}, expected {(2,) + self._env.obs_buffer[0].shape}")
        for i in range(2):
            self._env.obs_buffer[i][...] = buf[i]
        self._steps, self._done = ints["steps"], bool(ints["done"])
        self._env.lives, self._env.game_over = ints["lives"], bool(ints["game_over"])
        self._started = True


def make_atari(game: str, seed: int | None = None, **overrides: Any) -> AtariEnv:
    """Build `atari:<game>`; overrides: sticky, noops, time_limit, size, grayscale, frame_skip, full_action_space."""
    bad = sorted(set(overrides) - set(_DEFAULTS))
    if bad:
        raise ValueError(f"atari:{game}: unknown override(s) {bad}; allowed: {sorted(_DEFAULTS)}")
    return AtariEnv(game, seed=seed, **overrides)

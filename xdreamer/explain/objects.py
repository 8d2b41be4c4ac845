"""Object-level attribution through the simulator: move or remove a ground-truth object, re-observe, re-decide.

Atrey, Clary & Jensen (ICLR 2020, "Exploratory not explanatory") show that saliency maps alone cannot support claims
such as "the agent looks at the ball": such claims must be tested by intervening on the game's own state and
measuring the change in the agent's behaviour. This module is that reference for xdreamer's pixel maps (issue #27,
item 2): for every ground-truth object and every step of a recorded ``Trace`` it edits the recorded simulator state
(toy games through ``get_state()["ints"]``; Atari through RAM writes, ``_AtariObjects``), re-renders the frame from
the edited state (toy: ``env.render()``; Atari: re-running the recorded step into it, every edit verified), runs the
agent's own acting path on it (``wm.encode`` -> ``rssm.obs_step`` with the posterior mode -> actor and critic, as
``trace.record``) and measures

    tv       [S, O, V]     total-variation distance 0.5 * sum_a |p'(a) - p(a)| of the actor's distribution
    dvalue   [S, O, V]     v' - v (critic)
    dq       [S, O, V, A]  Q'_H(a) - Q_H(a): the imagined lambda-return per first action (``dreams.dream``, as
                           ``highlights.q_values``)
    flip     [S, O, V]     the actor's mode changed

with S steps, O objects, V intervention variants (NaN / False where a variant does not apply to an object at that
step, ``applicable``), and ranks the objects per step by ``effect`` = the largest ``tv`` over the object's variants.

What "remove the ball at step t" means for a recurrent agent. The decision at t reads h_t, which carries the object's
history (issue #27: most of catch's decision is not in the current frame). ``k`` says how far back the intervention
reaches: the edit is applied to the recorded simulator state of every step t-k..t, each frame re-rendered from its
edited state, and the posterior re-filtered through the RSSM from the recorded state at t-k-1 with the recorded
actions (the actions the simulator was re-run with). ``k=0`` changes only o_t: what the current frame contributes.
``k>0`` also changes the object's last k frames: what its recent history contributes. A window that would reach
before the episode's first step starts there (``is_first``). The edit is held on every frame of the window rather
than applied once at t-k and re-simulated because (1) the toy game has no dynamics-consistent "removed" state (a ball
parked below the frame resolves the catch on the next step and a new ball spawns), and (2) held edits keep acting on
the object on screen when a new ball spawned inside the window. For "move" in the toy games (no drift) and a window
without a resolved catch the two are the same: the ball falls straight down and the paddle moves only by the
recorded actions (``tests/test_objects.py`` pins this).

Variants (``interventions``): ``remove`` (the ball is parked below the frame, ``ball_y = 64``, so it is not drawn; the
paddle cannot be removed: the game has no state without a paddle, so its ``remove`` is not applicable), ``move``
(``move-N`` / ``move+N``: shift by N px horizontally, clipped at the walls; not applicable where the clip leaves the
object in place) and ``lane`` (``toy:catch-lanes`` games only: the ball moved to lane column L, one variant per lane,
not applicable in its own lane). On the states the game reaches: paddle moves by multiples of 3 px, ball lanes, and
ball shifts in ``toy:catch`` (any column); off them, as Atrey et al.'s object removals are: ``remove`` (the catch game
always shows a ball) and ball shifts off the lanes of the ``-lanes`` games.

Read the ranking with its controls (``docs/experiments/object_attribution.py``): a randomised copy of catch-lanes
ranks the ball first on 87 % of its steps because its paddle edits change nothing, and over unequal variants (a
removed ball or a 20-px lane jump against a 6-px paddle shift) the ranking follows the interventions' sizes;
``shared_variants`` compares like with like. The size of the effect (``median_effect``) is what separates a
ball-seeing agent from its ball-blind twin and a random copy. For ``policy="sample"`` traces the re-filtering uses
the posterior mode, so the unedited row is the mode's decision rather than the recorded sample's.

Atari (``_AtariObjects``): ``ale.setRAM`` writes at the bytes of ``envs.atari.RAM_EDITS`` (Pong: ball, player,
enemy; Breakout: ball, player), the paddle controller's resistance for the paddle games' own paddles, held on each
emulated frame of the re-run step s-1 -> s. Variants: ``remove`` (the ball only: Pong ram[54] = 0, Breakout
ram[101] = 0, the games' "not in play"), ``move`` (``shift`` px of the 64x64 frame along the game's paddle axis:
Pong vertical, 6 px = 20 raw px; Breakout horizontal, 6 px = 15 raw px). Both are approximate (the RAM-to-pixel
fits, the game's own logic on the edited frames), so each edit is checked on the raw screen and one that did not
land is skipped, not attributed (``ObjectAttribution.landed`` / ``landing_rate``). VideoPinball and Venture are
refused (no verified write). The episode's first frame has no edit (no recorded step leads to it).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..envs.base import State as SimState
from ..envs.base import box_slices
from ..rssm import State
from .dreams import _check_horizon, dream, start_state
from .grounded import check_branchable
from .trace import Trace, check_trace_matches

__all__ = ["ObjectAttribution", "object_attribution", "record_object_effects", "stored_object_attribution",
           "SATURATED", "INTERVENTIONS", "STORED"]

# The one definition of "p(action) is saturated" (issue #27, item 2): the actor puts more than this on one action.
# There every intervention can only lower the mode's probability a little, so TV is small for any object and a
# ranking would be noise; the target is stated on the unsaturated steps.
SATURATED = 0.95
INTERVENTIONS = ("remove", "move", "lane")
# Per-step storage in a trace (``record_object_effects``; ``xdreamer record --objects``): every array of the
# ``ObjectAttribution`` over all N steps of the trace, under ``"object_" + field`` (``object_tv`` [N, O, V],
# ``object_dq`` [N, O, V, A], ...), with objects, variants and settings in ``meta["object_effects"]``, so
# ``stored_object_attribution`` gives back the same result; the trace table gets ``effect_<object>`` columns.
STORED = {"probs": "f", "value": "f", "q": "f", "tv": "f", "dvalue": "f", "dq": "f", "flip": "b", "attempted": "b",
          "landed": "b"}


@dataclasses.dataclass
class ObjectAttribution:
    """Per step x object x variant effects of simulator interventions (see the module docstring).

    ``probs`` ``[S, A]``, ``value`` ``[S]``, ``q`` ``[S, A]``: the unedited re-filtered decision (equal to the
    recorded ``action_probs`` / ``value`` for a ``mode`` trace). ``visible`` ``[S, O]``: the object's recorded box
    lies in the frame at step t. ``saturated`` ``[S]``: ``probs.max() > SATURATED``.
    """

    steps: np.ndarray  # [S] global trace indices
    objects: tuple[str, ...]  # [O]
    variants: tuple[str, ...]  # [V]
    k: int
    shift: int
    horizon: int
    probs: np.ndarray  # [S, A]
    value: np.ndarray  # [S]
    q: np.ndarray  # [S, A]
    applicable: np.ndarray  # bool [S, O, V]
    tv: np.ndarray  # [S, O, V], NaN where not applicable
    dvalue: np.ndarray  # [S, O, V]
    dq: np.ndarray  # [S, O, V, A]
    flip: np.ndarray  # bool [S, O, V]
    visible: np.ndarray  # bool [S, O]
    saturated: np.ndarray  # bool [S]
    # Edits tried at t (the object was there to edit) and those that landed (verified; ``applicable`` = landed).
    # Toy edits always land (the frame is the game's drawing of the edited state); Atari edits are checked on the
    # raw screen (``_AtariObjects``).
    attempted: np.ndarray | None = None  # bool [S, O, V]
    landed: np.ndarray | None = None  # bool [S, O, V]

    def __post_init__(self) -> None:
        if self.attempted is None:
            self.attempted = self.applicable.copy()
        if self.landed is None:
            self.landed = self.applicable.copy()

    def landing_rate(self, obj: str | None = None, variant: str | None = None) -> float:
        """Fraction of the attempted edits (of ``obj`` / ``variant``, or all) that landed; NaN where none was tried."""
        o = slice(None) if obj is None else self.objects.index(obj)
        v = slice(None) if variant is None else self._variant_index([variant])[0]
        tried = self.attempted[:, o, v]
        return float(self.landed[:, o, v][tried].mean()) if tried.any() else float("nan")

    def effect(self, variants: Sequence[str] | None = None) -> np.ndarray:
        """``[S, O]``: the largest ``tv`` over the object's applicable variants (all, or those named); NaN where none
        applies. The largest, because the question is whether the decision depends on the object at all."""
        index = self._variant_index(variants)
        tv = self.tv[:, :, index]
        out = np.full(tv.shape[:2], np.nan)
        has = ~np.all(np.isnan(tv), axis=2)
        out[has] = np.nanmax(tv[has], axis=1)
        return out

    def top(self, variants: Sequence[str] | None = None) -> np.ndarray:
        """``[S]`` index of the object with the largest ``effect`` per step; -1 where no object changed p(action)."""
        eff = np.nan_to_num(self.effect(variants), nan=0.0)
        return np.where(eff.max(1) > 0, eff.argmax(1), -1)

    def shared_variants(self) -> tuple[str, ...]:
        """Variants every object can take (``move`` in the toy games). Ranking over these compares like with like:
        over all variants the ball competes with its removal and 20-px lane jumps against the paddle's N-px shifts,
        and the ranking then reflects the interventions' sizes as much as the agent (``docs/experiments/
        object_attribution.py`` measures how much)."""
        can = self.applicable.any(axis=0)  # [O, V]
        return tuple(v for i, v in enumerate(self.variants) if can[:, i].all())

    def eligible(self, obj: str) -> np.ndarray:
        """``[S]`` steps where ``obj`` is on screen and p(action) is not saturated (issue #27's target population)."""
        return self.visible[:, self.objects.index(obj)] & ~self.saturated

    def top_fraction(self, obj: str, variants: Sequence[str] | None = None) -> float:
        """Fraction of ``obj``'s eligible steps where it is the top object (NaN when none is eligible)."""
        mask = self.eligible(obj)
        if not mask.any():
            return float("nan")
        return float(np.mean(self.top(variants)[mask] == self.objects.index(obj)))

    def median_effect(self, obj: str, variants: Sequence[str] | None = None, eligible_only: bool = True) -> float:
        """Median of ``obj``'s ``effect`` over its eligible steps (or all steps); NaN when none applies."""
        eff = self.effect(variants)[:, self.objects.index(obj)]
        if eligible_only:
            eff = eff[self.eligible(obj)]
        eff = eff[np.isfinite(eff)]
        return float(np.median(eff)) if eff.size else float("nan")

    def select(self, rows: Sequence[int]) -> "ObjectAttribution":
        """The result at some of its steps (``rows`` index ``steps``), e.g. one step of a stored whole-trace result."""
        rows = np.asarray(rows, np.int64)
        per_step = ("steps", "probs", "value", "q", "applicable", "tv", "dvalue", "dq", "flip", "visible", "saturated",
                    "attempted", "landed")
        return dataclasses.replace(self, **{f: getattr(self, f)[rows] for f in per_step})

    def at_steps(self, steps: Sequence[int]) -> "ObjectAttribution | None":
        """The result at the trace steps ``steps`` (``select`` takes rows), or None where one of them was not
        attributed (a trace recorded with ``record --objects-every N`` stores every N-th step)."""
        index = {int(s): i for i, s in enumerate(self.steps)}
        rows = [index.get(int(s)) for s in steps]
        return None if any(r is None for r in rows) else self.select(rows)

    def _variant_index(self, variants: Sequence[str] | None) -> list[int]:
        if variants is None:
            return list(range(len(self.variants)))
        unknown = [v for v in variants if v not in self.variants]
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; this attribution has {list(self.variants)}")
        return [self.variants.index(v) for v in variants]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able numbers (NaN -> null)."""
        def clean(a):
            a = np.asarray(a, dtype=float).round(6)
            return np.where(np.isfinite(a), a, None).tolist()

        return {"steps": self.steps.tolist(), "objects": list(self.objects), "variants": list(self.variants),
                "k": self.k, "shift": self.shift, "horizon": self.horizon, "saturated_above": SATURATED,
                "probs": clean(self.probs), "value": clean(self.value), "q": clean(self.q),
                "tv": clean(self.tv), "dvalue": clean(self.dvalue), "dq": clean(self.dq),
                "flip": self.flip.tolist(), "visible": self.visible.tolist(), "saturated": self.saturated.tolist(),
                "effect": clean(self.effect()), "top": self.top().tolist(),
                "attempted": self.attempted.tolist(), "landed": self.landed.tolist(),
                "landing_rate": {o: _finite_or_none(self.landing_rate(o)) for o in self.objects}}


def record_object_effects(agent, env, trace: Trace, k: int = 0, shift: int = 6, horizon: int = 15,
                          chunk: int = 128, every: int = 1, progress: bool = False) -> Trace:
    """Attribute every ``every``-th step of ``trace`` (0, every, 2 every, ...; default all) to its objects
    (``object_attribution`` with all interventions) and store the whole result in ``trace`` itself (``STORED``, and
    ``object_steps``: which steps), so the app, the report and pandas read it without re-running the simulator.
    Steps go ``chunk`` at a time (memory stays bounded on long Atari episodes). Returns ``trace``, changed in
    place."""
    chunk = _check_int("chunk", chunk, 1)
    every = _check_int("every", every, 1)
    n = len(trace)
    todo = np.arange(0, n, every)
    parts: list[ObjectAttribution] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="objects", unit="step")
    try:
        for lo in range(0, len(todo), chunk):
            parts.append(object_attribution(agent, env, trace, steps=todo[lo:lo + chunk].tolist(), k=k, shift=shift,
                                            horizon=horizon))
            if bar is not None:
                bar.update(len(parts[-1].steps))
    finally:
        if bar is not None:
            bar.close()
    first = parts[0]
    for field in STORED:
        trace.arrays["object_" + field] = np.concatenate([getattr(p, field) for p in parts])
    trace.arrays["object_steps"] = todo.astype(np.int64)
    for o, name in enumerate(first.objects):
        column = np.full(n, np.nan, np.float32)  # NaN: not attributed (``every``) or no edit applied
        column[todo] = np.concatenate([p.effect()[:, o] for p in parts])
        trace.table[f"effect_{name}"] = column
    trace.meta["object_effects"] = {"objects": list(first.objects), "variants": list(first.variants), "k": first.k,
                                    "shift": first.shift, "horizon": first.horizon, "saturated_above": SATURATED,
                                    "every": every}
    return trace


def stored_object_attribution(trace: Trace) -> ObjectAttribution | None:
    """The ``ObjectAttribution`` of the steps that ``record_object_effects`` (``xdreamer record --objects``) stored
    in ``trace`` (its ``steps``: all, or every N-th with ``--objects-every N``), or None where it holds none."""
    settings = trace.meta.get("object_effects")
    if not settings or "object_tv" not in trace.arrays:
        return None
    a = trace.arrays
    steps = trace.object_steps
    return ObjectAttribution(steps=steps, objects=tuple(settings["objects"]),
                             variants=tuple(settings["variants"]), k=int(settings["k"]), shift=int(settings["shift"]),
                             horizon=int(settings["horizon"]), applicable=np.isfinite(a["object_tv"]),
                             visible=_visible(a, settings["objects"], steps),
                             saturated=a["object_probs"].max(1) > SATURATED,
                             **{field: a["object_" + field] for field in STORED})


def _visible(arrays: dict, objects: Sequence[str], steps: np.ndarray) -> np.ndarray:
    """``[S, O]``: the object's recorded box lies in the frame at each step."""
    visible = np.zeros((len(steps), len(objects)), bool)
    size = arrays["frame"].shape[-1]
    for o, name in enumerate(objects):
        boxes = arrays.get(f"objects/{name}")
        if boxes is not None:
            visible[:, o] = [box_slices(boxes[t], size) is not None for t in steps]
    return visible


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


# ---- object edits of the simulator state -----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Variant:
    label: str
    kind: str  # remove | move | lane
    arg: int = 0  # move: the shift in px; lane: the column


class _ToyObjects:
    """Edits of ``toy:`` catch states through ``CatchEnv.get_state()["ints"]`` (``toy.STATE_FIELDS``)."""

    objects = ("ball", "paddle")

    def __init__(self, env) -> None:
        from ..envs.toy import BALL, PADDLE_W, SIZE, STATE_FIELDS

        self.env = env
        self.field = {name: i for i, name in enumerate(STATE_FIELDS)}
        self.size = SIZE
        self.max_x = {"ball": SIZE - BALL, "paddle": SIZE - PADDLE_W}
        self.lanes = tuple(int(x) for x in getattr(env, "lane_x", ()))
        self.outcomes: dict[tuple[int, str, str], bool] = {}

    def variants(self, interventions: Sequence[str], shift: int) -> list[_Variant]:
        out = []
        for kind in interventions:
            if kind == "remove":
                out.append(_Variant("remove", "remove"))
            elif kind == "move":
                out += [_Variant(f"move{-shift:+d}", "move", -shift), _Variant(f"move{shift:+d}", "move", shift)]
            elif kind == "lane":  # only the -lanes games have lanes; elsewhere the kind adds no variant
                out += [_Variant(f"lane{x}", "lane", x) for x in self.lanes]
        return out

    def edit(self, state: SimState, obj: str, variant: _Variant) -> SimState | None:
        """The edited state, or None where the variant does not apply (or would leave the frame unchanged)."""
        ints = np.asarray(state["ints"]).copy()
        x_field = {"ball": "ball_x", "paddle": "paddle_x"}[obj]
        old = int(ints[self.field[x_field]])
        if variant.kind == "remove":
            if obj != "ball":
                return None  # no state of the game lacks the paddle
            # Parked one row below the frame (set_state's bound): drawn nowhere, for the 4x4 and the 1-pixel ball.
            ints[self.field["ball_y"]] = self.size
        elif variant.kind == "move":
            new = int(np.clip(old + variant.arg, 0, self.max_x[obj]))
            if new == old:
                return None
            ints[self.field[x_field]] = new
        elif variant.kind == "lane":
            if obj != "ball" or old == variant.arg:
                return None
            ints[self.field["ball_x"]] = variant.arg
        else:  # pragma: no cover - variants come from ``variants``
            raise ValueError(f"unknown intervention {variant.kind!r}")
        return {**state, "ints": ints}

    def render(self, state: SimState) -> np.ndarray:
        """uint8 ``[C, 64, 64]`` frame of ``state`` (the env's own drawing, ``CatchEnv.render``)."""
        self.env.set_state(state)
        return self.env.render()["image"]

    def frame(self, trace: Trace, s: int, obj: str, variant: _Variant) -> np.ndarray | None:
        """o_s with ``obj`` edited by ``variant`` (None where it does not apply). A state edit of the toy game always
        lands: the frame is the game's own drawing of the edited state."""
        edited = self.edit(trace.sim_state(s), obj, variant)
        if edited is None:
            return None
        self.outcomes[(s, obj, variant.label)] = True
        return self.render(edited)


class _AtariObjects:
    """Edits of ``atari:`` games through RAM writes (``ale.setRAM``) and, for paddle games, the paddle controller's
    resistance, at the objects of ``envs.atari.RAM_EDITS``; every edit is verified on the raw screen.

    Re-observing. The ALE draws a frame only when it emulates one, and a recorded state is the one the frame o_s was
    read from, after the game drew it. So o_s is re-observed by restoring the recorded state of step s-1 and
    re-running the recorded action a_{s-1} through the env's own 4-frame skip and preprocessing (max-pool of the
    last two frames, resize): the unedited re-observation is the recorded frame, bit for bit (pinned in
    ``tests/test_objects.py``), once the sticky action is primed: the ALE keeps the previous action, which sticky
    actions repeat with probability 0.25, outside its cloned state, so it is set to a_{s-2} by acting it for 24
    frames from the restored state, which is then restored again (0.25^24: never left unset in practice). Without
    this, 23 of the 200 steps of the bundled Pong agent's seed-0 episode re-observe differently the second time.

    Editing. The edit is held on each of the skip's four emulated frames (as it is held on each frame of the k-step
    window): before each frame the edited object's bytes are written as their unedited value on that frame plus the
    shift (``move``) or as the "out of play" value (``remove``), and the other objects' bytes are written back to
    their unedited values, so that the other objects differ at most by what the game's logic does to them within
    the frame they are drawn on (Pong's enemy AI follows the ball: up to 4 raw px). Paddle games (Pong's player,
    Breakout's paddle) read the paddle's position from the paddle controller on every frame, so their ``move`` also
    turns the controller (``ALEState``'s resistance, with its limits, ``_shift_knob``) by the fitted units per pixel,
    from its value clipped to ``RamEdit.knob_range`` (Breakout's agent holds its paddle at the right wall with the
    controller far past the wall's resistance). Approximate: the RAM-to-pixel fits (``RAM_OBJECTS``, ~1 raw px), the
    resistance-to-pixel slopes (least-squares fits, ``RAM_EDITS``) and the game's own logic on the edited frames
    (a moved ball may hit a wall or a brick; a paddle is clamped at the walls). Hence the check.

    Verification. The object is detected on the raw RGB screen of the skip's last frame (its colour in its region,
    ``RamEdit``) in the unedited and the edited re-observation. A ``move`` landed when the edited object is within
    ``TOL`` raw px of its unedited position plus the shift on the move's axis and of its unedited position on the
    other; a ``remove`` landed when the object is gone. An edit
    that did not land is not attributed (the variant does not apply at that step) and is counted in
    ``ObjectAttribution.landed``. Not applicable (not counted): the episode's first frame (no step leads to it), an
    object not on screen (or not detectable: a Breakout ball among the bricks, a ball touching a paddle) in the
    unedited frame, a move whose target leaves the object's field, and ``remove`` for an object that has no RAM value
    for "absent" (the paddles).
    """

    TOL = 2  # raw px: a 64x64 frame pixel is 2.5 x 3.3 raw px, so a landed edit is within one observed pixel
    PRIME = 24  # frames acting the previous action to set the ALE's sticky action

    def __init__(self, env) -> None:
        from ..envs.atari import RAM_EDITS, RAM_OBJECTS, SCREEN_H, SCREEN_W

        game = env.game
        known = tuple(RAM_OBJECTS.get(game, {}))
        specs = RAM_EDITS.get(game, {})
        if not known:
            raise NotImplementedError(f"object attribution on atari:{game}: the game has no ground-truth objects "
                                      f"(envs/atari.py RAM_OBJECTS); objects are known for {sorted(RAM_OBJECTS)}")
        missing = [name for name in known if name not in specs]
        if missing:
            raise NotImplementedError(
                f"object attribution on atari:{game}: no verified RAM edit for object(s) {missing} (RAM_OBJECTS reads "
                f"their position, but writing those bytes was not checked to move them on screen); "
                f"atari:{', atari:'.join(sorted(RAM_EDITS))} have edits")
        self.env = env
        self.ale = env._ale
        self.game = game
        self.specs = specs
        self.objects = known
        self.scale = {"x": SCREEN_W / env.spec.obs_shape[-1], "y": SCREEN_H / env.spec.obs_shape[-2]}
        self.action_set = env._raw_env.unwrapped._action_set
        self.outcomes: dict[tuple[int, str, str], bool] = {}  # (step, object, variant) -> landed, for attempted edits
        self._base: dict[int, tuple[np.ndarray, dict, list]] = {}
        self._trace_id: int | None = None

    def variants(self, interventions: Sequence[str], shift: int) -> list[_Variant]:
        out = []
        for kind in interventions:
            if kind == "remove" and any(spec.remove for spec in self.specs.values()):
                out.append(_Variant("remove", "remove"))
            elif kind == "move":
                out += [_Variant(f"move{-shift:+d}", "move", -shift), _Variant(f"move{shift:+d}", "move", shift)]
        return out  # "lane" is a toy game's kind: no variant here

    # -- detection ------------------------------------------------------------------------------------
    def detect(self, rgb: np.ndarray) -> dict[str, Any]:
        """Per object: raw ``(x, y)`` of its top-left on the screen, None when absent, ``"ambiguous"`` when its colour
        covers more than the object (touching another object of its colour, e.g. a Breakout ball at the paddle)."""
        out: dict[str, Any] = {}
        for name, spec in self.specs.items():
            x0, y0, x1, y1 = spec.region
            ys, xs = np.nonzero(np.all(rgb[y0:y1, x0:x1] == np.asarray(spec.colour, np.uint8), axis=-1))
            if xs.size == 0:
                out[name] = None
            elif xs.max() - xs.min() + 1 > spec.size[0] + 1 or ys.max() - ys.min() + 1 > spec.size[1] + 1:
                out[name] = "ambiguous"
            else:
                out[name] = (int(xs.min()) + x0, int(ys.min()) + y0)
        return out

    # -- re-observation -------------------------------------------------------------------------------
    def _knob(self) -> int:
        return int(np.frombuffer(self.ale.cloneState(include_rng=True).serialize()[:4], "<i4")[0])

    def _shift_knob(self, delta: int) -> None:
        """Turn the paddle controller by ``delta`` resistance units, its limits with it: ``ALEState.serialize()``
        writes the left paddle's resistance first and the paddle limits (min, max) last, as 4-byte ints, and the ALE
        clamps the resistance to those limits after each action, so the shifted knob follows the recorded actions
        exactly as the unedited one does, ``delta`` apart (a paddle pushed against a wall stays ``delta`` away)."""
        raw = bytearray(self.ale.cloneState(include_rng=True).serialize())
        for lo in (0, len(raw) - 8, len(raw) - 4):
            raw[lo:lo + 4] = (np.frombuffer(bytes(raw[lo:lo + 4]), "<i4") + np.int32(delta)).astype("<i4").tobytes()
        self.ale.restoreState(self.env._ale_py.ALEState(bytes(raw)))

    def _step(self, trace: Trace, s: int, before) -> tuple[np.ndarray, np.ndarray]:
        """Re-run the recorded step s-1 -> s with ``before(frame_index)`` called before each emulated frame."""
        arrays = trace.arrays
        pre = trace.sim_state(s - 1)
        prev = 0 if arrays["is_first"][s - 1] else int(arrays["action"][s - 2])
        self.env.set_state(pre)  # primes the sticky action itself where the state holds its last action
        if np.asarray(pre["ints"]).shape != (5,):  # a trace recorded before that: prime here (class docstring)
            for _ in range(self.PRIME):
                self.ale.act(self.action_set[prev])
            self.env.set_state(pre)
        raw = self.env._raw_env.unwrapped
        raw.ale = _FrameHook(self.ale, before)
        try:
            image = self.env.step(int(arrays["action"][s - 1]))["image"]
        finally:
            raw.ale = self.ale
        return image, self.ale.getScreenRGB()

    def _unedited(self, trace: Trace, s: int) -> tuple[np.ndarray, dict, list]:
        if self._trace_id != id(trace):
            self._base, self._trace_id = {}, id(trace)
        if s not in self._base:
            record: list[np.ndarray] = []
            image, rgb = self._step(trace, s, lambda f: record.append(self.ale.getRAM().copy()))
            self._base[s] = (image, self.detect(rgb), record)
        return self._base[s]

    def frame(self, trace: Trace, s: int, obj: str, variant: _Variant) -> np.ndarray | None:
        """o_s re-observed with ``obj`` edited by ``variant``; None where the edit does not apply or did not land."""
        if trace.arrays["is_first"][s] or variant.kind not in ("move", "remove"):
            return None
        spec = self.specs[obj]
        if variant.kind == "remove" and not spec.remove:
            return None
        _, seen, record = self._unedited(trace, s)
        where = seen[obj]
        if not isinstance(where, tuple):
            return None  # not on screen (or not detectable) in the unedited frame: nothing to move or remove
        axis = 0 if spec.axis == "x" else 1
        px = int(round(variant.arg * self.scale[spec.axis])) if variant.kind == "move" else 0
        if variant.kind == "move" and not spec.field[0] <= where[axis] + px <= spec.field[1]:
            return None
        others = [(i, name) for name, other in self.specs.items() if name != obj for i, _ in other.ram]

        def before(f: int) -> None:
            ram = record[min(f, len(record) - 1)]
            for i, _ in others:
                self.ale.setRAM(i, int(ram[i]))
            if variant.kind == "remove":
                for i, value in spec.remove:
                    self.ale.setRAM(i, value)
                return
            for i, per_px in spec.ram:
                self.ale.setRAM(i, int(np.clip(int(ram[i]) + round(per_px * px), 0, 255)))
            if spec.knob and f == 0:
                knob = self._knob()
                self._shift_knob(int(np.clip(knob, *spec.knob_range) + round(spec.knob * px)) - knob)

        image, rgb = self._step(trace, s, before)
        got = self.detect(rgb)
        if variant.kind == "remove":
            ok = got[obj] is None
        else:
            want = list(where)
            want[axis] += px
            ok = isinstance(got[obj], tuple) and all(abs(g - w) <= self.TOL for g, w in zip(got[obj], want))
        self.outcomes[(s, obj, variant.label)] = bool(ok)
        return image if ok else None


class _FrameHook:
    """Stands in for the raw env's ``ale`` during one re-observed step: calls ``before(frame)`` before each emulated
    frame (``ale_py``'s env calls ``ale.act`` once per frame), then delegates everything to the real interface."""

    def __init__(self, ale, before) -> None:
        self._ale, self._before, self._frame = ale, before, 0

    def act(self, *args, **kwargs):
        self._before(self._frame)
        self._frame += 1
        return self._ale.act(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._ale, name)


def object_editor(env):
    """The object editor of ``env`` (moves, removes and re-lanes its ground-truth objects in the simulator's state);
    NotImplementedError, in one line, for an env without one. Callers use it to refuse early, before any episode is
    run."""
    from ..envs.toy import CatchEnv

    if isinstance(env, CatchEnv):
        return _ToyObjects(env)
    if env.spec.id.startswith("atari:"):
        return _AtariObjects(env)
    raise NotImplementedError(f"object attribution needs an env whose objects can be edited in its state; "
                              f"{env.spec.id} has no object editor (toy: and atari: games have one)")


# ---- the computation ---------------------------------------------------------------------------------
def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


@torch.no_grad()
def object_attribution(agent, env, trace: Trace, steps: Sequence[int] | None = None, k: int = 0,
                       interventions: Sequence[str] = ("remove", "move", "lane"), shift: int = 6,
                       horizon: int = 15, batch_size: int = 256) -> ObjectAttribution:
    """Move or remove every ground-truth object in the simulator at ``steps`` (default: all) and measure the change
    in the agent's decision; see the module docstring for the semantics of ``k`` and the variants.

    ``env``: an env of the trace's id that can branch (its state is left arbitrary). ``interventions``: kinds from
    :data:`INTERVENTIONS`. ``shift``: px of a ``move``. ``horizon``: of the imagined Q_H. ``batch_size``: rows
    (step x variant, each filtered over its k+1 frames) per batch. The unedited decision is row 0 of every step's
    batch, so differences are free of batching noise.
    """
    editor = object_editor(env)  # first: an env without an object editor says so, whatever the trace
    check_branchable(env, trace)
    check_trace_matches(trace, agent)
    if not agent.spec.discrete:
        raise ValueError("object attribution reports p(action) changes; it needs a discrete action space")
    k = _check_int("k", k, 0)
    shift = _check_int("shift", shift, 1)
    horizon = _check_horizon(horizon)
    batch_size = _check_int("batch_size", batch_size, 1)
    bad = [i for i in interventions if i not in INTERVENTIONS]
    if bad or not interventions:
        raise ValueError(f"interventions must be some of {INTERVENTIONS}, got {list(interventions)}")
    variants = editor.variants(list(dict.fromkeys(interventions)), shift)
    objects = tuple(editor.objects)
    steps = np.arange(len(trace)) if steps is None else np.array([trace.check_step(s) for s in steps], np.int64)
    if steps.size == 0:
        raise ValueError("steps: give at least one step")
    O, V, A, S, W = len(objects), len(variants), agent.spec.num_actions, len(steps), k + 1

    arrays = trace.arrays
    starts = np.flatnonzero(arrays["is_first"])
    episode_start = starts[np.searchsorted(starts, np.arange(len(trace)), side="right") - 1]
    cache: dict[tuple[int, int, int], np.ndarray] = {}

    def frame(s: int, o: int, v: int) -> np.ndarray | None:
        """o_s with object o edited by variant v (o = -1: the recorded frame); None where it does not apply."""
        if o < 0:
            return arrays["frame"][s]
        key = (s, o, v)
        if key not in cache:
            cache[key] = editor.frame(trace, s, objects[o], variants[v])
        return cache[key]

    # One row per (step, object, variant) that applies at t, after the step's unedited row.
    rows: list[tuple[int, int, int, int]] = []  # (index into steps, step t, object, variant)
    for i, t in enumerate(steps):
        rows.append((i, int(t), -1, -1))
        rows += [(i, int(t), o, v) for o in range(O) for v in range(V) if frame(int(t), o, v) is not None]

    probs = np.full((len(rows), A), np.nan, np.float32)
    value = np.full(len(rows), np.nan, np.float32)
    q = np.full((len(rows), A), np.nan, np.float32)
    was_training = agent.training
    agent.eval()
    try:
        for lo in range(0, len(rows), batch_size):
            chunk = rows[lo:lo + batch_size]
            p, v_, q_ = _decide(agent, trace, chunk, W, episode_start, frame, horizon)
            probs[lo:lo + len(chunk)], value[lo:lo + len(chunk)], q[lo:lo + len(chunk)] = p, v_, q_
    finally:
        agent.train(was_training)

    base = np.array([r for r, row in enumerate(rows) if row[2] < 0])
    out = dict(tv=np.full((S, O, V), np.nan), dvalue=np.full((S, O, V), np.nan), dq=np.full((S, O, V, A), np.nan))
    applicable = np.zeros((S, O, V), bool)
    flip = np.zeros((S, O, V), bool)
    for r, (i, _, o, v) in enumerate(rows):
        if o < 0:
            continue
        b = base[i]
        applicable[i, o, v] = True
        out["tv"][i, o, v] = 0.5 * np.abs(probs[r] - probs[b]).sum()
        out["dvalue"][i, o, v] = value[r] - value[b]
        out["dq"][i, o, v] = q[r] - q[b]
        flip[i, o, v] = probs[r].argmax() != probs[b].argmax()
    attempted = np.zeros((S, O, V), bool)
    landed = np.zeros((S, O, V), bool)
    for i, t in enumerate(steps):
        for o in range(O):
            for v in range(V):
                outcome = editor.outcomes.get((int(t), objects[o], variants[v].label))
                attempted[i, o, v] = outcome is not None
                landed[i, o, v] = bool(outcome)
    visible = _visible(arrays, objects, steps)
    return ObjectAttribution(steps=steps, objects=objects, variants=tuple(x.label for x in variants), k=k,
                             shift=shift, horizon=horizon, probs=probs[base], value=value[base], q=q[base],
                             applicable=applicable, flip=flip, visible=visible,
                             saturated=probs[base].max(1) > SATURATED, attempted=attempted, landed=landed, **out)


def _decide(agent, trace: Trace, rows, W: int, episode_start: np.ndarray, frame, horizon: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-filter each row's k+1 frames through the RSSM and decide: p ``[R, A]``, value ``[R]``, Q_H ``[R, A]``.

    Windows are right-aligned at t; positions before the episode's first step are padding with ``is_first`` set,
    which ``obs_step`` resets anyway, so the episode's first step starts from the initial state as in ``record``.
    """
    arrays, dev, A = trace.arrays, agent.device, agent.spec.num_actions
    R = len(rows)
    frames = np.zeros((R, W, *arrays["frame"].shape[1:]), np.uint8)
    first = np.ones((R, W), np.float32)
    prev_action = np.zeros((R, W, A), np.float32)
    start = np.zeros(R, np.int64)
    for r, (_, t, o, v) in enumerate(rows):
        t0 = max(t - W + 1, int(episode_start[t]))
        start[r] = max(t0 - 1, 0)
        for s in range(t0, t + 1):
            pos = W - 1 - (t - s)
            edited = frame(s, o, v)
            frames[r, pos] = arrays["frame"][s] if edited is None else edited  # held edit; recorded where n/a
            first[r, pos] = float(arrays["is_first"][s])
            if s > episode_start[t]:
                prev_action[r, pos] = arrays["action_vec"][s - 1]  # the recorded actions the sim was re-run with
    wm, rssm = agent.wm, agent.wm.rssm
    latent = start_state(agent, trace, start)  # the recorded posterior at t0 - 1 (reset by is_first at t0 = start)
    image = torch.as_tensor(frames, device=dev)
    first_t = torch.as_tensor(first, device=dev)
    act_t = torch.as_tensor(prev_action, device=dev)
    with agent.autocast():
        embed = wm.encode(image.float() / 255.0 - 0.5)  # [R, W, E]: one batch for every frame of every row
        for pos in range(W):  # exactly record's acting step, with the posterior mode
            latent, _ = rssm.obs_step(latent, act_t[:, pos], embed[:, pos], first_t[:, pos], sample=False)
        latent = latent.map(lambda x: x.float())
        feat = wm.feat(latent)
        probs = agent.actor(feat).probs.float()
        value = agent.ac.value(feat).float()
        if not getattr(agent, "has_critic", True):  # World Models with a CMA-ES C: no value function (trace: NaN)
            value = torch.full_like(value, float("nan"))
    # Q_H per first action from the re-filtered state, as highlights.q_values does from the recorded one.
    eye = F.one_hot(torch.arange(A, device=dev), A).float()
    branched = State(*(x.repeat_interleave(A, 0) for x in latent))
    result = dream(agent, branched, horizon, eye.repeat(R, 1)[:, None], "actor", decode=False)
    q = result["returns"][:, 0].reshape(R, A)
    return probs.cpu().numpy(), value.cpu().numpy(), q.cpu().numpy()

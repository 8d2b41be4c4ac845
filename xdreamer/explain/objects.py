"""Object-level attribution through the simulator: move or remove a ground-truth object, re-observe, re-decide.

Atrey, Clary & Jensen (ICLR 2020, "Exploratory not explanatory") show that saliency maps alone cannot support claims
such as "the agent looks at the ball": such claims must be tested by intervening on the game's own state and
measuring the change in the agent's behaviour. This module is that reference for xdreamer's pixel maps (issue #27,
item 2): for every ground-truth object and every step of a recorded ``Trace`` it edits the recorded simulator state
(toy games through ``get_state()["ints"]``), re-renders the frame from the edited state (``env.render()``), runs the
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

Atari (``ale.setRAM`` edits of the objects in ``envs/atari.py``) is not implemented; see ``_editor``.
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

__all__ = ["ObjectAttribution", "object_attribution", "SATURATED", "INTERVENTIONS"]

# The one definition of "p(action) is saturated" (issue #27, item 2): the actor puts more than this on one action.
# There every intervention can only lower the mode's probability a little, so TV is small for any object and a
# ranking would be noise; the target is stated on the unsaturated steps.
SATURATED = 0.95
INTERVENTIONS = ("remove", "move", "lane")


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
                "effect": clean(self.effect()), "top": self.top().tolist()}


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


def _editor(env):
    from ..envs.toy import CatchEnv

    if isinstance(env, CatchEnv):
        return _ToyObjects(env)
    if env.spec.id.startswith("atari:"):
        raise NotImplementedError(
            "object attribution on atari: is not implemented yet (issue #27, item 2): moving an object is a RAM "
            "write (ale.setRAM at the addresses in envs/atari.py RAM_OBJECTS) but the ALE draws a frame only when "
            "it acts, so re-observing needs an emulator step whose own game logic moves the object (and may rewrite "
            "the byte) within the 4-frame skip, and most games have no RAM value for 'absent'; use a toy: game")
    raise NotImplementedError(f"object attribution needs an env whose objects can be edited in its state; "
                              f"{env.spec.id} has no object editor (toy: games have one)")


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
    editor = _editor(env)  # first: an env without an object editor says so, whatever the trace
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
            edited = editor.edit(trace.sim_state(s), objects[o], variants[v])
            cache[key] = None if edited is None else editor.render(edited)
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
    visible = np.zeros((S, O), bool)
    size = arrays["frame"].shape[-1]
    for o, name in enumerate(objects):
        boxes = arrays.get(f"objects/{name}")
        if boxes is not None:
            visible[:, o] = [box_slices(boxes[t], size) is not None for t in steps]
    return ObjectAttribution(steps=steps, objects=objects, variants=tuple(x.label for x in variants), k=k,
                             shift=shift, horizon=horizon, probs=probs[base], value=value[base], q=q[base],
                             applicable=applicable, flip=flip, visible=visible,
                             saturated=probs[base].max(1) > SATURATED, **out)


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
    # Q_H per first action from the re-filtered state, as highlights.q_values does from the recorded one.
    eye = F.one_hot(torch.arange(A, device=dev), A).float()
    branched = State(*(x.repeat_interleave(A, 0) for x in latent))
    result = dream(agent, branched, horizon, eye.repeat(R, 1)[:, None], "actor", decode=False)
    q = result["returns"][:, 0].reshape(R, A)
    return probs.cpu().numpy(), value.cpu().numpy(), q.cpu().numpy()

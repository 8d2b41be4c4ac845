"""Decision traces: a real episode replayed through the agent's own world model, step by step.

``record`` runs the agent in its env along the exact acting path of ``Agent.policy`` (``encode``
then ``rssm.obs_step`` with the previous posterior and action, then the actor) and keeps, for every
step t (DreamerV2 alignment: step t holds o_t, the action a_{t-1} that led to it, and r_t)::

    frame            uint8 [N, C, 64, 64]   o_t
    action           int [N] / float [N, A] a_t, the actor's choice after seeing o_t (on an is_last
                                            step the choice is recorded but not executed)
    prev_action      int [N] / float [N, A] a_{t-1} (-1 / 0 on is_first)
    action_vec       float [N, A]           a_t as fed back to the RSSM (one-hot for discrete)
    action_probs     float [N, A]           actor probabilities (discrete only)
    entropy, value, reward, pred_reward, pred_discount, surprise, recon_error   float [N]
                                            (value is NaN for an agent without a critic: World Models + CMA-ES)
    post_logits, prior_logits   float [N, stoch, classes]
    post_class, prior_class     int [N, stoch]  class index of the posterior sample (the one-hot the
                                                agent acted on) and of the prior's mode
    post_stoch       float [N, stoch]       Gaussian latents only (DreamerV1, World Models): the values the agent
                                            acted on; there post/prior_logits hold (mean, std) [N, stoch, 2] and
                                            post/prior_class are all 0
    prior_mixture    float [N, z, K]        World Models only: M's mixture weights over z_t
    deter            float [N, deter]
    recon            uint8 [N, C, 64, 64]   decoded posterior
    recon_sqerr      float16 [N, C, 64, 64] per-pixel squared error in [0, 1] pixel units
    objects/<name>   float32 [N, 4]         ground-truth boxes (NaN where absent)
    sim/<key>/data, sim/<key>/offsets, sim/<key>/shape   ragged simulator states (env.get_state()
                                            taken after o_t, before a_t), see ``Trace.sim_state``
    object_tv, object_dvalue  [N, O, V]     with ``record --objects`` only (``explain.objects.record_object_effects``):
    object_dq [N, O, V, A], object_flip,    every field of the ``ObjectAttribution`` of each step (O objects, V
    object_attempted, object_landed,        edits in ``meta["object_effects"]``): how far moving / removing each object
    object_probs, object_value, object_q    in the simulator moves p(action), the value and Q_H; table columns
                                            effect_<object> (the largest TV over the object's edits; NaN: none applied)
    object_steps     int64 [M]              the steps those arrays hold (N of them, or every N-th with
                                            ``--objects-every``; absent in traces written before it: all steps)

``save`` writes one versioned ``.npz`` (no object arrays; loads with ``allow_pickle=False``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import time
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from ..envs.gym_pixels import REPLAY_KEY

TRACE_FORMAT = "xdreamer-trace"
TRACE_VERSION = 1
HEADS_CHUNK = 64
TABLE_COLUMNS = ("episode", "t", "action", "action_name", "reward", "pred_reward", "pred_discount", "value",
                 "entropy", "surprise", "recon_error", "is_first", "is_last", "is_terminal")


@dataclasses.dataclass
class Trace:
    """A recorded decision trace: per-step ``arrays``, a per-step scalar ``table`` and ``meta``."""

    arrays: dict[str, np.ndarray]
    table: pd.DataFrame
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.table)

    @property
    def discrete(self) -> bool:
        return bool(self.meta["spec"]["discrete"])

    @property
    def num_actions(self) -> int:
        return int(self.meta["spec"]["num_actions"])

    @property
    def action_names(self) -> list[str]:
        names = list(self.meta["spec"].get("action_names") or [])
        return names if len(names) == self.num_actions else [str(i) for i in range(self.num_actions)]

    @property
    def object_names(self) -> list[str]:
        return [k.split("/", 1)[1] for k in self.arrays if k.startswith("objects/")]

    @property
    def object_steps(self) -> np.ndarray:
        """The steps the ``object_*`` arrays of ``record --objects`` hold: ``object_steps`` (every N-th step with
        ``--objects-every N``), or every step in a trace written before it existed."""
        return np.asarray(self.arrays.get("object_steps", np.arange(len(self))), np.int64)

    @property
    def has_sim_states(self) -> bool:
        return any(k.startswith("sim/") for k in self.arrays)

    def check_step(self, step: int) -> int:
        """``step`` as an int in range, or a one-line ValueError."""
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise ValueError(f"step must be an integer, got {step!r}")
        n = len(self)
        if not 0 <= int(step) < n:
            raise ValueError(f"step {step} is out of range: the trace has {n} steps (0..{n - 1})")
        return int(step)

    def episode_steps(self, step: int) -> np.ndarray:
        """Global indices of all steps in the episode containing ``step``."""
        episode = self.arrays["episode"]
        return np.flatnonzero(episode == episode[self.check_step(step)])

    def sim_state(self, step: int) -> dict[str, np.ndarray]:
        """The simulator state recorded at ``step`` (before its action), as ``env.get_state()`` gave it."""
        step = self.check_step(step)
        if not self.has_sim_states:
            raise ValueError(f"trace of {self.meta.get('env')} has no simulator states (env cannot branch)")
        keys = sorted({k.split("/")[1] for k in self.arrays if k.startswith("sim/")})
        out = {}
        for key in keys:
            data = self.arrays[f"sim/{key}/data"]
            offsets = self.arrays[f"sim/{key}/offsets"]
            shape = tuple(int(v) for v in self.arrays[f"sim/{key}/shape"][step])
            out[key] = data[offsets[step]:offsets[step + 1]].reshape(shape).copy()
        if REPLAY_KEY in out:  # a replay state: the actions since the episode's reset, from this trace
            start = int(self.episode_steps(step)[0])
            actions = self.arrays["action"][start:step]
            out["actions"] = (actions.astype(np.int64).reshape(-1) if actions.ndim == 1
                              else actions.astype(np.float32))
        return out


# ---- fingerprints ----------------------------------------------------------------------------
def weights_fingerprint(agent) -> str:
    """sha256 over the agent's parameter names, shapes and bytes (independent of any file)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(agent.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def check_trace_matches(trace: Trace, agent) -> None:
    """Raise ValueError when ``trace`` was recorded with another checkpoint / other weights."""
    manifest = getattr(agent, "manifest", None) or {}
    trace_sha, agent_sha = trace.meta.get("weights_sha256"), manifest.get("weights_sha256")
    if trace_sha and agent_sha:
        if trace_sha != agent_sha:
            raise ValueError(f"trace was recorded with checkpoint {trace.meta.get('checkpoint')} "
                             f"(weights sha256 {trace_sha[:12]}), not with this one ({agent_sha[:12]})")
    elif trace.meta.get("weights_fingerprint") != weights_fingerprint(agent):
        raise ValueError(f"trace was recorded with other weights (checkpoint {trace.meta.get('checkpoint')}) "
                         "than this agent's")
    spec = agent.spec.to_dict()
    for key in ("obs_shape", "discrete", "num_actions"):
        if spec[key] != trace.meta["spec"][key]:
            raise ValueError(f"trace/agent mismatch in {key}: trace {trace.meta['spec'][key]}, agent {spec[key]}")


# ---- recording ------------------------------------------------------------------------------
def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """Decoder output in [-0.5, 0.5] -> uint8."""
    return ((image.float() + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def acted_latent(arrays: dict, steps) -> np.ndarray:
    """The stochastic latent the agent acted on at ``steps`` (int or int array): float32 ``[..., stoch, K]`` as the
    RSSM's ``stoch`` holds it -- the one-hot of ``post_class`` (categorical; K classes) or, for Gaussian latents
    (DreamerV1; a trace with ``post_stoch``), the recorded values ``[..., stoch, 1]``."""
    if "post_stoch" in arrays:
        return np.asarray(arrays["post_stoch"][steps], np.float32)[..., None]
    classes = arrays["post_logits"].shape[-1]
    return np.eye(classes, dtype=np.float32)[np.asarray(arrays["post_class"][steps])]


@torch.no_grad()
def record(agent, env, episodes: int = 1, seed: int = 0, policy: str = "mode", max_steps: int | None = None,
           progress: bool = False, on_step: Callable[[int], None] | None = None) -> Trace:
    """Run ``episodes`` episodes of ``agent`` in ``env`` and record a ``Trace``.

    Episodes use the evaluation seeds of ``xdreamer.evaluation.evaluate`` (so a ``mode`` trace replays
    the same episodes as ``xdreamer eval --seed``). ``policy``: ``mode`` (deterministic: posterior mode
    and actor mode, as evaluation) or ``sample`` (as exploration; torch RNG seeded from ``seed``).
    ``max_steps`` cuts each episode after that many actions (the cut is not marked ``is_last``).
    ``on_step(n)`` is called after each recorded step with the number recorded so far (the app's progress count).
    """
    from ..evaluation import EVAL_SEED_OFFSET, episode_seed

    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    if policy not in ("mode", "sample"):
        raise ValueError(f"unknown policy {policy!r}; use mode or sample")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")
    from ..checkpoint import check_env

    check_env(agent.spec, env.spec)
    spec = env.spec
    explore = policy == "sample"
    wm, rssm, actor = agent.wm, agent.wm.rssm, agent.actor
    gaussian = rssm.latent_kind == "gaussian"
    extras = getattr(rssm, "step_extras", None)
    was_training = agent.training
    agent.eval()
    rows: dict[str, list] = {}
    sims: list[dict[str, np.ndarray]] = []
    feats: list[torch.Tensor] = []

    def add(**kw):
        for k, v in kw.items():
            rows.setdefault(k, []).append(v)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc=f"record {spec.id}", unit="step")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for index in range(episodes):
                obs = env.reset(seed=EVAL_SEED_OFFSET + episode_seed(seed, index))
                state = agent.initial_policy_state(1)
                prev_env_action = -1 if spec.discrete else np.zeros(spec.num_actions, np.float32)
                t = 0
                while True:
                    if spec.can_branch:
                        sim = env.get_state()
                        if REPLAY_KEY in sim:  # seed + actions: the actions are the trace's own (``sim_state``)
                            del sim["actions"]
                        sims.append(sim)
                    image = torch.as_tensor(obs["image"][None], device=agent.device)
                    is_first = torch.tensor([float(obs["is_first"])], device=agent.device)
                    # Exactly Agent.policy's acting step, keeping the prior as well.
                    with agent.autocast():
                        embed = wm.encode(image.float() / 255.0 - 0.5)
                        latent, prior = rssm.obs_step(state.latent, state.action, embed, is_first, sample=explore)
                        feat = wm.feat(latent)
                        action = actor.sample(feat) if explore else actor.mode(feat)
                        dist = actor(feat)
                    action = action.float()
                    latent = latent.map(lambda x: x.float())
                    feats.append(feat.float())
                    if spec.discrete:
                        env_action = int(action.argmax(-1)[0])
                        probs = dist.probs.float()[0].cpu().numpy()
                        entropy = float(dist.entropy().float()[0])
                    else:
                        env_action = action[0].cpu().numpy().astype(np.float32)
                        probs = None
                        entropy = float(actor.entropy(dist).float()[0])
                    add(frame=obs["image"].copy(), action=env_action, prev_action=prev_env_action,
                        action_vec=action[0].cpu().numpy(), entropy=entropy, reward=float(obs["reward"]),
                        post_logits=latent.logits[0].cpu().numpy(), prior_logits=prior.logits.float()[0].cpu().numpy(),
                        post_class=latent.stoch[0].argmax(-1).cpu().numpy(),
                        prior_class=(np.zeros(rssm.stoch_size, np.int64) if gaussian
                                     else prior.logits.float()[0].argmax(-1).cpu().numpy()),
                        deter=latent.deter[0].cpu().numpy(),
                        surprise=float(rssm.kl(latent.logits, prior.logits.float())[0]),
                        is_first=bool(obs["is_first"]), is_last=bool(obs["is_last"]),
                        is_terminal=bool(obs["is_terminal"]), episode=index, t=t)
                    if probs is not None:
                        add(action_probs=probs)
                    if gaussian:
                        add(post_stoch=latent.stoch[0, :, 0].cpu().numpy())
                    if extras is not None:  # World Models: M's mixture weights over z_t
                        add(**extras(prior))
                    for name in spec.object_names:
                        box = obs.get("objects", {}).get(name)
                        add(**{f"objects/{name}": np.full(4, np.nan, np.float32) if box is None
                               else np.asarray(box, np.float32)})
                    if len(feats) == HEADS_CHUNK:  # heads and decoder run batched, HEADS_CHUNK steps at once
                        _heads(agent, torch.cat(feats), rows["frame"][-len(feats):], add)
                        feats.clear()
                    if bar is not None:
                        bar.update(1)
                    if on_step is not None:
                        on_step(len(rows["frame"]))
                    if obs["is_last"] or (max_steps is not None and t >= max_steps):
                        break
                    obs = env.step(env_action)
                    state = type(state)(latent, action)
                    prev_env_action = env_action
                    t += 1
                if feats:
                    _heads(agent, torch.cat(feats), rows["frame"][-len(feats):], add)
                    feats.clear()
    finally:
        if bar is not None:
            bar.close()
        agent.train(was_training)

    arrays = {k: np.stack([np.asarray(x) for x in v]) for k, v in rows.items()}
    arrays["is_first"] = arrays["is_first"].astype(bool)
    for key in ("entropy", "value", "reward", "pred_reward", "pred_discount", "recon_error", "surprise"):
        arrays[key] = arrays[key].astype(np.float32)
    for key in ("episode", "t"):
        arrays[key] = arrays[key].astype(np.int64)
    if spec.discrete:
        arrays["action"] = arrays["action"].astype(np.int64)
        arrays["prev_action"] = arrays["prev_action"].astype(np.int64)
    if sims:
        arrays.update(_pack_ragged(sims))
    manifest = getattr(agent, "manifest", None) or {}
    meta = {
        "format": TRACE_FORMAT, "version": TRACE_VERSION,
        "checkpoint": str(getattr(agent, "path", "")) or None,
        "weights_sha256": manifest.get("weights_sha256"),
        "weights_fingerprint": weights_fingerprint(agent),
        "env": spec.id, "spec": spec.to_dict(), "seed": int(seed), "policy": policy,
        "episodes": int(episodes), "max_steps": max_steps, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "discount": float(agent.cfg.discount), "discount_lambda": float(agent.cfg.discount_lambda),
        "clip_rewards": agent.cfg.clip_rewards,
    }
    return Trace(arrays, make_table(arrays, spec.action_names, spec.discrete), meta)


def _heads(agent, feat: torch.Tensor, frames: list[np.ndarray], add, chunk: int = 64) -> None:
    """Value, reward and discount heads and the reconstruction (with its per-pixel squared error against
    ``frames``) for posterior features ``[T, F]``, batched over an episode."""
    wm = agent.wm
    critic = getattr(agent, "has_critic", True)  # World Models with a CMA-ES C has no value function: NaN
    for lo in range(0, len(feat), chunk):
        f = feat[lo:lo + chunk]
        with agent.autocast():
            value, reward, discount = agent.ac.value(f), wm.reward(f), wm.discount(f)
            recon = wm.decode(f)
        target = torch.as_tensor(np.stack(frames[lo:lo + chunk]), device=f.device).float() / 255.0
        sqerr = ((recon.float() + 0.5).clamp(0, 1) - target).pow(2)
        recon_u8 = _to_uint8(recon)
        for i in range(len(f)):
            add(value=float(value[i].float()) if critic else float("nan"), pred_reward=float(reward[i].float()),
                pred_discount=float(discount[i].float()), recon=recon_u8[i],
                recon_sqerr=sqerr[i].cpu().numpy().astype(np.float16), recon_error=float(sqerr[i].mean()))


def make_table(arrays: dict[str, np.ndarray], action_names, discrete: bool) -> pd.DataFrame:
    names = list(action_names)
    table = pd.DataFrame({k: arrays[k] for k in TABLE_COLUMNS
                          if k in arrays and k != "action_name" and (k != "action" or discrete)})
    if discrete:
        table["action_name"] = [names[a] if 0 <= a < len(names) else str(a) for a in arrays["action"]]
    else:
        table["action"] = [json.dumps([round(float(x), 4) for x in a]) for a in arrays["action"]]
        table["action_name"] = table["action"]
    return table[[c for c in TABLE_COLUMNS if c in table]]


def _pack_ragged(states: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-step dicts of arrays (sizes may vary) -> flat data + offsets + shapes per key."""
    out = {}
    keys = sorted(states[0])
    for i, s in enumerate(states):
        if sorted(s) != keys:
            raise ValueError(f"simulator state keys changed at step {i}: {sorted(s)} vs {keys}")
    for key in keys:
        parts = [np.asarray(s[key]) for s in states]
        ndims = {p.ndim for p in parts}
        if len(ndims) != 1:
            raise ValueError(f"simulator state {key!r} changes its number of dimensions between steps")
        dtype = np.result_type(*parts)
        if dtype == object or dtype.kind not in "biufU":
            raise ValueError(f"simulator state {key!r} has unsupported dtype {dtype}")
        sizes = np.array([p.size for p in parts], np.int64)
        out[f"sim/{key}/data"] = np.concatenate([p.reshape(-1).astype(dtype) for p in parts])
        out[f"sim/{key}/offsets"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        out[f"sim/{key}/shape"] = np.array([p.shape for p in parts], np.int64).reshape(len(parts), -1)
    return out


# ---- files ----------------------------------------------------------------------------------
def save(trace: Trace, path: str | os.PathLike) -> pathlib.Path:
    """Write ``trace`` to one ``.npz`` file atomically (no pickled objects); temporaries that killed xdreamer
    writes left in the folder are removed first (``checkpoint.clean_stale_temps``)."""
    from ..checkpoint import clean_stale_temps, temp_path

    path = pathlib.Path(path)
    data: dict[str, np.ndarray] = {}
    for key, value in trace.arrays.items():
        value = np.asarray(value)
        if value.dtype == object:
            raise ValueError(f"trace array {key!r} has dtype object; traces hold plain arrays only")
        data[f"a/{key}"] = value
    for column in trace.table.columns:
        values = trace.table[column].to_numpy()
        if values.dtype == object:
            values = values.astype(str)
        data[f"table/{column}"] = values
    data["meta"] = np.array(json.dumps({**trace.meta, "columns": list(trace.table.columns)}))
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# Per-step limits of a trace file, checked on the declared headers before any array is inflated (#28).
MAX_TRACE_STEPS = 1_000_000  # 37 whole 27,000-step Atari episodes
MAX_META_BYTES = 4 << 20  # the JSON meta record (a few KB in practice; unicode arrays take 4 bytes a character)
MAX_STEP_BYTES = 1 << 20  # one step of one array (a frame is 4-12 KB, logits 4 KB, deter 2.4 KB)
MAX_SIM_STEP_BYTES = 1 << 20  # one step of one simulator-state key (Atari's frame buffer is 67 KB)
_INT_KINDS, _NUM_KINDS = "iu", "biuf"


def _check_headers(path: pathlib.Path, headers: dict, meta: dict) -> int:
    """Check the declared layout of every member against the trace's own metadata; returns the step count."""
    def fail(text: str):
        raise ValueError(f"corrupt trace file {path}: {text}")

    episode = headers.get("a/episode")
    if episode is None or len(episode.shape) != 1 or episode.dtype.kind not in _INT_KINDS:
        fail("a/episode must be a 1-D integer array")
    n = episode.shape[0]
    if not 0 < n <= MAX_TRACE_STEPS:
        fail(f"{n} steps; a trace holds 1..{MAX_TRACE_STEPS:,}")
    obs_shape = tuple(meta["spec"]["obs_shape"])
    for name, member in headers.items():
        if name == "meta":
            continue
        if not name.startswith(("a/", "table/")):
            fail(f"unexpected member {name!r}")
        if member.dtype.kind not in _NUM_KINDS and not name.startswith("table/"):
            fail(f"{name} has dtype {member.dtype}; trace arrays are numbers")
        if name.startswith("a/sim/"):
            parts = name.split("/")
            if len(parts) != 4 or parts[3] not in ("data", "offsets", "shape"):
                fail(f"unexpected member {name!r}")
            if parts[3] == "offsets" and member.shape != (n + 1,):
                fail(f"{name} has shape {member.shape}, expected {(n + 1,)}")
            if parts[3] == "shape" and (len(member.shape) != 2 or member.shape[0] != n or member.shape[1] > 8):
                fail(f"{name} has shape {member.shape}, expected ({n}, <=8)")
            if parts[3] == "data" and (len(member.shape) != 1 or member.nbytes > n * MAX_SIM_STEP_BYTES):
                fail(f"{name} declares {member.nbytes:,} bytes, more than {MAX_SIM_STEP_BYTES:,} a step")
            if parts[3] != "data" and member.dtype.kind not in _INT_KINDS:
                fail(f"{name} must be integers")
            continue
        if name.startswith("a/object_"):  # ``record --objects-every N``: every N-th step (_check_values: object_steps)
            if not member.shape or member.shape[0] > n:
                fail(f"{name} has shape {member.shape}; object effects hold at most the {n} steps")
        elif not member.shape or member.shape[0] != n:
            fail(f"{name} has shape {member.shape}; every per-step array starts with the {n} steps")
        if member.nbytes > n * MAX_STEP_BYTES:
            fail(f"{name} declares {member.nbytes:,} bytes, more than {MAX_STEP_BYTES:,} a step")
        if name in ("a/frame", "a/recon", "a/recon_sqerr") and member.shape[1:] != obs_shape:
            fail(f"{name} has shape {member.shape}, expected ({n}, {', '.join(map(str, obs_shape))}) from meta.spec")
    return n


def _check_values(path: pathlib.Path, arrays: dict[str, np.ndarray], meta: dict, n: int) -> None:
    """Values the analysis indexes with: classes, actions, episodes, simulator offsets (#28: a post_class of
    10^6 or a garbled offset table gave tracebacks deep inside the analysis)."""
    def fail(text: str):
        raise ValueError(f"corrupt trace file {path}: {text}")

    spec = meta["spec"]
    for key in ("post_logits", "prior_logits"):
        if key in arrays and arrays[key].ndim != 3:
            fail(f"{key} must be [steps, variables, classes], got shape {arrays[key].shape}")
    stoch, classes = arrays["post_logits"].shape[1:]
    for key in ("post_class", "prior_class"):
        if key in arrays:
            a = arrays[key]
            if a.dtype.kind not in _INT_KINDS or a.shape != (n, stoch):
                fail(f"{key} must be integers of shape ({n}, {stoch})")
            if a.size and (a.min() < 0 or a.max() >= classes):
                fail(f"{key} holds class {int(a.max()) if a.max() >= classes else int(a.min())}, "
                     f"outside 0..{classes - 1}")
    if arrays["deter"].ndim != 2:
        fail(f"deter must be [steps, units], got shape {arrays['deter'].shape}")
    if "post_stoch" in arrays:  # Gaussian latents (DreamerV1): the values acted on, beside (mean, std) logits
        a = arrays["post_stoch"]
        if a.dtype.kind != "f" or a.shape != (n, stoch) or classes != 2 or not np.all(np.isfinite(a)):
            fail(f"post_stoch must be finite floats of shape ({n}, {stoch}) beside (mean, std) logits")
    for key in ("episode", "t"):
        if key in arrays and (arrays[key].dtype.kind not in _INT_KINDS or (arrays[key].size and arrays[key].min() < 0)):
            fail(f"{key} must be non-negative integers")
    if np.any(np.diff(arrays["episode"]) < 0):
        fail("episode indices must not decrease")
    num_actions = int(spec["num_actions"])
    for key, low in (("action", 0), ("prev_action", -1)):
        if key not in arrays:
            continue
        a = arrays[key]
        if spec["discrete"]:
            if a.dtype.kind not in _INT_KINDS or a.shape != (n,) or (a.size and (a.min() < low or a.max() >= num_actions)):
                fail(f"{key} must be integers in {low}..{num_actions - 1} of shape ({n},)")
        elif a.shape != (n, num_actions) or not np.all(np.isfinite(a)):
            fail(f"{key} must be finite floats of shape ({n}, {num_actions})")
    effects = meta.get("object_effects")  # explain.objects.record_object_effects (``record --objects``)
    stored = [k for k in arrays if k.startswith("object_") and k != "object_steps"]
    if stored or effects is not None or "object_steps" in arrays:
        from .objects import STORED

        if effects is None or sorted(stored) != sorted("object_" + f for f in STORED):
            fail(f"object effects need meta.object_effects and exactly the arrays "
                 f"{', '.join('object_' + f for f in STORED)} (and object_steps)")
        m = n  # the object arrays hold these steps only: all, or object_steps
        if "object_steps" in arrays:
            at = arrays["object_steps"]
            if at.dtype.kind not in _INT_KINDS or at.ndim != 1 or (at.size and (
                    at.min() < 0 or at.max() >= n or np.any(np.diff(at) <= 0))):
                fail(f"object_steps must be increasing step indices in 0..{n - 1}")
            m = len(at)
        O, V, A = len(effects["objects"]), len(effects["variants"]), num_actions
        missing = [name for name in effects["objects"] if f"objects/{name}" not in arrays]
        if missing:
            fail(f"meta.object_effects names object(s) {missing} that the trace has no boxes for")
        shapes = {"probs": (m, A), "value": (m,), "q": (m, A), "dq": (m, O, V, A)}
        for field, kind in STORED.items():
            a = arrays["object_" + field]
            if a.shape != shapes.get(field, (m, O, V)) or a.dtype.kind != kind:
                fail(f"object_{field} must be {'floats' if kind == 'f' else 'booleans'} of shape "
                     f"{shapes.get(field, (m, O, V))}")
        tv = arrays["object_tv"]
        if np.any((tv < 0) | (tv > 1 + 1e-5)):  # total variation; NaN where no edit applied
            fail("object_tv holds values outside 0..1 (total variation)")
    if "frame" in arrays and arrays["frame"].dtype != np.uint8:
        fail(f"frame must be uint8, got {arrays['frame'].dtype}")
    for key in [k for k in arrays if k.startswith("sim/") and k.endswith("/data")]:
        base = key[:-len("/data")]
        if f"{base}/offsets" not in arrays or f"{base}/shape" not in arrays:
            fail(f"{base} lacks offsets or shape")
        data, offsets, shapes = arrays[key], arrays[f"{base}/offsets"], arrays[f"{base}/shape"]
        if offsets[0] != 0 or offsets[-1] != len(data) or np.any(np.diff(offsets) < 0):
            fail(f"{base}/offsets do not index {base}/data")
        if np.any(shapes < 0) or np.any(np.prod(shapes, axis=1, dtype=np.float64) != np.diff(offsets)):
            fail(f"{base}/shape does not match its offsets")


def load_trace(path: str | os.PathLike) -> Trace:
    """Load a trace written by ``save``; never unpickles, never inflates past the bounds its own metadata
    implies (``npzfile``, issue #28). Bad files raise a one-line ValueError."""
    from .. import npzfile
    from ..schema import validate_trace_meta

    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"trace file not found: {path}")
    try:
        headers = npzfile.read_headers(path)
        npzfile.check_total(path, headers, npzfile.default_cap())
    except npzfile.NpzLimitError as exc:  # its message starts with the path
        raise ValueError(f"corrupt trace file {exc}") from None
    meta_member = headers.get("meta")
    if meta_member is None:
        raise ValueError(f"{path} is not an xdreamer trace (no meta record)")
    if meta_member.shape != () or meta_member.dtype.kind != "U" or meta_member.nbytes > MAX_META_BYTES:
        raise ValueError(f"corrupt trace file {path}: the meta record must be one string of at most "
                         f"{MAX_META_BYTES // 4:,} characters")
    try:
        meta = json.loads(str(npzfile.read_arrays(path, headers, ["meta"])["meta"]))
    except npzfile.NpzLimitError as exc:
        raise ValueError(f"corrupt trace file {exc}") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"corrupt trace file {path}: bad meta JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != TRACE_FORMAT:
        raise ValueError(f"{path} is not an xdreamer trace")
    if meta.get("version") != TRACE_VERSION:
        raise ValueError(f"trace {path} has format version {meta.get('version')!r}; "
                         f"this xdreamer reads version {TRACE_VERSION}")
    meta = validate_trace_meta(meta, path)
    n = _check_headers(path, headers, meta)
    columns = meta.pop("columns", None) or [k[6:] for k in headers if k.startswith("table/")]
    missing = [k for k in ("frame", "deter", "post_class", "post_logits", "action", "episode") if f"a/{k}" not in headers]
    missing += [f"table/{c}" for c in columns if f"table/{c}" not in headers]
    if missing:
        raise ValueError(f"corrupt trace file {path}: missing {', '.join(missing)}")
    try:
        data = npzfile.read_arrays(path, headers, [k for k in headers if k != "meta"])
    except npzfile.NpzLimitError as exc:
        raise ValueError(f"corrupt trace file {exc}") from None
    arrays = {k[2:]: v for k, v in data.items() if k.startswith("a/")}
    _check_values(path, arrays, meta, n)
    table = pd.DataFrame({c: data[f"table/{c}"] for c in columns})
    return Trace(arrays, table, meta)

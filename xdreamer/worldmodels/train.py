"""World Models training in stages (paper §3, "Procedure"): random rollouts -> V -> M -> C.

A run folder::

    config.json, commands.txt
    replay/                 stage 1: random-policy episodes (xdreamer.replay, one atomic .npz each)
    stages/vae.safetensors  stage 2: V
    stages/series.npz       V's mean and log-variance of every frame, with actions, rewards and ends (series.py)
    stages/mdnrnn.safetensors  stage 3: M
    stages/controller.safetensors  stage 4: C (and PPO's critic), rewritten after every generation / iteration
    stages/status.json      what each stage did: its metrics, seconds, and whether it is complete
    checkpoints/step-N/, checkpoints/latest   the agent (xdreamer.checkpoint format, manifest algo worldmodels)

Every output is written atomically. ``resume=True`` skips the stages that are complete and continues the one that
is not: collection from the next episode, C from its last generation / iteration (V and M, a few minutes each on
the CPU presets, restart). Run-time fields (``RUNTIME_KEYS``) may change on resume; so may ``wm_generations`` and
``wm_ppo_iterations``, to train C further.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Any, Mapping

import numpy as np
import torch

from .. import checkpoint as shared
from ..config import Config, check_device, read_config_file
from ..evaluation import evaluate
from ..replay import Replay, save_episode as save_npz
from ..training import RUNTIME_KEYS as SHARED_RUNTIME_KEYS, TrainResult, configure_cpu, seed_everything
from . import settings
from .agent import WorldModelsAgent
from .checkpoint import load_module, save, save_module
from .envs import make_env
from .mdnrnn import heldout_nll, marginal_nll, train_mdnrnn, transitions
from .rollouts import collect_random
from .vae import encode_frames, reconstruction_error, train_vae

RUNTIME_KEYS = (*SHARED_RUNTIME_KEYS, *settings.RUNTIME_KEYS, "wm_generations", "wm_ppo_iterations", "wm_iterations")
# What a run on another run's V and M (``world_model=``) may set: how C is trained and evaluated. V, M, the env and
# its protocol come from the source, so the two controllers are compared on one world model.
CONTROLLER_KEYS = (*SHARED_RUNTIME_KEYS, "seed", "wm_controller", "wm_dream", "wm_temperature", "wm_popsize",
                   "wm_cma_rollouts", "wm_cma_sigma", "wm_cma_steps", "wm_generations", "wm_workers",
                   *(f.name for f in dataclasses.fields(settings.WorldModelsFields) if f.name.startswith("wm_ppo_")))
DREAM_STARTS = 64  # first frames encoded for dream starts when a run reuses another's V and M (no series of its own)
SERIES_KEYS = ("mean", "logvar", "action", "reward", "is_terminal", "lengths")
MAX_STATUS_BYTES = 64 << 20  # status.json holds per-update histories and CMA-ES's mean (~1 MB at paper size)
HELDOUT_FRACTION = 0.1  # episodes M does not train on, for the NLL against the unconditional baseline


class WorldModelsRun:
    """One run folder; ``run()`` does what its stages still need."""

    def __init__(self, cfg: Config | None, logdir: str | os.PathLike, resume: bool = False, progress: bool = True,
                 overrides: Mapping[str, Any] | None = None, command: str | None = None,
                 ray: str | None = None, world_model: str | os.PathLike | None = None) -> None:
        self.logdir, self.progress, self.ray = pathlib.Path(logdir), progress, ray
        self.stages = self.logdir / "stages"
        has_run = (self.logdir / "config.json").exists()
        if has_run and not resume:
            raise ValueError(f"{self.logdir} already holds a run; pass --resume to continue it or choose another "
                             "--logdir")
        if resume:
            if not has_run:
                raise ValueError(f"nothing to resume in {self.logdir} (no config.json)")
            bad = sorted(set(overrides or {}) - set(RUNTIME_KEYS))
            if bad:
                raise ValueError(f"cannot change {', '.join(bad)} when resuming; only run-time keys "
                                 f"({', '.join(RUNTIME_KEYS)}) may change")
            cfg = read_config_file(self.logdir / "config.json").replace(**(overrides or {}))
        source = None
        if world_model is not None:
            if resume:
                raise ValueError("--world-model starts a run; --resume continues one (which keeps its V and M)")
            source, cfg = _source_world_model(world_model, overrides or {})
        assert cfg is not None
        if cfg.algo != "worldmodels":
            raise ValueError(f"{self.logdir}: config algo={cfg.algo!r}; this trainer runs World Models")
        check_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        configure_cpu()
        seed_everything(cfg.seed)
        self.cfg = cfg
        self.stages.mkdir(parents=True, exist_ok=True)
        shared.clean_stale_temps(self.stages)
        shared.atomic_write_text(self.logdir / "config.json", cfg.to_json() + "\n")
        if command:
            with open(self.logdir / "commands.txt", "a") as f:
                f.write(command.strip() + "\n")
        self.status = self._read_status() if resume else {}
        self.env = make_env(cfg, seed=cfg.seed)
        self.agent = WorldModelsAgent(cfg, self.env.spec)
        if source is not None:
            self._adopt(source)

    def _adopt(self, source) -> None:
        """Take V and M from the checkpoint ``source`` (``_source_world_model``): its modules saved as this run's
        stages, whose records (data, updates, seconds, held-out NLL) are the source's with ``from`` added."""
        if tuple(source.spec.obs_shape) != tuple(self.env.spec.obs_shape) or \
                source.spec.num_actions != self.env.spec.num_actions:
            raise ValueError(f"{source.path}: its env spec does not match {self.cfg.env} as made here")
        self.agent.vae.load_state_dict(source.vae.state_dict())
        self.agent.mdn.load_state_dict(source.mdn.state_dict())
        save_module(self.stages / "vae.safetensors", self.agent.vae)
        save_module(self.stages / "mdnrnn.safetensors", self.agent.mdn)
        stages = source.manifest.get("stages") if isinstance(source.manifest.get("stages"), dict) else {}
        for stage in ("rollouts", "vae", "mdnrnn"):
            record = stages.get(stage) if isinstance(stages.get(stage), dict) else {}
            self.status[stage] = {**record, "done": True, "from": str(source.path)}
        self._mark("source", {"checkpoint": str(source.path), "weights_sha256": source.manifest.get("weights_sha256"),
                              "iterations": source.manifest.get("iterations", 1)})

    # ---- bookkeeping ------------------------------------------------------------------------------------------
    def _read_status(self) -> dict[str, Any]:
        path = self.stages / "status.json"
        if not path.exists():
            return {}
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_STATUS_BYTES + 1)
            if len(raw) > MAX_STATUS_BYTES:
                raise ValueError(f"larger than {MAX_STATUS_BYTES} bytes")
            status = json.loads(raw)
            if not isinstance(status, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError, RecursionError) as exc:
            raise shared.CheckpointError(f"refusing {path}: {' '.join(str(exc).split())[:200]}") from None
        return status

    def _mark(self, stage: str, record: dict[str, Any]) -> None:
        self.status[stage] = record
        shared.atomic_write_text(self.stages / "status.json", json.dumps(self.status, indent=1) + "\n")

    def _done(self, stage: str) -> bool:
        record = self.status.get(stage)
        return isinstance(record, dict) and record.get("done") is True

    # ---- stage 1: random rollouts -----------------------------------------------------------------------------
    def collect(self) -> None:
        if self._done("rollouts"):
            return
        start = time.time()
        replay = Replay(self.logdir / "replay", capacity=10**12, seed=self.cfg.seed)
        replay.load()
        before = int(self.status.get("rollouts", {}).get("env_steps", 0)) if replay.total_episodes else 0
        steps = collect_random(self.env, replay, self.cfg.wm_rollouts, self.cfg.seed, self.progress)
        self._mark("rollouts", {"done": True, "episodes": replay.total_episodes, "env_steps": before + steps,
                                "seconds": round(time.time() - start, 1)})

    def _episodes(self) -> list[dict[str, np.ndarray]]:
        replay = Replay(self.logdir / "replay", capacity=10**12, seed=self.cfg.seed)
        replay.load()
        episodes = list(replay.episodes.values())
        if not episodes:
            raise ValueError(f"{self.logdir / 'replay'} holds no episodes")
        shape = tuple(self.env.spec.obs_shape)
        for episode in episodes:
            if episode["image"].shape[1:] != shape:
                raise ValueError(f"replay episode frames {episode['image'].shape[1:]} do not fit the env {shape}")
        return episodes

    # ---- stage 2: V, then the encoded series ------------------------------------------------------------------
    def fit_vae(self) -> None:
        vae_file, series_file = self.stages / "vae.safetensors", self.stages / "series.npz"
        if self._done("vae"):
            load_module(vae_file, self.agent.vae)
            if series_file.exists() or self._adopted():
                return
        elif vae_file.exists():  # an iteration retrains V from where the last one left it
            load_module(vae_file, self.agent.vae)
        episodes = self._episodes()
        frames = np.concatenate([e["image"] for e in episodes])
        if not self._done("vae"):
            start = time.time()
            rng = np.random.default_rng([self.cfg.seed, 2])
            history = train_vae(self.agent.vae, frames, self.cfg, rng, self.progress)
            save_module(vae_file, self.agent.vae)
            sample = frames[rng.choice(len(frames), min(len(frames), 2000), replace=False)]
            mean_frame = sample.astype(np.float32).mean(0) / 255.0
            baseline = float(np.mean((sample.astype(np.float32) / 255.0 - mean_frame) ** 2))
            self._mark("vae", {"done": True, "frames": len(frames), "history": history,
                               "updates": self.cfg.wm_vae_epochs * -(-len(frames) // self.cfg.wm_vae_batch),
                               "recon_mse": reconstruction_error(self.agent.vae, sample), "mean_frame_mse": baseline,
                               "seconds": round(time.time() - start, 1)})
        mean, logvar = encode_frames(self.agent.vae, frames)
        series = {"mean": mean, "logvar": logvar, "lengths": np.array([len(e["image"]) for e in episodes], np.int64),
                  **{k: np.concatenate([self._action_input(e["action"]) if k == "action" else e[k]
                                        for e in episodes]).astype(np.float32)
                     for k in ("action", "reward", "is_terminal")}}
        save_npz(series_file, series)  # the replay's atomic compressed .npz writer

    def _adopted(self) -> bool:
        """Whether V and M came from another run (``world_model=``): there is no replay or series here."""
        return isinstance(self.status.get("source"), dict)

    def _dream_starts(self) -> np.ndarray:
        """V's mean and log-variance of episodes' first frames ``[N, 2, z]``, where M's dreams start: the series'
        own, or (V and M adopted from another run) ``DREAM_STARTS`` resets of the env, seeded."""
        if not self._adopted():
            series = self.series()
            return np.stack([np.stack([s["mean"][0], s["logvar"][0]]) for s in series])
        from ..evaluation import episode_seed

        frames = np.stack([self.env.reset(seed=episode_seed(self.cfg.seed + 7, i))["image"]
                           for i in range(DREAM_STARTS)])
        mean, logvar = encode_frames(self.agent.vae, frames)
        return np.stack([mean, logvar], axis=1)

    def _action_input(self, action: np.ndarray) -> np.ndarray:
        if self.env.spec.discrete:
            return np.eye(self.env.spec.num_actions, dtype=np.float32)[action.astype(np.int64)]
        return action.astype(np.float32)

    def series(self) -> list[dict[str, np.ndarray]]:
        """The encoded episodes of ``stages/series.npz``, one dict each (read bounded, never unpickled)."""
        data = _load_series(self.stages / "series.npz", self.cfg.wm_z, self.agent.action_dim)
        bounds = np.concatenate([[0], np.cumsum(data["lengths"])])
        return [{k: data[k][a:b] for k in SERIES_KEYS if k != "lengths"} for a, b in zip(bounds[:-1], bounds[1:])]

    # ---- stage 3: M ---------------------------------------------------------------------------------------------
    def fit_mdnrnn(self) -> None:
        path = self.stages / "mdnrnn.safetensors"
        if self._done("mdnrnn") or path.exists():  # done, or (an iteration) retrained from where it is
            load_module(path, self.agent.mdn)
        if self._done("mdnrnn"):
            return
        start = time.time()
        series = self.series()
        held = max(1, int(len(series) * HELDOUT_FRACTION)) if len(series) > 1 else 0
        train, test = series[:len(series) - held], series[len(series) - held:]
        rng = np.random.default_rng([self.cfg.seed, 3])
        history = train_mdnrnn(self.agent.mdn, train, self.cfg, rng, self.progress)
        save_module(path, self.agent.mdn)
        record: dict[str, Any] = {"done": True, "episodes": len(train), "heldout_episodes": len(test),
                                  "updates": self.cfg.wm_rnn_steps,
                                  "seconds": round(time.time() - start, 1), "final": history[-1] if history else {}}
        if test:
            targets = np.random.default_rng([self.cfg.seed, 4])
            train_t, test_t = transitions(train, targets), transitions(test, targets)
            record.update(heldout_nll=heldout_nll(self.agent.mdn, test_t), marginal_nll=marginal_nll(train_t, test_t))
        self._mark("mdnrnn", record)

    # ---- stage 4: C ---------------------------------------------------------------------------------------------
    def _controller_module(self) -> torch.nn.Module:
        parts = {"controller": self.agent.controller}
        if self.agent.critic is not None:
            parts["critic"] = self.agent.critic
        return torch.nn.ModuleDict(parts)

    def fit_controller(self) -> None:
        path, record = self.stages / "controller.safetensors", self.status.get("controller")
        resume = None
        if isinstance(record, dict) and path.exists():
            load_module(path, self._controller_module())
            resume = record.get("progress")
        key = "generation" if self.cfg.wm_controller == "cmaes" else "iteration"
        total = self.cfg.wm_generations if key == "generation" else self.cfg.wm_ppo_iterations
        start = time.time()

        def save_progress(progress: dict[str, Any]) -> None:
            save_module(path, self._controller_module())
            done = progress.get(key, 0) >= total
            self._mark("controller", {"done": done, "controller": self.cfg.wm_controller, "dream": self.cfg.wm_dream,
                                      "updates": progress.get(key, 0),
                                      "progress": _jsonable(progress),
                                      "seconds": round(time.time() - start + _seconds(record), 1)})

        if resume is not None and int(resume.get(key, 0)) >= total:
            # nothing left to train (no worker processes started); a budget lowered to where C is marks it done
            save_progress(resume)
            return

        starts = self._dream_starts() if self.cfg.wm_dream else None
        if self.cfg.wm_controller == "cmaes":
            from .cmaes import train_cmaes

            final = train_cmaes(self.agent, self.cfg, starts, resume=resume, save=save_progress,
                                progress=self.progress, ray=self.ray)
        else:
            final = self._ppo(starts, resume, save_progress)
        save_progress(final)  # also when there was nothing left to do (wm_generations reached)

    def _ppo(self, starts, resume, save_progress) -> dict[str, Any]:
        from .ppo import RealVecEnv, train_ppo

        cfg = self.cfg
        if cfg.wm_dream:
            from .dream import DreamEnv

            generator = torch.Generator(device=self.agent.device).manual_seed(cfg.seed + 5)
            vec = DreamEnv(self.agent, starts, cfg.wm_temperature, self.env.spec.max_steps or cfg.time_limit,
                           generator)
        else:
            vec = RealVecEnv(self.agent, [make_env(cfg, seed=cfg.seed + 2 + i) for i in range(cfg.wm_ppo_envs)],
                             seed=cfg.seed + 2)
        before = int((resume or {}).get("env_steps", 0))

        def save_with_steps(progress: dict[str, Any]) -> None:
            save_progress({**progress, "env_steps": before + getattr(vec, "env_steps", 0)})

        try:
            final = train_ppo(self.agent, cfg, vec, resume=resume, save=save_with_steps, progress=self.progress)
        finally:
            for env in getattr(vec, "envs", []):
                env.close()
        return {**final, "env_steps": before + getattr(vec, "env_steps", 0)}

    # ---- all stages, then the checkpoint ------------------------------------------------------------------------
    def run(self) -> TrainResult:
        self.collect()
        self.fit_vae()
        self.fit_mdnrnn()
        self.fit_controller()
        while self._iterations() < self.cfg.wm_iterations:
            self.iterate()
        return self.finish()

    # ---- the iterative procedure (paper §5) ---------------------------------------------------------------------
    def _iterations(self) -> int:
        """Complete passes: 1 after the first (random-policy) one, +1 per finished iteration."""
        return int(self.status.get("iterations", {}).get("done", 1))

    def iterate(self) -> None:
        """One iteration: ``wm_rollouts`` more episodes collected by the trained agent (``wm_explore`` of its steps
        random), then V, M and C retrained on everything from where they are (C: ``wm_generations`` more CMA-ES
        generations from its mean, or ``wm_ppo_iterations`` more PPO iterations). Every step is recorded in
        ``status.json`` as it completes, so an interrupted iteration resumes where it stopped."""
        if self._adopted():
            raise ValueError("wm_iterations > 1 retrains V and M on the run's own rollouts; a run on another run's "
                             "world model (--world-model) has none: iterate the source run instead")
        number = self._iterations() + 1
        key, cfg = f"iteration-{number}", self.cfg
        record = self.status.get(key) if isinstance(self.status.get(key), dict) else {}
        if not record.get("collected"):
            from .rollouts import collect_random

            start = time.time()
            replay = Replay(self.logdir / "replay", capacity=10**12, seed=cfg.seed)
            replay.load()
            steps = collect_random(self.env, replay, cfg.wm_rollouts * number, cfg.seed, self.progress,
                                   agent=self.agent, epsilon=cfg.wm_explore)
            previous = {k: {f: v for f, v in self.status.get(k, {}).items() if f not in ("history", "progress")}
                        for k in ("vae", "mdnrnn", "controller")}
            record = {"collected": True, "episodes": replay.total_episodes, "env_steps": steps,
                      "seconds": round(time.time() - start, 1), "before": previous}
            (self.stages / "series.npz").unlink(missing_ok=True)  # re-encoded by the retrained V
            for stage in ("vae", "mdnrnn"):
                self.status[stage] = {**self.status.get(stage, {}), "done": False}
            controller = dict(self.status.get("controller", {}))
            progress = dict(controller.get("progress") or {})
            counter = "generation" if cfg.wm_controller == "cmaes" else "iteration"
            progress[counter] = 0  # from C's current parameters (CMA-ES: its mean and step size), the budget again
            self.status["controller"] = {**controller, "done": False, "progress": progress}
            self._mark(key, record)
        self.fit_vae()
        self.fit_mdnrnn()
        self.fit_controller()
        self._mark("iterations", {"done": number})

    def finish(self) -> TrainResult:
        cfg = self.cfg
        eval_env = make_env(cfg, seed=cfg.seed + 1)
        try:
            result = evaluate(self.agent, eval_env, cfg.eval_episodes, seed=cfg.seed, progress=self.progress)
            baseline = evaluate(None, eval_env, cfg.eval_episodes, seed=cfg.seed, policy="random")
        finally:
            eval_env.close()
        progress = self.status["controller"]["progress"]
        iterations = [v for k, v in self.status.items() if k.startswith("iteration-") and isinstance(v, dict)]
        # C's env steps accumulate over the iterations in its progress record; each iteration adds its rollouts
        steps = (int(self.status["rollouts"]["env_steps"]) + int(progress.get("env_steps", 0))
                 + sum(int(r.get("env_steps", 0)) for r in iterations))
        seconds = sum(_seconds(self.status.get(k)) for k in ("rollouts", "vae", "mdnrnn", "controller"))
        # V's epochs x batches, M's updates, C's generations / iterations
        self.agent.updates = sum(int(self.status[k].get("updates", 0)) for k in ("vae", "mdnrnn", "controller"))
        for r in iterations:  # the earlier passes' V, M and C (C's seconds accumulate in its own record)
            before = r.get("before", {})
            seconds += _seconds(r) + sum(_seconds(before.get(k)) for k in ("vae", "mdnrnn"))
            self.agent.updates += sum(int(before.get(k, {}).get("updates", 0)) for k in ("vae", "mdnrnn", "controller"))
        name = f"step-{steps:09d}"
        path = save(self.logdir / "checkpoints" / name, self.agent, steps=steps,
                    extra={"eval": result.to_dict(), "eval_random": baseline.to_dict(), "train_wall_s": seconds,
                           "train_episodes": max([int(self.status["rollouts"]["episodes"])]
                                                 + [int(r.get("episodes", 0)) for r in iterations]),
                           "iterations": self._iterations(),
                           **({"world_model": self.status["source"]} if self._adopted() else {}),
                           "stages": {k: {f: v for f, v in self.status[k].items() if f not in ("history", "progress")}
                                      for k in ("rollouts", "vae", "mdnrnn", "controller")}})
        shared.atomic_write_text(self.logdir / "checkpoints" / "latest", name + "\n")
        self.env.close()
        return TrainResult(self.logdir, path, steps, self.agent.updates, result.mean)


def train(cfg: Config | None, logdir: str | os.PathLike, resume: bool = False, progress: bool = True,
          overrides: Mapping[str, Any] | None = None, command: str | None = None,
          ray: str | None = None, world_model: str | os.PathLike | None = None) -> TrainResult:
    """Train a World Models agent per ``cfg`` in ``logdir``, or resume the run there (``WorldModelsRun``). ``ray``:
    evaluate CMA-ES candidates on Ray (``"local"``, or a cluster's address) instead of local processes.
    ``world_model``: a World Models checkpoint (or run folder) whose V and M this run keeps, training only C; the
    config is the source's with ``overrides`` of C's fields (``CONTROLLER_KEYS``), and ``cfg`` must be None."""
    if world_model is not None and cfg is not None:
        raise ValueError("world_model= takes the source's config; pass C's fields as overrides, not a cfg")
    return WorldModelsRun(cfg, logdir, resume=resume, progress=progress, overrides=overrides, command=command,
                          ray=ray, world_model=world_model).run()


# ---- helpers ------------------------------------------------------------------------------------------------------
def _source_world_model(path: str | os.PathLike, overrides: Mapping[str, Any]):
    """The checkpoint at ``path`` (loaded safely, ``checkpoint.load``) and the new run's config: the source's, with
    ``overrides`` of C's fields only. A C of the other kind starts from zero, as any C."""
    from .checkpoint import load

    bad = sorted(set(overrides) - set(CONTROLLER_KEYS))
    if bad:
        raise ValueError(f"--world-model keeps the source's V, M and env; cannot set {', '.join(bad)} (C's fields: "
                         "wm_controller, wm_dream, wm_temperature, wm_cma_*, wm_popsize, wm_generations, wm_ppo_*, "
                         "seed and run-time keys)")
    source = load(path, device="cpu")
    cfg = source.cfg.replace(**overrides)
    return source, cfg


def _seconds(record: Any) -> float:
    return float(record.get("seconds", 0.0)) if isinstance(record, dict) else 0.0


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _load_series(path: pathlib.Path, z: int, action_dim: int) -> dict[str, np.ndarray]:
    """``series.npz`` read bounded: members and shapes must fit the config before anything is inflated."""
    from ..npzfile import NpzLimitError, load_bounded

    def check(headers) -> None:
        if set(headers) != set(SERIES_KEYS):
            raise NpzLimitError(f"members {sorted(headers)}, expected {sorted(SERIES_KEYS)}")
        steps = headers["mean"].shape[0] if headers["mean"].shape else -1
        want = {"mean": (steps, z), "logvar": (steps, z), "action": (steps, action_dim), "reward": (steps,),
                "is_terminal": (steps,)}
        for key, shape in want.items():
            if headers[key].shape != shape:
                raise NpzLimitError(f"{key} has shape {headers[key].shape}, expected {shape}")
        if len(headers["lengths"].shape) != 1:
            raise NpzLimitError("lengths must be one-dimensional")

    try:
        data = load_bounded(path, check)
    except (ValueError, OSError) as exc:
        raise shared.CheckpointError(f"refusing {path}: {' '.join(str(exc).split())[:200]}") from None
    lengths = data["lengths"]
    if lengths.dtype.kind not in "iu" or (lengths < 1).any() or int(lengths.sum()) != len(data["mean"]):
        raise shared.CheckpointError(f"refusing {path}: its episode lengths do not add up to its {len(data['mean'])} "
                                     "steps")
    return data

"""The training loop (dreamerv2 ``train.py``): prefill with a random policy, then alternate
acting in the env with the actor and one update every ``train_every`` agent steps.

A run folder holds ``config.json``, ``metrics.jsonl``, ``tb/``, ``replay/`` (completed
episodes), ``videos/`` (open-loop predictions) and ``checkpoints/step-N/`` with a ``latest``
pointer. ``resume=True`` continues from the latest checkpoint: weights, optimisers, step and
update counters, RNG states and the replay reloaded from disk.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pathlib
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from . import checkpoint
from .agent import Agent
from .config import Config, check_device, read_config_file
from .envs import Env, make
from .evaluation import episode_seed, evaluate, lockstep_envs, random_action
from .logger import Logger, write_video
from .openloop import filmstrip, grid_frames, open_loop
from .replay import EpisodeBuilder, Replay


# Fields that may change when a run is resumed; everything else is fixed by the run's config.
RUNTIME_KEYS = ("steps", "device", "precision", "compile", "threads", "eval_every", "eval_episodes", "log_every",
                "video_every", "checkpoint_every", "checkpoint_minutes", "keep_checkpoints")


def env_kwargs(cfg: Config) -> dict[str, Any]:
    """The env-protocol fields of ``cfg`` that apply to ``cfg.env``'s family."""
    family = cfg.env.split(":", 1)[0]
    if family == "atari":
        return {"sticky": cfg.sticky, "noops": cfg.noops, "time_limit": cfg.time_limit,
                "full_action_space": cfg.atari_actions == "full"}
    if family == "mujoco":
        return {"action_repeat": cfg.action_repeat}
    if getattr(cfg, "algo", None) == "worldmodels":
        from .worldmodels.envs import crop_for

        crop = crop_for(cfg.env)  # World Models' CarRacing view: the top 84 rows, as the agent was trained on
        if crop is not None:
            return {"crop": crop[1]}
    return {}


def make_env(cfg: Config, seed: int | None = None) -> Env:
    return make(cfg.env, seed=seed, **env_kwargs(cfg))


class Every:
    """True once every ``every`` units of a counter (dreamerv2 ``common.Every``)."""

    def __init__(self, every: int, last: int = 0) -> None:
        self.every, self.last = every, last

    def __call__(self, step: int) -> bool:
        if self.every <= 0 or step < self.last + self.every:
            return False
        self.last = step - step % self.every
        return True


@dataclass
class TrainResult:
    logdir: pathlib.Path
    checkpoint: pathlib.Path
    steps: int
    updates: int
    eval_mean: float | None


def configure_cpu() -> None:
    """Flush denormal floats to zero on CPU and keep freed memory in the process (``keep_freed_memory``).
    Early in training Adam's second moments and tiny activations fall into the denormal range, which made
    CPU updates 2-3x slower here; the losses were identical to the printed precision with and without
    flushing."""
    torch.set_flush_denormal(True)
    keep_freed_memory()


_MALLOC_KEPT = False


def keep_freed_memory() -> bool:
    """Make glibc's malloc serve every allocation from its heap and never give freed memory back to the OS.

    By default glibc maps each allocation over 128 KB-32 MB (``M_MMAP_THRESHOLD``) freshly from the kernel and
    unmaps it on free, so every update's activations (tens of MB each at paper size) are page-faulted and
    zeroed again (200-320k minor page faults and 0.7-1.0 s of kernel time per paper-size bfloat16 update on 2
    cores, counted with ``getrusage`` around ``train_step`` in a one-off script; 0-13k with this setting). With
    mmap off (``M_MMAP_MAX`` 0) and no trimming (``M_TRIM_THRESHOLD`` max), ``python -m xdreamer.bench preset
    atari 3 PRECISION off`` went from 6.96 to 5.34 s per update in float32 and from 3.80 to 2.85 s in
    bfloat16, with peak RSS 2.0 -> 2.5 GB and 1.6 -> 1.7 GB (docs/benchmarks.md). The process keeps its peak
    memory until it exits. Linux/glibc only; returns whether it applied. ``XDREAMER_MALLOC=default`` leaves
    malloc alone."""
    global _MALLOC_KEPT
    if _MALLOC_KEPT:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("XDREAMER_MALLOC", "").lower() == "default":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    _MALLOC_KEPT = mallopt(m_mmap_max, 0) == 1 and mallopt(m_trim_threshold, 2**31 - 1) == 1
    return _MALLOC_KEPT


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


class Trainer:
    def __init__(self, cfg: Config | None, logdir: str | os.PathLike, resume: bool = False,
                 progress: bool = True, overrides: Mapping[str, Any] | None = None,
                 command: str | None = None) -> None:
        """``cfg`` configures a new run. With ``resume`` the run's saved config is used and
        ``overrides`` may change only run-time fields (``RUNTIME_KEYS``). ``command`` (the command
        line that started or resumed the run) is appended to ``commands.txt`` for provenance."""
        self.logdir = pathlib.Path(logdir)
        self.ckpt_dir = self.logdir / "checkpoints"
        has_run = (self.ckpt_dir / "latest").exists()
        if has_run and not resume:
            raise ValueError(f"{self.logdir} already holds a run; pass --resume to continue it "
                             "or choose another --logdir")
        if resume and not has_run:
            raise ValueError(f"nothing to resume in {self.logdir} (no checkpoints/latest)")
        self.progress = progress
        trainer_state = None
        if resume:
            bad = sorted(set(overrides or {}) - set(RUNTIME_KEYS))
            if bad:
                raise ValueError(f"cannot change {', '.join(bad)} when resuming; only run-time keys "
                                 f"({', '.join(RUNTIME_KEYS)}) may change")
            # config.json and trainer.pt may have been edited or swapped (#28): both are validated, errors are one line
            cfg = read_config_file(self.logdir / "config.json")
            cfg = cfg.replace(**(overrides or {})).validate()
            self.agent, trainer_state = checkpoint.load(self.logdir, overrides=cfg.to_dict(), trainer=True)
            self.agent.train()
        assert cfg is not None
        check_device(cfg.device)  # `--set device=cuda` on a CPU-only torch: one line, not a traceback
        if self.ckpt_dir.is_dir():  # temporaries of checkpoint writes that a kill interrupted (#28)
            checkpoint.clean_stale_temps(self.ckpt_dir)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        configure_cpu()
        seed_everything(cfg.seed)
        self.cfg = cfg
        self.env = make_env(cfg, seed=cfg.seed)
        self.eval_env = make_env(cfg, seed=cfg.seed + 1)
        self._eval_more: list | None = None  # more eval envs, made at the first evaluation (lockstep) ...
        self._eval_envs_open = contextlib.ExitStack()  # ... and closed when run() ends
        if not resume:
            self.agent = Agent(cfg, self.env.spec)
        else:
            checkpoint.check_env(self.agent.spec, self.env.spec)
        self.agent.init_optimizers()
        self.agent.compile_networks(cfg.compile)
        self.logdir.mkdir(parents=True, exist_ok=True)
        (self.logdir / "config.json").write_text(cfg.to_json() + "\n")
        if command:
            with open(self.logdir / "commands.txt", "a") as f:
                f.write(command.strip() + "\n")
        self.replay = Replay(self.logdir / "replay", cfg.replay_capacity, seed=cfg.seed,
                             prioritize_ends=cfg.prioritize_ends)
        self.logger = Logger(self.logdir)
        self.rng = np.random.default_rng(cfg.seed)
        self.step, self.episodes, self.pretrained = 0, 0, False
        self.wall_s = 0.0  # training wall time summed over resumes, up to the current run()
        self._started: float | None = None  # when the current run() began
        if trainer_state is not None:
            self._restore(trainer_state)
        self.replay.load()

    # ---- state for resume ------------------------------------------------------------------
    def _trainer_state(self) -> dict[str, Any]:
        return {"step": self.step, "episodes": self.episodes, "updates": self.agent.updates,
                "pretrained": self.pretrained, "wall_s": self._wall(), "optimizers": self.agent.optimizer_state(),
                "torch_rng": torch.get_rng_state(), "numpy_rng": json.dumps(self.rng.bit_generator.state),
                "replay_rng": json.dumps(self.replay.rng.bit_generator.state)}

    def _restore(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (``checkpoint.read_trainer_state`` checked its structure). Optimizer and RNG
        states that do not fit this run are a one-line CheckpointError, before any update uses them (#28)."""
        self.step, self.episodes = int(state["step"]), int(state["episodes"])
        self.agent.updates, self.pretrained = int(state["updates"]), bool(state["pretrained"])
        self.wall_s = float(state.get("wall_s", 0.0))
        try:
            self.agent.load_optimizer_state(state["optimizers"])
            for name, opt in self.agent.optimizers.items():  # load_state_dict checks group sizes, not shapes
                for group in opt.param_groups:
                    for p in group["params"]:
                        for key, value in opt.state.get(p, {}).items():
                            if torch.is_tensor(value) and value.dim() and value.shape != p.shape:
                                raise ValueError(f"optimizer {name} state {key} has shape {tuple(value.shape)} "
                                                 f"for a parameter of shape {tuple(p.shape)}")
            torch.set_rng_state(state["torch_rng"])
            self.rng.bit_generator.state = json.loads(state["numpy_rng"])
            self.replay.rng.bit_generator.state = json.loads(state["replay_rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            message = " ".join(str(exc).split())[:200]
            where = pathlib.Path(getattr(self.agent, "path", self.ckpt_dir)) / checkpoint.TRAINER
            raise checkpoint.CheckpointError(f"refusing {where}: its state does not fit this run "
                                             f"({type(exc).__name__}: {message})") from None

    def _wall(self) -> float:
        return self.wall_s + (time.time() - self._started if self._started is not None else 0.0)

    def save(self, eval_result=None) -> pathlib.Path:
        name = f"step-{self.step:09d}"
        extra = {"train_episodes": self.episodes, "train_wall_s": round(self._wall(), 1)}
        if eval_result is not None:
            extra["eval"] = eval_result.to_dict()
        path = checkpoint.save(self.ckpt_dir / name, self.agent, steps=self.step, extra=extra,
                               trainer_state=self._trainer_state())
        checkpoint.atomic_write_text(self.ckpt_dir / "latest", name + "\n")
        old = sorted(p for p in self.ckpt_dir.glob("step-*") if p.is_dir())
        for stale in old[:-max(self.cfg.keep_checkpoints, 1)]:
            shutil.rmtree(stale, ignore_errors=True)
        return path

    # ---- the loop ---------------------------------------------------------------------
    def _reset(self) -> dict[str, Any]:
        obs = self.env.reset(seed=episode_seed(self.cfg.seed, self.episodes))
        self.builder.add(obs, None)
        self.policy_state = None
        return obs

    def _evaluate(self):
        """``eval_episodes`` mode-policy episodes in lockstep (``evaluation.evaluate``, ``more_envs``)."""
        if self._eval_more is None:
            self._eval_more = self._eval_envs_open.enter_context(
                lockstep_envs(lambda: make_env(self.cfg, seed=self.cfg.seed + 1), self.cfg.eval_episodes))
        return evaluate(self.agent, self.eval_env, self.cfg.eval_episodes, seed=self.cfg.seed,
                        more_envs=self._eval_more)

    def _update(self) -> None:
        batch = self.replay.sample(self.cfg.batch, self.cfg.length)
        self.logger.add(self.agent.train_step(batch), prefix="train/")
        self.updates_since_log += 1

    def run(self) -> TrainResult:
        cfg = self.cfg
        self.builder = EpisodeBuilder(self.env.spec.discrete, self.env.spec.num_actions)
        self._started = time.time()
        should_log, should_eval = Every(cfg.log_every, self.step), Every(cfg.eval_every, self.step)
        should_video, should_ckpt = Every(cfg.video_every, self.step), Every(cfg.checkpoint_every, self.step)
        last_ckpt_time = time.time()
        self.updates_since_log = 0
        obs = self._reset()
        episode_return, episode_length, eval_result = 0.0, 0, None
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {cfg.env}", unit="step",
                       dynamic_ncols=True, smoothing=0.05)
        t_log, step_log, upd_log = time.time(), self.step, self.agent.updates
        try:
            while self.step < cfg.steps:
                prefilling = self.replay.total_steps < cfg.prefill
                if prefilling:
                    action = random_action(self.env.spec, self.rng)
                else:
                    action, self.policy_state = self.agent.act(obs, self.policy_state, mode="explore")
                obs = self.env.step(action)
                self.step += 1
                episode_return += float(obs["reward"])
                episode_length += 1
                episode = self.builder.add(obs, action)
                if episode is None and cfg.replay_chunk and len(self.builder.steps) >= cfg.replay_chunk:
                    self.replay.add_episode(self.builder.take_chunk())  # a long episode, in chunks
                if episode is not None:
                    self.replay.add_episode(episode)
                    self.logger.add({"return": episode_return, "length": episode_length}, "episode/")
                    self.episodes += 1
                    episode_return, episode_length = 0.0, 0
                    obs = self._reset()
                if not prefilling and len(self.replay):
                    if not self.pretrained:
                        for _ in range(cfg.pretrain):
                            self._update()
                        self.pretrained = True
                    if self.step % cfg.train_every == 0:
                        for _ in range(cfg.train_steps):
                            self._update()
                if bar is not None:
                    bar.update(1)
                if should_eval(self.step) and self.pretrained:
                    eval_result = self._evaluate()
                    self.logger.add({"return_mean": eval_result.mean, "return_std": eval_result.std}, "eval/")
                if should_video(self.step) and self.pretrained:
                    self.write_openloop()
                if should_log(self.step):
                    now = time.time()
                    speed = {"perf/env_steps_per_s": (self.step - step_log) / max(now - t_log, 1e-9),
                             "perf/updates_per_s": (self.agent.updates - upd_log) / max(now - t_log, 1e-9),
                             "perf/replay_steps": len(self.replay), "perf/updates": self.agent.updates}
                    row = self.logger.write(self.step, speed)
                    t_log, step_log, upd_log = now, self.step, self.agent.updates
                    if bar is not None:
                        post = {"env/s": f"{speed['perf/env_steps_per_s']:.0f}",
                                "upd/s": f"{speed['perf/updates_per_s']:.2f}"}
                        if "episode/return" in row:
                            post["return"] = f"{row['episode/return']:.2f}"
                        if "eval/return_mean" in row:
                            post["eval"] = f"{row['eval/return_mean']:.2f}"
                        bar.set_postfix(post)
                if should_ckpt(self.step) or time.time() - last_ckpt_time > 60 * cfg.checkpoint_minutes:
                    self.save(eval_result)
                    last_ckpt_time = time.time()
            final_eval = None
            if self.pretrained:
                final_eval = self._evaluate()
                self.logger.write(self.step, {"eval/return_mean": final_eval.mean,
                                              "eval/return_std": final_eval.std})
            path = self.save(final_eval or eval_result)
        except FloatingPointError as exc:
            # A non-finite loss or gradient norm: Agent.train_step skipped that update's optimizer steps on the
            # device, so the weights are finite. Keep the progress made since the last checkpoint, as for Ctrl-C.
            saved = self.save(eval_result)
            raise FloatingPointError(f"{exc} (at step {self.step}; saved {saved}, weights from before the skipped "
                                     "steps; continue with --resume, which may change precision)") from None
        except KeyboardInterrupt:
            # Ctrl-C: keep the progress made since the last scheduled checkpoint, then stop.
            saved = self.save(eval_result)
            print(f"\ninterrupted at step {self.step}; saved {saved}; continue with --resume", flush=True)
            raise
        finally:
            if bar is not None:
                bar.close()
            self.logger.close()
            self._eval_envs_open.close()
            self._eval_more = None
        return TrainResult(self.logdir, path, self.step, self.agent.updates,
                           final_eval.mean if final_eval else None)

    def write_openloop(self, samples: int = 6, length: int = 50, context: int = 5) -> pathlib.Path:
        """Write ``videos/openloop-<step>.mp4``: 5 context frames then 45 imagined, rows truth / model / error,
        labelled; and a filmstrip of it to TensorBoard (``openloop``)."""
        batch = self.replay.sample(samples, length)
        self.agent.eval()
        pred = open_loop(self.agent.wm, self.agent.to_torch(batch), context=context)
        self.agent.train()
        frames = grid_frames({k: v[:3] for k, v in pred.items()}, context=context, scale=2)
        self.logger.image("openloop", filmstrip(frames[context - 1:], every=11), self.step)
        (self.logdir / "videos").mkdir(exist_ok=True)
        return write_video(self.logdir / "videos" / f"openloop-{self.step:09d}.mp4",
                           grid_frames(pred, context=context, scale=2))


def train(cfg: Config | None, logdir: str | os.PathLike, resume: bool = False, progress: bool = True,
          overrides: Mapping[str, Any] | None = None, command: str | None = None) -> TrainResult:
    """Train an agent per ``cfg`` in ``logdir``, or resume the run there (see ``Trainer``)."""
    return Trainer(cfg, logdir, resume=resume, progress=progress, overrides=overrides, command=command).run()

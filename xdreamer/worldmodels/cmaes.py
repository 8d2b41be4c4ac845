"""C by CMA-ES (paper §3: population 64, each candidate's fitness its mean return over 16 rollouts), with the
maintained ``cma`` package (Hansen's pycma) as hardmaru's estool does (``es.py`` ``CMAES``: x0 = 0, sigma_init).

Candidates are evaluated in worker processes (``wm_workers``; 0 = one per core; 1 = in this process), or on as many
Ray actors (``xdreamer train --ray`` / ``--ray-address``, as ``xdreamer report`` runs its jobs). Each worker
holds a copy of V and M (sent once, at start-up) and a pool of envs; a task is a group of candidates whose rollouts
run in lockstep with batched V/M/C calls (``rollouts.lockstep_returns``). All candidates of a generation meet the
same ``wm_cma_rollouts`` env seeds (common random numbers; our choice, so that a ranking compares like with
like). In the dream (``wm_dream``) every candidate is one task with its own random stream, seeded by (seed,
generation, candidate), so the result does not depend on the number of workers.

The controller kept after each generation is the distribution's mean (estool ``CMAES.current_param`` =
``es.result.xfavorite``, what hardmaru's ``train.py`` saves). Progress is saved after every generation (mean, step
size, history); a resumed run restarts CMA-ES from that mean and step size (the covariance starts afresh:
pycma's own state is a pickle, which a run folder never holds).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import time
from typing import Any, Callable

import numpy as np
import torch

from ..evaluation import episode_seed

# A worker's copy of the agent and its envs (one per process; the in-process evaluator uses its own).
_WORKER: dict[str, Any] = {}


def _build(cfg_dict: dict, spec_dict: dict, weights: dict[str, np.ndarray], starts: np.ndarray | None) -> dict:
    """A CPU agent with ``weights`` and what it evaluates in: an env pool, or the dream's start latents."""
    from ..config import Config
    from ..envs import EnvSpec
    from .agent import WorldModelsAgent

    cfg = Config.from_dict(cfg_dict).replace(device="cpu")
    agent = WorldModelsAgent(cfg, EnvSpec.from_dict(spec_dict), device="cpu")
    agent.load_state_dict({k: torch.as_tensor(v) for k, v in weights.items()})
    return {"agent": agent, "cfg": cfg, "envs": [], "starts": starts}


def _init_worker(*args) -> None:
    torch.set_num_threads(1)  # one core per worker: the workers are the parallelism (2 shared cores here)
    _WORKER.clear()
    _WORKER.update(_build(*args))


def evaluate_task(context: dict, flat: np.ndarray, seeds: list[int], dream_seed: list[int] | None) -> np.ndarray:
    """Return and length ``[N, 2]`` of the controllers ``flat`` ``[N, P]``: in the real env with ``seeds`` (one per
    row), or in the dream from the random stream ``dream_seed``."""
    agent, cfg = context["agent"], context["cfg"]
    rows = torch.as_tensor(flat, dtype=torch.float32)
    if dream_seed is not None:
        from .dream import DreamEnv

        generator = torch.Generator().manual_seed(int(np.random.SeedSequence(dream_seed).generate_state(1)[0]))
        limit = agent.spec.max_steps or cfg.time_limit
        limit = min(limit, cfg.wm_cma_steps) if cfg.wm_cma_steps else limit
        env = DreamEnv(agent, context["starts"], cfg.wm_temperature, limit, generator)
        return env.returns(rows)
    from .envs import make_env
    from .rollouts import lockstep_returns, make_envs

    envs = make_envs(lambda: make_env(cfg), len(rows), context["envs"])
    return lockstep_returns(agent, rows, envs, seeds, max_steps=cfg.wm_cma_steps or None)


def _worker_task(flat: np.ndarray, seeds: list[int], dream_seed: list[int] | None) -> np.ndarray:
    return evaluate_task(_WORKER, flat, seeds, dream_seed)


class RayWorker:
    """A Ray actor holding what a process-pool worker holds (``_init_worker``): V, M and an env pool, built once."""

    def __init__(self, *args) -> None:
        torch.set_num_threads(1)
        self.context = _build(*args)

    def run(self, flat: np.ndarray, seeds: list[int], dream_seed: list[int] | None) -> np.ndarray:
        return evaluate_task(self.context, flat, seeds, dream_seed)


class Evaluator:
    """Fitness of a generation: mean return of each candidate over its rollouts, in processes or in-process."""

    def __init__(self, agent, cfg, starts: np.ndarray | None, ray: str | None = None) -> None:
        """``ray``: evaluate on Ray actors (``wm_workers`` of them, one CPU each) of a local Ray (``"local"``) or of
        the cluster at that address, instead of local processes."""
        self.cfg, self.dream = cfg, cfg.wm_dream
        workers = cfg.wm_workers or os.cpu_count() or 1
        self.workers, self.pool, self.local, self.actors, self.ray = workers, None, None, [], None
        self.env_steps = 0  # real env steps taken by the evaluations (dream steps are not counted)
        args = (cfg.to_dict(), agent.spec.to_dict(), {k: v.numpy() for k, v in agent.weights().items()}, starts)
        if ray is not None:
            from ..rayutil import start

            self.ray, self.ray_started = start(None if ray == "local" else ray, "--ray", num_cpus=workers)
            actor = self.ray.remote(num_cpus=1)(RayWorker)
            self.actors = [actor.remote(*args) for _ in range(workers)]
        elif workers > 1:
            # spawn: a fresh interpreter per worker (fork would copy this process's torch threads and locks)
            self.pool = concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=args)
        else:
            self.local = {"agent": agent, "cfg": cfg, "envs": [], "starts": starts}

    def __call__(self, solutions: np.ndarray, generation: int) -> np.ndarray:
        cfg, pop, rollouts = self.cfg, len(solutions), self.cfg.wm_cma_rollouts
        rows = np.repeat(np.asarray(solutions, np.float32), rollouts, axis=0)  # candidate-major
        seeds = [episode_seed(cfg.seed + 1, generation * rollouts + r) for r in range(rollouts)] * pop
        if self.dream:
            tasks = [(rows[i * rollouts:(i + 1) * rollouts], [], [cfg.seed, generation, i]) for i in range(pop)]
        else:
            per = -(-pop // self.workers) * rollouts  # whole candidates per task, one task per worker
            tasks = [(rows[s:s + per], seeds[s:s + per], None) for s in range(0, len(rows), per)]
        if self.actors:  # round robin over the actors; results in task order
            refs = [self.actors[i % len(self.actors)].run.remote(*task) for i, task in enumerate(tasks)]
            results = self.ray.get(refs)
        elif self.pool is not None:
            results = list(self.pool.map(_worker_task, *zip(*tasks)))
        else:
            results = [evaluate_task(self.local, *task) for task in tasks]
        out = np.concatenate(results)
        if not self.dream:
            self.env_steps += int(out[:, 1].sum())
        return out[:, 0].reshape(pop, rollouts).mean(1)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        if self.ray is not None and self.ray_started:
            self.ray.shutdown()
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
        if self.local is not None:
            for env in self.local["envs"]:
                env.close()


def train_cmaes(agent, cfg, starts: np.ndarray | None, resume: dict[str, Any] | None = None,
                save: Callable[[dict[str, Any]], None] | None = None, progress: bool = False,
                ray: str | None = None) -> dict[str, Any]:
    """Run CMA-ES for ``cfg.wm_generations`` generations on C's weights (from ``resume``: the saved ``mean``,
    ``sigma``, ``generation`` and ``history``); after each, set C to the mean and call ``save(progress)``.
    Returns the progress record: ``mean``, ``sigma``, ``generation``, ``env_steps`` (real env steps of the
    evaluations) and ``history`` (per generation: mean, best and worst fitness, seconds)."""
    import cma

    state = resume or {"mean": agent.controller.get_flat().numpy(), "sigma": cfg.wm_cma_sigma, "generation": 0,
                       "history": [], "env_steps": 0}
    steps_before = int(state.get("env_steps", 0))
    es = cma.CMAEvolutionStrategy(np.asarray(state["mean"], np.float64), float(state["sigma"]),
                                  {"popsize": cfg.wm_popsize, "seed": int(cfg.seed) + 1 + int(state["generation"]),
                                   "verbose": -9})
    evaluate = Evaluator(agent, cfg, starts, ray=ray)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.wm_generations, initial=state["generation"], unit="gen", dynamic_ncols=True,
                   desc=f"C (CMA-ES, pop {cfg.wm_popsize} x {cfg.wm_cma_rollouts} rollouts"
                        f"{', dream' if cfg.wm_dream else ''})")
    try:
        for generation in range(state["generation"], cfg.wm_generations):
            start = time.time()
            solutions = np.asarray(es.ask())
            fitness = evaluate(solutions, generation)
            es.tell(list(solutions), list(-fitness))  # pycma minimises
            agent.controller.set_flat(es.result.xfavorite)
            state = {"mean": np.asarray(es.result.xfavorite), "sigma": float(es.sigma), "generation": generation + 1,
                     "env_steps": steps_before + evaluate.env_steps,
                     "history": [*state["history"], {"generation": generation + 1, "mean": float(fitness.mean()),
                                                     "best": float(fitness.max()), "worst": float(fitness.min()),
                                                     "seconds": round(time.time() - start, 3)}]}
            if save is not None:
                save(state)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(mean=f"{fitness.mean():.2f}", best=f"{fitness.max():.2f}")
    finally:
        evaluate.close()
        if bar is not None:
            bar.close()
    return state

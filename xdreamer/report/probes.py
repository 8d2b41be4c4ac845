"""Linear probes from the agent's latents (and from raw pixels) to ground-truth object positions.

Closed-form ridge regression in numpy: features are standardised on the training split, the ridge
strength is chosen by generalised cross-validation (GCV) over a grid from one decomposition of the training
matrix, and the probe is scored by R^2 on a held-out split.

Held-out split (``heldout_split``): where the samples come from two or more episodes, whole episodes are held
out (every 4th episode, at least one), so no frame of a held-out episode's trajectory informs the fit (issue #27:
verdicts that hold across seeds). With one episode, whole blocks of ``BLOCK`` consecutive steps (every 4th
block) are, so neighbouring, nearly identical frames do not sit on both sides of the split; the table says which
(``split``).

Solver (``solver`` column): LAPACK's SVD (``gesdd``) is iterative and can fail with "SVD did not converge" on a
finite 400 x 4,096 pixel matrix (issue #27: it killed a report after 245 s). The fallback solves the same ridge
with the same GCV through the normal equations of the smaller Gram matrix (``np.linalg.solve``, an LU
factorisation that does not iterate); a probe whose fit still fails is reported as NaN with the error
(``failed: ...``), never raised.

Control task (Hewitt & Liang 2019, "Designing and interpreting probes with control tasks"): the same probe, on
the same split, fitted to a target whose values are re-assigned at random: every distinct value (a "type", to
0.5 px) is mapped to another value of the same set by one fixed random permutation, so the control keeps the
target's values and which samples share one, but not their order. ``selectivity`` = R^2 - control R^2, each
floored at 0 (a held-out R^2 below 0 is worse than predicting the mean: no fit at all, and Hewitt & Liang's
accuracies cannot go below chance either), so it lies in [-1, 1]: how much of the probe's R^2 reflects the
position's structure rather than the probe's capacity to memorise types. A target with two or three values has
little structure to test: any re-assignment of three lanes is nearly as easy to fit as the lanes.

Feature sets: ``deter`` (GRU state h_t), ``stoch`` (one-hot of the posterior sample z_t), ``feat``
(both, what the heads see) and ``pixels`` (the 64x64 frame the agent saw). A variable the latents
encode well has a latent R^2 close to the pixel probe's; a latent R^2 far below the pixel R^2 means
the information is in the frame but the world model dropped it ("cannot see it").
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

BLOCK = 10
EVERY = 4  # hold out every 4th block / episode (25 %)
LAMBDAS = np.logspace(-3, 5, 17)
FEATURE_SETS = ("deter", "stoch", "feat", "pixels")
TYPE_RESOLUTION = 0.5  # px: box centres of the toy games lie on half pixels
CONTROL_SEED = 0
PROBE_COLUMNS = ["variable", "features", "r2", "train_r2", "control_r2", "selectivity", "lambda", "n_train",
                 "n_test", "split", "train_episodes", "test_episodes", "solver"]


@dataclasses.dataclass
class RidgeFit:
    """A fitted ridge probe: ``w`` ``[d]`` (or ``[d, m]`` for m targets) on standardised features, ``intercept``
    (``[m]``), ``scaler`` ``[2, d]`` (mean, std), ``lam`` (``[m]``), and the ``solver`` that ran."""

    w: np.ndarray
    intercept: np.ndarray | float
    scaler: np.ndarray
    lam: np.ndarray | float
    solver: str


def _gcv_svd(Z: np.ndarray, Yc: np.ndarray, lambdas) -> tuple[np.ndarray, np.ndarray]:
    """Ridge weights ``[d, m]`` and the GCV-best lambda per target ``[m]`` from one SVD of ``Z``."""
    U, S, Vt = np.linalg.svd(Z, full_matrices=False)
    Uy = U.T @ Yc  # [r, m]
    n = len(Z)
    best = np.full(Yc.shape[1], np.inf)
    lam_best = np.zeros(Yc.shape[1])
    for lam in lambdas:
        shrink = S ** 2 / (S ** 2 + lam)
        fitted = U @ (shrink[:, None] * Uy)
        gcv = ((Yc - fitted) ** 2).sum(0) / max(n - float(shrink.sum()), 1e-6) ** 2
        better = gcv < best - 1e-15
        best[better], lam_best[better] = gcv[better], lam
    W = np.stack([Vt.T @ ((S / (S ** 2 + lam)) * Uy[:, j]) for j, lam in enumerate(lam_best)], 1)
    return W, lam_best


def _gcv_normal(Z: np.ndarray, Yc: np.ndarray, lambdas) -> tuple[np.ndarray, np.ndarray]:
    """The same ridge and GCV as ``_gcv_svd`` through the normal equations of the smaller Gram matrix (dual
    ``Z Z^T`` when n <= d, primal ``Z^T Z`` otherwise), solved by LU for each lambda."""
    n, d = Z.shape
    dual = n <= d
    G = Z @ Z.T if dual else Z.T @ Z
    eye = np.eye(len(G))
    best = np.full(Yc.shape[1], np.inf)
    W = np.zeros((d, Yc.shape[1]))
    lam_best = np.zeros(Yc.shape[1])
    for lam in lambdas:
        if dual:  # w = Z^T (G + lam)^-1 y; hat matrix G (G + lam)^-1
            inv_G = np.linalg.solve(G + lam * eye, np.concatenate([Yc, G], 1))
            alpha, hat = inv_G[:, :Yc.shape[1]], G @ inv_G[:, Yc.shape[1]:]
            w = Z.T @ alpha
        else:  # w = (G + lam)^-1 Z^T y; dof = tr((G + lam)^-1 G)
            sol = np.linalg.solve(G + lam * eye, np.concatenate([Z.T @ Yc, G], 1))
            w, hat = sol[:, :Yc.shape[1]], sol[:, Yc.shape[1]:]
        fitted = Z @ w
        gcv = ((Yc - fitted) ** 2).sum(0) / max(n - float(np.trace(hat)), 1e-6) ** 2
        better = gcv < best - 1e-15
        best[better], lam_best[better] = gcv[better], lam
        W[:, better] = w[:, better]
    return W, lam_best


def ridge_fit(X: np.ndarray, y: np.ndarray, lambdas=LAMBDAS) -> RidgeFit:
    """Ridge regression of ``y`` ``[n]`` (or ``[n, m]``, each target with its own GCV lambda) on ``X`` ``[n, d]``
    with standardised features. SVD first; where LAPACK's SVD does not converge, the normal equations
    (``solver`` says which ran). Raises ``np.linalg.LinAlgError`` only when both fail."""
    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    Y = y[:, None] if y.ndim == 1 else y
    mean, std = X.mean(0), X.std(0)
    std = np.where(std > 1e-8, std, 1.0)
    Z = (X - mean) / std
    y_mean = Y.mean(0)
    Yc = Y - y_mean
    try:
        W, lam, solver = *_gcv_svd(Z, Yc, lambdas), "svd"
    except np.linalg.LinAlgError as exc:
        W, lam, solver = *_gcv_normal(Z, Yc, lambdas), f"normal-equations (svd: {exc})"
    if y.ndim == 1:
        return RidgeFit(W[:, 0], float(y_mean[0]), np.stack([mean, std]), float(lam[0]), solver)
    return RidgeFit(W, y_mean, np.stack([mean, std]), lam, solver)


def ridge_predict(X: np.ndarray, fit: RidgeFit) -> np.ndarray:
    return ((np.asarray(X, np.float64) - fit.scaler[0]) / fit.scaler[1]) @ fit.w + fit.intercept


def r2_score(y: np.ndarray, pred: np.ndarray) -> float:
    y = np.asarray(y, np.float64)
    sst = float(((y - y.mean()) ** 2).sum())
    if sst <= 1e-12:
        return float("nan")
    return 1.0 - float(((y - pred) ** 2).sum()) / sst


def heldout_mask(n: int, block: int = BLOCK, every: int = EVERY) -> np.ndarray:
    """True for held-out samples: every ``every``-th block of ``block`` consecutive samples."""
    return (np.arange(n) // block) % every == every - 1


def heldout_split(samples: dict[str, np.ndarray]) -> tuple[np.ndarray, str]:
    """The held-out mask and how it was made: ``"episode"`` (every ``EVERY``-th of two or more episodes, at least
    one: the last where fewer than ``EVERY``) or ``"block"`` (one episode: ``heldout_mask``)."""
    n = len(samples["deter"])
    episode = samples.get("episode")
    ids = np.unique(episode) if episode is not None else np.array([])
    if len(ids) < 2:
        return heldout_mask(n), "block"
    held = ids[np.arange(len(ids)) % EVERY == EVERY - 1]
    if not len(held):
        held = ids[-1:]
    return np.isin(episode, held), "episode"


def control_targets(y: np.ndarray, seed: int = CONTROL_SEED) -> np.ndarray:
    """Hewitt & Liang's control task for a position ``y`` ``[n]``: every distinct value (to ``TYPE_RESOLUTION``)
    mapped to another value of the same set by one random permutation that moves at least one value; NaN stays
    NaN."""
    y = np.asarray(y, np.float64)
    out = np.full_like(y, np.nan)
    ok = np.isfinite(y)
    types, inverse = np.unique(np.round(y[ok] / TYPE_RESOLUTION), return_inverse=True)
    if len(types) < 2:
        out[ok] = y[ok]
        return out
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(types))
    while np.array_equal(perm, np.arange(len(types))):
        perm = rng.permutation(len(types))
    out[ok] = types[perm][inverse] * TYPE_RESOLUTION
    return out


def probe(X: np.ndarray, y: np.ndarray, test: np.ndarray, lambdas=LAMBDAS, control: bool = True) -> dict:
    """Fit on ``~test``, score R^2 on ``test`` (and the control task's R^2 with the same features and split);
    NaN when a split is too small or ``y`` is constant. Never raises on a failed fit: ``solver`` then says
    ``failed: ...``."""
    test = np.asarray(test, bool)
    ok = np.isfinite(y)
    train_idx, test_idx = np.flatnonzero(ok & ~test), np.flatnonzero(ok & test)
    out = {"r2": float("nan"), "train_r2": float("nan"), "control_r2": float("nan"), "selectivity": float("nan"),
           "lambda": float("nan"), "n_train": len(train_idx), "n_test": len(test_idx), "solver": ""}
    if len(train_idx) < 5 or len(test_idx) < 3 or np.ptp(y[train_idx]) <= 1e-9:
        return out
    y = np.asarray(y, np.float64)
    Y = np.stack([y, control_targets(y)], 1) if control else y[:, None]
    try:
        fit = ridge_fit(X[train_idx], Y[train_idx], lambdas)
        pred_test, pred_train = ridge_predict(X[test_idx], fit), ridge_predict(X[train_idx], fit)
    except (np.linalg.LinAlgError, ValueError) as exc:
        out["solver"] = f"failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        return out
    out.update(r2=r2_score(y[test_idx], pred_test[:, 0]), train_r2=r2_score(y[train_idx], pred_train[:, 0]),
               solver=fit.solver, **{"lambda": float(fit.lam[0])})
    if control:
        out["control_r2"] = r2_score(Y[test_idx, 1], pred_test[:, 1])
        out["selectivity"] = max(out["r2"], 0.0) - max(out["control_r2"], 0.0)
    return out


def samples_from_trace(trace, max_samples: int | None = 400) -> dict[str, np.ndarray]:
    """Probe inputs of a trace: ``deter`` [n, D], ``stoch`` [n, S] (class indices), ``pixels`` [n, C*64*64]
    uint8, ``episode`` [n] and, per object, its box centre ``<name>_x`` / ``<name>_y`` (NaN where absent). At
    most ``max_samples`` steps, evenly spaced (all when None)."""
    n = len(trace)
    idx = np.arange(n) if max_samples is None or n <= max_samples else \
        np.unique(np.linspace(0, n - 1, max_samples).round().astype(np.int64))
    out = {"deter": trace.arrays["deter"][idx].astype(np.float32),
           "stoch": trace.arrays["post_class"][idx].astype(np.int16),
           "pixels": trace.arrays["frame"][idx].reshape(len(idx), -1),
           "episode": trace.arrays["episode"][idx].astype(np.int64)}
    for name in trace.object_names:
        boxes = trace.arrays[f"objects/{name}"][idx].astype(np.float64)
        out[f"{name}_x"] = boxes[:, 0] + boxes[:, 2] / 2
        out[f"{name}_y"] = boxes[:, 1] + boxes[:, 3] / 2
    return out


def feature_sets(samples: dict[str, np.ndarray], classes: int) -> dict[str, np.ndarray]:
    """``deter``, ``stoch`` (one-hot of the class indices), ``feat`` (both) and ``pixels`` (in [0, 1])."""
    stoch = samples["stoch"].astype(np.int64)
    onehot = np.zeros((len(stoch), stoch.shape[1] * classes), np.float32)
    rows = np.repeat(np.arange(len(stoch)), stoch.shape[1])
    cols = (np.arange(stoch.shape[1])[None] * classes + stoch).reshape(-1)
    onehot[rows, cols] = 1.0
    deter = samples["deter"].astype(np.float32)
    return {"deter": deter, "stoch": onehot, "feat": np.concatenate([deter, onehot], 1),
            "pixels": samples["pixels"].astype(np.float32) / 255.0}


def target_names(samples: dict[str, np.ndarray]) -> list[str]:
    return sorted(k for k in samples if k.endswith(("_x", "_y")) and k not in FEATURE_SETS and k != "episode")


def probe_table(samples: dict[str, np.ndarray], classes: int, test: np.ndarray | None = None) -> pd.DataFrame:
    """R^2 of every (object variable, feature set) probe on the held-out split (``heldout_split`` by default),
    with its control task. Columns: ``PROBE_COLUMNS`` (``split``: episode, block or given; how many episodes
    the fit and the score saw)."""
    feats = feature_sets(samples, classes)
    if test is None:
        test, split = heldout_split(samples)
    else:
        test, split = np.asarray(test, bool), "given"
    episode = samples.get("episode", np.zeros(len(test), np.int64))
    groups = {"train_episodes": len(np.unique(episode[~test])), "test_episodes": len(np.unique(episode[test]))}
    rows = []
    for var in target_names(samples):
        y = np.asarray(samples[var], np.float64)
        for name in FEATURE_SETS:
            rows.append({"variable": var, "features": name, **probe(feats[name], y, test), "split": split, **groups})
    return pd.DataFrame(rows, columns=PROBE_COLUMNS)


def concat_samples(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Samples of several jobs in one; ``episode`` is renumbered so that each (part, episode) stays apart."""
    keys = sorted(set().union(*(p.keys() for p in parts))) if parts else []
    out = {k: np.concatenate([p[k] for p in parts]) for k in keys if all(k in p for p in parts)}
    if "episode" in out:
        pairs = np.concatenate([np.stack([np.full(len(p["episode"]), i), p["episode"]], 1)
                                for i, p in enumerate(parts)])
        out["episode"] = np.unique(pairs, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)
    return out

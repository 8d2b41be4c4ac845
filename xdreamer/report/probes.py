"""Linear probes from the agent's latents (and from raw pixels) to ground-truth object positions.

Closed-form ridge regression in numpy: features are standardised on the training split, the ridge
strength is chosen by generalised cross-validation (GCV) over a grid from one SVD of the training
matrix, and the probe is scored by R^2 on a held-out split. Held-out steps are whole blocks of
``BLOCK`` consecutive steps (every 4th block), so neighbouring, nearly identical frames do not sit on
both sides of the split.

Feature sets: ``deter`` (GRU state h_t), ``stoch`` (one-hot of the posterior sample z_t), ``feat``
(both, what the heads see) and ``pixels`` (the 64x64 frame the agent saw). A variable the latents
encode well has a latent R^2 close to the pixel probe's; a latent R^2 far below the pixel R^2 means
the information is in the frame but the world model dropped it ("cannot see it").
"""

from __future__ import annotations

import numpy as np
import pandas as pd

BLOCK = 10
LAMBDAS = np.logspace(-3, 5, 17)
FEATURE_SETS = ("deter", "stoch", "feat", "pixels")


def ridge_fit(X: np.ndarray, y: np.ndarray, lambdas=LAMBDAS) -> tuple[np.ndarray, float, np.ndarray, float]:
    """Ridge regression of ``y`` [n] on ``X`` [n, d] with standardised features and the GCV-best lambda.
    Returns (weights on standardised features, intercept, (mean, std) stacked [2, d], lambda)."""
    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    mean, std = X.mean(0), X.std(0)
    std = np.where(std > 1e-8, std, 1.0)
    Z = (X - mean) / std
    y_mean = float(y.mean())
    yc = y - y_mean
    U, S, Vt = np.linalg.svd(Z, full_matrices=False)
    Uy = U.T @ yc
    n = len(y)
    best = None
    for lam in lambdas:
        shrink = S ** 2 / (S ** 2 + lam)
        fitted = U @ (shrink * Uy)
        dof = float(shrink.sum())
        gcv = float(((yc - fitted) ** 2).sum()) / max(n - dof, 1e-6) ** 2
        if best is None or gcv < best[0] - 1e-15:
            best = (gcv, float(lam))
    lam = best[1]
    w = Vt.T @ ((S / (S ** 2 + lam)) * Uy)
    return w, y_mean, np.stack([mean, std]), lam


def ridge_predict(X: np.ndarray, w: np.ndarray, intercept: float, scaler: np.ndarray) -> np.ndarray:
    return ((np.asarray(X, np.float64) - scaler[0]) / scaler[1]) @ w + intercept


def r2_score(y: np.ndarray, pred: np.ndarray) -> float:
    y = np.asarray(y, np.float64)
    sst = float(((y - y.mean()) ** 2).sum())
    if sst <= 1e-12:
        return float("nan")
    return 1.0 - float(((y - pred) ** 2).sum()) / sst


def heldout_mask(n: int, block: int = BLOCK, every: int = 4) -> np.ndarray:
    """True for held-out samples: every ``every``-th block of ``block`` consecutive samples."""
    return (np.arange(n) // block) % every == every - 1


def probe(X: np.ndarray, y: np.ndarray, test: np.ndarray, lambdas=LAMBDAS) -> dict:
    """Fit on ``~test``, score R^2 on ``test``; NaN when a split is too small or ``y`` is constant."""
    test = np.asarray(test, bool)
    ok = np.isfinite(y)
    train_idx, test_idx = np.flatnonzero(ok & ~test), np.flatnonzero(ok & test)
    out = {"r2": float("nan"), "train_r2": float("nan"), "lambda": float("nan"),
           "n_train": len(train_idx), "n_test": len(test_idx)}
    if len(train_idx) < 5 or len(test_idx) < 3 or np.ptp(y[train_idx]) <= 1e-9:
        return out
    w, b, scaler, lam = ridge_fit(X[train_idx], y[train_idx], lambdas)
    out.update(r2=r2_score(y[test_idx], ridge_predict(X[test_idx], w, b, scaler)),
               train_r2=r2_score(y[train_idx], ridge_predict(X[train_idx], w, b, scaler)), **{"lambda": lam})
    return out


def samples_from_trace(trace, max_samples: int | None = 400) -> dict[str, np.ndarray]:
    """Probe inputs of a trace: ``deter`` [n, D], ``stoch`` [n, S] (class indices), ``pixels`` [n, C*64*64]
    uint8 and, per object, its box centre ``<name>_x`` / ``<name>_y`` (NaN where absent). At most
    ``max_samples`` steps, evenly spaced (all when None)."""
    n = len(trace)
    idx = np.arange(n) if max_samples is None or n <= max_samples else \
        np.unique(np.linspace(0, n - 1, max_samples).round().astype(np.int64))
    out = {"deter": trace.arrays["deter"][idx].astype(np.float32),
           "stoch": trace.arrays["post_class"][idx].astype(np.int16),
           "pixels": trace.arrays["frame"][idx].reshape(len(idx), -1)}
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
    return sorted(k for k in samples if k.endswith(("_x", "_y")) and k not in FEATURE_SETS)


def probe_table(samples: dict[str, np.ndarray], classes: int, test: np.ndarray | None = None) -> pd.DataFrame:
    """R^2 of every (object variable, feature set) probe on the held-out split (``heldout_mask`` by default).
    Columns: variable, features, r2, train_r2, lambda, n_train, n_test."""
    feats = feature_sets(samples, classes)
    n = len(samples["deter"])
    test = heldout_mask(n) if test is None else np.asarray(test, bool)
    rows = []
    for var in target_names(samples):
        y = np.asarray(samples[var], np.float64)
        for name in FEATURE_SETS:
            rows.append({"variable": var, "features": name, **probe(feats[name], y, test)})
    return pd.DataFrame(rows, columns=["variable", "features", "r2", "train_r2", "lambda", "n_train", "n_test"])


def concat_samples(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    keys = sorted(set().union(*(p.keys() for p in parts))) if parts else []
    return {k: np.concatenate([p[k] for p in parts]) for k in keys if all(k in p for p in parts)}

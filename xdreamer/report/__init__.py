"""Batch failure reports: where and why agents fail (``xdreamer report``).

Detectors (``detectors``) are pure functions over an ``xdreamer.explain.Trace``: perception blind spots
(reconstruction error inside ground-truth object boxes vs background, how much of each object survives the
64x64 frame), reward misses and phantom rewards, surprise spikes (KL(post||prior) above median + k MAD), value
errors (value vs realised lambda-return) and exploration coverage; ``probes`` fits linear probes from the
latents and from raw pixels to object positions; ``jobs.run_job`` adds dream infidelity (``explain.whatif`` +
``explain.ground`` at top-surprise steps). ``run_report`` runs checkpoint x episode jobs in-process or as Ray
tasks and writes the report folder (HTML, CSV, parquet, markdown, mp4 clips); ``bench_report`` times it.

``import xdreamer.report`` stays light (numpy and pandas); torch, matplotlib, pyarrow and Ray are imported
when used.
"""

from .build import bench_report, run_report
from .detectors import (DETECTORS, THRESHOLDS, blind_spots, coverage, detect, lambda_returns, object_errors,
                        object_visibility, reward_misses, surprise_spikes, value_errors)
from .probes import probe, probe_table, ridge_fit, samples_from_trace
from .scores import REFERENCE_SCORES, reference

__all__ = ["run_report", "bench_report", "DETECTORS", "THRESHOLDS", "detect", "blind_spots", "object_errors",
           "object_visibility", "reward_misses", "surprise_spikes", "value_errors", "lambda_returns", "coverage",
           "probe", "probe_table", "ridge_fit", "samples_from_trace", "REFERENCE_SCORES", "reference"]

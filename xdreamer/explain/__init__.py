"""Analysis layer of xdreamer: decision traces, what-if dreams, grounded counterfactuals, HIGHLIGHTS,
attributions, saliency and rendering. Every computation goes through the world model's own ``observe`` /
``imagine`` / ``decode`` / heads and ``behavior.lambda_return``; results are plain dataclasses of numpy
arrays, and rendering (``render``) is separate.

    from xdreamer import checkpoint, explain
    from xdreamer.envs import make
    agent = checkpoint.load("checkpoints/catch")
    env = make(agent.cfg.env)
    trace = explain.record(agent, env, episodes=1, seed=0)
    explain.save(trace, "trace.npz")
    dream = explain.whatif(agent, trace, step=20, horizon=15)         # every first action, one batch
    real = explain.ground(agent, env, trace, step=20, horizon=15)    # the same branches, really executed
    hl = explain.highlights(agent, trace, k=5)

``import xdreamer.explain`` stays light: torch, numpy and pandas only (Captum is imported by the
attribution/saliency modules when they are used). Note ``explain.highlights`` is the function; the module
is ``xdreamer.explain.highlights`` (use ``from xdreamer.explain.highlights import ...``).
"""

from .commands import add_commands
from .dreams import WhatIf, dream, intervene, start_state, whatif
from .grounded import Grounded, ground
from .highlights import Highlights, Moment, importance, q_values, top_k
from .highlights import highlights  # noqa: E402  (after the module import: the name is the function)
from .objects import ObjectAttribution, object_attribution
from .render import highlights_image, whatif_frames, write_whatif_video
from .trace import Trace, check_trace_matches, load_trace, record, save, weights_fingerprint

__all__ = ["Trace", "record", "save", "load_trace", "check_trace_matches", "weights_fingerprint",
           "WhatIf", "whatif", "intervene", "start_state", "dream", "Grounded", "ground",
           "Highlights", "Moment", "highlights", "importance", "q_values", "top_k",
           "ObjectAttribution", "object_attribution",
           "whatif_frames", "write_whatif_video", "highlights_image", "add_commands"]

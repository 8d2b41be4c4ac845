"""Published reference scores for score context (Atari, 200M frames, sticky actions).

Every number below is copied from the project's reference notes (``shared/reference/``), which record where
each came from; a number that is not in the notes is left out (None) rather than guessed.

* Venture, VideoPinball: DreamerV2 paper (Hafner et al., "Mastering Atari with Discrete World Models",
  ICLR 2021, arXiv 2010.02193), Table K.1, as quoted in ``shared/reference/explaining-rl-agents.md`` §0
  ("Table K.1 (verified, 200M frames, Rainbow / IQN / DreamerV2)"): Video Pinball 466,895 / 415,833 / 41,860,
  random 16,257, human gamer 17,668; Venture 1,529 / 1,313 / 2, random 0, human gamer 1,188.
* Pong, Breakout: the notes do not quote Table K.1 for these games. Their numbers come from
  ``shared/reference/dreamer-implementations.md`` §4.1, *computed* from danijar/dreamerv2
  ``scores/atari-dreamerv2.json`` (final point, mean over seeds that reached >= 190M frames) with the
  baselines of ``scores/baselines.json`` (Dopamine, sticky actions): Pong DreamerV2 18.4, Rainbow 20.2,
  human gamer 14.6, random -20.7; Breakout DreamerV2 450.9, Rainbow 120.1, human gamer 30.5, random 1.7.
"""

from __future__ import annotations

TABLE_K1 = "DreamerV2 paper Table K.1 (arXiv 2010.02193)"
COMPUTED = "danijar/dreamerv2 scores/atari-dreamerv2.json + baselines.json (computed, not Table K.1)"

# game -> random, human (gamer), DreamerV2, Rainbow, source
REFERENCE_SCORES: dict[str, dict] = {
    "Venture": {"random": 0.0, "human": 1188.0, "dreamerv2": 2.0, "rainbow": 1529.0, "source": TABLE_K1},
    "VideoPinball": {"random": 16257.0, "human": 17668.0, "dreamerv2": 41860.0, "rainbow": 466895.0,
                     "source": TABLE_K1},
    "Pong": {"random": -20.7, "human": 14.6, "dreamerv2": 18.4, "rainbow": 20.2, "source": COMPUTED},
    "Breakout": {"random": 1.7, "human": 30.5, "dreamerv2": 450.9, "rainbow": 120.1, "source": COMPUTED},
}


def reference(env_id: str) -> dict | None:
    """Reference scores of an ``atari:<Game>`` env id, or None when the game is not in the table."""
    if not env_id.startswith("atari:"):
        return None
    return REFERENCE_SCORES.get(env_id.split(":", 1)[1])

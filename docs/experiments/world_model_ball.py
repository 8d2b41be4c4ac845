"""Does the full world model learn to draw toy:catch's 4x4 ball? World-model-only updates on random play.

Fills a replay with random-policy toy:catch episodes, then trains only the world model (the same
``WorldModel.loss`` and optimiser as ``xdreamer train``, ``--preset small toy`` plus overrides) and
prints, every 100 updates, the batch image loss, the mean squared error on the ball's pixels of a
held-out random-play sequence reconstructed from the posterior (1.0 = drawn as background), the
posterior entropy (nats, summed over the latent variables) and the KL.

    python docs/experiments/world_model_ball.py UPDATES [KEY=VALUE ...]
    python docs/experiments/world_model_ball.py 1500                    # the toy preset (embed_norm=batch)
    python docs/experiments/world_model_ball.py 1500 embed_norm=none    # as before 2026-12-01: no ball
    python docs/experiments/world_model_ball.py 600 embed_norm=none decoder=dreamerv3 unimix=0.01
    python docs/experiments/world_model_ball.py 1500 embed_norm=none env=toy:catch-lanes lanes=6  # 6 ball columns
    python docs/experiments/world_model_ball.py 1500 preset=dreamerv3 seed=2   # DreamerV3's world model (#29)

Since 2026-12-01 the toy preset has ``embed_norm=batch`` (the image embedding batch-normalised before the
posterior reads it; ``bottleneck_ball.py`` for why), and with it the ball is learnt:
``python docs/experiments/world_model_ball.py 1500`` (2026-12-01, Intel Xeon VM, 0.14 s per update): posterior
entropy 41 -> 12 at 100 and 2.2-3.6 from 600 on (not collapsing to 0), KL 3.8-4.8 nats, batch image loss 7.1 at
600, 4.3 at 1,000, 2.5 at 1,500, held-out ball MSE 0.96 at 200, 0.78 at 600, **0.44 at 1,000**, 0.41-0.67
from 1,000 to 1,500 (the held-out frames go through the running statistics). Every result below was measured
before, i.e. with ``embed_norm=none``; add it to reproduce them.

Measured on the project's 2-core CPU (torch 2.13.0+cpu, seed 0, ~0.35 s per update; the replay
there was the first 3,000 steps of a training run, this script's random play is equivalent): with
decoder=dreamerv3 the ball-pixel MSE stayed at 0.98-1.0 through 600 updates while the posterior
entropy fell from 44 to 0.13 nats (the latent becomes deterministic before it carries the ball);
with unimix=0.01 too, the same (MSE 0.99 at 600, entropy 1.4); with kl_free=1.0 (free nats, as dreamerv2's
dmc config) too (MSE 0.98 at 500, entropy 0.17). At the small preset's model_lr=6e-4 (5x lower) the
collapse is slower but the same (2026-11-30, Intel Xeon VM, ~0.11 s per update: entropy 44 -> 14.6 at 100,
4.2 at 300, 2.2 at 600 updates; ball MSE 0.99-1.0 throughout; `... 1500 decoder=dreamerv3 model_lr=6e-4`,
stopped at 600). On atari:Pong the same small-preset rate kept the posterior entropy at 42-43 nats for
1,000 updates and let it fall gradually (12 nats at 3,300) while the model learnt (checkpoints/pong). A full training run with
decoder=dreamerv3 (runs to 5,000 steps, 1,995 updates) likewise kept the image loss at 7.7-8.5, which
is the undrawn ball (0.5 x 16 px x 1.0^2 = 8).
At the toy preset itself (`python docs/experiments/world_model_ball.py 5000`, model_lr 3e-3, 2026-11-30, Intel Xeon
VM, 0.12-0.26 s per update, stopped at 3,100): posterior entropy 44 -> 2.2 nats at 400 updates and 0.000 from
1,300 on, KL(post||prior) steady at 1.4-2.5 nats, held-out ball MSE 0.98-1.01 throughout; the batch image loss
fell below the undrawn ball's 8 after 2,300 updates (5.6-5.9 at 2,800-3,100) without the held-out ball MSE
moving, i.e. the model memorised the 3,000 replay frames rather than learnt to draw the ball.
With `decoder=dreamerv3 unimix=0.01` at the toy preset (same day, stopped at 2,500+ updates by an 8-minute
limit): posterior entropy held at 1.26 nats (unimix keeps it off zero), KL 1.4-2.3 nats, held-out ball MSE
0.98-1.0 throughout, batch image loss below 8 from 2,100 updates (5.7-6.9): the same memorising, no ball.
Later the same day (decoder=dreamerv3 throughout): `repr_lr=3e-4` (encoder and posterior head 10x slower):
entropy 44 -> 10 at 200, 1.7 at 1,500, ball MSE 0.98-1.01 through 1,500; `stoch=32 classes=32` (the paper's
latent size): entropy 111 -> 4.7 at 500, 0.29 at 1,000, ball MSE 0.98-1.0 (stopped at 1,000); `kl_scale=1.0`:
entropy held at 12-20 nats, ball MSE 0.97-1.0 through 2,500, then the model diverged (entropy and KL 0, image
loss 21 from ~2,550). Why a stochastic code loses the ball: docs/experiments/bottleneck_ball.py.
`1500 env=toy:catch-lanes` (3 ball columns instead of 61, default decoder): entropy 0.15 at 900 and 0.01 at
1,500, yet held-out ball MSE 0.86 at 900, 0.83 at 1,000, 0.76 at 1,300, 0.69 at 1,500 (184 s): with 3 positions
the ball does get into the collapsed code, slowly.
More lanes (2026-12-01, Intel Xeon VM, 0.11 s per update; ``lanes=N`` spreads N ball columns evenly over 0..60,
``lanes=61`` is toy:catch itself): ``1500 env=toy:catch-lanes lanes=6`` held-out ball MSE 0.96-0.99 throughout
(0.956 at its best, 1,000 updates; entropy 0.03 at 900), ``lanes=16`` (a 4-px column grid) 0.98-1.01 throughout
(entropy 0.003 at 1,500). So within this budget the ball gets in with 3 columns and not with 6: the boundary
is near 3 positions per row, far below toy:catch's 61.
"""
import sys
import tempfile
import time

import numpy as np
import torch

from xdreamer.agent import Agent
from xdreamer.config import build_config
from xdreamer.envs import make
from xdreamer.evaluation import random_action
from xdreamer.replay import EpisodeBuilder, Replay

if len(sys.argv) < 2:
    sys.exit(__doc__)
updates = int(sys.argv[1])
overrides = dict(a.split("=", 1) for a in sys.argv[2:])
env_kw = {"lanes": int(overrides.pop("lanes"))} if "lanes" in overrides else {}  # toy:catch-lanes' lane count
# ``preset=dreamerv3`` (or dreamerv1) puts that member's preset first, as ``--preset dreamerv3 small toy`` does
presets = [overrides.pop("preset")] if "preset" in overrides else []
cfg = build_config([*presets, "small", "toy"], overrides)
torch.manual_seed(cfg.seed)
torch.set_num_threads(2)
env = make(cfg.env, seed=cfg.seed, **env_kw)  # toy:catch unless env=... is given
agent = Agent(cfg, env.spec)
agent.init_optimizers()
rng = np.random.default_rng(cfg.seed)


def play(env, steps):
    builder, episodes = EpisodeBuilder(env.spec.discrete, env.spec.num_actions), []
    obs = env.reset()
    builder.add(obs, None)
    for _ in range(steps):
        action = random_action(env.spec, rng)
        obs = env.step(action)
        episode = builder.add(obs, action)
        if obs["is_last"]:
            episodes.append(episode)
            obs = env.reset()
            builder.add(obs, None)
    return episodes


held_out = play(make(cfg.env, seed=123, **env_kw), 100)[0]
img = torch.tensor(held_out["image"])[None].float() / 255 - 0.5
act = torch.nn.functional.one_hot(torch.tensor(held_out["action"]).long(), env.spec.num_actions).float()[None]
first = torch.tensor(held_out["is_first"])[None]
ball = img[0, :, 0] > 0.2
ball[:, 58:] = False  # the paddle's rows
with tempfile.TemporaryDirectory() as tmp:
    replay = Replay(tmp, capacity=10**6, seed=cfg.seed)
    for episode in play(env, 3000):
        replay.add_episode(episode)
    start = time.time()
    for k in range(updates + 1):
        agent.train()
        loss, _, metrics = agent.wm.loss(agent.to_torch(replay.sample(cfg.batch, cfg.length)))
        agent._step("model", loss, agent.wm.parameters(), torch.zeros((), device=agent.device))
        if k % 100 == 0:
            agent.eval()
            with torch.no_grad():
                post, _ = agent.wm.rssm.observe(agent.wm.encode(img), act, first)
                err = (agent.wm.decoder(agent.wm.rssm.get_feat(post)) - img).pow(2)[0, :, 0]
            print(k, f"image loss {float(metrics['image_loss']):.2f}  ball MSE {err[ball].mean():.3f}  "
                  f"posterior entropy {float(metrics['post_entropy']):.3f}  KL {float(metrics['kl']):.2f}  "
                  f"{time.time() - start:.0f}s",
                  flush=True)

"""Is the stochastic latent what keeps toy:catch's 4x4 ball out of the world model? An autoencoder test.

No RSSM, no dynamics: frames of random toy:catch play go through the world model's encoder
(``xdreamer.nets.ConvEncoder``, depth 8), a posterior head (Linear 128, ELU, Linear), a bottleneck and the
DreamerV3-layout decoder (``ConvDecoder(..., "dreamerv3")``), trained with the world model's image loss
(0.5 x sum of squared errors) and optimiser (AdamW, eps 1e-5, weight decay 1e-6), batch 256 frames drawn from
the first 3,000 of 4,000 frames. Prints the loss, the held-out (last 1,000 frames) ball-pixel MSE (1.0 = ball
drawn as background, 0 = perfect) and the bottleneck's entropy (nats; for ``gauss`` the summed log std).

    python docs/experiments/bottleneck_ball.py UPDATES BOTTLENECK [lr=3e-3] [repr_lr=LR] [dec_init=1.0]
        [out_bias=B] [repr_eps=1e-5] [head_norm=1] [bn=1] [ema=M]

BOTTLENECK is ``categorical`` (16 x 16 one-hot samples with straight-through gradients, as the world model),
``argmax`` (the same, forward with the mode instead of a sample), ``gauss`` (64 Gaussian latents,
reparameterised, std = 2 sigmoid(x / 2) + 0.1 as dreamerv2's ``discrete: 0`` option) or ``deterministic``
(a plain 128-d code). ``repr_lr`` is the encoder's and posterior head's rate (default ``lr``); ``dec_init``
scales the decoder's first layer at initialisation; ``out_bias`` sets the image layer's initial bias (-0.5 is
the black background, so the initial loss is 26 instead of 512); ``repr_eps`` is Adam's epsilon for the
encoder and posterior head; ``head_norm=1`` puts a LayerNorm after the posterior head's hidden layer (DreamerV3's
``norm: layer`` in its MLPs); ``bn=1`` batch-normalises the encoder's output (no affine parameters, batch
statistics with gradients through them: xdreamer's ``embed_norm=batch``); ``ema=M`` normalises it instead
with running statistics that no gradient flows through (momentum M).

Measured 2026-11-30 on the project's 2-core Intel Xeon VM (torch 2.13.0+cpu, seed 0, ~0.07 s per update). The
first two rows and the out_bias / repr_eps rows are this file; the others ran in its draft (same networks and data, modules created in another
order, so other initial weights; there the deterministic code reached ball MSE 0.36 already at 800 updates):

| bottleneck | settings | result |
|---|---|---|
| deterministic | lr 3e-3 | ball MSE 0.99 at 200, 0.95 at 800, 0.72 at 1,000, 0.36 at 1,200, **0.15 at 1,400** (103 s): the ball is learnt |
| categorical | lr 3e-3 | entropy 44 -> 0.00 by 200 updates, loss 21.4 through 1,000 (not even the paddle), ball 0.99 |
| categorical | lr 6e-4; lr 2e-4 | the same collapse (entropy 0.00 / 0.05 at 200), loss 21.7 / 22.8 at 800 |
| categorical | repr_lr 3e-4 (decoder 3e-3) | entropy 44 until 400, paddle learnt by 600 (loss 9.7), entropy 0.35 at 1,600, ball 0.99 |
| categorical | repr_lr 3e-5 | nothing learnt (entropy 44.3, loss 21.6 at 800) |
| categorical | dec_init 0.01 | the same collapse by 200 |
| categorical | out_bias -0.5 | the same collapse by 100 (so not the background's offset) |
| categorical | repr_eps 1e-3; 1e-2 | the same collapse by 200 (so not Adam amplifying tiny gradients) |
| categorical | head_norm=1 (2026-12-01) | entropy 41 -> 14 at 200, then back up to 20 by 1,200; loss 21.2-21.7 through 1,200 (not even the paddle), ball 0.99 |
| categorical | **bn=1** (2026-12-01) | entropy 41 -> 5.0 at 100, then 2.3-3.5 (not constant); loss 8.8 at 500, **3.0 at 1,500**; ball 0.92 at 500, 0.56 at 1,000, **0.33 at 1,500** (136 s): the ball is learnt, about as fast as with the deterministic code |
| categorical | ema=0.1 (2026-12-01) | entropy 0.19 at 100, unstable (0.00-4.0); loss 20-23 until 500, 8.7-10 from 700 (the paddle; 19.9 at 1,100), ball 0.98 at 1,500 |
| argmax | lr 3e-3 | the same collapse (entropy 0.00 by 200, loss 21.4): sampling noise is not the cause |
| gauss | lr 3e-3 | std shrinks at once, constant code until 600 (loss 21.4), paddle at 800 (9.9), ball 0.99 |

So a deterministic code learns the ball within 800-1,400 updates, while any stochastic or discrete bottleneck
first collapses to a constant code within 100-200 updates. The account that fits every row: while the decoder
cannot use the code yet, every code but one is a worse guess of the (nearly identical) frames, and the
straight-through gradient moves each frame's logits towards the class the decoder currently fits best, the same
class for almost every frame; once frames share a class their differences are gone (a one-hot has no "slightly
different"), the softmax saturates and its gradient vanishes. A continuous code is pulled together the same
way but keeps small differences the decoder learns to amplify. Neither the background's offset (out_bias),
Adam's normalisation (repr_eps), the learning rate nor the sampling noise (argmax) changes it. Slowing the
representation (repr_lr) lets the big paddle claim a few variables first; the 16-px ball, spread over ~1,200
positions, claims none within these budgets.

Batch-normalising the embedding (``bn=1``) removes that shared push: batch norm's backward pass subtracts, per
feature, the gradient that all frames share (its gradient through the batch mean), so what reaches the encoder
is what differs between frames, and the centred, rescaled embedding makes the frames' small differences
unit-sized for the posterior head. Centring and rescaling with detached running statistics (``ema=0.1``)
collapsed as before, so the gradient through the batch statistics is the part that matters. This is
``embed_norm=batch`` in the world model (on in the ``toy`` preset; ``world_model_ball.py 1500
embed_norm=batch`` and README "Learning on CPU" for the full model and full training). In the full world model
(``world_model_ball.py``) the paddle is also predictable from the actions, so the posterior carries even
less. The same full-model run with ``kl_scale=1.0`` (the continuous-control beta) kept the posterior entropy
at 12-20 nats but the ball MSE at 0.97-1.0 through 2,500 updates and then diverged at lr 3e-3 (entropy and
KL 0, image loss 21 from ~2,550 updates; ``python docs/experiments/world_model_ball.py 3000 kl_scale=1.0
decoder=dreamerv3``).
"""
import sys
import time

import numpy as np
import torch
from torch import nn

from xdreamer.envs import make
from xdreamer.nets import ConvDecoder, ConvEncoder, init_weights, sample_categorical, straight_through_onehot

if len(sys.argv) < 3 or sys.argv[2] not in ("categorical", "argmax", "gauss", "deterministic"):
    sys.exit(__doc__)
updates, kind = int(sys.argv[1]), sys.argv[2]
opts = {"lr": 3e-3, "repr_lr": None, "dec_init": 1.0, "out_bias": None, "repr_eps": 1e-5, "head_norm": 0.0, "bn": 0.0,
        "ema": 0.0}
for arg in sys.argv[3:]:
    key, value = arg.split("=", 1)
    if key not in opts:
        sys.exit(f"unknown option {key!r}; options: {', '.join(opts)}")
    opts[key] = float(value)
torch.manual_seed(0)
torch.set_num_threads(2)

env, rng, frames = make("toy:catch", seed=0), np.random.default_rng(0), []
env.reset()
for _ in range(4000):
    obs = env.step(int(rng.integers(3)))
    if obs["is_last"]:
        obs = env.reset()
    frames.append(obs["image"])
images = torch.tensor(np.stack(frames)).float() / 255 - 0.5
ball = images > 0.2
ball[..., 58:, :] = False  # the paddle's rows

STOCH, CLASSES = 16, 16
code = {"categorical": STOCH * CLASSES, "argmax": STOCH * CLASSES, "gauss": 64, "deterministic": 128}[kind]
encoder = ConvEncoder(1, 8)
# bn=1: batch norm without affine parameters on the embedding (xdreamer's embed_norm=batch, same numbers).
head = nn.Sequential(*([nn.BatchNorm1d(encoder.out_dim, affine=False)] if opts["bn"] else []),
                     nn.Linear(encoder.out_dim, 128), *([nn.LayerNorm(128)] if opts["head_norm"] else []), nn.ELU(),
                     nn.Linear(128, code * (2 if kind == "gauss" else 1)))
decoder = ConvDecoder(code, 1, 8, "dreamerv3")
init_weights(nn.ModuleList([encoder, head, decoder]))
with torch.no_grad():
    decoder.linear.weight.mul_(opts["dec_init"])
    if opts["out_bias"] is not None:  # the image layer's bias, e.g. -0.5: the black background after obs/255 - 0.5
        decoder.net[-1].bias.fill_(opts["out_bias"])
opt = torch.optim.AdamW([{"params": decoder.parameters(), "lr": opts["lr"]},
                         {"params": [*encoder.parameters(), *head.parameters()],
                          "lr": opts["repr_lr"] or opts["lr"], "eps": opts["repr_eps"]}], eps=1e-5, weight_decay=1e-6)


class DetachedNorm(nn.Module):
    """ema=M: normalise with running statistics (initialised from the first batch, then momentum M) that no
    gradient flows through: batch norm's centring and scaling without its gradient through the batch mean."""

    def __init__(self, dim: int, momentum: float) -> None:
        super().__init__()
        self.momentum, self.fresh = momentum, True
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            mean, var = x.mean(0), x.var(0)
            if self.fresh:
                self.mean.copy_(mean)
                self.var.copy_(var)
                self.fresh = False
            else:
                self.mean.lerp_(mean, self.momentum)
                self.var.lerp_(var, self.momentum)
        return (x - self.mean) / (self.var + 1e-5).sqrt()


detached_norm = DetachedNorm(encoder.out_dim, opts["ema"]) if opts["ema"] else None


def bottleneck(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    embed = encoder(x)
    out = head(detached_norm(embed) if detached_norm is not None else embed)
    if kind == "deterministic":
        return out, 0.0
    if kind == "gauss":
        mean, std = out[:, :code], 2 * torch.sigmoid(out[:, code:] / 2) + 0.1
        return mean + std * torch.randn_like(mean), std.log().sum(-1).mean().item()
    probs = out.view(-1, STOCH, CLASSES).softmax(-1)
    index = probs.argmax(-1) if kind == "argmax" else sample_categorical(probs)
    entropy = -(probs * probs.clamp_min(1e-8).log()).sum((-1, -2)).mean().item()
    return straight_through_onehot(probs, index).flatten(1), entropy


start = time.time()
for k in range(updates + 1):
    idx = torch.randint(0, 3000, (256,))
    z, entropy = bottleneck(images[idx])
    loss = 0.5 * (decoder(z) - images[idx]).pow(2).sum((1, 2, 3)).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if k % 100 == 0:
        with torch.no_grad():
            err = (decoder(bottleneck(images[3000:])[0]) - images[3000:]).pow(2)[ball[3000:]].mean()
        print(f"{k} loss {loss.item():.2f}  held-out ball MSE {err.item():.3f}  entropy {entropy:.2f}  "
              f"{time.time() - start:.0f}s", flush=True)

"""How many updates does DreamerV2's conv decoder need to draw toy:catch's 4x4 ball?

Decoder-only, supervised: the decoder (xdreamer.nets.ConvDecoder, as in the world model) is fed the ground-truth
ball column, ball row and paddle column as one-hots and trained with the world model's image loss (0.5 * sum of
squared errors) and optimiser (AdamW, eps 1e-5, wd 1e-6) on 4,000 frames of random play. Prints the loss and the
mean squared error on the ball's pixels (1.0 = drawn as background, 0 = perfect).

    python docs/experiments/decoder_ball.py DEPTH LR UPDATES BATCH glorot|default [dreamerv2|dreamerv3]
    python docs/experiments/decoder_ball.py 8 3e-3 4000 32 glorot              # README "Known limitations"
    python docs/experiments/decoder_ball.py 8 3e-3 800 32 glorot dreamerv3     # DreamerV3 decoder layout

Measured on the project's 2-core CPU (torch 2.13.0+cpu): depth 8, lr 3e-3, batch 32: ball MSE 0.77 at 1,000
updates, 0.18 at 2,000, 0.07 at 3,000, 0.04 at 4,000 (~2 min); lr 1e-3: 0.77 at 2,000.
DreamerV3 layout (``--set decoder=dreamerv3``, a 4x4 start), depth 8, lr 3e-3, batch 32: 0.87 at 200,
0.69 at 400, 0.33 at 600, 0.16 at 800 (26 s on an idle machine); the DreamerV2 layout is still at 0.79 at 800.
"""
import sys
import time

import numpy as np
import torch

from xdreamer.nets import ConvDecoder, init_weights
from xdreamer.envs import make
torch.manual_seed(0); torch.set_num_threads(2)
env = make("toy:catch", seed=0)
frames, feats = [], []
rng = np.random.default_rng(0)
obs = env.reset()
for i in range(4000):
    o = env.step(int(rng.integers(3)))
    if o["is_last"]: o = env.reset()
    b = o["objects"]["ball"]; p = o["objects"]["paddle"]
    f = np.zeros(192, np.float32)
    if np.isfinite(b).all(): f[int(b[0])] = 1; f[64+int(b[1])] = 1
    f[128+int(p[0])] = 1
    frames.append(o["image"]); feats.append(f)
X = torch.tensor(np.stack(feats)); Y = torch.tensor(np.stack(frames)).float()/255 - 0.5
mask = (Y > 0.2)
if len(sys.argv) not in (6, 7):
    sys.exit(__doc__)
depth, lr, K, B, init = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
dec = ConvDecoder(X.shape[1], 1, depth, sys.argv[6] if len(sys.argv) == 7 else "dreamerv2")
if init == "glorot": init_weights(dec)
opt = torch.optim.AdamW(dec.parameters(), lr=lr, eps=1e-5, weight_decay=1e-6)
t = time.time()
for k in range(K+1):
    idx = torch.randint(0, len(X), (B,))
    loss = 0.5*((dec(X[idx]) - Y[idx])**2).sum((1,2,3)).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    if k % (K//4) == 0:
        with torch.no_grad():
            o = dec(X[:1000]); m = mask[:1000]
            err = ((o - Y[:1000])**2)[:, :, :58][m[:, :, :58]].mean()
        print(sys.argv[1:], k, round(loss.item(),3), "ball mse", round(err.item(),3), f"{time.time()-t:.0f}s", flush=True)

"""``nets.conv2d_as_matmul``'s im2col: ``F.unfold`` + transpose (two copies) against strided ``Tensor.unfold`` views
+ one copy (what it uses now), at the encoder's first and last layers, paper size (800 frames) and the toy preset
(256 frames, depth 8); forward alone where the input needs no gradient (training), forward + backward where it does.

    python docs/experiments/im2col_views.py
    python docs/experiments/im2col_views.py layer    # the whole layer: views + one copy vs nets' (kh, kw, C) im2col

Prints min and median of 5 after a warm-up and checks that both give the same columns (bit-identical) and input
gradients (to float rounding). Measured on a 2-core AMD EPYC (AVX2), docs/benchmarks.md (fifth session).

``layer`` (tenth session): ``nets.conv2d_as_matmul`` now takes its columns in (kh, kw, C) order from
``nets._Im2col`` (channels innermost; col2im backward as kh * kw strided adds); this times the layer (im2col +
matmul) that way against the views-and-one-copy im2col in (C, kh, kw) order with autograd's ``unfold_backward``,
forward without gradients and forward + backward to the input, min and median of 10, and checks that both give the
same output and gradients in float64.
"""
import sys

import torch
import torch.nn.functional as F

from xdreamer.bench import min_and_median_ms
from xdreamer.training import configure_cpu

configure_cpu()
torch.manual_seed(0)

def cols_unfold(x, conv):
    c = F.unfold(x, conv.kernel_size, stride=conv.stride)
    return c.transpose(1, 2).reshape(-1, c.shape[1])

def cols_view(x, conv):
    (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
    p = x.unfold(2, kh, sh).unfold(3, kw, sw)  # [N, C, OH, OW, kh, kw]
    return p.permute(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1] * kh * kw)

def fwd_bwd(cols, x, conv, g):
    return torch.autograd.grad(cols(x, conv), x, g)


def layer_views(x, conv):  # what conv2d_as_matmul computed before the tenth session
    n, (kh, kw), (sh, sw) = x.shape[0], conv.kernel_size, conv.stride
    out_h, out_w = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
    y = F.linear(cols_view(x, conv), conv.weight.reshape(conv.out_channels, -1), conv.bias)
    return y.reshape(n, out_h, out_w, conv.out_channels).permute(0, 3, 1, 2)


if sys.argv[1:] == ["layer"]:
    from xdreamer.nets import conv2d_as_matmul

    for n, c, o, h in ((800, 192, 384, 6), (256, 32, 64, 6), (800, 1, 48, 64), (256, 1, 8, 64)):
        conv = torch.nn.Conv2d(c, o, 4, stride=2)
        x = torch.rand(n, c, h, h).contiguous(memory_format=torch.channels_last)
        xd, convd = x.double().requires_grad_(), torch.nn.Conv2d(c, o, 4, stride=2).double()
        convd.load_state_dict(conv.state_dict())
        a, b = layer_views(xd, convd), conv2d_as_matmul(xd, convd)
        g = torch.randn_like(a)
        grads = [torch.autograd.grad(y, [xd, *convd.parameters()], g) for y in (a, b)]
        err = max([(a - b).abs().max().item()] + [(p - q).abs().max().item() for p, q in zip(*grads)])
        print(f"[{n}, {c}, {h}, {h}] -> {o} channels: max abs difference (float64) {err:.1e}")
        for name, fn in (("views + copy, (C, kh, kw)", layer_views), ("nets._Im2col, (kh, kw, C)", conv2d_as_matmul)):
            def forward(fn=fn):
                with torch.no_grad():
                    fn(x, conv)

            def train(fn=fn):
                xg = x.clone().requires_grad_()
                y = fn(xg, conv)
                y.backward(torch.ones_like(y))
            print(f"  {name}: forward {min_and_median_ms(forward, 10)}; forward + backward "
                  f"{min_and_median_ms(train, 10)}", flush=True)
    sys.exit()

CASES = [(256, 1, 8, 64, 4, False, False), (800, 1, 48, 64, 4, False, False), (800, 3, 48, 64, 4, False, True),
         (256, 32, 64, 6, 4, True, True), (800, 192, 384, 6, 4, True, True), (800, 1, 48, 64, 4, False, True)]
for N, C, O, H, k, cl, grad in CASES:
    conv = torch.nn.Conv2d(C, O, k, stride=2)
    x = torch.rand(N, C, H, H)
    if cl: x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(grad)
    a, b = cols_unfold(x, conv), cols_view(x, conv)
    print((N,C,O,H,cl,grad), "equal", torch.equal(a, b))
    if grad:
        g = torch.randn_like(a)
        for name, cols in (("unfold", cols_unfold), ("view  ", cols_view)):
            print(f"  {name} fwd+bwd", min_and_median_ms(lambda c=cols, x=x, conv=conv, g=g: fwd_bwd(c, x, conv, g), 5))
        diff = (fwd_bwd(cols_unfold, x, conv, g)[0] - fwd_bwd(cols_view, x, conv, g)[0]).abs().max().item()
        print("  grad max diff", diff)
    else:
        for name, cols in (("unfold", cols_unfold), ("view  ", cols_view)):
            print(f"  {name} fwd", min_and_median_ms(lambda c=cols, x=x, conv=conv: c(x, conv), 5))

"""``nets.conv2d_as_matmul``'s im2col: ``F.unfold`` + transpose (two copies) against strided ``Tensor.unfold`` views
+ one copy (what it uses now), at the encoder's first and last layers, paper size (800 frames) and the toy preset
(256 frames, depth 8); forward alone where the input needs no gradient (training), forward + backward where it does.

    python docs/experiments/im2col_views.py

Prints min and median of 5 after a warm-up and checks that both give the same columns (bit-identical) and input
gradients (to float rounding). Measured on a 2-core AMD EPYC (AVX2), docs/benchmarks.md (fifth session).
"""
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

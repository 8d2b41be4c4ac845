"""Network building blocks of DreamerV2: conv encoder/decoder, MLP heads, layer-normed GRU.

Sizes follow danijar/dreamerv2 ``common/nets.py``: the encoder has four stride-2 convs with
kernels 4,4,4,4 and depths d, 2d, 4d, 8d (64x64 -> 2x2); the decoder maps the feature to
32d channels at 1x1 and has four stride-2 transposed convs with kernels 5,5,6,6 (1x1 -> 64x64).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable

import torch
from torch import nn


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast casts to on ``device``'s type, or None where it is off or the device type has no autocast
    (``torch.is_autocast_enabled("meta")`` raises; tests/test_model.py runs updates on the meta device)."""
    kind = device.type
    if not torch.amp.is_autocast_available(kind) or not torch.is_autocast_enabled(kind):
        return None
    return torch.get_autocast_dtype(kind)


# Device types on which torch.compile's CUDA-graph modes replay graphs (tests/test_model.py lets the CPU stand in).
CUDA_GRAPH_DEVICES = ("cuda",)
# The compile modes that turn on CUDA graphs: ``triton.cudagraphs`` in ``torch._inductor.list_mode_options(mode)``
# (torch 2.13; tests/test_model.py checks it against the installed torch).
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def compiled_outputs_need_clones(mode: str, device: torch.device | str) -> bool:
    """Whether callables compiled in ``mode`` on ``device`` run as CUDA graphs, whose outputs live in memory that a
    later call reuses (see :func:`clone_outputs`)."""
    return mode in CUDA_GRAPH_MODES and torch.device(device).type in CUDA_GRAPH_DEVICES


def clone_outputs(fn: Callable) -> Callable:
    """``fn`` (a compiled callable) with its tensor outputs copied outside it.

    Under CUDA graph trees (``torch.compile`` modes ``reduce-overhead`` and ``max-autotune`` on CUDA) a call starts a
    new "generation" unless forwards still wait for their backward, i.e. on every call in inference, and a new
    generation reuses the memory of all earlier outputs: reading one then raises "accessing tensor output of
    CUDAGraphs that has been overwritten by a subsequent run" (PyTorch docs, torch.compiler_cudagraph_trees,
    "Limitations"). Imagination keeps every step's state, acting keeps its latent from one env step to the next,
    and analysis keeps dreams, so their compiled networks and RSSM steps return copies, as the docs advise ("clone
    tensors of a prior iteration (outside of torch.compile)"). A copy of a step's state is small next to the graph
    it saves launching."""

    def copy(out):
        if isinstance(out, torch.Tensor):
            return out.clone()
        if isinstance(out, tuple) and hasattr(out, "_fields"):  # a NamedTuple such as rssm.State
            return type(out)(*map(copy, out))
        if isinstance(out, (tuple, list)):
            return type(out)(map(copy, out))
        if isinstance(out, dict):
            return {key: copy(value) for key, value in out.items()}
        return out

    @functools.wraps(fn)
    def call(*args, **kwargs):
        return copy(fn(*args, **kwargs))

    return call


def sample_categorical(probs: torch.Tensor) -> torch.Tensor:
    """Indices of one categorical sample per row of ``probs`` ``[..., K]`` (no gradient).

    Inverse-CDF sampling: one uniform number per row, compared with the cumulative
    probabilities. Exact up to float rounding, and on CPU about 20x faster than Gumbel-max or
    ``torch.multinomial`` (which draw K exponentials per row): 2.7 ms versus 53 ms for the
    paper-size imagination batch [800, 32, 32] on 2 cores.
    """
    probs = probs.detach().float()
    u = torch.rand(probs.shape[:-1] + (1,), device=probs.device)
    return (probs.cumsum(-1) < u).sum(-1).clamp_(max=probs.shape[-1] - 1)


def straight_through_onehot(probs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """One-hot of ``index`` in the forward pass, gradients of ``probs`` in the backward pass
    (straight-through estimator, DreamerV2 §2 / Algorithm 1).

    The one-hot is scattered into zeros of ``probs``'s dtype: ``F.one_hot(index, K).to(dtype)`` gives the same values
    but builds an int64 tensor, checks the index range with two host reads on CPU and converts: this function took
    1.3-2x as long with it (paper-size imagination ``[800, 32]`` x 32 classes 1.29-1.43 -> 0.70-1.08 ms;
    ``python docs/experiments/onehot_scatter.py op``, docs/benchmarks.md, seventh session)."""
    onehot = torch.zeros(probs.shape, dtype=probs.dtype, device=probs.device).scatter_(-1, index.unsqueeze(-1), 1.0)
    return onehot + probs - probs.detach()


class ELU(nn.ELU):
    """``nn.ELU()`` (alpha 1, the activation of every DreamerV2 layer) that lets autograd save its result instead of
    its input: on a tensor that a differentiable op has just made and that is not a view, it runs in place
    (``elu_``), and its backward then takes the gradient as ``grad * (y + 1)`` where ``y <= 0`` instead of
    recomputing ``exp(x)``; the pre-activation is not kept either. Only for inputs that nothing else reads: every
    use in this package follows a linear layer, a conv or a sum. Without gradients, or on a view (in-place on a view
    makes autograd copy the base's whole gradient), inside a compiled graph (Inductor fuses the ELU itself), or with
    hooks on the module (Captum's DeepLift reads the input the module saw), it is ``F.elu``.

    Measured on a 2-core AMD EPYC (AVX2), float32 (``python docs/experiments/elu_result.py layer|update``):
    ``elu_backward`` alone ``[12800, 400]`` 3.8 -> 2.1 ms, ``[256, 128]`` 51 -> 16 us, ``[800, 48, 30, 30]`` 25 -> 11
    ms, the forward the same either way; whole paper-size updates, alternated (10 rounds, two runs), 8.19 -> 7.49 s
    and 7.99 -> 7.56 s, and the peak RSS of ``xdreamer bench``'s paper-size run 2.5 -> 2.0 GB (docs/benchmarks.md).
    The gradient differs from ``F.elu``'s by float rounding (``y + 1`` for ``exp(x)``). ``ELU.in_place = False``
    restores ``F.elu`` everywhere (for A/B timing)."""

    in_place = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if (self.in_place and not torch.compiler.is_compiling() and x.grad_fn is not None and not x._is_view()
                and not (self._forward_hooks or self._forward_pre_hooks or self._backward_hooks
                         or self._backward_pre_hooks)):
            return torch.nn.functional.elu_(x)
        return torch.nn.functional.elu(x)


def init_weights(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases, the Keras defaults that dreamerv2 trains with
    (PyTorch's default Kaiming-uniform(a=sqrt(5)) init learned the toy game's ball markedly
    slower in our CPU runs)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in module.modules():  # heads that start at zero (DreamerV3's reward and critic, ``MLP.zero_output``)
        if isinstance(m, MLP) and m.zero_output:
            nn.init.zeros_(m.net[-1].weight)
            nn.init.zeros_(m.net[-1].bias)


class ConvEncoder(nn.Module):
    """Image ``[B, C, 64, 64]`` float in [-0.5, 0.5] -> embedding ``[B, 32 * depth]``."""

    def __init__(self, channels: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = channels
        for i, kernel in enumerate((4, 4, 4, 4)):  # encoder_kernels [4,4,4,4]
            out_ch = depth * 2**i
            layers += [nn.Conv2d(in_ch, out_ch, kernel, stride=2), ELU()]
            in_ch = out_ch
        self.net = nn.Sequential(*layers)
        self.out_dim = 8 * depth * 2 * 2

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        assert image.shape[-2:] == (64, 64), f"expected 64x64 images, got {tuple(image.shape)}"
        lead = image.shape[:-3]
        x = image.reshape(-1, *image.shape[-3:])
        convs, acts = self.net[0::2], self.net[1::2]
        cpu = x.device.type == "cpu"
        for i, (conv, act) in enumerate(zip(convs, acts)):
            if cpu and (i == len(convs) - 1 or (i == 0 and (x.shape[1] == 1 or torch.is_grad_enabled()))):
                # The first layer too (see conv2d_as_matmul): with its 1-3 input channels an im2col is small, and
                # oneDNN's weight gradient for it ran at a few GFLOP/s.
                x = conv2d_as_matmul(x, conv, act)
            else:
                x = act(conv(x))
            if i == 0 and cpu:
                # Channels-last from the first conv on (a 1-channel input is ambiguous, so convert its output):
                # oneDNN then skips two layout copies of the largest activation; encoder forward + backward on
                # 800 paper-size frames 552 -> 504-518 ms (bfloat16), 1,045-1,062 -> 986-1,043 ms (float32).
                x = x.contiguous(memory_format=torch.channels_last)
        return x.reshape(*lead, -1)


def conv2d_as_matmul(x: torch.Tensor, conv: nn.Conv2d,
                     act: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """``conv(x)`` (no padding, no dilation, no groups) as an explicit im2col (:class:`_Im2col`) and one matmul;
    ``act(conv(x))`` with ``act`` applied to the matmul's 2-D output (not a view, so :class:`ELU` runs in place).

    Used on CPU for the encoder's last layer, whose output is only 2x2: oneDNN's convolution runs far below the
    matmul peak there. Measured (800 paper-size frames ``[800, 192, 6, 6] -> [800, 384, 2, 2]``, forward +
    backward with ELU, 2-core Intel Xeon): float32 229 -> 135 ms, bfloat16 158 -> 91 ms. And for the first
    layer, whose im2col has only ``channels x 16`` columns and whose output comes out channels-last at no cost
    (800 frames ``[800, C, 64, 64] -> [800, 48, 31, 31]``, float32, forward + backward with ELU, 2-core AMD
    EPYC, AVX2): grayscale 378-450 -> 143-170 ms, forward alone 109-124 -> 84-108 ms; RGB 363-434 -> 247-318 ms
    but forward alone 126-143 -> 163-204 ms, so an RGB first layer is rewritten only when gradients are on.
    For the middle layers the native op is faster (the second layer: 327 ms native versus 960 ms unfolded).
    Same parameters and numbers up to float rounding (``tests/test_model.py``).
    """
    assert conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1, conv
    batch = x.shape[0]
    cols, out_h, out_w = _Im2col.apply(x, conv.kernel_size, conv.stride)
    # One 2-D matmul (a 3-D input would run as a batched matmul whose weight gradient is B small ones), with the
    # weight's columns in the im2col's (kh, kw, C) order.
    weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1)
    y = torch.nn.functional.linear(cols, weight, conv.bias)
    if act is not None:
        y = act(y)
    return y.reshape(batch, out_h, out_w, conv.out_channels).permute(0, 3, 1, 2)  # channels-last memory


class _Im2col(torch.autograd.Function):
    """``x`` ``[B, C, H, W]`` -> im2col rows ``[B * out_h * out_w, kh * kw * C]`` in (kh, kw, C) column order (no
    padding), and ``(out_h, out_w)``. The channels run innermost, so on a channels-last ``x`` (the encoder's layers
    after the first) the copy moves runs of C contiguous floats, and the backward (col2im) is kh * kw strided adds of
    whole pixels. The (C, kh, kw) order of ``Tensor.unfold`` views copied in one go, with autograd's two
    ``unfold_backward`` passes, took longer for the layer (im2col + matmul; ``python docs/experiments/im2col_views.py
    layer``, 2-core AVX2 EPYC, min of 10): the paper-size encoder's last layer (``[800, 192, 6, 6]``, 4x4 kernel,
    stride 2) forward 58 -> 46 ms, forward + backward 192 -> 162 ms; the toy preset's (``[256, 32, 6, 6]``) 5.0 ->
    3.7 ms; the grayscale first layer's forward the same (47 ms at 800 frames). A one-channel input has the same
    columns in either order."""

    @staticmethod
    def forward(ctx, x, kernel, stride):
        batch, channels, height, width = x.shape
        (kh, kw), (sh, sw) = kernel, stride
        out_h, out_w = (height - kh) // sh + 1, (width - kw) // sw + 1
        ctx.geometry = (x.shape, out_h, out_w, kh, kw, sh, sw)
        return _pixel_patches(x.permute(0, 2, 3, 1), kh, kw, sh, sw), out_h, out_w

    @staticmethod
    def backward(ctx, grad, *_):
        (batch, channels, height, width), out_h, out_w, kh, kw, sh, sw = ctx.geometry
        grad_x = _add_pixel_patches_(grad.new_zeros(batch, height, width, channels),
                                     grad.view(batch, out_h, out_w, kh, kw, channels), sh, sw)
        return grad_x.permute(0, 3, 1, 2), None, None  # channels-last memory


def _pixel_patches(pixels: torch.Tensor, kh: int, kw: int, sh: int, sw: int) -> torch.Tensor:
    """im2col of a channels-innermost map ``[B, H, W, C]`` (no padding): rows ``[B * out_h * out_w, kh * kw * C]``
    in (kh, kw, C) column order. The adjoint of :func:`_add_pixel_patches_`."""
    patches = pixels.unfold(1, kh, sh).unfold(2, kw, sw)  # [B, out_h, out_w, C, kh, kw]
    batch, out_h, out_w, channels = patches.shape[:4]
    return patches.permute(0, 1, 2, 4, 5, 3).reshape(batch * out_h * out_w, kh * kw * channels)


def _add_pixel_patches_(pixels: torch.Tensor, patches: torch.Tensor, sh: int, sw: int) -> torch.Tensor:
    """col2im in place: adds each patch of ``patches`` ``[B, out_h, out_w, kh, kw, C]`` into ``pixels``
    ``[B, H, W, C]`` at rows ``i + sh * m`` and columns ``j + sw * n``, as kh * kw strided adds of whole pixels;
    returns ``pixels``."""
    out_h, out_w, kh, kw = patches.shape[1:5]
    for i in range(kh):
        for j in range(kw):
            pixels[:, i:i + (out_h - 1) * sh + 1:sh, j:j + (out_w - 1) * sw + 1:sw] += patches[:, :, :, i, j]
    return pixels


def conv_transpose2d_phases(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                            padding: int = 0) -> torch.Tensor:
    """``F.conv_transpose2d(x, weight, bias, stride=2, padding=padding)`` computed with ordinary convs.

    A stride-2 transposed conv is four interleaved ordinary convs ("phases"): output pixel
    ``(2m + r, 2n + c)`` only sees kernel taps ``(2i + r, 2j + c)``. So the kernel (zero-padded to an
    even size 2k') is split into four flipped k' x k' kernels stacked as output channels, one
    ``conv2d`` over the input padded by k' - 1 computes all phases, and ``pixel_shuffle`` interleaves
    them; ``padding`` crops the border. A 1x1 input is a plain matmul. Same numbers as the native op
    (tests/test_model.py) but oneDNN's conv2d forward and backward are much faster on CPU than its
    transposed conv at the decoder's shapes (docs/benchmarks.md).
    """
    cin, cout, k, k2 = weight.shape
    assert k == k2, "square kernels only"
    height, width = x.shape[-2:]
    out_h, out_w = (height - 1) * 2 - 2 * padding + k, (width - 1) * 2 - 2 * padding + k
    if height == 1 and width == 1 and padding == 0:
        y = (x.reshape(x.shape[0], cin) @ weight.reshape(cin, cout * k * k)).reshape(-1, cout, k, k)
        return y if bias is None else y + bias[:, None, None]
    kp = (k + 1) // 2
    w = torch.nn.functional.pad(weight, (0, 2 * kp - k, 0, 2 * kp - k))
    w = w.reshape(cin, cout, kp, 2, kp, 2).permute(1, 3, 5, 0, 2, 4).flip(-1, -2).reshape(cout * 4, cin, kp, kp)
    y = torch.nn.functional.conv2d(x, w, None if bias is None else bias.repeat_interleave(4), padding=kp - 1)
    y = torch.nn.functional.pixel_shuffle(y, 2)
    if y.shape[-2:] != (out_h, out_w):
        y = y[..., padding:padding + out_h, padding:padding + out_w]
    return y


class _SplitBackwardConv(torch.autograd.Function):
    """``F.conv2d`` / ``F.conv_transpose2d`` (stride ``stride``, no padding, dilation or groups) whose backward asks
    oneDNN for the input and the weight gradients in two separate calls, and takes a transposed conv's weight
    gradient as the weight gradient of the equivalent ordinary conv with input and output swapped (for
    ``y = conv_transpose2d(x, W)``, ``x``-shaped ``conv2d(dy, W)`` is the adjoint, so ``dW`` is that conv's weight
    gradient at input ``dy`` and output gradient ``x``). Same numbers as autograd's ``convolution_backward``."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride: int, transposed: bool):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.transposed, ctx.has_bias = stride, transposed, bias is not None
        conv = torch.nn.functional.conv_transpose2d if transposed else torch.nn.functional.conv2d
        return conv(x, weight, bias, stride=stride)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, zeros, ones = [ctx.stride] * 2, [0, 0], [1, 1]
        backward = torch.ops.aten.convolution_backward
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = backward(grad, x, weight, None, stride, zeros, ones, ctx.transposed, zeros, 1,
                              [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            # an ordinary conv's weight gradient: of x -> y, or for a transposed conv of the swapped y -> x
            out_grad, conv_in = (x, grad) if ctx.transposed else (grad, x)
            grad_w = backward(out_grad, conv_in, weight, None, stride, zeros, ones, False, zeros, 1,
                              [False, True, False])[1]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


def split_backward_applies(x: torch.Tensor) -> bool:
    """Whether :func:`conv_split_backward` splits the backward for ``x``: on an AVX2 CPU (without AVX-512; the only
    kind it was measured on), float32/float64 outside autocast, eager only.

    Measured on a 2-core AMD EPYC (AVX2), float32, the decoder's 13 -> 30 transposed conv on 800 paper-size frames,
    backward alone (min of 5, two runs): 912-917 ms in one ``convolution_backward`` call against 302-325 ms for the
    input gradient plus 417-434 ms for the weight gradient as the swapped ordinary conv's (469-610 ms as the
    transposed conv's; bit-identical); the 5 -> 13 layer 325 against 104 + 165 ms. Inside paper-size updates
    (alternating in one process, 10 rounds each, two runs) the world model took 4.79 -> 4.47 s and 4.76 -> 4.73 s.
    The encoder's convs split were faster alone (448 -> 357 ms) but slower inside the update, so they keep the
    native backward (docs/benchmarks.md). Autocast casts inside the forward, so its backward would see other
    dtypes; compiled graphs keep the native op."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and _cpu_is_avx2()
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling())


@functools.lru_cache(maxsize=None)
def _cpu_is_avx2() -> bool:
    """Whether PyTorch's kernels run at the AVX2 level here (no AVX-512)."""
    return torch.backends.cpu.get_cpu_capability() == "AVX2"


def conv_split_backward(x: torch.Tensor, conv: nn.Conv2d | nn.ConvTranspose2d) -> torch.Tensor:
    """``conv(x)`` for a stride-s conv or transposed conv without padding, with :class:`_SplitBackwardConv`'s
    backward where :func:`split_backward_applies`, else ``conv``'s own forward."""
    transposed = isinstance(conv, nn.ConvTranspose2d)
    assert conv.padding == (0, 0) and conv.dilation == (1, 1) and conv.groups == 1, conv
    assert conv.stride[0] == conv.stride[1] and (not transposed or conv.output_padding == (0, 0)), conv
    if not (torch.is_grad_enabled() and split_backward_applies(x)):
        return nn.Conv2d.forward(conv, x) if not transposed else nn.ConvTranspose2d.forward(conv, x)
    return _SplitBackwardConv.apply(x, conv.weight, conv.bias, conv.stride[0], transposed)


# The decoder's transposed convs from a small input with many channels (paper size: the 5x5 -> 13x13 layer, 192 -> 96
# channels) run faster as one GEMM plus col2im than as oneDNN's deconvolution on an AVX2 CPU. Measured on the 2-core
# AMD EPYC, float32, channels-last, min of 8 (``python docs/experiments/decoder_gemm.py layer``, docs/benchmarks.md,
# tenth session): 800 frames forward 262 -> 182 ms, forward + ELU + backward 655 -> 496 ms; 271 frames (a what-if's
# decoding) forward 86 -> 57 ms. With 64 input channels (the small preset, 512 frames) forward + backward was slower
# (51 -> 60 ms) and at 32 (the toy preset) within a millisecond; the 13 -> 30 layers were slower at every size
# (paper size, 800 frames, forward 380 -> 620 ms): their col2im adds 36 taps into a large output. Hence the rule:
# at least GEMM_MIN_IN_CHANNELS input channels and an input of at most GEMM_MAX_INPUT pixels a side.
GEMM_MIN_IN_CHANNELS = 128
GEMM_MAX_INPUT = 8


class _GemmConvTranspose2d(torch.autograd.Function):
    """``F.conv_transpose2d(x, weight, bias, stride=stride)`` (no padding, dilation, groups or output padding) as one
    GEMM and a col2im: ``[N*H*W, Cin] @ [Cin, k*k*Cout]`` gives each input pixel's k x k output patch, and the k*k
    taps are added into the output at their strided offsets. The backward gathers the output gradient's patches
    (im2col) once and takes the input and weight gradients as two GEMMs with them. The output is channels-last.
    Same numbers as the native op up to float rounding (tests/test_model.py)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride: int):
        n, cin, h, w = x.shape
        cout, k = weight.shape[1], weight.shape[2]
        rows = x.permute(0, 2, 3, 1).reshape(n * h * w, cin)  # a view for a channels-last x
        patches = (rows @ weight.permute(0, 2, 3, 1).reshape(cin, k * k * cout)).view(n, h, w, k, k, cout)
        # not a view (so that the ELU after it can run in place), channels-last in memory
        y = torch.empty(n, cout, (h - 1) * stride + k, (w - 1) * stride + k, dtype=x.dtype, device=x.device,
                        memory_format=torch.channels_last)
        pixels = y.permute(0, 2, 3, 1)  # [N, OH, OW, Cout]
        if bias is None:
            pixels.zero_()
        else:
            pixels.copy_(bias.expand_as(pixels))
        _add_pixel_patches_(pixels, patches, stride, stride)
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.has_bias = stride, bias is not None
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        n, cin, h, w = x.shape
        cout, k = weight.shape[1], weight.shape[2]
        g = grad.permute(0, 2, 3, 1).contiguous()  # [N, OH, OW, Cout]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            # im2col of the output gradient: row (n, i, j) holds the k x k patch that input pixel (i, j) wrote to
            cols = _pixel_patches(g, k, k, ctx.stride, ctx.stride)
            if ctx.needs_input_grad[0]:
                wmat = weight.permute(0, 2, 3, 1).reshape(cin, k * k * cout)
                grad_x = (cols @ wmat.t()).view(n, h, w, cin).permute(0, 3, 1, 2)
            if ctx.needs_input_grad[1]:
                rows = x.permute(0, 2, 3, 1).reshape(n * h * w, cin)
                grad_w = (rows.t() @ cols).view(cin, k, k, cout).permute(0, 3, 1, 2).contiguous()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum((0, 1, 2))
        return grad_x, grad_w, grad_b, None


def gemm_applies(x: torch.Tensor, conv: nn.ConvTranspose2d) -> bool:
    """Whether ``PhaseConvTranspose2d(impl="auto")`` runs ``conv`` on ``x`` as :class:`_GemmConvTranspose2d`: a small
    input (<= ``GEMM_MAX_INPUT`` px a side) with >= ``GEMM_MIN_IN_CHANNELS`` channels, no padding, where
    :func:`split_backward_applies` (an AVX2 CPU, the only kind it was measured on; float32/float64, no autocast,
    eager)."""
    return (conv.in_channels >= GEMM_MIN_IN_CHANNELS and max(x.shape[-2:]) <= GEMM_MAX_INPUT
            and conv.padding == (0, 0) and split_backward_applies(x))


@functools.lru_cache(maxsize=None)
def _cpu_feature(probe_name: str) -> bool:
    """A CPU feature as PyTorch's private ``torch.cpu`` probe ``probe_name`` reports it; a missing or failing probe
    means "unknown", treated as absent."""
    probe = getattr(torch.cpu, probe_name, None)
    try:
        return bool(probe()) if probe is not None else False
    except Exception:
        return False


def _cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (bfloat16 matrix units)."""
    return _cpu_feature("_is_amx_tile_supported")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX tiles), as PyTorch
    reports it. Without either, oneDNN/MKL fall back to a reference path: on a 2-core AVX2 AMD EPYC a
    2048^3 bfloat16 matmul ran at 0.34 GFLOP/s against 155 GFLOP/s in float32 (docs/benchmarks.md)."""
    return _cpu_has_amx() or _cpu_feature("_is_avx512_bf16_supported")


class PhaseConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` with stride 2 (same parameters and state dict) that picks the fastest
    of equivalent computations on CPU.

    ``impl="auto"`` (default): a 1x1 input (the DreamerV2 decoder's first layer) is a matmul and a
    layer with at most 4 output channels (the image layer) runs :func:`conv_transpose2d_phases`;
    the wide middle layers run the native op on a channels-last input, which oneDNN handles best,
    except that under bfloat16 a small (<= 8 px) input runs the phases on a channels-last input. On a CPU
    with AMX tiles (``torch.cpu._is_amx_tile_supported()``), under bfloat16 every layer but the 1x1 one runs
    the native op on a channels-last input: measured on the 2-core Intel Xeon with AMX (forward + backward,
    800 frames, paper size, bfloat16), the image layer 117 ms native versus 332 ms phases, the 5x5-input
    layer 218 ms versus 366 ms phases (float32 there keeps the rules above: its image layer is 183 ms phases
    versus 227 ms native).
    Measured on the paper-size decoder, 2 CPU cores (docs/benchmarks.md): decoding 288 frames
    0.65 s versus 1.17 s native and 0.87 s all-phases; forward + backward on 800 frames 4.6 s versus
    8.9 s native and 6.3 s all-phases (float32); in bfloat16 the small-input rule took decoding from
    0.52 s to 0.41 s and forward + backward from 3.8 s to 3.6 s (and made float32 training slower,
    hence float32 keeps the native op). ``impl="native"`` is the reference path, ``impl="phases"``
    and ``impl="phases_cl"`` force the phase decomposition (on a channels-last input); all agree to
    float rounding (tests/test_model.py). Where ``auto`` picks the native op on an AVX2 CPU in float32, its
    backward is split in two calls (:func:`conv_split_backward`). On such a CPU a small input with many channels
    (the paper-size 5x5 -> 13x13 layer) runs as one GEMM plus col2im instead (:func:`gemm_applies`;
    ``impl="gemm"`` forces it).
    """

    IMPLS = ("auto", "phases", "phases_cl", "native", "gemm")

    def __init__(self, in_ch: int, out_ch: int, kernel: int, padding: int = 0, impl: str = "auto") -> None:
        super().__init__(in_ch, out_ch, kernel, stride=2, padding=padding)
        if impl not in self.IMPLS:
            raise ValueError(f"impl must be one of {self.IMPLS}, got {impl!r}")
        self.impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        impl = self.impl
        if impl == "auto":
            bf16 = x.dtype == torch.bfloat16 or autocast_dtype(x.device) is not None
            if x.shape[-2:] == (1, 1):
                impl = "phases"
            elif bf16 and x.device.type == "cpu" and _cpu_has_amx():
                impl = "native_cl"
            elif self.out_channels <= 4:
                impl = "phases"
            elif gemm_applies(x, self):
                impl = "gemm"
            elif bf16 and x.shape[-1] <= 8:  # bf16: oneDNN's conv beats its deconv on small inputs
                impl = "phases_cl"
            else:
                impl = "native_cl"
        if impl == "gemm":
            if self.padding != (0, 0):
                raise ValueError("impl='gemm' needs a transposed conv without padding")
            return _GemmConvTranspose2d.apply(x.contiguous(memory_format=torch.channels_last), self.weight, self.bias,
                                              self.stride[0])
        if impl == "phases_cl":
            x, impl = x.contiguous(memory_format=torch.channels_last), "phases"
        if impl == "phases":
            return conv_transpose2d_phases(x, self.weight, self.bias, self.padding[0])
        if impl == "native_cl" and x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
            if self.padding == (0, 0):
                return conv_split_backward(x, self)  # the native op, with a faster backward on AVX2 CPUs
        return super().forward(x)


class ConvDecoder(nn.Module):
    """Feature ``[..., F]`` -> image mean ``[..., C, 64, 64]`` (centred, unit-variance Gaussian).

    ``layout="dreamerv2"`` (the paper): a linear layer to ``32 * depth`` channels at 1x1, then four
    stride-2 transposed convs with kernels 5,5,6,6 and depths 4d, 2d, d, C (1 -> 5 -> 13 -> 30 -> 64).

    ``layout="dreamerv3"`` (Hafner et al. 2023, danijar/dreamerv3 ``nets.py`` ``ImageDecoder``): a
    linear layer to a 4x4 map with ``8 * depth`` channels, then four stride-2 transposed convs with
    kernel 4 and padding 1 and depths 4d, 2d, d, C (4 -> 8 -> 16 -> 32 -> 64). The linear layer
    places content spatially, so small objects are learnt in far fewer updates: with the true ball
    position as input, toy:catch's 4x4 ball is drawn (ball-pixel MSE < 0.2) after ~800 updates
    instead of > 1,500 (``docs/experiments/decoder_ball.py``). V3's norm layers and SiLU are not
    taken; activations stay ELU as in the rest of this DreamerV2 model.
    """

    LAYOUTS = ("dreamerv2", "dreamerv3")

    def __init__(self, feat_dim: int, channels: int, depth: int, layout: str = "dreamerv2") -> None:
        super().__init__()
        if layout not in self.LAYOUTS:
            raise ValueError(f"decoder layout must be one of {self.LAYOUTS}, got {layout!r}")
        self.channels = channels
        self.start = 1 if layout == "dreamerv2" else 4
        self.start_ch = 32 * depth if layout == "dreamerv2" else 8 * depth
        self.linear = nn.Linear(feat_dim, self.start_ch * self.start**2)
        layers: list[nn.Module] = []
        in_ch = self.start_ch
        # dreamerv2 decoder_kernels [5,5,6,6], stride 2, no padding; dreamerv3 kernel 4, stride 2, same padding
        specs = [(k, 0) for k in (5, 5, 6, 6)] if layout == "dreamerv2" else [(4, 1)] * 4
        for i, (kernel, pad) in enumerate(specs):
            last = i == len(specs) - 1
            out_ch = channels if last else depth * 2 ** (len(specs) - i - 2)
            layers.append(PhaseConvTranspose2d(in_ch, out_ch, kernel, padding=pad))
            if not last:
                layers.append(ELU())
            in_ch = out_ch
        self.net = nn.Sequential(*layers)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        lead = feat.shape[:-1]
        x = self.linear(feat.reshape(-1, feat.shape[-1]))
        x = self.net(x.reshape(x.shape[0], self.start_ch, self.start, self.start))
        assert x.shape[-2:] == (64, 64), tuple(x.shape)
        return x.reshape(*lead, self.channels, 64, 64)


# Rows x one-hot width from which the lookup (``linear_onehot``, finding the classes included) beats the matmul
# (``python docs/experiments/onehot_lookup.py op``, 2-core AVX2 EPYC, float32, layers of 128-600 units): [256 x 256]
# 0.24 vs 0.13 ms (the toy preset's imagination step); [18 x 1024] 0.97 vs 0.42 ms (a what-if step); [4096 x 256]
# 0.91 vs 2.18 ms; [288 x 1024] 1.22 vs 1.83 ms; [800 x 1024] 2.35 vs 6.83 ms (paper-size imagination step);
# [12800 x 1024] 15 vs 89 ms (paper-size heads on the imagined trajectory).
ONEHOT_LOOKUP_MIN = 1 << 17


def lookup_columns(onehot: torch.Tensor) -> torch.Tensor | None:
    """``[..., G, K]`` one-hot blocks -> ``[..., G]`` flat column indices ``g * K + class`` of their ones (as in
    ``onehot.flatten(-2)``), for :func:`linear_onehot`; None where the lookup does not apply: ``onehot`` needs a
    gradient (the lookup passes none to it) or is smaller than ``ONEHOT_LOOKUP_MIN`` (the matmul is faster).

    The class is ``onehot @ [0, 1, ..., K-1]`` rounded: straight-through samples are one-hot up to rounding
    (``1 + p - p``), and the product is exact in float32. ``argmax(-1)`` gives the same indices but is slow over the
    short last axis: on the paper-size imagined trajectory ``[12800, 32, 32]`` it alone took 19 ms, the whole lookup
    with this product 15 ms. Every block must hold a one: an all-zero block (the initial state) would read as
    class 0."""
    if onehot.requires_grad or onehot.numel() < ONEHOT_LOOKUP_MIN:
        return None
    groups, classes = onehot.shape[-2:]
    ramp = torch.arange(classes, dtype=torch.float32, device=onehot.device)
    off = contextlib.nullcontext() if autocast_dtype(onehot.device) is None else torch.autocast(onehot.device.type,
                                                                                                 enabled=False)
    with off:  # float32 also under autocast: exact classes
        index = (onehot.float() @ ramp).round_().long()
    return index + torch.arange(0, groups * classes, classes, device=onehot.device)


class _OneHotLinear(torch.autograd.Function):
    """``F.linear(onehot, weight)`` (no bias) for ``onehot`` ``[N, G * K]`` made of G one-hot blocks whose ones sit at
    ``columns`` ``[N, G]``: the forward adds G weight columns per row (``F.embedding_bag``) instead of a matmul with
    G * K inputs, and the weight gradient is the matmul's, ``grad.t() @ onehot`` (embedding_bag's own backward ran at
    half its speed). No gradient to ``onehot``. Paper size (``[12800, 1024] -> 400``, 2-core AVX2 EPYC, float32):
    matmul 89 ms, lookup 15 ms with finding the classes (``ONEHOT_LOOKUP_MIN``)."""

    @staticmethod
    def forward(ctx, columns, onehot, weight):
        ctx.save_for_backward(onehot)
        ctx.weight_dtype = weight.dtype
        # a contiguous [G * K, out] table: on the transposed view embedding_bag ran 30x slower
        return torch.nn.functional.embedding_bag(columns, weight.t().contiguous(), mode="sum")

    @staticmethod
    def backward(ctx, grad):
        (onehot,) = ctx.saved_tensors
        if not ctx.needs_input_grad[2]:
            return None, None, None
        return None, None, (grad.t() @ onehot.to(grad.dtype)).to(ctx.weight_dtype)


def linear_onehot(layer: nn.Linear, dense: torch.Tensor, onehot: torch.Tensor, columns: torch.Tensor,
                  onehot_first: bool = False) -> torch.Tensor:
    """``layer(cat([dense, onehot], -1))`` (``cat([onehot, dense])`` with ``onehot_first``) for 2-D inputs whose
    ``onehot`` part ``[N, G * K]`` is G one-hot blocks with their ones at ``columns`` ``[N, G]``
    (:func:`lookup_columns`) and needs no gradient: the one-hot share runs as a lookup (:class:`_OneHotLinear`).
    The same numbers up to float rounding (``tests/test_model.py``)."""
    width = onehot.shape[-1]
    weight = layer.weight
    if onehot_first:
        w_onehot, w_dense = weight[:, :width], weight[:, width:]
    else:
        w_onehot, w_dense = weight[:, -width:], weight[:, :-width]
    out = nn.functional.linear(dense, w_dense, layer.bias)
    return out + _OneHotLinear.apply(columns, onehot, w_onehot).to(out.dtype)


class MLP(nn.Module):
    """``layers`` x (Linear, ELU) followed by a linear output of size ``out_dim``; with ``norm``, each hidden
    layer is (Linear, LayerNorm, ``act``) as in DreamerV3 (LayerNorm + SiLU).

    ``onehot_tail``: the input's last ``G * K`` columns are ``G`` one-hot blocks of ``K`` (the RSSM feature's
    sampled latents, ``(stoch, classes)``); ``forward(x, columns)`` then computes their share of the first layer
    as a lookup where ``x`` needs no gradient (:func:`linear_onehot`)."""

    def __init__(self, in_dim: int, out_dim: int, layers: int, units: int,
                 onehot_tail: tuple[int, int] | None = None, norm: bool = False,
                 act: Callable[[], nn.Module] = ELU) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        for _ in range(layers):
            mods += [nn.Linear(in_dim, units), *([nn.LayerNorm(units)] if norm else []), act()]
            in_dim = units
        mods.append(nn.Linear(in_dim, out_dim))
        self.net = nn.Sequential(*mods)
        self.onehot_tail = onehot_tail
        self.zero_output = False  # init_weights zeroes the output layer when set

    def lookup_columns(self, x: torch.Tensor) -> torch.Tensor | None:
        """``[..., G]``: where the ones of ``x``'s one-hot tail sit, or None where the lookup does not apply
        (:func:`lookup_columns`), and where the input has no one-hot tail (DreamerV1's Gaussian latents)."""
        if self.onehot_tail is None:
            return None
        groups, classes = self.onehot_tail
        return lookup_columns(x[..., x.shape[-1] - groups * classes:].unflatten(-1, (groups, classes)))

    def forward(self, x: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``[..., F]``; ``columns`` (optional, ``[..., G]`` from :meth:`lookup_columns`): the first layer
        looks the one-hot tail up. Ignored where ``x`` needs a gradient (the lookup passes none to its input)."""
        # One 2-D matmul per layer: on a sliced (non-contiguous) [B, T, F] input ``nn.Linear`` falls back to a
        # batched matmul against a broadcast weight, which ran at a third of the speed (the actor on
        # imagined features, paper size: 158 ms at 92 GFLOP/s, float32); ``reshape`` copies it once instead.
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        if columns is None or x.requires_grad:
            return self.net(x).reshape(*lead, -1)
        groups, classes = self.onehot_tail
        width = groups * classes
        first = linear_onehot(self.net[0], x[:, :-width], x[:, -width:], columns.reshape(-1, groups))
        return self.net[1:](first).reshape(*lead, -1)


class _LoopLinear(torch.autograd.Function):
    """``F.linear(x, weight)`` (no bias) whose backward leaves the weight gradient to :class:`LoopWeight`: it returns
    the input gradient and hands ``(x, grad)`` to the weight's list."""

    @staticmethod
    def forward(ctx, x, weight, pending):
        ctx.x_dtype = x.dtype
        x = x.to(weight.dtype)  # under autocast the weight comes cast (``RSSM.observe``); the input may not
        ctx.save_for_backward(x, weight)
        ctx.pending = pending
        return torch.nn.functional.linear(x, weight)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.to(weight.dtype)
        if ctx.needs_input_grad[1]:
            ctx.pending.append((x, grad))
        return ((grad @ weight).to(ctx.x_dtype) if ctx.needs_input_grad[0] else None), None, None


class _GatherLoopGrad(torch.autograd.Function):
    """The weight's entry into a loop of :class:`_LoopLinear` steps. Autograd runs its backward after every step's
    (they all use its output), and it computes the weight gradient of all steps as one matmul."""

    @staticmethod
    def forward(ctx, weight, pending):
        ctx.pending = pending
        ctx.set_materialize_grads(False)
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad):
        if not ctx.pending:
            return grad, None
        xs, grads = zip(*ctx.pending)
        ctx.pending.clear()
        total = torch.cat(grads).transpose(0, 1) @ torch.cat(xs)
        return (total if grad is None else total + grad), None


class LoopWeight:
    """A weight used by ``F.linear`` at every step of a loop (``RSSM.observe``), with its gradient computed once.

    Autograd would compute a step's weight gradient at every step (``[out, B] x [B, in]``, B = 16 rows at paper
    size: small, memory-bound matmuls) and add the T results into one buffer. ``LoopWeight`` instead keeps each
    step's input and output gradient and computes the sum as one ``[out, T*B] x [T*B, in]`` matmul. The same
    gradient up to float rounding (``tests/test_model.py::test_loop_weight_gradient_equals_autograd``).
    Use only where the loop's backward runs in one ``backward`` call (the pending pairs live until it does).
    """

    def __init__(self, weight: torch.Tensor) -> None:
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.weight = _GatherLoopGrad.apply(weight, self.pending) if weight.requires_grad else weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.weight.requires_grad:
            return torch.nn.functional.linear(x, self.weight)
        return _LoopLinear.apply(x, self.weight, self.pending)


class LayerNormGRUCell(nn.Module):
    """GRU cell with layer norm on the fused gates (dreamerv2 ``GRUCell(norm=True)``).

    ``update_bias=-1`` makes the cell keep its state by default early in training.
    """

    def __init__(self, in_dim: int, size: int, update_bias: float = -1.0) -> None:
        super().__init__()
        self.size = size
        self.update_bias = update_bias
        self.linear = nn.Linear(in_dim + size, 3 * size, bias=False)
        self.norm = nn.LayerNorm(3 * size, eps=1e-3)  # tf LayerNormalization default eps 1e-3

    def forward(self, x: torch.Tensor, state: torch.Tensor,
                linear: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """``linear`` replaces the gates' linear layer (same weight; ``RSSM.observe`` passes a
        :class:`LoopWeight`'s)."""
        parts = self.norm((linear or self.linear)(torch.cat([x, state], -1)))
        reset, cand, update = parts.split(self.size, -1)
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update + self.update_bias)
        return update * cand + (1 - update) * state

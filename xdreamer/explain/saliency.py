"""Pixel saliency of the agent's decision with respect to the current frame (issue 3, part 5).

What is explained. At step t the agent holds the recurrent state of the previous step
``(h_{t-1}, z_{t-1})`` and the action ``a_{t-1}`` that led to the frame ``o_t``. The forward
function explained here is::

    frame o_t [N, C, 64, 64] in [0, 1]
      -> wm.encode(o_t - 0.5)                                  (the world model's own encoder)
      -> rssm.obs_step(prev_state, a_{t-1}, embed, is_first)   (the RSSM's own posterior step;
                                                                h_t does not depend on o_t, so
                                                                the recurrent state is held fixed)
      -> z_t = softmax(posterior logits)                       (RELAXED posterior, see below)
      -> feat = concat(h_t, z_t)
      -> actor logit of the chosen action  |  critic value

The relaxed posterior. The agent itself feeds a one-hot z_t (a sample in explore mode, the
argmax in eval mode) to its heads. A one-hot is piecewise constant in the pixels, so gradients
would be zero almost everywhere (the straight-through estimator only fakes them). Saliency,
IntegratedGradients and NoiseTunnel therefore explain the function with the class
*probabilities* in place of the one-hot: smooth, deterministic, and equal to the expectation
of the latent the heads see. Perturbation methods (Occlusion, Greydanus) use the same function
so that all methods explain one and the same number. ``score`` picks which number: the chosen
action's ``logit`` (default for gradient methods), its ``logprob`` (default for the Greydanus map,
Huber et al.'s fix: score the chosen action, not the whole logit vector) or ``prob``.

Safety. Every entry point runs inside :func:`attribution_guard`: modules in eval mode,
parameters frozen, gradients enabled, and on exit -- also on error -- the original train/eval
flags and ``requires_grad`` flags are restored and any hook registered meanwhile is removed.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..rssm import State

METHODS = ("saliency", "integrated_gradients", "occlusion", "smoothgrad", "greydanus")
TARGETS = ("action", "value")
SCORES = ("logit", "logprob", "prob")
_ALIASES = {"ig": "integrated_gradients", "noise_tunnel": "smoothgrad", "noisetunnel": "smoothgrad",
            "gradient": "saliency", "vanilla": "saliency", "perturbation": "greydanus"}

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_HOOK_FLAG_DICTS = ("_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")


# ---- safety: modes, frozen parameters, hooks ----------------------------------------------------
@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode; restore every submodule's own ``training`` flag on exit."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


def _hook_ids(module: nn.Module) -> dict[str, set]:
    return {name: set(getattr(module, name, {}).keys()) for name in _HOOK_DICTS}


def count_hooks(module: nn.Module) -> int:
    """Number of forward / forward-pre / backward / backward-pre hooks on ``module`` and all submodules."""
    return sum(len(getattr(m, name, {})) for m in module.modules() for name in _HOOK_DICTS)


def _global_hook_dicts() -> list[dict]:
    from torch.nn.modules import module as mod

    names = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
             "_global_backward_pre_hooks")
    return [getattr(mod, n) for n in names if isinstance(getattr(mod, n, None), dict)]


@contextlib.contextmanager
def attribution_guard(*modules: nn.Module) -> Iterator[None]:
    """Run an attribution safely: eval mode, parameters frozen, gradients on; on exit (also on
    error) restore modes and ``requires_grad`` flags and remove every hook added meanwhile."""
    subs: list[nn.Module] = []
    seen: set[int] = set()
    for module in modules:
        for m in module.modules():
            if id(m) not in seen:
                seen.add(id(m))
                subs.append(m)
    hooks = [(m, _hook_ids(m)) for m in subs]
    global_hooks = [(d, set(d.keys())) for d in _global_hook_dicts()]
    params = {id(p): p for m in subs for p in m.parameters(recurse=False)}
    grad_flags = [(p, p.requires_grad) for p in params.values()]
    with contextlib.ExitStack() as stack:
        try:
            for module in modules:
                stack.enter_context(eval_mode(module))
            for p, _ in grad_flags:
                p.requires_grad_(False)
            stack.enter_context(torch.enable_grad())
            yield
        finally:
            for p, flag in grad_flags:
                p.requires_grad_(flag)
            for m, before in hooks:
                for name in _HOOK_DICTS:
                    table = getattr(m, name, None)
                    if table is None:
                        continue
                    for key in list(table.keys()):
                        if key not in before[name]:
                            del table[key]
                            for flag_name in _HOOK_FLAG_DICTS:
                                getattr(m, flag_name, {}).pop(key, None)
            for table, before in global_hooks:
                for key in list(table.keys()):
                    if key not in before:
                        del table[key]


# ---- image helpers -------------------------------------------------------------------------------
def gaussian_kernel1d(sigma: float, device=None) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(image: torch.Tensor, sigma: float = 5.0) -> torch.Tensor:
    """Separable Gaussian blur of ``[..., H, W]`` with reflect padding (radius 3 sigma)."""
    if sigma <= 0:
        return image.clone()
    shape = image.shape
    x = image.reshape(-1, 1, *shape[-2:]).float()
    k = gaussian_kernel1d(sigma, image.device)
    r = k.numel() // 2
    rh, rw = min(r, shape[-2] - 1), min(r, shape[-1] - 1)
    if rh < r or rw < r:  # tiny images: truncate the kernel to what reflect padding allows
        k = gaussian_kernel1d(sigma, image.device)[r - min(rh, rw): r + min(rh, rw) + 1]
        k = k / k.sum()
        r = rh = rw = min(rh, rw)
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    return x.reshape(shape).to(image.dtype)


def to_unit_frame(frame: Any, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 ``[C, H, W]`` / ``[1, C, H, W]`` (0..255) or float in [0, 1] -> float ``[1, C, H, W]``."""
    x = torch.as_tensor(np.asarray(frame) if not torch.is_tensor(frame) else frame)
    x = x.to(device)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one frame [C, H, W] (or [1, C, H, W]), got shape {tuple(x.shape)}")
    return x


def _to_tensor(x: Any, device) -> torch.Tensor:
    return (x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x))).to(device)


def as_state(agent, prev_state: Any) -> State:
    """Accept a :class:`State`, an agent ``PolicyState``, a mapping with ``deter``/``stoch``/``logits``
    (``stoch`` optional: the argmax one-hot of ``logits``), unbatched or with batch 1; ``None`` is the
    initial (zero) state. Returns a float ``State`` with batch 1 on the agent's device."""
    rssm, device = agent.wm.rssm, agent.device
    if prev_state is None:
        return rssm.initial(1, device)
    if hasattr(prev_state, "latent"):  # PolicyState
        prev_state = prev_state.latent
    if isinstance(prev_state, Mapping):
        deter = _to_tensor(prev_state["deter"], device).float()
        logits = prev_state.get("logits")
        stoch = prev_state.get("stoch")
        logits = None if logits is None else _to_tensor(logits, device).float()
        if stoch is None:
            if logits is None:
                raise ValueError("a previous state needs 'stoch' or 'logits'")
            stoch = rssm.mode_stoch(logits).float()
        stoch = _to_tensor(stoch, device).float()
        prev_state = State(deter, stoch, stoch.clone() if logits is None else logits)
    if not isinstance(prev_state, tuple) or len(prev_state) != 3:
        raise TypeError(f"unsupported previous state of type {type(prev_state).__name__}")
    deter, stoch, logits = (_to_tensor(x, device).float() for x in prev_state)
    if deter.dim() == 1:
        deter, stoch, logits = deter[None], stoch[None], logits[None]
    if stoch.dim() == 2:  # flat [1, S*K]
        stoch, logits = (x.reshape(1, rssm.stoch_size, -1) for x in (stoch, logits))
    if deter.shape != (1, rssm.deter_size) or stoch.shape != (1, rssm.stoch_size, rssm.classes):
        raise ValueError(f"previous state has deter {tuple(deter.shape)} and stoch {tuple(stoch.shape)}; this "
                         f"model needs deter ({rssm.deter_size},) and stoch ({rssm.stoch_size}, {rssm.classes})")
    return State(deter, stoch, logits)


def as_action_input(agent, prev_action: Any) -> torch.Tensor:
    """Previous action as the model's input ``[1, A]``: an int index, a one-hot / continuous vector,
    or ``None`` (zeros, as at the start of an episode)."""
    A = agent.spec.num_actions
    if prev_action is None:
        return torch.zeros(1, A, device=agent.device)
    if hasattr(prev_action, "action") and hasattr(prev_action, "latent"):  # PolicyState
        prev_action = prev_action.action
    a = _to_tensor(prev_action, agent.device)
    if a.dim() == 0 or (a.numel() == 1 and A != 1 and not a.dtype.is_floating_point):
        if not agent.spec.discrete:
            raise ValueError("a continuous-action agent needs the previous action as a vector")
        index = int(a.reshape(()))
        if not 0 <= index < A:
            raise ValueError(f"previous action {index} out of range for {A} actions")
        return F.one_hot(torch.tensor([index], device=agent.device), A).float()
    a = a.float().reshape(1, -1)
    if a.shape[1] != A:
        raise ValueError(f"previous action has {a.shape[1]} entries, the agent has {A} actions")
    return a


NO_CRITIC = ("this agent has no value function (World Models with a CMA-ES controller): explain its action "
             "(target action) instead")


# ---- the explained function ----------------------------------------------------------------------
def actor_outputs(agent, feat: torch.Tensor) -> torch.Tensor:
    """What the maps explain of the actor: its logits ``[N, A]`` (discrete) or its pre-tanh means (continuous)."""
    out = agent.actor.net(feat)
    return out if agent.spec.discrete else out.chunk(2, -1)[0]


class PixelForward:
    """``frame [N, C, 64, 64] in [0, 1] -> score [N]`` with the recurrent state held fixed.

    Built from the world model's own ``encode`` and ``rssm.obs_step`` and the actor's / critic's own
    networks; only the posterior is relaxed to probabilities (module docstring)."""

    def __init__(self, agent, prev_state: Any = None, prev_action: Any = None, is_first: bool = False,
                 target: str = "action", score: str = "logit", action: int | None = None) -> None:
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; use one of {TARGETS}")
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}; use one of {SCORES}")
        if target == "value" and not getattr(agent, "has_critic", True):
            raise ValueError(NO_CRITIC)
        self.agent, self.target, self.score = agent, target, score
        self.prev_state = as_state(agent, prev_state)
        self.prev_action = as_action_input(agent, prev_action)
        self.is_first = torch.tensor([float(bool(is_first))], device=agent.device)
        self.action = None if action is None else int(action)
        if target == "action" and self.action is not None:
            limit = agent.spec.num_actions
            if not 0 <= self.action < limit:
                raise ValueError(f"action {self.action} out of range for {limit} actions")
        if target == "action" and not agent.spec.discrete and self.action is None:
            raise ValueError("for a continuous-action agent give action=<dimension> to explain")

    def feat(self, frame: torch.Tensor) -> torch.Tensor:
        """Relaxed feature ``concat(h_t, softmax(posterior logits))`` ``[N, F]``."""
        wm = self.agent.wm
        n = frame.shape[0]
        prev = self.prev_state.map(lambda x: x.expand(n, *x.shape[1:]))
        embed = wm.encode(frame.float() - 0.5)
        post, _ = wm.rssm.obs_step(prev, self.prev_action.expand(n, -1), embed, self.is_first.expand(n),
                                   sample=False)
        return wm.feat(State(post.deter, wm.rssm.relaxed_stoch(post.logits), post.logits))

    def outputs(self, feat: torch.Tensor) -> torch.Tensor:
        """Actor logits ``[N, A]`` (discrete) or the pre-tanh means (continuous)."""
        return actor_outputs(self.agent, feat)

    def resolve_action(self, frame: torch.Tensor) -> int | None:
        """The action to explain: given, or the one the agent takes on the clean frame in eval mode
        (actor mode on the one-hot posterior mode, exactly ``Agent.policy(mode="eval")``)."""
        if self.target == "value" or self.action is not None:
            return self.action
        wm = self.agent.wm
        with torch.no_grad():
            post, _ = wm.rssm.obs_step(self.prev_state, self.prev_action, wm.encode(frame[:1].float() - 0.5),
                                       self.is_first, sample=False)
            self.action = int(self.outputs(wm.feat(post)).argmax(-1)[0])
        return self.action

    def __call__(self, frame: torch.Tensor) -> torch.Tensor:
        feat = self.feat(frame)
        if self.target == "value":
            return self.agent.ac.value(feat)
        if self.action is None:
            raise RuntimeError("call resolve_action(frame) first")
        out = self.outputs(feat)
        if not self.agent.spec.discrete:
            return torch.tanh(out[:, self.action]) if self.score != "logit" else out[:, self.action]
        if self.score == "logit":
            return out[:, self.action]
        logp = out.log_softmax(-1)[:, self.action]
        return logp if self.score == "logprob" else logp.exp()


# ---- results ---------------------------------------------------------------------------------------
@dataclass
class SaliencyMap:
    """A pixel attribution map ``[64, 64]`` (channels summed; absolute for gradient-magnitude
    methods, signed for IG, Occlusion and Greydanus: positive = this region raises the score)."""

    map: np.ndarray
    method: str
    target: str
    action: int | None
    score: str
    value: float  # the explained score on the unperturbed frame
    delta: float | None = None  # IG completeness delta (sum(attr) - (f(x) - f(baseline)))
    baseline_value: float | None = None
    params: dict = field(default_factory=dict)
    channels: np.ndarray | None = None  # per-channel map [C, 64, 64] before summing

    def to_dict(self) -> dict:
        flat = int(np.abs(self.map).argmax())
        return {"method": self.method, "target": self.target, "action": self.action, "score": self.score,
                "value": self.value, "delta": self.delta, "baseline_value": self.baseline_value,
                "params": self.params, "peak": [flat // self.map.shape[1], flat % self.map.shape[1]],
                "abs_sum": float(np.abs(self.map).sum())}


# ---- the methods (any forward function) -------------------------------------------------------------
def greydanus_map(forward: Callable[[torch.Tensor], torch.Tensor], frame: torch.Tensor, mask_sigma: float = 5.0,
                  blur_sigma: float = 3.0, stride: int = 2, batch_size: int = 64) -> torch.Tensor:
    """Greydanus et al. (2018) perturbation map, batched.

    ``I' = I * (1 - M_ij) + A(I) * M_ij`` with ``A`` a Gaussian blur (sigma ``blur_sigma``) and
    ``M_ij`` a Gaussian (sigma ``mask_sigma``, max 1) centred on grid point (i, j) of a stride-
    ``stride`` grid. Score ``f(I) - f(I')`` of the scalar ``forward`` (signed: Greydanus plot
    ``1/2 (f(I) - f(I'))^2``), bilinearly interpolated back to full resolution. Returns ``[H, W]``.
    """
    _, C, H, W = frame.shape
    device = frame.device
    blurred = gaussian_blur(frame, blur_sigma)
    ys = torch.arange(0, H, stride, device=device, dtype=torch.float32)
    xs = torch.arange(0, W, stride, device=device, dtype=torch.float32)
    gy = torch.exp(-0.5 * ((torch.arange(H, device=device)[None] - ys[:, None]) / mask_sigma) ** 2)  # [Ny, H]
    gx = torch.exp(-0.5 * ((torch.arange(W, device=device)[None] - xs[:, None]) / mask_sigma) ** 2)  # [Nx, W]
    centres = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    with torch.no_grad():
        base = forward(frame).reshape(-1)[0]
        scores = []
        for start in range(0, len(centres), batch_size):
            idx = centres[start:start + batch_size]
            iy = torch.tensor([c[0] for c in idx], device=device)
            ix = torch.tensor([c[1] for c in idx], device=device)
            masks = (gy[iy][:, :, None] * gx[ix][:, None, :])[:, None]  # [n, 1, H, W], max 1
            perturbed = frame * (1 - masks) + blurred * masks
            scores.append(forward(perturbed).reshape(-1))
        grid = (base - torch.cat(scores)).reshape(len(ys), len(xs))
    return _interp_matrix(H, len(ys), stride, device) @ grid @ _interp_matrix(W, len(xs), stride, device).T


def _interp_matrix(size: int, n: int, stride: int, device) -> torch.Tensor:
    """Linear interpolation weights ``[size, n]`` from grid points at ``0, stride, ...`` to pixels."""
    m = torch.zeros(size, n, device=device)
    for p in range(size):
        t = min(p / stride, n - 1)
        i0 = int(math.floor(t))
        i1 = min(i0 + 1, n - 1)
        w = t - i0
        m[p, i0] += 1 - w
        m[p, i1] += w
    return m


def attribute_pixels(forward: Callable[[torch.Tensor], torch.Tensor], frame: torch.Tensor, method: str = "saliency",
                     *, baseline: torch.Tensor | str = "blur", blur_sigma: float = 5.0, n_steps: int = 32,
                     internal_batch_size: int | None = None, window: int = 4, stride: int = 2,
                     perturbations_per_eval: int = 64, nt_samples: int = 16, stdevs: float = 0.1,
                     nt_type: str = "smoothgrad", mask_sigma: float = 5.0, greydanus_blur: float = 3.0,
                     greydanus_stride: int = 2, seed: int = 0) -> dict[str, Any]:
    """Attribute a scalar-per-example ``forward`` (``[N, C, H, W] -> [N]``) at ``frame`` ``[1, C, H, W]``.

    Returns ``{"attr": [C, H, W] tensor, "delta", "baseline_value", "params"}``. No guard here:
    :func:`saliency` wraps this in :func:`attribution_guard` for agent forwards.
    """
    from captum.attr import IntegratedGradients, NoiseTunnel, Occlusion, Saliency

    method = _ALIASES.get(method, method)
    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}; use one of {METHODS}")
    frame = frame.detach().float()
    C = frame.shape[1]
    if isinstance(baseline, str):
        if baseline == "blur":
            base = gaussian_blur(frame, blur_sigma)
        elif baseline in ("zero", "black"):
            base = torch.zeros_like(frame)
        elif baseline == "mean":
            base = frame.mean((-2, -1), keepdim=True).expand_as(frame).clone()
        else:
            raise ValueError(f"unknown baseline {baseline!r}; use blur, zero, mean or a tensor")
    else:
        base = baseline.to(frame).reshape(frame.shape)
    out: dict[str, Any] = {"delta": None, "baseline_value": None, "params": {}}
    if method == "saliency":
        attr = Saliency(forward).attribute(frame.clone().requires_grad_(), abs=True)
    elif method == "smoothgrad":
        gen = torch.random.fork_rng(devices=[]) if frame.device.type == "cpu" else contextlib.nullcontext()
        with gen:
            torch.manual_seed(seed)
            attr = NoiseTunnel(Saliency(forward)).attribute(
                frame.clone().requires_grad_(), nt_type=nt_type, nt_samples=nt_samples,
                nt_samples_batch_size=nt_samples,
                stdevs=stdevs, abs=True)
        out["params"] = {"nt_type": nt_type, "nt_samples": nt_samples, "stdevs": stdevs, "seed": seed}
    elif method == "integrated_gradients":
        attr, delta = IntegratedGradients(forward).attribute(
            frame.clone(), baselines=base, n_steps=n_steps, internal_batch_size=internal_batch_size,
            return_convergence_delta=True)
        out["delta"] = float(delta.reshape(-1)[0])
        with torch.no_grad():
            out["baseline_value"] = float(forward(base).reshape(-1)[0])
        out["params"] = {"n_steps": n_steps, "baseline": baseline if isinstance(baseline, str) else "tensor",
                         "blur_sigma": blur_sigma}
    elif method == "occlusion":
        with torch.no_grad():
            attr = Occlusion(forward).attribute(
                frame.clone(), sliding_window_shapes=(C, window, window), strides=(C, stride, stride),
                baselines=base, perturbations_per_eval=perturbations_per_eval)
        out["params"] = {"window": window, "stride": stride,
                         "baseline": baseline if isinstance(baseline, str) else "tensor", "blur_sigma": blur_sigma}
    else:  # greydanus
        grid = greydanus_map(forward, frame, mask_sigma=mask_sigma, blur_sigma=greydanus_blur,
                             stride=greydanus_stride, batch_size=perturbations_per_eval)
        attr = (grid / C)[None, None].expand(1, C, *grid.shape)
        out["params"] = {"mask_sigma": mask_sigma, "blur_sigma": greydanus_blur, "stride": greydanus_stride}
    out["attr"] = attr.detach()[0]
    return out


def saliency(agent, frame: Any, prev_state: Any = None, prev_action: Any = None, target: str = "action",
             method: str = "saliency", action: int | None = None, *, is_first: bool = False,
             score: str | None = None, **options: Any) -> SaliencyMap:
    """Pixel saliency of the chosen action (or the value) w.r.t. the current frame.

    ``frame``: uint8 ``[C, 64, 64]`` or float in [0, 1]. ``prev_state`` / ``prev_action``: the
    recorded state and action *before* this frame (``None`` and ``is_first=True`` at an episode
    start). ``action``: the action to explain (default: the agent's eval-mode choice on this frame).
    ``method``: saliency | integrated_gradients | occlusion | smoothgrad | greydanus.
    ``options`` go to :func:`attribute_pixels` (``n_steps``, ``window``, ``stride``, ``stdevs``, ...).
    """
    method = _ALIASES.get(method, method)
    if method not in METHODS:
        raise ValueError(f"unknown saliency method {method!r}; use one of {METHODS}")
    if score is None:
        score = "logprob" if method == "greydanus" else "logit"
    x = to_unit_frame(frame, agent.device)
    C = agent.spec.obs_shape[0]
    if tuple(x.shape[1:]) != (C, 64, 64):
        raise ValueError(f"frame has shape {tuple(x.shape[1:])}, the agent expects ({C}, 64, 64)")
    with attribution_guard(agent):
        fwd = PixelForward(agent, prev_state, prev_action, is_first, target, score, action)
        chosen = fwd.resolve_action(x)
        with torch.no_grad():
            value = float(fwd(x)[0])
        out = attribute_pixels(fwd, x, method, **options)
    attr = out["attr"].cpu().numpy().astype(np.float32)
    return SaliencyMap(map=attr.sum(0), method=method, target=target, action=chosen, score=score, value=value,
                       delta=out["delta"], baseline_value=out["baseline_value"], params=out["params"],
                       channels=attr)


# ---- inputs from a recorded trace ------------------------------------------------------------------
def trace_inputs(trace, step: int) -> dict[str, Any]:
    """Everything :func:`saliency` needs for ``step`` of a ``Trace`` (``xdreamer.explain.trace``):
    ``frame`` o_t, ``prev_state`` (the posterior of step t-1 with the one-hot the agent acted on;
    ``None`` on an episode's first step), ``prev_action`` (a_{t-1} as fed to the RSSM), ``is_first``
    and ``action`` (a_t, the recorded choice)."""
    step = trace.check_step(step)
    arrays = trace.arrays
    is_first = bool(arrays["is_first"][step]) if "is_first" in arrays else bool(trace.table["is_first"].iloc[step])
    same_episode = step > 0 and arrays["episode"][step - 1] == arrays["episode"][step]
    prev_state = prev_action = None
    if not is_first and same_episode:
        from .trace import acted_latent

        logits = np.asarray(arrays["post_logits"][step - 1], np.float32)
        stoch = acted_latent(arrays, step - 1)
        prev_state = {"deter": np.asarray(arrays["deter"][step - 1], np.float32), "stoch": stoch, "logits": logits}
        prev_action = np.asarray(arrays["action_vec"][step - 1], np.float32)
    elif not is_first:
        raise ValueError(f"step {step} starts no episode but the trace holds no previous step for it")
    action = arrays["action"][step]
    return {"frame": np.asarray(arrays["frame"][step]), "prev_state": prev_state, "prev_action": prev_action,
            "is_first": is_first or prev_state is None,
            "action": int(action) if np.ndim(action) == 0 else None}

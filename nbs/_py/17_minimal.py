# %% [markdown]
# # Minimal-norm L2 attacks
# > FGS and FGV with a line search (Peck 2017, §2.5, Algorithm 2.1), DeepFool and decoupled direction and norm (DDN): per-sample adversarial perturbations, each re-classified in float64 before its norm counts: the references that lower bounds on the robustness are checked against

# %%
#| default_exp minimal

# %%
#| export
from __future__ import annotations
import copy, math, numbers
from typing import NamedTuple
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm
from netmoments.core import as_tensors, check_finite, check_model, eval_mode

# %%
#| hide
import time
from fastcore.test import test_eq, test_close, test_fail
from IPython.display import Markdown
from netmoments.core import Table
from netmoments.models import pretrained, mnist_slice


# %% [markdown]
# A lower bound $\delta(x)$ on $\Delta_{\mathrm{adv}}(x; f) = \min\{\|\eta\| : f(x + \eta) \ne f(x)\}$ can only be
# checked from above: any perturbation $\eta$ that changes the prediction gives $\Delta_{\mathrm{adv}}(x) \le \|\eta\|$,
# and the bound is *violated* when $\delta(x) > \|\eta\|$. The smaller the perturbations an attack finds, the sharper
# that check, so this chapter collects several attacks and `strongest` keeps, per sample, the smallest perturbation
# any of them found. Three rules make the count trustworthy:
#
# - **float64 verification.** An attack runs the network in its own dtype (float32 for speed), but a perturbation
#   counts only after the float64 copy of the network classifies $x + \eta$ (in float64) differently from $x$. A
#   float32 decision that flips by rounding is not an adversarial example.
# - **no box constraint.** The bounds of [Peck et al. (2017)](99_references.ipynb#peck2017) hold for any $\eta \in \mathbb R^d$; clipping to the pixel
#   range would only make the attacks weaker, so we do not clip.
# - **ties refused.** A sample whose two largest float64 logits are equal has no well-defined class; it raises.
#
# Each attack ends with a float64 *ray search*: the perturbation $\eta$ is scaled by $t \in [0, 1]$ and a bisection
# keeps the smallest $t$ found at which $x + t\eta$ is still adversarial (the line search of [Peck (2017)](99_references.ipynb#peck2017thesis), Algorithm 2.1).

# %% [markdown]
# ## The result and the float64 check

# %%
#| export
class MinimalPerturbation(NamedTuple):
    "Per-sample adversarial perturbations, verified in float64."
    perturbation:Tensor  # (N, ...) float64; zeros where the attack failed
    norm:Tensor          # (N,) float64 L2 norm of `perturbation`; inf where the attack failed
    success:Tensor       # (N,) bool: the float64 network classifies x + perturbation differently from x
    label:Tensor         # (N,) int64: the float64 network's class of x


# %%
#| export
def as_float64(
    model:nn.Module,  # any network
)->nn.Module:         # a frozen float64 copy in eval mode (`model` is untouched)
    "A float64 copy of `model` for verification."
    check_model(model, 'model')
    return copy.deepcopy(model).double().eval().requires_grad_(False)

def predict(
    model64:nn.Module,  # a float64 network
    x:Tensor,           # inputs (N, ...)
    check_ties:bool=True,  # raise where the two largest logits of a sample are equal
)->Tensor:              # (N,) int64 classes, computed in float64
    "The float64 class of each sample; raises ValueError where the two largest logits are tied."
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 1:
        raise ValueError(f'x must be a floating tensor (N, ...); got '
                         f'{(x.dtype, tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__}')
    check_finite(x, 'x')
    x = x.double()
    check_model(model64, 'model64', x)
    with torch.no_grad(), eval_mode(model64): logits = model64(x)
    if not torch.isfinite(logits).all():
        raise ValueError("model64's logits are not finite at x: the network overflows there, so x has no class")
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f'model must map (N, ...) to logits (N, C) with C >= 2; got output shape {tuple(logits.shape)}')
    if check_ties:
        top = logits.topk(2, dim=1).values
        tied = top[:, 0] == top[:, 1]
        if tied.any():
            raise ValueError(f'the class of sample {int(tied.nonzero()[0])} is tied: its two largest logits are equal '
                             f'({top[tied][0, 0].item():.6g}); a tied point has no class to change')
    return logits.argmax(1)


# %% [markdown]
# A two-class linear model whose class flips at $x_0 = x_1$: the float64 class is the argmax, and a point on the
# boundary is refused.

# %%
toy = nn.Linear(2, 2, bias=False).double()
with torch.no_grad(): toy.weight.copy_(torch.eye(2))
test_eq(predict(as_float64(toy), torch.tensor([[1., 0.], [0., 2.]])), torch.tensor([0, 1]))
test_fail(lambda: predict(toy, torch.tensor([[1., 1.]])), exc=ValueError, contains='sample 0 is tied')
test_fail(lambda: as_float64(lambda x: x), exc=TypeError, contains='nn.Module')
test_fail(lambda: predict(toy, torch.tensor([[1., float('nan')]])), exc=ValueError, contains='x must be finite')
test_fail(lambda: predict(copy.deepcopy(toy).float(), torch.tensor([[1., 0.]])), exc=TypeError, contains='model64 has float32 parameters')


# %% [markdown]
# ## The ray search
# Given a direction $u$ and scales $t_{hi}$ at which $x + t_{hi} u$ is adversarial, `ray_search` bisects
# $[0, t_{hi}]$, batched over samples, with the network in its own dtype (fast), then confirms the result in float64:
# if $x + t u$ is not adversarial there it tries $t(1 + 10^{-6})$, $t(1 + 10^{-4})$, $t(1 + 10^{-2})$ and the
# starting $t_{hi}$, and gives up (inf) if none is. Decision regions need not be convex along a ray, so the result is a
# boundary point, not necessarily the first one; it is always verified adversarial in float64.

# %%
#| export
def _is_adv(model, x, label):
    "Does the class of x (in the dtype of x) differ from `label`? Never where a logit is not finite (no class there)."
    with torch.no_grad(): logits = model(x)
    return (logits.argmax(1) != label) & torch.isfinite(logits).all(1)

def _bcast(t, x):
    "Reshape per-sample scalars (N,) to broadcast against x (N, ...)."
    return t.reshape(-1, *([1] * (x.ndim - 1)))

def ray_search(
    model:nn.Module,    # the network in its working dtype
    model64:nn.Module,  # its float64 copy (`as_float64`)
    x:Tensor,           # inputs (N, ...)
    u:Tensor,           # directions (N, ...)
    hi:Tensor,          # (N,) scales at which x + hi u is adversarial (inf: none known, skipped)
    label:Tensor,       # (N,) float64 classes of x
    steps:int=25,       # bisection steps
)->Tensor:              # (N,) float64 scales t <= hi (or just above) with x + t u adversarial in float64; inf if none
    "Bisection along rays x + t u for the smallest adversarial scale; the result is verified in float64."
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 1:
        raise ValueError(f'x must be a floating tensor (N, ...); got '
                         f'{(x.dtype, tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__}')
    if not isinstance(u, Tensor) or not isinstance(hi, Tensor): raise TypeError('u and hi must be tensors')
    x, u, hi = as_tensors(x, u, hi, names=('x', 'u', 'hi'))
    N = len(x)
    if u.shape != x.shape: raise ValueError(f'u must have the shape of x {tuple(x.shape)}; got {tuple(u.shape)}')
    if hi.shape != (N,): raise ValueError(f'hi must be ({N},), one scale per sample; got {tuple(hi.shape)}')
    check_finite(x, 'x'); check_finite(u, 'u')
    if torch.isnan(hi).any(): raise ValueError('hi must not be NaN (an infinite hi means no adversarial scale is known)')
    if ((hi < 0) & torch.isfinite(hi)).any(): raise ValueError(f'hi must be >= 0; smallest entry is {hi.min().item():.3g}')
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f'steps must be an integer >= 0; got {steps!r}')
    check_model(model, 'model', x); check_model(model64, 'model64', x.double())
    with torch.no_grad(), eval_mode(model64): d = model64(x[:1].double()).shape[-1]
    _check_labels(label, N, d)
    with eval_mode(model), eval_mode(model64): return _ray_search(model, model64, x, u, hi, label, steps)

def _check_labels(label, N, d):
    "label must be N integer classes in [0, d)."
    if not isinstance(label, Tensor) or label.is_floating_point() or label.is_complex() or label.dtype == torch.bool \
            or label.shape != (N,):
        raise ValueError(f'label must be ({N},) integer classes; got '
                         f'{(label.dtype, tuple(label.shape)) if isinstance(label, Tensor) else type(label).__name__}')
    if N and (label.min() < 0 or label.max() >= d):
        raise ValueError(f'label must be classes in [0, {d}); got values {label.min().item()}..{label.max().item()}')

def _ray_search(model, model64, x, u, hi, label, steps):
    "ray_search without argument checks; hi in any floating dtype, an infinite one meaning none known."
    dtype = x.dtype
    hi = hi.double()
    ok = torch.isfinite(hi)
    hi = torch.where(ok, hi, 0.)
    lo = torch.zeros_like(hi)
    top = hi.clone()
    for _ in range(steps):
        mid = (lo + hi) / 2
        adv = _is_adv(model, x + _bcast(mid.to(dtype), x) * u, label)
        hi, lo = torch.where(adv, mid, hi), torch.where(adv, lo, mid)
    t = torch.full_like(hi, torch.inf)
    x64, u64 = x.double(), u.double()
    for cand in (hi, hi * (1 + 1e-6), hi * (1 + 1e-4), hi * (1 + 1e-2), top):
        todo = ok & torch.isinf(t)
        if not todo.any(): break
        adv = _is_adv(model64, x64 + _bcast(torch.where(todo, cand, 0.), x64) * u64, label) & todo
        t = torch.where(adv, cand, t)
    return t


# %% [markdown]
# On the toy classifier, from $x = (1, 0)$ along $u = (-1, 1)$ the class flips at $t = 1/2$:

# %%
x0 = torch.tensor([[1., 0.], [3., 0.]], dtype=torch.float64)
t = ray_search(toy, as_float64(toy), x0, torch.tensor([[-1., 1.], [-1., 1.]], dtype=torch.float64),
               torch.tensor([4., 1.], dtype=torch.float64), torch.tensor([0, 0]), steps=40)
test_close(t[0], 0.5, eps=1e-10)
test_eq(t[1].item(), math.inf)   # x + 1 u = (2, 1) is not adversarial: refused, not trusted
test_fail(lambda: ray_search(toy, as_float64(toy), x0, x0, torch.tensor([4., 1.]), torch.tensor([0, 0])), contains='hi float32')
test_fail(lambda: ray_search(toy, as_float64(toy), x0, x0, x0[:, 0], torch.tensor([0, 2])), contains='label must be classes')


# %% [markdown]
# ## Fast gradient sign and fast gradient value with a line search
# FGS ([Goodfellow et al. (2015)](99_references.ipynb#goodfellow2015)) perturbs along $\mathrm{sign}(\nabla_x L)$ and FGV along
# $\nabla_x L$ ([Peck (2017)](99_references.ipynb#peck2017thesis), §2.5.2 and §2.5.4, eqs. 2.8 and 2.10), $L$ the cross-entropy at the predicted class.
# Peck (2017) finds the smallest $\varepsilon$ by bisection on
# $[0, M]$ (Algorithm 2.1). We first grow $\varepsilon$ geometrically from `eps_min` (doubling, at most `eps_max`)
# until the class flips, so the bisection brackets the *first* flip along the ray rather than any flip in $[0, M]$,
# then bisect in float64.

# %%
#| export
def _loss_grad(model, x, label):
    "Gradient of the summed cross-entropy at `label` w.r.t. x, in the model's dtype."
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), label, reduction='sum')
        return torch.autograd.grad(loss, x)[0]

def _grow(model, x, u, label, eps_min, eps_max):
    "Smallest eps_min * 2^k <= eps_max (per sample) at which x + eps u is adversarial; inf if none."
    hi = torch.full((len(x),), torch.inf, dtype=torch.float64, device=x.device)
    eps = eps_min
    while eps <= eps_max * (1 + 1e-12):
        todo = torch.isinf(hi)
        if not todo.any(): break
        adv = _is_adv(model, x + eps * u, label) & todo
        hi = torch.where(adv, eps, hi)
        eps *= 2
    return hi

def _fgs_fgv(model, model64, x, label, sign, eps_min, eps_max, steps):
    "FGS (sign) or FGV directions u and their verified smallest adversarial scales."
    g = _loss_grad(model, x, label)
    if sign: u = g.sign()
    else:                                                   # g / |g|, scaled first so no square overflows or underflows;
        g = g / _bcast(g.flatten(1).abs().amax(1).clamp_min(torch.finfo(g.dtype).tiny), g)
        n = g.flatten(1).norm(dim=1)                        # a zero gradient (every ReLU dead) gives no direction
        u = g / _bcast(torch.where(n > 0, n, torch.ones_like(n)), g)
    return u, _ray_search(model, model64, x, u, _grow(model, x, u, label, eps_min, eps_max), label, steps)


# %% [markdown]
# ## DeepFool
# DeepFool ([Moosavi-Dezfooli et al. (2016)](99_references.ipynb#moosavidezfooli2016)) linearizes the logit differences $f_k - f_c$ at the current point and steps
# to the nearest linearized boundary, $r = \frac{|f_k - f_c| + \xi}{\|w_k\|^2} w_k$, $w_k = \nabla(f_k - f_c)$, over
# the closest $k$, until the class changes; the total is scaled by $1 + $ `overshoot`. On a linear classifier it
# lands on the boundary in one step: it is exact there. Batched; each step computes the $C$ logit gradients with
# one backward pass per class, for the samples not yet adversarial.

# %%
#| export
def _deepfool(model, model64, x, label, max_iter, overshoot):
    "DeepFool's accumulated perturbation, scaled by 1 + overshoot, batched over the samples not yet adversarial."
    r = torch.zeros_like(x)
    active = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for _ in range(max_iter):
        idx = active.nonzero().squeeze(1)
        if len(idx) == 0: break
        xa = (x[idx] + (1 + overshoot) * r[idx]).detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xa)
            grads = torch.stack([torch.autograd.grad(logits[:, k].sum(), xa, retain_graph=True)[0]
                                 for k in range(logits.shape[1])], 1)                 # (n, C, ...)
        lab = label[idx]
        f = (logits - logits.gather(1, lab[:, None])).detach()                         # f_k - f_c
        w = (grads - grads[torch.arange(len(idx)), lab][:, None]).flatten(2)         # (n, C, D)
        wn = w.norm(dim=2)
        ratio = (f.abs() + 1e-6) / wn.clamp_min(1e-30)
        ratio[torch.arange(len(idx)), lab] = torch.inf
        ratio = torch.where(wn > 0, ratio, torch.inf)
        k = ratio.argmin(1)
        wk = w[torch.arange(len(idx)), k]
        step = (ratio[torch.arange(len(idx)), k] / wn[torch.arange(len(idx)), k].clamp_min(1e-30))[:, None] * wk
        step = torch.where(torch.isfinite(step), step, 0.)
        r[idx] = r[idx] + step.reshape(xa.shape)
        with torch.no_grad(): active[idx] = model(x[idx] + (1 + overshoot) * r[idx]).argmax(1) == lab
    return (1 + overshoot) * r


# %% [markdown]
# ## Decoupled direction and norm (DDN)
# DDN ([Rony et al. (2019)](99_references.ipynb#rony2019)) is a strong minimal-norm attack: it takes normalized gradient-ascent steps on the
# cross-entropy, and keeps the perturbation on a sphere whose radius $\varepsilon$ shrinks by a factor $1 - \gamma$
# while the point is adversarial and grows by $1 + \gamma$ while it is not, remembering the smallest adversarial
# perturbation seen. Our variant is scale-free (the step is a fraction `alpha` of the current radius, cosine-annealed
# from `alpha` to `alpha / 100`) and starts from the radius `init_norm`, or from a perturbation found by another
# attack (`init`), which it then tries to shrink.

# %%
#| export
def _ddn(model, x, label, steps, gamma, alpha, init_norm, init):
    "The smallest adversarial perturbation DDN meets in `steps` iterations (zeros where it meets none)."
    n = len(x)
    if init is None:
        g = _loss_grad(model, x, label)
        delta = _bcast(init_norm / g.flatten(1).norm(dim=1).clamp_min(1e-30), g) * g
    else: delta = init.to(x.dtype).clone()
    eps = delta.flatten(1).norm(dim=1)
    best = torch.full((n,), torch.inf, dtype=x.dtype, device=x.device)
    best_delta = torch.zeros_like(x)
    for i in range(steps):
        a = alpha * (0.01 + 0.99 * (1 + math.cos(math.pi * i / steps)) / 2)
        xa = (x + delta).detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xa)
            g = torch.autograd.grad(F.cross_entropy(logits, label, reduction='sum'), xa)[0]
        adv = logits.detach().argmax(1) != label
        norm = delta.flatten(1).norm(dim=1)
        better = adv & (norm < best)
        best = torch.where(better, norm, best)
        best_delta = torch.where(_bcast(better, x), delta, best_delta)
        g = g / _bcast(g.flatten(1).norm(dim=1).clamp_min(1e-30), g)
        delta = delta + _bcast(a * eps.clamp_min(1e-12), x) * g
        eps = torch.where(adv, (1 - gamma) * eps, (1 + gamma) * eps)
        eps = torch.minimum(eps, best)
        delta = delta * _bcast(eps / delta.flatten(1).norm(dim=1).clamp_min(1e-30), x)
    return best_delta


# %% [markdown]
# ## `minimal_l2`
# One entry point: `method` picks the attack, the result is verified and refined in float64 and returned as a
# `MinimalPerturbation`. Inputs are processed in chunks of `batch_size` under a progress bar. No randomness is
# involved: the result is deterministic for a given network and input.

# %%
#| export
METHODS = ('fgs', 'fgv', 'deepfool', 'ddn')

def _check_count(v, name):
    "Raise ValueError unless v is a positive integer."
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f'{name} must be a positive integer; got {v!r}')

def _check_real(v, name, low, high=math.inf, low_open=False, high_open=False):
    "Raise ValueError unless v is a finite real number in the interval from low to high."
    ok = (not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(v)
          and (v > low if low_open else v >= low) and (v < high if high_open else v <= high))
    if not ok:
        where = (f'{"(" if low_open else "["}{low:g}, {high:g}{")" if high_open else "]"}' if math.isfinite(high)
                 else f'{">" if low_open else ">="} {low:g}')
        raise ValueError(f'{name} must be a finite number {"in " if math.isfinite(high) else ""}{where}; got {v!r}')

def _eval_copy(model):
    "`model` itself if no module of it is in training mode, else an eval-mode copy (the caller's model is untouched)."
    return copy.deepcopy(model).eval() if any(m.training for m in model.modules()) else model

def minimal_l2(
    model:nn.Module,       # classifier mapping (N, ...) to logits (N, C); attacked in its own dtype and device
    x:Tensor,              # inputs (N, ...) on the model's device
    method:str='ddn',      # 'fgs', 'fgv' (line search), 'deepfool' or 'ddn'
    eps_min:float=1e-3,    # fgs/fgv: first scale tried (then doubled)
    eps_max:float=1e3,     # fgs/fgv: largest scale tried (M in Peck 2017, Algorithm 2.1), finite (below eps_min no scale is tried)
    steps:int=100,         # ddn: iterations; deepfool: at most this many
    overshoot:float=0.02,  # deepfool's overshoot
    gamma:float=0.05,      # ddn's radius factor
    alpha:float=0.5,       # ddn's step, as a fraction of the radius
    init_norm:float=1.0,   # ddn's initial radius
    init:Tensor|None=None, # ddn: start from these perturbations (N, ...) instead
    ray_steps:int=25,      # bisection steps along the final perturbation
    batch_size:int=1000,   # samples attacked at once
    progress:bool=False,   # tqdm bar over the batches
)->MinimalPerturbation:
    "Per-sample minimal-norm L2 adversarial perturbations by `method`, each verified in float64."
    if method not in METHODS: raise ValueError(f'method must be one of {", ".join(METHODS)}; got {method!r}')
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2:
        raise ValueError(f'x must be a floating tensor (N, ...) with a batch dimension; got '
                         f'{getattr(x, "dtype", type(x).__name__)} {tuple(getattr(x, "shape", ()))}')
    check_finite(x, 'x')
    for v, name in ((steps, 'steps'), (ray_steps, 'ray_steps'), (batch_size, 'batch_size')): _check_count(v, name)
    _check_real(eps_min, 'eps_min', 0, low_open=True)
    _check_real(eps_max, 'eps_max', 0, low_open=True)     # below eps_min no scale is tried: every sample fails
    _check_real(overshoot, 'overshoot', 0)
    _check_real(gamma, 'gamma', 0, 1, low_open=True, high_open=True)
    _check_real(alpha, 'alpha', 0, low_open=True)
    _check_real(init_norm, 'init_norm', 0, low_open=True)
    if init is not None:
        if not isinstance(init, Tensor) or init.shape != x.shape:
            raise ValueError(f'init must have the shape of x {tuple(x.shape)}; got {tuple(getattr(init, "shape", ()))}')
        check_finite(init, 'init')
    check_model(model, 'model', x)
    if len(x) == 0:                       # no samples: nothing to attack
        z = torch.zeros(0, dtype=torch.float64, device=x.device)
        return MinimalPerturbation(torch.zeros(x.shape, dtype=torch.float64, device=x.device), z, z.bool(), z.long())
    model64 = as_float64(model)
    model = _eval_copy(model)    # attack the eval-mode network (batch norm on running statistics), never changing it
    dtype = next((p.dtype for p in model.parameters()), x.dtype)
    parts = []
    for s in tqdm(range(0, len(x), batch_size), disable=not progress, desc=method):
        xb = x[s:s + batch_size].to(dtype)
        label = predict(model64, xb)
        if method in ('fgs', 'fgv'):
            u, hi = _fgs_fgv(model, model64, xb, label, method == 'fgs', eps_min, eps_max, ray_steps)
        else:
            if method == 'deepfool': u = _deepfool(model, model64, xb, label, steps, overshoot)
            else: u = _ddn(model, xb, label, steps, gamma, alpha, init_norm,
                           None if init is None else init[s:s + batch_size])
            hi = _ray_search(model, model64, xb, u, torch.ones(len(xb), dtype=torch.float64, device=xb.device), label, ray_steps)
        parts.append(_result(model64, xb, u, hi, label))
    return MinimalPerturbation(*(torch.cat(f) for f in zip(*parts)))

def _result(model64, x, u, t, label):
    "Verified perturbations t u in float64 (zeros and inf norm where t is inf or the check fails)."
    ok = torch.isfinite(t)
    eta = _bcast(torch.where(ok, t, 0.), x) * u.double()
    ok = ok & _is_adv(model64, x.double() + eta, label)
    eta = torch.where(_bcast(ok, eta), eta, 0.)
    norm = torch.where(ok, eta.flatten(1).norm(dim=1), torch.inf)
    return eta, norm, ok, label


# %% [markdown]
# ## Exactness on linear classifiers
# For a linear classifier $f(x) = \arg\max_i w_i\cdot x + b_i$ the minimal perturbation is known in closed form
# ([Peck (2017)](99_references.ipynb#peck2017thesis), Theorem 3.6, tight): $\min_{c'\ne c} |(w_{c'} - w_c)\cdot x + b_{c'} - b_c| / \|w_{c'} - w_c\|$.
# DeepFool reaches it to the ray search's resolution. DDN reaches it on most samples (the median ratio to the exact
# minimum is asserted below 1.01), but ascending the cross-entropy can steer it to the boundary of a class that is not
# the closest one: that is why `strongest` below also starts DDN from DeepFool's result. FGV (one gradient direction,
# not the closest boundary's normal) and FGS (a sign vector) come only from above, as they must. The table gives the
# ratio of each attack's norm to the exact minimum over the samples:

# %%
gen = torch.Generator().manual_seed(0)
lin = nn.Linear(5, 4).double().requires_grad_(False)
with torch.no_grad(): lin.weight.copy_(torch.randn(4, 5, generator=gen)); lin.bias.copy_(torch.randn(4, generator=gen))
xs = torch.randn(64, 5, generator=gen, dtype=torch.float64)
W, b = lin.weight, lin.bias
c = (xs @ W.T + b).argmax(1)
dw = W[None] - W[c][:, None]; db = b[None] - b[c][:, None]
exact = torch.where(dw.norm(dim=2) > 0, ((dw @ xs[:, :, None]).squeeze(2) + db).abs() / dw.norm(dim=2), torch.inf).min(1).values
found = {m: minimal_l2(lin, xs, m) for m in METHODS}
for m, r in found.items():
    assert r.success.all(), m
    assert (r.norm >= exact * (1 - 1e-9)).all(), m     # nothing beats the exact minimum
test_close(found['deepfool'].norm, exact, eps=1e-6 * exact.max())
assert (found['ddn'].norm / exact).median() < 1.01
ratios = {m: r.norm / exact for m, r in found.items()}
Table([[m, q.mean(), q.median(), q.max()] for m, q in ratios.items()], ['attack', 'mean', 'median', 'max'])

# %%
Markdown(f"DDN's worst sample lies {100 * (ratios['ddn'].max().item() - 1):.3g}% above the exact minimum.")


# %% [markdown]
# ## The strongest attack
# `strongest` runs several attacks (DeepFool and FGV first, then DDN started from their better result, and DDN from
# scratch) and keeps the smallest verified perturbation per sample: the reference that
# [Lower bounds on the robustness to adversarial perturbations](16_bounds.ipynb) and
# [Bounds against attacks on trained networks](18_bounds_experiments.ipynb) count violations against.

# %%
#| export
def strongest(
    model:nn.Module,           # classifier (N, ...) -> (N, C)
    x:Tensor,                  # inputs (N, ...)
    methods:tuple=('deepfool', 'fgv', 'ddn'),  # attacks run from scratch
    refine:bool=True,          # also run DDN started from the best perturbation found so far
    progress:bool=False,       # tqdm bars over each attack's batches
    **kwargs,                  # passed to `minimal_l2`
)->MinimalPerturbation:        # per sample, the smallest verified perturbation over all attacks
    "The per-sample minimum over several `minimal_l2` attacks (the strongest attack implemented here)."
    if isinstance(methods, str) or not len(methods) or any(m not in METHODS for m in methods):
        raise ValueError(f'methods must be a non-empty tuple of {", ".join(METHODS)}; got {methods!r}')
    results = [minimal_l2(model, x, m, progress=progress, **kwargs) for m in methods]
    if refine:
        best = min_over(results)
        start = torch.where(_bcast(best.success, best.perturbation), best.perturbation, 0.)
        if best.success.any():
            results.append(minimal_l2(model, x, 'ddn', init=start.to(x.dtype), progress=progress,
                                      **{k: v for k, v in kwargs.items() if k != 'init'}))
    return min_over(results)

def min_over(
    results:list,              # MinimalPerturbation results on the same inputs
)->MinimalPerturbation:        # per sample, the one of smallest norm
    "Per-sample minimum-norm MinimalPerturbation over `results`."
    if isinstance(results, MinimalPerturbation) or not isinstance(results, (list, tuple)) or not results \
            or not all(isinstance(r, MinimalPerturbation) for r in results):
        raise ValueError(f'results must be a non-empty list of MinimalPerturbation; got {type(results).__name__}'
                         f'{" of length 0" if isinstance(results, (list, tuple)) and not results else ""}')
    if len({(r.perturbation.shape, r.norm.shape) for r in results}) > 1:
        raise ValueError('results must come from the same inputs: their perturbations differ in shape')
    if any(torch.isnan(r.norm).any() for r in results): raise ValueError('results must not hold NaN norms')
    norms = torch.stack([r.norm for r in results])
    i = norms.argmin(0)
    pick = lambda f: torch.stack([getattr(r, f) for r in results])[i, torch.arange(len(i))]
    return MinimalPerturbation(pick('perturbation'), pick('norm'), pick('success'), results[0].label)


# %% [markdown]
# ## On LeNet and MNIST
# On the bundled LeNet ([LeCun et al. (1998)](99_references.ipynb#lecun1998), inputs in $[0, 1]$), 25 MNIST test images: every attack
# succeeds on every image (no box), and DDN's median norm is below FGS's (both asserted). The table gives the median
# norm of each attack and of the strongest; its caption, the time all of them took.

# %%
net = pretrained('lenet-mnist')
images, labels = mnist_slice()
images = images[:25]
t0 = time.perf_counter()
res = {m: minimal_l2(net, images, m) for m in METHODS}
best = strongest(net, images)
elapsed = time.perf_counter() - t0
for m, r in res.items(): assert r.success.all(), m
assert best.success.all() and (best.norm <= res['ddn'].norm).all() and (best.norm <= res['deepfool'].norm).all()
assert res['ddn'].norm.median() < res['fgs'].norm.median()
Table([[m, r.norm.median()] for m, r in res.items()] + [['strongest', best.norm.median()]], ['attack', 'median norm'],
      fmt='.3f', caption=f'LeNet, 25 MNIST test images ({elapsed:.1f} s)')

# %%
Markdown(f"FGS's median norm is {(res['fgs'].norm.median() / best.norm.median()).item():.3g} times that of the "
         "strongest attack.")

# %% [markdown]
# The verified perturbation is what counts: it flips the float64 network, and it has the reported norm.

# %%
net64 = as_float64(net)
with torch.no_grad(): flipped = net64(images.double() + best.perturbation).argmax(1)
assert (flipped != best.label).all()
test_close(best.perturbation.flatten(1).norm(dim=1), best.norm, eps=1e-12)
test_eq(best.perturbation.dtype, torch.float64)

# %% [markdown]
# Bad input is refused with a message naming it:

# %%
test_fail(lambda: minimal_l2(net, images, 'cw'), exc=ValueError, contains='method must be one of')
test_fail(lambda: minimal_l2(net, images[0, 0, 0]), exc=ValueError, contains='batch dimension')
test_fail(lambda: minimal_l2(toy, torch.tensor([[1., 1.]], dtype=torch.float64)), exc=ValueError, contains='tied')
test_fail(lambda: minimal_l2(net, images, init=images[:3]), exc=ValueError, contains='init must have the shape')
test_eq(minimal_l2(net, images[:0]).perturbation.shape, (0, 1, 28, 28))        # no samples, no perturbations
test_fail(lambda: minimal_l2(net, images.double()), exc=TypeError, contains='convert one')   # one floating dtype
test_fail(lambda: minimal_l2(toy, torch.tensor([[1., 0.]]), 'fgs', eps_min=0.), exc=ValueError, contains='eps_min')
test_fail(lambda: minimal_l2(toy, torch.tensor([[1., 0.]]), 'fgv', eps_max=torch.inf), exc=ValueError, contains='eps_max')
dead = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))    # every ReLU dead: a zero gradient, no direction
with torch.no_grad(): dead[0].bias.fill_(-10.); dead[2].bias.copy_(torch.tensor([1., 0.]))
for m in ('fgs', 'fgv'):
    r = minimal_l2(dead, torch.tensor([[0.1, 0.2]]), m)
    test_eq((r.success.item(), r.norm.item(), r.perturbation.abs().sum().item()), (False, math.inf, 0.))
test_fail(lambda: minimal_l2(toy, torch.tensor([[1., 0.]]), steps=-3), exc=ValueError, contains='steps must be a positive integer')
test_fail(lambda: minimal_l2(toy, torch.tensor([[1., 0.]]), gamma=1.), exc=ValueError, contains='gamma')
test_fail(lambda: strongest(toy, torch.tensor([[1., 0.]]), methods=()), exc=ValueError, contains='methods must be')
test_fail(lambda: min_over([]), exc=ValueError, contains='results must be a non-empty list')

# %% [markdown]
# ## Batch norm in training mode
# In training mode a batch norm normalizes by the statistics of the batch it is given and updates its running
# statistics, so the class of a sample would depend on the other samples and every call would change the network.
# The attacks therefore run on the network in eval mode (running statistics), on a copy when the caller's network is
# in training mode: its mode and buffers are left exactly as they were, and the result is that of the eval-mode network.

# %%
bn_net = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double().requires_grad_(False)
with torch.no_grad(): bn_net[1].running_mean.uniform_(-0.5, 0.5, generator=gen); bn_net[1].running_var.uniform_(0.5, 2, generator=gen)
bn_before = {k: v.clone() for k, v in bn_net.state_dict().items()}
xb = torch.randn(8, 5, generator=gen, dtype=torch.float64)
in_train = strongest(bn_net.train(), xb)
assert bn_net.training and bn_net[1].training
for k, v in bn_net.state_dict().items(): test_eq(v, bn_before[k])
in_eval = strongest(copy.deepcopy(bn_net).eval(), xb)
test_eq(in_train.norm, in_eval.norm); test_eq(in_train.perturbation, in_eval.perturbation)

# %% [markdown]
# ## Export -

# %%
#| hide
#| eval: false
import nbdev; nbdev.nbdev_export()

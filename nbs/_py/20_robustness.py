# %% [markdown]
# # Robustness to Gaussian noise
# > The robustness metric of Alfadly et al. 2019 (eq. 6) with true, fresh, seeded Gaussian noise and its area under the curve; the misclassification model of Lyu et al. 2015 under Gaussian noise (eqs. 26-33) beside the measured rate

# %%
#| default_exp robustness

# %%
#| export
from __future__ import annotations
import math
from typing import NamedTuple
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm
from netmoments.core import as_tensors, check_broadcast, check_finite, check_var, eval_mode
from netmoments.gaussian import normal_cdf

# %%
#| hide
import matplotlib.pyplot as plt
from fastcore.test import test_eq, test_close, test_fail
from netmoments.core import Table
from netmoments.models import pretrained, mnist_slice


# %% [markdown]
# ## The robustness metric: Alfadly et al. (2019), eq. 6
# For a classifier $\psi(x) = \arg\max_i \Psi_i(x)$, [Alfadly et al. (2019)](99_references.ipynb#alfadly2019) define the robustness of a point against noise
# $n \sim \mathcal D$ as $\mathfrak R_{\mathcal D}(x) = \mathbb P\{\psi(x + n) = \psi(x)\}$, relaxes it to 0/1 over
# $m$ samples (1 if none of $m$ noisy copies changes the prediction), averages over the test set, and then over 30
# values of $\sigma$ evenly spaced in $[0, 0.5]$ (inputs in $[0, 1]$). Choices made here, each a parameter:
#
# - **Gaussian noise, fresh per sample.** Every test point and every one of its $m$ copies gets its own
#   $\mathcal N(0, \sigma^2 I)$ draw from a `torch.Generator` seeded by `seed`: the same seed, batch size and device
#   give the same result. The paper's cheaper variant, one sample of norm exactly $\sigma\sqrt n$ (what the official
#   code does, "ring" noise, not Gaussian), is `fixed_norm=True`.
# - **No clipping** by default: $x + n$ may leave $[0, 1]$, as in the Gaussian model the regularizer trains for
#   ([Gaussian-robust training losses](19_regularizers.ipynb)). `clip=True` clamps the noisy input to $[0, 1]$.
# - `mode="clean"` (the paper's): agree with the clean prediction; `mode="label"`: agree with the true label
#   (accuracy under noise), which cannot be gamed by a constant classifier.
# - The summary `mean` is the paper's average over the $\sigma$ grid; `auc` the trapezoidal area under the curve
#   divided by the width of the grid (equal to `mean` up to the end-point weights).

# %%
#| exporti
def _noise(shape, sigma, fixed_norm, generator, dtype, device):
    "sigma * N(0, I) of `shape` (K, N, ...), or samples of norm exactly sigma * sqrt(n) in a uniform direction."
    z = torch.randn(shape, generator=generator, dtype=dtype, device=device)
    if fixed_norm:
        flat = z.flatten(2)
        z = (flat * (flat.shape[-1] ** 0.5 / flat.norm(dim=-1, keepdim=True))).reshape(shape)
    return sigma * z

def _check_count(v, name, least=1):
    "Raise `ValueError` unless v is an int >= least."
    if isinstance(v, bool) or not isinstance(v, int) or v < least: raise ValueError(f'{name} must be an int >= {least}; got {v!r}')

def _check_params(model):
    "Raise `ValueError` naming the first parameter or buffer of `model` that holds NaN or infinite entries (one sync)."
    named = [(n, t) for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_floating_point()]
    if not named: return
    ok = torch.stack([torch.isfinite(t).all().to(named[0][1].device) for _, t in named]).cpu()
    if not ok.all(): raise ValueError(f'model parameter {named[int((~ok).nonzero()[0, 0])][0]!r} must be finite; it holds NaN or infinite values')

def _check_labels(model, x, y):
    "Raise `ValueError` unless y holds integer classes in [0, d), d the model's output width (one forward of x[:1])."
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool: raise ValueError(f'y must be integer class labels; got {y.dtype}')
    with torch.no_grad(), eval_mode(model): d = model(x[:1]).shape[-1]
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= d: raise ValueError(f'y must be classes in [0, {d}); got values {lo}..{hi}')

def _check_inputs(model, x, sigmas, samples, y=None, name='sigmas', empty=False):
    "Check the arguments; the sigmas (30 evenly spaced in [0, 0.5] when None) in x's dtype. `name`: the sigmas' argument."
    if not isinstance(model, nn.Module): raise TypeError(f'model must be an nn.Module; got {type(model).__name__}')
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2 or (len(x) == 0 and not empty):
        raise ValueError(f'x must be a {"" if empty else "non-empty "}floating batch (N, ...) of inputs; got '
                         f'{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}')
    if y is not None and (not isinstance(y, Tensor) or y.shape != x.shape[:1]):
        raise ValueError(f'y must be labels of shape ({len(x)},) matching x; got '
                         f'{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}')
    if sigmas is None: sigmas = torch.linspace(0, 0.5, 30)
    elif isinstance(sigmas, Tensor): sigmas = as_tensors(x, sigmas, names=('x', name))[1].flatten()   # x's dtype or none
    else: sigmas = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if sigmas.numel() == 0: raise ValueError(f'{name} must hold at least one noise level; got none')
    check_var(sigmas.double(), name)
    _check_count(samples, 'samples')
    check_finite(x, 'x')
    _check_params(model)
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if dtypes and x.dtype not in dtypes:
        found = ', '.join(sorted(str(d).removeprefix('torch.') for d in dtypes))
        raise TypeError(f'x is {str(x.dtype).removeprefix("torch.")} but model has {found} parameters; convert one '
                        f'(e.g. model.double() or x.float())')
    if y is not None and len(y): _check_labels(model, x, y)
    sigmas = sigmas.to(x.dtype)
    check_finite(sigmas, name)                           # in x's dtype: a level past its range is refused
    return sigmas


# %%
#| export
class NoiseRobustness(NamedTuple):
    "Robustness per noise level and its summaries."
    sigmas:Tensor      # (S,) noise standard deviations
    robustness:Tensor  # (S,) fraction of points whose prediction survives all `samples` noisy copies
    mean:Tensor        # the score of Alfadly et al. 2019: robustness averaged over the sigmas
    auc:Tensor         # trapezoidal area under robustness(sigma), sigmas in increasing order, divided by their range (mean if 0)


# %%
#| export
def noise_robustness(
    model:nn.Module,         # classifier: inputs (N, ...) -> scores (N, d)
    x:Tensor,                # test inputs (N, ...) in [0, 1]
    sigmas:Tensor|list|None=None,  # noise std levels >= 0; None: 30 evenly spaced in [0, 0.5] (the paper's)
    samples:int=1,           # m: noisy copies per point and level; a point counts only if all m agree
    mode:str='clean',        # 'clean': agree with the clean prediction (eq 6); 'label': agree with y
    seed:int=0,              # seeds a local generator on x's device
    fixed_norm:bool=False,   # True: the paper's single sample of norm sigma * sqrt(n) per copy (not Gaussian)
    y:Tensor|None=None,      # labels (N,), required for mode='label'
    clip:bool=False,         # clamp x + n to [0, 1]
    batch_size:int=1000,     # points per forward pass (times `samples`)
    progress:bool=False,     # tqdm bar over the batches
)->NoiseRobustness:
    "Robustness (Alfadly et al. 2019, eq. 6) under fresh Gaussian noise for each sigma, with its mean and area under the curve."
    if mode not in ('clean', 'label'): raise ValueError(f"mode must be 'clean' or 'label'; got {mode!r}")
    if mode == 'label' and y is None: raise ValueError("mode='label' needs the labels y")
    _check_count(batch_size, 'batch_size')
    sigmas = _check_inputs(model, x, sigmas, samples, y)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    counts = torch.zeros(len(sigmas), dtype=torch.int64, device=x.device)
    with torch.no_grad(), eval_mode(model):
        for start in tqdm(range(0, len(x), batch_size), disable=not progress, unit='batch'):
            xb = x[start:start + batch_size]
            ref = model(xb).argmax(-1) if mode == 'clean' else y[start:start + batch_size].to(x.device)
            for k, sigma in enumerate(sigmas.tolist()):
                noisy = xb + _noise((samples, *xb.shape), sigma, fixed_norm, gen, x.dtype, x.device)
                if clip: noisy = noisy.clamp(0, 1)
                pred = model(noisy.flatten(0, 1)).argmax(-1).reshape(samples, len(xb))
                counts[k] += (pred == ref).all(0).sum()
    rob = counts.to(x.dtype) / len(x)
    s, order = sigmas.to(rob).sort()                    # the sigmas are checked on the CPU, rob is on x's device
    span = s[-1] - s[0]
    auc = torch.trapezoid(rob[order], s) / span if len(s) > 1 and span > 0 else rob.mean()   # one level: the mean
    return NoiseRobustness(sigmas, rob, rob.mean(), auc)


# %% [markdown]
# On the bundled LeNet: at $\sigma = 0$ every prediction survives (mode `clean`) and the `label` curve starts at the
# clean accuracy; robustness falls with $\sigma$, and more samples per point can only lower it:

# %%
net = pretrained('lenet-mnist')
images, labels = mnist_slice()
xs, ys = images[:300], labels[:300]
r1 = noise_robustness(net, xs)
test_eq(r1.robustness[0].item(), 1.); test_eq(len(r1.sigmas), 30); test_close(r1.sigmas[-1].item(), 0.5, eps=1e-7)
rl = noise_robustness(net, xs, mode='label', y=ys)
test_close(rl.robustness[0].item(), (net(xs).argmax(1) == ys).double().mean().item(), eps=1e-7)
r5 = noise_robustness(net, xs, samples=5)
test_eq(bool((r5.robustness <= r1.robustness + 0.05).all()), True)
print(f'LeNet, 300 MNIST digits: mean robustness m=1 {r1.mean:.3f}, m=5 {r5.mean:.3f}, label {rl.mean:.3f}; '
      f'AUC {r1.auc:.3f}')

# %% [markdown]
# **Fresh noise per sample.** A toy classifier $x \mapsto (x, -x)$ at $x = 0$ keeps its prediction exactly when
# $n > 0$: with independent draws a point survives $m$ copies with probability $2^{-m}$, while one noise field
# shared by all copies would give $1/2$ and one shared by all points 0 or 1. Within 4 standard errors:

# %%
toy = nn.Sequential(nn.Linear(1, 2, bias=False))
with torch.no_grad(): toy[0].weight.copy_(torch.tensor([[1.], [-1.]]))
zeros = torch.zeros(4000, 1)
for m in (1, 3):
    for fixed in (False, True):
        r = noise_robustness(toy, zeros, [0.3], samples=m, fixed_norm=fixed).robustness[0].item()
        p = 2.0 ** -m
        test_close(r, p, eps=4 * (p * (1 - p) / 4000) ** 0.5)

# %% [markdown]
# **Reproducible from the seed**, different across seeds; the fixed-norm noise has norm exactly $\sigma\sqrt n$:

# %%
test_eq(noise_robustness(net, xs, [0.3, 0.45], seed=3).robustness, noise_robustness(net, xs, [0.3, 0.45], seed=3).robustness)
test_eq(bool((noise_robustness(net, xs, [0.45, 0.45], samples=3, seed=3).robustness !=
              noise_robustness(net, xs, [0.45, 0.45], samples=3, seed=4).robustness).any()), True)
n_fixed = _noise((2, 5, 1, 28, 28), 0.3, True, torch.Generator().manual_seed(0), torch.float64, 'cpu')
test_close(n_fixed.flatten(2).norm(dim=-1), torch.full((2, 5), 0.3 * 28, dtype=torch.float64), eps=1e-12)

# %% [markdown]
# Bad inputs:

# %%
test_fail(lambda: noise_robustness(net, xs, [-0.1, 0.2]), contains='sigmas must be >= 0')
test_fail(lambda: noise_robustness(net, xs, mode='label'), contains='needs the labels')
test_fail(lambda: noise_robustness(net, xs, mode='label', y=ys[:5]), contains='y must be labels')
test_fail(lambda: noise_robustness(net, xs, mode='x'), contains="mode must be")
test_fail(lambda: noise_robustness(net, xs, samples=0), contains='samples must be')
test_fail(lambda: noise_robustness(net, xs, torch.tensor([0.1], dtype=torch.float64)), contains='sigmas float64')
test_fail(lambda: noise_robustness(net, xs.double()), contains='convert one')
rs = noise_robustness(net, xs[:50], [0.3, 0.1, 0.2])                    # unsorted levels: the area is over sorted ones
test_close(rs.auc, torch.trapezoid(rs.robustness[[1, 2, 0]], rs.sigmas[[1, 2, 0]]) / 0.2, eps=1e-6)
r22 = noise_robustness(net, xs[:50], [0.2, 0.2])
test_eq(r22.auc, r22.mean)                                              # no range: the mean, not 0 / 0


# %% [markdown]
# ## The misclassification model of Lyu et al. (2015), eqs. 26-33
# [Lyu et al. (2015)](99_references.ipynb#lyu2015) explain errors under noise $\eta \sim \mathcal N(0, \sigma^2 I)$ by the minimum perturbation $a$ that
# flips a correct prediction, found by a line search along $\nabla_x L$. Projecting the noise on that direction,
# $\eta_0 \sim \mathcal N(0, \sigma^2)$, a point is flipped when $\eta_0 \ge \|a\|$ (eq 28). Fitting
# $\|a\| \sim \mathcal N(\mu_a, s_a^2)$ over the correctly classified points, $\delta = \eta_0 - \|a\| \sim
# \mathcal N(-\mu_a, \sigma^2 + s_a^2)$ and, assuming noise never corrects an error, the predicted error rate is
# (eq 33, with one dominant direction, $n = 1$)
# $$P(\text{miss}) + (1 - P(\text{miss}))\,\Phi\big(-\mu_a/\sqrt{\sigma^2 + s_a^2}\big).$$

# %%
#| export
def misclassification_rate(
    p_miss:float|Tensor,  # error rate without noise
    mu_a:float|Tensor,    # mean of the minimum perturbation norms
    s_a:float|Tensor,     # their standard deviation
    sigma:float|Tensor,   # noise std (any shape)
)->Tensor:                # predicted error rate under N(0, sigma^2 I), eq 33
    "The predicted misclassification rate under Gaussian noise of Lyu et al. 2015, eq. 33."
    names = ('p_miss', 'mu_a', 's_a', 'sigma')
    tensor = any(isinstance(v, Tensor) and v.is_floating_point() for v in (p_miss, mu_a, s_a, sigma))
    p_miss, mu_a, s_a, sigma = (v if tensor else v.double()           # numbers only: float64, as before
                                for v in as_tensors(p_miss, mu_a, s_a, sigma, names=names))
    check_broadcast(names, p_miss, mu_a, s_a, sigma)
    check_finite(p_miss, 'p_miss')
    if ((p_miss < 0) | (p_miss > 1)).any():
        lo, hi = p_miss.min().item(), p_miss.max().item()
        raise ValueError(f'p_miss must be a probability in [0, 1]; got {lo:.4g}' + (f'..{hi:.4g}' if hi != lo else ''))
    check_var(mu_a, 'mu_a'); check_var(sigma, 'sigma'); check_var(s_a, 's_a')
    if ((sigma == 0) & (s_a == 0)).any(): raise ValueError('sigma and s_a must not both be 0 (the spread of delta would be 0)')
    return _eq33(p_miss, mu_a, s_a, sigma)

def _eq33(p_miss, mu_a, s_a, sigma):
    "Eq. 33 without argument checks (NaN propagates), clamped to [0, 1] against rounding; hypot: no overflow."
    return (p_miss + (1 - p_miss) * normal_cdf(-mu_a / torch.hypot(sigma, s_a))).clamp(0, 1)


# %% [markdown]
# With the published statistics (Table VI, $\lambda = 10^{-4}$: $\mu_a = 0.2744$, $s_a = 0.1511$, $P(\text{miss}) =
# 6.02\%$) it reproduces Table VIII, 12.12% at $\sigma = 0.1$ and 25.47% at $\sigma = 0.3$ (and the other rows). Its
# $\sigma = 0$ column is $P(\text{miss})$ itself: eq 33 at $\sigma = 0$ would add $\Phi(-\mu_a/s_a)$, the
# overestimate discussed in Lyu et al. (2015), §V-A.

# %%
published = {1e-4: (0.0602, 0.2744, 0.1511, (12.12, 25.47)), 1e-2: (0.0629, 0.4722, 0.2531, (10.16, 17.01)),
             1.: (0.0893, 1.2718, 0.6654, (11.61, 12.63))}
for lam, (pm, ma, sa, table8) in published.items():
    test_close(100 * misclassification_rate(pm, ma, sa, torch.tensor([0.1, 0.3])), torch.tensor(table8, dtype=torch.float64), eps=0.01)


# %% [markdown]
# `minimum_perturbations` performs the line search: along $d = g/\|g\|_2$, $g = \nabla_x L(x, y)$, it scans
# $t \in (0, t_{\max}]$ in `steps` steps and bisects the first bracket where the prediction stops being $y$. Points
# already misclassified get NaN, points that never flip within $t_{\max}$ get inf.

# %%
#| export
def minimum_perturbations(
    model:nn.Module,     # classifier
    x:Tensor,            # inputs (N, ...)
    y:Tensor,            # labels (N,)
    max_norm:float=5.,   # t_max, the longest l2 step searched
    steps:int=100,       # grid steps before the bisection
    bisections:int=30,   # halvings of the bracket
    loss=F.cross_entropy,  # loss(logits, y, reduction='sum') whose gradient gives the direction
)->Tensor:               # (N,) ||a||: NaN where misclassified, inf where not found
    "Minimum l2 perturbations along grad_x L that change a correct prediction, by line search (Lyu et al. 2015, §V-A)."
    _check_count(steps, 'steps'); _check_count(bisections, 'bisections', 0)
    _check_max_norm(max_norm)
    if not callable(loss): raise TypeError(f'loss must be callable; got {type(loss).__name__}')
    _check_inputs(model, x, None, 1, y, empty=True)
    if len(x) == 0: return x.new_zeros(0)
    with eval_mode(model): return _minimum_perturbations(model, x, y, max_norm, steps, bisections, loss)

def _check_max_norm(max_norm):
    "max_norm must be a finite number > 0 (an infinite range has no grid)."
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or not 0 < max_norm < math.inf:
        raise ValueError(f'max_norm must be a finite number > 0; got {max_norm!r}')

def _minimum_perturbations(model, x, y, max_norm, steps, bisections, loss):
    "minimum_perturbations for checked arguments and a model in eval mode."
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = model(x)
        g, = torch.autograd.grad(loss(out, y, reduction='sum'), x)
    if not torch.isfinite(g).all(): raise ValueError('the gradient of the loss at x is not finite: the model overflows there')
    x = x.detach()
    d = g / g.flatten(1).norm(dim=1).clamp(min=torch.finfo(g.dtype).tiny).reshape(-1, *[1] * (x.ndim - 1))
    wrong = lambda t: model(x + t.reshape(-1, *[1] * (x.ndim - 1)) * d).argmax(-1) != y
    correct = out.argmax(-1) == y
    hi = torch.full((len(x),), float('inf'), dtype=x.dtype, device=x.device)
    with torch.no_grad():
        for k in range(1, steps + 1):
            t = torch.full_like(hi, max_norm * k / steps)
            hi = torch.where(hi.isinf() & wrong(t), t, hi)
            if not (hi.isinf() & correct).any(): break
        found = hi.isfinite()
        lo = torch.where(found, hi - max_norm / steps, hi)
        for _ in range(bisections):
            mid = torch.where(found, (lo + hi) / 2, torch.zeros_like(hi))
            flip = wrong(mid)
            hi, lo = torch.where(found & flip, mid, hi), torch.where(found & ~flip, mid, lo)
    return torch.where(correct, hi, torch.full_like(hi, float('nan')))


# %% [markdown]
# For a linear softmax model the answer has a closed form: along $d$ the logits move as $z + tWd$, and the first
# class $k$ to overtake $y$ does so at $t = \min_{k:(Wd)_k > (Wd)_y} (z_y - z_k)/((Wd)_k - (Wd)_y)$:

# %%
gen = torch.Generator().manual_seed(0)
soft = nn.Linear(784, 10).double()
with torch.no_grad(): soft.weight.copy_(torch.randn(10, 784, generator=gen, dtype=torch.float64) * 0.05)
xd, yd = images[:200].double().flatten(1), labels[:200]
a = minimum_perturbations(soft, xd, yd, max_norm=20., steps=200)
xg = xd.clone().requires_grad_(True)
gd, = torch.autograd.grad(F.cross_entropy(soft(xg), yd, reduction='sum'), xg)
wd = (gd / gd.norm(dim=1, keepdim=True)) @ soft.weight.mT
z = soft(xd).detach()
rate = wd - wd.gather(1, yd[:, None])
gap = z.gather(1, yd[:, None]) - z
t_exact = torch.where(rate > 0, gap / rate.clamp(min=1e-300), torch.full_like(gap, float('inf'))).amin(1)
ok = torch.isfinite(a)
test_eq(ok.sum().item() > 10, True)
test_close(a[ok], t_exact[ok], eps=1e-6)
test_eq(bool(torch.isnan(a[z.argmax(1) != yd]).all()), True)


# %% [markdown]
# `predicted_misclassification` puts it together: the fitted normal, eq 33 per $\sigma$, and beside it the rate
# measured with `draws` fresh Gaussian samples per point (the `label` mode of `noise_robustness`, one copy at a time).

# %%
#| export
class Misclassification(NamedTuple):
    "The model of Lyu et al. 2015 fitted on a data set, and the measured error rates under noise."
    sigmas:Tensor      # (S,) noise stds
    predicted:Tensor   # (S,) eq 33
    measured:Tensor    # (S,) fraction misclassified under N(0, sigma^2 I), averaged over the draws
    p_miss:Tensor      # clean error rate
    mu_a:Tensor        # mean of the found minimum perturbation norms
    s_a:Tensor         # their standard deviation
    found:int          # correctly classified points whose perturbation was found within max_norm
    perturbations:Tensor  # (N,) the norms (NaN: misclassified; inf: not found)


# %%
#| export
def predicted_misclassification(
    model:nn.Module,      # classifier
    x:Tensor,             # inputs (N, ...) in [0, 1]
    y:Tensor,             # labels (N,)
    sigma:float|Tensor|list,  # noise std(s) >= 0
    max_norm:float=5.,    # line-search range (see `minimum_perturbations`)
    steps:int=100,        # grid steps of the line search
    draws:int=1,          # noisy copies per point for the measured rate
    seed:int=0,           # seeds the noise of the measured rate
)->Misclassification:
    "The predicted misclassification rate of Lyu et al. 2015 under Gaussian noise (eqs. 26-33) beside the measured one."
    _check_count(draws, 'draws'); _check_count(steps, 'steps')
    _check_max_norm(max_norm)
    sigmas = _check_inputs(model, x, sigma, 1, y, name='sigma')
    a = minimum_perturbations(model, x, y, max_norm, steps)
    fit = a[a.isfinite()]
    if len(fit) < 2:
        raise ValueError(f'x has {len(fit)} correctly classified point(s) whose minimum perturbation was found within '
                         f'max_norm = {max_norm}; fitting mu_a and s_a needs 2: use more points or a larger max_norm')
    p_miss = a.isnan().to(x.dtype).mean()
    mu_a, s_a = fit.mean(), fit.std()
    measured = torch.stack([1 - noise_robustness(model, x, sigmas, mode='label', y=y, seed=seed + r).robustness
                            for r in range(draws)]).mean(0)
    return Misclassification(sigmas, _eq33(p_miss.double(), mu_a.double(), s_a.double(), sigmas.double()).to(x.dtype), measured,
                             p_miss, mu_a, s_a, int(a.isfinite().sum()), a)


# %% [markdown]
# On the bundled LeNet's first 200 test digits the model is qualitative, as Lyu et al. (2015) found for their softmax
# models: it
# sees the right trend but its single-direction, linear view need not match a deep network's error rate.

# %%
lyu = predicted_misclassification(net, images[:200], labels[:200], [0., 0.1, 0.3, 0.5], max_norm=10., steps=50)
test_eq(lyu.found + int(lyu.perturbations.isnan().sum()) + int(lyu.perturbations.isinf().sum()), 200)
test_eq(bool((lyu.predicted >= lyu.p_miss).all()), True)
Table([[s_, p_, m_] for s_, p_, m_ in zip(lyu.sigmas.tolist(), lyu.predicted.tolist(), lyu.measured.tolist())],
      ['sigma', 'predicted', 'measured'], fmt={'sigma': '.1f', 'predicted': '.2%', 'measured': '.2%'},
      caption=f'mu_a {lyu.mu_a:.3f}, s_a {lyu.s_a:.3f}, P(miss) {lyu.p_miss:.3f}, found {lyu.found}')

# %% [markdown]
# [Robust training experiments](22_robust_training.ipynb) fits it to softmax models trained with three weight decays,
# as in Lyu et al. (2015), Tables VI-IX.

# %% [markdown]
# ## Export -

# %%
#| hide
#| eval: false
import nbdev; nbdev.nbdev_export()

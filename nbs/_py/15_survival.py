# %% [markdown]
# # Predicting what noise does
# > The probability that a prediction survives Gaussian noise, from the analytic output mean and covariance (a Gaussian orthant probability and a Cantelli bound) against Monte Carlo; fooling rate of a universal perturbation (Bibi et al. 2018, §4.2, Table 2); spatial fooling maps (Bibi et al. 2018, §4.4, Fig. 3); the robustness R_D of Alfadly et al. 2019 (eq. 6)

# %%
#| default_exp survival

# %%
#| export
from __future__ import annotations
import math
from typing import NamedTuple
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import jacrev
from tqdm.auto import tqdm
from netmoments.core import as_tensors, check_broadcast, check_count, check_finite, check_model, check_var, eval_mode
from netmoments.gaussian import normal_cdf
from netmoments.relu import relu_mean
from netmoments.linearize import AffineReluAffine, _relu_positions, model_layers, two_stage

# %%
#| hide
import os, json, time, math
from pathlib import Path
import numpy as np, sympy as sp, matplotlib.pyplot as plt
from scipy import stats
from IPython.display import Markdown, display
from netmoments.core import Table
from fastcore.test import test_eq, test_close, test_fail
from netmoments.models import pretrained, mnist_slice

# %% [markdown]
# [Alfadly et al. (2019)](99_references.ipynb#alfadly2019), eq. 6, measure the robustness of a classifier
# $\psi(x) = \arg\max_i \Psi_i(x)$ at
# an input $x$ against noise $n \sim \mathcal D$ by
# $$\mathfrak R_{\mathcal D}(x) = \mathbb P_{n\sim\mathcal D}\{\psi(x + n) = \psi(x)\},$$
# and estimate it by sampling (one sample of norm $\sigma\sqrt n$ per $\sigma$). The two-stage linearization
# ([Two-stage linearization](09_linearize.ipynb)) gives the mean $\mu$ and the covariance $\Sigma$ of the logits
# $z = \Psi(x + n)$ for
# $n \sim \mathcal N(0, \sigma^2 I)$ in closed form (`ara_moments`). This chapter turns those two moments into a
# prediction of $\mathfrak R_{\mathcal D}(x)$ without sampling, in two ways, and checks both against Monte Carlo of the
# real network. With $c = \psi(x)$, the prediction survives iff every margin $D_k = z_c - z_k$, $k \ne c$, is positive.
#
# * **gaussian**: treat $z$ as Gaussian; $D = Mz$ is then Gaussian with mean $M\mu$ and covariance $M\Sigma M^\top$,
#   and $\mathfrak R = \mathbb P(D > 0)$ is a $(d-1)$-dimensional normal orthant probability.
# * **cantelli**: a distribution-free lower bound that uses only the means and variances of the $D_k$.
#
# Both inherit the linearization error; the first also the error of calling a ReLU network's output Gaussian. The
# sections below measure both on the bundled LeNet.

# %% [markdown]
# ## Cantelli's one-sided inequality
# For a random variable $X$ with mean $m > 0$ and variance $v$, $\mathbb P(X \le 0) \le \dfrac{v}{v + m^2}$.
# Proof (the classical one): for any $u \ge 0$, $\{X \le 0\} \subseteq \{(m - X + u)^2 \ge (m + u)^2\}$, so by
# Markov $\mathbb P(X \le 0) \le \dfrac{v + u^2}{(m + u)^2}$; minimizing over $u$:

# %%
m, v, u = sp.symbols('m v u', positive=True)
markov = (v + u**2) / (m + u)**2
u_star = sp.solve(sp.diff(markov, u), u)
test_eq(u_star, [v / m])
cantelli = sp.simplify(markov.subs(u, v / m))
test_eq(sp.simplify(cantelli - v / (v + m**2)), 0)
test_eq(sp.simplify(sp.diff(markov, u, 2).subs(u, v / m)) .is_positive, True)   # a minimum
cantelli

# %% [markdown]
# The bound is attained by a two-point law ($X = m + v/m$ with probability $m^2/(v+m^2)$, else $X = 0$), so it
# cannot be improved without more than two moments; for a Gaussian it is loose. Against the Gaussian tail
# $\Phi(-m/\sqrt v)$ at a few signal-to-noise ratios $t = m/\sqrt v$:

# %%
t = sp.symbols('t', positive=True)
two_point = {m + v / m: m**2 / (v + m**2), 0: v / (v + m**2)}
test_eq(sp.simplify(sum(x * p for x, p in two_point.items()) - m), 0)
test_eq(sp.simplify(sum((x - m)**2 * p for x, p in two_point.items()) - v), 0)
snr = np.array([0.5, 1, 2, 3, 4])
bound, gauss = 1 / (1 + snr**2), stats.norm.sf(snr)
assert (bound >= gauss).all()
Table(list(zip(snr, bound, gauss)), ['t = m/s', 'Cantelli', 'Gaussian tail'], {'t = m/s': 'g', 'Cantelli': '.4f', 'Gaussian tail': '.3g'})


# %% [markdown]
# With $d - 1$ margins, the union bound gives the survival bound
# $$\mathfrak R \ \ge\ 1 - \sum_{k\ne c} \mathbb P(D_k \le 0)\ \ge\ 1 - \sum_{k \ne c,\ m_k > 0} \frac{v_k}{v_k + m_k^2}
#   - \#\{k: m_k \le 0\},$$
# clamped to $[0, 1]$; a margin whose mean is not positive contributes 1 (nothing is known), so the bound is 0.
# It holds for any distribution of $z$ with these moments: it is a bound on the survival under the *linearized*
# network exactly, and on the real network as far as the analytic moments are right.

# %% [markdown]
# ## Margins
# The margins $D_k = z_c - z_k$ for $k \ne c$ (in increasing $k$), with $M = e_c \mathbf 1^\top - [e_k]_{k\ne c}$:
# mean $M\mu$, covariance $M \Sigma M^\top$.

# %%
#| export
def _others(c, d):
    "The d - 1 classes k != c, increasing: (..., d - 1)."
    j = torch.arange(d - 1, device=c.device)
    return j + (j >= c[..., None]).long()

def margin_moments(
    mean:Tensor,  # logit means (..., d), d >= 2
    cov:Tensor,   # logit covariances (..., d, d)
    c:Tensor,     # class of each row (...,), int64 in [0, d)
)->tuple:         # (mean (..., d-1), cov (..., d-1, d-1)) of D_k = z_c - z_k, k != c increasing
    "Mean and covariance of the margins z_c - z_k (k != c) of Gaussian-moment logits."
    mean, cov = as_tensors(mean, cov, names=('mean', 'cov'))
    d = mean.shape[-1] if mean.ndim else 0
    if d < 2: raise ValueError(f'mean must hold at least 2 logits (..., d); got shape {tuple(mean.shape)}')
    if cov.shape[-2:] != (d, d): raise ValueError(f'cov must be (..., {d}, {d}); got {tuple(cov.shape)}')
    check_finite(mean, 'mean'); check_finite(cov, 'cov')
    if not isinstance(c, Tensor) or c.is_floating_point() or c.is_complex() or c.dtype == torch.bool:
        raise ValueError(f'c must be integer class indices; got {c.dtype if isinstance(c, Tensor) else type(c).__name__}')
    if c.numel() and ((c < 0) | (c >= d)).any():
        raise ValueError(f'c must be in [0, {d}); got values {c.min().item()}..{c.max().item()}')
    eye = torch.eye(d, dtype=mean.dtype, device=mean.device)
    M = eye[c][..., None, :] - eye[_others(c, d)]                       # (..., d-1, d)
    return (M @ mean[..., None])[..., 0], M @ cov @ M.mT


# %% [markdown]
# A check against a direct computation, for logits of 4 classes:

# %%
g = torch.Generator().manual_seed(0)
L4 = torch.randn(3, 4, 4, generator=g, dtype=torch.float64)
mu4, cov4, c4 = torch.randn(3, 4, generator=g, dtype=torch.float64), L4 @ L4.mT, torch.tensor([0, 2, 3])
dm, dc = margin_moments(mu4, cov4, c4)
test_eq(dm.shape, (3, 3)); test_eq(dc.shape, (3, 3, 3))
# the second margin of row 1 (c = 2) is z_2 - z_1; the first of row 2 (c = 3) is z_3 - z_0
test_close(dm[1, 1], mu4[1, 2] - mu4[1, 1], eps=1e-14)
test_close(dc[2, 0, 0], cov4[2, 3, 3] + cov4[2, 0, 0] - 2 * cov4[2, 3, 0], eps=1e-12)
test_fail(lambda: margin_moments(mu4 * float('nan'), cov4, c4), contains='mean must be finite')
test_fail(lambda: margin_moments(mu4, cov4.float(), c4), contains='cov float32')          # one floating dtype
test_fail(lambda: margin_moments(mu4, cov4, c4 + 2), contains='c must be in [0, 4)')


# %% [markdown]
# ## Normal orthant probabilities
# $\mathbb P(D > 0)$ for $D \sim \mathcal N(m, C)$ in $K = d - 1$ dimensions has no closed form for $K > 2$. We use
# Genz's separation of variables ([Genz (1992)](99_references.ipynb#genz1992)): with
# $Y = m - D \sim \mathcal N(0, C)$, $C = LL^\top$, the probability $\mathbb P(Y < m)$ becomes the integral over the
# unit cube $[0,1]^{K-1}$ of $f(w) = e_1 e_2(w_1)\cdots e_K(w_1..w_{K-1})$, with
# $e_i = \Phi\big((m_i - \sum_{j<i} L_{ij} y_j)/L_{ii}\big)$, $y_j = \Phi^{-1}(w_j e_j)$. The integrand is smooth and
# bounded by 1; we integrate it by randomized quasi-Monte Carlo (scrambled Sobol points, `randomizations` independent
# scramblings seeded from `seed`, standard error from their spread), after sorting the margins by $m_k/\sqrt{C_{kk}}$
# (most likely to fail first, Genz's variable-ordering heuristic in its static form). For $K = 1$ the integral is
# empty and the result is exactly $\Phi(m/\sqrt C)$. A relative jitter of $\sqrt{\varepsilon_{\mathrm{mach}}}$ times
# the largest variance is added to the diagonal before the Cholesky factorization, so singular $C$ (zero noise, or
# tied classes) works: a zero-variance margin contributes the step $\mathbb 1[m_k > 0]$.

# %%
#| export
class Orthant(NamedTuple):
    "A Gaussian orthant probability P(D > 0) and its quasi-Monte Carlo standard error."
    probability:Tensor  # (...,)
    se:Tensor           # (...,): spread of the randomized QMC estimate; 0 where the result is exact (K = 1)

def _sobol(K, samples, randomizations, seed, like):
    points = [torch.quasirandom.SobolEngine(K, scramble=True, seed=seed + r).draw(samples, dtype=torch.float64)
              for r in range(randomizations)]
    return torch.stack(points).to(dtype=like.dtype, device=like.device)      # (R, S, K)

def orthant_probability(
    mean:Tensor,          # (..., K) means of D
    cov:Tensor,           # (..., K, K) covariance of D, PSD (singular allowed)
    samples:int=1024,     # Sobol points per randomization (a power of 2)
    randomizations:int=8, # independent scramblings, for the standard error
    seed:int=0,           # seeds the scramblings
)->Orthant:
    "P(D > 0 in every coordinate) for D ~ N(mean, cov): Genz's separation of variables by randomized QMC."
    mean, cov = as_tensors(mean, cov, names=('mean', 'cov'))
    samples, randomizations = check_count(samples, 'samples', 1), check_count(randomizations, 'randomizations', 2)
    seed = check_count(seed, 'seed', 0)
    K = mean.shape[-1] if mean.ndim else 0
    if K < 1: raise ValueError(f'mean must be (..., K) with K >= 1; got shape {tuple(mean.shape)}')
    if cov.shape[-2:] != (K, K): raise ValueError(f'cov must be (..., {K}, {K}) to fit mean {tuple(mean.shape)}; got {tuple(cov.shape)}')
    if torch.isnan(mean).any(): raise ValueError('mean must not be NaN (an infinite mean is a sure or an impossible margin)')
    check_finite(cov, 'cov')
    if (cov.diagonal(dim1=-2, dim2=-1) < 0).any(): raise ValueError('cov must have a non-negative diagonal (variances)')
    cov = (cov + cov.mT) / 2                  # the symmetric part: what a covariance is, and a symmetric gradient
    var = cov.diagonal(dim1=-2, dim2=-1)
    finfo = torch.finfo(mean.dtype)
    scale = var.amax(-1, keepdim=True).clamp(min=finfo.tiny**0.5)   # floor: zero covariance stays factorizable
    if K == 1:
        s = (var + finfo.eps**0.5 * scale).sqrt()
        return Orthant(normal_cdf(mean[..., 0] / s[..., 0]), torch.zeros_like(mean[..., 0]))
    order = (mean / (var + finfo.eps**0.5 * scale).sqrt()).argsort(-1)
    m = mean.gather(-1, order)
    C = cov.gather(-1, order[..., None, :].expand_as(cov)).gather(-2, order[..., :, None].expand_as(cov))
    C = C + (finfo.eps**0.5 * scale)[..., None] * torch.eye(K, dtype=C.dtype, device=C.device)
    L = torch.linalg.cholesky_ex(C).L
    w = _sobol(K - 1, samples, randomizations, seed, mean).reshape(-1, K - 1)   # (R S, K-1)
    f, ys = 1, []
    for i in range(K):
        r = m[..., i, None] - sum(L[..., i, j, None] * ys[j] for j in range(i))
        e = normal_cdf(r / L[..., i, i, None])
        f = f * e
        if i < K - 1: ys.append(torch.special.ndtri((w[:, i] * e).clamp(finfo.tiny, 1 - finfo.eps)))
    est = f.reshape(*f.shape[:-1], randomizations, samples).mean(-1)         # (..., R)
    return Orthant(est.mean(-1), est.std(-1) / randomizations**0.5)


# %% [markdown]
# Checks: $K = 1$ is $\Phi(m/s)$; independent coordinates give the product of $\Phi(m_k/s_k)$; the equicorrelated
# orthant $\mathbb P(D > 0)$ for $m = 0$, $\rho = 1/2$ is $1/(K+1)$ (exchangeability); and a random $K = 9$ case
# agrees with scipy's own Genz integrator within its error and ours.

# %%
test_close(orthant_probability(torch.tensor([[0.7]], dtype=torch.float64), torch.tensor([[[2.0]]], dtype=torch.float64)).probability,
           normal_cdf(torch.tensor([0.7 / 2**0.5], dtype=torch.float64)), eps=1e-7)
mi, si = torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64), torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
res = orthant_probability(mi, torch.diag(si**2))
test_close(res.probability, normal_cdf(mi / si).prod(), eps=4 * res.se + 1e-6)
for K in (3, 5, 9):
    C = torch.full((K, K), 0.5, dtype=torch.float64) + 0.5 * torch.eye(K, dtype=torch.float64)
    res = orthant_probability(torch.zeros(K, dtype=torch.float64), C, samples=4096)
    test_close(res.probability, 1 / (K + 1), eps=4 * res.se + 1e-5)
inf_mean = torch.tensor([0.3, math.inf, -0.2], dtype=torch.float64)    # a sure margin drops out; an impossible one gives 0
test_close(orthant_probability(inf_mean, torch.diag(si**2)).probability, normal_cdf(inf_mean[[0, 2]] / si[[0, 2]]).prod(), eps=1e-6)
test_eq(orthant_probability(-inf_mean, torch.diag(si**2)).probability.item(), 0.)
test_fail(lambda: orthant_probability(mi * float('nan'), torch.diag(si**2)), contains='mean must not be NaN')
test_fail(lambda: orthant_probability(mi, torch.diag(si**2), randomizations=1), contains='randomizations must be >= 2')

# %%
g = torch.Generator().manual_seed(3)
W9 = torch.randn(9, 12, generator=g, dtype=torch.float64)
C9, m9 = W9 @ W9.T / 12, 0.6 + torch.rand(9, generator=g, dtype=torch.float64)
res = orthant_probability(m9, C9, samples=4096)
ref = stats.multivariate_normal(mean=np.zeros(9), cov=C9.numpy(), abseps=1e-6, releps=0).cdf(m9.numpy())   # P(Y < m)
print(f'ours {res.probability.item():.6f} +- {res.se.item():.1e}   scipy {ref:.6f}')
test_close(res.probability.item(), ref, eps=4 * res.se.item() + 4e-6)


# %% [markdown]
# ## Survival probabilities from margin moments
# The two methods on given margin moments; `cantelli` needs only the variances.

# %%
#| export
def cantelli_survival(
    margin_mean:Tensor,  # (..., K) means m_k of the margins D_k
    margin_var:Tensor,   # (..., K) their variances v_k >= 0
)->Tensor:               # (...,) the lower bound 1 - sum_k P_k, P_k = v_k / (v_k + m_k^2) if m_k > 0 else 1, in [0, 1]
    "Distribution-free lower bound on P(all D_k > 0) from Cantelli's inequality and the union bound."
    margin_mean, margin_var = as_tensors(margin_mean, margin_var, names=('margin_mean', 'margin_var'))
    check_broadcast(('margin_mean', 'margin_var'), margin_mean, margin_var)
    if margin_mean.ndim == 0: raise ValueError('margin_mean must be (..., K), one mean per margin; got a number')
    if torch.isnan(margin_mean).any(): raise ValueError('margin_mean must not be NaN (+-inf are sure or impossible margins)')
    check_var(margin_var, 'margin_var')
    pos = margin_mean > 0
    den = margin_var + margin_mean**2                  # inf when the mean is: then P_k = 0, the limit
    safe = torch.where(pos & (den > 0), den, torch.ones_like(den))
    fail = torch.where(pos, torch.where(margin_var > 0, margin_var / safe, torch.zeros_like(den)), torch.ones_like(den))
    return (1 - fail.sum(-1)).clamp(0, 1)


# %% [markdown]
# It is below the exact Gaussian orthant probability, equal to it where that is 0 or 1:

# %%
g = torch.Generator().manual_seed(5)
Wm = torch.randn(50, 4, 6, generator=g, dtype=torch.float64)
Cm, mm = Wm @ Wm.mT / 6, 2 * torch.randn(50, 4, generator=g, dtype=torch.float64) + 2
res = orthant_probability(mm, Cm)
lower = cantelli_survival(mm, Cm.diagonal(dim1=-2, dim2=-1))
assert (lower <= res.probability + 4 * res.se).all()
test_eq(cantelli_survival(torch.tensor([1.0, -1e-3]), torch.tensor([0.0, 0.0])), torch.tensor(0.))
test_eq(cantelli_survival(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])), torch.tensor(1.))
test_eq(cantelli_survival(torch.tensor([1e-30, math.inf]), torch.tensor([0.0, 1.0])), torch.tensor(1.))  # limits, no 0/0
test_fail(lambda: cantelli_survival(torch.tensor([1.0, float('nan')]), torch.ones(2)), contains='margin_mean must not be NaN')
test_fail(lambda: cantelli_survival(torch.ones(2), -torch.ones(2)), contains='margin_var must be >= 0')


# %% [markdown]
# ## `noise_survival`
# The prediction $c = \arg\max_i \Psi_i(x)$ is the clean one. The network is linearized in two stages at
# $x + \text{shift}$ ([Two-stage linearization](09_linearize.ipynb); `layer` defaults to its last ReLU, the papers'
# $l = 3$ for LeNet), its output mean
# and full covariance under $\mathcal N(x + \text{shift}, \sigma^2 I)$ come from `ara_moments` (exact Affine-ReLU-Affine
# moments), and the margins' moments feed one of the two methods. `sigma` is a number, one per sample `(N,)`, one per
# pixel (`input_shape`), or both (`x.shape`): the noise covariance is always diagonal. `shift` (default 0) is a
# deterministic perturbation added to every input: the noise is then $\mathcal N(\text{shift}, \sigma^2 I)$ (used
# for the universal perturbation below).

# %%
#| export
class NoiseSurvival(NamedTuple):
    "Predicted probability that each prediction survives the noise, with the margin moments it came from."
    probability:Tensor  # (N,) P(argmax z = c), by the chosen method
    se:Tensor           # (N,) its QMC standard error ('gaussian'); zeros for 'cantelli' and for d = 2
    prediction:Tensor   # (N,) c, the clean predicted class
    margin_mean:Tensor  # (N, d-1) E[z_c - z_k], k != c increasing
    margin_var:Tensor   # (N, d-1) Var[z_c - z_k]
    margin_cov:Tensor   # (N, d-1, d-1) their covariance

def _check_input(x, model=None, empty=True):
    "x must be a finite floating batch (N, *input_shape), N = 0 only when `empty`; `model` a module of x's dtype."
    if not isinstance(x, Tensor): raise TypeError(f'x must be a tensor; got {type(x).__name__}')
    if not x.is_floating_point(): raise TypeError(f'x must be a floating tensor; got {x.dtype}')
    if x.ndim < 2 or (x.shape[0] == 0 and not empty):
        raise ValueError(f'x must be a {"" if empty else "non-empty "}batch of inputs (N, *input_shape); got shape {tuple(x.shape)}')
    check_finite(x, 'x')
    if model is not None: check_model(model, 'model', x)

def _layer(model, layer):
    "The ReLU to split at: `layer`, checked against the model's ReLU modules, or the last one when None."
    with eval_mode(model): relus = _relu_positions(model_layers(model), layer)
    return len(relus) if layer is None else layer

def _std_scale(std)->float:
    "A power of two k with (std / k)^2 far from overflow: 1 unless std is beyond 2^(emax/4) (1.2e77 in float64, 4.3e9 in float32)."
    emax = math.frexp(torch.finfo(std.dtype).max)[1]
    top = float(std.detach().amax()) if std.numel() else 0.
    return 1. if top <= 2. ** (emax // 4) else 2. ** math.frexp(top)[1]

def _noise_std(sigma, x, name='sigma'):
    "sigma as a tensor broadcastable to x: () or (N, *input_shape)."
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, Tensor)):
        raise TypeError(f'{name} must be a number or a tensor; got {type(sigma).__name__}')
    s = as_tensors(x, sigma, names=('x', name))[1]
    check_finite(s, name)
    if (s < 0).any(): raise ValueError(f'{name} must be >= 0; smallest entry is {s.min().item():.3g}')
    N, shape = x.shape[0], x.shape[1:]
    if s.ndim == 0 or s.shape == x.shape: return s
    if s.shape == (N,): return s.reshape(N, *[1] * len(shape)).expand(x.shape)
    if s.shape == shape: return s.expand(x.shape)
    raise ValueError(f'{name} must be a number, one per sample ({N},), one per pixel {tuple(shape)} or both '
                     f'{tuple(x.shape)}; got shape {tuple(s.shape)}')

def _shifted(x, shift):
    "x + shift: shift finite, of x's dtype, broadcast to x."
    if shift is None: return x
    shift = as_tensors(x, shift, names=('x', 'shift'))[1]
    check_finite(shift, 'shift')
    try: return x + shift.expand(x.shape)
    except RuntimeError: raise ValueError(f'shift of shape {tuple(shift.shape)} does not broadcast to x {tuple(x.shape)}') from None

def _classes(model, x):
    "The width d of the logits and the clean class of each input (the model in eval mode)."
    with torch.no_grad(), eval_mode(model): z = model(x)
    return z.shape[-1], z.argmax(-1)


# %%
#| export
_METHODS = ('gaussian', 'cantelli')

def noise_survival(
    model:nn.Module,        # ReLU network mapping (N, *input_shape) to logits (N, d); see `two_stage`
    x:Tensor,               # clean inputs (N, *input_shape), in the model's dtype and on its device
    sigma:float|Tensor,     # noise std: number, (N,), input_shape or (N, *input_shape); >= 0
    method:str='gaussian',  # 'gaussian' (orthant probability of Gaussian margins) or 'cantelli' (lower bound)
    layer:int|None=None,    # ReLU to split at (from 1); None: the last one
    shift:Tensor|None=None, # mean of the noise (broadcast to x); None: zero-mean noise
    at:str='relu',          # linearization point of the top stage, see `two_stage`
    samples:int=1024,       # Sobol points per randomization ('gaussian', d > 2)
    seed:int=0,             # seeds the QMC scramblings
    chunk:int=16,           # inputs linearized per call (bounds memory: chunk x (q n + d q) floats)
    progress:bool=False,    # tqdm bar over the chunks
)->NoiseSurvival:
    "Predicted P(argmax model(x + n) = argmax model(x)), n ~ N(shift, sigma^2 I), from the analytic output moments."
    if method not in _METHODS: raise ValueError(f"method must be 'gaussian' or 'cantelli'; got {method!r}")
    _check_input(x, model)
    std = _noise_std(sigma, x)
    samples, seed, chunk = check_count(samples, 'samples', 1), check_count(seed, 'seed', 0), check_count(chunk, 'chunk', 1)
    layer = _layer(model, layer)
    point, N = _shifted(x, shift), x.shape[0]
    d, c = _classes(model, x)
    if N == 0: return _no_survival(x, d, c)
    lins = _linearize(model, point, layer, at, chunk, progress)
    return _survival(lins, point, std, c, method, samples, seed)

def _no_survival(x, d, c):
    "The NoiseSurvival of an empty batch."
    z = x.new_zeros(0, d - 1)
    return NoiseSurvival(x.new_zeros(0), x.new_zeros(0), c, z, z, x.new_zeros(0, d - 1, d - 1))

def _linearize(model, point, layer, at, chunk, progress):
    "Two-stage linearizations of `model` at the rows of `point`, `chunk` at a time: [(slice, AffineReluAffine)]."
    N = point.shape[0]
    return [(slice(s, s + chunk), two_stage(model, point[s:s + chunk], layer, at=at))
            for s in tqdm(range(0, N, chunk), disable=not progress, unit='chunk')]

def _survival(lins, point, std, c, method, samples, seed, cantelli=False):
    "NoiseSurvival from linearizations at `point`, input std `std` (scalar or x's shape), classes c (and the Cantelli bound)."
    N = point.shape[0]
    k = _std_scale(std)      # 1, or a power of two: the network scaled by 1/k (biases and inputs) keeps sigma^2 finite
    var = ((std / k) ** 2).expand(point.shape).reshape(N, -1) if std.ndim else (std / k) ** 2
    means, covs = [], []
    for sl, lin in lins:
        if k != 1: lin = AffineReluAffine(lin.A, lin.c1 / k, lin.B, lin.c2 / k)   # relu(z / k) = relu(z) / k
        mom = lin.moments(point[sl].reshape(lin.A.shape[0], -1) / k, var[sl] if var.ndim else var, full=True)
        means.append(mom.mean); covs.append(mom.cov)
    mm, mc = margin_moments(torch.cat(means), torch.cat(covs), c)
    mv = mc.diagonal(dim1=-2, dim2=-1)
    if method == 'cantelli': prob, se = cantelli_survival(mm, mv), torch.zeros_like(mm[..., 0])
    else: prob, se = orthant_probability(mm, mc, samples=samples, seed=seed)     # both unchanged by the scale k
    out = NoiseSurvival(prob, se, c, mm * k, mv * k * k, mc * k * k)
    return (out, cantelli_survival(mm, mv)) if cantelli else out


# %% [markdown]
# ## Monte Carlo reference
# `noise_survival_mc` samples the noise through the real network (not the linearization) and counts the samples whose
# argmax is still $c$; the standard error is the binomial $\sqrt{p(1-p)/\text{samples}}$ (0 when no sample, or every
# sample, flipped: then the true probability is within about $3/\text{samples}$ of the estimate). It also returns the
# sample mean and variance of the margins, to compare with the analytic ones.

# %%
#| export
class NoiseSurvivalMC(NamedTuple):
    "Monte Carlo survival probability through the real network, with the sampled margin moments."
    probability:Tensor  # (N,) fraction of samples with argmax = c
    se:Tensor           # (N,) binomial standard error
    prediction:Tensor   # (N,) c
    margin_mean:Tensor  # (N, d-1) sample mean of z_c - z_k
    margin_var:Tensor   # (N, d-1) sample variance
    samples:int         # noise samples drawn per input

def noise_survival_mc(
    model:nn.Module,        # any network mapping (N, *input_shape) to logits (N, d)
    x:Tensor,               # clean inputs (N, *input_shape)
    sigma:float|Tensor,     # as in noise_survival
    samples:int=1000,       # noise samples per input, >= 2
    seed:int=0,             # seeds a local torch.Generator on x's device
    shift:Tensor|None=None, # mean of the noise, as in noise_survival
    chunk:int=4096,         # network inputs per forward call
    progress:bool=False,
)->NoiseSurvivalMC:
    "Monte Carlo estimate of P(argmax model(x + n) = argmax model(x)), n ~ N(shift, sigma^2 I), with its SE (model run in eval mode, its modes restored)."
    _check_input(x, model)
    std = _noise_std(sigma, x)
    samples, chunk, seed = check_count(samples, 'samples', 2), check_count(chunk, 'chunk', 1), check_count(seed, 'seed', 0)
    point, N = _shifted(x, shift), x.shape[0]
    d, c = _classes(model, x)
    if N == 0:
        z = x.new_zeros(0, d - 1)
        return NoiseSurvivalMC(x.new_zeros(0), x.new_zeros(0), c, z, z, samples)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    with torch.no_grad(), eval_mode(model):
        others = _others(c, d)
        hits, n, mean, m2 = torch.zeros(N, dtype=x.dtype, device=x.device), 0, 0., 0.
        block = max(1, chunk // N)
        for start in tqdm(range(0, samples, block), disable=not progress, unit='block'):
            b = min(block, samples - start)
            noise = torch.randn(b, *x.shape, generator=gen, dtype=x.dtype, device=x.device)
            z = model((point + std * noise).reshape(b * N, *x.shape[1:])).reshape(b, N, d)
            hits = hits + (z.argmax(-1) == c).sum(0)
            D = z.gather(-1, c[None, :, None].expand(b, N, 1)) - z.gather(-1, others[None].expand(b, N, d - 1))
            bm = D.mean(0)                    # merge the block's mean and sum of squared deviations into the totals:
            delta, n = bm - mean, n + b       # no cancellation, and the variance is never negative
            mean, m2 = mean + delta * (b / n), m2 + ((D - bm) ** 2).sum(0) + delta * (delta * ((n - b) * b / n))
    if torch.isnan(mean).any():
        raise ValueError("the model's logits are not finite at x + noise: it overflows there, no margin to measure")
    p = hits / samples
    return NoiseSurvivalMC(p, (p * (1 - p) / samples).sqrt(), c, mean, m2 / (samples - 1), samples)


# %% [markdown]
# ## Exactness on a network whose logits are Gaussian
# An Affine-ReLU-Affine network is its own two-stage linearization; with first-layer biases far above the noise, its
# ReLUs never switch off, so its logits are exactly Gaussian (up to $\Phi(-40)$) and both predictions must agree with
# Monte Carlo: the Gaussian one within 4 standard errors (MC and QMC combined), Cantelli below it.

# %%
def gaussian_logit_net(n=6, p=8, d=4, seed=0, dtype=torch.float64):
    "Linear-ReLU-Linear with first-layer biases of 40: the ReLU is the identity on N(x, sigma^2 I), sigma <= 4."
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(n, p), nn.ReLU(), nn.Linear(p, d)).to(dtype)
    with torch.no_grad():
        for lin in (net[0], net[2]): lin.weight.copy_(torch.randn(lin.weight.shape, generator=g, dtype=dtype) / lin.weight.shape[1]**0.5)
        net[0].bias.fill_(40.); net[2].bias.copy_(-40 * net[2].weight.sum(1))   # cancel the offset's effect on the logits
    return net.eval().requires_grad_(False)

net_g = gaussian_logit_net()
xg = torch.rand(20, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
sg = torch.linspace(0.2, 4.0, 20, dtype=torch.float64)   # one sigma per input; 40 is > 6 hidden sds away
ga = noise_survival(net_g, xg, sg, method='gaussian', samples=2048)
ca = noise_survival(net_g, xg, sg, method='cantelli')
mc = noise_survival_mc(net_g, xg, sg, samples=20_000, seed=2)
test_close(ga.probability, mc.probability, eps=4 * (ga.se**2 + mc.se**2).sqrt() + 1e-9)
assert (ca.probability <= mc.probability + 4 * mc.se + 1e-9).all()
assert (mc.probability < 0.99).sum() >= 5        # the comparison is not vacuous
Table([(sg[i], mc.probability[i], mc.se[i], ga.probability[i], ca.probability[i]) for i in range(0, 20, 4)],
      ['sigma', 'survival MC', 'se', 'gaussian', 'cantelli'], {'sigma': '.2f', 'se': '.3f', 'survival MC': '.3f',
                                                              'gaussian': '.3f', 'cantelli': '.3f'})

# %% [markdown]
# With two classes the margin is one-dimensional and the Gaussian prediction is exactly
# $\Phi(m/\sqrt v)$ (no quadrature):

# %%
net2 = gaussian_logit_net(d=2, seed=4)
two = noise_survival(net2, xg, 0.7)
test_eq(two.se, torch.zeros(20, dtype=torch.float64))
test_close(two.probability, normal_cdf(two.margin_mean[:, 0] / two.margin_var[:, 0].sqrt()), eps=1e-7)

# %% [markdown]
# Inputs keep their dtype; bad sigmas, shapes and methods are refused:

# %%
r32 = noise_survival(gaussian_logit_net(dtype=torch.float32), xg.float(), 0.3)
test_eq((r32.probability.dtype, r32.probability.shape, r32.margin_cov.shape), (torch.float32, (20,), (20, 3, 3)))
test_fail(lambda: noise_survival(net_g, xg, -0.1), contains='sigma must be >= 0')
test_fail(lambda: noise_survival(net_g, xg, torch.ones(7, dtype=torch.float64)), contains='sigma must be a number, one per sample')
test_fail(lambda: noise_survival(net_g, xg, 0.1, method='bonferroni'), contains="method must be 'gaussian' or 'cantelli'")
test_fail(lambda: noise_survival(net_g, xg[0], 0.1), contains='x must be a batch')
test_fail(lambda: noise_survival(nn.Sequential(nn.Linear(6, 3)).double(), xg, 0.1), contains='0 ReLU modules')
test_fail(lambda: noise_survival_mc(net_g, xg, 0.1, samples=1), contains='samples must be >= 2')
test_fail(lambda: noise_survival(net_g, xg, 0.1, shift=torch.full((6,), float('nan'), dtype=torch.float64)),
          contains='shift must be finite')
test_fail(lambda: noise_survival(net_g, xg, torch.tensor(0.1)), contains='sigma float32')    # one floating dtype
test_fail(lambda: noise_survival(net_g, xg.float(), 0.1), contains='convert one')
test_eq(noise_survival(net_g, xg[:0], 0.3).margin_cov.shape, (0, 3, 3))                     # no inputs, no results
big = [noise_survival(net_g, xg[:4], s, method='cantelli') for s in (1e90, 1e100)]  # past 2^256: scaled by a power of 2
test_close(big[1].margin_var / big[0].margin_var, torch.full((4, 3), 1e20, dtype=torch.float64), eps=1e8)   # sigma^2
test_close(big[1].probability, big[0].probability, eps=1e-9)                                 # the scale-free limit

# %% [markdown]
# ## LeNet: predicted survival against Monte Carlo over a sigma grid
# The bundled LeNet (99.1% on MNIST), inputs in $[0, 1]$, isotropic noise $\mathcal N(0, \sigma^2 I)$, linearized at
# $l = 3$ around each clean image. CPU-sized here: the first `N_IMG` test images, `N_MC` samples per image and
# sigma, 1024 x 8 Sobol points; the `#| slow` cell further down runs 100 images with $10^4$ samples.

# %%
net = pretrained('lenet-mnist').double()
x_all, y_all = mnist_slice()
x_all = x_all.double()
SIGMAS = [0.1, 0.2, 0.3, 0.4, 0.5]
N_IMG, N_MC = 8, 200


# %%
#| export
def survival_grid(
    model:nn.Module,       # as in noise_survival
    x:Tensor,              # (N, *input_shape)
    sigmas:list,           # noise levels
    samples:int=1000,      # Monte Carlo samples per input and sigma
    layer:int|None=None,
    seed:int=0,
    progress:bool=False,
)->dict:                   # per sigma: gaussian, cantelli, mc (N,), their SEs, analytic and MC margin means and sds (N, d-1)
    "Gaussian and Cantelli survival predictions and Monte Carlo, per input, for each scalar sigma (one linearization)."
    _check_input(x, model)
    if isinstance(sigmas, Tensor): sigmas = list(as_tensors(x, sigmas, names=('x', 'sigmas'))[1].reshape(-1))
    if len(sigmas) == 0: raise ValueError('sigmas must hold at least one noise level; got none')
    stds = [_noise_std(sigma, x, 'sigmas') for sigma in sigmas]
    if any(s.ndim for s in stds): raise ValueError('sigmas must be numbers, one noise level each')
    samples, seed = check_count(samples, 'samples', 2), check_count(seed, 'seed', 0)
    layer = _layer(model, layer)
    d, c = _classes(model, x)
    lins = _linearize(model, x, layer, 'relu', 16, False) if len(x) else None   # one linearization serves every sigma
    out = {}
    for sigma, std in tqdm(list(zip(sigmas, stds)), disable=not progress):
        ga, ca = _survival(lins, x, std, c, 'gaussian', 1024, seed, True) if len(x) else (_no_survival(x, d, c), x.new_zeros(0))
        mc = noise_survival_mc(model, x, sigma, samples=samples, seed=seed)
        out[float(sigma)] = dict(gaussian=ga.probability, gaussian_se=ga.se, cantelli=ca,
                                 mc=mc.probability, mc_se=mc.se,
                                 margin_mean=ga.margin_mean, mc_margin_mean=mc.margin_mean,
                                 margin_sd=ga.margin_var.sqrt(), mc_margin_sd=mc.margin_var.sqrt())
    return out


# %% [markdown]
# The first `N_IMG` images, in the order of the bundled slice (not chosen). Time is printed; one linearization per
# image serves all sigmas, and the exact output covariance (500 x 500 hidden pairs per image and sigma) dominates.
# Columns: mean survival over the images by MC (with its SE), by the Gaussian prediction and by the Cantelli bound; the
# largest per-image gap between Gaussian and MC; and, to locate the failure, the analytic margin means against the
# sampled ones (mean absolute gap in units of the sampled margin sd) and the ratio analytic / sampled margin sd.

# %%
t0 = time.time()
grid = survival_grid(net, x_all[:N_IMG], SIGMAS, samples=N_MC, seed=0)
print(f'{N_IMG} images x {len(SIGMAS)} sigmas, {N_MC} MC samples: {time.time() - t0:.1f} s')
def grid_rows(grid):
    "Per sigma: mean MC survival, its SE, mean gaussian and cantelli predictions, largest gap, margin-mean gap, sd ratio."
    rows = []
    for s, r in grid.items():
        se = (r['mc_se']**2).sum().sqrt() / len(r['mc'])    # SE of the mean over images
        gap = (r['margin_mean'] - r['mc_margin_mean']).abs().mean() / r['mc_margin_sd'].mean()
        sd_ratio = (r['margin_sd'] / r['mc_margin_sd']).mean()
        rows.append((s, r['mc'].mean().item(), se.item(), r['gaussian'].mean().item(), r['cantelli'].mean().item(),
                     (r['gaussian'] - r['mc']).abs().max().item(), gap.item(), sd_ratio.item()))
    return rows
rows = grid_rows(grid)
print('robustness averaged over this sigma grid (Alfadly et al. 2019, eq. 6, averages 30 sigmas in [0, 0.5]): '
      f'MC {np.mean([r[1] for r in rows]):.3f}, gaussian {np.mean([r[3] for r in rows]):.3f}, '
      f'cantelli bound {np.mean([r[4] for r in rows]):.3f}')
Table(rows, ['sigma', 'MC', '+-SE', 'gauss', 'cantelli', 'max|g-MC|', '|dmean|/sd', 'sd ratio'],
      {'sigma': '.2f', 'MC': '.3f', '+-SE': '.3f', 'gauss': '.3f', 'cantelli': '.3f', 'max|g-MC|': '.3f',
       '|dmean|/sd': '.2f', 'sd ratio': '.2f'})

# %% [markdown]
# What must hold: where the linearization holds ($\sigma \le 0.2$ here), the Cantelli bound is below the sampled
# survival (within 4 SE) for every image, and the Gaussian prediction of the mean survival is within the stated
# distance (0.05) of Monte Carlo. The line below reports, from this run, where that distance holds and where it fails.
# The failure mode at large $\sigma$ is one-sided: the analytic prediction stays near 1 while the real network starts
# to flip, because the linearization freezes the ReLU patterns of the conv layers (below $l = 3$), which noise of that
# size changes.

# %%
TOL = 0.05   # the stated distance: |mean gaussian survival - mean MC survival| over the images
holds = [s for s, r in grid.items() if (r['gaussian'].mean() - r['mc'].mean()).abs() <= TOL]
print(f'|mean predicted - mean MC| <= {TOL} at sigma in {holds}; breaks down at '
      f'{[s for s in grid if s not in holds] or "none of the grid"}')
for s, r in grid.items():
    if s <= 0.2:
        assert (r['cantelli'] <= r['mc'] + 4 * r['mc_se'] + 1e-9).all(), s
        assert s in holds, s

# %%
#| label: fig-survival-grid
#| fig-cap: "Mean predicted survival over the images against Monte Carlo through the real LeNet (bars: 2 SE)."
fig, ax = plt.subplots(figsize=(5.5, 3.2), layout='constrained')
sig = [r[0] for r in rows]
ax.errorbar(sig, [r[1] for r in rows], yerr=[2 * r[2] for r in rows], fmt='ko-', label='Monte Carlo (real net)')
ax.plot(sig, [r[3] for r in rows], 's--', label='gaussian (analytic)')
ax.plot(sig, [r[4] for r in rows], '^:', label='cantelli bound (analytic)')
ax.set(xlabel='sigma (pixels in [0, 1])', ylabel='mean survival R_D', ylim=(-0.02, 1.02)); ax.legend();

# %%
#| echo: false
Markdown(f"""Reading the table: the analytic margin *standard deviations* match the sampled ones (ratio
{min(r[7] for r in rows):.2f} to {max(r[7] for r in rows):.2f} over the sigmas), while the analytic margin *means* are
off by {rows[0][6]:.2f} margin sd already at $\\sigma = {rows[0][0]}$, growing with $\\sigma$ to {rows[-1][6]:.2f} at
{rows[-1][0]}: the real network rectifies the noise in its conv layers, which raises or lowers the logits on average,
and the linearization below $l = 3$ cannot ([Alfadly et al. (2020)](99_references.ipynb#alfadly2020), Table 2,
reports the same growth of the mean error with sigma: 0.023 at 0.01, 0.205 at 0.1). As long as the clean margins are
many sds wide this does not matter for survival; once noise is large enough to flip predictions, the missed mean shift
is what flips them, and the prediction stays near 1.""")


# %% [markdown]
# ## Universal perturbation (Bibi et al. (2018), §4.2, Table 2)
# [Bibi et al. (2018)](99_references.ipynb#bibi2018) add the universal perturbation $N$ of VGG16
# ([Simonyan and Zisserman (2015)](99_references.ipynb#simonyan2015)) to the ImageNet validation set
# ([Russakovsky et al. (2015)](99_references.ipynb#russakovsky2015)) and ask whether the analytic mean of AlexNet
# ([Krizhevsky et al. (2012)](99_references.ipynb#krizhevsky2012)) at $X_i + N + n$, $n \sim \mathcal N(0, \Sigma_1)$
# small, predicts which images are fooled (38.70% measured on XN, 38.62% predicted from XNn) and the order of the
# top-k logits (Table 2). We ask the same of the bundled LeNet on MNIST, with a universal perturbation computed by the
# algorithm of [Moosavi-Dezfooli et al. (2017)](99_references.ipynb#moosavidezfooli2017) (Algorithm 1): pass over the
# images in a seeded order; whenever $x_i + v$ keeps the clean class, add the DeepFool step
# ([Moosavi-Dezfooli et al. (2016)](99_references.ipynb#moosavidezfooli2016): the minimal $\ell_2$ step to the nearest
# linearized boundary, iterated, with overshoot) that moves $x_i + v$ across, then project $v$ onto the ball
# $\|v\|_p \le \xi$; stop when the fooling rate on those images reaches `target` or after `passes` passes. The
# algorithm is sequential over images by construction (each step depends on the current $v$).

# %%
#| export
def _deepfool(model, x0, c, steps, overshoot):
    "DeepFool (Moosavi-Dezfooli et al. 2016, l2) on one input (1, ...): the perturbation that moves it out of class c."
    f = lambda v: model(v)[0]
    r = torch.zeros_like(x0)
    for _ in range(steps):
        xr = x0 + (1 + overshoot) * r
        z, J = f(xr), jacrev(f)(xr).reshape(-1, x0.numel())
        if z.argmax() != c: break
        keep = torch.arange(z.shape[0], device=z.device) != c
        w, fk = (J - J[c])[keep], (z - z[c])[keep]
        norm = w.norm(dim=-1)
        dist = torch.where(norm > 0, fk.abs() / torch.where(norm > 0, norm, 1.), torch.inf)
        l = dist.argmin()
        if not torch.isfinite(dist[l]): break          # no class boundary in reach of the linearization: stay
        r = r + ((fk[l].abs() + 1e-4) / norm[l] * (w[l] / norm[l])).reshape(x0.shape)   # no norm^2: no underflow
    return (1 + overshoot) * r

def _project(v, xi, p):
    if p == 2: return v * (xi / v.norm().clamp(min=torch.finfo(v.dtype).tiny)).clamp(max=1)
    return v.clamp(-xi, xi)


# %%
#| export
class UniversalPerturbation(NamedTuple):
    "A universal perturbation, its norm bound and the fooling rate on the images it was computed from."
    v:Tensor              # (*input_shape)
    xi:float              # the bound ||v||_p <= xi
    p:float               # 2 or inf
    fooling_rate:float    # on the images used to compute it
    passes:int            # passes over those images

def universal_perturbation(
    model:nn.Module,          # network mapping (N, *input_shape) to logits
    x:Tensor,                 # images it is computed from (N, *input_shape)
    xi:float,                 # norm bound
    p:float=2,                # 2 or float('inf')
    target:float=0.8,         # stop when this fraction of x is fooled (1 - delta in the paper)
    passes:int=5,             # at most this many passes over x
    overshoot:float=0.02,     # DeepFool overshoot
    steps:int=10,             # DeepFool iterations per image
    seed:int=0,               # seeds the order of the images in each pass
    progress:bool=False,
)->UniversalPerturbation:
    "The universal perturbation of Moosavi-Dezfooli et al. 2017 (Algorithm 1, DeepFool inner step), norm-bounded, seeded."
    _check_input(x, model, empty=False)
    if p not in (2, float('inf')): raise ValueError(f"p must be 2 or float('inf'); got {p}")
    xi, target = _real(xi, 'xi', 0, low_open=True), _real(target, 'target', 0, 1)
    overshoot = _real(overshoot, 'overshoot', 0)
    passes, steps, seed = check_count(passes, 'passes', 1), check_count(steps, 'steps', 1), check_count(seed, 'seed', 0)
    gen = torch.Generator().manual_seed(seed)
    with eval_mode(model):                 # DeepFool and the fooling rate see the eval-mode network; modes restored
        with torch.no_grad(): c = model(x).argmax(-1)
        v, rate, k = torch.zeros_like(x[0]), 0.0, 0
        for k in tqdm(range(1, passes + 1), disable=not progress, unit='pass'):
            for i in torch.randperm(x.shape[0], generator=gen).tolist():
                xv = (x[i] + v)[None]
                with torch.no_grad(): same = model(xv).argmax(-1).item() == c[i].item()
                if same: v = _project(v + _deepfool(model, xv, c[i], steps, overshoot)[0], xi, p)
            with torch.no_grad(): rate = (model(x + v).argmax(-1) != c).double().mean().item()
            if rate >= target: break
    return UniversalPerturbation(v.detach(), float(xi), float(p), rate, k)

def _real(v, name, low=-math.inf, high=math.inf, low_open=False)->float:
    "v as a float: a finite real number >= low (> low if low_open) and <= high, or an error naming the argument."
    if isinstance(v, Tensor) and v.numel() == 1 and v.is_floating_point(): v = v.item()
    if isinstance(v, bool) or not isinstance(v, (int, float)): raise TypeError(f'{name} must be a real number; got {type(v).__name__}')
    if not (math.isfinite(v) and (v > low if low_open else v >= low) and v <= high):
        where = f'{">" if low_open else ">="} {low:g}' + (f' and <= {high:g}' if math.isfinite(high) else ' and finite')
        raise ValueError(f'{name} must be {where}; got {v!r}')
    return float(v)


# %% [markdown]
# The prediction of [Bibi et al. (2018)](99_references.ipynb#bibi2018): linearize at $x = X_i + N$, take the analytic
# mean of the logits under
# $\mathcal N(X_i + N, \sigma_1^2 I)$, and call image $i$ fooled when its argmax differs from the clean class. The
# paper does not give $\Sigma_1$; we use $\sigma_1 = 0.01$ (pixels in $[0, 1]$). The mean alone needs only the hidden
# variances, so no hidden covariance is formed.

# %%
#| export
def analytic_logits(
    model:nn.Module,         # ReLU network, as in noise_survival
    x:Tensor,                # points (N, *input_shape)
    sigma:float|Tensor,      # noise std, as in noise_survival
    layer:int|None=None,     # ReLU to split at; None: the last
    shift:Tensor|None=None,  # noise mean
    at_shift:bool=True,      # linearize at x + shift (Bibi et al. 2018, §4.2); False: at the clean x, with the shift as input mean
    chunk:int=16,
)->Tensor:                   # (N, d): E[model(x + n)], n ~ N(shift, sigma^2 I), through the two-stage linearization
    "Analytic expected logits (Bibi et al. 2018, Theorem 1, on the two-stage linearization); needs hidden variances only."
    _check_input(x, model)
    std = _noise_std(sigma, x)
    chunk, layer = check_count(chunk, 'chunk', 1), _layer(model, layer)
    mu, N = _shifted(x, shift), x.shape[0]
    if N == 0: return x.new_zeros(0, _classes(model, x)[0])
    point = mu if at_shift else x
    k = _std_scale(std)       # 1, or a power of two that keeps sigma^2 finite: E = k B E[relu(z / k)] + c2, exactly
    var = ((std / k) ** 2).expand(x.shape).reshape(N, -1)
    out = []
    for s in range(0, N, chunk):
        A, c1, B, c2 = two_stage(model, point[s:s + chunk], layer, max_bytes=None)   # no hidden covariance is formed
        mbar = ((A @ mu[s:s + chunk].reshape(A.shape[0], -1, 1))[..., 0] + c1) / k
        hidden_var = ((A * A) @ var[s:s + chunk, :, None])[..., 0]
        out.append(k * (B @ relu_mean(mbar, hidden_var)[..., None])[..., 0] + c2)
    return torch.cat(out)

def topk_agreement(
    a:Tensor,     # (N, d) scores
    b:Tensor,     # (N, d) scores
    k:int,        # how many of the top classes must agree, in order
)->Tensor:        # fraction of rows whose top-k classes are identical and identically ordered
    "The ordering accuracy of Bibi et al. 2018, Table 2: share of rows with the same ordered top-k indices in a and b."
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)): raise TypeError('a and b must be tensors of scores (N, d)')
    a, b = as_tensors(a, b, names=('a', 'b'))
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f'a and b must be scores (N, d) of one shape; got a {tuple(a.shape)}, b {tuple(b.shape)}')
    if len(a) == 0: raise ValueError('a must hold at least one row: the share of an empty set is undefined')
    for t, name in ((a, 'a'), (b, 'b')):
        if torch.isnan(t).any(): raise ValueError(f'{name} must not be NaN')
    k = check_count(k, 'k', 1)
    if k > a.shape[1]: raise ValueError(f'k must be <= {a.shape[1]}, the number of classes; got {k}')
    return (a.topk(k, -1).indices == b.topk(k, -1).indices).all(-1).to(a.dtype).mean()


# %% [markdown]
# `topk_agreement` compares ordered top-k lists:

# %%
sa = torch.tensor([[3., 2., 1., 0.], [0., 1., 2., 3.]])
sb = torch.tensor([[3., 1., 2., 0.], [0., 1., 2., 3.]])
test_eq([topk_agreement(sa, sb, k).item() for k in (1, 2, 3)], [1.0, 0.5, 0.5])
test_fail(lambda: topk_agreement(sa, sb, 5), contains='k must be <= 4')
test_fail(lambda: topk_agreement(sa[:0], sb[:0], 1), contains='a must hold at least one row')
test_fail(lambda: topk_agreement(sa, sb.double(), 1), contains='b float64')

# %% [markdown]
# The perturbation: computed from `N_UNI` images (the slice's images 100 on), $\ell_2$ bound $\xi$, evaluated on
# `N_EVAL` held-out images (the slice's first ones).

# %%
N_UNI, N_EVAL, XI, SIGMA1 = 100, 16, 4.0, 0.01
t0 = time.time()
uni = universal_perturbation(net, x_all[100:100 + N_UNI], xi=XI, target=0.6, passes=3, seed=0)
print(f'universal perturbation: ||v||_2 = {uni.v.norm():.3f} (xi = {XI}), fooling rate on its {N_UNI} images '
      f'{uni.fooling_rate:.1%} after {uni.passes} passes, {time.time() - t0:.1f} s')
assert uni.v.norm() <= XI * (1 + 1e-9)


# %%
def universal_table(model, x, v, sigma1, mc_samples=100, seed=0):
    "Fooling rates (real XN, analytic XNn at both linearization points, MC XNn) and top-k agreement."
    with torch.no_grad(): clean, real = model(x).argmax(-1), model(x + v)
    ana = {at: analytic_logits(model, x, sigma1, shift=v, at_shift=at) for at in (True, False)}
    mc = noise_survival_mc(model, x, sigma1, samples=mc_samples, seed=seed, shift=v)
    fooled = lambda z: (z.argmax(-1) != clean).double().mean().item()
    return dict(actual=fooled(real), mc_xnn=(1 - mc.probability).mean().item(),
                predicted={at: fooled(z) for at, z in ana.items()},
                topk={at: [topk_agreement(z, real, k).item() for k in range(1, 6)] for at, z in ana.items()})


# %%
t0 = time.time()
ut = universal_table(net, x_all[:N_EVAL], uni.v, SIGMA1)
print(f'{N_EVAL} held-out images, {time.time() - t0:.1f} s')
assert abs(ut['predicted'][True] - ut['actual']) <= 2 / N_EVAL
names = {True: 'analytic, linearized at X+N (as in the paper)', False: 'analytic, linearized at clean X'}
PUBLISHED_TOPK = [0.983, 0.95308, 0.91156, 0.86088, 0.80514]   # Bibi et al. 2018, Table 2 (AlexNet, at X+N)
display(Table([('XN, real network', ut['actual'], 0.3870), ('XNn, Monte Carlo (real network)', ut['mc_xnn'], None)] +
              [('XNn, ' + names[at], ut['predicted'][at], 0.3862 if at else None) for at in (True, False)],
              ['fooling rate', 'ours (LeNet, MNIST)', 'paper (AlexNet, ImageNet)'], '.2%',
              caption='paper: Bibi et al. 2018, §4.2'))
Table([(names[at], *ut['topk'][at]) for at in (True, False)] + [('paper (AlexNet, at X+N)', *PUBLISHED_TOPK)],
      ['top-k order agreement with real XN'] + [f'top-{k}' for k in range(1, 6)], '.1%',
      caption='paper: Bibi et al. 2018, Table 2')

# %%
#| echo: false
Markdown(f"""Linearized at $X + N$ with $\\sigma_1 = {SIGMA1}$ the analytic mean is the network's own output up to
$O(\\sigma_1^2)$, so on LeNet the predicted fooling rate ({ut['predicted'][True]:.2%}) is the real one on XN
({ut['actual']:.2%}), and the top-5 order agrees for {ut['topk'][True][4]:.1%} of the images (the paper's smaller
agreement on AlexNet comes from its depth and 1000 close logits). The harder question, linearizing once at the clean
image and feeding the perturbation in as the input mean, is the last row: it predicts a fooling rate of
{ut['predicted'][False]:.2%}, because the two-stage linearization at $l = 3$ freezes the ReLU patterns of the two conv
layers, and a perturbation of norm {uni.v.norm():.0f} changes them.""")


# %% [markdown]
# ## Fooling maps (Bibi et al. (2018), §4.4, Fig. 3)
# A zero-mean Gaussian window: variance $\sigma_w^2$ on a $7\times7$ block of pixels, zero elsewhere, slid with stride 1
# and no padding ($22\times22$ positions on MNIST). The linearization at a clean image does not depend on the
# window, so one linearization serves all 484 positions: the hidden variances for every position are a $7\times7$
# box filter of the squared Jacobian $A^2$ (one `avg_pool2d` over all hidden units), and the analytic mean follows for
# all positions at once. Per position we report the expected margin $\mathbb E[z_c] - \max_{k\ne c}\mathbb E[z_k]$, its
# drop from the clean margin, and whether the analytic mean is fooled (the paper's map, averaged per class).

# %%
#| export
class FoolingMap(NamedTuple):
    "Per image and window position: the analytic expected margin, its drop, and whether the analytic mean is fooled."
    expected_margin:Tensor  # (N, H', W') E[z_c] - max_{k != c} E[z_k]
    margin_drop:Tensor      # (N, H', W') clean margin minus expected margin
    fooled:Tensor           # (N, H', W') bool: argmax of the expected logits != c
    prediction:Tensor       # (N,) c

def fooling_map(
    model:nn.Module,      # ReLU network on images (N, C, H, W)
    x:Tensor,             # clean images (N, C, H, W)
    sigma:float,          # std of the noise inside the window (all channels)
    window:int=7,         # window side; stride 1, no padding
    layer:int|None=None,  # ReLU to split at; None: the last
    chunk:int=4,          # images linearized per call (memory: chunk x q x n floats for A, q x positions for the variances)
    progress:bool=False,
)->FoolingMap:
    "Spatial fooling maps from the analytic mean under zero-mean window noise (Bibi et al. 2018, §4.4, Fig. 3), all positions at once."
    _check_input(x, model)
    if x.ndim != 4: raise ValueError(f'x must be images (N, C, H, W); got shape {tuple(x.shape)}')
    window, chunk = check_count(window, 'window', 1), check_count(chunk, 'chunk', 1)
    if window > min(x.shape[-2:]): raise ValueError(f'window must be in [1, {min(x.shape[-2:])}]; got {window}')
    sigma = _real(sigma, 'sigma', 0)
    layer = _layer(model, layer)
    side = (x.shape[-2] - window + 1, x.shape[-1] - window + 1)
    if len(x) == 0:
        z, c = x.new_zeros(0, *side), _classes(model, x)[1]
        return FoolingMap(z, z, z.bool(), c)
    out = []
    for s in tqdm(range(0, x.shape[0], chunk), disable=not progress, unit='chunk'):
        xs = x[s:s + chunk]
        A, c1, B, c2 = two_stage(model, xs, layer, max_bytes=None)   # only the mean: no hidden covariance is formed
        n_, q = A.shape[:2]
        A2 = (A * A).reshape(n_ * q, *xs.shape[1:]).sum(1, keepdim=True)
        hidden_var = sigma**2 * window**2 * F.avg_pool2d(A2, window, stride=1)      # (n q, 1, H', W')
        hidden_var = hidden_var.reshape(n_, q, -1).mT                              # (n, P, q)
        mbar = (A @ xs.reshape(n_, -1, 1))[..., 0] + c1                            # (n, q)
        clean = torch.relu(mbar)[:, None, :] @ B.mT + c2[:, None, :]                # (n, 1, d)
        hit = hidden_var > 0                       # units the window reaches; elsewhere E[relu] = relu(mbar)
        mb = mbar[:, None, :].expand_as(hidden_var)[hit]
        delta = torch.zeros_like(hidden_var).masked_scatter(hit, relu_mean(mb, hidden_var[hit]) - torch.relu(mb))
        z = clean + delta @ B.mT                                                   # (n, P, d)
        out.append((z, clean))
    z, clean = torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])
    c = clean[:, 0].argmax(-1)
    def margin(t):
        tc = t.gather(-1, c[:, None, None].expand(*t.shape[:2], 1))[..., 0]
        return tc - t.scatter(-1, c[:, None, None].expand(*t.shape[:2], 1), float('-inf')).amax(-1)
    em = margin(z)
    return FoolingMap(em.reshape(-1, *side), (margin(clean) - em).reshape(-1, *side),
                      (z.argmax(-1) != c[:, None]).reshape(-1, *side), c)


# %% [markdown]
# Check on one image: a loop over positions with `analytic_logits` and a per-pixel sigma (one mask per position) gives
# the same expected margins as the box filter:

# %%
SIGMA_W = 0.6
img = x_all[:1]
fm1 = fooling_map(net, img, SIGMA_W, layer=3)
test_eq(fm1.expected_margin.shape, (1, 22, 22))
c0 = fm1.prediction[0]
for (i, j) in [(0, 0), (10, 7), (21, 21)]:
    mask = torch.zeros(1, 1, 28, 28, dtype=torch.float64); mask[..., i:i + 7, j:j + 7] = SIGMA_W
    z = analytic_logits(net, img, mask, layer=3)
    test_close(fm1.expected_margin[0, i, j], z[0, c0] - z[0].scatter(0, c0[None], float('-inf')).max(), eps=1e-9)

# %% [markdown]
# And against the real network. At $l = 3$ (the papers' choice for LeNet) the noise reaches the only modelled ReLU
# through the frozen conv layers, so the zero-mean window barely moves the analytic mean; the real network rectifies
# the noise already in its first conv layer. Splitting at $l = 1$ models exactly that ReLU (its $A$ is conv1 itself)
# and freezes the rest. Monte Carlo of the margin $\mathbb E[z_c] - \max_{k\ne c}\mathbb E[z_k]$ at every third
# position (64 positions, `N_MAP_MC` samples each, per-pixel sigma) against the analytic one at each $l$:

# %%
N_MAP_MC = 32
pos = [(i, j) for i in range(0, 22, 3) for j in range(0, 22, 3)]
masks = torch.zeros(len(pos), 1, 28, 28, dtype=torch.float64)
for r, (i, j) in enumerate(pos): masks[r, :, i:i + 7, j:j + 7] = SIGMA_W
t0 = time.time()
mcm = noise_survival_mc(net, img.expand(len(pos), 1, 28, 28), masks, samples=N_MAP_MC, seed=1)
runner = mcm.margin_mean.argmin(-1, keepdim=True)
mc_margin, mc_se = mcm.margin_mean.min(-1).values, (mcm.margin_var.gather(-1, runner)[:, 0] / N_MAP_MC).sqrt()
ii, jj = torch.tensor([p[0] for p in pos]), torch.tensor([p[1] for p in pos])
print(f'MC: {len(pos)} positions x {N_MAP_MC} samples, {time.time() - t0:.1f} s; spread of the MC margin over positions '
      f'{mc_margin.std():.2f}, mean SE {mc_se.mean():.2f}')
corrs = {}
lines = []
for l in (1, 2, 3):
    fl = fooling_map(net, img, SIGMA_W, layer=l)
    ana = fl.expected_margin[0, ii, jj]
    corrs[l] = np.corrcoef(ana.numpy(), mc_margin.numpy())[0, 1]
    lines.append((l, corrs[l], (ana - mc_margin).abs().mean(), fl.margin_drop.max()))
assert corrs[1] > corrs[3]
Table(lines, ['layer l', 'corr', 'mean |ana - MC|', 'max drop'],
      {'layer l': 'd', 'corr': '.2f', 'mean |ana - MC|': '.2f', 'max drop': '.3f'})

# %% [markdown]
# The maps: one image per class (the first of each digit in the slice; `N_PER_CLASS` per class in the slow run),
# split at $l = 1$, $\sigma_w = 0.6$ (pixels in $[0, 1]$).

# %%
t0 = time.time()
N_PER_CLASS = 1
idx = torch.cat([(y_all == k).nonzero()[:N_PER_CLASS, 0] for k in range(10)])
fm = fooling_map(net, x_all[idx], SIGMA_W, layer=1)
print(f'fooling maps for {len(idx)} images: {time.time() - t0:.1f} s; positions where the analytic mean is fooled '
      f'{fm.fooled.double().mean():.1%}; largest margin drop {fm.margin_drop.max():.2f}')

# %%
#| label: fig-fooling-maps
#| fig-cap: "Analytic expected-margin drop under a 7x7 zero-mean Gaussian window (sigma_w = 0.6, LeNet split at l = 1), averaged per class, drawn over the central 22x22 pixels (red: largest drop; black contour: the analytic mean is fooled). Analogue of Bibi et al. 2018, Fig. 3."
fig, axes = plt.subplots(1, 10, figsize=(12, 1.6), layout='constrained')
labels = y_all[idx]
for k in range(10):
    sel = labels == k
    ax = axes[k]; ax.imshow(x_all[idx][sel][0, 0, 3:25, 3:25].numpy(), cmap='gray')
    ax.imshow(fm.margin_drop[sel].mean(0).numpy(), cmap='jet', alpha=0.55); ax.set_axis_off(); ax.set_title(str(k))
    if fm.fooled[sel].any(): ax.contour(fm.fooled[sel].double().mean(0).numpy(), levels=[0.5], colors='k', linewidths=0.8)

# %% [markdown]
# ## Full size (slow)
# With `NETMOMENTS_FULL=1`, the cell below runs the sigma grid on 100 images with $10^4$ samples per image and sigma,
# the universal perturbation from 500 images evaluated on 500 others (1000 MC samples), and fooling maps over 50
# images per class, and
# saves the numbers to `data/results/survival_*.json` (hours on a CPU). The page shows the saved numbers if they
# exist.

# %%
#| slow
RESULTS = Path('../data/results')
if os.environ.get('NETMOMENTS_FULL') == '1':
    RESULTS.mkdir(parents=True, exist_ok=True)
    g100 = survival_grid(net, x_all[:100], SIGMAS, samples=10_000, progress=True)
    json.dump({str(s): {k: v.tolist() for k, v in r.items()} for s, r in g100.items()},
              open(RESULTS / 'survival_grid.json', 'w'))
    u500 = universal_perturbation(net, x_all[500:1000], xi=XI, target=0.6, passes=5, progress=True)
    json.dump(universal_table(net, x_all[:500], u500.v, SIGMA1, mc_samples=1000), open(RESULTS / 'survival_universal.json', 'w'))
    idx50 = torch.cat([(y_all == k).nonzero()[:50, 0] for k in range(10)])
    fm50 = fooling_map(net, x_all[idx50], SIGMA_W, layer=1, progress=True)
    json.dump({'labels': y_all[idx50].tolist(), 'margin_drop': fm50.margin_drop.tolist(), 'fooled': fm50.fooled.tolist()},
              open(RESULTS / 'survival_maps.json', 'w'))
for name in ('survival_grid', 'survival_universal'):
    path = RESULTS / f'{name}.json'
    if path.exists(): print(name, json.load(open(path)) if name == 'survival_universal' else 'saved')
    else: print(f'{path} not present: full-size run not done (set NETMOMENTS_FULL=1)')

# %% [markdown]
# ## Export -

# %%
#| hide
#| eval: false
import nbdev; nbdev.nbdev_export()

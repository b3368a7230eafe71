# %% [markdown]
# # Affine-ReLU-Affine networks
# > Mean and covariance of g(x) = B relu(Ax + c1) + c2 for Gaussian x: Theorems 1–2 of Bibi et al. 2018, the papers' "old" variance, and the exact covariance for any mean and bias

# %%
#| default_exp ara

# %%
#| export
from __future__ import annotations
import math
from typing import NamedTuple
import torch
from torch import Tensor
from netmoments.core import as_tensors, check_count, check_cov, check_finite, check_var
from netmoments.relu import (_relu_cov_pair, _safe_std, relu_cross_moment_series, _lemma3, _relu_cross_moment, _relu_mean, _relu_var,
                             _sqrt_1m_rho2)

# %%
#| hide
import time
import sympy as sp
import matplotlib.pyplot as plt
from fastcore.test import test_eq, test_close, test_fail
from netmoments.core import Table
from netmoments.montecarlo import mc_moments


# %% [markdown]
# The network is $g(x) = B\,\mathrm{relu}(Ax + c_1) + c_2$ with $A \in \mathbb R^{p\times n}$, $B \in \mathbb R^{d\times p}$
# and the input $x \sim \mathcal N(\mu, \Sigma)$. Its hidden pre-activation is Gaussian,
# $z = Ax + c_1 \sim \mathcal N(\bar\mu, \bar\Sigma)$ with $\bar\mu = A\mu + c_1$ and $\bar\Sigma = A\Sigma A^\top$, so
# everything reduces to the [ReLU moments](03_relu.ipynb):
# $$\mathbb E[g] = B\,\mathbb E[\mathrm{relu}(z)] + c_2, \qquad
#   \mathrm{Cov}[g] = B\,\mathrm{Cov}[\mathrm{relu}(z)]\,B^\top.$$
# The first is Theorem 1 of [Bibi et al. (2018)](99_references.ipynb#bibi2018) (exact for any $\mu, \Sigma, c_1$). Their
# second moment (Theorem 2) assumes $\mu = 0$ and $c_1 = 0$; later chapters call the variance it gives the "old"
# variance. This chapter implements all three: the exact covariance, Theorem 2 as published, and the Lemma 4 series of
# [Alfadly et al. (2020)](99_references.ipynb#alfadly2020) in place of the exact pair moments.

# %% [markdown]
# ## The hidden Gaussian
# `cov` may be a full $(n, n)$ matrix, the variances $(n,)$ of a diagonal one, or one number for $\sigma^2 I$. The
# hidden covariance $\bar\Sigma$ is then $A\Sigma A^\top$, $(A \circ \sigma^2) A^\top$ or $\sigma^2 AA^\top$. Every
# argument may carry leading batch dimensions (one network per input point, as the
# [two-stage linearization](09_linearize.ipynb) produces); they broadcast.

# %%
#| exporti
def _ara_inputs(mu, cov, A, c1, B, c2):
    "Validate the network and input distribution; return tensors and the covariance kind (mu, c1 None: zero, not arguments)."
    given = {k: x for k, x in dict(mu=mu, cov=cov, A=A, c1=c1, B=B, c2=c2).items() if x is not None}
    t = dict(zip(given, as_tensors(*given.values(), names=tuple(given))))
    for name, x in t.items():
        if name != 'cov': check_finite(x, name)
    A, B, cov = t['A'], t['B'], t['cov']
    if A.ndim < 2 or B.ndim < 2: raise ValueError(f'A and B must be matrices (..., p, n) and (..., d, p); got A {tuple(A.shape)}, B {tuple(B.shape)}')
    p, n = A.shape[-2:]
    d = B.shape[-2]
    if 0 in (p, n, d): raise ValueError(f'A and B must have at least one row and column; got A {tuple(A.shape)}, B {tuple(B.shape)}')
    mu, c1 = t.get('mu', A.new_zeros(n)), t.get('c1', A.new_zeros(p))
    for name, x, want in (('mu', mu, n), ('c1', c1, p), ('B', B, p), ('c2', t['c2'], d)):
        if x.ndim == 0 or x.shape[-1] != want:
            raise ValueError(f'{name} does not fit A {tuple(A.shape)} and B {tuple(B.shape)}: its last dim must be {want}, '
                             f'got shape {tuple(x.shape)}')
    if cov.ndim == 0: kind = 'scalar'
    elif cov.ndim >= 2 and cov.shape[-2:] == (n, n) and cov.shape != mu.shape: kind = 'full'
    elif cov.shape[-1] == n: kind = 'diag'
    else: raise ValueError(f'cov must be a number, variances (..., {n}) or a matrix (..., {n}, {n}); got {tuple(cov.shape)}')
    batch = {'mu': mu.shape[:-1], 'cov': cov.shape[:-2] if kind == 'full' else cov.shape[:-1], 'A': A.shape[:-2],
             'c1': c1.shape[:-1], 'B': B.shape[:-2], 'c2': t['c2'].shape[:-1]}
    try: torch.broadcast_shapes(*batch.values())
    except RuntimeError:
        raise ValueError('batch dimensions do not broadcast: ' + ', '.join(f'{k} {tuple(v)}' for k, v in batch.items()
                                                                           if k in given)) from None
    check_cov(cov, 'cov') if kind == 'full' else check_var(cov, 'cov')
    return mu, cov, A, c1, B, t['c2'], kind

def _hidden_mean(mu, A, c1):
    return (A @ mu[..., None])[..., 0] + c1

def _hidden_cov_rows(cov, kind, A, rows):
    "Rows `rows` of the hidden covariance A cov A^T, shape (..., len(rows), p)."
    Ar = A[..., rows, :]
    if kind == 'scalar': return cov * (Ar @ A.mT)
    if kind == 'diag': return (Ar * cov[..., None, :]) @ A.mT
    return Ar @ cov @ A.mT


# %% [markdown]
# ### Far from overflow
# Finite weights and inputs can still give hidden moments beyond the float range ($A$ of size $10^{300}$ makes
# $\bar\Sigma$ of size $10^{600}$), and an output sum of such terms would be $\infty - \infty$. Two exact powers of two
# keep every intermediate in range. Per hidden unit $v$, $\mathrm{relu}(z_v) = 2^{e_v}\,\mathrm{relu}(z_v/2^{e_v})$,
# so row $v$ of $A$ and $c_1$ is divided by $2^{e_v}$, with $e_v > 0$ only where a bound on the unit's mean or standard
# deviation comes within a few hundred binary orders of the float range. The rows of the effective output weights
# $B_{kv}2^{e_v}$ are then scaled to at most 1 by $2^{-o_k}$, and the mean and covariance are scaled back,
# $\mathbb E[g_k] = 2^{o_k}(\hat B\,\mathbb E[\mathrm{relu}])_k + c_2(k)$ and
# $\mathrm{Cov}[g]_{kl} = 2^{o_k + o_l}(\hat B\,\mathrm{Cov}[\mathrm{relu}]\hat B^\top)_{kl}$: a result beyond
# the range is the $\pm\infty$ it is, never NaN. Powers of two are exact, so inputs in range give the same bits as
# without scaling.

# %%
#| exporti
def _maxexp(dtype): return int(math.log2(torch.finfo(dtype).max)) + 1   # every finite |x| < 2^maxexp: 1024, 128

def _exponent(t):
    "e with |t| < 2^e elementwise (no gradient), and a very negative e where t = 0."
    e = torch.frexp(t.detach())[1].to(t.dtype)
    return torch.where(t == 0, torch.full_like(e, -4 * _maxexp(t.dtype)), e)

def _ldexp(x, e):
    "x 2^e for integer-valued e (up to 6 maxexp in size), one representable power of two at a time: never 0 * inf."
    m = _maxexp(x.dtype) - 2
    for _ in range(6):
        step = e.clamp(-m, m)
        x, e = x * torch.exp2(step), e - step
    return x

def _row_scale(mu, cov, kind, A, c1):
    "Exponents e >= 0 (..., p): the hidden units (A x + c1) / 2^e have means and deviations far from overflow."
    top = _maxexp(A.dtype)
    lp = math.ceil(math.log2(max(A.shape[-2:]))) + 1                  # room for sums over n inputs or p units
    var_in = cov if kind == 'scalar' else (cov if kind == 'diag' else cov.diagonal(dim1=-2, dim2=-1)).amax(-1)
    eA = _exponent(A.abs().amax(-1))
    mean_e = torch.maximum(eA + _exponent(mu.abs().amax(-1))[..., None] + lp, _exponent(c1.abs()))
    std_e = eA + _exponent(var_in.sqrt())[..., None] + lp
    return (torch.maximum(mean_e - (top - 8 - lp), std_e - ((top - 8) // 2 - lp))).clamp(min=0)

def _out_scale(B, e):
    "(B 2^(e - o), o): the effective output weights B 2^e with each row scaled to at most 1 by 2^-o, o (..., d)."
    o = (_exponent(B.abs()) + e[..., None, :]).amax(-1)
    return _ldexp(B, e[..., None, :] - o[..., None]), o


# %% [markdown]
# ## Theorem 1: the mean
# By linearity of expectation, $\mathbb E[g] = B\,\mathbb E[\mathrm{relu}(z)] + c_2$, and each $z_v$ is Gaussian with
# mean $\bar\mu_v$ and variance $\bar\Sigma_{vv}$, so Remark 1 applies per hidden unit. sympy checks the one-unit case
# by integrating over the input itself: for $x \sim \mathcal N(\mu, s^2)$ and $g(x) = b\,\mathrm{relu}(ax + c_1) + c_2$
# with $a > 0$, $\mathbb E[g] = b(\bar\mu\,\Phi(\bar\mu/\bar s) + \bar s\,\varphi(\bar\mu/\bar s)) + c_2$ with
# $\bar\mu = a\mu + c_1$, $\bar s = a s$.

# %%
x, mu_s, c1_s, c2_s, b_s = sp.symbols('x mu c1 c2 b', real=True)
a_s, s_s = sp.symbols('a s', positive=True)
Phi_s = lambda t: (1 + sp.erf(t / sp.sqrt(2))) / 2
phi_s = lambda t: sp.exp(-t**2 / 2) / sp.sqrt(2 * sp.pi)
density = phi_s((x - mu_s) / s_s) / s_s
by_integration = b_s * sp.integrate((a_s * x + c1_s) * density, (x, -c1_s / a_s, sp.oo)) + c2_s
mbar_s, sbar_s = a_s * mu_s + c1_s, a_s * s_s
theorem1 = b_s * (mbar_s * Phi_s(mbar_s / sbar_s) + sbar_s * phi_s(mbar_s / sbar_s)) + c2_s
test_eq(sp.simplify((by_integration - theorem1).rewrite(sp.erf)), 0)

# %% [markdown]
# ## Theorem 2 as published, and its typo
# For $\mu = 0$ and $c_1 = 0$ the hidden units have zero mean, so Lemma 1 ($\mathbb E[\mathrm{relu}(z_v)^2] =
# \bar
# s_v^2/2$) and Lemma 3 give the second moment. Theorem 2 of [Bibi et al. (2018)](99_references.ipynb#bibi2018) prints
# $$\mathbb E[g_i^2] = \sum_r B_{ir}^2\frac{\bar s_r^2}{2} + 2\sum_{v_1 > v_2} B_{iv_1}B_{iv_2}\,
#   \mathbb E[\mathrm{relu}(z_{v_1})\mathrm{relu}(z_{v_2})] + 2c_2(i)\sum_v B_{iv}\frac{\bar s_v}{\sqrt{2\pi}} + c_2(i),$$
# whose last term should be $c_2(i)^2$: $\mathbb E[(b^\top r + c)^2] = b^\top\mathbb E[rr^\top]b + 2c\,b^\top
# \mathbb E[r] + c^2$. sympy expands the square:

# %%
r1, r2, b1, b2, c = sp.symbols('r1 r2 b1 b2 c', real=True)
square = sp.expand((b1 * r1 + b2 * r2 + c) ** 2)
expected = sp.expand(b1**2 * r1**2 + b2**2 * r2**2 + 2 * b1 * b2 * r1 * r2 + 2 * c * (b1 * r1 + b2 * r2) + c**2)
test_eq(square - expected, 0)


# %% [markdown]
# `ara_second_moment_zero_mean` evaluates the theorem, with `published=True` reproducing the printed `+ c2(i)`. The
# difference matters only for the second moment: the "old" variance $\mathbb E[g_i^2] - \mathbb E[g_i]^2$ (with the
# corrected term) does not depend on $c_2$ at all.

# %%
#| export
def ara_second_moment_zero_mean(
    cov:Tensor,            # input covariance: number, variances (..., n) or matrix (..., n, n); the input mean is 0
    A:Tensor,              # first layer weights, (..., p, n); its bias c1 is 0 by the theorem's assumption
    B:Tensor,              # second layer weights, (..., d, p)
    c2:Tensor,             # second layer bias, (..., d)
    published:bool=False,  # True: the printed `+ c2(i)` instead of `+ c2(i)^2`
)->Tensor:                 # E[g_i^2], shape (..., d)
    "The second moment of g for zero-mean input and c1 = 0 (Bibi et al. 2018, Theorem 2)."
    mu, cov, A, c1, B, c2, kind = _ara_inputs(None, cov, A, None, B, c2)
    e = _row_scale(mu, cov, kind, A, c1)
    if (e > 0).any(): A = _ldexp(A, -e[..., None])                   # hidden units / 2^e (see above)
    Sbar = _hidden_cov_rows(cov, kind, A, slice(None))
    var = Sbar.diagonal(dim1=-2, dim2=-1)
    cross = _lemma3(var[..., :, None], var[..., None, :], Sbar)          # its diagonal is var / 2 (Lemma 1)
    s, zero = _safe_std(var)
    mean_r = torch.where(zero, torch.zeros_like(s), s) / (2 * math.pi) ** 0.5
    Bs, o = _out_scale(B, e)
    f = torch.maximum(o, _exponent(c2.abs()))                          # one scale 2^f for all three terms
    u = _ldexp(c2, -f)
    second = _ldexp(((Bs @ cross) * Bs).sum(-1), 2 * (o - f))
    linear = _ldexp((Bs * mean_r[..., None, :]).sum(-1), o - f)
    return _ldexp(second + 2 * u * linear + (_ldexp(c2, -2 * f) if published else u * u), 2 * f)


# %% [markdown]
# Against Monte Carlo on a random zero-mean network with $c_2 \ne 0$: the corrected theorem agrees within 4 standard
# errors; the published one is off by $c_2 - c_2^2$:

# %%
gen = torch.Generator().manual_seed(2018)
n, p, d = 4, 12, 3
A = torch.randn(p, n, generator=gen, dtype=torch.float64)
B = torch.randn(d, p, generator=gen, dtype=torch.float64) / p**0.5
c2 = torch.tensor([0.5, -2., 3.], dtype=torch.float64)
cov_x = torch.eye(n, dtype=torch.float64) * 0.3
mc = mc_moments(lambda x: (torch.relu(x @ A.mT) @ B.mT + c2) ** 2, torch.zeros(n, dtype=torch.float64), cov_x, n=200_000, seed=1, full_cov=False)
thm2 = ara_second_moment_zero_mean(cov_x, A, B, c2)
assert ((thm2 - mc.mean).abs() <= 4 * mc.mean_se).all()
printed = ara_second_moment_zero_mean(cov_x, A, B, c2, published=True)
test_close(printed - thm2, c2 - c2**2, eps=1e-12)
thm2_cols = ['Monte Carlo', 'its SE', 'corrected', 'as printed']
Table([[i, mc.mean[i], mc.mean_se[i], thm2[i], printed[i]] for i in range(d)], ['output i', *thm2_cols],
      fmt=dict.fromkeys(thm2_cols, '.4f'), caption='E[g_i^2]')


# %% [markdown]
# ## The exact mean and covariance for any input and bias
# `ara_moments` computes $\mathbb E[g]$ and $\mathrm{Cov}[g] = B\,\mathrm{Cov}[\mathrm{relu}(z)]\,B^\top$ with
# $\mathrm{Cov}[\mathrm{relu}(z)]$ from the exact pair moments (`method="exact"`), from the Lemma 4 series of
# [Alfadly et al. (2020)](99_references.ipynb#alfadly2020)
# (`method="series"`, with `terms`; its diagonal uses the exact Lemma 1 second moment, since the series is undefined at
# $\rho = 1$), or as the papers' "old" covariance (`method="zero_mean"`: Theorem 2, i.e. the moments of
# $\mathrm{relu}(z)$ evaluated with $\bar\mu$ set to 0; the mean returned is still the exact Theorem 1 mean).
#
# The hidden covariance is processed `chunk` rows at a time and folded into the output at once,
# $\mathrm{Cov}[g] = \sum_U B_{:,U}\,(C_{U,:} B^\top)$, so the $p\times p$ matrix $\bar\Sigma$ is never held whole: memory
# is $O(\text{chunk}\cdot p)$ beside the weights. With `full=False` only the output variances are accumulated
# (`cov` is then None), for wide outputs.

# %%
#| export
class AraMoments(NamedTuple):
    "Output mean (..., d), covariance (..., d, d) or None, and variance (..., d) of an Affine-ReLU-Affine network."
    mean:Tensor      # (..., d) E[g(x)]
    cov:Tensor|None  # (..., d, d) Cov[g(x)], symmetric PSD; None when full=False
    var:Tensor       # (..., d) Var[g(x)], the diagonal of cov


# %%
#| exporti
def _hidden_cov_block(mbar, var, Sbar_rows, rows, method, terms):
    "Rows `rows` of Cov[relu(z)]: (..., len(rows), p)."
    m_u, v_u = mbar[..., rows], var[..., rows]
    args = (m_u[..., :, None], mbar[..., None, :], v_u[..., :, None], var[..., None, :], Sbar_rows)
    if method == 'zero_mean':
        cross = _lemma3(*args[2:])
        s, zero = _safe_std(var)                    # sqrt has an infinite gradient at 0
        mean_r = torch.where(zero, torch.zeros_like(s), s) / (2 * torch.pi) ** 0.5
        block = cross - mean_r[..., rows, None] * mean_r[..., None, :]
        diag = var[..., rows] * (0.5 - 1 / (2 * torch.pi))
    else:
        if method == 'exact': cross = None
        else:
            s1, s2 = args[2].sqrt(), args[3].sqrt()
            safe = (s1 * s2 > 0) & (Sbar_rows.abs() < s1 * s2 * (1 - 1e-9))     # the series needs s > 0 and |rho| < 1
            safe = safe & (args[0].abs() <= 50 * s1) & (args[1].abs() <= 50 * s2)   # and |h| <= 50: the exact form beyond
            cov12 = torch.where(safe, Sbar_rows, torch.zeros_like(Sbar_rows))
            v1 = torch.where(safe, args[2].expand_as(cov12), torch.ones_like(cov12))
            v2 = torch.where(safe, args[3].expand_as(cov12), torch.ones_like(cov12))
            cross = relu_cross_moment_series(torch.where(safe, args[0], 0.), torch.where(safe, args[1], 0.), v1, v2, cov12, terms=terms)
        block = _relu_cov_pair(*args)                      # no cancellation when the hidden means are large
        if cross is not None:
            mean_r = _relu_mean(mbar, var)
            block = torch.where(safe, cross - mean_r[..., rows, None] * mean_r[..., None, :], block)
        diag = _relu_var(m_u, v_u)
    eye = torch.zeros(block.shape[-2:], dtype=torch.bool, device=block.device)
    eye[torch.arange(block.shape[-2]), torch.arange(block.shape[-1])[rows]] = True
    return torch.where(eye, diag[..., :, None].expand_as(block), block)


# %%
#| export
def ara_moments(
    mu:Tensor,              # input mean, (..., n)
    cov:Tensor,             # input covariance: number (sigma^2 I), variances (..., n) or matrix (..., n, n), PSD
    A:Tensor,               # first layer weights, (..., p, n)
    c1:Tensor,              # first layer bias, (..., p)
    B:Tensor,               # second layer weights, (..., d, p)
    c2:Tensor,              # second layer bias, (..., d)
    method:str='exact',     # 'exact', 'series' (Alfadly et al. 2020, Lemma 4, with `terms`) or 'zero_mean' (the papers' "old" covariance)
    terms:int=5,            # number of series terms, for method='series'
    full:bool=True,         # False: only the output variances (cov is None), for wide outputs
    chunk:int|None=None,    # hidden rows per block (default: all); bounds memory to O(chunk * p)
)->AraMoments:              # mean (..., d), cov (..., d, d) or None, var (..., d)
    "Mean and covariance of g(x) = B relu(A x + c1) + c2 for x ~ N(mu, cov) (Bibi et al. 2018, Theorems 1-2, exact for any mu, c1)."
    if method not in ('exact', 'series', 'zero_mean'):
        raise ValueError(f"method must be 'exact', 'series' or 'zero_mean'; got {method!r}")
    mu, cov, A, c1, B, c2, kind = _ara_inputs(mu, cov, A, c1, B, c2)
    p = A.shape[-2]
    chunk = p if chunk is None else check_count(chunk, 'chunk', 1)
    if method == 'series': check_count(terms, 'terms', 1)
    e = _row_scale(mu, cov, kind, A, c1)
    if (e > 0).any(): A, c1 = _ldexp(A, -e[..., None]), _ldexp(c1, -e)   # hidden units / 2^e (see above)
    mbar = _hidden_mean(mu, A, c1)
    var = _hidden_var(cov, kind, A)
    mbar, var = torch.broadcast_tensors(mbar, var)
    Bs, o = _out_scale(B, e)
    mean = _ldexp((Bs @ _relu_mean(mbar, var)[..., None])[..., 0], o) + c2
    out_cov, out_var = 0, 0
    for start in range(0, p, chunk):
        rows = slice(start, min(start + chunk, p))
        Sbar_rows = _hidden_cov_rows(cov, kind, A, rows)
        block = _hidden_cov_block(mbar, var, Sbar_rows, rows, method, terms)     # (..., c, p)
        right = block @ Bs.mT                                                    # (..., c, d)
        if full: out_cov = out_cov + Bs[..., :, rows] @ right
        else: out_var = out_var + (Bs[..., :, rows] * right.mT).sum(-1)
    if full:
        out_cov = _ldexp(_ldexp((out_cov + out_cov.mT) / 2, o[..., :, None]), o[..., None, :])
        return AraMoments(mean, out_cov, out_cov.diagonal(dim1=-2, dim2=-1).clone())
    return AraMoments(mean, None, _ldexp(out_var, 2 * o))

def _hidden_var(cov, kind, A):
    "Diagonal of A cov A^T without forming it."
    if kind == 'scalar': return cov * (A * A).sum(-1)
    if kind == 'diag': return (A * A * cov[..., None, :]).sum(-1)
    return ((A @ cov) * A).sum(-1)


# %% [markdown]
# ## Checks
# Against Monte Carlo of the network itself on a random network with non-zero $\mu$, $c_1$, $c_2$ and a full input
# covariance: every entry of the mean and of the covariance within 4 standard errors, and the covariance symmetric and
# positive semi-definite.

# %%
def random_ara(n, p, d, gen, dtype=torch.float64):
    "A random network (A, c1, B, c2) with n inputs, p hidden units and d outputs, scaled to keep activations of order 1."
    A = torch.randn(p, n, generator=gen, dtype=dtype) / n**0.5
    c1 = torch.randn(p, generator=gen, dtype=dtype) * 0.5
    B = torch.randn(d, p, generator=gen, dtype=dtype) / p**0.5
    c2 = torch.randn(d, generator=gen, dtype=dtype)
    return A, c1, B, c2

gen = torch.Generator().manual_seed(0)
n, p, d = 6, 24, 4
A, c1, B, c2 = random_ara(n, p, d, gen)
mu = torch.randn(n, generator=gen, dtype=torch.float64)
L = torch.randn(n, n, generator=gen, dtype=torch.float64)
cov_x = L @ L.mT / n
net = lambda x: torch.relu(x @ A.mT + c1) @ B.mT + c2
exact = ara_moments(mu, cov_x, A, c1, B, c2)
mc = mc_moments(net, mu, cov_x, n=200_000, seed=0)
assert ((exact.mean - mc.mean).abs() <= 4 * mc.mean_se).all()
assert ((exact.cov - mc.cov).abs() <= 4 * mc.cov_se).all()
test_eq(exact.cov, exact.cov.mT)
assert torch.linalg.eigvalsh(exact.cov).min() >= -1e-12 * exact.cov.abs().max()
print('largest |analytic - MC| in standard errors: mean', ((exact.mean - mc.mean).abs() / mc.mean_se).max().item().__round__(2),
      ', cov', ((exact.cov - mc.cov).abs() / mc.cov_se).max().item().__round__(2))

# %% [markdown]
# The three covariance forms of the input give the same answer; chunking and the variance-only mode change nothing; a
# batch of networks broadcasts against a batch of inputs:

# %%
diag_x = torch.rand(n, generator=gen, dtype=torch.float64) + 0.1
full_of_diag = ara_moments(mu, torch.diag(diag_x), A, c1, B, c2)
test_close(ara_moments(mu, diag_x, A, c1, B, c2).cov, full_of_diag.cov, eps=1e-14)
test_close(ara_moments(mu, 0.3, A, c1, B, c2).cov, ara_moments(mu, 0.3 * torch.eye(n, dtype=torch.float64), A, c1, B, c2).cov, eps=1e-14)
test_close(ara_moments(mu, cov_x, A, c1, B, c2, chunk=5).cov, exact.cov, eps=1e-14)
test_close(ara_moments(mu, cov_x, A, c1, B, c2, full=False, chunk=7).var, exact.var, eps=1e-14)
batch = ara_moments(mu.expand(3, n), cov_x, A.expand(3, p, n), c1, B, c2)
test_eq(batch.cov.shape, (3, d, d)); test_close(batch.cov[1], exact.cov, eps=1e-14)

# %% [markdown]
# The methods agree where they should: at $\mu = 0$, $c_1 = 0$ the exact covariance equals Theorem 2's "old" one, and
# it is the covariance implied by `ara_second_moment_zero_mean`; away from zero mean, the series with 20 terms is close
# to the exact covariance when no hidden correlation is near the disjunction $|\rho| = 1/\sqrt2$:

# %%
zero_n, zero_p = torch.zeros(n, dtype=torch.float64), torch.zeros(p, dtype=torch.float64)
old = ara_moments(zero_n, cov_x, A, zero_p, B, c2, method='zero_mean')
test_close(ara_moments(zero_n, cov_x, A, zero_p, B, c2).cov, old.cov, eps=1e-14)
test_close(ara_second_moment_zero_mean(cov_x, A, B, c2) - old.mean**2, old.var, eps=1e-13)
A_ind = torch.diag(torch.rand(n, generator=gen, dtype=torch.float64) + 0.5)   # hidden correlations = input ones
series = ara_moments(mu, cov_x * 0.1 + torch.eye(n, dtype=torch.float64), A_ind, c1[:n], B[:, :n], c2, method='series', terms=20)
exact_ind = ara_moments(mu, cov_x * 0.1 + torch.eye(n, dtype=torch.float64), A_ind, c1[:n], B[:, :n], c2)
test_close(series.cov, exact_ind.cov, eps=1e-3 * exact_ind.cov.abs().max())

# %% [markdown]
# float32 follows float64 to float32 precision, and gradients flow to every parameter:

# %%
f32 = ara_moments(*(x.float() for x in (mu, cov_x, A, c1, B, c2)))
test_eq(f32.cov.dtype, torch.float32)
test_close(f32.cov.double(), exact.cov, eps=1e-5 * exact.cov.abs().max())
params = [x.clone().requires_grad_() for x in (mu, A, c1, B, c2)]
out = ara_moments(params[0], cov_x, *params[1:])
(out.mean.sum() + out.cov.sum()).backward()
assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in params)

# %% [markdown]
# Bad input is refused, by name:

# %%
test_fail(lambda: ara_moments(mu[:3], cov_x, A, c1, B, c2), contains='mu does not fit A')
test_fail(lambda: ara_moments(mu, cov_x, A, c1[:3], B, c2), contains='c1 does not fit A')
test_fail(lambda: ara_moments(mu, -cov_x, A, c1, B, c2), contains='cov must have a non-negative diagonal')
test_fail(lambda: ara_moments(mu, cov_x + torch.triu(torch.ones(n, n, dtype=torch.float64), 1), A, c1, B, c2), contains='cov must be symmetric')
not_psd = torch.eye(n, dtype=torch.float64); not_psd[0, 1] = not_psd[1, 0] = 2.
test_fail(lambda: ara_moments(mu, not_psd, A, c1, B, c2), contains='cov must be positive semi-definite')
test_fail(lambda: ara_moments(mu, -1., A, c1, B, c2), contains='cov must be >= 0')
test_fail(lambda: ara_moments(mu, cov_x, A, c1, B, c2, method='lemma5'), contains="method must be 'exact'")
test_fail(lambda: ara_moments(mu.expand(3, n), cov_x, A.expand(2, p, n), c1, B, c2), contains='batch dimensions do not broadcast')
test_fail(lambda: ara_moments(mu, cov_x, A, c1, B, c2.to('meta')), contains='one device')
test_fail(lambda: ara_moments(mu, diag_x.expand(5, n), A.expand(3, p, n), c1, B, c2),
          contains='batch dimensions do not broadcast: mu (), cov (5,), A (3,)')
test_fail(lambda: ara_moments(mu, cov_x, A, c1, B.float(), c2), contains='found mu float64, cov float64, A float64, c1 float64, B float32',
          exc=TypeError)
test_fail(lambda: ara_second_moment_zero_mean(cov_x, A, B, c2[:2]), contains='c2 does not fit A')

# %% [markdown]
# Far from overflow, the results scale as they should: hidden units $2^{900}$ times larger (rows of $A$ and $c_1$) give
# a mean $2^{900}$ times further from $c_2$ and a covariance beyond the float range, which comes back as $\pm\infty$
# with the exact covariance's signs; output weights $2^{1000}$ times larger likewise; and Theorem 2's second moment is
# $+\infty$, not NaN, when the hidden variances overflow:

# %%
big = 2. ** 900
wide = ara_moments(mu, cov_x, A * big, c1 * big, B, c2)
test_close((wide.mean - c2) / big, exact.mean - c2, eps=1e-14)
test_eq(wide.cov, exact.cov.sign() * math.inf)
tall = ara_moments(mu, cov_x, A, c1, B * 2. ** 1000, c2)
test_close(tall.mean / 2. ** 1000, (exact.mean - c2), eps=1e-14)
test_eq(tall.cov, exact.cov.sign() * math.inf)
test_close(ara_moments(mu, cov_x, A, c1, B * 2. ** 500, c2).cov / 2. ** 1000, exact.cov, eps=1e-14)
test_eq(ara_second_moment_zero_mean(cov_x, A * 1e200, B, c2), torch.full((d,), math.inf, dtype=torch.float64))
test_close(ara_second_moment_zero_mean(cov_x, A * 2. ** 400, B, c2 * 2. ** 400) / 2. ** 800,
           ara_second_moment_zero_mean(cov_x, A, B, c2), eps=1e-14)

# %% [markdown]
# ## The old variance against the exact one
# How far the papers' zero-mean "old" variance is from the truth once the hidden units have non-zero means: the same
# network, its input mean scaled by $t$. At $t = 0$ (and $c_1 = 0$) the two coincide; as $t$ grows, the old variance
# stays where it was while the exact one follows Monte Carlo.

# %%
#| label: fig-ara-old-vs-exact
#| fig-cap: "Variance of the first output against the input-mean scale t: exact (line), the papers' zero-mean 'old' variance (dashed) and Monte Carlo with 4-SE bars (10^4 samples each)."
ts = torch.linspace(0, 3, 13, dtype=torch.float64)
ex, ol, mcs, ses = [], [], [], []
for t in ts:
    ex.append(ara_moments(t * mu, cov_x, A, zero_p, B, c2).var[0])
    ol.append(ara_moments(t * mu, cov_x, A, zero_p, B, c2, method='zero_mean').var[0])
    m = mc_moments(lambda x: torch.relu(x @ A.mT) @ B.mT + c2, t * mu, cov_x, n=10_000, seed=int(t * 100), full_cov=False)
    mcs.append(m.var[0]); ses.append(m.var_se[0])
fig, ax = plt.subplots(figsize=(5, 3), layout='constrained')
ax.plot(ts, ex, label='exact'); ax.plot(ts, ol, '--', label='old (Theorem 2)')
ax.errorbar(ts, mcs, yerr=4 * torch.stack(ses), fmt='k.', label='Monte Carlo')
ax.set(xlabel='t (input mean t mu)', ylabel='Var[g_1]'); ax.legend();

# %% [markdown]
# ## Export -

# %%
#| hide
#| eval: false
import nbdev; nbdev.nbdev_export()

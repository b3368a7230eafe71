# %% [markdown]
# # ReLU moments
# > E[relu(z)], E[relu(z)^2] and E[relu(z1) relu(z2)] for Gaussian z: Remark 1 and Lemmas 1, 3 of Bibi et al. 2018, Lemma 4 of Alfadly et al. 2020, and the exact general-mean form (Rosenbaum 1961)

# %%
#| default_exp relu

# %%
#| export
from __future__ import annotations
import math
from typing import NamedTuple
import torch
from torch import Tensor
from netmoments.core import as_tensors, check_broadcast, check_count, check_cov, check_finite, check_var
from netmoments.gaussian import bvn_cdf, _conditional_z, _normal_cdf, _normal_pdf

# %%
#| hide
import time
import numpy as np
import mpmath as mp
import sympy as sp
import matplotlib.pyplot as plt
from scipy import integrate, stats
from IPython.display import Markdown
from fastcore.test import test_eq, test_close, test_fail
from netmoments.core import Table
from netmoments.gaussian import normal_cdf
from netmoments.montecarlo import mc_moments

# %% [markdown]
# For $z \sim \mathcal N(\mu, s^2)$ we write $h = \mu/s$; for a pair, $h_i = \mu_i/s_i$ and $\rho = \sigma_{12}/(s_1 s_2)$
# These are the building blocks of the moments of $g(x) = B\,\mathrm{relu}(Ax + c_1) + c_2$
# ([Affine-ReLU-Affine networks](05_ara.ipynb)):
# its mean needs $\mathbb E[\mathrm{relu}(z)]$, its covariance needs $\mathbb E[\mathrm{relu}(z_1)\mathrm{relu}(z_2)]$
# for every pair of hidden units.

# %%
phi_s = lambda t: sp.exp(-t**2 / 2) / sp.sqrt(2 * sp.pi)
Phi_s = lambda t: (1 + sp.erf(t / sp.sqrt(2))) / 2
z, q = sp.symbols('z q', real=True)
mu = sp.symbols('mu', real=True)
s = sp.symbols('s', positive=True)
density = phi_s((z - mu) / s) / s

# %% [markdown]
# ## Mean of a rectified Gaussian
# $$\mathbb E[\mathrm{relu}(z)] = \mu\,\Phi(h) + s\,\varphi(h)
#   = \frac{\mu}{2} - \frac{\mu}{2}\operatorname{erf}\Big(\frac{-\mu}{\sqrt2 s}\Big) + \frac{s}{\sqrt{2\pi}} e^{-\mu^2/(2s^2)},$$
# the second form as [Bibi et al. (2018)](99_references.ipynb#bibi2018), Remark 1, prints it. It tends to
# $\mathrm{relu}(\mu)$ as $s \to 0$. Integrating $z$ against the density over $z > 0$:

# %%
mean_closed = mu * Phi_s(mu / s) + s * phi_s(mu / s)
mean_by_integration = sp.integrate(z * density, (z, 0, sp.oo))
test_eq(sp.simplify((mean_by_integration - mean_closed).rewrite(sp.erf)), 0)
paper_form = mu / 2 - mu / 2 * sp.erf(-mu / (sp.sqrt(2) * s)) + s / sp.sqrt(2 * sp.pi) * sp.exp(-mu**2 / (2 * s**2))
test_eq(sp.simplify(paper_form - mean_closed), 0)
mean_closed

# %% [markdown]
# The closed form is the reference `relu_mean` is tested against; it agrees with direct quadrature:

# %%
mean_ref = sp.lambdify((mu, s), mean_closed, 'mpmath')
quad, _ = integrate.quad(lambda t: t * stats.norm.pdf(t, 0.7, 1.1), 0, np.inf, epsabs=1e-13)
test_close(float(mean_ref(0.7, 1.1)), quad, eps=1e-12)

# %% [markdown]
# ### The far lower tail
# Write $F_n(h) = \mathbb E[\mathrm{relu}(y)^n]$ for $y \sim \mathcal N(h, 1)$, so that the mean is $s F_1(h)$ and the
# second moment (next section) is $s^2 F_2(h)$, with $F_1 = h\Phi(h) + \varphi(h)$ and $F_2 = (h^2 + 1)\Phi(h) +
# h\varphi(h)$. For $h \ll 0$ both closed forms are small differences of large terms: $F_1 \approx \varphi(h)/h^2$
# from terms of size $\varphi(h)/|h|$, and $F_2 \approx 2\varphi(h)/|h|^3$ from terms of size $|h|\varphi(h)$, so
# the rounding error of $\Phi$ is amplified about $h^2$ and $h^4/2$ times. The tail has a form without differences.
# With $x = -h > 0$ and $\varphi(x + u) = \varphi(x)\,e^{-xu - u^2/2}$,
# $$F_n(-x) = \varphi(x)\,J_n(x), \qquad J_n(x) = \int_0^\infty u^n e^{-xu - u^2/2}\,du,$$
# integrals of positive functions. Integrating the derivative of $u^n e^{-xu - u^2/2}$ over $u > 0$ gives
# $J_1 = 1 - xJ_0$ and $J_{n+1} = nJ_{n-1} - xJ_n$ for $n \ge 1$: the forward recurrence is the cancelling closed form
# again, but the ratios $r_n = J_n/J_{n-1}$ satisfy $r_n = n/(x + r_{n+1})$, a continued fraction (Laplace's, for the
# Mills ratio $J_0$) that only adds and divides positive numbers. Evaluated from the bottom, 50 levels deep, it gives
# $J_0 = 1/(x + r_1)$ and $J_n = r_n J_{n-1}$. sympy checks the substitution and the recurrence:

# %%
x_, u_ = sp.symbols('x u', positive=True)
n_ = sp.symbols('n', integer=True, positive=True)
test_eq(sp.simplify(phi_s(x_ + u_) / (phi_s(x_) * sp.exp(-x_ * u_ - u_**2 / 2))), 1)
kernel = lambda m: u_**m * sp.exp(-x_ * u_ - u_**2 / 2)
test_eq(sp.simplify(sp.diff(kernel(n_), u_) - (n_ * kernel(n_ - 1) - x_ * kernel(n_) - kernel(n_ + 1))), 0)
test_eq(sp.simplify(sp.diff(kernel(0), u_) - (-x_ * kernel(0) - kernel(1))), 0)   # boundary term 1 at u = 0: J1 = 1 - x J0

# %% [markdown]
# Below $h = -2.5$ the moments are then $c F_n(h) = \exp\big(\log c - x^2/2 + \log J_n(x)\big)/\sqrt{2\pi}$ for the
# scale $c = s$ or $s^2$: one exponential, so that nothing underflows before the result does (with $s = 40$ the
# second moment at $h = -37.5$ is a normal float while $F_2$ alone is not). Above $-2.5$ the closed forms lose at
# most a factor $2.5^4/2$ to cancellation; below, 50 levels leave a truncation error under $10^{-14}$. Differentiating
# under the integral, $J_n' = -J_{n+1}$: the gradients come from the same continued fraction, one level further, and
# the positive terms of $\log$-derivatives like $x + J_3/J_2$ do not cancel either.

# %%
#| exporti
_TAIL, _DEPTH = 2.5, 50   # the continued fraction below h = -2.5, 50 levels deep: truncation error < 1e-14 there
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)

def _ratios(x, n):
    "J_0 .. J_n at x >= 2.5 by the continued fraction r_k = k / (x + r_{k+1}), started at its large-k fixed point."
    r = 2 * _DEPTH / ((x * x + 4 * _DEPTH).sqrt() + x)       # (sqrt(x^2 + 4k) - x) / 2 without cancellation
    rs = {}
    for k in range(_DEPTH - 1, 0, -1):
        r = k / (x + r)
        if k <= n: rs[k] = r
    J = [1 / (x + r)]                                       # r = r_1 after the loop
    for k in range(1, n + 1): J.append(rs[k] * J[-1])
    return J

class _Ratio(torch.autograd.Function):
    "J_n(x) = int_0^inf u^n exp(-x u - u^2 / 2) du for x >= 2.5, with dJ_n/dx = -J_{n+1}: derivatives of every order."
    @staticmethod
    def forward(ctx, x, n):
        ctx.save_for_backward(x)
        ctx.n = n
        return _ratios(x, n)[n]

    @staticmethod
    def backward(ctx, g):
        x, = ctx.saved_tensors
        return -g * _Ratio.apply(x, ctx.n + 1), None

def _tail_moment(h, c, n, tail):
    "c F_n(h) where `tail` (h < -2.5; 0 elsewhere): exp(log c - h^2 / 2 + log J_n(-h)) / sqrt(2 pi), on those entries only."
    x, c = -h[tail], c[tail]
    far = torch.exp(torch.log(c) + torch.log(_Ratio.apply(x, n)) - x * x / 2 - _LOG_SQRT_2PI)
    return torch.zeros_like(h).masked_scatter(tail, far)


# %%
tail_h = torch.cat([torch.linspace(-37, -3, 69, dtype=torch.float64), torch.tensor([-2.5000001], dtype=torch.float64)])
with mp.workdps(40):
    tail_ref = [(h * mp.ncdf(h) + mp.npdf(h), (h * h + 1) * mp.ncdf(h) + h * mp.npdf(h)) for h in map(mp.mpf, tail_h.tolist())]
    tail_F = [_tail_moment(tail_h, torch.ones_like(tail_h), n, tail_h < -2.5).tolist() for n in (1, 2)]
    tail_err = [max(abs(mp.mpf(f) / r - 1) for f, r in zip(F, refs)) for F, refs in zip(tail_F, zip(*tail_ref))]
print(f'largest relative error over h in [-37, -2.5]: F1 {float(tail_err[0]):.1e}, F2 {float(tail_err[1]):.1e}')
assert max(tail_err) < 1e-13


# %%
#| exporti
def _safe_std(var):
    "sqrt(var) with 1 where var == 0, so no 0/0 reaches a branch that `where` drops; and the mask."
    zero = var == 0
    return torch.where(zero, torch.ones_like(var), var).sqrt(), zero

def _saturated_ratio(mu, s, lo, hi):
    "mu / s clamped to [lo, hi], with gradient 0 (not a clamp's 0 times an overflowed inf) where the clamp holds."
    md, sd = mu.detach(), s.detach()
    inside = (md > lo * sd) & (md < hi * sd)
    bound = torch.where(md > 0, torch.full_like(mu, hi), torch.full_like(mu, lo))
    return torch.where(inside, mu / torch.where(inside, s, torch.ones_like(s)), bound)

def _pow2(x):
    "(2^-e, 2^e) for a power of two 2^e near |x| (elementwise, no gradient), both normal numbers in x's dtype."
    emax = int(math.log2(torch.finfo(x.dtype).max)) - 1    # 126 in float32, 1022 in float64
    e = (torch.frexp(x.detach())[1] - 1).clamp(-emax, emax).to(x.dtype)
    return torch.exp2(-e), torch.exp2(e)

def _unit_inputs(mu, var):
    "Validate one unit's (mu, var) and broadcast them."
    mu, var = as_tensors(mu, var, names=('mu', 'var'))
    check_broadcast(('mu', 'var'), mu, var)
    check_finite(mu, 'mu'); check_var(var, 'var')
    return torch.broadcast_tensors(mu, var)


# %%
#| export
def relu_mean(
    mu:Tensor,   # mean of z, any shape
    var:Tensor,  # variance of z, broadcastable with `mu`; must be >= 0
)->Tensor:       # E[relu(z)]: broadcast shape, dtype and device of the inputs
    "Mean of relu(z) for z ~ N(mu, var), elementwise (Bibi et al. 2018, Remark 1)."
    return _relu_mean(*_unit_inputs(mu, var))

def _relu_mean(mu, var):
    s, zero = _safe_std(var)
    h = _saturated_ratio(mu, s, -60, 50)                    # below -60 every moment underflows, whatever s
    k, K = _pow2(torch.maximum(mu.abs(), s))               # exact rescaling: mu k and s k are O(1)
    out = ((mu * k) * _normal_cdf(h) + (s * k) * _normal_pdf(h)) * K
    tail = (h < -_TAIL) & ~zero
    if tail.any(): out = torch.where(tail, _tail_moment(h, s, 1, tail), out)   # the lower tail without cancellation
    return torch.where(zero, mu.clamp(min=0), out)


# %% [markdown]
# It agrees with the checked formula, zero variance gives relu itself, and bad input is refused:

# %%
grid = torch.tensor([-3., -0.5, 0., 0.5, 3.], dtype=torch.float64)
expected = torch.tensor([float(mean_ref(m, 1.1)) for m in grid.tolist()], dtype=torch.float64)
test_close(relu_mean(grid, torch.full_like(grid, 1.1**2)), expected, eps=1e-15)
test_eq(relu_mean(grid, torch.zeros_like(grid)), grid.clamp(min=0))
test_fail(lambda: relu_mean(grid, -grid.abs() - 1), contains='var must be >= 0')
test_fail(lambda: relu_mean(torch.tensor([float('nan')]), 1.), contains='mu must be finite')
y = relu_mean(torch.randn(8, 3), torch.rand(3))
test_eq((y.shape, y.dtype), (torch.Size([8, 3]), torch.float32))

# %% [markdown]
# $\mathbb E[\mathrm{relu}(z)]$ smooths the kink of relu, more for larger variance:

# %%
#| label: fig-relu-mean
#| fig-cap: "E[relu(z)] against mu for three variances; dashed: the var -> 0 limit relu(mu)."
fig, ax = plt.subplots(figsize=(5, 3), layout='constrained')
mu_axis = torch.linspace(-3, 3, 201, dtype=torch.float64)
for v in (0.25, 1.0, 4.0): ax.plot(mu_axis, relu_mean(mu_axis, v), label=f'var = {v}')
ax.plot(mu_axis, mu_axis.clamp(min=0), 'k--', label='relu(mu)')
ax.set(xlabel='mu', ylabel='E[relu(z)]'); ax.legend();

# %% [markdown]
# ## The square of a rectified Gaussian
# For zero mean ([Bibi et al. (2018)](99_references.ipynb#bibi2018), Lemma 1), $q = \mathrm{relu}(x)^2$ has an atom of
# mass $\tfrac12$ at 0 and the density $f_x(\sqrt q)/(2\sqrt q)$ for $q > 0$:
# $f_{q}(q) = \tfrac12\,\delta(q) + \frac{1}{2\sqrt q} f_x(\sqrt q)\,u(\sqrt q)$, so $\mathbb E[q] = s^2/2$. For any
# mean the atom is $\Phi(-h)$ and the second moment is
# $$\mathbb E[\mathrm{relu}(z)^2] = (\mu^2 + s^2)\,\Phi(h) + \mu\, s\, \varphi(h).$$
# sympy integrates both: the Lemma 1 density to $s^2/2$ (and to total mass 1 with its atom), and $z^2$ over $z > 0$ for
# any mean.

# %%
f0 = phi_s(z / s) / s                                   # zero-mean density of x
lemma1_density = f0.subs(z, sp.sqrt(q)) / (2 * sp.sqrt(q))
test_eq(sp.simplify(sp.Rational(1, 2) + sp.integrate(lemma1_density, (q, 0, sp.oo))), 1)
test_eq(sp.simplify(sp.integrate(q * lemma1_density, (q, 0, sp.oo)) - s**2 / 2), 0)
second_closed = (mu**2 + s**2) * Phi_s(mu / s) + mu * s * phi_s(mu / s)
second_by_integration = sp.integrate(z**2 * density, (z, 0, sp.oo))
test_eq(sp.simplify((second_by_integration - second_closed).rewrite(sp.erf)), 0)
second_closed

# %% [markdown]
# The variance $\mathbb E[\mathrm{relu}(z)^2] - \mathbb E[\mathrm{relu}(z)]^2 = s^2 v(h)$ loses all its digits to
# cancellation when $h \gg 0$ (both terms are $\approx \mu^2$). With $Q = \Phi(-h)$, the same $v$ is
# $v(h) = 1 + (h^2 - 1)Q - h\varphi - h^2Q^2 + 2h\varphi Q - \varphi^2$ for $h \ge 0$, where nothing cancels. sympy
# confirms the two forms agree:

# %%
h_ = sp.symbols('h', real=True)
Q = 1 - Phi_s(h_)
v_direct = (h_**2 + 1) * Phi_s(h_) + h_ * phi_s(h_) - (h_ * Phi_s(h_) + phi_s(h_))**2
v_upper = 1 + (h_**2 - 1) * Q - h_ * phi_s(h_) - h_**2 * Q**2 + 2 * h_ * phi_s(h_) * Q - phi_s(h_)**2
test_eq(sp.simplify(sp.expand(v_direct - v_upper)), 0)


# %%
#| export
def relu_second_moment(
    mu:Tensor,   # mean of z, any shape
    var:Tensor,  # variance of z, broadcastable with `mu`; must be >= 0
)->Tensor:       # E[relu(z)^2]
    "Second moment of relu(z) for z ~ N(mu, var) (Bibi et al. 2018, Lemma 1, for any mean)."
    mu, var = _unit_inputs(mu, var)
    s, zero = _safe_std(var)
    h = _saturated_ratio(mu, s, -60, 50)
    k, K = _pow2(torch.maximum(mu.abs(), s))
    u, t = mu * k, s * k                                    # mu and s rescaled exactly: u u cannot overflow
    out = ((u * u + var * k * k) * _normal_cdf(h) + u * t * _normal_pdf(h)) * K * K
    tail = (h < -_TAIL) & ~zero
    if tail.any(): out = torch.where(tail, _tail_moment(h, var, 2, tail), out)   # the lower tail without cancellation
    return torch.where(zero, mu.clamp(min=0) ** 2, out)


# %%
#| export
def relu_var(
    mu:Tensor,   # mean of z, any shape
    var:Tensor,  # variance of z, broadcastable with `mu`; must be >= 0
)->Tensor:       # Var[relu(z)] >= 0, accurate for any h = mu / s (no cancellation for h >> 0)
    "Variance of relu(z) for z ~ N(mu, var)."
    return _relu_var(*_unit_inputs(mu, var))

def _relu_var(mu, var):
    s, zero = _safe_std(var)
    h = _saturated_ratio(mu, s, -60, 50)
    P, Q, pdf = _normal_cdf(h), _normal_cdf(-h), _normal_pdf(h)
    lower = (h * h + 1) * P + h * pdf - (h * P + pdf) ** 2
    upper = 1 + (h * h - 1) * Q - h * pdf - (h * Q) ** 2 + 2 * h * pdf * Q - pdf * pdf
    out = var * torch.where(h < 0, lower, upper).clamp(min=0)
    tail = (h < -_TAIL) & ~zero
    if tail.any():                                          # E[r^2] - E[r]^2 there: the first is much the larger
        out = torch.where(tail, _tail_moment(h, var, 2, tail) - _tail_moment(h, s, 1, tail) ** 2, out)
    return torch.where(zero, torch.zeros_like(var), out)


# %% [markdown]
# A variance so small that its square root is subnormal (max pooling of noise confined to a few pixels leaves such
# variances behind) gives the limits of zero variance, and finite gradients: where $|\mu| / \sigma$ passes the clamp,
# the ratio is the bound itself, so no $0 \cdot \infty$ arises from $\partial(\mu/\sigma)/\partial\sigma$.

# %%
mu_t = torch.tensor([1., -1., 0.], dtype=torch.float64, requires_grad=True)
var_t = torch.tensor([1e-315, 1e-315, 1.], dtype=torch.float64, requires_grad=True)
vals = [f(mu_t, var_t) for f in (relu_mean, relu_second_moment, relu_var)]
test_eq([v[:2].tolist() for v in vals], [[1., 0.], [1., 0.], [1e-315, 0.]])   # var(relu z) = var when mu >> s
grads = torch.autograd.grad(sum(v.sum() for v in vals), (mu_t, var_t))
assert all(torch.isfinite(g).all() for g in grads), grads

# %% [markdown]
# Both match sympy's closed forms at 30 digits, and `relu_var` keeps its relative accuracy where the naive difference
# of moments does not ($h = 10^8$ below: the naive form returns garbage, ours the exact $s^2$ to machine precision):

# %%
second_ref = sp.lambdify((mu, s), second_closed, 'mpmath')
mp.mp.dps = 30
for m_, s_ in [(-2., 0.5), (0., 1.), (0.7, 1.1), (3., 0.2)]:
    test_close(relu_second_moment(torch.tensor(m_, dtype=torch.float64), s_**2).item(), float(second_ref(m_, s_)), eps=1e-14)
    v_ref = second_ref(mp.mpf(m_), mp.mpf(s_)) - mean_ref(mp.mpf(m_), mp.mpf(s_))**2
    test_close(relu_var(torch.tensor(m_, dtype=torch.float64), s_**2).item(), float(v_ref), eps=1e-14)
big = torch.tensor(1e8, dtype=torch.float64)
naive = relu_second_moment(big, 1.) - relu_mean(big, 1.) ** 2
test_close(relu_var(big, 1.), 1., eps=1e-15)
print(f'naive variance at h = 1e8: {naive.item():.3g} (true 1)')

# %% [markdown]
# ## Two ReLUs at zero mean: Lemma 3 from Price's theorem
# For zero-mean $(x_1, x_2)$ with covariance $\sigma_{12}$, [Price's theorem](04_price.ipynb)
# ([Price (1958)](99_references.ipynb#price1958); [Bibi et al. (2018)](99_references.ipynb#bibi2018), Lemma 2) says
# $\partial \mathbb E[\mathrm{relu}(x_1)\mathrm{relu}(x_2)]/\partial\sigma_{12} = \mathbb E[u(x_1)u(x_2)]
# = \Phi_2(0, 0; \rho) = \tfrac14 + \tfrac{\arcsin\rho}{2\pi}$, so
# $\partial^2 \mathbb E/\partial\sigma_{12}^2 = \varphi_2(0,0;\rho)/(s_1s_2) = \frac{1}{2\pi\sqrt{s_1^2s_2^2 - \sigma_{12}^2}}$.
# With the two boundary conditions at $\sigma_{12} = 0$ (independence): $\mathbb E = \mathbb E[\mathrm{relu}(x_1)]
# \mathbb E[\mathrm{relu}(x_2)] = s_1 s_2/(2\pi)$ and $\partial\mathbb E/\partial\sigma_{12} = \tfrac14$, sympy's
# `dsolve` returns Lemma 3 of [Bibi et al. (2018)](99_references.ipynb#bibi2018):
# $$\mathbb E[\mathrm{relu}(x_1)\mathrm{relu}(x_2)] = \frac{1}{2\pi}\Big(\sigma_{12}\arcsin\frac{\sigma_{12}}{s_1 s_2}
#   + s_1 s_2\sqrt{1 - \frac{\sigma_{12}^2}{s_1^2 s_2^2}}\Big) + \frac{\sigma_{12}}{4}.$$

# %%
s1, s2 = sp.symbols('s1 s2', positive=True)
c = sp.symbols('sigma12', real=True)
E = sp.Function('E')
ode = sp.Eq(E(c).diff(c, 2), 1 / (2 * sp.pi * sp.sqrt(s1**2 * s2**2 - c**2)))
solution = sp.dsolve(ode, E(c), ics={E(0): s1 * s2 / (2 * sp.pi), E(c).diff(c).subs(c, 0): sp.Rational(1, 4)}).rhs
lemma3 = (c * sp.asin(c / (s1 * s2)) + s1 * s2 * sp.sqrt(1 - c**2 / (s1**2 * s2**2))) / (2 * sp.pi) + c / 4
test_eq(sp.simplify(solution - lemma3), 0)
lemma3


# %% [markdown]
# The pair functions share their validation and their handling of limits. A zero variance makes the pair independent;
# correlations beyond $\pm1$ by round-off only (up to $10^3\epsilon$) are clamped to $\pm1$, larger ones are an error.

# %%
#| exporti
def _pair_inputs(**named):
    "Validate and broadcast the pair arguments, given by name: (mu1, mu2,) var1, var2, cov12."
    names = tuple(named)
    args = as_tensors(*named.values(), names=names)
    check_broadcast(names, *args)
    for n, x in zip(names, args):
        check_var(x, n) if n.startswith('var') else check_finite(x, n)
    args = torch.broadcast_tensors(*args)
    var1, var2, cov12 = args[-3:]
    bound = var1.sqrt() * var2.sqrt() * (1 + 1e3 * torch.finfo(var1.dtype).eps)   # not sqrt(var1 var2): it underflows
    if (cov12.abs() > bound).any():
        excess = (cov12.abs() - bound).max().item()
        raise ValueError(f'cov12^2 must be <= var1 * var2 (|rho| <= 1); exceeded by up to {excess:.3g}')
    return args

def _correlation(var1, var2, cov12):
    "std devs with zero-safe stand-ins, the zero masks, and rho clamped to [-1, 1] (0 where a variance is 0)."
    s1, zero1 = _safe_std(var1)
    s2, zero2 = _safe_std(var2)
    degenerate = zero1 | zero2
    (k1, _), (k2, _) = _pow2(s1), _pow2(s2)                # s1 s2 alone can overflow or underflow
    raw = torch.where(degenerate, torch.zeros_like(cov12), (cov12 * k1 * k2) / ((s1 * k1) * (s2 * k2)))
    rho = raw + (raw.clamp(-1, 1) - raw).detach()          # the value clamped, the gradient of the unclamped ratio
    return s1, s2, rho, degenerate

def _sqrt_1m_rho2(rho):
    "sqrt(1 - rho^2), accurate near |rho| = 1, with a zero (not infinite) gradient at |rho| = 1."
    r2 = (1 - rho) * (1 + rho)                 # not via |rho|: torch's d|rho|/drho = 0 at 0 spoils second derivatives
    return torch.where(r2 > 0, torch.where(r2 > 0, r2, torch.ones_like(r2)).sqrt(), torch.zeros_like(r2))

def _lemma3(var1, var2, cov12):
    s1, s2, rho, degenerate = _correlation(var1, var2, cov12)
    singular = rho.abs() == 1
    inner = torch.where(singular, torch.zeros_like(rho), rho)          # asin'(+-1) is infinite
    shape = torch.where(singular, rho.abs() * math.pi / 2, inner * torch.asin(inner) + _sqrt_1m_rho2(rho))
    out = s1 * s2 * shape / (2 * math.pi) + cov12 / 4
    return torch.where(degenerate, torch.zeros_like(out), out)


# %%
#| export
def relu_cross_moment_zero_mean(
    var1:Tensor,   # variance of x1, any shape; >= 0
    var2:Tensor,   # variance of x2, broadcastable
    cov12:Tensor,  # covariance of x1 and x2, |cov12| <= sqrt(var1 var2)
)->Tensor:         # E[relu(x1) relu(x2)] for zero-mean (x1, x2)
    "The product moment of two zero-mean ReLUs (Bibi et al. 2018, Lemma 3)."
    return _lemma3(*_pair_inputs(var1=var1, var2=var2, cov12=cov12))


# %% [markdown]
# It is the sympy solution, gives $s^2/2$ on the diagonal ($\sigma_{12} = s^2$, Lemma 1) and 0 for a zero variance:

# %%
lemma3_ref = sp.lambdify((s1, s2, c), lemma3, 'mpmath')
for a_, b_, r_ in [(0.5, 1.2, -0.7), (1., 1., 0.999), (2., 0.3, 0.)]:
    test_close(relu_cross_moment_zero_mean(torch.tensor(a_**2, dtype=torch.float64), b_**2, r_ * a_ * b_).item(),
               float(lemma3_ref(a_, b_, r_ * a_ * b_)), eps=1e-15)
test_close(relu_cross_moment_zero_mean(torch.tensor(3.), 3., 3.), 1.5, eps=1e-6)
test_eq(relu_cross_moment_zero_mean(torch.tensor(0.), 3., 0.).item(), 0.)

# %% [markdown]
# ## Two ReLUs at any mean: the exact closed form
# [Bibi et al. (2018)](99_references.ipynb#bibi2018) stop at zero mean (Lemma 3) and [Alfadly et al.
# (2020)](99_references.ipynb#alfadly2020) at a truncated series (Lemma 4, below). The moments of the truncated
# bivariate normal of [Rosenbaum (1961)](99_references.ipynb#rosenbaum1961) give the exact value for any means, through
# $\Phi_2$:
# $$\begin{aligned}\mathbb E[\mathrm{relu}(z_1)\mathrm{relu}(z_2)] ={}& (\mu_1\mu_2 + \sigma_{12})\,\Phi_2(h_1, h_2; \rho)
#   + \mu_1 s_2\,\varphi(h_2)\,\Phi\Big(\tfrac{h_1 - \rho h_2}{\sqrt{1-\rho^2}}\Big)
#   + \mu_2 s_1\,\varphi(h_1)\,\Phi\Big(\tfrac{h_2 - \rho h_1}{\sqrt{1-\rho^2}}\Big) \\
#   &+ s_1 s_2 (1-\rho^2)\,\varphi_2(h_1, h_2; \rho).\end{aligned}$$
# At zero mean $\Phi_2(0, 0; \rho) = \tfrac14 + \arcsin(\rho)/(2\pi)$, $\varphi(0)^2 = 1/(2\pi)$, and the form must
# collapse to Lemma 3; sympy checks it:

# %%
rho_ = sp.symbols('rho', real=True)
Phi2_00 = sp.Rational(1, 4) + sp.asin(rho_) / (2 * sp.pi)
phi2_00 = 1 / (2 * sp.pi * sp.sqrt(1 - rho_**2))
exact_at_zero = rho_ * s1 * s2 * Phi2_00 + s1 * s2 * (1 - rho_**2) * phi2_00
test_eq(sp.simplify(exact_at_zero - lemma3.subs(c, rho_ * s1 * s2)), 0)


# %% [markdown]
# The limits need care, and each is a `torch.where` on safe inputs: a zero variance makes the pair independent
# ($\mathbb E = \mathbb E[\mathrm{relu}(z_1)]\,\mathbb E[\mathrm{relu}(z_2)]$); at $|\rho| = 1$ the conditional
# arguments $(h_1 - \rho h_2)/\sqrt{1-\rho^2}$ become $\pm\infty$ (or 0 on the line $h_1 = \rho h_2$) and the last term
# vanishes; $h_1 - \rho h_2$ is computed as $(h_1 - \mathrm{sign}(\rho)h_2) + (\mathrm{sign}(\rho) - \rho)h_2$.
# Beyond $|h| = 50$ a unit is on or off with probability 1 to far below double precision: an off unit gives 0, and an
# on unit is $z$ itself, so $\mathbb E[z_1\mathrm{relu}(z_2)] = \mu_1\mathbb E[\mathrm{relu}(z_2)] + \sigma_{12}
# \Phi(h_2)$ (Stein's lemma) or $\mu_1\mu_2 + \sigma_{12}$; these forms keep values and gradients right even where
# $\mu_1\mu_2$ overflows. The result is clamped at 0: round-off can leave a tiny negative multiple of $s_1 s_2$.

# %%
#| export
def relu_cross_moment(
    mu1:Tensor,    # mean of z1, any shape
    mu2:Tensor,    # mean of z2, broadcastable
    var1:Tensor,   # variance of z1, >= 0
    var2:Tensor,   # variance of z2, >= 0
    cov12:Tensor,  # covariance of z1 and z2, |cov12| <= sqrt(var1 var2)
)->Tensor:         # E[relu(z1) relu(z2)] >= 0, exact; broadcast shape, dtype and device of the inputs
    "Exact E[relu(z1) relu(z2)] for a bivariate Gaussian with any means, elementwise with broadcasting."
    return _relu_cross_moment(*_pair_inputs(mu1=mu1, mu2=mu2, var1=var1, var2=var2, cov12=cov12))

def _relu_cross_moment(mu1, mu2, var1, var2, cov12):
    s1, s2, rho, degenerate = _correlation(var1, var2, cov12)
    on1, on2 = mu1 > 50 * s1, mu2 > 50 * s2                 # relu(z) = z there, to far below double precision
    off = (mu1 < -50 * s1) | (mu2 < -50 * s2)               # a unit that is never on: the moment is 0
    g1, g2 = (torch.where(on1 | on2 | off, torch.zeros_like(x), x) for x in (mu1, mu2))   # the rest, on safe means
    out = _relu_cross_moment_inner(g1, g2, s1, s2, rho)
    P1, P2 = _normal_cdf((mu1 / s1).clamp(-50, 50)), _normal_cdf((mu2 / s2).clamp(-50, 50))
    out = torch.where(on1 & on2, mu1 * mu2 + cov12,         # E[z1 z2]; E[z1 relu(z2)] by Stein's lemma:
                      torch.where(on1, mu1 * _relu_mean(mu2, var2) + cov12 * P2,
                                  torch.where(on2, mu2 * _relu_mean(mu1, var1) + cov12 * P1, out)))
    independent = _relu_mean(mu1, var1) * _relu_mean(mu2, var2)
    return torch.where(degenerate, independent, torch.where(off, torch.zeros_like(out), out)).clamp(min=0)

def _relu_cross_moment_inner(mu1, mu2, s1, s2, rho):
    "The closed form for |h1|, |h2| <= 50 (and zero-safe s1, s2)."
    h1, h2 = (mu1 / s1).clamp(-50, 50), (mu2 / s2).clamp(-50, 50)
    z12 = _conditional_z(h2, h1, rho)[0].clamp(-50, 50)   # (h1 - rho h2) / sqrt(1 - rho^2)
    z21 = _conditional_z(h1, h2, rho)[0].clamp(-50, 50)   # (h2 - rho h1) / sqrt(1 - rho^2)
    r = _sqrt_1m_rho2(rho)
    (k1, K1), (k2, K2) = _pow2(torch.maximum(mu1.abs(), s1)), _pow2(torch.maximum(mu2.abs(), s2))
    u1, t1, u2, t2 = mu1 * k1, s1 * k1, mu2 * k2, s2 * k2  # exact rescaling: the products below cannot overflow
    out = ((u1 * u2 + rho * t1 * t2) * bvn_cdf(h1, h2, rho)
           + u1 * t2 * _normal_pdf(h2) * _normal_cdf(z12)
           + u2 * t1 * _normal_pdf(h1) * _normal_cdf(z21)
           + t1 * t2 * r * _normal_pdf(h1) * _normal_pdf(z21)) * K1 * K2   # (1 - rho^2) phi2 = r phi(h1) phi(z21)
    return out

def _relu_cov_pair(mu1, mu2, var1, var2, cov12):
    "Cov[relu(z1), relu(z2)] without the cancellation of E[relu relu] - E[relu] E[relu] when mu >> s."
    # relu(z) = z + relu(-z): where mu > 0 the large linear part is taken out exactly (Stein: Cov(z1, relu(-z2)) =
    # -cov12 Phi(-h2)), which leaves moments of relu(-z), small there.
    f1, f2 = mu1 > 0, mu2 > 0
    g1, g2 = torch.where(f1, -mu1, mu1), torch.where(f2, -mu2, mu2)
    c = torch.where(f1 ^ f2, -cov12, cov12)
    rest = _relu_cross_moment(g1, g2, var1, var2, c) - _relu_mean(g1, var1) * _relu_mean(g2, var2)
    s1, s2 = _safe_std(var1)[0], _safe_std(var2)[0]
    P1, P2 = _normal_cdf(-(mu1 / s1).clamp(-50, 50).abs()), _normal_cdf(-(mu2 / s2).clamp(-50, 50).abs())
    lin = torch.where(f1, torch.where(f2, 1 - P1 - P2, P2), torch.where(f2, P1, torch.zeros_like(P1)))
    return cov12 * lin + rest


# %% [markdown]
# ### Check against a high-precision reference
# The reference integrates the route of [Alfadly et al. (2020)](99_references.ipynb#alfadly2020), eq 4: condition on
# $z_2$, use Remark 1 for $\mathbb E[\mathrm{relu}(z_1)\mid z_2]$, and integrate against $z_2$'s density over $z_2 > 0$,
# in mpmath at 20 digits, split where the conditional mean crosses 0. It shares no code with the closed form.

# %%
#| exporti
def _relu_cross_moment_mp(mu1, mu2, var1, var2, cov12, dps=20):
    "High-precision E[relu(z1) relu(z2)] by 1-D quadrature of Alfadly et al. 2020, eq 4 (dev-only: tests import it)."
    import mpmath as mp
    with mp.workdps(dps):
        m1, m2, v1, v2, c = (mp.mpf(x) for x in (mu1, mu2, var1, var2, cov12))
        rm = lambda m, v: max(m, 0) if v == 0 else m * mp.ncdf(m / mp.sqrt(v)) + mp.sqrt(v) * mp.npdf(m / mp.sqrt(v))
        if v1 == 0 or v2 == 0: return rm(m1, v1) * rm(m2, v2)
        s2 = mp.sqrt(v2)
        slope, cvar = c / v2, max(v1 - c * c / v2, mp.mpf(0))   # z1 | z2 = t ~ N(m1 + slope (t - m2), cvar)
        kink = m2 - m1 / slope if slope else None                  # where the conditional mean crosses 0
        cuts = sorted({t for t in (kink, m2 - 10 * s2, m2, m2 + 10 * s2) if t is not None and t > 0})
        f = lambda t: t * mp.npdf((t - m2) / s2) / s2 * rm(m1 + slope * (t - m2), cvar)
        return mp.quad(f, [0, *cuts, mp.inf])


# %% [markdown]
# A grid over the paper's range ($\mu \in [-2, 2]$, $s \in [0.2, 2]$, $\rho$ up to $\pm0.999$ and $\pm1/\sqrt2$)
# plus extremes: $|\mu/s|$ up to 30, $s$ down to $10^{-6}$, $|\rho| = 1$ exactly, zero variance.
# On the paper's grid the error is scaled by $s_1 s_2$. For the extremes that scale is meaningless (with
# $s_1 = 10^{-6}$ and $\mathbb E \approx 0.15$, one float64 ulp of the result is $3\cdot10^{-11} s_1 s_2$), so there
# the error is scaled by $\sqrt{(\mu_1^2 + s_1^2)(\mu_2^2 + s_2^2)}$, the Cauchy–Schwarz bound on the value itself.
# `tests/test_relu.py` runs a denser grid.

# %%
g = torch.Generator().manual_seed(3)
def pair_grid(n, gen):
    mu_ = (torch.rand(n, 2, generator=gen, dtype=torch.float64) * 4 - 2)
    s_ = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 1.8 + 0.2
    rho = torch.tensor([-1., -0.999, -2**-0.5, -0.3, 0., 0.5, 2**-0.5, 0.999, 1.], dtype=torch.float64)
    rho = rho[torch.randint(len(rho), (n,), generator=gen)]
    return mu_, s_, rho
mu_, s_, rho = pair_grid(60, g)
extreme = torch.tensor([   # mu1, mu2, s1, s2, rho
    [30., -30., 1., 1., 0.5], [30., 29., 1., 1., 0.999], [-30., -30., 1., 1., 0.9], [60., 3., 2., 0.1, -0.6],
    [1e-6, 2e-6, 1e-6, 1e-6, 0.3], [0.5, -0.2, 1e-6, 1., 0.7], [0.3, 0.3, 1., 1., 1.], [0.3, -0.1, 1., 2., -1.],
    [0.4, 1.2, 0., 1., 0.], [-0.4, 1.2, 0., 0., 0.], [2., 1., 1.5, 0.5, 0.99999999]], dtype=torch.float64)
mu_ = torch.cat([mu_, extreme[:, :2]]); s_ = torch.cat([s_, extreme[:, 2:4]]); rho = torch.cat([rho, extreme[:, 4]])
args = (mu_[:, 0], mu_[:, 1], s_[:, 0]**2, s_[:, 1]**2, rho * s_[:, 0] * s_[:, 1])
t0 = time.perf_counter()
reference = torch.tensor([float(_relu_cross_moment_mp(*a)) for a in zip(*(x.tolist() for x in args))], dtype=torch.float64)
t_ref = time.perf_counter() - t0
ours = relu_cross_moment(*args)
paper = torch.arange(len(ours)) < 60
bound = ((mu_**2 + s_**2).prod(1)).sqrt()
err_paper = ((ours - reference).abs() / s_.prod(1))[paper]
err_extreme = ((ours - reference).abs() / bound)[~paper]
print(f'{len(ours)} pairs (reference {t_ref:.1f} s): paper grid max |error| / (s1 s2) = {err_paper.max():.1e}; '
      f'extremes max |error| / sqrt((mu1^2 + s1^2)(mu2^2 + s2^2)) = {err_extreme.max():.1e}')
assert err_paper.max() < 1e-12 and err_extreme.max() < 1e-12 and torch.isfinite(ours).all()

# %% [markdown]
# And at zero mean the exact form reproduces Lemma 3:

# %%
test_close(relu_cross_moment(0., 0., s_[:, 0]**2, s_[:, 1]**2, args[4]),
           relu_cross_moment_zero_mean(s_[:, 0]**2, s_[:, 1]**2, args[4]), eps=1e-15)

# %% [markdown]
# ### Limits, gradients, errors
# Zero variance gives the independent product; $\rho = 1$ with equal standardized means gives the second moment;
# float32 and float64 agree to float32 precision:

# %%
m = torch.tensor([-1.0, 0.3, 2.0], dtype=torch.float64)
test_close(relu_cross_moment(m, 0.7, 0., 1.3, 0.), m.clamp(min=0) * relu_mean(torch.tensor(0.7, dtype=torch.float64), 1.3), eps=1e-15)
test_close(relu_cross_moment(m, m, 2., 2., 2.), relu_second_moment(m, 2.), eps=1e-14)
test_close(relu_cross_moment(m, 2 * m, 1., 4., -2.), relu_cross_moment(m, 2 * m, 1., 4., -2. * (1 - 1e-12)), eps=1e-10)
test_close(relu_cross_moment(*(a.float() for a in args)).double(), ours, eps=1e-5 * ours.abs().max())

# %% [markdown]
# Gradients are finite everywhere, including $|\rho| = 1$ and zero variance, and agree with finite differences in the
# interior (`gradcheck`, float64):

# %%
interior = torch.nonzero(rho.abs() < 0.99).squeeze(1)[:8]
pts = [x[interior].clone().requires_grad_() for x in args]
assert torch.autograd.gradcheck(relu_cross_moment, pts, eps=1e-6, atol=1e-7)
edge = [x[-5:].clone().requires_grad_() for x in args]
relu_cross_moment(*edge).sum().backward()
assert all(torch.isfinite(x.grad).all() for x in edge)

# %% [markdown]
# Where $\sigma_{12}/(s_1 s_2)$ rounds to $\pm1$ (or a hair beyond), $\rho$ is clamped but keeps the gradient of the
# unclamped ratio, so $\partial\mathbb E/\partial\sigma_{12}$ is still Price's $\Phi_2(h_1, h_2; \rho)$, which is
# $\Phi(\min(h_1, h_2))$ at $\rho = 1$ (`tests/test_relu.py` checks it against finite differences near $|\rho| = 1$):

# %%
at_one = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (.3, -.2, 3., 3., 3.)]
relu_cross_moment(*at_one).backward()
price_at_one = normal_cdf(torch.tensor(-.2 / 3**.5, dtype=torch.float64)).item()
test_close(at_one[4].grad.item(), price_at_one, eps=1e-12)
print(f'dE/dcov12 at rho = 1: {at_one[4].grad.item():.6f}; Price: Phi(min(h1, h2)) = {price_at_one:.6f}')

# %% [markdown]
# The products are formed from $\mu$ and $s$ divided by a power of two near $\max(|\mu|, s)$ and multiplied back at
# the end. The rescaling is exact, so it changes no digit of a representable result, and huge means give the limits
# ($0$ for $\mu \to -\infty$, $\infty$ where the moment overflows) instead of $\infty \cdot 0$:

# %%
huge = Table([[f'{m:.0e}', str(dt)[6:], relu_mean(torch.tensor(m, dtype=dt), 1.).item(),
               relu_second_moment(torch.tensor(m, dtype=dt), 1.).item(),
               relu_cross_moment(*(torch.tensor(v, dtype=dt) for v in (m, m, 1., 1., 0.5))).item()]
              for dt, ms in ((torch.float32, (-2e19, 2e19)), (torch.float64, (-1e160, 1e160))) for m in ms],
             ['mu', 'dtype', 'E[relu(z)]', 'E[relu(z)^2]', 'E[relu(z1) relu(z2)], rho = 0.5'], fmt='.4g')
assert not any(math.isnan(v) for row in huge.rows for v in row[2:])
huge

# %%
test_fail(lambda: relu_cross_moment(0., 0., 1., 1., 1.5), contains='cov12^2 must be <= var1 * var2')
test_fail(lambda: relu_cross_moment(0., 0., -1., 1., 0.), contains='var1 must be >= 0')
test_fail(lambda: relu_cross_moment(torch.ones(2), torch.ones(3), 1., 1., 0.), contains='shapes do not broadcast')
test_fail(lambda: relu_cross_moment(torch.ones(2), torch.ones(2, device='meta'), 1., 1., 0.), contains='one device')

# %% [markdown]
# ## Two ReLUs at any mean: the series of Lemma 4
# [Alfadly et al. (2020)](99_references.ipynb#alfadly2020), Lemma 4, writes the same moment as a closed part $\Omega$
# plus one integral, which it evaluates by a series. With $r = \sqrt{1-\rho^2}$, $a = \rho/r$,
# $b = \mu_1/(\sqrt2\, s_1 r)$, $\kappa = -\mu_2/(\sqrt2\, s_2)$, $w = a\kappa + b = (h_1 - \rho h_2)/(\sqrt2\, r)$ and
# $$I_{a,b}(x) = \frac{\sqrt\pi}{2}\int_0^x e^{-t^2}\operatorname{erf}(at + b)\,dt,$$
# eq 1 reads
# $$\mathbb E[\mathrm{relu}(z_1)\mathrm{relu}(z_2)] = \Omega + \frac{\mu_1\mu_2 + \rho s_1 s_2}{\pi}\begin{cases}
#   I_{a,b}(\infty) - I_{a,b}(\kappa), & |\rho| < 1/\sqrt2,\\[4pt]
#   \frac\pi4\operatorname{sign}(\rho) + \frac\pi4\operatorname{erf}(w)\operatorname{erf}\big(\tfrac{h_2}{\sqrt2}\big)
#   - \operatorname{sign}(\rho)\big[I_{1/|a|,\,-b/a}(\infty) - I_{1/|a|,\,-b/a}(\operatorname{sign}(\rho)\,w)\big],
#   & |\rho| > 1/\sqrt2,\end{cases}$$
# where the paper writes $w$ as $e_1^\top\tilde\Sigma\mu/\sqrt2$ and $1/|a|$, $-b/a$ as its $a_2 = \sqrt{1-\rho^2}/|\rho|$,
# $b_2 = -\mu_1/(\sqrt2\rho s_1)$. Eq 2, in this chapter's notation, is
# $$\Omega = \frac{\mu_1\mu_2 + \rho s_1 s_2}{2}\,\Phi(h_2) + \mu_1 s_2\,\varphi(h_2)\,\Phi\Big(\frac{h_1 - \rho h_2}{r}\Big)
#   + \mu_2 s_1\,\varphi(h_1)\,\Phi\Big(\frac{h_2 - \rho h_1}{r}\Big) + s_1 s_2 r^2\,\varphi_2(h_1, h_2; \rho),$$
# and eq 3 expands the integral in physicists' Hermite polynomials $H_n$ and the regularized lower incomplete gamma
# function $P$:
# $$I_{a,b}(x) = \frac\pi4\operatorname{erf}(x)\operatorname{erf}(b) + \frac{\sqrt\pi}{2}e^{-b^2}\sum_{u \ge 0}\Big[
#   \frac{(a/2)^{2u+1}}{\Gamma(u + \frac32)}P(u + 1, x^2)\,H_{2u}(b)
#   - \operatorname{sign}(x)\frac{(a/2)^{2u+2}}{\Gamma(u + 2)}P(u + \tfrac32, x^2)\,H_{2u+1}(b)\Big].$$
# At $x = \infty$ the sum converges for $|a| < 1$, i.e. $|\rho| < 1/\sqrt2$; above, eq 6 (an integration by parts)
# trades $a$ for $1/|a|$. `relu_cross_moment` above is exact and cheaper; this section proves the lemma, implements it
# as `relu_cross_moment_series` to compare against, and reproduces the paper's Fig. 2.

# %% [markdown]
# ### Where the lemma comes from
# Conditioning on $z_2$ (eq 4) and substituting $w = \sqrt2 z$ in
# $\Phi_2(h_1, h_2; \rho) = \int_{-h_2}^\infty \varphi(w)\,\Phi\big(\tfrac{h_1 + \rho w}{r}\big)\,dw$ turns the integrand
# into $\frac{e^{-z^2}}{2\sqrt\pi}\big(1 + \operatorname{erf}(az + b)\big)$ on $z > \kappa$. Its first half integrates to
# $\Phi(h_2)/2$, the second is $\frac1\pi\big(I_{a,b}(\infty) - I_{a,b}(\kappa)\big)$, so
# $$\Phi_2(h_1, h_2; \rho) = \tfrac12\Phi(h_2) + \tfrac1\pi\big(I_{a,b}(\infty) - I_{a,b}(\kappa)\big):$$
# Lemma 4 is the exact form above with $\Phi_2$ split this way, and $\Omega$ is the exact form with $\Phi_2$ replaced by
# $\Phi(h_2)/2$. sympy checks the substitution and the first half:

# %%
mu1, mu2, z_, w_ = sp.symbols('mu1 mu2 z w', real=True)
s1, s2 = sp.symbols('s1 s2', positive=True)
rho_ = sp.symbols('rho', real=True)
r_ = sp.sqrt(1 - rho_**2)
h1_, h2_ = mu1 / s1, mu2 / s2
a_, b_, kappa_ = rho_ / r_, mu1 / (sp.sqrt(2) * s1 * r_), -mu2 / (sp.sqrt(2) * s2)
conditional = (phi_s(w_) * Phi_s((h1_ + rho_ * w_) / r_)).subs(w_, sp.sqrt(2) * z_) * sp.sqrt(2)
test_eq(sp.simplify(conditional - sp.exp(-z_**2) / (2 * sp.sqrt(sp.pi)) * (1 + sp.erf(a_ * z_ + b_))), 0)
first_half = sp.integrate(sp.exp(-z_**2) / (2 * sp.sqrt(sp.pi)), (z_, kappa_, sp.oo))
test_eq(sp.simplify((first_half - Phi_s(h2_) / 2).rewrite(sp.erf)), 0)

# %% [markdown]
# The paper's $\Omega$ (eq 2) is written with $\tilde\Sigma = \mathrm{Diag}(\sqrt{|\Sigma|}/s_2, \sqrt{|\Sigma|}/s_1)
# \Sigma^{-1}$: its $e_1^\top\tilde\Sigma\mu$ and $e_2^\top\tilde\Sigma\mu$ are the conditional arguments
# $(h_1 - \rho h_2)/r$ and $(h_2 - \rho h_1)/r$, and its $\frac{\sqrt{|\Sigma|}}{2\pi}e^{-\mu^\top\Sigma^{-1}\mu/2}$ is
# $s_1 s_2 r^2\varphi_2(h_1, h_2; \rho)$; its remaining factors $\frac{1}{2\sqrt{2\pi}}e^{-h^2/2}(1 + \operatorname{erf}
# (\cdot/\sqrt2))$ are $\varphi(h)\Phi(\cdot)$. So the published $\Omega$ is the one above, term for term:

# %%
Sig = sp.Matrix([[s1**2, rho_ * s1 * s2], [rho_ * s1 * s2, s2**2]])
mvec = sp.Matrix([mu1, mu2])
det = sp.factor(Sig.det())
Sig_tilde = sp.diag(sp.sqrt(det) / s2, sp.sqrt(det) / s1) * Sig.inv()
phi2_s = sp.exp(-(h1_**2 - 2 * rho_ * h1_ * h2_ + h2_**2) / (2 * r_**2)) / (2 * sp.pi * r_)
test_eq(sp.simplify((Sig_tilde * mvec)[0] - (h1_ - rho_ * h2_) / r_), 0)
test_eq(sp.simplify((Sig_tilde * mvec)[1] - (h2_ - rho_ * h1_) / r_), 0)
test_eq(sp.simplify(sp.sqrt(det) / (2 * sp.pi) * sp.exp(-(mvec.T * Sig.inv() * mvec)[0] / 2) - s1 * s2 * r_**2 * phi2_s), 0)

# %% [markdown]
# ### The series (eq 3)
# Taylor-expanding $\operatorname{erf}(b + at)$ in $a$ gives $\operatorname{erf}(b) + \frac{2}{\sqrt\pi}e^{-b^2}
# \sum_{n \ge 0}(-1)^n H_n(b)\frac{(at)^{n+1}}{(n+1)!}$; integrating term by term against $e^{-t^2}$ gives incomplete
# gammas, and the duplication formula turns $(n+1)!$ into the $\Gamma$s of eq 3. sympy confirms the result for the first
# three pairs: the truncated eq 3 is zero at $x = 0$ and its $x$-derivative is $\frac{\sqrt\pi}{2}e^{-x^2}$ times the
# Taylor polynomial of degree 6, for $x > 0$ and (writing $x = -y$) for $x < 0$, so it is exactly the integral of the
# truncated integrand.

# %%
t_, x_, y_ = sp.symbols('t x y', positive=True)
a_s, b_s = sp.symbols('a b', real=True)
pairs = 3
P_s = lambda order, arg: sp.lowergamma(order, arg) / sp.gamma(order)
def eq3(x, sign, a=a_s, b=b_s):
    "Eq 3 of Alfadly et al. 2020 truncated after `pairs` pairs, for an upper limit x of the given sign."
    return sp.pi / 4 * sp.erf(x) * sp.erf(b) + sp.sqrt(sp.pi) / 2 * sp.exp(-b**2) * sum(
        (a / 2)**(2*u + 1) / sp.gamma(u + sp.Rational(3, 2)) * P_s(u + 1, x**2) * sp.hermite(2*u, b)
        - sign * (a / 2)**(2*u + 2) / sp.gamma(u + 2) * P_s(u + sp.Rational(3, 2), x**2) * sp.hermite(2*u + 1, b)
        for u in range(pairs))
taylor = sp.erf(b_s) + sum(2 / sp.sqrt(sp.pi) * (-1)**n * sp.hermite(n, b_s) * sp.exp(-b_s**2)
                           * (a_s * t_)**(n + 1) / sp.factorial(n + 1) for n in range(2 * pairs))
test_eq(sp.simplify(sp.series(sp.erf(a_s * t_ + b_s), a_s, 0, 2 * pairs + 1).removeO() - taylor), 0)
integrand = lambda x: sp.sqrt(sp.pi) / 2 * sp.exp(-x**2) * taylor.subs(t_, x)
test_eq(sp.simplify(sp.diff(eq3(x_, 1), x_) - integrand(x_)), 0)
test_eq(sp.simplify(sp.diff(eq3(-y_, -1), y_) + integrand(-y_)), 0)
test_eq((eq3(x_, 1).subs(x_, 0), eq3(-y_, -1).subs(y_, 0)), (0, 0))

# %% [markdown]
# ### Integration by parts (eq 6)
# For $|a| > 1$, integrating by parts with $\frac{\sqrt\pi}{2}e^{-t^2} = \frac\pi4\frac{d}{dt}\operatorname{erf}(t)$ and
# substituting $v = at + b$ in what remains gives the paper's eq 6,
# $$\frac{\sqrt\pi}{2}\int_\kappa^\infty e^{-t^2}\operatorname{erf}(at + b)\,dt
#   = -\frac\pi4\operatorname{erf}(a\kappa + b)\operatorname{erf}(\kappa) + \operatorname{sign}(a)\Big[\frac\pi4
#   - I_{1/|a|,\,-b/a}(\infty) + I_{1/|a|,\,-b/a}\big(\operatorname{sign}(a)(a\kappa + b)\big)\Big].$$
# Both sides vanish as $\kappa \to \infty$; sympy checks that their $\kappa$-derivatives agree for either sign of $a$:

# %%
kappa_s, b_6, t_6 = sp.symbols('kappa b t', real=True)
I_int = lambda a, b, x: sp.sqrt(sp.pi) / 2 * sp.Integral(sp.exp(-t_6**2) * sp.erf(a * t_6 + b), (t_6, 0, x))
for a in (sp.Symbol('a', positive=True), -sp.Symbol('alpha', positive=True)):
    lhs = sp.sqrt(sp.pi) / 2 * sp.Integral(sp.exp(-t_6**2) * sp.erf(a * t_6 + b_6), (t_6, kappa_s, sp.oo))
    rhs = (-sp.pi / 4 * sp.erf(a * kappa_s + b_6) * sp.erf(kappa_s) + sp.sign(a) * (
        sp.pi / 4 - I_int(1 / abs(a), -b_6 / a, sp.oo) + I_int(1 / abs(a), -b_6 / a, sp.sign(a) * (a * kappa_s + b_6))))
    test_eq(sp.simplify(sp.diff(lhs, kappa_s) - sp.diff(rhs, kappa_s)), 0)


# %% [markdown]
# ### Check against quadrature
# At 30 digits in mpmath: $I_{a,b}$ by quadrature, eq 3 truncated, and the whole of eq 1 + eq 2 (with its integrals by
# quadrature, so no truncation) against `_relu_cross_moment_mp` (the conditional integral of eq 4, above).

# %%
def erf_integral_mp(a, b, x):
    "I_{a,b}(x) by 30-digit quadrature; x may be mp.inf."
    f = lambda t: mp.exp(-t * t) * mp.erf(a * t + b)
    return mp.sqrt(mp.pi) / 2 * mp.quad(f, [0, 2, 6, mp.inf] if x == mp.inf else [0, x])

def erf_integral_series_mp(a, b, x, terms):
    "I_{a,b}(x) by the first `terms` pairs of eq 3."
    P = (lambda order: 1) if x == mp.inf else (lambda order: mp.gammainc(order, 0, x * x, regularized=True))
    sign = 1 if x == mp.inf else mp.sign(x)
    total = sum((a / 2)**(2*u + 1) / mp.gamma(u + 1.5) * P(u + 1) * mp.hermite(2*u, b)
                - sign * (a / 2)**(2*u + 2) / mp.gamma(u + 2) * P(u + 1.5) * mp.hermite(2*u + 1, b) for u in range(terms))
    return mp.pi / 4 * (1 if x == mp.inf else mp.erf(x)) * mp.erf(b) + mp.sqrt(mp.pi) / 2 * mp.exp(-b * b) * total


# %% [markdown]
# Eq 1 with $\Omega$ exactly as eq 2 prints it, through $|\Sigma|$, $\Sigma^{-1}$ and $e_i^\top\tilde\Sigma\mu$:

# %%
def lemma4_mp(mu1, mu2, var1, var2, cov12, I=erf_integral_mp):
    "Eq 1 of Alfadly et al. 2020 with Omega as printed in eq 2 (Sigma-tilde form) and the integrals I by `I`."
    mu1, mu2, var1, var2, cov12 = map(mp.mpf, (mu1, mu2, var1, var2, cov12))
    s1, s2, det = mp.sqrt(var1), mp.sqrt(var2), var1 * var2 - cov12**2
    rho, sq2 = cov12 / (s1 * s2), mp.sqrt(2)
    t1, t2 = (s2 * mu1 - rho * s1 * mu2) / mp.sqrt(det), (s1 * mu2 - rho * s2 * mu1) / mp.sqrt(det)  # e_i' S~ mu
    omega = (mp.sqrt(det) / (2 * mp.pi) * mp.exp(-(var2 * mu1**2 - 2 * cov12 * mu1 * mu2 + var1 * mu2**2) / (2 * det))
             + mu1 * s2 / (2 * mp.sqrt(2 * mp.pi)) * mp.exp(-mu2**2 / (2 * var2)) * (1 + mp.erf(t1 / sq2))
             + mu2 * s1 / (2 * mp.sqrt(2 * mp.pi)) * mp.exp(-mu1**2 / (2 * var1)) * (1 + mp.erf(t2 / sq2))
             + (mu1 * mu2 + cov12) / 4 * (1 + mp.erf(mu2 / (sq2 * s2))))
    if abs(rho) < 1 / sq2:
        a1, b1 = rho / mp.sqrt(1 - rho**2), mu1 * s2 / mp.sqrt(2 * det)
        tail = I(a1, b1, mp.inf) - I(a1, b1, -mu2 / (sq2 * s2))
    else:
        a2, b2, sg = mp.sqrt(1 - rho**2) / abs(rho), -mu1 / (sq2 * rho * s1), mp.sign(rho)
        tail = (mp.pi / 4 * sg + mp.pi / 4 * mp.erf(t1 / sq2) * mp.erf(mu2 / (sq2 * s2))
                - sg * (I(a2, b2, mp.inf) - I(a2, b2, sg * t1 / sq2)))
    return omega + (mu1 * mu2 + cov12) / mp.pi * tail


# %% [markdown]
# Eq 6 holds to 30 digits at points on both sides of $a = 0$, and eq 1 as published, in both of its cases, is the
# exact moment. These are the equations as we read them in the extracted text of the paper; where that text is garbled
# (the $\sqrt\pi$ factors of eqs 1, 3, 5, 6), the reading that holds is $(\mu_1\mu_2 + \rho s_1 s_2)/\pi$ in eq 1,
# $\frac{\sqrt\pi}{2}e^{-b^2}$ in eq 3 and $(\mu_1\mu_2 + \rho s_1 s_2)/(2\sqrt\pi)$ in front of
# $\int_\kappa^\infty e^{-z^2}\operatorname{erf}(az + b)\,dz$ in eq 5, all consistent with each other; none needed a
# correction.

# %%
with mp.workdps(30):
    for a, b, kappa in [(1.7, 0.4, -0.3), (-3.2, -1.1, 0.8), (25., 2.5, 1.2)]:
        a, b, kappa = map(mp.mpf, (a, b, kappa))
        lhs = mp.sqrt(mp.pi) / 2 * mp.quad(lambda t: mp.exp(-t * t) * mp.erf(a * t + b), [kappa, kappa + 3, mp.inf])
        J = lambda x: erf_integral_mp(1 / abs(a), -b / a, x)
        rhs = -mp.pi / 4 * mp.erf(a * kappa + b) * mp.erf(kappa) + mp.sign(a) * (
            mp.pi / 4 - J(mp.inf) + J(mp.sign(a) * (a * kappa + b)))
        assert abs(lhs - rhs) < 1e-25, (a, b, kappa, lhs - rhs)
    l4_points = [(0.3, -0.5, 1.2, 0.7, 0.37), (-1., 0.8, 0.5, 2., -0.9), (1.5, 0., 0.6, 1.1, 0.),
                 (0.4, 0.3, 1., 1., 0.72), (-1., 1.5, 2., 0.5, 0.999), (2., -2., 0.04, 4., -0.3)]
    for p in l4_points:
        p = (*p[:4], p[4] * math.sqrt(p[2] * p[3]))   # rho -> cov12
        assert abs(lemma4_mp(*p) - _relu_cross_moment_mp(*p, dps=30)) < 1e-20, p

# %% [markdown]
# The truncated series against quadrature: for $|a| < 1$ the error falls geometrically with the number of terms, at
# $x = \infty$ as at finite $x$; at finite $x$ it converges for any $a$ (the last row, $a = 2$: eq 3 is then an
# entire function of $a$, since $P(u, x^2)$ decays like $x^{2u}/u!$), so only $I_{a,b}(\infty)$ needs $|a| < 1$ (the
# paper states the condition for both):

# %%
terms_list = [1, 5, 10, 20, 50]
l4_cases = [(0.3, 0.5, mp.inf), (-0.6, 1.2, mp.inf), (0.9, -2., mp.inf), (0.9, 0.7, -1.3), (2., 0.4, 0.8)]
with mp.workdps(30):
    conv = [[abs(erf_integral_series_mp(mp.mpf(a), mp.mpf(b), mp.mpf(x), n) - erf_integral_mp(mp.mpf(a), mp.mpf(b), mp.mpf(x)))
             for n in terms_list] for a, b, x in l4_cases]
assert all(row[-1] < 1e-7 for row in conv) and all(row[2] < row[1] < row[0] for row in conv[:4])
conv_head = [f'{n} terms' for n in terms_list]
Table([[a, b, str(x), *(float(e) for e in row)] for (a, b, x), row in zip(l4_cases, conv)], ['a', 'b', 'x', *conv_head],
      fmt={'a': 'g', 'b': 'g', **dict.fromkeys(conv_head, '.1e')}, caption='|eq 3 truncated - quadrature|')

# %% [markdown]
# ### Evaluating the series in torch
# Term by term, eq 3 overflows or underflows: $H_n(b)$ grows like $(2b)^n$, $\Gamma(u + \frac32)$ like $u!$, and
# $e^{-b^2}$ underflows (float32 at $|b| > 9.4$; $|b|$ reaches 9.9 on the paper's grid). We fold the three into one
# sequence, with $n = 2u$ and $n = 2u + 1$ the two members of pair $u$,
# $$g_n = \frac{(a/2)^{n+1}e^{-b^2}H_n(b)}{\Gamma(n/2 + 3/2)}, \qquad
#   g_{n+1} = ab\,\frac{\Gamma(n/2 + 3/2)}{\Gamma(n/2 + 2)}\,g_n - a^2\frac{n}{n+2}\,g_{n-1},$$
# from the Hermite recurrence $H_{n+1} = 2bH_n - 2nH_{n-1}$ (sympy checks it below), with $g_0 = ae^{-b^2}/\sqrt\pi$,
# $g_1 = a^2be^{-b^2}/2$. For $|a| \le 1$ the $g_n$ stay bounded; we keep them as a mantissa pair times $e^{\text{scale}}$,
# rescaled by a power of two every step (exact, so float64 results are unchanged), and $e^{-b^2}$ never underflows on its
# own. The incomplete gammas follow from $P(1, y) = 1 - e^{-y}$, $P(\frac32, y) = \operatorname{erf}(\sqrt y) -
# 2\sqrt{y/\pi}\,e^{-y}$ and $P(s + 1, y) = P(s, y) - y^s e^{-y}/\Gamma(s + 1)$: one multiply per order instead of a
# `torch.special.gammainc` call per order, which costs far more and whose gradient is NaN at $y = 0$ for $s = 1$
# (that is $\mu_2 = 0$). The upward recurrence keeps an absolute error of a few $\epsilon$ per step; that is enough
# because the $g_n$ it multiplies are bounded when $|a| \le 1$, the only case we call it with.

# %%
n_s = sp.symbols('n', integer=True, nonnegative=True)
g_s = lambda n: (a_s / 2)**(n + 1) * sp.exp(-b_s**2) * sp.hermite(n, b_s) / sp.gamma(sp.Rational(n, 2) + sp.Rational(3, 2))
for n in range(1, 7):
    step = (a_s * b_s * sp.gamma(sp.Rational(n, 2) + sp.Rational(3, 2)) / sp.gamma(sp.Rational(n, 2) + 2) * g_s(n)
            - a_s**2 * sp.Rational(n, n + 2) * g_s(n - 1))
    test_eq(sp.simplify(g_s(n + 1) - step), 0)
test_eq(sp.simplify(g_s(0) - a_s * sp.exp(-b_s**2) / sp.sqrt(sp.pi)), 0)


# %%
#| exporti
def _erf_integral_series(
    a:Tensor,   # slope inside erf; |a| <= 1 (the sum at x = inf converges for |a| < 1)
    b:Tensor,   # offset inside erf, broadcastable with `a`
    x:Tensor,   # upper limit, +inf allowed, broadcastable with `a` and `b`
    terms:int,  # pairs u = 0 .. terms-1 kept in the sum of eq 3 (Alfadly et al. 2020)
)->Tensor:      # I_{a,b}(x) = (sqrt(pi)/2) int_0^x exp(-t^2) erf(a t + b) dt, truncated
    "Eq 3 of Alfadly et al. 2020 by recurrences: Hermite terms rescaled by powers of two, incomplete gammas two orders at a time."
    inf = torch.isinf(x)
    one = torch.ones_like(x)
    x = torch.where(inf, one, x)                                  # safe value; P = 1, sign = 1, erf = 1 below
    y, ax, sgn, ey = x * x, x.abs(), torch.where(inf, one, x.sign()), torch.exp(-x * x)
    ab, aa = a * b, a * a
    g0, g1, scale = a / math.sqrt(math.pi), aa * b / 2, -b * b       # (g_n, g_n+1) = (g0, g1) * exp(scale)
    p0 = torch.where(inf, one, -torch.expm1(-y))                  # P(n/2 + 1, y)
    p1 = torch.where(inf, one, torch.erf(ax) - 2 * ax * ey / math.sqrt(math.pi))
    d0 = torch.where(inf, 0 * one, y * ey)                        # y^(n/2 + 1) e^-y / Gamma(n/2 + 2)
    d1 = torch.where(inf, 0 * one, y * ax * ey / math.gamma(2.5))
    total = 0
    for n in range(2 * terms):
        term = g0 * torch.exp(scale) * p0
        total = total + (term if n % 2 == 0 else -sgn * term)
        ratio = math.exp(math.lgamma(n / 2 + 2) - math.lgamma(n / 2 + 2.5))
        g0, g1 = g1, (ab * ratio) * g1 - (aa * (n + 1) / (n + 3)) * g0
        p0, p1, d0, d1 = p1, p0 - d0, d1, d0 * y / (n / 2 + 2)
        e = torch.frexp(torch.maximum(g0.abs(), g1.abs()).detach())[1].to(g0.dtype)   # a power of two, no gradient
        f = torch.exp2(-e)                          # not torch.ldexp: its gradient is 0 for negative exponents
        g0, g1, scale = g0 * f, g1 * f, scale + e * math.log(2)
    return math.pi / 4 * torch.where(inf, one, torch.erf(x)) * torch.erf(b) + math.sqrt(math.pi) / 2 * total


# %% [markdown]
# It is the truncated eq 3 to rounding, in float64 and float32, at $x = \infty$, $x = 0$, $x < 0$ and $|b| = 10$
# (where $e^{-b^2}$ alone underflows float32):

# %%
l4_abx = [(0.5, 0.3, 1.2), (-0.8, 1.5, -0.7), (0.9, -2., math.inf), (0.99, 7., math.inf), (0.6, 0., 0.),
          (0.98, 10., math.inf), (-0.98, 10., -3.), (0.7, -9.9, 0.5)]
l4_A, l4_B, l4_X = torch.tensor(l4_abx, dtype=torch.float64).T
for n in (1, 5, 20):
    with mp.workdps(30):
        ref = torch.tensor([float(erf_integral_series_mp(mp.mpf(a), mp.mpf(b), mp.mpf(x), n))
                            for a, b, x in l4_abx], dtype=torch.float64)
    test_close(_erf_integral_series(l4_A, l4_B, l4_X, n), ref, eps=1e-14)
    test_close(_erf_integral_series(l4_A.float(), l4_B.float(), l4_X.float(), n).double(), ref, eps=1e-6)


# %% [markdown]
# Both cases of eq 1 need the same thing, $\frac{\sqrt\pi}{2}\int_\xi^\infty e^{-t^2}\operatorname{erf}(\alpha t +
# \beta)\,dt = I_{\alpha,\beta}(\infty) - I_{\alpha,\beta}(\xi)$, with $(\alpha, \beta, \xi) = (a, b, \kappa)$ below the
# disjunction and $(1/|a|, -b/a, \operatorname{sign}(\rho)w)$ above it. So we select the three arguments elementwise
# (from safe values in the case not taken) and evaluate one series for the whole batch, sharing the $g_n$ between the
# two upper limits. At $|\rho| = 1/\sqrt2$ exactly, which eq 1 leaves out, we take the second case; there
# $|a| = 1/|a| = 1$, and both cases converge equally slowly (below).

# %%
#| exporti
def _lemma4_integral(h1, h2, rho, terms):
    "(sqrt(pi)/2) int_kappa^inf exp(-t^2) erf(a t + b) dt of Alfadly et al. 2020, eq 5, by eq 3 or, for |rho| >= 1/sqrt2, eq 6."
    direct = rho.abs() < 1 / math.sqrt(2)
    r = (1 - rho * rho).sqrt()
    sgn = torch.where(rho < 0, -torch.ones_like(rho), torch.ones_like(rho))
    w = (h1 - rho * h2) / (math.sqrt(2) * r)                              # a kappa + b
    rho_p = torch.where(direct, torch.ones_like(rho), rho)               # safe where the case is not taken
    alpha = torch.where(direct, rho / r, r / rho_p.abs())                 # a, or 1/|a|
    beta = torch.where(direct, h1 / (math.sqrt(2) * r), -h1 / (math.sqrt(2) * rho_p))   # b, or -b/a
    xi = torch.where(direct, -h2 / math.sqrt(2), sgn * w)                 # kappa, or sign(a)(a kappa + b)
    I = _erf_integral_series(alpha, beta, torch.stack([torch.full_like(xi, math.inf), xi]), terms)
    by_parts = math.pi / 4 * (sgn + torch.erf(h2 / math.sqrt(2)) * torch.erf(w)) - sgn * (I[0] - I[1])
    return torch.where(direct, I[0] - I[1], by_parts)


# %% [markdown]
# With 50 terms it is the integral to $10^{-13}$ away from the disjunction, on both sides of it:

# %%
l4_hhr = [(0.4, -0.3, 0.), (-1.5, 2., 0.5), (3., 1., -0.6), (0.4, -0.3, 0.8), (-1.5, 2., -0.95), (2., 2., 0.999)]
with mp.workdps(30):
    ref = []
    for h1_v, h2_v, rho_v in l4_hhr:
        a_v, b_v = rho_v / mp.sqrt(1 - mp.mpf(rho_v)**2), h1_v / mp.sqrt(2 * (1 - mp.mpf(rho_v)**2))
        ref.append(float(erf_integral_mp(a_v, b_v, mp.inf) - erf_integral_mp(a_v, b_v, -h2_v / mp.sqrt(2))))
l4_H1, l4_H2, l4_R = torch.tensor(l4_hhr, dtype=torch.float64).T
test_close(_lemma4_integral(l4_H1, l4_H2, l4_R, 50), torch.tensor(ref, dtype=torch.float64), eps=1e-13)


# %% [markdown]
# `relu_cross_moment_series` is Lemma 4 as published: $\Omega$ plus the truncated integral, elementwise with
# broadcasting, differentiable. The lemma needs $s_1, s_2 > 0$ and $|\rho| < 1$ (it divides by both); rather than
# take limits the paper does not give, it raises a `ValueError` there and names `relu_cross_moment`, which handles them.
# Where $|h_1|$ or $|h_2|$ exceeds 50 (the Gaussian tail beyond is below float64 resolution, and the series' terms
# overflow for means far beyond) it returns the exact closed form instead.
# `terms` counts pairs $u$ of eq 3, as the paper's Fig. 2 does; the paper uses 5.

# %%
#| export
def relu_cross_moment_series(
    mu1:Tensor,    # mean of z1, any shape
    mu2:Tensor,    # mean of z2, broadcastable
    var1:Tensor,   # variance of z1, > 0 (0 raises: use relu_cross_moment)
    var2:Tensor,   # variance of z2, > 0
    cov12:Tensor,  # covariance of z1 and z2, |cov12| < sqrt(var1 var2) (|rho| = 1 raises: use relu_cross_moment)
    terms:int=5,   # pairs u = 0 .. terms-1 kept in each series of eq 3 (Alfadly et al. 2020)
)->Tensor:         # E[relu(z1) relu(z2)] by the truncated series; broadcast shape, dtype and device of the inputs
    "E[relu(z1) relu(z2)] for a bivariate Gaussian with any means by Alfadly et al. 2020, Lemma 4, its series truncated."
    terms = check_count(terms, 'terms', 1)
    mu1, mu2, var1, var2, cov12 = _pair_inputs(mu1=mu1, mu2=mu2, var1=var1, var2=var2, cov12=cov12)
    for name, v in (('var1', var1), ('var2', var2)):
        if (v == 0).any(): raise ValueError(f'{name} must be > 0 for Lemma 4; it holds 0 (relu_cross_moment takes that limit)')
    s1, s2 = var1.sqrt(), var2.sqrt()
    rho = cov12 / (s1 * s2)
    if (rho.abs() >= 1).any():
        raise ValueError('Lemma 4 needs |rho| < 1; |cov12| = sqrt(var1 * var2) found (relu_cross_moment takes that limit)')
    far = (mu1.abs() > 50 * s1) | (mu2.abs() > 50 * s2)    # |h| > 50: the exact form (the series' terms overflow)
    series = _lemma4(*(torch.where(far, torch.zeros_like(x), x) for x in (mu1, mu2)), s1, s2, cov12, rho, terms)
    if not far.any(): return series
    return torch.where(far, _relu_cross_moment(mu1, mu2, var1, var2, cov12), series)

def _lemma4(mu1, mu2, s1, s2, cov12, rho, terms):
    "Omega of eq 2 plus the truncated integral of eq 5 (Alfadly et al. 2020), for s1, s2 > 0 and |rho| < 1."
    h1, h2, r = mu1 / s1, mu2 / s2, (1 - rho * rho).sqrt()
    z12, z21 = (h1 - rho * h2) / r, (h2 - rho * h1) / r
    omega = ((mu1 * mu2 + cov12) * _normal_cdf(h2) / 2 + mu1 * s2 * _normal_pdf(h2) * _normal_cdf(z12)
             + mu2 * s1 * _normal_pdf(h1) * _normal_cdf(z21) + s1 * s2 * r * _normal_pdf(h1) * _normal_pdf(z21))  # eq 2
    return omega + (mu1 * mu2 + cov12) / math.pi * _lemma4_integral(h1, h2, rho, terms)


# %% [markdown]
# Away from the disjunction it converges to the exact moment as `terms` grows, on both sides of it:

# %%
l4_pts = torch.tensor([(0.3, -0.5, 1.2, 0.7, 0.37), (-1., 0.8, 0.5, 2., -0.5), (1.5, 0., 0.6, 1.1, 0.),
                       (0.4, 0.3, 1., 1., 0.8), (-1., 1.5, 2., 0.5, 0.999), (2., -2., 0.04, 4., -0.3)], dtype=torch.float64)
l4_args = (*l4_pts[:, :4].T, l4_pts[:, 4] * (l4_pts[:, 2] * l4_pts[:, 3]).sqrt())
l4_ref = torch.tensor([float(_relu_cross_moment_mp(*p, dps=30)) for p in zip(*(x.tolist() for x in l4_args))],
                      dtype=torch.float64)
l4_err = [(relu_cross_moment_series(*l4_args, terms=n) - l4_ref).abs().max().item() for n in (1, 5, 20, 50)]
assert l4_err[0] > l4_err[1] > l4_err[2] > l4_err[3] and l4_err[3] < 1e-14, l4_err
test_close(relu_cross_moment_series(*l4_args, terms=50), relu_cross_moment(*l4_args), eps=1e-14)

# %% [markdown]
# Shape, dtype and device follow the inputs; float32 agrees with float64 to float32 precision:

# %%
out = relu_cross_moment_series(torch.zeros(4, 1), torch.linspace(-1, 1, 3), 1., 2., 0.5)
test_eq((out.shape, out.dtype, out.device), (torch.Size([4, 3]), torch.float32, torch.device('cpu')))
test_close(relu_cross_moment_series(*(x.float() for x in l4_args), terms=50).double(), l4_ref, eps=2e-6)

# %% [markdown]
# Gradients agree with finite differences (`gradcheck`, float64) in both cases of eq 1, including $\rho = 0$ and
# $\mu_2 = 0$ (where $\kappa = 0$), and where the recurrence rescales its terms down by powers of two (there by
# multiplying with `exp2`: `torch.ldexp` has a zero gradient for negative exponents):

# %%
l4_leaves = [x.clone().requires_grad_() for x in l4_args]
assert torch.autograd.gradcheck(lambda *a: relu_cross_moment_series(*a, terms=10), l4_leaves, eps=1e-6, atol=1e-8)
rescaled = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in ([-3.2, -3.2], [-0.5, 0.5], [1., 1.], [1., 1.], [0.6, 0.75])]
assert torch.autograd.gradcheck(lambda *a: relu_cross_moment_series(*a, terms=5), rescaled, eps=1e-6, atol=1e-8)   # terms rescaled by 2^-e

# %% [markdown]
# The excluded points and bad input are refused, by name:

# %%
test_fail(lambda: relu_cross_moment_series(0., 0., 0., 1., 0.), contains='var1 must be > 0 for Lemma 4')
test_fail(lambda: relu_cross_moment_series(0., 0., 1., 4., -2.), contains='Lemma 4 needs |rho| < 1')
test_fail(lambda: relu_cross_moment_series(0., 0., 1., 1., 1.5), contains='cov12^2 must be <= var1 * var2')
test_fail(lambda: relu_cross_moment_series(0., 0., -1., 1., 0.), contains='var1 must be >= 0')
test_fail(lambda: relu_cross_moment_series(torch.tensor([float('nan')]), 0., 1., 1., 0.), contains='mu1 must be finite')
test_fail(lambda: relu_cross_moment_series(torch.ones(2), torch.ones(3), 1., 1., 0.), contains='shapes do not broadcast')
test_fail(lambda: relu_cross_moment_series(0., 0., 1., 1., 0., terms=0), contains='terms must be >= 1')
test_fail(lambda: relu_cross_moment_series(0., 0., 1., 1., 0., terms=2.5), contains='terms must be an int', exc=TypeError)

# %% [markdown]
# Beyond $|h| = 50$ the value is the exact one, with no NaN even at means near the float64 limit:

# %%
huge = torch.tensor([-1e300, -60., 60., 1e300], dtype=torch.float64)
test_eq(relu_cross_moment_series(huge, 0.7, 1., 2., 0.5), relu_cross_moment(huge, 0.7, 1., 2., 0.5))
assert torch.isfinite(relu_cross_moment_series(huge, 0.7, 1., 2., 0.5)).all()


# %% [markdown]
# ### Fig. 2 of the paper: error against the number of terms
# The paper's grid: $\mu_1, \mu_2 \in [-2, 2]$ and $s_1, s_2 \in [0.2, 2]$ in steps of 0.2, and "$\rho$ sampled
# uniformly from the grid $[-0.7, 0.7]$ with 0.2 spacing", plus $\rho = 0$ and $0.999$. We read the $\rho$ grid as
# $\pm0.1, \pm0.3, \pm0.5, \pm0.7$ (adding 0 separately suggests 0 is not on it): $21^2 \cdot 10^2 \cdot 10 = 441{,}000$
# combinations. The paper's reference was Monte Carlo; ours is the exact `relu_cross_moment`, whose own error against
# `_relu_cross_moment_mp` we measure on a sample and draw beside the series. By default we run every second $\mu$
# (step 0.4) and $s \in \{0.2, 0.8, 1.4, 2\}$, all ten $\rho$: 19,360 combinations, whose maxima are within 25% of
# the full grid's at 1 to 20 terms; the full grid is the slow cell below. The disjunction $\rho = \pm1/\sqrt2$ is
# run on the same $(\mu, s)$ grid, separately.

# %%
def fig2_grid(mu_step, s_values, rhos):
    "The (mu1, mu2, var1, var2, cov12) of every combination, flattened, and rho."
    mu_axis = torch.arange(-2, 2 + 1e-9, mu_step, dtype=torch.float64)
    M1, M2, S1, S2, R = (x.reshape(-1) for x in torch.meshgrid(
        mu_axis, mu_axis, torch.tensor(s_values, dtype=torch.float64), torch.tensor(s_values, dtype=torch.float64),
        torch.tensor(rhos, dtype=torch.float64), indexing='ij'))
    return (M1, M2, S1**2, S2**2, R * S1 * S2), R

def fig2_errors(args, R, groups, terms_list=terms_list):
    "Max |series - exact| per group of rho and per number of terms."
    exact = relu_cross_moment(*args)
    errs = torch.stack([(relu_cross_moment_series(*args, terms=n) - exact).abs() for n in terms_list])
    return {name: [errs[j][keep(R)].max().item() for j in range(len(terms_list))] for name, keep in groups.items()}


# %% [markdown]
# The subsampled grid, the disjunction on the same $(\mu, s)$, the exact form's own error on 8 of its points, and the
# table beside the paper's figures:

# %%
paper_rhos = [-0.7, -0.5, -0.3, -0.1, 0., 0.1, 0.3, 0.5, 0.7, 0.999]
fig2_groups = {'paper grid': lambda R: R == R, '|rho| <= 0.5, 0.999': lambda R: R.abs() < 0.6,
               'rho = +-0.7': lambda R: R.abs() == 0.7}
t0 = time.perf_counter()
sub_args, sub_R = fig2_grid(0.4, [0.2, 0.8, 1.4, 2.0], paper_rhos)
fig2 = fig2_errors(sub_args, sub_R, fig2_groups)
dis_args, dis_R = fig2_grid(0.4, [0.2, 0.8, 1.4, 2.0], [-2**-0.5, 2**-0.5])
fig2.update(fig2_errors(dis_args, dis_R, {'rho = +-1/sqrt2': lambda R: R == R}))
t_fig2 = time.perf_counter() - t0
fig2_sample = torch.randperm(len(sub_R), generator=torch.Generator().manual_seed(4))[:8]
fig2_exact = max(abs(relu_cross_moment(*(x[i] for x in sub_args)).item() - float(_relu_cross_moment_mp(*(x[i].item() for x in sub_args), dps=30)))
                 for i in fig2_sample.tolist())
paper_fig2 = {5: '~1e-4 (away from +-1/sqrt2)', 20: '10^-2.5 = 3.2e-3'}
assert 4e-3 < fig2['rho = +-0.7'][3] < 7e-3 and 1e-2 < fig2['rho = +-1/sqrt2'][3] < 1.5e-2
assert fig2['|rho| <= 0.5, 0.999'][1] < 2e-4 and fig2['|rho| <= 0.5, 0.999'][3] < 1e-11 and fig2_exact < 1e-14

def fig2_table(errors, caption):
    "Max |error| by number of terms and group of rho, beside the paper's Fig. 2."
    return Table([[n, *(v[j] for v in errors.values()), paper_fig2.get(n)] for j, n in enumerate(terms_list)],
                 ['terms', *errors, 'Alfadly et al. (2020), Fig. 2'], fmt=dict.fromkeys(errors, '.1e'), caption=caption)
fig2_table(fig2, f'{len(sub_R) + len(dis_R)} combinations, {t_fig2:.1f} s; exact form on 8 of them: '
                 f'max |error| {fig2_exact:.1e}')

# %% [markdown]
# At the disjunction itself the paper says the series diverges. On the $s_1 = s_2 = 2$ part of the grid, where the
# error is largest (it is absolute and grows with $s_1 s_2$), we double the number of terms from 50 to 400:

# %%
half_args, _ = fig2_grid(0.4, [2.0], [-2**-0.5, 2**-0.5])
half_exact = relu_cross_moment(*half_args)
half = [(relu_cross_moment_series(*half_args, terms=n) - half_exact).abs().max().item() for n in (50, 100, 200, 400)]
assert all(0.4 < later / earlier < 0.6 for earlier, later in zip(half, half[1:])), half

# %%
sci = lambda v: f'{v:.1e}'.replace('e-0', 'e-').replace('e', r'\cdot10^{') + '}'   # 5.7e-03 -> 5.7\cdot10^{-3}
Markdown(rf"At 20 terms the worst error is ${sci(fig2['rho = +-0.7'][3])}$ at $\rho = \pm0.7$ (the paper: "
         rf"$10^{{-2.5}} \approx 3.2\cdot10^{{-3}}$, read off its Monte Carlo-referenced figure) and "
         rf"${sci(fig2['rho = +-1/sqrt2'][3])}$ at $\pm1/\sqrt2$; at 5 terms ${sci(fig2['|rho| <= 0.5, 0.999'][1])}$ "
         rf"for $|\rho| \le 0.5$, the paper's $\approx 10^{{-4}}$. At the disjunction the worst error halves each "
         rf"time the number of terms doubles (${sci(half[0])}$ at 50 terms, ${sci(half[-1])}$ at 400): there the series "
         rf"converges, like $1/\mathrm{{terms}}$, too slowly to be of use.")

# %% [markdown]
# The full grid, a slow cell (441,000 + 88,200 combinations, five truncations each, and the exact form; it states its
# run time and asserts the 25%):

# %%
#| slow
t0 = time.perf_counter()
full_args, full_R = fig2_grid(0.2, [0.2 * k for k in range(1, 11)], paper_rhos)
fig2_full = fig2_errors(full_args, full_R, fig2_groups)
dis_full_args, dis_full_R = fig2_grid(0.2, [0.2 * k for k in range(1, 11)], [-2**-0.5, 2**-0.5])
fig2_full.update(fig2_errors(dis_full_args, dis_full_R, {'rho = +-1/sqrt2': lambda R: R == R}))
assert all(abs(fig2_full[k][j] - fig2[k][j]) <= 0.25 * fig2_full[k][j] for k in fig2 for j in range(4))
fig2_table(fig2_full, f'{len(full_R) + len(dis_full_R)} combinations, {time.perf_counter() - t0:.1f} s')

# %% [markdown]
# The second panel sweeps $\rho$ over $(-1, 1)$ on the same $(\mu, s)$ grid: the error peaks at the disjunction and
# falls fast on both sides, where eq 3 and eq 6 each converge geometrically.

# %%
sweep_rhos = sorted([k / 20 for k in range(-19, 20)] + [-0.999, 0.999, -2**-0.5, 2**-0.5])
sweep_args, sweep_R = fig2_grid(0.4, [0.2, 2.0], sweep_rhos)
sweep_exact = relu_cross_moment(*sweep_args)
sweep = {n: (relu_cross_moment_series(*sweep_args, terms=n) - sweep_exact).abs().view(-1, len(sweep_rhos)).amax(0)
         for n in (5, 20, 50)}
assert sweep[20][sweep_rhos.index(0.5)] < 1e-10 and sweep[20][sweep_rhos.index(2**-0.5)] > 1e-2

# %%
#| label: fig-lemma4-terms
#| fig-cap: "Fig. 2 of Alfadly et al. 2020 redone against the exact moment. Left: worst absolute error of Lemma 4 truncated to 1-50 pairs of terms, by group of rho (star: the paper's 10^-2.5 at 20 terms; dotted: the exact form's own error). Right: worst error over (mu, s) against rho; dashed: rho = +-1/sqrt2."
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4), layout='constrained')
for name, errs in fig2.items():
    wide = dict(lw=5, alpha=0.3, ms=10) if name == 'paper grid' else {}
    ax1.semilogy(terms_list, np.maximum(errs, 1e-17), 'o-', label=name, **wide)
ax1.axhline(fig2_exact, color='k', ls=':', lw=1, label='exact form (relu_cross_moment)')
ax1.plot([20], [10**-2.5], 'k*', ms=11, label='Alfadly et al. 2020, Fig. 2, 20 terms')
ax1.set(xlabel='terms (pairs u in eq 3)', ylabel='max |error|', ylim=(1e-17, 1)); ax1.legend(fontsize=7)
for n, errs in sweep.items():
    ax2.semilogy(sweep_rhos, errs.clamp(min=1e-17), '.-', label=f'{n} terms')
for v in (-2**-0.5, 2**-0.5): ax2.axvline(v, color='k', ls='--', lw=0.8)
ax2.set(xlabel='rho', ylabel='max |error| over (mu, s)', ylim=(1e-17, 1)); ax2.legend(fontsize=7);

# %% [markdown]
# What the zero-mean Lemma 3 misses once the means are not zero: the exact product moment against $\rho$ for unit
# variances and three mean pairs, with Lemma 3 (which ignores the means) dashed.

# %%
#| label: fig-relu-cross
#| fig-cap: "E[relu(z1) relu(z2)] against rho for unit variances: exact (solid) for three mean pairs, and Lemma 3 (dashed), which is exact only at zero mean."
fig, ax = plt.subplots(figsize=(5, 3), layout='constrained')
rho_axis = torch.linspace(-1, 1, 201, dtype=torch.float64)
for m1_, m2_ in [(0., 0.), (1., -0.5), (-1., -1.)]:
    ax.plot(rho_axis, relu_cross_moment(m1_, m2_, 1., 1., rho_axis), label=f'mu = ({m1_:g}, {m2_:g})')
ax.plot(rho_axis, relu_cross_moment_zero_mean(1., 1., rho_axis), 'k--', label='Lemma 3')
ax.set(xlabel='rho', ylabel='E[relu(z1) relu(z2)]'); ax.legend(fontsize=8);


# %% [markdown]
# ## Mean and covariance of a ReLU layer
# For $z \sim \mathcal N(\bar\mu, \bar\Sigma)$ in $\mathbb R^p$, `relu_moments` returns $\mathbb E[\mathrm{relu}(z)]$ and
# $\mathrm{Cov}[\mathrm{relu}(z)]_{uv} = \mathbb E[\mathrm{relu}(z_u)\mathrm{relu}(z_v)] - \mathbb E[\mathrm{relu}(z_u)]
# \,\mathbb E[\mathrm{relu}(z_v)]$, batched over leading dimensions. With a diagonal `cov` (shape `(..., p)`, the
# variances) the units are independent and only the variances come back. The diagonal uses the cancellation-free
# `relu_var`; the matrix is symmetrized.

# %%
#| export
class ReluMoments(NamedTuple):
    "Mean, covariance (None in diagonal mode) and variance of relu(z)."
    mean:Tensor      # (..., p) E[relu(z)]
    cov:Tensor|None  # (..., p, p) Cov[relu(z)], symmetric PSD; None when cov was given as variances
    var:Tensor       # (..., p) Var[relu(z)], cancellation-free


# %%
#| export
def relu_moments(
    mean:Tensor,  # mean of z, shape (..., p)
    cov:Tensor,   # covariance of z, (..., p, p) symmetric PSD, or variances (..., p); mean's exact shape reads as variances
)->ReluMoments:   # mean (..., p), cov (..., p, p) or None, var (..., p)
    "Mean and covariance of relu(z) for z ~ N(mean, cov), exact, batched."
    mean, cov = as_tensors(mean, cov, names=('mean', 'cov'))
    check_finite(mean, 'mean')
    if mean.ndim == 0: raise ValueError('mean must have shape (..., p); got a scalar')
    if mean.shape[-1] == 0: raise ValueError(f'mean must have p >= 1 units; got shape {tuple(mean.shape)}')
    if cov.shape[-1:] != mean.shape[-1:]:
        raise ValueError(f'cov must have shape (..., p, p) or (..., p) with p = {mean.shape[-1]}; got {tuple(cov.shape)}')
    p = mean.shape[-1]
    full = cov.ndim >= 2 and cov.shape[-2:] == (p, p) and cov.shape != mean.shape
    check_broadcast(('mean', 'cov batch' if full else 'cov'), mean, cov[..., 0] if full else cov)
    if not full:
        check_var(cov, 'cov')
        return ReluMoments(_relu_mean(*torch.broadcast_tensors(mean, cov)), None, _relu_var(*torch.broadcast_tensors(mean, cov)))
    check_cov(cov, 'cov')
    return _relu_moments_full(mean, cov)

def _relu_moments_full(mean, cov):
    "relu_moments for a full, already validated covariance."
    var = cov.diagonal(dim1=-2, dim2=-1)
    mean, var = torch.broadcast_tensors(mean, var)
    m_r, v_r = _relu_mean(mean, var), _relu_var(mean, var)
    c = _relu_cov_pair(mean[..., :, None], mean[..., None, :], var[..., :, None], var[..., None, :], cov)
    c = (c + c.mT) / 2
    c = c - torch.diag_embed(c.diagonal(dim1=-2, dim2=-1)) + torch.diag_embed(v_r)
    return ReluMoments(m_r, c, v_r)


# %% [markdown]
# The covariance is symmetric and positive semi-definite, its diagonal is `relu_var`, the diagonal mode returns the
# same means and variances, and batches broadcast:

# %%
gen = torch.Generator().manual_seed(7)
L = torch.randn(4, 6, 6, generator=gen, dtype=torch.float64)
cov_z = L @ L.mT / 6
mean_z = torch.randn(4, 6, generator=gen, dtype=torch.float64)
res = relu_moments(mean_z, cov_z)
test_eq((res.mean.shape, res.cov.shape, res.var.shape), ((4, 6), (4, 6, 6), (4, 6)))
test_eq(res.cov, res.cov.mT)
assert torch.linalg.eigvalsh(res.cov).min() > -1e-14
diag = relu_moments(mean_z, cov_z.diagonal(dim1=-2, dim2=-1))
test_close(diag.mean, res.mean, eps=1e-15); test_close(diag.var, res.var, eps=1e-15); test_eq(diag.cov, None)
test_close(relu_moments(mean_z, cov_z[0]).cov[0], res.cov[0], eps=1e-15)   # one covariance shared by the batch

# %% [markdown]
# Against [Monte Carlo](02_montecarlo.ipynb) with $10^5$ samples, within 4 standard errors entry by entry:

# %%
mc = mc_moments(torch.relu, mean_z[0], cov_z[0], n=100_000, seed=0)
assert ((res.mean[0] - mc.mean).abs() <= 4 * mc.mean_se).all()
assert ((res.cov[0] - mc.cov).abs() <= 4 * mc.cov_se).all()

# %%
test_fail(lambda: relu_moments(mean_z, cov_z[..., :5]), contains='cov must have shape (..., p, p) or (..., p)')
test_fail(lambda: relu_moments(mean_z[0], -cov_z[0]), contains='cov must have a non-negative diagonal')
test_fail(lambda: relu_moments(mean_z[0], cov_z[0] + torch.triu(torch.ones(6, 6), 1)), contains='cov must be symmetric')
test_fail(lambda: relu_moments(mean_z, cov_z[:3]), contains='shapes do not broadcast: mean (4, 6), cov batch (3, 6)')
test_fail(lambda: relu_moments(mean_z, cov_z[:3, 0]), contains='shapes do not broadcast: mean (4, 6), cov (3, 6)')

# %% [markdown]
# ## Export -

# %%
#| hide
#| eval: false
import nbdev; nbdev.nbdev_export()

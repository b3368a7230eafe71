# %% [markdown]
# # Price's theorem
# > Covariance derivatives of E[Psi(x)] are expectations of derivatives of Psi (Price 1958; Bibi et al. 2018, Lemma 2), checked in sympy, on ReLU products and by Monte Carlo

# %%
#| default_exp price

# %%
#| export
from __future__ import annotations
import math, numbers
from typing import Callable, NamedTuple, Sequence
import torch
from torch import Tensor
from netmoments.core import as_tensors, check_broadcast, check_count, check_cov, check_finite
from netmoments.montecarlo import mc_moments

# %%
#| hide
import math
import sympy as sp
import matplotlib.pyplot as plt
from fastcore.test import test_eq, test_close, test_fail
from netmoments.gaussian import bvn_cdf, bvn_pdf
from netmoments.relu import relu_cross_moment

# %% [markdown]
# The second moment of a ReLU layer needs $\mathbb E[\mathrm{relu}(x_1)\mathrm{relu}(x_2)]$, and [Bibi et al.
# (2018)](99_references.ipynb#bibi2018) get it (Lemma 3, see [ReLU moments](03_relu.ipynb)) not by integrating the
# product but by differentiating it: in the covariance $\sigma_{12}$ the kinks of the two ReLUs turn into steps and then
# into a density, whose expectations are easy. This chapter states the tool (their Lemma 2), proves and checks it
# symbolically, checks it numerically on the ReLU product for any mean, and exports three functions with which any
# differentiable $\mathbb E[\Psi(x)]$ can be checked the same way.

# %% [markdown]
# ## Price's theorem
# Lemma 2 of [Bibi et al. (2018)](99_references.ipynb#bibi2018): let $x \sim \mathcal N(\mu, \Sigma)$ in $\mathbb R^n$,
# $\sigma_{ij} = \Sigma_{ij}$, and $p$ even. Under mild assumptions on $\Psi: \mathbb R^n \to \mathbb R$ (growth slow
# enough for the expectations to exist; derivatives in the sense of distributions, so $\mathrm{relu}' = u$, the unit
# step, and $u' = \delta$):
# $$\frac{\partial^{p/2}\, \mathbb E[\Psi(x)]}{\prod_{\text{odd } i}\partial\sigma_{i,i+1}}
#   = \mathbb E\Big[\frac{\partial^p \Psi(x)}{\partial x_1 \cdots \partial x_p}\Big],
# \qquad\text{bivariate: }\quad \frac{\partial\, \mathbb E[\Psi(x)]}{\partial\sigma_{12}} = \mathbb E\Big[\frac{\partial^2 \Psi}{\partial x_1 \partial x_2}\Big].$$
# For the variances the same argument gives the heat equation
# $\partial\mathbb E[\Psi]/\partial\Sigma_{11} = \tfrac12\,\mathbb E[\partial^2\Psi/\partial x_1^2]
# = \tfrac12\,\partial^2\mathbb E[\Psi]/\partial\mu_1^2$. [Price (1958)](99_references.ipynb#price1958) proved the
# bivariate case for $\Psi = \Psi_1(x_1)\Psi_2(x_2)$ and unit variances,
# [McMahon (1964)](99_references.ipynb#mcmahon1964) dropped both restrictions for $n = 2$; Lemma 2 is the $n$-variate
# form.
#
# **One parameter, two entries.** $\sigma_{12}$ and $\sigma_{21}$ are one number: the derivative perturbs both
# entries of $\Sigma$ at once. The entrywise gradient of a function of the full matrix (as autograd returns it for a
# formula that reads $\Sigma$ symmetrically) holds only half of the derivative in each of the two entries.
#
# **Why it holds.** The Gaussian density $f(x; \mu, \Sigma)$ solves $\partial f/\partial\sigma_{ij} =
# \partial^2 f/\partial x_i\partial x_j$ for $i \ne j$ and $\partial f/\partial\Sigma_{ii} = \tfrac12\,\partial^2
# f/\partial x_i^2$; differentiating $\int \Psi f\,dx$ under the integral and integrating by parts twice moves the two
# $x$-derivatives from $f$ to $\Psi$, and repeating this for $\sigma_{34}, \sigma_{56}, \dots$ gives Lemma 2. sympy checks
# the density equations for the bivariate density with any mean, through the log-density $\ell = \log f$
# ($f_{x_1x_2}/f = \ell_{x_1x_2} + \ell_{x_1}\ell_{x_2}$), with $\sigma_{12}$ entered once in both entries:

# %%
x1, x2, x3, x4 = sp.symbols('x1:5', real=True)
mu1, mu2, mu3, mu4 = sp.symbols('mu1:5', real=True)
sigma11, sigma22 = sp.symbols('sigma11 sigma22', positive=True)
sigma12 = sp.symbols('sigma12', real=True)
Sigma = sp.Matrix([[sigma11, sigma12], [sigma12, sigma22]])
dev = sp.Matrix([x1 - mu1, x2 - mu2])
log_f = -(dev.T * Sigma.inv() * dev)[0] / 2 - sp.log(2 * sp.pi) - sp.log(Sigma.det()) / 2
second = lambda u, v: log_f.diff(u, v) + log_f.diff(u) * log_f.diff(v)   # f_uv / f
test_eq(sp.cancel(sp.together(log_f.diff(sigma12) - second(x1, x2))), 0)
test_eq(sp.cancel(sp.together(log_f.diff(sigma11) - second(x1, x1) / 2)), 0)
test_eq(sp.cancel(sp.together(log_f.diff(sigma11) - second(mu1, mu1) / 2)), 0)


# %% [markdown]
# ### Polynomials, exactly
# For a polynomial $\Psi$ both sides are polynomials in $\mu$ and $\Sigma$. The moments come from the moment generating
# function $M(t) = \mathbb E[e^{t^\top x}] = \exp(\mu^\top t + \tfrac12 t^\top\Sigma t)$:
# $\mathbb E[x_1^{a_1}\cdots x_n^{a_n}] = \partial^{a_1}_{t_1}\cdots\partial^{a_n}_{t_n} M|_{t=0}$.
# `expectation_sym` applies this to each monomial of $\Psi$:

# %%
def expectation_sym(psi, xs, mu, Sigma):
    "E[psi(x)] for x ~ N(mu, Sigma) and a polynomial psi in the symbols xs, from the moment generating function."
    ts = sp.symbols(f't1:{len(xs) + 1}')
    t = sp.Matrix(ts)
    mgf = sp.exp((sp.Matrix(mu).T * t)[0] + (t.T * Sigma * t)[0] / 2)
    total = 0
    for powers, coeff in sp.Poly(sp.expand(psi), *xs).terms():
        moment = mgf.diff(*[(ti, a) for ti, a in zip(ts, powers) if a]) if any(powers) else mgf
        total += coeff * moment.subs({ti: 0 for ti in ts})
    return sp.expand(total)

test_eq(expectation_sym(x1**2, (x1, x2), (mu1, mu2), Sigma), mu1**2 + sigma11)
test_eq(expectation_sym(x1 * x2, (x1, x2), (mu1, mu2), Sigma), mu1 * mu2 + sigma12)

# %% [markdown]
# The convention matters here. In $t^\top\Sigma t = \sigma_{11}t_1^2 + 2\sigma_{12}t_1t_2 + \sigma_{22}t_2^2$ the
# symbol `sigma12` stands in both entries and counts twice, which is exactly "one parameter": $\partial/\partial$`sigma12`
# is Lemma 2's derivative. With two independent symbols for the two entries, each derivative is half of it, and their
# sum is the whole:

# %%
psi = x1**2 * x2**2
rhs = expectation_sym(psi.diff(x1, x2), (x1, x2), (mu1, mu2), Sigma)
a12, a21 = sp.symbols('a12 a21', real=True)
E_entries = expectation_sym(psi, (x1, x2), (mu1, mu2), sp.Matrix([[sigma11, a12], [a21, sigma22]]))
one_entry = E_entries.diff(a12).subs({a12: sigma12, a21: sigma12})
both_entries = (E_entries.diff(a12) + E_entries.diff(a21)).subs({a12: sigma12, a21: sigma12})
test_eq(sp.expand(expectation_sym(psi, (x1, x2), (mu1, mu2), Sigma).diff(sigma12) - rhs), 0)
test_eq(sp.expand(one_entry - rhs / 2), 0)
test_eq(sp.expand(both_entries - rhs), 0)
rhs

# %% [markdown]
# (a) Bivariate, general mean: $\partial\mathbb E[\Psi]/\partial\sigma_{12} = \mathbb E[\partial^2\Psi/\partial x_1\partial x_2]$
# as polynomial identities in $\mu_1, \mu_2, \sigma_{11}, \sigma_{12}, \sigma_{22}$:

# %%
psis = [x1**2 * x2**3, x1**3 * x2 + x1 * x2**2, x1**4 * x2**2 - 3 * x1 * x2 + 5, (x1 + 2 * x2)**4, x1**5 * x2]
for psi in psis:
    E_psi = expectation_sym(psi, (x1, x2), (mu1, mu2), Sigma)
    test_eq(sp.expand(E_psi.diff(sigma12) - expectation_sym(psi.diff(x1, x2), (x1, x2), (mu1, mu2), Sigma)), 0)
expectation_sym(psis[0], (x1, x2), (mu1, mu2), Sigma).diff(sigma12)

# %% [markdown]
# (b) Four variables, $p = 4$: $\partial^2\mathbb E[\Psi]/\partial\sigma_{12}\partial\sigma_{34}
# = \mathbb E[\partial^4\Psi/\partial x_1\partial x_2\partial x_3\partial x_4]$ for $\Psi = x_1^2x_2x_3x_4^2$, with a
# full symmetric $4\times4$ covariance of ten symbols:

# %%
sig4 = {(i, j): sp.Symbol(f'sigma{min(i, j)}{max(i, j)}', real=True) for i in range(1, 5) for j in range(1, 5)}
Sigma4 = sp.Matrix(4, 4, lambda i, j: sig4[i + 1, j + 1])
xs4, mus4 = (x1, x2, x3, x4), (mu1, mu2, mu3, mu4)
psi = x1**2 * x2 * x3 * x4**2
lhs4 = expectation_sym(psi, xs4, mus4, Sigma4).diff(sig4[1, 2], sig4[3, 4])
rhs4 = expectation_sym(psi.diff(x1, x2, x3, x4), xs4, mus4, Sigma4)
test_eq(sp.expand(lhs4 - rhs4), 0)
rhs4

# %% [markdown]
# (c) The heat equation, $\partial\mathbb E[\Psi]/\partial\Sigma_{11} = \tfrac12\,\partial^2\mathbb E[\Psi]/\partial\mu_1^2$,
# for the same polynomials; and for a non-polynomial one, $\mathbb E[\mathrm{relu}(x)] = \mu\Phi(\mu/s) + s\varphi(\mu/s)$
# ([ReLU moments](03_relu.ipynb)) as a function of $v = s^2$:

# %%
for psi in psis:
    E_psi = expectation_sym(psi, (x1, x2), (mu1, mu2), Sigma)
    test_eq(sp.expand(E_psi.diff(sigma11) - E_psi.diff(mu1, 2) / 2), 0)
mu, v = sp.symbols('mu', real=True), sp.symbols('v', positive=True)
Phi_s = lambda t: (1 + sp.erf(t / sp.sqrt(2))) / 2
phi_s = lambda t: sp.exp(-t**2 / 2) / sp.sqrt(2 * sp.pi)
relu_mean_sym = mu * Phi_s(mu / sp.sqrt(v)) + sp.sqrt(v) * phi_s(mu / sp.sqrt(v))
test_eq(sp.simplify(relu_mean_sym.diff(v) - relu_mean_sym.diff(mu, 2) / 2), 0)

# %% [markdown]
# ## Two ReLUs
# For $\Psi = \mathrm{relu}(x_1)\mathrm{relu}(x_2)$, $\partial^2\Psi/\partial x_1\partial x_2 = u(x_1)u(x_2)$ and
# $\partial^4\Psi/\partial x_1^2\partial x_2^2 = \delta(x_1)\delta(x_2)$, so with $s_i = \sqrt{\Sigma_{ii}}$,
# $h_i = \mu_i/s_i$, $\rho = \sigma_{12}/(s_1s_2)$:
# $$\frac{\partial\,\mathbb E[\mathrm{relu}(x_1)\mathrm{relu}(x_2)]}{\partial\sigma_{12}} = P(x_1 > 0, x_2 > 0) = \Phi_2(h_1, h_2; \rho),
# \qquad \frac{\partial^2\,\mathbb E[\mathrm{relu}(x_1)\mathrm{relu}(x_2)]}{\partial\sigma_{12}^2} = f_x(0, 0) = \frac{\varphi_2(h_1, h_2; \rho)}{s_1 s_2}.$$
# (The second follows from the first too: $\partial\Phi_2/\partial\rho = \varphi_2$ and $\partial\rho/\partial\sigma_{12} = 1/(s_1s_2)$.)
# At zero mean $\Phi_2(0, 0; \rho) = \tfrac14 + \arcsin(\rho)/(2\pi)$ and $\varphi_2(0, 0; \rho) = 1/(2\pi\sqrt{1-\rho^2})$;
# sympy differentiates Lemma 3 of [Bibi et al. (2018)](99_references.ipynb#bibi2018) and finds both:

# %%
s1, s2 = sp.symbols('s1 s2', positive=True)
rho_sym = sigma12 / (s1 * s2)
lemma3 = (sigma12 * sp.asin(rho_sym) + s1 * s2 * sp.sqrt(1 - rho_sym**2)) / (2 * sp.pi) + sigma12 / 4
test_eq(sp.simplify(lemma3.diff(sigma12) - (sp.Rational(1, 4) + sp.asin(rho_sym) / (2 * sp.pi))), 0)
test_eq(sp.simplify(lemma3.diff(sigma12, 2) - 1 / (2 * sp.pi * sp.sqrt(1 - rho_sym**2)) / (s1 * s2)), 0)

# %% [markdown]
# ### Any mean, by autograd
# For non-zero means, `relu_cross_moment` ([ReLU moments](03_relu.ipynb)) is exact, and autograd differentiates it in
# `cov12` once and twice. The references are independent code: $\Phi_2$ is the algorithm of
# [Genz (2004)](99_references.ipynb#genz2004) (`bvn_cdf`), $\varphi_2$ the density
# (`bvn_pdf`). The grid has zero and non-zero means, unequal variances, $\rho$ on both sides of the branch of `bvn_cdf` at
# $|\rho| = 0.925$ and up to $1 - 10^{-5}$.

# %%
f64 = torch.float64
grid_mu = torch.tensor([[0., 0.], [0.7, -0.4], [-1.5, 2.], [2., 1.], [-3., -2.5]], dtype=f64)
grid_var = torch.tensor([[1., 1.], [0.25, 4.], [2., 0.5]], dtype=f64)
grid_rho = torch.tensor([-0.99999, -0.999, -0.99, -0.93, -0.92, -0.5, -1e-3, 0., 0.3, 0.9, 0.924, 0.926, 0.99, 0.999, 0.99999],
                        dtype=f64)
m_, v_, r_ = torch.meshgrid(*(torch.arange(len(g)) for g in (grid_mu, grid_var, grid_rho)), indexing='ij')
g_mu1, g_mu2 = grid_mu[m_.flatten()].unbind(-1)
g_var1, g_var2 = grid_var[v_.flatten()].unbind(-1)
g_rho = grid_rho[r_.flatten()]
g_s1, g_s2 = g_var1.sqrt(), g_var2.sqrt()
g_cov12 = (g_rho * g_s1 * g_s2).requires_grad_()
E_relu = relu_cross_moment(g_mu1, g_mu2, g_var1, g_var2, g_cov12)
d1, = torch.autograd.grad(E_relu.sum(), g_cov12, create_graph=True)
d2, = torch.autograd.grad(d1.sum(), g_cov12)
ref1 = bvn_cdf(g_mu1 / g_s1, g_mu2 / g_s2, g_rho)
ref2 = bvn_pdf(g_mu1 / g_s1, g_mu2 / g_s2, g_rho) / (g_s1 * g_s2)
err1, err2 = (d1 - ref1).abs(), (d2 - ref2).abs() / ref2.abs().clamp(min=1)
print(f'{len(d1)} points: first derivative max |error| {err1.max():.1e}; second derivative max error / max(1, |ref|): '
      f'{err2[g_rho.abs() <= 0.99].max():.1e} for |rho| <= 0.99, {err2.max():.1e} up to |rho| = 1 - 1e-5')
test_close(d1, ref1, eps=1e-12)
inner = g_rho.abs() <= 0.99
test_close(d2[inner], ref2[inner], eps=1e-12 * ref2.abs().clamp(min=1)[inner])
assert (err2 <= 1e-15 / (1 - g_rho**2)**2).all()

# %% [markdown]
# The first derivative is exact to $10^{-12}$ up to $|\rho| = 1 - 10^{-5}$. The second is differentiated through the
# closed form's four terms, whose $\rho$-derivatives grow like $(1-\rho^2)^{-3/2}$ and cancel: its float64 error grows
# as $|\rho| \to 1$, staying below $10^{-15}/(1-\rho^2)^2$ relative (asserted on this grid; `tests/test_price.py` checks
# the bound on random points). $\rho = 0$ exactly is on the grid because computing $1 - \rho^2$ as
# $(1-|\rho|)(1+|\rho|)$ would lose a term of the second derivative there (torch takes $d|\rho|/d\rho = 0$ at 0);
# [Gaussian toolbox](01_gaussian.ipynb) and [ReLU moments](03_relu.ipynb) compute $(1-\rho)(1+\rho)$, and
# `tests/test_price.py` keeps the case.

# %% [markdown]
# The step-function side by [Monte Carlo](02_montecarlo.ipynb): $\mathbb E[u(x_1)u(x_2)]$ from $2\cdot10^4$ samples
# agrees with $\Phi_2(h_1, h_2; \rho)$ within 4 standard errors, at points of the grid where it is neither near 0 nor 1:

# %%
for i in torch.nonzero((ref1 > 0.05) & (ref1 < 0.95)).squeeze(1)[::50].tolist():
    cov_i = torch.stack([torch.stack([g_var1[i], g_cov12[i]]), torch.stack([g_cov12[i], g_var2[i]])]).detach()
    mean_i = torch.stack([g_mu1[i], g_mu2[i]])
    mc = mc_moments(lambda x: (x > 0).all(-1, keepdim=True), mean_i, cov_i, n=20_000, seed=i)
    assert (mc.mean - ref1[i]).abs() <= 4 * mc.mean_se, (i, mc.mean, ref1[i])

# %% [markdown]
# ### The heat equation on the ReLU product
# Holding $\sigma_{12}$ fixed, $\partial\mathbb E/\partial\Sigma_{11} = \tfrac12\,\partial^2\mathbb E/\partial\mu_1^2$,
# both sides by autograd of `relu_cross_moment` on the same grid:

# %%
h_mu1, h_var1 = g_mu1.clone().requires_grad_(), g_var1.clone().requires_grad_()
E_heat = relu_cross_moment(h_mu1, g_mu2, h_var1, g_var2, g_cov12.detach())
d_mu1, d_var1 = torch.autograd.grad(E_heat.sum(), (h_mu1, h_var1), create_graph=True)
d_mu1mu1, = torch.autograd.grad(d_mu1.sum(), h_mu1)
print(f'max |dE/dvar1 - d2E/dmu1^2 / 2| = {(d_var1 - d_mu1mu1 / 2).abs().max():.1e}')
test_close(d_var1, d_mu1mu1 / 2, eps=1e-12)


# %% [markdown]
# ## Checking Price's theorem for your own $\Psi$
# The same two sides, for any $\Psi$ whose expectation is a differentiable torch function: the left side by autograd
# in the covariance, the right side by sampling the mixed partial of $\Psi$. Both are batched: `mu` is `(..., N)`,
# `cov` is `(..., N, N)`, and the leading dimensions broadcast. Indices are 0-based, so Lemma 2's
# $\sigma_{12}, \sigma_{34}$ are the pairs `(0, 1), (2, 3)`.

# %% [markdown]
# Inputs are checked once for all three functions: a mean and a full covariance whose batch dimensions broadcast, and
# off-diagonal index pairs inside the matrix. A pair on the diagonal is refused: there the derivative carries the
# factor $\tfrac12$ of the heat equation, not Lemma 2's.

# %%
#| exporti
def _gaussian_inputs(mu, cov):
    "Validated `(mu, cov, batch)`: mu (..., N), cov (..., N, N) symmetric PSD, `batch` their broadcast batch shape."
    mu, cov = as_tensors(mu, cov, names=('mu', 'cov'))
    if mu.ndim == 0: raise ValueError('mu must have shape (..., N); got a scalar')
    N = mu.shape[-1]
    if cov.ndim < 2 or cov.shape[-2:] != (N, N):
        raise ValueError(f'cov must have shape (..., {N}, {N}) for mu of shape {tuple(mu.shape)}; got {tuple(cov.shape)}')
    check_finite(mu, 'mu'); check_cov(cov, 'cov')
    return mu, cov, check_broadcast(('mu batch', 'cov batch'), mu[..., 0], cov[..., 0, 0])

def _check_pairs(pairs, N):
    "`pairs` as a list of (i, j) int tuples, each off-diagonal and inside an N x N matrix."
    index = lambda i: isinstance(i, numbers.Integral) and not isinstance(i, bool)
    pair = lambda q: isinstance(q, Sequence) and len(q) == 2 and all(map(index, q))
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence) or not all(map(pair, pairs)):
        raise TypeError(f'pairs must be a sequence of (i, j) index pairs; got {pairs!r}')
    if not pairs: raise ValueError('pairs must hold at least one (i, j) pair')
    for i, j in pairs:
        if not (0 <= i < N and 0 <= j < N): raise ValueError(f'pairs must index 0..{N - 1} (0-based); got ({i}, {j})')
        if i == j: raise ValueError(f'pairs must be off-diagonal (i != j); got ({i}, {j}): a variance needs the '
                                    'factor 1/2 of the heat equation')
    return [(int(i), int(j)) for i, j in pairs]


# %% [markdown]
# ### The covariance derivative
# `price_derivative` returns $\partial^k\,\mathbb E / \partial\sigma_{i_1j_1}\cdots\partial\sigma_{i_kj_k}$. Each
# $\sigma_{ij}$ enters as one scalar step $\epsilon$ per batch entry, added to both entries $(i, j)$ and $(j, i)$ at
# $\epsilon = 0$, so the result is Lemma 2's derivative however `expectation` reads the matrix (one entry, both, or a
# function of the whole). Repeated pairs give higher derivatives in one covariance, like $\partial^2/\partial\sigma_{12}^2$
# above. Batch entries must not interact inside `expectation` (each output entry depends on its own `mu` and `cov`
# only): the derivative of the batch sum is then the derivative of each entry.

# %%
#| export
def price_derivative(
    expectation:Callable,  # (mu, cov) -> E[Psi(x)] of shape (...): differentiable, batch entries independent
    mu:Tensor,             # mean of x, shape (..., N)
    cov:Tensor,            # covariance of x, (..., N, N) symmetric PSD; batch dims broadcast with mu's
    pairs:Sequence,        # k off-diagonal (i, j) index pairs, 0-based; repeats give higher derivatives
)->Tensor:                 # d^k E / prod d sigma_ij, each sigma_ij = sigma_ji one parameter; batch shape
    "Mixed derivative of `expectation(mu, cov)` in off-diagonal covariances (the left side of Price's theorem)."
    mu, cov, batch = _gaussian_inputs(mu, cov)
    pairs = _check_pairs(pairs, mu.shape[-1])
    keep = torch.is_grad_enabled() and (mu.requires_grad or cov.requires_grad)
    with torch.enable_grad():
        steps = [cov.new_zeros(batch, requires_grad=True) for _ in pairs]
        out = expectation(mu, cov + _bump(steps, pairs, cov, batch))
        if not isinstance(out, Tensor) or out.shape != batch:
            found = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f'expectation must return one value per batch entry, shape {tuple(batch)}; got {found}')
        for m, step in enumerate(steps):
            if not out.requires_grad: return torch.zeros_like(out)   # no path to this sigma: the derivative is 0
            out, = torch.autograd.grad(out.sum(), step, create_graph=keep or m < len(steps) - 1, materialize_grads=True)
    return out

def _bump(steps, pairs, cov, batch):
    "sum of step (E_ij + E_ji) over the pairs, by index: its gradient picks entries (i, j), (j, i) and multiplies none by 0."
    N = cov.shape[-1]
    flat = cov.new_zeros(*batch, N * N)
    for step, (i, j) in zip(steps, pairs):
        flat = flat.index_add(-1, torch.tensor([i * N + j, j * N + i], device=cov.device), torch.stack([step, step], -1))
    return flat.reshape(*batch, N, N)


# %% [markdown]
# A polynomial whose expectation we know exactly: for $\Psi = x_1^2x_2^2$,
# $\mathbb E[\Psi] = (\mu_1^2 + \sigma_{11})(\mu_2^2 + \sigma_{22}) + 2\sigma_{12}^2 + 4\mu_1\mu_2\sigma_{12}$ (sympy
# confirms the torch transcription below), and Lemma 2's right sides are
# $\mathbb E[4x_1x_2] = 4(\mu_1\mu_2 + \sigma_{12})$ and $\mathbb E[\partial_1^2\partial_2^2\Psi] = 4$. The transcription
# reads $\sigma_{12}$ from both entries, once from each, the case where a one-entry gradient would give half:

# %%
def quartic(m1, m2, c11, c22, c12, c21):
    "E[x1^2 x2^2] from the means and the four covariance entries: works on sympy symbols and on tensors."
    return (m1**2 + c11) * (m2**2 + c22) + 2 * c12 * c21 + 2 * m1 * m2 * (c12 + c21)

def quartic_expectation(mu, cov):
    "E[x1^2 x2^2] for x ~ N(mu, cov), batched: an `expectation` for `price_derivative`."
    return quartic(mu[..., 0], mu[..., 1], cov[..., 0, 0], cov[..., 1, 1], cov[..., 0, 1], cov[..., 1, 0])

test_eq(sp.expand(quartic(mu1, mu2, sigma11, sigma22, sigma12, sigma12)
                  - expectation_sym(x1**2 * x2**2, (x1, x2), (mu1, mu2), Sigma)), 0)

# %% [markdown]
# Both derivatives match Lemma 2's right sides on a batch of random Gaussians:

# %%
gen = torch.Generator().manual_seed(4)
b_mu = torch.randn(5, 2, generator=gen, dtype=f64)
b_L = torch.randn(5, 2, 2, generator=gen, dtype=f64)
b_cov = b_L @ b_L.mT
first = price_derivative(quartic_expectation, b_mu, b_cov, [(0, 1)])
test_eq(first.shape, (5,))
test_close(first, 4 * (b_mu[:, 0] * b_mu[:, 1] + b_cov[:, 0, 1]), eps=1e-13)
test_close(price_derivative(quartic_expectation, b_mu, b_cov, [(1, 0), (0, 1)]), torch.full((5,), 4., dtype=f64), eps=1e-13)


# %% [markdown]
# Four variables, $p = 4$: for $\Psi = x_1x_2x_3x_4$ (Isserlis' theorem with means),
# $\partial^2\mathbb E/\partial\sigma_{12}\partial\sigma_{34} = 1$, and $\partial^2\mathbb E/\partial\sigma_{13}\partial\sigma_{24} = 1$
# too; one covariance is shared by a batch of means; and when `mu` or `cov` requires grad the result keeps its graph,
# for derivatives in them (here $\partial/\partial\mu_3$ of $\partial\mathbb E/\partial\sigma_{12} = \mu_3\mu_4 + \sigma_{34}$).
# `isserlis` sums the ten terms at a power-of-two scale $2^e$ near the largest $|\mu_i|$ or $\sqrt{|\sigma_{ij}|}$, so
# that terms of opposite sign cannot overflow to $\infty - \infty$: the sum is scaled back by $2^{4e}$, exactly, and
# overflows to the $\pm\infty$ it is. Its derivatives are the closed forms $\partial\mathbb E/\partial\mu_i =
# \mathbb E[x_jx_kx_l]$ and $\partial\mathbb E/\partial\sigma_{ij} = \mathbb E[x_kx_l]$ (Price's theorem again),
# which stay finite where they are.

# %%
#| exporti
def _isserlis(mu, cov):
    "E[x1 x2 x3 x4] from the means (..., 4) and covariances (..., 4, 4), upper triangle read."
    m, c = mu.unbind(-1), lambda i, j: cov[..., i, j]
    return (m[0] * m[1] * m[2] * m[3] + c(0, 1) * m[2] * m[3] + c(0, 2) * m[1] * m[3] + c(0, 3) * m[1] * m[2]
            + c(1, 2) * m[0] * m[3] + c(1, 3) * m[0] * m[2] + c(2, 3) * m[0] * m[1]
            + c(0, 1) * c(2, 3) + c(0, 2) * c(1, 3) + c(0, 3) * c(1, 2))

def _third(m, c, i, j, k):
    "E[x_i x_j x_k], the derivative of the Isserlis sum in the fourth mean."
    return m[..., i] * m[..., j] * m[..., k] + c[..., i, j] * m[..., k] + c[..., i, k] * m[..., j] + c[..., j, k] * m[..., i]

def _times_pow2(x, e, times):
    "x * 2^(times e), one exact factor 2^e at a time: overflow gives +-inf, never 0 * inf."
    f = torch.exp2(e)
    for _ in range(times): x = x * f
    return x

class _Isserlis(torch.autograd.Function):
    "The Isserlis sum at a power-of-two scale (no inf - inf when it overflows), with closed-form derivatives."
    @staticmethod
    def forward(ctx, m, c):
        ctx.save_for_backward(m, c)
        emax = int(math.log2(torch.finfo(m.dtype).max)) - 1
        big = torch.maximum(m.abs().amax(-1), c.abs().amax((-2, -1)).sqrt())
        e = (torch.frexp(big)[1] - 1).clamp(-emax, emax).to(m.dtype)     # 2^e near the largest scale, no gradient
        f = torch.exp2(-e)
        scaled = _isserlis(m * f[..., None], c * f[..., None, None] * f[..., None, None])   # O(1) terms
        return _times_pow2(scaled, e, 4)

    @staticmethod
    def backward(ctx, g):
        m, c = ctx.saved_tensors
        gm = torch.stack([_third(m, c, *(j for j in range(4) if j != i)) for i in range(4)], -1) * g[..., None]
        rows = [[torch.zeros_like(g)] * 4 for _ in range(4)]
        for i, j in ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)):
            k, l = (x for x in range(4) if x not in (i, j))
            rows[i][j] = g * (m[..., k] * m[..., l] + c[..., k, l])   # d E / d c_ij = E[x_k x_l]
        gc = torch.stack([torch.stack(r, -1) for r in rows], -2)
        return gm.sum_to_size(m.shape), gc.sum_to_size(c.shape)


# %%
#| export
def isserlis(
    mu:Tensor,   # means, (..., 4)
    cov:Tensor,  # covariances, (..., 4, 4); the upper triangle is read
)->Tensor:       # E[x1 x2 x3 x4], shape (...): +-inf where it overflows, never NaN
    "E[x1 x2 x3 x4] for x ~ N(mu, cov) by Isserlis' theorem, batched: a closed-form expectation to test Price checks on."
    mu, cov = as_tensors(mu, cov, names=('mu', 'cov'))
    if mu.ndim == 0 or mu.shape[-1] != 4: raise ValueError(f'mu must have shape (..., 4); got {tuple(mu.shape)}')
    if cov.ndim < 2 or cov.shape[-2:] != (4, 4): raise ValueError(f'cov must have shape (..., 4, 4); got {tuple(cov.shape)}')
    check_finite(mu, 'mu'); check_finite(cov, 'cov')
    check_broadcast(('mu batch', 'cov batch'), mu[..., 0], cov[..., 0, 0])
    return _Isserlis.apply(mu, cov)


# %%
mu4_ = torch.randn(3, 4, generator=gen, dtype=f64)
L4 = torch.randn(4, 4, generator=gen, dtype=f64)
cov4 = L4 @ L4.mT
test_close(price_derivative(isserlis, mu4_, cov4, [(0, 1), (2, 3)]), torch.ones(3, dtype=f64), eps=1e-14)
test_close(price_derivative(isserlis, mu4_, cov4, [(0, 2), (1, 3)]), torch.ones(3, dtype=f64), eps=1e-14)
test_close(price_derivative(isserlis, mu4_, cov4, [(0, 1)]), mu4_[:, 2] * mu4_[:, 3] + cov4[2, 3], eps=1e-14)
mu_req = mu4_.clone().requires_grad_()
grad_mu, = torch.autograd.grad(price_derivative(isserlis, mu_req, cov4, [(0, 1)]).sum(), mu_req)
test_close(grad_mu[:, 2], mu4_[:, 3], eps=1e-14)

# %% [markdown]
# The scaled sum is the plain one, its closed-form gradients are autograd's of the plain one (to second order), and at
# means of $10^{300}$ the value overflows to the sign of $\mu_1\mu_2\mu_3\mu_4$ instead of $\infty - \infty$, while
# the derivative in $\sigma_{12}$, $\mu_3\mu_4 + \sigma_{34}$, stays finite at covariances of $10^{300}$:

# %%
cov_req = cov4.clone().requires_grad_()
test_close(isserlis(mu_req, cov_req), _isserlis(mu_req, cov_req), eps=1e-13)
for got, ref in zip(torch.autograd.grad(isserlis(mu_req, cov_req).sum(), (mu_req, cov_req), create_graph=True),
                    torch.autograd.grad(_isserlis(mu_req, cov_req).sum(), (mu_req, cov_req), create_graph=True)):
    test_close(got, ref, eps=1e-13)
    test_close(*(torch.autograd.grad(g.sum(), mu_req, retain_graph=True)[0] for g in (got, ref)), eps=1e-13)
huge = mu4_ * 1e300
test_eq(isserlis(huge, cov4), huge.prod(-1).sign() * math.inf)
test_close(price_derivative(isserlis, mu4_, cov4 * 1e300, [(0, 1)]) / 1e300, cov4[2, 3].expand(3), eps=1e-12)
test_fail(lambda: isserlis(mu4_[:, :3], cov4), contains='mu must have shape (..., 4)')
test_fail(lambda: isserlis(mu4_, cov4.float()), contains='found mu float64, cov float32', exc=TypeError)
test_fail(lambda: isserlis(mu4_ * math.nan, cov4), contains='mu must be finite')

# %% [markdown]
# A derivative in a covariance the expectation does not depend on is 0; float32 stays float32; bad inputs are named:

# %%
test_eq(price_derivative(lambda mu, cov: mu.sum(-1), b_mu, b_cov, [(0, 1)]), torch.zeros(5))
y = price_derivative(quartic_expectation, b_mu.float(), b_cov.float(), [(0, 1)])
test_eq((y.dtype, y.shape), (torch.float32, torch.Size([5])))
quartic_d = lambda mu=b_mu, cov=b_cov, pairs=[(0, 1)]: price_derivative(quartic_expectation, mu, cov, pairs)
test_fail(lambda: quartic_d(pairs=[(0, 2)]), contains='pairs must index 0..1 (0-based); got (0, 2)')
test_fail(lambda: quartic_d(pairs=[(1, 1)]), contains='pairs must be off-diagonal')
test_fail(lambda: quartic_d(pairs=(0, 1)), contains='pairs must be a sequence of (i, j)')
test_fail(lambda: quartic_d(pairs=[]), contains='at least one')
test_fail(lambda: quartic_d(cov=b_L), contains='cov must be symmetric')
test_fail(lambda: quartic_d(cov=-b_cov), contains='cov must have a non-negative diagonal')
test_fail(lambda: quartic_d(cov=b_cov[:, :1]), contains='cov must have shape (..., 2, 2)')
test_fail(lambda: quartic_d(mu=b_mu[:3]), contains='shapes do not broadcast: mu batch (3,), cov batch (5,)')
test_fail(lambda: price_derivative(lambda mu, cov: quartic_expectation(mu, cov).sum(), b_mu, b_cov, [(0, 1)]),
          contains='expectation must return one value per batch entry, shape (5,); got ()')


# %% [markdown]
# ### The expectation of the mixed partial, by Monte Carlo
# `price_rhs_mc` estimates the right side $\mathbb E[\partial^p\Psi/\partial x_{i_1}\cdots]$ from samples, given the
# mixed partial as a torch function of a batch of points (for ReLUs a product of steps, which autograd cannot produce).
# It samples standard normals $z$ with `mc_moments` ([Monte Carlo](02_montecarlo.ipynb): seeded, streamed, with
# standard errors) and maps them to
# $x = \mu + Lz$, $LL^\top = \Sigma$, for the whole batch at once; $L$ is the Cholesky factor, or $V\Lambda^{1/2}$ from
# the eigendecomposition when a covariance is singular.

# %%
#| export
class PriceMC(NamedTuple):
    "Monte Carlo estimate of E[mixed partial of Psi] with its standard error."
    mean:Tensor     # the estimate, batch shape
    mean_se:Tensor  # its standard error, batch shape
    n:int           # number of samples


# %%
#| export
def price_rhs_mc(
    mixed_partial:Callable,  # maps samples x (m, ..., N) to the mixed partial of Psi at them, (m, ...)
    mu:Tensor,               # mean of x, shape (..., N)
    cov:Tensor,              # covariance of x, (..., N, N) symmetric PSD (singular allowed); batch broadcasts with mu's
    n:int=100_000,           # number of Monte Carlo samples per batch entry, >= 2
    seed:int=0,              # seeds a local torch.Generator on mu's device
    chunk:int=10_000,        # samples per call of `mixed_partial`: bounds memory, leaves the result unchanged
    generator:torch.Generator|None=None,  # used instead of `seed` when given
)->PriceMC:                  # mean and mean_se of batch shape, in mu's dtype and on its device
    "Monte Carlo E[mixed_partial(x)] for x ~ N(mu, cov), batched (the right side of Price's theorem)."
    mu, cov, batch = _gaussian_inputs(mu, cov)
    n, chunk = check_count(n, 'n', 2), check_count(chunk, 'chunk', 1)
    N = mu.shape[-1]
    if batch.numel() == 0: return PriceMC(mu.new_zeros(batch), mu.new_zeros(batch), n)   # an empty batch: nothing to sample
    mu, L = mu.expand(*batch, N), _cov_factor(cov).expand(*batch, N, N)
    def values(z):
        y = mixed_partial(mu + (L @ z[..., None]).squeeze(-1))
        if not isinstance(y, Tensor) or y.shape != (len(z), *batch):
            found = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise ValueError(f'mixed_partial must map samples {tuple(z.shape)} to shape {(len(z), *batch)}; got {found}')
        check_finite(y, 'mixed_partial(x)')
        return y.to(mu.dtype).reshape(len(z), -1)
    est = mc_moments(values, torch.zeros_like(mu), 1., n, seed=seed, chunk=chunk, full_cov=False, generator=generator)
    return PriceMC(est.mean.reshape(batch), est.mean_se.reshape(batch), est.n)

def _cov_factor(cov):
    "Batched L with L L^T = cov: Cholesky, or V sqrt(clip(lambda, 0)) from `eigh` when any matrix is singular."
    L, info = torch.linalg.cholesky_ex(cov)
    if not info.any(): return L
    lam, V = torch.linalg.eigh(cov)
    return V * lam.clamp(min=0).sqrt()[..., None, :]


# %% [markdown]
# It recovers Lemma 2's right side for the quartic, $\mathbb E[4x_1x_2] = 4(\mu_1\mu_2 + \sigma_{12})$, within 4 standard
# errors for each batch entry; the result does not depend on `chunk`, and the seed is honoured:

# %%
quartic_partial = lambda x: 4 * x[..., 0] * x[..., 1]
est = price_rhs_mc(quartic_partial, b_mu, b_cov, n=20_000)
test_eq((est.mean.shape, est.mean_se.shape, est.n), ((5,), (5,), 20_000))
assert ((est.mean - first).abs() <= 4 * est.mean_se).all()
quartic_mc = lambda **kw: price_rhs_mc(quartic_partial, b_mu, b_cov, n=3000, **kw).mean
test_eq(quartic_mc(chunk=700), quartic_mc())
assert (quartic_mc(seed=1) != quartic_mc()).all()

# %% [markdown]
# Singular covariances are fine, in a batch beside regular ones (here $x_2 = x_1$ twice, so
# $\mathbb E[4x_1x_2] = 4(\mu_1\mu_2 + \sigma_{11})$), and a `mixed_partial` of the wrong shape is named:

# %%
sing = torch.stack([torch.ones(2, 2, dtype=f64), torch.eye(2, dtype=f64), 2 * torch.ones(2, 2, dtype=f64)])
est = price_rhs_mc(quartic_partial, torch.tensor([0.5, 0.5], dtype=f64), sing, n=20_000)
assert ((est.mean - 4 * torch.tensor([1.25, 0.25, 2.25], dtype=f64)).abs() <= 4 * est.mean_se).all()
test_fail(lambda: price_rhs_mc(lambda x: x, b_mu, b_cov, n=10),
          contains='mixed_partial must map samples (10, 5, 2) to shape (10, 5)')
test_fail(lambda: price_rhs_mc(quartic_partial, b_mu, b_cov, n=1), contains='n must be >= 2')
test_fail(lambda: price_rhs_mc(lambda x: x[..., 0] / 0 * 0, b_mu, b_cov, n=10), contains='mixed_partial(x) must be finite')

# %% [markdown]
# An empty batch gives empty estimates, without sampling:

# %%
empty = price_rhs_mc(quartic_partial, b_mu[:0], b_cov[0], n=10)
test_eq((empty.mean.shape, empty.mean_se.shape, empty.n), ((0,), (0,), 10))


# %% [markdown]
# ### Both sides at once
# `check_price` puts the two together: autograd on the left, Monte Carlo on the right, and `ok` where they agree within
# `se` standard errors, plus a round-off allowance of $64\,\epsilon$ relative (for right sides that sampling gets
# exactly, such as a constant mixed partial), plus `atol`. The last is for rare events: when no sample lands where the
# mixed partial is non-zero (an indicator of a quadrant that has probability $10^{-40}$), the estimate and its standard
# error are both 0 and the left side, however right, is not within 0 of 0. For an indicator, no hit in $n$ samples
# makes a probability above $10/n$ implausible ($(1 - 10/n)^n \approx e^{-10}$): `atol` $= 10/n$.

# %%
#| export
class PriceCheck(NamedTuple):
    "Both sides of Price's theorem for one Psi, and whether they agree."
    lhs:Tensor     # d^k E[Psi] / prod d sigma_ij by autograd, batch shape
    rhs:Tensor     # Monte Carlo E[mixed partial of Psi], batch shape
    rhs_se:Tensor  # standard error of rhs
    ok:Tensor      # bool, batch shape: |lhs - rhs| <= se * rhs_se + atol (+ 64 eps relative)


# %%
#| exporti
def _tolerance(x, name):
    "`x` as a float, or a `TypeError`/`ValueError` naming the argument unless it is a finite number >= 0."
    if isinstance(x, bool) or not isinstance(x, (numbers.Real, Tensor)) or (isinstance(x, Tensor) and x.numel() != 1):
        raise TypeError(f'{name} must be a number; got {type(x).__name__}')
    if not math.isfinite(float(x)) or float(x) < 0: raise ValueError(f'{name} must be finite and >= 0; got {float(x)}')
    return float(x)


# %%
#| export
def check_price(
    expectation:Callable,    # (mu, cov) -> E[Psi(x)] of shape (...), as for `price_derivative`
    mixed_partial:Callable,  # samples (m, ..., N) -> prod over pairs of d^2 Psi / dx_i dx_j at them, (m, ...)
    mu:Tensor,               # mean of x, shape (..., N)
    cov:Tensor,              # covariance of x, (..., N, N) symmetric PSD
    pairs:Sequence,          # k off-diagonal (i, j) index pairs, 0-based
    n:int=100_000,           # Monte Carlo samples
    seed:int=0,              # seed of the Monte Carlo generator
    se:float=4.,             # tolerance in standard errors
    atol:float=0.,           # absolute slack added to the tolerance, e.g. 10 / n for indicator partials
)->PriceCheck:               # lhs, rhs, rhs_se, ok
    "Check Price's theorem for a user's Psi: autograd of E[Psi] in the covariance against sampled mixed partials."
    se, atol = _tolerance(se, 'se'), _tolerance(atol, 'atol')
    lhs = price_derivative(expectation, mu, cov, pairs)
    est = price_rhs_mc(mixed_partial, mu, cov, n=n, seed=seed)
    rhs = est.mean.to(lhs.dtype)
    slack = 64 * torch.finfo(lhs.dtype).eps * torch.maximum(lhs.detach().abs(), rhs.abs())
    return PriceCheck(lhs, rhs, est.mean_se, (lhs.detach() - rhs).abs() <= se * est.mean_se + slack + atol)


# %% [markdown]
# Lemma 2 for the quartic, first and second order; a wrong mixed partial (the factor 4 forgotten) is caught:

# %%
res = check_price(quartic_expectation, quartic_partial, b_mu, b_cov, [(0, 1)], n=20_000)
assert res.ok.all()
test_eq(res.ok.dtype, torch.bool)
fourth = lambda x: torch.full_like(x[..., 0], 4.)   # d^4 (x1^2 x2^2) / dx1^2 dx2^2
assert check_price(quartic_expectation, fourth, b_mu, b_cov, [(0, 1), (0, 1)], n=100).ok.all()
assert not check_price(quartic_expectation, lambda x: x[..., 0] * x[..., 1], b_mu, b_cov, [(0, 1)], n=20_000).ok.any()
test_fail(lambda: check_price(quartic_expectation, quartic_partial, b_mu, b_cov, [(0, 0)]),
          contains='pairs must be off-diagonal')
test_fail(lambda: check_price(quartic_expectation, quartic_partial, b_mu, b_cov, [(0, 1)], se=math.nan),
          contains='se must be finite and >= 0', exc=ValueError)
test_fail(lambda: check_price(quartic_expectation, quartic_partial, b_mu, b_cov, [(0, 1)], atol='0'),
          contains='atol must be a number', exc=TypeError)


# %% [markdown]
# And the ReLU product, where the mixed partial is the product of steps: the exact `relu_cross_moment` against
# $\mathbb E[u(x_1)u(x_2)]$ on the whole grid above (every Gaussian of it in one batched call; some quadrants have
# probability $10^{-40}$, hence `atol` $= 10/n$):

# %%
def relu_pair(mu, cov):
    "E[relu(x1) relu(x2)] for x ~ N(mu, cov), batched over the leading dims."
    return relu_cross_moment(mu[..., 0], mu[..., 1], cov[..., 0, 0], cov[..., 1, 1], cov[..., 0, 1])

step_product = lambda x: (x > 0).all(-1)
g_mean = torch.stack([g_mu1, g_mu2], -1)
g_cov = torch.stack([torch.stack([g_var1, g_cov12], -1), torch.stack([g_cov12, g_var2], -1)], -2).detach()
res = check_price(relu_pair, step_product, g_mean, g_cov, [(0, 1)], n=20_000, atol=10 / 20_000)
test_close(res.lhs, ref1, eps=1e-12)
assert res.ok.all()
assert ((res.rhs_se == 0) & (res.lhs > 0)).any()   # quadrants no sample reached: only atol admits them
test_close(price_derivative(relu_pair, g_mean, g_cov, [(0, 1), (0, 1)])[inner], ref2[inner],
           eps=1e-12 * ref2.abs().clamp(min=1)[inner])

# %% [markdown]
# ## Figure: the ReLU product and its $\sigma_{12}$-derivatives
# For means $(0.5, -0.3)$ and variances $(1, 2)$: $\mathbb E[\mathrm{relu}(x_1)\mathrm{relu}(x_2)]$, its first
# derivative in $\sigma_{12}$, which is the probability that both units are on (a cdf in $\rho$: increasing, from
# $\max(0, \Phi(h_1) + \Phi(h_2) - 1)$ to $\Phi(\min(h_1, h_2))$), and its second, the density at the origin (positive:
# the product moment is convex in $\sigma_{12}$). Lines: autograd of the exact form; points: Monte Carlo of
# $\mathbb E[u(x_1)u(x_2)]$ ($2\cdot10^4$ samples each) with 4-SE bars.

# %%
#| label: fig-price-relu
#| fig-cap: "E[relu(x1) relu(x2)] for mu = (0.5, -0.3), var = (1, 2) against rho, and its first two derivatives in sigma12 by autograd (lines). Points: Monte Carlo estimates of E[u(x1) u(x2)] with 4-SE bars."
rho_axis = torch.linspace(-0.995, 0.995, 200, dtype=f64)
fig_var = torch.tensor([1., 2.], dtype=f64)
fig_mean = torch.tensor([0.5, -0.3], dtype=f64).expand(len(rho_axis), 2)
def fig_cov(r):
    v1, v2, c12 = fig_var[0].expand_as(r), fig_var[1].expand_as(r), r * fig_var.prod().sqrt()
    return torch.stack([torch.stack([v1, c12], -1), torch.stack([c12, v2], -1)], -2)
curves = [relu_pair(fig_mean, fig_cov(rho_axis)), price_derivative(relu_pair, fig_mean, fig_cov(rho_axis), [(0, 1)]),
          price_derivative(relu_pair, fig_mean, fig_cov(rho_axis), [(0, 1), (0, 1)])]
rho_pts = torch.linspace(-0.9, 0.9, 10, dtype=f64)
pts = price_rhs_mc(step_product, fig_mean[:10], fig_cov(rho_pts), n=20_000, seed=1)
fig, axes = plt.subplots(1, 3, figsize=(9, 2.8), layout='constrained')
labels = ['E = E[relu(x1) relu(x2)]', 'dE / d sigma12', 'd2E / d sigma12^2']
titles = ['the product moment', '= P(x1 > 0, x2 > 0)', '= density of x at (0, 0)']
for ax, curve, label, title in zip(axes, curves, labels, titles):
    ax.plot(rho_axis, curve.detach()); ax.set(xlabel='rho', ylabel=label, title=title)
axes[1].errorbar(rho_pts, pts.mean, yerr=4 * pts.mean_se, fmt='o', ms=3, capsize=2, label='Monte Carlo');
axes[1].legend(fontsize=7);

# %% [markdown]
# ## Export -

# %%
#| hide
#| eval: false
import nbdev; nbdev.nbdev_export()

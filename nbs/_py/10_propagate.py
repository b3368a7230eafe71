# %% [markdown]
# # Layer-wise moment propagation
# > Mean and covariance of a ReLU network's output for Gaussian input, pushed through it layer by layer: exact affine maps, the exact Gaussian ReLU moments, Clark's max (Clark 1961) for pooling; full, low-rank and diagonal covariances (beyond the papers)

# %%
#| default_exp propagate

# %%
#| export
from __future__ import annotations
import math
from typing import NamedTuple
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair
from netmoments.core import as_tensors, check_cov, check_finite, check_var
from netmoments.gaussian import normal_cdf, normal_pdf
from netmoments.linearize import model_layers, _forward
from netmoments.montecarlo import LowRankCov, _cov_sqrt
from netmoments.relu import _relu_cov_pair, _relu_cross_moment, _relu_mean, _relu_var, _saturated_ratio

# %%
#| hide
import copy
import sympy as sp
import matplotlib.pyplot as plt
from IPython.display import Markdown, display
from fastcore.test import test_eq, test_close, test_fail
from netmoments.ara import ara_moments
from netmoments.bench import best_time
from netmoments.core import Table
from netmoments.linearize import seeded, two_stage
from netmoments.models import synthetic
from netmoments.montecarlo import mc_moments
from netmoments.relu import relu_cross_moment, _relu_moments_full


# %% [markdown]
# [Bibi et al. (2018)](99_references.ipynb#bibi2018) and [Alfadly et al. (2020)](99_references.ipynb#alfadly2020) reach
# a deep network through the [two-stage linearization](09_linearize.ipynb): everything but one ReLU is replaced by its
# Taylor expansion at the input point, and [Affine-ReLU-Affine networks](05_ara.ipynb) gives the exact moments of what
# is left. This chapter takes the other road, common in the later literature on uncertainty propagation (assumed-density
# filtering, moment matching): push a Gaussian through the network one layer at a time, keeping its mean and covariance.
# Every layer is then treated at its own level of nonlinearity, and nothing is linearized around a point:
#
# - an **affine** layer (`Linear`, `Conv2d`, `AvgPool2d`, eval-mode `BatchNorm1d/2d`, `Flatten`, eval-mode `Dropout`,
#   `Identity`) maps a Gaussian to a Gaussian, exactly: the mean goes through the layer, the covariance becomes
#   $J\Sigma J^\top$;
# - a **ReLU** of a Gaussian has the exact mean and covariance of [ReLU moments](03_relu.ipynb) (`relu_moments`); its
#   output is no longer Gaussian, and the next ReLU or max-pooling layer *treats* it as Gaussian with those moments.
#   That is the one approximation of the method: exact up to and including the first ReLU, moment-matched after it;
# - **max pooling** is nonlinear even for Gaussian input; we use the moments of the max of two Gaussians of
#   [Clark (1961)](99_references.ipynb#clark1961), pair by pair along each window.
#
# The covariance can be carried in three forms, the `mode` of `propagate_moments`:
#
# | mode | covariance carried | affine layer | ReLU | memory per layer of width $D$ |
# |---|---|---|---|---|
# | `"full"` | dense $D \times D$ | exact $J\Sigma J^\top$ | exact Gaussian moments ($D^2$ pairs) | $D^2$ |
# | `"lowrank"` | $UU^\top + \mathrm{diag}(d)$, $U$ of rank $r$ | $U \to JU$ exactly, $d$ by squared weights | exact mean and variances; $U$ times Bussgang's gain | $D r$ |
# | `"diag"` | variances $d$ | squared weights (exact for independent inputs only) | exact mean and variances | $D$ |
#
# In all three modes the covariance is carried exactly up to the first ReLU (see "The input distribution"), so the
# first ReLU's mean and variances are always exact.

# %% [markdown]
# ## The network as a list of layers
# The model is read as the flat list of modules of [Two-stage linearization](09_linearize.ipynb) (`model_layers`: an
# `nn.Sequential`, or a module with `as_sequential()`; nested sequences flattened; an unsupported module or a
# training-mode batch norm or dropout is refused, naming it and its index). Two more things are refused here: an
# eval-mode batch norm without running statistics (it normalizes by the batch, so it is not affine) and a `MaxPool2d`
# that returns indices.

# %%
#| exporti
def _layers(model):
    "model_layers(model), plus the checks that only moment propagation needs."
    layers = model_layers(model)
    for i, m in enumerate(layers):
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.running_var is None:
            raise ValueError(f'module {i} of the model ({type(m).__name__}) has no running statistics: in eval mode it '
                             f'normalizes by the batch, which is not an affine map')
        if isinstance(m, nn.MaxPool2d) and m.return_indices:
            raise ValueError(f'module {i} of the model (MaxPool2d) returns indices; use return_indices=False')
    return layers


# %% [markdown]
# `mu` has the shape of one input, or a leading batch dimension more. Which of the two is read off the first layer
# that fixes the rank of its input: three dimensions $(C, H, W)$ before `Conv2d`, the pooling layers and
# `BatchNorm2d`; one before `Linear` and `BatchNorm1d`. A leading `Flatten` defers to the `Linear` after it: `mu` is one
# input when it has that layer's number of features.

# %%
#| exporti
def _input_ndim(layers, mu):
    "The number of dimensions of one input of the model, or None when no layer fixes it."
    flattened = False
    for m in layers:
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.BatchNorm2d)) and not flattened: return 3
        if isinstance(m, nn.Flatten): flattened = True
        if isinstance(m, nn.Linear):
            if not flattened: return 1
            return mu.ndim if mu.numel() == m.in_features else mu.ndim - 1
        if isinstance(m, nn.BatchNorm1d) and not flattened: return 1
    return None


# %%
with torch.device('meta'):
    conv_first = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 1))
    flat_first = nn.Sequential(nn.Flatten(), nn.Linear(12, 1))
test_eq(_input_ndim(list(conv_first), torch.zeros(5, 1, 4, 4)), 3)
test_eq(_input_ndim(list(flat_first), torch.zeros(3, 4)), 2)             # one (3, 4) input
test_eq(_input_ndim(list(flat_first), torch.zeros(7, 3, 4)), 2)          # a batch of 7
test_eq(_input_ndim([nn.ReLU()], torch.zeros(3)), None)


# %% [markdown]
# ## The input distribution
# `cov` takes the forms of `mc_moments` ([Monte Carlo](02_montecarlo.ipynb)): a number $\sigma^2$ ($\sigma^2 I$),
# per-element variances of `mu`'s shape (or of one input's shape), a full $(N, N)$ matrix over the $N$ entries of one
# input (or $(B, N, N)$, one per point of a batch), or a `LowRankCov(factor, diag)`. Internally the mean is a batch
# $(B, \ast\text{shape})$ and the covariance is either a dense $(B', D, D)$ tensor (full mode) or a pair $(U^\top, d)$:
# the factor stored by rows, $(B', k, D)$, and the diagonal $(B', D)$, with $\Sigma = U U^\top + \mathrm{diag}(d)$. $B'$
# is 1 while the covariance is the same for every point (affine layers do not depend on the mean) and becomes $B$ at the
# first ReLU.
#
# The diagonal and low-rank modes start from an exact square root of the input covariance, $U U^\top = \Sigma$ with
# $d = 0$: the input's own factor and one column $\sqrt{d_j} e_j$ per non-zero variance. Affine layers map $U$
# exactly, so every covariance up to the first ReLU is exact in these modes too (a max-pooling layer before it needs
# the correlations inside its windows). The cost is a factor of up to $N$ (or $r + N$) columns until that ReLU, where
# it is cut to rank $r$ (rank 0 in diagonal mode).

# %%
#| exporti
def _input_state(mu, cov, ndim, full):
    "Validated (mean (B, *shape), batched, cov): cov dense (B', N, N) if `full`, else (Ut (B', k, N), d (B', N))."
    if ndim is None: ndim = mu.ndim
    if mu.ndim not in (ndim, ndim + 1) or mu.ndim == 0:
        raise ValueError(f'mu must have the shape of one input of the model ({ndim} dims) or a batch of them '
                         f'({ndim + 1} dims); got shape {tuple(mu.shape)}')
    batched = mu.ndim == ndim + 1
    if mu.numel() == 0: raise ValueError(f'mu must not be empty; got shape {tuple(mu.shape)}')
    mean = mu if batched else mu[None]
    B, shape, N = len(mean), mean.shape[1:], mean[0].numel()
    if isinstance(cov, LowRankCov):
        factor, diag = cov
        if factor.ndim != 2 or factor.shape[0] != N:
            raise ValueError(f'cov.factor must have shape ({N}, r) for inputs with {N} entries; got {tuple(factor.shape)}')
        if diag.shape not in ((N,), shape):
            raise ValueError(f'cov.diag must have shape ({N},) or {tuple(shape)}; got {tuple(diag.shape)}')
        check_finite(factor, 'cov.factor'); check_var(diag, 'cov.diag')
        Ut, d = factor.mT[None], diag.reshape(1, N)
    elif cov.ndim == 0 or cov.shape in (shape, mean.shape):
        check_var(cov, 'cov')
        Ut, d = None, cov.expand(mean.shape if cov.shape == mean.shape else shape).reshape(-1, N)
    elif cov.shape[-2:] == (N, N) and (cov.ndim == 2 or (batched and cov.ndim == 3 and len(cov) in (1, B))):
        check_cov(cov, 'cov')
        full_cov = cov if cov.ndim == 3 else cov[None]
        if full: return mean, batched, full_cov
        return mean, batched, (_cov_sqrt(full_cov).mT, full_cov.new_zeros(len(full_cov), N))
    else:
        raise ValueError(f'cov must be a number, variances of shape {tuple(shape)}, an ({N}, {N}) matrix or a '
                         f'LowRankCov; got shape {tuple(cov.shape)}')
    if full:
        dense = torch.diag_embed(d)
        return mean, batched, dense if Ut is None else dense + Ut.mT @ Ut
    keep = (d > 0).any(0)                                     # one column sqrt(d_j) e_j per non-zero variance
    pos = d > 0                                               # sqrt's gradient is infinite at 0: no path there
    columns = torch.diag_embed(torch.where(pos, torch.where(pos, d, torch.ones_like(d)).sqrt(), torch.zeros_like(d)))[:, keep]
    Ut = columns if Ut is None else torch.cat([Ut.expand(len(d), -1, -1), columns], -2)
    return mean, batched, (Ut, torch.zeros_like(d))


# %% [markdown]
# Every form gives the same covariance, dense in full mode and as $U U^\top + \mathrm{diag}(d)$ otherwise; variances
# of the batch's shape give one covariance per point:

# %%
gen = torch.Generator().manual_seed(0)
mu_in = torch.rand(1, 2, 3, generator=gen, dtype=torch.float64)
F_in = torch.randn(6, 2, generator=gen, dtype=torch.float64)
v_in = torch.rand(1, 2, 3, generator=gen, dtype=torch.float64)
dense_of = lambda s: s if isinstance(s, Tensor) else s[0].mT @ s[0] + torch.diag_embed(s[1])
eye6 = torch.eye(6, dtype=torch.float64)
forms = {'number': (torch.tensor(0.3, dtype=torch.float64), 0.3 * eye6), 'variances': (v_in, v_in.flatten().diag()),
         'matrix': (F_in @ F_in.mT + eye6, F_in @ F_in.mT + eye6),
         'low rank': (LowRankCov(F_in, v_in.flatten()), F_in @ F_in.mT + v_in.flatten().diag())}
for form, (cov_in, dense) in forms.items():
    for full in (True, False):
        mean, batched, state = _input_state(mu_in, cov_in, 3, full)
        test_eq((mean.shape, batched), ((1, 1, 2, 3), False))
        test_close(dense_of(state)[0], dense, eps=1e-14)
mean, batched, state = _input_state(mu_in.expand(4, 1, 2, 3), v_in.expand(4, 1, 2, 3) * torch.arange(1., 5)[:, None, None, None].double(), 3, True)
test_eq((batched, state.shape), (True, (4, 6, 6))); test_close(state[3], 4 * v_in.flatten().diag(), eps=1e-15)

# %% [markdown]
# ## Affine layers
# For $x' = Jx + b$ and $x \sim \mathcal N(m, \Sigma)$: $x' \sim \mathcal N(Jm + b, J\Sigma J^\top)$, exactly. The mean
# is the layer applied to the mean. The covariance never needs $J$ as a matrix: applying the layer *without its bias*
# to the $D$ rows of $\Sigma$, each read as one input (a batch of $D$ images for a convolution), gives $\Sigma J^\top$
# row by row; doing it again to the rows of its transpose gives $J\Sigma J^\top$. In factor form the rows of $U^\top$ go
# through the layer once: $(JU)(JU)^\top = JUU^\top J^\top$.
#
# The diagonal part $\mathrm{diag}(d)$ is where the cheap rule enters. The variance of one output is a quadratic form
# in the covariance; it loses its cross terms, and becomes the layer with squared coefficients applied to the
# variances, exactly when the inputs are independent:

# %%
w1, w2, v1, v2, c12 = sp.symbols('w1 w2 v1 v2 c12', real=True)
var_of_sum = (sp.Matrix([[w1, w2]]) * sp.Matrix([[v1, c12], [c12, v2]]) * sp.Matrix([w1, w2]))[0]
squared_rule = w1**2 * v1 + w2**2 * v2
test_eq(sp.expand(var_of_sum - squared_rule), 2 * w1 * w2 * c12)


# %% [markdown]
# So the diagonal and low-rank modes map $d$ through $J \circ J$ (the rule of [Alfadly et al.
# (2019)](99_references.ipynb#alfadly2019), eq 5, for a conv layer: the same convolution with squared weights and no
# bias), dropping the off-diagonal of $J\,\mathrm{diag}(d)\,J^\top$. Before the first ReLU $d = 0$ and nothing is
# dropped; after it, $d$ holds what the low-rank factor does not, and correlations it would create are lost. For
# `AvgPool2d` every coefficient of one window is the same $c$ (one over the window's divisor, whatever the padding and
# `ceil_mode`), so $\sum_j c^2 v_j = c\cdot\mathrm{pool}(v)$, and $c = \mathrm{pool}(1)/\#$ (real entries of the
# window). For convolutions with `padding_mode` other than zeros a reflected pixel can appear twice in one window, and
# the rule counts it as two independent ones.

# %%
#| exporti
def _bn_scale(m, x):
    "Eval-mode batch norm's per-channel scale, shaped to broadcast against x (K, C, ...)."
    s = (m.running_var + m.eps).rsqrt()
    if m.weight is not None: s = s * m.weight
    return s.reshape(-1, *[1] * (x.ndim - 2))

def _linear_part(m, x):
    "The layer's linear map J (no bias) applied to each input of the batch x (K, *in_shape)."
    if isinstance(m, nn.Linear): return F.linear(x, m.weight)
    if isinstance(m, nn.Conv2d): return m._conv_forward(x, m.weight, None)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)): return x * _bn_scale(m, x)
    if isinstance(m, (nn.Dropout, nn.Identity)): return x
    return m(x)                                                  # AvgPool2d, Flatten: linear already

def _squared_part(m, v):
    "The layer's linear map with every coefficient squared, applied to variances v (K, *in_shape)."
    if isinstance(m, nn.Linear): return F.linear(v, m.weight ** 2)
    if isinstance(m, nn.Conv2d): return m._conv_forward(v, m.weight ** 2, None)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)): return v * _bn_scale(m, v) ** 2
    if isinstance(m, nn.AvgPool2d):                              # c^2 sum v = c pool(v), c = pool(1) / count
        ones = torch.ones_like(v[:1])
        count = F.avg_pool2d(ones, m.kernel_size, m.stride, m.padding, m.ceil_mode, True, divisor_override=1)
        return m(v) * m(ones) / count
    if isinstance(m, (nn.Dropout, nn.Identity)): return v
    return m(v)                                                  # Flatten


# %%
#| exporti
def _rows(fn, x, shape):
    "fn applied to the rows of x (..., D), each read as one input of `shape`: (..., D')."
    y = fn(x.reshape(-1, *shape))
    return y.reshape(*x.shape[:-1], math.prod(y.shape[1:]))

def _affine(m, cov, shape):
    "The covariance after affine layer m: J cov J^T (dense), or (J U, (J o J) d) in factor form."
    lin = lambda x: _rows(lambda y: _linear_part(m, y), x, shape)
    if isinstance(cov, Tensor):
        out = lin(lin(cov).mT)
        return (out + out.mT) / 2
    Ut, d = cov
    return lin(Ut), _rows(lambda y: _squared_part(m, y), d, shape)


# %% [markdown]
# Each layer type against its explicit Jacobian from `torch.autograd.functional.jacobian`: the dense map gives
# $J\Sigma J^\top$, the factor map $JU$, and the squared map $(J\circ J)\,v$, on small inputs with odd settings
# (stride, padding, groups, `ceil_mode`, `count_include_pad=False`, a batch norm without affine parameters):

# %%
def test_layer(m, shape, seed=0):
    "The three maps of layer m against its explicit Jacobian, on inputs of `shape`."
    gen = torch.Generator().manual_seed(seed)
    m = m.double().eval()
    for t in m.parameters(): t.requires_grad_(False)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        m.running_mean.copy_(torch.randn(m.num_features, generator=gen)); m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda v: m(v.reshape(1, *shape)).flatten(), x.flatten(), vectorize=True)
    N = x.numel()
    L = torch.randn(N, N, generator=gen, dtype=torch.float64)
    cov = L @ L.mT / N
    v = torch.rand(1, N, generator=gen, dtype=torch.float64)
    test_close(_affine(m, cov[None], shape)[0], J @ cov @ J.mT, eps=1e-13)
    Ut, d = _affine(m, (L.mT[None], v), shape)
    test_close(Ut[0], (J @ L).mT, eps=1e-13)
    test_close(d[0], (J * J) @ v[0], eps=1e-13)

for m, shape in [(nn.Linear(5, 3), (5,)), (nn.Conv2d(2, 4, 3, stride=2, padding=1), (2, 5, 6)),
                 (nn.Conv2d(4, 4, 2, groups=2, dilation=2, padding_mode='circular', padding=1), (4, 4, 4)),
                 (nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False), (2, 6, 7)),
                 (nn.AvgPool2d(2), (3, 4, 4)), (nn.AvgPool2d(3, 2, 1, divisor_override=5), (1, 5, 5)),
                 (nn.BatchNorm1d(5), (5,)), (nn.BatchNorm2d(3, affine=False), (3, 2, 2)),
                 (nn.Flatten(), (2, 3, 2)), (nn.Dropout(0.3), (4,)), (nn.Identity(), (3,))]:
    test_layer(m, shape)


# %% [markdown]
# ## ReLU: the exact Gaussian moments
# For a Gaussian pre-activation $z \sim \mathcal N(m, \Sigma)$ the mean and covariance of $\mathrm{relu}(z)$ are the
# exact ones of [ReLU moments](03_relu.ipynb) (`relu_moments`: Remark 1 and Lemma 1 of [Bibi et al.
# (2018)](99_references.ipynb#bibi2018) and the general-mean pair moment). Before the
# first ReLU the pre-activation is Gaussian and they are exact; after it, `propagate_moments` uses them with the
# moment-matched Gaussian in place of the true, non-Gaussian pre-activation. Full mode evaluates all $D^2$ pair moments
# of a layer of width $D$, a block of rows at a time so that memory stays at about `budget` pairs; it is
# `_relu_moments_full` of [ReLU moments](03_relu.ipynb), in blocks:

# %%
#| exporti
def _relu_full(mean, cov, budget=2**19):
    "Exact mean and covariance of relu(z), z ~ N(mean (B, D), cov (B', D, D)), about `budget` pairs at a time."
    var = cov.diagonal(dim1=-2, dim2=-1)
    mean, var = torch.broadcast_tensors(mean, var)
    m_r, v_r = _relu_mean(mean, var), _relu_var(mean, var)
    D = mean.shape[-1]
    chunk = max(1, budget // (D * len(mean)))
    rows = []
    for start in range(0, D, chunk):
        u = slice(start, start + chunk)
        rows.append(_relu_cov_pair(mean[:, u, None], mean[:, None, :], var[:, u, None], var[:, None, :], cov[:, u, :]))
    c = torch.cat(rows, -2)
    c = (c + c.mT) / 2
    return m_r, c - torch.diag_embed(c.diagonal(dim1=-2, dim2=-1)) + torch.diag_embed(v_r)


# %%
L = torch.randn(2, 30, 30, generator=gen, dtype=torch.float64)
cov_z = L @ L.mT / 30
mean_z = torch.randn(2, 30, generator=gen, dtype=torch.float64)
ref = _relu_moments_full(mean_z, cov_z)
for budget in (2**19, 100):                                   # one block, and blocks of 1 row
    m_r, c_r = _relu_full(mean_z, cov_z, budget)
    test_close(m_r, ref.mean, eps=1e-15); test_close(c_r, ref.cov, eps=1e-15)

# %% [markdown]
# ### Low rank: Bussgang's gain
# Full mode costs $D^2$ pair moments per ReLU. The low-rank and diagonal modes keep the exact mean and variances
# (univariate, $O(D)$) and replace the covariance by a rule that maps $UU^\top + \mathrm{diag}(d)$ to the same form.
# The rule comes from Stein's lemma ([Stein (1981)](99_references.ipynb#stein1981)), or Bussgang's theorem
# ([Bussgang (1952)](99_references.ipynb#bussgang1952)): for jointly Gaussian $(z_u, z_v)$,
# $$\mathrm{Cov}[\mathrm{relu}(z_u), z_v] = \Phi(h_u)\,\Sigma_{uv}, \qquad h_u = m_u/s_u,$$
# exactly. For $v = u$ it is a one-dimensional integral, which sympy does; for $v \ne u$ it follows because
# $\mathbb E[z_v \mid z_u]$ is affine in $z_u$ with slope $\Sigma_{uv}/s_u^2$.

# %%
z, m_s = sp.symbols('z m', real=True)
s_s = sp.symbols('s', positive=True)
Phi_s = lambda t: (1 + sp.erf(t / sp.sqrt(2))) / 2
density = sp.exp(-(z - m_s)**2 / (2 * s_s**2)) / (s_s * sp.sqrt(2 * sp.pi))
cov_relu_z = sp.integrate(z * (z - m_s) * density, (z, 0, sp.oo))          # E[relu(z) (z - m)]
test_eq(sp.simplify((cov_relu_z - s_s**2 * Phi_s(m_s / s_s)).rewrite(sp.erf)), 0)

# %% [markdown]
# So the Gaussian $\tilde y = m_r + \mathrm{diag}(a)(z - m)$, $a_u = \Phi(h_u)$, has the exact covariance with $z$
# that $\mathrm{relu}(z)$ has; it is the best linear predictor of $\mathrm{relu}(z)$ from $z$ (its gain solves
# $\Sigma g = \mathrm{Cov}[z, \mathrm{relu}(z)] = \Sigma\,\mathrm{diag}(a)$). The rule keeps that linear part on the
# factor and makes the rest independent:
# $$\mathrm{Cov}[\mathrm{relu}(z)] \approx \mathrm{diag}(a)\,UU^\top\,\mathrm{diag}(a) + \mathrm{diag}(d'), \qquad
#   d'_u = \mathrm{Var}[\mathrm{relu}(z_u)] - a_u^2\,\|U_u\|^2 .$$
# - The diagonal is exact, and $d' \ge 0$: by Cauchy–Schwarz $\Phi(h_u)^2 s_u^4 = \mathrm{Cov}[\mathrm{relu}(z_u),
#   z_u]^2 \le \mathrm{Var}[\mathrm{relu}(z_u)]\, s_u^2$, and $\|U_u\|^2 \le s_u^2$.
# - Off the diagonal it is the first-order term in $\Sigma_{uv}$ of the exact value: by
#   [Price's theorem](04_price.ipynb)
#   $\partial\,\mathbb E[\mathrm{relu}(z_u)\mathrm{relu}(z_v)]/\partial\Sigma_{uv} = \Phi_2(h_u, h_v; \rho)$, which is
#   $\Phi(h_u)\Phi(h_v)$ at $\rho = 0$. It is small-correlation accurate, and misses the higher-order terms (the
#   remaining terms of the Hermite expansion of the ReLU), which grow with $|\rho|$.
# - The rank stays $r$. Before the ReLU the factor is cut to the top $r$ eigendirections of $UU^\top$ (from the
#   $k\times k$ Gram matrix $U^\top U$, cheaper than an SVD when $D \gg k$), the dropped variance moved to $d$ so that
#   variances are kept. Rank 0 is the diagonal mode: the cheap rule of [Alfadly et al.
#   (2019)](99_references.ipynb#alfadly2019), variances only.
#
# Numerically, the slope at $\rho = 0$, the inequality on a grid, and the exact cross-covariance against Monte Carlo:

# %%
h_grid = torch.tensor([-2., -0.3, 0., 0.8, 2.5], dtype=torch.float64)
step = 1e-6
slope = (relu_cross_moment(h_grid[:, None], h_grid[None, :], 1., 1., step) - relu_cross_moment(h_grid[:, None], h_grid[None, :], 1., 1., -step)) / (2 * step)
test_close(slope, normal_cdf(h_grid)[:, None] * normal_cdf(h_grid)[None, :], eps=1e-8)
s_grid = torch.tensor([0.1, 1., 7.], dtype=torch.float64)[:, None]
assert (_relu_var(h_grid * s_grid, s_grid**2) >= (normal_cdf(h_grid) * s_grid)**2).all()
pair_cov = torch.tensor([[1., 0.6], [0.6, 2.]], dtype=torch.float64)
pair_mean = torch.tensor([0.4, -1.], dtype=torch.float64)
mc = mc_moments(lambda x: torch.stack([x[:, 0].relu(), x[:, 1]], -1), pair_mean, pair_cov, n=100_000, seed=0)
test_close(mc.cov[0, 1], normal_cdf(pair_mean[0] / 1.) * 0.6, eps=4 * mc.cov_se[0, 1])


# %%
#| exporti
def _truncate(Ut, d, rank):
    "Keep the top `rank` eigendirections of U U^T (U = Ut^T); the dropped variance goes to d, so variances stay."
    rank = min(rank, Ut.shape[-1])                           # U U^T has rank <= D: cutting to D loses nothing
    if Ut.shape[-2] <= rank: return Ut, d
    total = (Ut * Ut).sum(-2)
    if rank == 0: return Ut[..., :0, :], d + total
    lam, V = torch.linalg.eigh(Ut @ Ut.mT)                  # the (k, k) Gram matrix: cheaper than an SVD for D >> k
    Ut = V[..., -rank:].mT @ Ut
    return Ut, d + (total - (Ut * Ut).sum(-2)).clamp(min=0)

def _relu_factor(mean, Ut, d, rank):
    "Exact mean and variances of relu(z); the covariance by Bussgang's gain on the rank-`rank` factor, rest diagonal."
    Ut, d = _truncate(Ut, d, rank)
    var = (Ut * Ut).sum(-2) + d
    mean, var = torch.broadcast_tensors(mean, var)
    m_r, v_r = _relu_mean(mean, var), _relu_var(mean, var)
    zero = var == 0
    s = torch.where(zero, torch.ones_like(var), var).sqrt()
    gain = torch.where(zero, (mean > 0).to(mean.dtype), normal_cdf(_saturated_ratio(mean, s, -50, 50)))
    Ut = Ut * gain[:, None, :]
    return m_r, (Ut, (v_r - (Ut * Ut).sum(-2)).clamp(min=0))


# %% [markdown]
# The truncation keeps the best rank-$r$ part and every variance; the rule gives the exact mean and variances, the exact
# covariance at zero correlation, and off the diagonal an error of second order in the pre-activation covariance
# (dividing $\Sigma$'s off-diagonal by 11 divides it by about 123):

# %%
U_small = torch.randn(1, 6, 30, generator=gen, dtype=torch.float64) / 6
d_small = torch.rand(1, 30, generator=gen, dtype=torch.float64) * 0.1
Ut2, d2 = _truncate(U_small, d_small, 2)
test_eq(Ut2.shape, (1, 2, 30))
test_close((Ut2**2).sum(-2) + d2, (U_small**2).sum(-2) + d_small, eps=1e-15)
lam = torch.linalg.eigvalsh(U_small[0].mT @ U_small[0])
test_close(torch.linalg.eigvalsh(Ut2[0].mT @ Ut2[0])[-2:], lam[-2:], eps=1e-14)
m_r, (Ut_r, d_r) = _relu_factor(mean_z[:1], U_small, d_small, 6)
exact = _relu_moments_full(mean_z[:1], U_small.mT @ U_small + torch.diag_embed(d_small))
test_close(m_r, exact.mean, eps=1e-15); test_close((Ut_r**2).sum(-2) + d_r, exact.var, eps=1e-15)
m_r, (Ut_r, d_r) = _relu_factor(mean_z[:1], U_small[..., :0, :], d_small, 6)      # independent units: exact
test_close(torch.diag_embed(d_r), _relu_moments_full(mean_z[:1], torch.diag_embed(d_small)).cov, eps=1e-15)
offdiag = ~torch.eye(30, dtype=torch.bool)
offdiag_errors = []
for scale in (0.1, 0.03):                                                          # weak correlations: |rho| < 0.1
    m_r, (Ut_r, d_r) = _relu_factor(mean_z[:1], scale * U_small, d_small, 6)
    exact = _relu_moments_full(mean_z[:1], scale**2 * U_small.mT @ U_small + torch.diag_embed(d_small))
    offdiag_errors.append(((Ut_r.mT @ Ut_r)[0] - exact.cov[0])[offdiag].abs().max())
test_close(offdiag_errors[0] / offdiag_errors[1], (0.1 / 0.03)**4, eps=0.2 * (0.1 / 0.03)**4)   # O(Sigma_uv^2)

# %% [markdown]
# ## Max pooling: Clark's max of two Gaussians
# $\max(X, Y) = Y + \mathrm{relu}(X - Y)$, and for jointly Gaussian $(X, Y)$ the difference $W = X - Y$ is
# $\mathcal N(\Delta, \theta^2)$ with $\Delta = \mu_1 - \mu_2$ and $\theta^2 = \sigma_1^2 + \sigma_2^2 - 2\sigma_{12}$.
# So the ReLU moments give the moments of the max of [Clark (1961)](99_references.ipynb#clark1961), with
# $\alpha = \Delta/\theta$, $P = \Phi(\alpha)$, $Q = \Phi(-\alpha)$:
# $\mathbb E[\max] = \mu_2 + \mathbb E[\mathrm{relu}(W)] = \mu_1 P + \mu_2 Q + \theta\varphi(\alpha)$;
# $\mathrm{Var}[\max] = \sigma_2^2 + \mathrm{Var}[\mathrm{relu}(W)] + 2\,\mathrm{Cov}[Y, \mathrm{relu}(W)]$ with
# Bussgang's $\mathrm{Cov}[Y, \mathrm{relu}(W)] = P\,\mathrm{Cov}[Y, W] = P(\sigma_{12} - \sigma_2^2)$; and for any $Z$
# jointly Gaussian with them,
# $$\mathrm{Cov}[\max(X, Y), Z] = \mathrm{Cov}[Y, Z] + P\,\mathrm{Cov}[W, Z] = P\,\mathrm{Cov}[X, Z] + Q\,\mathrm{Cov}[Y, Z].$$
# sympy checks that this variance is Clark's, $\nu_2 - \nu_1^2$ with
# $\nu_2 = (\mu_1^2 + \sigma_1^2)P + (\mu_2^2 + \sigma_2^2)Q + (\mu_1 + \mu_2)\theta\varphi(\alpha)$, and the symmetric
# form the code uses, $P\sigma_1^2 + Q\sigma_2^2 + \theta^2(\alpha^2PQ + \alpha\varphi(Q - P) - \varphi^2)$, which
# has no cancellation of large terms when one input dominates (P, $\varphi$ as symbols, $Q = 1 - P$):

# %%
mu1, mu2, al, P_, phi_ = sp.symbols('mu1 mu2 alpha P phi', real=True)
sig1, sig2, th = sp.symbols('sigma1 sigma2 theta', positive=True)
Q_ = 1 - P_
cov12_s = (sig1**2 + sig2**2 - th**2) / 2
relu_mean_W = al * th * P_ + th * phi_                                      # Remark 1 at Delta = alpha theta
relu_var_W = th**2 * ((al**2 + 1) * P_ + al * phi_) - relu_mean_W**2        # Lemma 1 minus the squared mean
var_max = sig2**2 + relu_var_W + 2 * P_ * (cov12_s - sig2**2)
nu1 = (mu2 + al * th) * P_ + mu2 * Q_ + th * phi_
nu2 = ((mu2 + al * th)**2 + sig1**2) * P_ + (mu2**2 + sig2**2) * Q_ + (2 * mu2 + al * th) * th * phi_
test_eq(sp.expand(nu1 - (mu2 + relu_mean_W)), 0)
test_eq(sp.expand(nu2 - nu1**2 - var_max), 0)
test_eq(sp.expand(var_max - (P_ * sig1**2 + Q_ * sig2**2 + th**2 * (al**2 * P_ * Q_ + al * phi_ * (Q_ - P_) - phi_**2))), 0)


# %%
#| exporti
def _clark_max(mu1, var1, mu2, var2, cov12):
    "Clark (1961): mean and variance of max(X, Y), jointly Gaussian, and the gains P = Phi(alpha), Q = Phi(-alpha)."
    dm = mu1 - mu2
    theta2 = (var1 + var2 - 2 * cov12).clamp(min=0)
    zero = theta2 == 0                                     # X - Y constant: the larger mean wins (P = 1/2 on a tie)
    theta = torch.where(zero, torch.ones_like(theta2), theta2).sqrt()
    a = torch.where(zero, dm.sign() * 50, _saturated_ratio(dm, theta, -50, 50))
    P, Q, pdf = normal_cdf(a), normal_cdf(-a), normal_pdf(a)
    mean = torch.where(zero, torch.maximum(mu1, mu2), mu2 + _relu_mean(dm, theta2))
    spread = torch.where(zero, torch.zeros_like(theta2), theta2 * (a * a * P * Q + a * pdf * (Q - P) - pdf * pdf))
    return mean, (P * var1 + Q * var2 + spread).clamp(min=0), P, Q


# %% [markdown]
# For one pair everything is exact: mean, variance and the covariance with a third Gaussian against Monte Carlo within
# 4 standard errors, and the degenerate cases (equal, or constant difference) give the max itself:

# %%
trio_mean = torch.tensor([0.3, -0.1, 1.], dtype=torch.float64)
Lt = torch.tensor([[1., 0., 0.], [0.7, 0.5, 0.], [-0.4, 0.3, 0.8]], dtype=torch.float64)
trio_cov = Lt @ Lt.mT
mc = mc_moments(lambda x: torch.stack([x[:, :2].amax(1), x[:, 2]], -1), trio_mean, trio_cov, n=100_000, seed=1)
mean_c, var_c, P, Q = _clark_max(trio_mean[0], trio_cov[0, 0], trio_mean[1], trio_cov[1, 1], trio_cov[0, 1])
test_close(mean_c, mc.mean[0], eps=4 * mc.mean_se[0]); test_close(var_c, mc.var[0], eps=4 * mc.var_se[0])
test_close(P * trio_cov[0, 2] + Q * trio_cov[1, 2], mc.cov[0, 1], eps=4 * mc.cov_se[0, 1])
one = torch.tensor(1., dtype=torch.float64)
test_eq([x.item() for x in _clark_max(one, one, one, one, one)], [1., 1., 0.5, 0.5])
test_eq([x.item() for x in _clark_max(one + 2, one, one, one, one)], [3., 1., 1., 0.])


# %% [markdown]
# A window of $k > 2$ entries is reduced pairwise in order, $\max(\max(\max(x_1, x_2), x_3), x_4)$, each running max
# treated as Gaussian with Clark's moments, the usual use of Clark's method and its one approximation. The running max is
# tracked as a gain vector $G$ over the window, $\max \approx G^\top x$ for the purpose of covariances: $G \leftarrow PG +
# Q e_j$ at each step, which gives its covariance with the next entry, $G^\top\Sigma_{:, j}$. After the window, the
# outputs' covariance is $G\Sigma G^\top$ with Clark's variances on the diagonal; in factor form the factor becomes
# $GU$ (rank unchanged) and $d$ whatever variance it does not explain. Full mode is exact for
# $\mathrm{Cov}[\max, Z]$ with a Gaussian $Z$ for $k = 2$ only.
#
# `_windows` lists the input indices of every window with `F.unfold` on an image of indices, for any kernel, stride,
# padding, dilation and `ceil_mode` (padding, which max pooling fills with $-\infty$, gets index $-1$ and is skipped).

# %%
#| exporti
def _windows(m, shape, device):
    "Input indices (C oh ow, k) of every max-pooling window, -1 for padding, real ones first; and the output shape."
    C, H, W = shape
    k, s, p, dil = (_pair(v) for v in (m.kernel_size, m.stride, m.padding, m.dilation))
    out_shape = m(torch.zeros(1, *shape, device=device)).shape[1:]
    ids = torch.arange(1, C * H * W + 1, dtype=torch.float64, device=device).reshape(1, C, H, W)
    ids = F.pad(ids, (p[1], p[1] + s[1], p[0], p[0] + s[0]))             # + stride: room for ceil_mode's windows
    cols = F.unfold(ids, k, dilation=dil, stride=s)                     # (1, C kh kw, L)
    rows = (ids.shape[-2] - dil[0] * (k[0] - 1) - 1) // s[0] + 1
    cols = cols.reshape(C, k[0] * k[1], rows, -1)[:, :, :out_shape[1], :out_shape[2]]
    idx = cols.permute(0, 2, 3, 1).reshape(-1, k[0] * k[1]).long() - 1
    return idx.gather(-1, (idx < 0).to(torch.int8).argsort(dim=-1, stable=True)), out_shape

def _maxpool(m, mean, cov, shape):
    "Max pooling of mean (B, D) and cov by Clark's rule along each window; cross-covariances through the gains."
    idx, out_shape = _windows(m, shape, mean.device)
    valid, safe = idx >= 0, idx.clamp(min=0)
    mw = mean[:, safe]                                                  # (B, windows, k)
    if isinstance(cov, Tensor): Sw = cov[:, safe[:, :, None], safe[:, None, :]]
    else:
        Uw = cov[0][:, :, safe]                                         # (B', r, windows, k)
        Sw = torch.einsum('brwi,brwj->bwij', Uw, Uw) + torch.diag_embed(cov[1][:, safe])
    eye = torch.eye(idx.shape[-1], dtype=mean.dtype, device=mean.device)
    mu_M, var_M, G = mw[..., 0], Sw[..., 0, 0].expand_as(mw[..., 0]), eye[0].expand_as(mw)
    for j in range(1, idx.shape[-1]):
        new = _clark_max(mu_M, var_M, mw[..., j], Sw[..., j, j], (G * Sw[..., :, j]).sum(-1))
        keep = valid[:, j]
        mu_M, var_M = torch.where(keep, new[0], mu_M), torch.where(keep, new[1], var_M)
        G = torch.where(keep[:, None], new[2][..., None] * G + new[3][..., None] * eye[j], G)
    if isinstance(cov, Tensor):
        out = ((G[..., None] * cov[:, safe, :]).sum(-2)[:, :, safe] * G[:, None]).sum(-1)   # G cov G^T
        out = (out + out.mT) / 2
        return mu_M, out - torch.diag_embed(out.diagonal(dim1=-2, dim2=-1)) + torch.diag_embed(var_M), out_shape
    Ut = (cov[0][:, :, safe] * G[:, None]).sum(-1)                      # G U, stored by rows: (B, r, windows)
    return mu_M, (Ut, (var_M - (Ut * Ut).sum(-2)).clamp(min=0)), out_shape


# %% [markdown]
# With zero variance the chain returns the max itself, so the mean matches `F.max_pool2d` of the mean for every
# window geometry, which checks the indices; a window of two entries is exact, so `kernel_size=(1, 2)` matches Clark's
# pair formulas:

# %%
img = torch.randn(2, 2, 7, 6, generator=gen, dtype=torch.float64)
for pool in [nn.MaxPool2d(2), nn.MaxPool2d(3, 2, 1), nn.MaxPool2d(3, 2, 1, ceil_mode=True), nn.MaxPool2d((2, 3), (1, 2), dilation=(2, 1)),
             nn.MaxPool2d(2, 3, ceil_mode=True)]:
    D = img[0].numel()
    for cov in (torch.zeros(1, D, D, dtype=torch.float64), (torch.zeros(1, 0, D, dtype=torch.float64), torch.zeros(1, D, dtype=torch.float64))):
        mu_p, cov_p, out_shape = _maxpool(pool, img.flatten(1), cov, img.shape[1:])
        test_eq(mu_p.reshape(2, *out_shape), pool(img))
pair_img = torch.randn(1, 1, 1, 2, generator=gen, dtype=torch.float64)
mu_p, cov_p, _ = _maxpool(nn.MaxPool2d((1, 2)), pair_img.flatten(1), pair_cov[None], (1, 1, 2))
ref = _clark_max(pair_img[0, 0, 0, 0], pair_cov[0, 0], pair_img[0, 0, 0, 1], pair_cov[1, 1], pair_cov[0, 1])
test_close(mu_p[0, 0], ref[0], eps=1e-15); test_close(cov_p[0, 0, 0], ref[1], eps=1e-15)

# %% [markdown]
# How good is the chain for a $2 \times 2$ window of correlated Gaussians? Against $5\cdot10^4$ Monte Carlo samples, on
# a random $1 \times 4 \times 4$ map with strong correlations (four windows), the means are within a few percent of the
# window's spread and the variances and covariances within some 10%, all three modes alike on the diagonal:

# %%
gen_pool = torch.Generator().manual_seed(3)
mu_map = torch.randn(1, 1, 4, 4, generator=gen_pool, dtype=torch.float64)
Lm = torch.randn(16, 16, generator=gen_pool, dtype=torch.float64) / 4
cov_map = Lm @ Lm.mT + 0.05 * torch.eye(16, dtype=torch.float64)
mc = mc_moments(nn.MaxPool2d(2), mu_map[0], cov_map, n=50_000, seed=2)
mu_p, cov_p, _ = _maxpool(nn.MaxPool2d(2), mu_map.flatten(1), cov_map[None], (1, 4, 4))
pool_mean_err = ((mu_p[0] - mc.mean).abs() / mc.var.sqrt()).max().item()
pool_var_err = ((cov_p[0].diagonal() - mc.var).abs() / mc.var).max().item()
pool_cov_err = ((cov_p[0] - mc.cov).abs().max() / mc.var.max()).item()
print(f'2x2 windows: mean error {pool_mean_err:.3f} sd, variance {pool_var_err:.3f} relative, covariance '
      f'{pool_cov_err:.3f} of the largest variance')
assert pool_mean_err < 0.05 and pool_var_err < 0.15 and pool_cov_err < 0.15


# %% [markdown]
# ### ReLU and max pooling commute
# ReLU is increasing, so $\max_j \mathrm{relu}(x_j) = \mathrm{relu}(\max_j x_j)$ exactly, padding included. Networks
# put the ReLU first (`Conv2d, ReLU, MaxPool2d`); `propagate_moments` pools first. Clark's rule then acts on the
# Gaussian pre-activations, where its first pair is exact, instead of on rectified variables with an atom at 0, and
# the ReLU has a quarter of the units (full mode: a sixteenth of the pair moments). The comparison with Monte Carlo in
# the next section measures the gain.

# %% [markdown]
# ## Propagating through the network
# `propagate_moments` validates the model and the input, walks the layers, and returns the output's mean, its
# covariance (dense in full mode, a `LowRankCov` with batch dimensions in low-rank mode, `None` in diagonal mode) and
# its variances, in the output's shape. A model whose parameters have another dtype or device than `mu` is refused
# rather than cast.

# %%
#| exporti
def _relu_step(mean, cov, rank, relu_factor):
    flat = mean.reshape(len(mean), -1)
    if not torch.stack([torch.isfinite(x).all() for x in (flat, *((cov,) if isinstance(cov, Tensor) else cov))]).all():
        raise ValueError(f'the moments reaching a ReLU overflow {str(mean.dtype)[6:]}: mu, cov and the model\'s '
                         'parameters are finite but too large for it')
    m_r, cov = _relu_full(flat, cov) if isinstance(cov, Tensor) else relu_factor(flat, *cov, rank)
    return m_r.reshape(mean.shape), cov

def _pool_step(layers, i, mean, cov):
    _forward(layers, mean, i, i + 1)                           # the module's own shape checks and message
    mu, cov, out_shape = _maxpool(layers[i], mean.reshape(len(mean), -1), cov, mean.shape[1:])
    return mu.reshape(-1, *out_shape), cov

def _propagate(layers, mean, cov, rank, commute=True, relu_factor=_relu_factor):
    "Walk the layers: mean (B, *shape); cov dense (B', D, D) or (Ut (B', k, D), d (B', D)); rank None in full mode."
    i = 0
    while i < len(layers):
        m = layers[i]
        if isinstance(m, nn.ReLU) and commute and i + 1 < len(layers) and isinstance(layers[i + 1], nn.MaxPool2d):
            mean, cov = _relu_step(*_pool_step(layers, i + 1, mean, cov), rank, relu_factor)   # relu(max) = max(relu)
            i += 2; continue
        if isinstance(m, nn.ReLU): mean, cov = _relu_step(mean, cov, rank, relu_factor)
        elif isinstance(m, nn.MaxPool2d): mean, cov = _pool_step(layers, i, mean, cov)
        else: mean, cov = _forward(layers, mean, i, i + 1), _affine(m, cov, mean.shape[1:])
        i += 1
    return mean, cov

def _check_model(model, mu):
    "mu must have the dtype and device of the model's parameters, which must be finite."
    params = [(name, t.detach()) for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_floating_point()]
    if params and not torch.stack([torch.isfinite(t).all() for _, t in params]).all():   # one host sync
        for name, t in params: check_finite(t, f'the model parameter {name}')
    like = next((t for t in model.parameters() if t.is_floating_point()), None)
    if like is not None and like.dtype != mu.dtype:
        raise TypeError(f'mu is {mu.dtype} but the model is {like.dtype}; convert one to the other')
    if like is not None and like.device != mu.device:
        raise ValueError(f'mu is on {mu.device} but the model is on {like.device}')


# %%
#| export
class PropagatedMoments(NamedTuple):
    "Mean, covariance (dense, LowRankCov or None by mode) and variances of a network's output."
    mean:Tensor                    # (..., *out_shape) output mean
    cov:Tensor|LowRankCov|None     # output covariance; full: (..., d, d); lowrank: factor (..., d, r), diag (..., d); diag: None
    var:Tensor                     # (..., *out_shape) output variances


# %%
#| exporti
def _empty_batch(model, mu, cov, mode, rank):
    "The moments of an empty batch mu (0, *shape): those of one zero input, with its batch dimension emptied."
    per_point = isinstance(cov, Tensor) and cov.ndim > 0 and len(cov) == 0 and (cov.shape == mu.shape or cov.ndim == 3)
    one = propagate_moments(model, mu.new_zeros(1, *mu.shape[1:]), cov.new_zeros(1, *cov.shape[1:]) if per_point else cov,
                            mode, rank)
    out = one.cov[:0] if mode == 'full' else LowRankCov(one.cov.factor[:0], one.cov.diag[:0]) if mode == 'lowrank' else None
    return PropagatedMoments(one.mean[:0], out, one.var[:0])


# %%
#| export
def propagate_moments(
    model:nn.Module,          # nn.Sequential of Conv2d, Linear, ReLU, MaxPool2d, AvgPool2d, Flatten, BatchNorm (eval), Dropout (eval)
    mu:Tensor,                # input mean: one input's shape, or a batch of them (N, *input_shape)
    cov:float|Tensor|LowRankCov,  # number, variances (mu's or one input's shape), (n, n) or (N, n, n) PSD matrix, LowRankCov
    mode:str='full',          # 'full' (dense covariance), 'lowrank' (U U^T + diag, rank `rank`) or 'diag' (variances only)
    rank:int|None=None,       # the factor's rank in 'lowrank' mode (>= 0); must be None otherwise
)->PropagatedMoments:         # mean, cov, var of the output; dtype and device of mu
    "Mean and covariance of model(x) for x ~ N(mu, cov), propagated layer by layer (ReLU: Gaussian moments, max pool: Clark)."
    if mode not in ('full', 'lowrank', 'diag'): raise ValueError(f"mode must be 'full', 'lowrank' or 'diag'; got {mode!r}")
    if mode == 'lowrank' and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 0):
        raise ValueError(f"mode='lowrank' needs rank, an int >= 0; got {rank!r}")
    if mode != 'lowrank' and rank is not None: raise ValueError(f"rank is used by mode='lowrank' only; got rank={rank!r} with mode={mode!r}")
    layers = _layers(model)
    if isinstance(cov, LowRankCov):
        mu, factor, diag = as_tensors(mu, cov.factor, cov.diag, names=('mu', 'cov.factor', 'cov.diag'))
        cov = LowRankCov(factor, diag)
    else: mu, cov = as_tensors(mu, cov, names=('mu', 'cov'))
    _check_model(model, mu)
    check_finite(mu, 'mu')
    ndim = _input_ndim(layers, mu)
    if mu.ndim == (mu.ndim if ndim is None else ndim) + 1 and len(mu) == 0:
        return _empty_batch(model, mu, cov, mode, rank)
    mean, batched, state = _input_state(mu, cov, ndim, mode == 'full')
    mean, state = _propagate(layers, mean, state, None if mode == 'full' else (0 if mode == 'diag' else rank))
    B = len(mean)
    if mode == 'full':
        out = state.expand(B, -1, -1)
        var = out.diagonal(dim1=-2, dim2=-1).reshape(mean.shape)
    else:
        Ut, d = _truncate(*state, 0 if mode == 'diag' else rank)
        Ut, d = Ut.expand(B, -1, -1), d.expand(B, -1)
        var = ((Ut * Ut).sum(-2) + d).reshape(mean.shape)
        out = LowRankCov(Ut.mT, d) if mode == 'lowrank' else None
    if not batched:
        mean, var = mean[0], var[0]
        if mode == 'full': out = out[0]
        if mode == 'lowrank': out = LowRankCov(out.factor[0], out.diag[0])
    return PropagatedMoments(mean, out, var)


# %% [markdown]
# ### Exact on Affine-ReLU-Affine
# For `Linear, ReLU, Linear` full mode computes $W_2\,\mathrm{Cov}[\mathrm{relu}(W_1x + b_1)]\,W_2^\top$ with the same
# pair moments as `ara_moments` ([Affine-ReLU-Affine networks](05_ara.ipynb)), so the two agree to rounding, for each
# form of the input covariance and a batch of points; the low-rank and diagonal modes give the exact mean:

# %%
ara_net = seeded(nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)), 2)
W1, b1, W2, b2 = ara_net[0].weight, ara_net[0].bias, ara_net[2].weight, ara_net[2].bias
mu_x = torch.randn(5, generator=gen, dtype=torch.float64)
L = torch.randn(5, 5, generator=gen, dtype=torch.float64)
cov_x = L @ L.mT / 5
for c in (cov_x, torch.rand(5, generator=gen, dtype=torch.float64), 0.7):
    ours, ref = propagate_moments(ara_net, mu_x, c), ara_moments(mu_x, c, W1, b1, W2, b2)
    test_close(ours.mean, ref.mean, eps=1e-14); test_close(ours.cov, ref.cov, eps=1e-14); test_close(ours.var, ref.var, eps=1e-14)
points = mu_x + torch.randn(4, 5, generator=gen, dtype=torch.float64)
batch = propagate_moments(ara_net, points, cov_x)
test_eq((batch.mean.shape, batch.cov.shape, batch.var.shape), ((4, 3), (4, 3, 3), (4, 3)))
test_close(batch.cov[2], ara_moments(points[2], cov_x, W1, b1, W2, b2).cov, eps=1e-14)
for mode, rank in (('lowrank', 3), ('diag', None)):
    test_close(propagate_moments(ara_net, mu_x, cov_x, mode, rank).mean, ara_moments(mu_x, cov_x, W1, b1, W2, b2).mean, eps=1e-14)


# %% [markdown]
# ### A small convolutional network against Monte Carlo
# A network with every supported layer, `Conv2d, BatchNorm2d, ReLU, MaxPool2d, Conv2d, ReLU, AvgPool2d, Flatten,
# Linear, BatchNorm1d, ReLU, Dropout, Linear` on $1\times12\times12$ inputs (random weights, He scaling), around a
# random image with $\Sigma = \sigma^2 I$. The relative error $E_r(x, y) = 2|x - y|/(|x| + |y|)$ ([Alfadly et al.
# (2020)](99_references.ipynb#alfadly2020)) of each mode's mean and variance, per output, against $5\cdot 10^4$ Monte
# Carlo samples, whose own relative standard error is printed beside:

# %%
def small_conv(seed=0):
    "The chapter's test network, float64, eval mode, with non-trivial batch-norm statistics."
    net = seeded(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 2),
                               nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(24, 16), nn.BatchNorm1d(16),
                               nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3)), seed)
    bn_gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        net[1].weight.copy_(1 + 0.2 * torch.randn(4, generator=bn_gen)); net[1].bias.copy_(0.1 * torch.randn(4, generator=bn_gen))
        net[1].running_mean.copy_(0.3 * torch.randn(4, generator=bn_gen)); net[1].running_var.copy_((0.3 * torch.randn(4, generator=bn_gen)).exp())
    return net

E_r = lambda x, y: 2 * (x - y).abs() / (x.abs() + y.abs())
conv_net = small_conv()
image = torch.rand(1, 12, 12, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
sigma = 0.1
mc_ref = mc_moments(conv_net, image, sigma**2, n=50_000, seed=0)
results = {'full': propagate_moments(conv_net, image, sigma**2),
           'lowrank r=16': propagate_moments(conv_net, image, sigma**2, 'lowrank', 16),
           'diag': propagate_moments(conv_net, image, sigma**2, 'diag')}
assert (E_r(results['full'].mean, mc_ref.mean) < 0.01).all() and (E_r(results['full'].var, mc_ref.var) < 0.05).all()
assert (E_r(results['diag'].var, mc_ref.var) > 0.1).any()
outputs = range(1, len(mc_ref.mean) + 1)
er_cols = [f'E_r mean, output {i}' for i in outputs] + [f'E_r var, output {i}' for i in outputs]
Table([[name, *E_r(res.mean, mc_ref.mean), *E_r(res.var, mc_ref.var)] for name, res in results.items()]
      + [['MC relative SE', *(mc_ref.mean_se / mc_ref.mean.abs()), *(mc_ref.var_se / mc_ref.var)]],
      ['mode', *er_cols], fmt=dict.fromkeys(er_cols, '.1e'))

# %% [markdown]
# Full mode is close to Monte Carlo in the variance at $\sigma = 0.1$ (within the 5% the cell asserts); the diagonal
# rule, which drops every correlation after the first ReLU, is off by tens of percent in the variance (its mean stays
# good: means need only the variances of pre-activations, which it gets roughly right); low rank is in between. The
# accuracy against $\sigma$, and the comparison with two-stage linearization, are below.
#
# Where the approximation is exact, it agrees to Monte Carlo's resolution: with one ReLU and no max pooling (here
# `Conv2d, BatchNorm2d, ReLU, AvgPool2d, Flatten, Linear`) full mode is exact, every mean and covariance entry within
# 4 standard errors:

# %%
one_relu = nn.Sequential(*[copy.deepcopy(conv_net[i]) for i in (0, 1, 2)], nn.AvgPool2d(2), nn.Flatten(),
                         seeded(nn.Linear(100, 3), 7))
exact = propagate_moments(one_relu, image, sigma**2)
mc = mc_moments(one_relu, image, sigma**2, n=30_000, seed=1)
test_close(exact.mean, mc.mean, eps=4 * mc.mean_se); test_close(exact.cov, mc.cov, eps=4 * mc.cov_se)

# %% [markdown]
# Pooling before the ReLU (the default) against the layer order of the network, in full mode: the commuted order is
# several times more accurate in the variance:

# %%
layers = _layers(conv_net)
state = _input_state(image, torch.tensor(sigma**2, dtype=torch.float64), 3, True)
as_built = _propagate(layers, state[0], state[2], None, commute=False)
err_commuted = E_r(results['full'].var, mc_ref.var).max().item()
err_as_built = E_r(as_built[1].diagonal(dim1=-2, dim2=-1)[0], mc_ref.var).max().item()
print(f'largest E_r of the variance: pooled first {err_commuted:.4f}, ReLU first {err_as_built:.4f}')
assert err_commuted < err_as_built

# %% [markdown]
# ### Modes, batches, dtype and device
# Low rank with rank 0 is the diagonal mode; the low-rank covariance has the promised rank and its diagonal is `var`;
# a batch gives what its points give one by one; float32 follows float64, and results stay on `mu`'s device:

# %%
test_close(propagate_moments(conv_net, image, sigma**2, 'lowrank', 0).var, results['diag'].var, eps=1e-15)
low = results['lowrank r=16']
test_eq((low.cov.factor.shape, low.cov.diag.shape), ((3, 3), (3,)))       # rank min(16, d) = 3 outputs
test_close((low.cov.factor**2).sum(-1) + low.cov.diag, low.var, eps=1e-15)
images = torch.rand(3, 1, 12, 12, generator=gen, dtype=torch.float64)
for mode, rank in (('full', None), ('lowrank', 5), ('diag', None)):
    together = propagate_moments(conv_net, images, sigma**2, mode, rank)
    test_eq(together.mean.shape, (3, 3))
    alone = propagate_moments(conv_net, images[1], sigma**2, mode, rank)
    test_close(together.mean[1], alone.mean, eps=1e-14); test_close(together.var[1], alone.var, eps=1e-14)
f32 = propagate_moments(copy.deepcopy(conv_net).float(), image.float(), sigma**2)
test_eq((f32.mean.dtype, f32.cov.dtype, f32.var.device), (torch.float32, torch.float32, image.device))
test_close(f32.var.double(), results['full'].var, eps=1e-4 * results['full'].var.max())

# %% [markdown]
# ### Errors
# Unsupported layers and training-mode batch norm are refused by name and index, as are bad modes, ranks, shapes and
# covariances:

# %%
test_fail(lambda: propagate_moments(nn.Sequential(nn.Linear(3, 4).double(), nn.Tanh()), torch.zeros(3, dtype=torch.float64), 1.),
          contains='module 1 of the model (Tanh) is not supported')
test_fail(lambda: propagate_moments(small_conv().train(), image, 1.), contains='module 1 of the model (BatchNorm2d) is in training mode')
no_stats = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3, track_running_stats=False)).double().eval()
test_fail(lambda: propagate_moments(no_stats, torch.zeros(3, dtype=torch.float64), 1.), contains='module 1 of the model (BatchNorm1d) has no running statistics')
test_fail(lambda: propagate_moments(conv_net, image, 1., mode='exact'), contains="mode must be 'full', 'lowrank' or 'diag'")
test_fail(lambda: propagate_moments(conv_net, image, 1., mode='lowrank'), contains="mode='lowrank' needs rank")
test_fail(lambda: propagate_moments(conv_net, image, 1., rank=4), contains="rank is used by mode='lowrank' only")
test_fail(lambda: propagate_moments(conv_net, image[0], 1.), contains='mu must have the shape of one input of the model (3 dims)')
test_fail(lambda: propagate_moments(conv_net, image[:, :8], 1.), contains='does not fit module 8')
test_fail(lambda: propagate_moments(conv_net, image, torch.ones(7, 7, dtype=torch.float64)), contains='cov must be a number, variances of shape (1, 12, 12)')
test_fail(lambda: propagate_moments(conv_net, image, -1.), contains='cov must be >= 0')
test_fail(lambda: propagate_moments(conv_net, image, -torch.eye(144, dtype=torch.float64)), contains='cov must have a non-negative diagonal')
test_fail(lambda: propagate_moments(conv_net, image, LowRankCov(torch.ones(99, 2, dtype=torch.float64), torch.ones(144, dtype=torch.float64))), contains='cov.factor must have shape (144, r)')
test_fail(lambda: propagate_moments(conv_net, image.float(), 1.), contains='mu is torch.float32 but the model is torch.float64', exc=TypeError)
test_fail(lambda: propagate_moments(conv_net, image.to('meta'), 1.), contains='mu is on meta but the model is on cpu')
broken = copy.deepcopy(conv_net)
with torch.no_grad(): broken[0].weight[0, 0, 0, 0] = float('nan')
test_fail(lambda: propagate_moments(broken, image, 1.), exc=ValueError, contains='the model parameter 0.weight must be finite')
test_fail(lambda: propagate_moments(conv_net, image, torch.tensor(1.)), exc=TypeError,
          contains='floating tensors must share one dtype; found mu float64, cov float32')

# %% [markdown]
# An empty batch of means gives empty moments, shaped as a batch would be:

# %%
for mode, rank in (('full', None), ('lowrank', 2), ('diag', None)):
    none = propagate_moments(conv_net, images[:0], sigma**2, mode, rank)
    test_eq((none.mean.shape, none.var.shape), ((0, 3), (0, 3)))
test_eq(propagate_moments(conv_net, images[:0], sigma**2).cov.shape, (0, 3, 3))


# %% [markdown]
# ## Accuracy and cost against Monte Carlo and two-stage linearization
# Four ways to the output's mean and variance, side by side: `propagate_moments` in its three modes (low rank at a
# few ranks, the largest being the input's full rank, so that nothing is ever truncated), the papers' two-stage
# linearization at the last ReLU ([Two-stage linearization](09_linearize.ipynb); $l = 3$ is the choice of
# [Alfadly et al. (2020)](99_references.ipynb#alfadly2020) for LeNet) followed by the exact `ara_moments`, and Monte
# Carlo itself with $10^4$ samples (the papers' budget). The reference is a larger Monte Carlo run. Per method: $E_r$
# of the mean and of the variance averaged over the outputs (as Alfadly et al. (2020) average over logits), the mean's
# error in units of the output's standard deviation (which stays meaningful where a mean is near 0 and $E_r$ is not),
# and the best of `repeats` timings on one thread (float64).

# %%
def compare(net, mu, cov, ref, ranks=(4, 16), n_mc=10_000, seed=1, repeats=3):
    "Rows (method, E_r mean, |mean error| / sd, E_r var, seconds) of each method against the reference `ref`."
    last = sum(isinstance(m, nn.ReLU) for m in _layers(net))
    methods = {'full': lambda: propagate_moments(net, mu, cov)}
    methods.update({f'lowrank r={r}': (lambda r=r: propagate_moments(net, mu, cov, 'lowrank', r)) for r in ranks})
    methods['diag'] = lambda: propagate_moments(net, mu, cov, 'diag')
    if last: methods[f'two-stage l={last} + ara'] = lambda: two_stage(net, mu[None], last, max_bytes=None).moments(mu.flatten()[None], cov)
    methods[f'MC {n_mc:.0e}'] = lambda: mc_moments(net, mu, cov, n=n_mc, seed=seed, full_cov=False)
    rows, threads = [], torch.get_num_threads()
    for name, fn in methods.items():
        torch.set_num_threads(1)                    # one thread: timings that do not depend on what else runs
        try:
            with torch.no_grad(): res, seconds = fn(), best_time(fn, repeats=repeats)
        finally: torch.set_num_threads(threads)
        mean, var = res.mean.reshape(-1), res.var.reshape(-1)
        rows.append((name, E_r(mean, ref.mean).mean().item(), ((mean - ref.mean).abs() / ref.var.sqrt()).mean().item(),
                     E_r(var, ref.var).mean().item(), seconds))
    return rows

def show(rows, ref, title):
    "The rows of `compare` as a `Table`, captioned with the reference's size and precision."
    return Table(rows, ['method', 'E_r mean', 'err / sd', 'E_r var', 'seconds'],
                 fmt={'E_r mean': '.2e', 'err / sd': '.2e', 'E_r var': '.2e', 'seconds': '.3f'},
                 caption=f'{title}: reference MC {ref.n:.0e} samples, relative SE of its variance '
                         f'{(ref.var_se / ref.var).mean():.1e}')


# %% [markdown]
# The small conv net at $\sigma = 0.1$, against the $5\cdot10^4$-sample reference above (`#| slow`: it spends most of
# its time timing Monte Carlo):

# %%
#| slow
rows = compare(conv_net, image, sigma**2, mc_ref, ranks=(4, 16, 144))
table = {r[0]: r[1:] for r in rows}
assert table['full'][2] < 0.05 < table['lowrank r=144'][2] < table['diag'][2]
show(rows, mc_ref, f'small conv net, sigma = {sigma}')

# %% [markdown]
# What the table says, for this network (timings: best of three, on one thread):

# %%
#| slow
pct = lambda v: f'{100 * v:.2g}%'
two = next(k for k in table if k.startswith('two-stage'))
Markdown(f"""
- **Full mode** is the accurate one, {pct(table['full'][2])} in the variance at $\\sigma = {sigma}$, at
  {table['full'][3] / table['MC 1e+04'][3]:.2g} times the cost of $10^4$ Monte Carlo samples, whose own error is
  {pct(table['MC 1e+04'][2])}. Full mode's cost grows with the square of the widths, Monte Carlo's with one forward
  pass: on wider layers the balance turns (the synthetic conv nets below).
- **Low rank and diagonal** get the mean but not the variance. The outputs' variance here is small beside the sum of
  its parts (positive and negative correlations cancel in the last layers), and both modes make the part of the
  covariance they do not carry independent, which removes the cancellation. At the input's full rank 144, where
  nothing is truncated and only the residuals of Bussgang's rule and of Clark's max are made independent, the error
  is {pct(table['lowrank r=144'][2])}; at rank 4 it is {pct(table['lowrank r=4'][2])}, against
  {pct(table['diag'][2])} for the diagonal rule. These modes are for width: memory $O(Dr)$ where full mode needs
  $D^2$, as in LeNet's first layer ($D = 11{{,}}520$).
- **Two-stage linearization** makes the whole network but one ReLU linear around $\\mu$; here its variance is off by
  {pct(table[two][2])}, its mean by {pct(table[two][0])}.
""")


# %% [markdown]
# Would a better ReLU rule rescue low rank? The other refit, the top $r$ eigenpairs of the exact ReLU covariance
# (computed densely here, from the factor), costs full mode's $D^2$ pair moments. `_propagate` takes the rule as
# `relu_factor`; against the same reference (`#| slow`):

# %%
#| slow
def relu_factor_exact(mean, Ut, d, rank):
    "The exact ReLU covariance of U U^T + diag(d), refit to its top `rank` eigenpairs and the diagonal remainder."
    m_r, c = _relu_full(mean, Ut.mT @ Ut + torch.diag_embed(d))
    lam, V = torch.linalg.eigh(c)
    Ut = (V[..., -rank:] * lam[..., None, -rank:].clamp(min=0).sqrt()).mT
    return m_r, (Ut, (c.diagonal(dim1=-2, dim2=-1) - (Ut * Ut).sum(-2)).clamp(min=0))

start = _input_state(image, torch.tensor(sigma**2, dtype=torch.float64), 3, False)
refit = {}
for r in (4, 16, 64):
    errs = []
    for rule in (_relu_factor, relu_factor_exact):
        out_mean, (Ut, d) = _propagate(layers, start[0], start[2], r, relu_factor=rule)
        errs.append(E_r((Ut * Ut).sum(-2)[0] + d[0], mc_ref.var).mean().item())
    refit[r] = errs
Table([[r, *errs] for r, errs in refit.items()], ['rank', 'E_r var, Bussgang', 'E_r var, exact refit'],
      fmt={'E_r var, Bussgang': '.3f', 'E_r var, exact refit': '.3f'})

# %%
#| slow
Markdown(f"It divides the error by {refit[16][0] / refit[16][1]:.2g} at rank 16 and by "
         f"{refit[64][0] / refit[64][1]:.2g} at rank 64 (the first ReLU has 100 units after pooling), at full mode's "
         f"price in pair moments; at that price full mode itself is the better buy wherever its $D^2$ memory fits. So "
         f"`propagate_moments` keeps the cheap rule and states what it is.")

# %% [markdown]
# Against the noise level, for the same network and image, in the figure below (`#| slow`: a $10^5$-sample reference
# per point).

# %%
#| slow
#| label: fig-propagate-accuracy
#| fig-cap: "Relative error E_r of the output variance of a small conv net against the input noise sigma, for each propagation mode, two-stage linearization at the last ReLU + ara_moments, and Monte Carlo with 10^4 samples; reference: Monte Carlo with 10^5 samples, whose relative SE is dotted."
sigmas = [0.01, 0.03, 0.1, 0.3, 0.5]
curves, floor = {}, []
for s in sigmas:
    ref_s = mc_moments(conv_net, image, s**2, n=100_000, seed=0, full_cov=False)
    for name, em, ez, ev, sec in compare(conv_net, image, s**2, ref_s, ranks=(16,), repeats=1):
        curves.setdefault(name, []).append(ev)
    floor.append((ref_s.var_se / ref_s.var).mean().item())
fig, ax = plt.subplots(figsize=(6.5, 3.4), layout='constrained')
for name, errs in curves.items(): ax.loglog(sigmas, errs, 'o-', ms=3, label=name)
ax.loglog(sigmas, floor, 'k:', label='reference SE')
ax.set(xlabel='input noise sigma', ylabel='E_r of the output variance')
ax.legend(fontsize=7, loc='center left', bbox_to_anchor=(1, 0.5));

# %% [markdown]
# Full mode is exact to Monte Carlo's resolution at small noise, where the network is nearly linear between kinks and
# the pre-activations stay nearly Gaussian; its error then grows with $\sigma$ (some 20% at $\sigma = 0.5$), as the
# deeper pre-activations become sums of rectified variables. Two-stage linearization grows from a few percent to
# tens; the low-rank and diagonal modes are off by tens of percent at every noise level (the cancellation above);
# Monte Carlo with $10^4$ samples stays at its 1% standard error.

# %% [markdown]
# ### The synthetic networks
# The networks of [Bibi et al. (2018)](99_references.ipynb#bibi2018), §4.1, built in [Models](08_models.ipynb) (FC-A/B/C
# on $\mathbb R^{100}$, Conv-A/B/C on $20\times20$, one output), float64, zero-mean input with a random full covariance
# of largest variance 1 (the papers' "medium" regime), against $2\cdot10^5$ Monte Carlo samples. FC-A and Conv-A are
# Affine-ReLU-Affine: full mode and two-stage + `ara_moments` are exact there. Full mode on the conv nets evaluates
# $1296^2$ pair moments at the first ReLU, and the reference runs are large: the cell is `#| slow`.

# %%
#| slow
synthetic_rows = {}
for name in ('FC-A', 'FC-B', 'FC-C', 'Conv-A', 'Conv-B', 'Conv-C'):
    net = synthetic(name, seed=0).double().requires_grad_(False)
    shape = (100,) if name.startswith('FC') else (1, 20, 20)
    Lr = torch.randn(math.prod(shape), math.prod(shape), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cov_r = Lr @ Lr.mT
    cov_r = cov_r / cov_r.diagonal().max()
    mu_r = torch.zeros(shape, dtype=torch.float64)
    ref_r = mc_moments(net, mu_r, cov_r, n=200_000, seed=0, full_cov=False)
    synthetic_rows[name] = compare(net, mu_r, cov_r, ref_r, repeats=2)
    display(show(synthetic_rows[name], ref_r, name))

# %% [markdown]
# On the exact cases (FC-A, Conv-A) full mode and two-stage agree with Monte Carlo to its resolution. With more
# layers, full mode stays within a few percent on the FC nets, whose 100-unit sums are close to Gaussian, but not on
# the conv nets: with 4 channels and $3\times3$ filters a unit of the second layer sums few effectively independent
# rectified terms, its pre-activation is visibly skewed, and the Gaussian ReLU moments miss its variance by some 20%
# (the cell below samples the second-layer pre-activations of Conv-B). That is the method's one approximation,
# measured, not a defect of the affine or pooling rules. Full mode's mean stays within 1.5% of the output's standard
# deviation everywhere ($E_r$ of the mean is large only where the mean is near 0: zero-mean input). Two-stage linearization,
# made around $\mu = 0$ with input noise of the activations' own scale, is far off on every deeper net. Monte Carlo
# with $10^4$ samples is within a few percent everywhere. In cost, full mode is several times cheaper than it on the
# FC nets and about as expensive on the conv nets, whose first ReLU has $1296^2$ pairs; the low-rank and diagonal
# modes are cheap everywhere, and as inaccurate as on the small conv net.

# %%
#| slow
net = synthetic('Conv-B', seed=0).double().requires_grad_(False)
Lr = torch.randn(400, 400, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
cov_r = Lr @ Lr.mT
cov_r = cov_r / cov_r.diagonal().max()
samples = torch.randn(50_000, 400, generator=torch.Generator().manual_seed(2), dtype=torch.float64) @ torch.linalg.cholesky(cov_r).mT
with torch.no_grad(): pre = net[:3](samples.reshape(-1, 1, 20, 20)).flatten(1)     # Conv, ReLU, Conv: (n, 1024)
m_pre, v_pre = pre.mean(0), pre.var(0)
skew = ((pre - m_pre)**3).mean(0) / v_pre**1.5
gaussian_miss = E_r(_relu_var(m_pre, v_pre), pre.relu().var(0))
print(f'Conv-B second-layer pre-activations: median |skewness| {skew.abs().median():.2f}; '
      f'E_r of the Gaussian formula for Var[relu], median over units {gaussian_miss.median():.2f}')
assert gaussian_miss.median() > 0.1

# %% [markdown]
# ## Export -

# %%
#| hide
#| eval: false
import nbdev; nbdev.nbdev_export()

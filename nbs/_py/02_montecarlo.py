# %% [markdown]
# # Monte Carlo
# > The seeded, streaming reference estimator of E[f(x)] and Cov[f(x)] for Gaussian x, with standard errors

# %%
#| default_exp montecarlo

# %%
#| export
from __future__ import annotations
import math
from typing import Callable, NamedTuple
import torch
from torch import Tensor
from tqdm.auto import tqdm
from netmoments.core import as_tensors, check_count, check_cov, check_finite, check_var

# %%
#| hide
import numpy as np, sympy as sp, matplotlib.pyplot as plt
from fastcore.test import test_eq, test_ne, test_close, test_fail


# %% [markdown]
# Every closed form in this book is checked against sampling: draw $x^{(1)}, \dots, x^{(n)} \sim
# \mathcal N(\mu, \Sigma)$, push them through $f$ and average. `mc_moments` is that reference. It returns the sample
# mean and covariance of $f(x)$ together with their standard errors, so that every comparison in later chapters uses a
# tolerance computed from the sample (4 standard errors) rather than a guessed one. It is seeded without touching the
# global random state, streams the samples in chunks so that $n = 10^6$ and more fit in memory, runs on whatever device
# `mu` lives on, and gives the same answer whatever the chunk size.

# %% [markdown]
# ## The input distribution
# The input $x$ has the shape of `mu` (a vector $(n,)$, an image $(1, 28, 28)$, ...), one distribution per call; its
# covariance $\Sigma$ acts on the flattened input of $N$ = `mu.numel()` entries and can be given in four forms: a number
# $\sigma^2$ (isotropic, $\sigma^2 I$), a tensor of `mu`'s shape (independent entries with these variances), a full
# $(N, N)$ matrix, or the low-rank-plus-diagonal form $\Sigma = F F^\top + \mathrm{diag}(D)$ below, which costs
# $O(N r)$ per sample instead of $O(N^2)$: `LowRankCov(factor, diag)` with `factor` $F$ of shape $(N, r)$ and `diag`
# $D \ge 0$ of shape $(N,)$ or `mu`'s shape. Samples are $x = \mu + L z$ with $z$ standard normal and
# $L L^\top = \Sigma$.

# %%
#| export
class LowRankCov(NamedTuple):
    "Covariance `factor @ factor.mT + diag(diag)` of the flattened input, as in `LowRankMultivariateNormal`."
    factor:Tensor  # shape (N, r), N = mu.numel()
    diag:Tensor    # shape (N,) or mu's shape; entries >= 0


# %% [markdown]
# A full covariance needs a square root $L$. Cholesky is the cheap one, but it fails on a singular $\Sigma$ (a
# perfectly valid covariance: a rank-deficient input, or $A \Sigma A^\top$ with more rows than columns). Then the
# symmetric eigendecomposition $\Sigma = V \Lambda V^\top$ gives $L = V \Lambda^{1/2}$; the round-off eigenvalues
# slightly below zero (which `check_cov` has already bounded) are clipped to zero.

# %%
#| exporti
def _cov_sqrt(
    cov:Tensor,  # a validated PSD matrix (N, N)
)->Tensor:       # L with L @ L.mT = cov
    "Cholesky factor of `cov` when it succeeds, else V sqrt(clip(lambda, 0)) from `eigh` (singular `cov`)."
    L, info = torch.linalg.cholesky_ex(cov)
    if not info.any(): return L
    lam, V = torch.linalg.eigh(cov)
    return V * lam.clamp(min=0).sqrt()


# %% [markdown]
# A singular covariance makes Cholesky fail and the eigendecomposition take over; both square roots reproduce $\Sigma$:

# %%
singular = torch.tensor([[1., 1., 0.], [1., 1., 0.], [0., 0., 2.]], dtype=torch.float64)
test_ne(int(torch.linalg.cholesky_ex(singular).info), 0)
L = _cov_sqrt(singular)
test_close(L @ L.mT, singular, eps=1e-14)
full = singular + torch.eye(3, dtype=torch.float64)
test_eq(_cov_sqrt(full), torch.linalg.cholesky(full))


# %% [markdown]
# The sampler validates `mu` and `cov` with the shared checks of `netmoments.core` and returns the number $k$ of
# standard normals one sample needs and the map from a block of them, $z$ of shape $(b, k)$, to inputs
# $(b, \ast\,\mu\text{.shape})$. The low-rank form needs $r + N$ normals per sample:
# $x = \mu + F z_{1:r} + \sqrt{D}\, z_{r+1:}$.

# %%
#| exporti
def _input_sampler(mu, cov):
    "Validated `(mu, k, draw)`: `draw` maps z (b, k) standard normals to inputs (b, *mu.shape) ~ N(mu, cov)."
    if isinstance(cov, LowRankCov):
        mu, factor, diag = as_tensors(mu, cov.factor, cov.diag, names=('mu', 'factor of cov', 'diag of cov'))
    else: mu, cov = as_tensors(mu, cov, names=('mu', 'cov'))
    check_finite(mu, 'mu')
    if mu.numel() == 0: raise ValueError(f'mu must have at least one entry; got shape {tuple(mu.shape)}')
    shape, N = mu.shape, mu.numel()
    shifted = lambda noise: (mu.reshape(-1) + noise).reshape(-1, *shape)
    if isinstance(cov, LowRankCov):
        if factor.ndim != 2 or factor.shape[0] != N:
            raise ValueError(f'factor of cov must have shape ({N}, r) for mu with {N} entries; got {tuple(factor.shape)}')
        if diag.shape not in ((N,), shape):
            raise ValueError(f'diag of cov must have shape ({N},) or {tuple(shape)}; got {tuple(diag.shape)}')
        check_finite(factor, 'factor of cov'); check_var(diag, 'diag of cov')
        r, s = factor.shape[1], diag.reshape(-1).sqrt()
        return mu, r + N, lambda z: shifted(z[:, :r] @ factor.mT + z[:, r:] * s)
    if cov.ndim == 0 or cov.shape == shape:
        check_var(cov, 'cov')
        s = cov.sqrt().reshape(-1)
        return mu, N, lambda z: shifted(z * s)
    if cov.shape == (N, N):
        check_cov(cov, 'cov')
        L = _cov_sqrt(cov)
        return mu, N, lambda z: shifted(z @ L.mT)
    raise ValueError(f'cov must be a number, variances of shape {tuple(shape)}, an ({N}, {N}) matrix or a LowRankCov; '
                     f'got shape {tuple(cov.shape)}')


# %% [markdown]
# Each form maps standard normals to inputs of `mu`'s shape, and $z = 0$ to `mu` itself:

# %%
mu_image = torch.zeros(1, 2, 2, dtype=torch.float64)
f64 = torch.float64
forms = {'scalar': 0.5, 'variances': torch.ones(1, 2, 2, dtype=f64), 'full': torch.eye(4, dtype=f64),
         'low rank': LowRankCov(torch.ones(4, 2, dtype=f64), torch.ones(4, dtype=f64))}
for form, cov in forms.items():
    _, k, draw = _input_sampler(mu_image + 1, cov)
    test_eq(k, 6 if form == 'low rank' else 4)
    test_eq(draw(torch.zeros(3, k, dtype=torch.float64)), torch.ones(3, 1, 2, 2))

# %% [markdown]
# ## Streaming moments and their standard errors
# Let $y^{(s)} = f(x^{(s)}) \in \mathbb R^d$ for $s = 1, \dots, n$. Summing raw powers of $y$ cancels catastrophically
# when $|\mathbb E y| \gg$ its spread, so every sum is taken about a shift $a$, the mean of the first block of samples:
# $d = y - a$, $\delta = \frac1n \sum_s d^{(s)}$ and
# $$S_1 = \sum_s d, \quad S_2 = \sum_s d d^\top, \quad (S_{21})_{ij} = \sum_s d_i^2 d_j,
#   \quad (S_{22})_{ij} = \sum_s d_i^2 d_j^2 .$$
# They give the mean $a + \delta$ and the covariance
# $\hat c_{ij} = \frac{1}{n-1}\left((S_2)_{ij} - n\,\delta_i \delta_j\right)$; the standard error of the mean is
# $\sqrt{\hat c_{ii}/n}$. The sample covariance is a mean of the products $(y_i - m_i)(y_j - m_j)$ (its influence
# function is that product minus $c_{ij}$), so by the delta method its standard error is
# $\sqrt{\left(\mathbb E[X^2 Y^2] - c_{ij}^2\right)/n}$ with $X = d_i - \delta_i$, $Y = d_j - \delta_j$, and
# $$\mathbb E[X^2 Y^2] = \mathbb E[d_i^2 d_j^2] - 2 \delta_j \mathbb E[d_i^2 d_j] - 2 \delta_i \mathbb E[d_i d_j^2]
#   + \delta_j^2 \mathbb E[d_i^2] + \delta_i^2 \mathbb E[d_j^2] + 4 \delta_i \delta_j \mathbb E[d_i d_j]
#   - 3 \delta_i^2 \delta_j^2 ,$$
# every expectation a streamed sum over $n$. With $i = j$ it is the standard error of the variance. Expanding the
# square and using $\mathbb E[d_i] = \delta_i$:

# %%
d_i, d_j, delta_i, delta_j = sp.symbols('d_i d_j delta_i delta_j', real=True)
power = lambda v, p: ['', f'd_{v}', f'd_{v}^2'][p]
E = {(p, q): sp.Symbol(rf'\mathbb{{E}}[{(power("i", p) + " " + power("j", q)).strip()}]')
     for p in range(3) for q in range(3)}  # raw moments of d about the shift, as symbols
E[0, 0], E[1, 0], E[0, 1] = 1, delta_i, delta_j
expanded = sp.Poly(sp.expand((d_i - delta_i)**2 * (d_j - delta_j)**2), d_i, d_j)
fourth = sum(coeff * E[powers] for powers, coeff in expanded.terms())
claimed = (E[2, 2] - 2 * delta_j * E[2, 1] - 2 * delta_i * E[1, 2] + delta_j**2 * E[2, 0] + delta_i**2 * E[0, 2]
           + 4 * delta_i * delta_j * E[1, 1] - 3 * delta_i**2 * delta_j**2)
test_eq(sp.expand(fourth - claimed), 0)
claimed

# %% [markdown]
# For a Gaussian pair the variance of the product is known (Isserlis):
# $\mathrm{Var}[XY] = \sigma_i^2 \sigma_j^2 + c_{ij}^2$. Feeding the formula the Gaussian raw moments about an
# arbitrary shift, from the moment generating function, gives exactly that:

# %%
t_i, t_j, m_i, m_j, c = sp.symbols('t_i t_j m_i m_j c', real=True)
s_i, s_j = sp.symbols('s_i s_j', positive=True)
mgf = sp.exp(t_i * m_i + t_j * m_j + (s_i**2 * t_i**2 + 2 * c * t_i * t_j + s_j**2 * t_j**2) / 2)
raw = {E[p, q]: sp.diff(mgf, t_i, p, t_j, q).subs({t_i: 0, t_j: 0}) for p in range(3) for q in range(3) if p + q > 1}
gaussian_fourth = claimed.subs(raw).subs({delta_i: m_i, delta_j: m_j})
test_eq(sp.expand(gaussian_fourth - c**2 - (s_i**2 * s_j**2 + c**2)), 0)

# %% [markdown]
# And numerically, on a skewed float64 sample, the streamed formula about a shift far from the mean matches the direct
# two-pass value $\frac1n \sum_s (y_i - \bar y_i)^2 (y_j - \bar y_j)^2$:

# %%
gen = torch.Generator().manual_seed(0)
sample = torch.randn(10_000, 2, dtype=torch.float64, generator=gen).exp() + 3.
centred = sample - sample.mean(0)
direct = (centred[:, 0]**2 * centred[:, 1]**2).mean()
fourth_ref = sp.lambdify([E[2, 2], E[2, 1], E[1, 2], E[2, 0], E[0, 2], E[1, 1], delta_i, delta_j], claimed)
dev = sample - 2.5
a, b = dev[:, 0], dev[:, 1]
streamed = fourth_ref(*(x.mean() for x in (a*a*b*b, a*a*b, a*b*b, a*a, b*b, a*b, a, b)))
test_close(streamed, direct, eps=1e-12 * direct)

# %% [markdown]
# ### The stream
# The noise $z$ is drawn in blocks of a fixed 1024 samples, whatever `chunk` is, and the sums are accumulated block by
# block in order; `chunk` only decides how many samples go through `f` at once (memory holds about max(`chunk`, 1024)
# inputs, and `f`'s intermediates for `chunk` of them). So the samples, the shift and the order of every addition do
# not depend on `chunk`, and the estimates are bitwise identical for every chunk size as long as `f` computes each row
# the same way in any batch (true of elementwise maps; a matrix product such as `nn.Linear` may pick a
# batch-size-dependent kernel, which changes only the last bits). `_rechunk` regroups a stream of row batches:

# %%
#| exporti
_BLOCK = 1024  # samples per noise and accumulation block: fixed, so that results do not depend on `chunk`

def _sizes(n, size): return [size] * (n // size) + ([n % size] if n % size else [])

def _rechunk(stream, sizes):
    "Regroup the rows of an iterator of (b, ...) tensors into tensors of `sizes` rows, in order."
    pieces, have = [], 0
    for size in sizes:
        while have < size:
            piece = next(stream)
            pieces.append(piece); have += len(piece)
        batch = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        yield batch[:size]
        rest = batch[size:]
        pieces, have = ([rest] if len(rest) else []), len(rest)


# %%
rows = torch.arange(10)
test_eq([len(b) for b in _rechunk(iter(rows.split(_sizes(10, 3))), _sizes(10, 4))], [4, 4, 2])
test_eq(torch.cat(list(_rechunk(iter(rows.split(_sizes(10, 4))), _sizes(10, 3)))), rows)


# %% [markdown]
# `f` sees contiguous batches of inputs; its output must have one row per input, is flattened to $(m, d)$ (so $(m,)$
# gives $d = 1$ and $(m, 2, 5)$ gives $d = 10$, in row-major order) and converted to `mu`'s dtype, which lets `f` return
# booleans (an indicator) or integers. A NaN or infinite output is an error, reported at the chunk where it appears.

# %%
#| exporti
def _outputs(f, x):
    "f(x) as a finite (m, d) tensor of x's dtype, with clear errors for the wrong shape or device."
    y = f(x)
    if not isinstance(y, Tensor) or y.ndim == 0 or y.shape[0] != len(x):
        found = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f'f must map a batch of {len(x)} inputs to a tensor with {len(x)} rows; got {found}')
    if y.device != x.device: raise ValueError(f'f must return tensors on the device of mu ({x.device}); got {y.device}')
    y = y.reshape(len(x), -1).to(x.dtype)
    check_finite(y, 'f(x)')
    return y


# %% [markdown]
# The sums of the statement, accumulated block by block. With $D = [d, d \circ d]$ one product $D^\top D$ holds all
# three matrices (one large matrix product is much cheaper than three small ones, on a GPU and with a threaded BLAS);
# with `full_cov=False` only their diagonals ($\sum d_i^2$, $\sum d_i^3$, $\sum d_i^4$) are kept, which makes memory
# $O(d)$ for wide outputs. Each column is summed in units of a power of two $c \ge 1$ that bounds its deviations
# $|y - a|$; a block that exceeds it raises $c$ and rescales the sums so far, exactly. So $d^4$ cannot overflow, and a
# power of two changes no digit of a representable result:

# %%
#| exporti
def _col_scale(x):
    "Per column, a power of two >= 1 bounding max |x| up to a factor 2 (1 where max |x| < 1), from x / 2 (no overflow)."
    emax = int(math.log2(torch.finfo(x.dtype).max)) - 1
    e = (torch.frexp((x / 2).abs().amax(0))[1] + 1).clamp(0, emax)
    return torch.exp2(e.to(x.dtype))

def _stream_sums(blocks, full_cov):
    "Shift a (first block's mean), per-column scale c, and the sums S1, S2, S21, S22 of d = (y - a) / c over a stream of (b, d) blocks."
    for i, y in enumerate(blocks):
        if i == 0:
            c0 = _col_scale(y)                                  # exact rescaling: the mean of y / c0 cannot overflow
            shift, width = (y / c0).mean(0) * c0, y.shape[1]
            scale = torch.ones_like(shift)
            S1 = torch.zeros_like(shift)
            S = y.new_zeros((2 * width, 2 * width) if full_cov else (3, width))
        new = torch.maximum(scale, _col_scale(y / 2 - shift / 2) * 2)   # d = (y - a) / c stays within [-2, 2]
        r = scale / new                                         # a power of two <= 1: the old sums rescaled exactly
        if full_cov: S *= (lambda f: f[:, None] * f[None, :])(torch.cat([r, r * r]))
        else: S *= torch.stack([r * r, r * r * r, r**4])
        S1 *= r
        scale = new
        d = y / scale - shift / scale
        d2 = d * d
        S1 += d.sum(0)
        if full_cov: S += torch.cat([d, d2], 1).mT @ torch.cat([d, d2], 1)  # [[S2, S21^T], [S21, S22]] in one product
        else: S += torch.stack([d2, d2 * d, d2 * d2]).sum(1)
    S2, S21, S22 = (S[:width, :width], S[width:, :width], S[width:, width:]) if full_cov else S
    return shift, scale, S1, S2, S21, S22


# %% [markdown]
# The estimates and their standard errors from the sums. The fourth central moment is the derived formula, evaluated
# with the plug-in central second moment $m_{ij} = (S_2)_{ij}/n - \delta_i \delta_j$ (the $\hat c_{ij}$ of divisor $n$;
# the two differ by $O(1/n)$). Round-off can push $\mathbb E[X^2Y^2] - m_{ij}^2$ a few ulps below zero when it is zero
# (a constant output): it is then taken as 0.

# %%
#| exporti
def _central22(e1i, e1j, eii, ejj, eij, eiij, eijj, eiijj):
    "E[(d_i - delta_i)^2 (d_j - delta_j)^2] from raw moments about the shift (the derived formula)."
    return (eiijj - 2 * e1j * eiij - 2 * e1i * eijj + e1j**2 * eii + e1i**2 * ejj
            + 4 * e1i * e1j * eij - 3 * e1i**2 * e1j**2)


# %% [markdown]
# It is the checked formula:

# %%
moments = torch.rand(8, dtype=torch.float64, generator=gen)
test_close(_central22(*moments[[6, 7, 3, 4, 5, 1, 2, 0]]), fourth_ref(*moments), eps=1e-14)


# %% [markdown]
# The result is a `NamedTuple`, like `torch.linalg`'s results: fields by name, or unpacked in order.
#
# | field | shape | meaning |
# |---|---|---|
# | `mean` | $(d,)$ | sample mean $a + \delta$ |
# | `cov` | $(d, d)$ | sample covariance $\hat c$ (divisor $n - 1$); `None` when `full_cov=False` |
# | `var` | $(d,)$ | sample variances, the diagonal of `cov` |
# | `mean_se` | $(d,)$ | standard error of `mean`, $\sqrt{\texttt{var}/n}$ |
# | `cov_se` | $(d, d)$ | delta-method standard error of each entry of `cov`; `None` when `full_cov=False` |
# | `var_se` | $(d,)$ | standard error of `var`, the diagonal of `cov_se` |
# | `n` | int | number of samples |

# %%
#| export
class MCMoments(NamedTuple):
    "Monte Carlo estimates of the mean and covariance of f(x) with their standard errors (SE)."
    mean:Tensor         # (d,) sample mean
    cov:Tensor|None     # (d, d) sample covariance, divisor n - 1; None when full_cov=False
    var:Tensor          # (d,) sample variances: the diagonal of cov
    mean_se:Tensor      # (d,) SE of mean: sqrt(var / n)
    cov_se:Tensor|None  # (d, d) delta-method SE of each entry of cov; None when full_cov=False
    var_se:Tensor       # (d,) SE of var: the diagonal of cov_se
    n:int               # number of samples


# %%
#| exporti
def _moments(shift, scale, S1, S2, S21, S22, n, full_cov):
    "`MCMoments` from the streamed sums of d / scale (see the statement)."
    e1, e2, e21, e22 = S1 / n, S2 / n, S21 / n, S22 / n
    if full_cov:
        e1i, e1j, eii = e1[:, None], e1[None, :], e2.diagonal()
        m = e2 - e1i * e1j
        fourth = _central22(e1i, e1j, eii[:, None], eii[None, :], e2, e21, e21.mT, e22)
    else:
        m = e2 - e1 * e1
        fourth = _central22(e1, e1, e2, e2, e2, e21, e21, e22)
    cov, cov_se = m * (n / (n - 1)), ((fourth - m * m).clamp(min=0) / n).sqrt()
    if full_cov: cov, cov_se = (cov + cov.mT) / 2, (cov_se + cov_se.mT) / 2  # matmul round-off
    mean_se = ((cov.diagonal() if full_cov else cov) / n).sqrt() * scale
    unscale = (lambda x: x * scale[:, None] * scale[None, :]) if full_cov else (lambda x: x * scale * scale)
    cov, cov_se = unscale(cov), unscale(cov_se)               # back to the units of f: inf where the moment overflows
    var, var_se = (cov.diagonal(), cov_se.diagonal()) if full_cov else (cov, cov_se)
    if not full_cov: cov = cov_se = None
    return MCMoments(shift + e1 * scale, cov, var, mean_se, cov_se, var_se, n)


# %% [markdown]
# ## The estimator
# `mc_moments` puts the pieces together: validate, draw the noise block by block from a local generator, regroup
# into chunks for `f`, regroup the outputs into blocks and accumulate. It runs under `torch.no_grad()`: it is a
# reference, and keeping each chunk's graph would defeat the streaming. Float64 is the dtype for references.

# %%
#| export
def mc_moments(
    f:Callable,                    # maps inputs (m, *mu.shape) to outputs (m, d), (m,) or (m, *out_shape) (flattened)
    mu:Tensor,                     # mean of x, any shape (one distribution); its dtype and device are used throughout
    cov:float|Tensor|LowRankCov,   # variance, variances of mu's shape, (N, N) PSD matrix (singular: eigh), LowRankCov
    n:int,                         # number of samples, >= 2
    seed:int=0,                    # seeds a local torch.Generator on mu's device; the global RNG is untouched
    chunk:int=10_000,              # samples per call of f: bounds memory, leaves the result unchanged
    full_cov:bool=True,            # estimate the (d, d) covariance and its SE; False: variances only, O(d) memory
    progress:bool=False,           # show a tqdm progress bar over the chunks
    generator:torch.Generator|None=None,  # used instead of `seed` when given; must be on mu's device
)->MCMoments:                      # estimates and SEs, in the dtype (of mu and cov) and on the device of mu
    "Monte Carlo mean and covariance of f(x), x ~ N(mu, cov), with standard errors, streamed in chunks."
    mu, k, draw = _input_sampler(mu, cov)
    n, chunk = check_count(n, 'n', 2), check_count(chunk, 'chunk', 1)
    if generator is None: generator = torch.Generator(device=mu.device).manual_seed(seed)
    elif generator.device.type != mu.device.type:
        raise ValueError(f'generator must be on the device of mu ({mu.device}); got {generator.device}')
    blocks = _sizes(n, _BLOCK)
    noise = (torch.randn(b, k, generator=generator, dtype=mu.dtype, device=mu.device) for b in blocks)
    inputs = (draw(z) for z in noise)
    with torch.no_grad(), tqdm(total=math.ceil(n / chunk), disable=not progress, unit='chunk') as bar:
        def outputs():
            for x in _rechunk(inputs, _sizes(n, chunk)):
                y = _outputs(f, x)
                bar.update()
                yield y
        sums = _stream_sums(_rechunk(outputs(), blocks), full_cov)
    return _moments(*sums, n, full_cov)


# %% [markdown]
# ### Gaussian inputs through the identity
# With $f(x) = x$ the estimates must recover $\mu$ and $\Sigma$ for every form of the covariance, within 4 standard
# errors entry by entry; the singular full matrix goes through the eigendecomposition:

# %%
mu = torch.tensor([1., -2., 0.5], dtype=torch.float64)
factor = torch.tensor([[1., 0.], [0.5, 1.], [-1., 2.]], dtype=torch.float64)
variances = torch.tensor([0.5, 2., 1.], dtype=torch.float64)
covs = {'scalar': (0.7, 0.7 * torch.eye(3, dtype=torch.float64)),
        'variances': (variances, variances.diag()),
        'full': (full, full), 'singular': (singular, singular),
        'low rank': (LowRankCov(factor, variances), factor @ factor.mT + variances.diag())}
for form, (cov, dense) in covs.items():
    r = mc_moments(lambda x: x, mu, cov, 20_000, seed=1)
    test_close(r.mean, mu, eps=4 * r.mean_se)
    test_close(r.cov, dense, eps=4 * r.cov_se)
    test_eq(r.var, r.cov.diagonal())

# %% [markdown]
# Outputs scaled by $10^{200}$ give the same mean and standard error, scaled, and an infinite (not NaN) covariance,
# which overflows float64:

# %%
plain = mc_moments(lambda x: x, mu, variances, 20_000, seed=1)
scaled = mc_moments(lambda x: x * 1e200, mu, variances, 20_000, seed=1)
test_close(scaled.mean / 1e200, plain.mean, eps=1e-14); test_close(scaled.mean_se / 1e200, plain.mean_se, eps=1e-14)
assert torch.isinf(scaled.cov).all() and not any(torch.isnan(x).any() for x in scaled[:-1])

# %% [markdown]
# ### A nonlinear check: the mean of a rectified Gaussian
# For $z \sim \mathcal N(m, s^2)$, $\mathbb E[\mathrm{relu}(z)] = m\,\Phi(m/s) + s\,\varphi(m/s)$ and
# $\mathbb E[\mathrm{relu}(z)^2] = (m^2 + s^2)\,\Phi(m/s) + m s\,\varphi(m/s)$ (both derived in
# [ReLU moments](03_relu.ipynb), after [Bibi et al. (2018)](99_references.ipynb#bibi2018), Remark 1 and Lemma 1).
# With independent entries and $f = \mathrm{relu}$ both the mean and the variance agree within 4 standard errors:

# %%
m_grid = torch.tensor([-1., 0., 0.5, 2.], dtype=torch.float64)
s_grid = torch.tensor([0.5, 1., 1.5, 0.7], dtype=torch.float64)
h_grid = m_grid / s_grid
Phi, phi = torch.special.ndtr(h_grid), torch.exp(-h_grid**2 / 2) / math.sqrt(2 * math.pi)
relu_mean = m_grid * Phi + s_grid * phi
relu_var = (m_grid**2 + s_grid**2) * Phi + m_grid * s_grid * phi - relu_mean**2
r = mc_moments(torch.relu, m_grid, s_grid**2, 50_000, full_cov=False)
test_close(r.mean, relu_mean, eps=4 * r.mean_se)
test_close(r.var, relu_var, eps=4 * r.var_se)
test_eq((r.cov, r.cov_se), (None, None))

# %% [markdown]
# Inputs keep their shape: here an image-shaped input with independent pixels, and an `f` returning $(m,)$, the sum
# of the pixels ($d = 1$, variance the sum of the variances):

# %%
pixel_var = torch.linspace(0.1, 1., 16, dtype=torch.float64).reshape(1, 4, 4)
r = mc_moments(lambda x: x.sum((1, 2, 3)), torch.ones(1, 4, 4, dtype=torch.float64), pixel_var, 20_000)
test_eq((r.mean.shape, r.cov.shape), ((1,), (1, 1)))
test_close(r.mean, 16., eps=4 * r.mean_se)
test_close(r.var, pixel_var.sum(), eps=4 * r.var_se)

# %% [markdown]
# A zero covariance is the limit $x = \mu$: the mean is $f(\mu)$ up to round-off and the covariance vanishes:

# %%
r = mc_moments(torch.relu, mu, 0., 1000)
test_close(r.mean, mu.relu(), eps=1e-15)
test_close(r.cov, 0., eps=1e-30)

# %% [markdown]
# ### Seeds, chunks, dtype and device
# The same seed gives bitwise the same result, another seed another one, a `generator` replaces the seed, and the global
# random state is left alone:

# %%
f_pair = lambda x: torch.stack([x[:, 0].relu(), x[:, 0] * x[:, 1]], -1)
state = torch.random.get_rng_state()
first = mc_moments(f_pair, mu[:2], full[:2, :2], 3000, seed=5)
again = mc_moments(f_pair, mu[:2], full[:2, :2], 3000, seed=5)
test_eq(torch.random.get_rng_state(), state)
test_eq(first, again)
test_ne(mc_moments(f_pair, mu[:2], full[:2, :2], 3000, seed=6).mean, first.mean)
test_eq(mc_moments(f_pair, mu[:2], full[:2, :2], 3000, generator=torch.Generator().manual_seed(5)), first)

# %% [markdown]
# The chunk size changes nothing, bit for bit, with chunks smaller or larger than the block, not multiples of it, and
# down to one sample per call of `f`:

# %%
for chunk in (7, 1024, 1500, 10_000):
    test_eq(mc_moments(f_pair, mu[:2], full[:2, :2], 3000, seed=5, chunk=chunk), first)
test_eq(mc_moments(f_pair, mu[:2], full[:2, :2], 300, chunk=1), mc_moments(f_pair, mu[:2], full[:2, :2], 300))

# %% [markdown]
# Results have the dtype and device of the inputs (on a GPU the generator lives there too: `tests/test_montecarlo.py`
# runs these checks on CUDA when one is present). A float32 run draws its own noise (the generator's stream depends on
# the dtype) and is as accurate as its standard errors say:

# %%
r32 = mc_moments(lambda x: x, mu.float(), full.float(), 20_000)
test_eq({x.dtype for x in r32[:6]} | {x.device for x in r32[:6]}, {torch.float32, torch.device('cpu')})
test_close(r32.mean, mu.float(), eps=4 * r32.mean_se)
test_close(r32.cov, full.float(), eps=4 * r32.cov_se)

# %% [markdown]
# ### Errors
# Bad covariances are refused with the rule they break:

# %%
test_fail(lambda: mc_moments(torch.relu, mu, -1., 10), contains='cov must be >= 0; smallest entry is -1',
          exc=ValueError)
test_fail(lambda: mc_moments(torch.relu, mu.float(), torch.tensor([1., -0.5, 1.]), 10), contains='cov must be >= 0',
          exc=ValueError)
test_fail(lambda: mc_moments(torch.relu, mu[:2].float(), torch.tensor([[1., 2.], [2., 1.]]), 10),
          contains='cov must be positive semi-definite', exc=ValueError)
test_fail(lambda: mc_moments(torch.relu, mu[:2].float(), torch.tensor([[1., .5], [0., 1.]]), 10),
          contains='cov must be symmetric', exc=ValueError)
test_fail(lambda: mc_moments(torch.relu, mu.float(), torch.ones(2, 2), 10),
          contains='cov must be a number, variances of shape (3,), an (3, 3) matrix or a LowRankCov; got shape (2, 2)',
          exc=ValueError)
test_fail(lambda: mc_moments(torch.relu, mu.float(), LowRankCov(torch.ones(2, 1), torch.ones(3)), 10),
          contains='factor of cov must have shape (3, r)', exc=ValueError)
test_fail(lambda: mc_moments(torch.relu, mu.float(), LowRankCov(torch.ones(3, 1), -torch.ones(3)), 10),
          contains='diag of cov must be >= 0', exc=ValueError)

# %% [markdown]
# NaN inputs, mixed devices (the `meta` device standing in for a GPU), two floating dtypes, too few samples, and an
# `f` with the wrong output are refused too:

# %%
test_fail(lambda: mc_moments(torch.relu, torch.tensor([float('nan')]), 1., 10), contains='mu must be finite',
          exc=ValueError)
test_fail(lambda: mc_moments(torch.relu, mu, torch.ones(3, device='meta'), 10),
          contains='all tensors must be on one device; found mu on cpu, cov on meta', exc=ValueError)
test_fail(lambda: mc_moments(torch.relu, mu, torch.ones(3), 10), contains='found mu float64, cov float32', exc=TypeError)
test_fail(lambda: mc_moments(torch.relu, mu, LowRankCov(torch.ones(3, 1), torch.ones(3, dtype=torch.float64)), 10),
          contains='found mu float64, factor of cov float32, diag of cov float64', exc=TypeError)
test_fail(lambda: mc_moments(torch.relu, mu, 1., 1), contains='n must be >= 2; got 1', exc=ValueError)
test_fail(lambda: mc_moments(torch.relu, mu, 1., 10, chunk=0), contains='chunk must be >= 1', exc=ValueError)
test_fail(lambda: mc_moments(lambda x: x[:1], mu, 1., 10), contains='f must map a batch of 10 inputs', exc=ValueError)
test_fail(lambda: mc_moments(torch.log, mu, 1., 100), contains='f(x) must be finite; it holds NaN', exc=ValueError)

# %% [markdown]
# ## Are the standard errors right?
# A standard error claims to be the spread of the estimate over independent repetitions. Repeating the estimate for
# $R = 400$ seeds gives that spread directly, for a nonlinear $f$ with skewed outputs. The sample standard deviation of
# $R$ estimates has a relative standard error $\sqrt{(\kappa - 1)/(4R)}$, $\kappa$ the kurtosis of the estimates
# (3 for normal ones, $1/\sqrt{2R}$ = 3.5%), so the ratio spread / reported SE (root mean square over the repetitions)
# must be 1 within 4 of those. First the mean, for all three outputs:

# %%
f_three = lambda x: torch.stack([x[:, 0].relu(), x[:, 0] * x[:, 1], x[:, 1].tanh()], -1)
R = 400
runs = [mc_moments(f_three, mu[:2], full[:2, :2], 1000, seed=seed) for seed in range(R)]

def spread_ratio(estimates, ses):
    "Spread of `estimates` over repetitions / RMS reported SE, and 4 SE of that ratio (from the kurtosis)."
    centred = estimates - estimates.mean(0)
    kurtosis = (centred**4).mean(0) / (centred**2).mean(0)**2
    return estimates.std(0) / ses.pow(2).mean(0).sqrt(), 4 * ((kurtosis - 1) / (4 * R)).sqrt()

ratio, tol = spread_ratio(torch.stack([r.mean for r in runs]), torch.stack([r.mean_se for r in runs]))
test_close(ratio, 1., eps=tol)
ratio

# %% [markdown]
# Then every entry of the covariance, variances included:

# %%
ratio, tol = spread_ratio(torch.stack([r.cov for r in runs]), torch.stack([r.cov_se for r in runs]))
test_close(ratio, 1., eps=tol)
ratio

# %% [markdown]
# ## The $1/\sqrt n$ law
# The standard error of the mean shrinks like $n^{-1/2}$. On a log-log scale that is a line of slope $-1/2$; the
# fitted slope, over independent runs from $n = 10^2$ to $10^5$, must be $-1/2$ within 4 of its standard errors, which
# come from `var_se`: $\log \widehat{SE}$ has standard deviation $\approx \frac12\,$`var_se / var`.

# %%
sizes = np.logspace(2, 5, 10).astype(int)
curve = [mc_moments(f_three, mu[:2], full[:2, :2], size, seed=i, full_cov=False) for i, size in enumerate(sizes)]
log_n = np.log(sizes)
log_se = torch.stack([r.mean_se for r in curve]).log().numpy()
sd_log_se = (0.5 * torch.stack([r.var_se / r.var for r in curve])).numpy()
weights = (log_n - log_n.mean()) / ((log_n - log_n.mean())**2).sum()
slope, sd_slope = weights @ log_se, np.sqrt(weights**2 @ sd_log_se**2)
test_close(slope, -0.5, eps=4 * sd_slope)
slope

# %%
#| label: fig-mc-se
#| fig-cap: "Standard error of the Monte Carlo mean against the number of samples for three nonlinear outputs; dashed: slope -1/2 through the largest run."
fig, ax = plt.subplots(figsize=(5, 3), layout='constrained')
for i, name in enumerate(['relu(x1)', 'x1 x2', 'tanh(x2)']):
    ax.loglog(sizes, np.exp(log_se[:, i]), 'o-', label=name)
    ax.loglog(sizes, np.exp(log_se[-1, i]) * np.sqrt(sizes[-1] / sizes), 'k--', lw=0.8,
              label='slope -1/2' if i == 0 else None)
ax.set(xlabel='samples n', ylabel='SE of the mean'); ax.legend();

# %% [markdown]
# ## Export -

# %%
#| hide
#| eval: false
import nbdev; nbdev.nbdev_export()

# %% [markdown]
# # Gaussian toolbox
# > Normal pdf and cdf with accurate tails, and the bivariate normal CDF Phi2(h, k; rho) in torch by Genz's algorithm (Genz 2004)

# %%
#| default_exp gaussian

# %%
#| export
from __future__ import annotations
import math
import numpy as np
import torch
from torch import Tensor
from netmoments.core import as_tensors, check_broadcast, check_finite

# %%
#| hide
import time
import mpmath as mp
import sympy as sp
import matplotlib.pyplot as plt
from scipy import stats
from fastcore.test import test_eq, test_close, test_fail


# %% [markdown]
# Every later chapter is built from four functions of the standard normal: the pdf $\varphi$, the cdf $\Phi$, and their
# bivariate versions $\varphi_2(h, k; \rho)$ and $\Phi_2(h, k; \rho) = P(X \le h, Y \le k)$ for standard normal
# $(X, Y)$ with correlation $\rho$. This chapter makes them accurate in the tails, at $|\rho| = 1$, in float32 and
# float64, batched with broadcasting, on any device, and differentiable.

# %% [markdown]
# ## Univariate pdf and cdf
# $\varphi(x) = e^{-x^2/2}/\sqrt{2\pi}$ and $\Phi(x) = \tfrac12 \operatorname{erfc}(-x/\sqrt2)$. The erfc form matters:
# torch's `special.ndtr` computes $(1 + \operatorname{erf}(x/\sqrt2))/2$, which is 0 at $x = -10$ in float64 (the true
# value is $7.6\cdot10^{-24}$) and loses most digits of its float32 lower tail.

# %% [markdown]
# Both take $\pm\infty$ as the limits they are ($\varphi(\pm\infty) = 0$, $\Phi(-\infty) = 0$, $\Phi(\infty) = 1$)
# and refuse NaN by name, since a NaN point has no answer. The later chapters call the unchecked kernels `_normal_pdf`
# and `_normal_cdf` on values they have already validated.

# %%
#| exporti
def _not_nan(
    x:Tensor,  # any tensor
    name:str,  # argument name used in the message
):
    "Raise `ValueError` if `x` holds NaN (infinities pass: they are limits here)."
    bad = torch.isnan(x)
    if bad.any(): raise ValueError(f'{name} must not be NaN; it holds NaN ({int(bad.sum())} of {x.numel()} entries)')

def _normal_pdf(x): return torch.exp(-x * x / 2) / math.sqrt(2 * math.pi)

def _normal_cdf(x): return torch.special.erfc(-x / math.sqrt(2)) / 2


# %%
#| export
def normal_pdf(
    x:Tensor,  # points, any shape; +-inf allowed, NaN refused
)->Tensor:     # phi(x), same shape, dtype and device
    "Standard normal density."
    x, = as_tensors(x, names=('x',))
    _not_nan(x, 'x')
    far = torch.isinf(x)                                    # the limit 0, with gradient 0 (not inf * 0)
    return torch.where(far, 0., _normal_pdf(torch.where(far, 0., x)))


# %%
#| export
def normal_cdf(
    x:Tensor,  # points, any shape; +-inf allowed, NaN refused
)->Tensor:     # Phi(x) with full relative accuracy in the lower tail
    "Standard normal cdf, as 0.5 * erfc(-x / sqrt 2)."
    x, = as_tensors(x, names=('x',))
    _not_nan(x, 'x')
    return _normal_cdf(x)


# %% [markdown]
# The limits hold exactly, and NaN is refused:

# %%
ends = torch.tensor([-math.inf, math.inf], dtype=torch.float64)
test_eq(normal_pdf(ends).tolist(), [0., 0.])
ends.requires_grad_()
test_eq(torch.autograd.grad(normal_pdf(ends).sum(), ends)[0].tolist(), [0., 0.])
test_eq(normal_cdf(ends).tolist(), [0., 1.])
test_fail(lambda: normal_pdf(torch.tensor([0., math.nan])), contains='x must not be NaN', exc=ValueError)
test_fail(lambda: normal_cdf(math.nan), contains='x must not be NaN', exc=ValueError)

# %% [markdown]
# Against mpmath at 30 digits, the lower tail keeps its relative accuracy where `ndtr` gives up. The relative error
# grows like $x^2\epsilon$ (the rounding of $x/\sqrt2$, amplified by the slope of $\log\Phi$): $10^{-13}$ at $x = -30$.
# In float32, $\Phi(-30) \approx 5\cdot10^{-198}$ underflows, so float32 is checked down to $-10$.

# %%
mp.mp.dps = 30
tail = torch.tensor([-30., -10., -5.3, -1., 0., 2.], dtype=torch.float64)
ref = torch.tensor([float(mp.ncdf(t)) for t in tail.tolist()], dtype=torch.float64)
test_close(normal_cdf(tail) / ref, torch.ones_like(ref), eps=2e-13)
test_close(normal_cdf(tail[1:].float()).double() / ref[1:], torch.ones_like(ref[1:]), eps=2e-6)
test_eq(torch.special.ndtr(tail)[1].item(), 0.)   # the form we avoid
pdf_ref = torch.tensor([float(mp.npdf(t)) for t in tail.tolist()], dtype=torch.float64)
test_close(normal_pdf(tail) / pdf_ref, torch.ones_like(pdf_ref), eps=1e-13)


# %% [markdown]
# ## Bivariate density
# $\varphi_2(h, k; \rho) = \frac{1}{2\pi\sqrt{1-\rho^2}} \exp\!\big(-\frac{h^2 - 2\rho h k + k^2}{2(1-\rho^2)}\big)
# = \varphi(h)\,\varphi\big(\tfrac{k - \rho h}{r}\big)/r$ with $r = \sqrt{1-\rho^2}$. The second form, with $k - \rho h$
# computed as $(k - \operatorname{sign}(\rho) h) + (\operatorname{sign}(\rho) - \rho) h$, keeps its accuracy as
# $|\rho| \to 1$. At $|\rho| = 1$ the distribution is singular and has no density; there the function returns
# the limit off the line $k = \rho h$, which is 0.

# %%
#| exporti
def _conditional_z(h, k, rho):
    "(k - rho h) / sqrt(1 - rho^2), accurate as |rho| -> 1, +-inf (or 0 for 0/0) at |rho| = 1."
    sgn = torch.where(rho < 0, -torch.ones_like(rho), torch.ones_like(rho))
    num = (k - sgn * h) + (sgn - rho) * h      # = k - rho h; sgn - rho is exact near |rho| = 1, derivatives right at 0
    r2 = (1 - rho) * (1 + rho)
    singular = r2 <= 0
    r = torch.where(singular, torch.ones_like(r2), r2).sqrt()
    inf = torch.full_like(num, math.inf)
    limit = torch.where(num > 0, inf, torch.where(num < 0, -inf, torch.zeros_like(num)))  # constants: no grad path
    return torch.where(singular, limit, num / r), r, singular


# %%
#| exporti
def _bvn_pdf(h, k, rho):
    "phi2 for broadcast, validated h, k (finite) and rho."
    z, r, singular = _conditional_z(h, k, rho)
    z = torch.where(singular, torch.zeros_like(z), z)
    return torch.where(singular, torch.zeros_like(z), _normal_pdf(h) * _normal_pdf(z) / r)

def _check_rho(rho):
    "Raise `ValueError` unless every entry of `rho` is finite and in [-1, 1]."
    check_finite(rho, 'rho')
    if (rho.abs() > 1).any():
        raise ValueError(f'rho must be in [-1, 1]; largest |rho| is {rho.abs().max().item():.6g}')


# %%
#| export
def bvn_pdf(
    h:Tensor,    # first coordinate, broadcastable with `k` and `rho`; +-inf allowed
    k:Tensor,    # second coordinate; +-inf allowed
    rho:Tensor,  # correlation in [-1, 1]
)->Tensor:       # phi2(h, k; rho); 0 at |rho| = 1 (singular distribution) and where h or k is infinite
    "Bivariate standard normal density, stable as |rho| -> 1."
    h, k, rho = as_tensors(h, k, rho, names=('h', 'k', 'rho'))
    check_broadcast(('h', 'k', 'rho'), h, k, rho)
    h, k, rho = torch.broadcast_tensors(h, k, rho)
    _not_nan(h, 'h'); _not_nan(k, 'k'); _check_rho(rho)
    far = torch.isinf(h) | torch.isinf(k)                  # the density vanishes there; inf - inf must not arise
    zero = torch.zeros_like(h)
    return torch.where(far, zero, _bvn_pdf(torch.where(far, zero, h), torch.where(far, zero, k), rho))


# %%
pts = torch.tensor([[0.3, -1.2, 0.5], [2., 2., 0.999999], [1., -1.00001, -0.9999999999]], dtype=torch.float64)
mp_pdf = lambda h, k, r: mp.exp(-(h*h - 2*r*h*k + k*k) / (2 * (1 - r*r))) / (2 * mp.pi * mp.sqrt(1 - r*r))
ref = torch.tensor([float(mp_pdf(*map(mp.mpf, p))) for p in pts.tolist()], dtype=torch.float64)
test_close(bvn_pdf(*pts.T) / ref, torch.ones_like(ref), eps=1e-9)
test_eq(bvn_pdf(torch.tensor(1.), torch.tensor(1.), torch.tensor(1.)).item(), 0.)

# %% [markdown]
# An infinite coordinate is the limit 0, a NaN is refused, and so is a correlation outside $[-1, 1]$ (there is no such
# distribution):

# %%
test_eq(bvn_pdf(torch.tensor([math.inf, 0.3, -math.inf]), torch.tensor([0.2, -math.inf, math.inf]), 0.).tolist(), [0.] * 3)
test_fail(lambda: bvn_pdf(0., math.nan, 0.5), contains='k must not be NaN', exc=ValueError)
test_fail(lambda: bvn_pdf(0., 0., 1.5), contains='rho must be in [-1, 1]', exc=ValueError)
test_fail(lambda: bvn_pdf(0., 0., math.inf), contains='rho must be finite', exc=ValueError)
test_fail(lambda: bvn_pdf(torch.zeros(2), torch.zeros(2, dtype=torch.float64), 0.), contains='found h float32, k float64',
          exc=TypeError)

# %% [markdown]
# ## Bivariate CDF: the Drezner–Wesolowsky integral
# The identity $\partial \Phi_2 / \partial \rho = \varphi_2$ of [Plackett (1954)](99_references.ipynb#plackett1954)
# together with $\Phi_2(h, k; 0) = \Phi(h)\Phi(k)$
# gives, substituting $\rho = \sin\theta$,
# $$\Phi_2(h, k; \rho) = \Phi(h)\Phi(k) + \frac{1}{2\pi}\int_0^{\arcsin\rho}
#   \exp\!\Big(-\frac{h^2 + k^2 - 2hk\sin\theta}{2\cos^2\theta}\Big)\,d\theta,$$
# the integral [Drezner and Wesolowsky (1990)](99_references.ipynb#drezner1990) evaluate by Gauss–Legendre quadrature.
# We let sympy confirm both facts the formula rests on: the derivative of the integral in $\rho$ is the bivariate
# density, and the $h$-derivative of $\Phi_2$ is $\varphi(h)\,\Phi\big((k - \rho h)/\sqrt{1-\rho^2}\big)$ (the
# conditional-distribution form we use for the gradient).

# %%
h_, k_, t_ = sp.symbols('h k t', real=True)
rho_ = sp.symbols('rho', real=True)
theta = sp.symbols('theta', real=True)
integrand = sp.exp(-(h_**2 + k_**2 - 2 * h_ * k_ * sp.sin(theta)) / (2 * sp.cos(theta)**2)) / (2 * sp.pi)
dw_integral = sp.Integral(integrand, (theta, 0, sp.asin(rho_)))
phi2_sym = sp.exp(-(h_**2 - 2 * rho_ * h_ * k_ + k_**2) / (2 * (1 - rho_**2))) / (2 * sp.pi * sp.sqrt(1 - rho_**2))
test_eq(sp.simplify(dw_integral.diff(rho_) - phi2_sym), 0)
dw_integral.diff(rho_)

# %% [markdown]
# For the $h$-derivative, write $\Phi_2(h, k; \rho) = \int_{-\infty}^{h} \varphi(t)\,
# \Phi\big(\tfrac{k - \rho t}{\sqrt{1-\rho^2}}\big)\,dt$ (condition on $X = t$); the fundamental theorem gives the
# integrand at $t = h$. sympy checks that this conditional factorization reproduces $\varphi_2$ when differentiated
# in $k$:

# %%
Phi_sym = lambda x: (1 + sp.erf(x / sp.sqrt(2))) / 2
phi_sym = lambda x: sp.exp(-x**2 / 2) / sp.sqrt(2 * sp.pi)
dPhi2_dh = phi_sym(h_) * Phi_sym((k_ - rho_ * h_) / sp.sqrt(1 - rho_**2))
test_eq(sp.simplify(sp.diff(dPhi2_dh, k_) - phi2_sym), 0)

# %% [markdown]
# ### Genz's BVND
# We implement the BVND routine of [Genz (2004)](99_references.ipynb#genz2004), the algorithm behind scipy's and R's
# bivariate normal CDF: for $|\rho| < 0.925$ the integral above with 6, 12 or 20 Gauss–Legendre nodes (for $|\rho|$
# below 0.3, 0.75, 0.925); above, the substitution around $|\rho| = 1$ with Genz's asymptotic expansion, which stays
# accurate all the way to $|\rho| = 1$, where $\Phi_2$ is $\Phi(\min(h, k))$ ($\rho = 1$) or
# $\max(0, \Phi(h) + \Phi(k) - 1)$ ($\rho = -1$), evaluated exactly. Two changes from the Fortran: each branch runs on
# its own elements of the flattened batch (boolean indexing, no Python loop over elements), and the product
# $e^{-hk/2}\,\Phi(-b/a)$ is evaluated as one exponential of $-hk/2 + \log\Phi(-b/a)$, so no intermediate overflows.
# The nodes are numpy's `leggauss`.

# %%
#| exporti
_GL = {m: np.polynomial.legendre.leggauss(m) for m in (6, 12, 20)}   # Genz's 3 rules: nodes and weights on (-1, 1)

def _nodes(m, like):
    x, w = _GL[m]
    return torch.as_tensor(x, dtype=like.dtype, device=like.device), torch.as_tensor(w, dtype=like.dtype, device=like.device)

def _bvn_mid(h, k, rho, m):
    "P(X > h, Y > k) for |rho| < 0.925: the integral of Drezner and Wesolowsky 1990 over theta in (0, asin rho), m nodes."
    x, w = _nodes(m, h)
    asr = torch.asin(rho)
    sn = torch.sin(asr[:, None] * (1 + x) / 2)
    hs = (h * h + k * k) / 2
    total = (w * torch.exp((sn * (h * k)[:, None] - hs[:, None]) / (1 - sn * sn))).sum(-1)
    return total * asr / (4 * math.pi) + _normal_cdf(-h) * _normal_cdf(-k)

def _bvn_high(h, k, rho):
    "P(X > h, Y > k) for |rho| >= 0.925: the expansion of Genz 2004 around |rho| = 1 (exact at |rho| = 1)."
    x, w = _nodes(20, h)
    tp = 2 * math.pi
    neg = rho < 0
    k = torch.where(neg, -k, k)
    hk = h * k
    r = torch.where(rho.abs() < 1, rho.abs(), torch.full_like(rho, 0.95))   # safe where |rho| = 1 (bracket unused)
    as_ = (1 - r) * (1 + r)
    a = as_.sqrt()
    bs = (h - k) ** 2
    c, d = (4 - hk) / 8, (12 - hk) / 16
    out = a * torch.exp(-(bs / as_ + hk) / 2) * (1 - c * (bs - as_) * (1 - d * bs / 5) / 3 + c * d * as_ * as_ / 5)
    b = bs.sqrt()
    out = out - torch.exp(-hk / 2 + torch.special.log_ndtr(-b / a)) * math.sqrt(tp) * b * (1 - c * bs * (1 - d * bs / 5) / 3)
    xs = ((a / 2)[:, None] * (x + 1)) ** 2
    rs = (1 - xs).sqrt()
    asr = -(bs[:, None] / xs + hk[:, None]) / 2
    ep = torch.exp(asr - hk[:, None] * (1 - rs) / (2 * (1 + rs))) / rs
    sp_ = 1 + c[:, None] * xs * (1 + d[:, None] * xs)
    out = out + ((a / 2)[:, None] * w * (ep - torch.exp(asr) * sp_)).sum(-1)
    out = torch.where(rho.abs() < 1, -out / tp, torch.zeros_like(out))
    lower = torch.where(h < 0, _normal_cdf(k) - _normal_cdf(h), _normal_cdf(-h) - _normal_cdf(-k))
    return torch.where(~neg, out + _normal_cdf(-torch.maximum(h, k)), torch.where(h >= k, -out, lower - out))

def _bvn_upper(h, k, rho):
    "P(X > h, Y > k) by Genz's BVND, for broadcast tensors h, k, rho (|rho| <= 1); each branch on its own elements."
    shape = h.shape
    h, k, rho = h.reshape(-1), k.reshape(-1), rho.reshape(-1)
    out = torch.empty_like(h)
    a = rho.abs()
    for keep, branch in ((a < 0.3, lambda *t: _bvn_mid(*t, 6)), ((a >= 0.3) & (a < 0.75), lambda *t: _bvn_mid(*t, 12)),
                         ((a >= 0.75) & (a < 0.925), lambda *t: _bvn_mid(*t, 20)), (a >= 0.925, _bvn_high)):
        if keep.any(): out[keep] = branch(h[keep], k[keep], rho[keep])
    return out.clamp(0, 1).reshape(shape)


# %% [markdown]
# The gradient does not go through the quadrature: a custom `autograd.Function` returns the closed forms
# $\partial\Phi_2/\partial h = \varphi(h)\,\Phi\big(\tfrac{k - \rho h}{\sqrt{1-\rho^2}}\big)$ (and symmetrically in
# $k$) and $\partial\Phi_2/\partial\rho = \varphi_2(h, k; \rho)$, written with torch operations so that second
# derivatives ([Price's theorem](04_price.ipynb)) are exact too. Autograd through the quadrature loses digits in float32
# and near $|\rho| = 1$.

# %%
#| exporti
class _BvnCdf(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, k, rho):
        ctx.save_for_backward(h, k, rho)
        return _bvn_upper(-h, -k, rho)

    @staticmethod
    def backward(ctx, grad):
        h, k, rho = ctx.saved_tensors
        zk, _, _ = _conditional_z(h, k, rho)   # (k - rho h) / r
        zh, _, _ = _conditional_z(k, h, rho)   # (h - rho k) / r
        return grad * _normal_pdf(h) * _normal_cdf(zk), grad * _normal_pdf(k) * _normal_cdf(zh), grad * _bvn_pdf(h, k, rho)


# %% [markdown]
# The public function validates, broadcasts and clamps $h, k$ to $[-40, 40]$ (harmless: $\Phi(-40) < 10^{-349}$ is 0
# in float64, so the clamp changes no representable result), which lets $\pm\infty$ in.

# %%
#| export
def bvn_cdf(
    h:Tensor,    # upper limit of the first coordinate; +-inf allowed
    k:Tensor,    # upper limit of the second, broadcastable with `h`
    rho:Tensor,  # correlation, in [-1, 1]
)->Tensor:       # Phi2(h, k; rho) = P(X <= h, Y <= k), broadcast shape, dtype and device of the inputs
    "Bivariate standard normal CDF by the BVND algorithm of Genz 2004; differentiable in h, k and rho with closed-form gradients."
    h, k, rho = as_tensors(h, k, rho, names=('h', 'k', 'rho'))
    check_broadcast(('h', 'k', 'rho'), h, k, rho)
    h, k, rho = torch.broadcast_tensors(h, k, rho)
    _not_nan(h, 'h'); _not_nan(k, 'k'); _check_rho(rho)
    return _BvnCdf.apply(h.clamp(-40, 40), k.clamp(-40, 40), rho)


# %% [markdown]
# The closed forms at $\rho = 0$ and $|\rho| = 1$, and the value at the origin $\Phi_2(0, 0; \rho) = \tfrac14 +
# \arcsin(\rho)/(2\pi)$, come out exactly:

# %%
g = torch.tensor([-3., -0.5, 0., 0.7, 4.], dtype=torch.float64)
H, K = torch.meshgrid(g, g, indexing='ij')
Phi = normal_cdf
test_close(bvn_cdf(H, K, 0.), Phi(H) * Phi(K), eps=5e-16)
test_close(bvn_cdf(H, K, 1.), Phi(torch.minimum(H, K)), eps=5e-16)
test_close(bvn_cdf(H, K, -1.), (Phi(H) + Phi(K) - 1).clamp(min=0), eps=5e-16)
rhos = torch.linspace(-1, 1, 41, dtype=torch.float64)
test_close(bvn_cdf(0., 0., rhos), 0.25 + torch.asin(rhos) / (2 * math.pi), eps=5e-16)
test_close(bvn_cdf(math.inf, K, 0.3), Phi(K), eps=5e-16)

# %% [markdown]
# Bad input is refused, by name:

# %%
test_fail(lambda: bvn_cdf(0., 0., 1.2), contains='rho must be in [-1, 1]; largest |rho| is 1.2')
test_fail(lambda: bvn_cdf(torch.tensor([float('nan')]), 0., 0.), contains='h must not be NaN')
test_fail(lambda: bvn_cdf(torch.ones(2), torch.ones(3), 0.), contains='shapes do not broadcast')

# %% [markdown]
# Shape, dtype and device follow the inputs:

# %%
out = bvn_cdf(torch.zeros(4, 1), torch.zeros(3), torch.tensor(0.5))
test_eq((out.shape, out.dtype, out.device), (torch.Size([4, 3]), torch.float32, torch.device('cpu')))


# %% [markdown]
# ## Check against a high-precision reference
# The reference is mpmath at 20 digits of the conditional integral $\int_{-\infty}^{k}\varphi(t)\,
# \Phi\big(\tfrac{h - \rho t}{\sqrt{1-\rho^2}}\big)\,dt$ (exact closed forms at $|\rho| = 1$), independent of the
# quadrature we use, split where the integrand steps (at $t = h/\rho$, which is sharp as $|\rho| \to 1$). The grid
# covers both tails ($|h|, |k|$ up to 8), $\rho$ from $-1$ to $1$ with points at $1 - 10^{-j}$, and both sides of the
# branch switch at $|\rho| = 0.925$; `tests/test_gaussian.py` runs a denser grid. Errors are absolute, as Genz's are.

# %%
#| exporti
def _bvn_cdf_mp(h, k, rho, dps=20):
    "High-precision reference Phi2(h, k; rho) with mpmath (dev-only: tests import it, the library never calls it)."
    import mpmath as mp
    with mp.workdps(dps):
        h, k, rho = mp.mpf(h), mp.mpf(k), mp.mpf(rho)
        if rho == 1: return mp.ncdf(min(h, k))
        if rho == -1: return max(mp.mpf(0), mp.ncdf(h) + mp.ncdf(k) - 1)
        r = mp.sqrt((1 - rho) * (1 + rho))
        cuts = sorted({t for t in (mp.mpf(0), h / rho if rho else None) if t is not None and t < k})  # the near-step
        return mp.quad(lambda t: mp.npdf(t) * mp.ncdf((h - rho * t) / r), [-mp.inf, *cuts, k])


# %%
hk_grid = [-8., -1., 0., 0.7, 3.]
rho_grid = [-1., -0.999999, -0.93, -0.5, 0., 0.3, 0.92, 0.999, 0.99999999, 1.]
pts = torch.tensor([(a, b, r) for a in hk_grid for b in hk_grid for r in rho_grid], dtype=torch.float64)
t0 = time.perf_counter()
reference = torch.tensor([float(_bvn_cdf_mp(*p)) for p in pts.tolist()], dtype=torch.float64)
err64 = (bvn_cdf(*pts.T) - reference).abs()
pts32 = pts.float()   # float32 is judged at its own rounded inputs, against float64 there (checked just above)
err32 = (bvn_cdf(*pts32.T).double() - bvn_cdf(*pts32.double().T)).abs()
print(f'{len(pts)} points (reference {time.perf_counter() - t0:.1f} s): '
      f'max abs error float64 {err64.max():.1e}, float32 {err32.max():.1e}')
assert err64.max() < 1e-15 and err32.max() < 1e-6
print(f'float32 worst at (h, k, rho) = {pts32[err32.argmax()].tolist()}')

# %% [markdown]
# Gradients in float64 agree with finite differences (`gradcheck`), away from $|\rho| = 1$ where $\partial/\partial\rho$
# blows up on the line $h = \rho k$; there (and only there) the closed form gives its limit 0 off the line.

# %%
hh = torch.tensor([-1.3, 0.2, 2.5, 0.], dtype=torch.float64, requires_grad=True)
kk = torch.tensor([0.4, -0.7, 2.4, 0.], dtype=torch.float64, requires_grad=True)
rr = torch.tensor([-0.95, 0.3, 0.97, 0.5], dtype=torch.float64, requires_grad=True)
assert torch.autograd.gradcheck(bvn_cdf, (hh, kk, rr), eps=1e-6, atol=1e-8)
assert torch.autograd.gradgradcheck(bvn_cdf, (hh, kk, rr), eps=1e-6, atol=1e-7)
edge = torch.tensor([1., -1.], dtype=torch.float64, requires_grad=True)
bvn_cdf(torch.tensor([0.3, 0.3], dtype=torch.float64), torch.tensor([1., 1.], dtype=torch.float64), edge).sum().backward()
assert torch.isfinite(edge.grad).all()

# %% [markdown]
# The absolute error over $\rho$, worst over the $(h, k)$ grid, with the float32 rounding level for scale:

# %%
#| label: fig-bvn-error
#| fig-cap: "Worst absolute error of bvn_cdf over the (h, k) grid against the high-precision reference (float32: against float64 at its rounded inputs), by rho (dashed: the branch switch at |rho| = 0.925)."
worst64 = err64.view(len(hk_grid) ** 2, len(rho_grid)).amax(0).clamp(min=1e-18)
worst32 = err32.view(len(hk_grid) ** 2, len(rho_grid)).amax(0).clamp(min=1e-18)
fig, ax = plt.subplots(figsize=(6, 3), layout='constrained')
idx = np.arange(len(rho_grid))
ax.semilogy(idx, worst64, 'o-', label='float64')
ax.semilogy(idx, worst32, 's-', label='float32')
ax.axhline(torch.finfo(torch.float64).eps, color='C0', ls=':', lw=1)
ax.axhline(torch.finfo(torch.float32).eps, color='C1', ls=':', lw=1)
for j, r in enumerate(rho_grid):
    if abs(abs(r) - 0.925) < 1e-9: ax.axvline(j, color='k', ls='--', lw=0.8)
ax.set_xticks(idx, [f'{r:g}' for r in rho_grid], rotation=60, fontsize=7)
ax.set(xlabel='rho', ylabel='max |error|'); ax.legend();

# %% [markdown]
# ## Export -

# %%
#| hide
#| eval: false
import nbdev; nbdev.nbdev_export()

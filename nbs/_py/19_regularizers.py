# %% [markdown]
# # Gaussian-robust training losses
# > The analytic expected-logit regularizer of Alfadly et al. 2019 (eqs. 3-5), N-fold noisy augmentation, and the gradient-norm regularizer and adversarial training of Lyu et al. 2015 (eqs. 1-4)

# %%
#| default_exp regularizers

# %%
#| export
from __future__ import annotations
import math
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from netmoments.attacks import lp_perturbation
from netmoments.core import check_count, check_finite, check_model, check_var, eval_mode
from netmoments.gaussian import normal_cdf, normal_pdf
from netmoments.linearize import _flatten
from netmoments.relu import _pow2, _relu_mean, _relu_var, _safe_std

# %%
#| hide
import time
import sympy as sp
import matplotlib.pyplot as plt
from fastcore.test import test_eq, test_close, test_fail
from IPython.display import Markdown
from netmoments.core import Table
from netmoments.models import pretrained, mnist_slice, lenet
from netmoments.montecarlo import mc_moments
from netmoments.bench import best_time

# %% [markdown]
# [Alfadly et al. (2019)](99_references.ipynb#alfadly2019) train a network $\Phi$ to resist additive Gaussian noise $n \sim \mathcal N(0,
# \mathrm{Diag}(\sigma_x^2))$ by adding to the usual loss the loss of the *expected* logits under that noise
# (eq. 3):
# $$\min_\theta \sum_i \ell(\Phi(x_i), y_i) + \alpha\, \ell\big(\mathbb E_n[\Phi(x_i + n)], y_i\big).$$
# The expectation is made cheap by splitting the network at its first ReLU,
# $\Phi = \Omega \circ \mathrm{ReLU} \circ \Upsilon$ with $\Upsilon(x) = Ax + c_1$ affine, and taking $\Omega$ as
# linear around the mean of its input (eq 4): $\mathbb E[\Phi(x + n)] \approx \Omega(\mu_3)$ with
# $$\mu_2 = Ax + c_1,\qquad \sigma_2 = \sqrt{(A \circ A)\,\sigma_x^2}\ \text{(eq 5)},\qquad
#   \mu_3 = \mathbb E[\mathrm{relu}(\Upsilon(x + n))] = \mu_2\Phi(\mu_2/\sigma_2) + \sigma_2\varphi(\mu_2/\sigma_2).$$
# Only $\mu_3$ is exact; $\Omega(\mu_3)$ is an approximation whose error we measure below instead of hiding it.
#
# **Noise unit.** Throughout the library $\sigma$ is a standard deviation in input units, with images in $[0, 1]$;
# the noise is added without clipping, in training (regularizer, augmentation) and in testing (`netmoments.robustness`)
# alike. The official code of Alfadly et al. (2019) (the GitHub repository xmodar/gaussian-regularizer) differs in
# three ways that we avoid: its
# augmentation reused one noise field for every fold, its test noise was a single "ring" sample of fixed norm
# $\sigma\sqrt n$ rather than Gaussian, and on CIFAR it measured $\sigma$ in different units in training and testing.

# %% [markdown]
# ## The first-layer variance (eq 5)
# For one unit $z = \sum_j a_j (x_j + n_j) + c$ with independent $n_j \sim \mathcal N(0, s_j^2)$,
# $\mathbb E z = a^\top x + c$ and $\mathrm{Var}\, z = \sum_j a_j^2 s_j^2$: the bias drops out and the weights are
# squared. sympy checks it for three inputs:

# %%
a, x, ns = sp.symbols('a1:4', real=True), sp.symbols('x1:4', real=True), sp.symbols('n1:4', real=True)
c = sp.Symbol('c', real=True)
ss = sp.symbols('s1:4', positive=True)
moment = lambda i, k: [1, 0, ss[i]**2][k]           # E[n_i^k] for k <= 2, n_i ~ N(0, s_i^2) independent
expect = lambda e: sum(coef * sp.Mul(*(moment(i, k) for i, k in enumerate(mono)))
                       for mono, coef in sp.Poly(sp.expand(e), *ns).terms())
unit = sum(ai * (xi + ni) for ai, xi, ni in zip(a, x, ns)) + c
mean_unit = expect(unit)
var_unit = sp.expand(expect((unit - mean_unit)**2))
test_eq(sp.expand(mean_unit - (sum(ai * xi for ai, xi in zip(a, x)) + c)), 0)
test_eq(sp.expand(var_unit - sum(ai**2 * si**2 for ai, si in zip(a, ss))), 0)
var_unit

# %% [markdown]
# A convolution is such a unit at every output position (with the zero padding contributing nothing), so its
# variances are the same convolution, squared weights, no bias, applied to $\sigma_x^2$. An eval-mode batch norm
# after it is the affine map $z \mapsto \gamma (z - m)/\sqrt{v + \epsilon} + \beta$: it scales the variance by
# $\gamma^2/(v + \epsilon)$.
#
# ## The rectified mean
# For $z \sim \mathcal N(\mu, s^2)$, $\mathbb E[\mathrm{relu}(z)] = \mu\Phi(\mu/s) + s\varphi(\mu/s)$ (the
# function $T$ of eq. 1; [ReLU moments](03_relu.ipynb) checks it and the variance, `relu_mean` and `relu_var`):

# %%
z, mu = sp.symbols('z mu', real=True)
s = sp.symbols('s', positive=True)
density = sp.exp(-(z - mu)**2 / (2 * s**2)) / (s * sp.sqrt(2 * sp.pi))
closed = mu * (1 + sp.erf(mu / (s * sp.sqrt(2)))) / 2 + s * sp.exp(-mu**2 / (2 * s**2)) / sp.sqrt(2 * sp.pi)
test_eq(sp.simplify((sp.integrate(z * density, (z, 0, sp.oo)) - closed).rewrite(sp.erf)), 0)
closed


# %% [markdown]
# ## Splitting a model at its first ReLU
# A model qualifies when, after flattening nested `nn.Sequential`s (and an optional leading `nn.Flatten`), it starts
# `Linear` or `Conv2d`, optionally an eval-mode `BatchNorm1d`/`BatchNorm2d`, then `ReLU`. `_first_block` returns the
# pieces; anything else is refused with the reason.

# %%
#| exporti
def _first_block(model):
    "(flatten or None, affine, batch norm or None, rest as nn.Sequential) of a model starting affine(+BN)+ReLU."
    if not isinstance(model, nn.Sequential):
        raise TypeError(f'model must be an nn.Sequential whose first block is Linear/Conv2d(+BatchNorm)+ReLU; '
                        f'got {type(model).__name__}')
    layers = list(_flatten(model))
    names = ', '.join(type(m).__name__ for m in layers[:4])
    bad = ValueError(f'the first block of model must be Linear or Conv2d, an optional eval-mode BatchNorm, then '
                     f'ReLU; model starts {names}')
    i, flat = 0, None
    if i < len(layers) and isinstance(layers[i], nn.Flatten): flat, i = layers[i], i + 1
    if i >= len(layers) or not isinstance(layers[i], (nn.Linear, nn.Conv2d)): raise bad
    affine, i, bn = layers[i], i + 1, None
    if i < len(layers) and isinstance(layers[i], (nn.BatchNorm1d, nn.BatchNorm2d)):
        bn, i = layers[i], i + 1
        if bn.training or bn.running_var is None:
            raise ValueError('the BatchNorm of the first block of model must be in eval mode with running statistics: '
                             'in training mode it normalizes by the batch, which is not an affine map of one input')
    if i >= len(layers) or not isinstance(layers[i], nn.ReLU): raise bad
    return flat, affine, bn, nn.Sequential(*layers[i + 1:])

def _check_weight(v, name, high=math.inf):
    "Raise ValueError unless v is a finite number in [0, high]."
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= high:
        within = f'in [0, {high:g}]' if high < math.inf else '>= 0'
        raise ValueError(f'{name} must be a finite number {within}; got {v!r}')

def _check_batch(x, y=None, empty=False):
    "Checks without a device sync: x a floating batch (N, ...) (non-empty unless `empty`), y labels or targets (N, ...)."
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 1:
        raise ValueError(f'x must be a floating batch (N, ...) of inputs; got '
                         f'{f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__}')
    if not empty and len(x) == 0: raise ValueError(f'x must hold at least one sample; got shape {tuple(x.shape)}')
    if y is None: return
    if not isinstance(y, Tensor) or y.ndim < 1 or y.dtype == torch.bool or y.is_complex():
        raise ValueError(f'y must be a tensor of class indices (N,) or targets (N, ...); got '
                         f'{f"{y.dtype} {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__}')
    if len(y) != len(x): raise ValueError(f'x and y must hold as many samples; got {len(x)} and {len(y)}')
    if y.is_floating_point() and y.dtype != x.dtype:
        raise TypeError(f'x and y must share one floating dtype; found x {str(x.dtype).removeprefix("torch.")}, '
                        f'y {str(y.dtype).removeprefix("torch.")}')

def _check_dtype(model, x):
    "TypeError, without a device sync, unless model is a module whose floating parameters have x's dtype."
    if not isinstance(model, nn.Module): raise TypeError(f'model must be a torch.nn.Module; got {type(model).__name__}')
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    if p is not None and p.dtype != x.dtype:
        have, want = (str(d).removeprefix('torch.') for d in (p.dtype, x.dtype))
        raise TypeError(f'model has {have} parameters but x is {want}; convert one (e.g. model.to(x.dtype) or x.to(torch.{have}))')

def _check_values(model, x, y, logits):
    "One device sync: raise naming x, y or model where x, y or a weight is not finite, or a class index is out of range."
    classes = logits.shape[1] if logits.ndim > 1 else logits.shape[0]
    y_bad = ~torch.isfinite(y).all() if y.is_floating_point() else ((y < 0) | (y >= classes)).any()
    # a NaN or infinite weight makes the sum of the weights NaN or infinite (a sum that merely overflows is looked at
    # entry by entry, and passes)
    sums = [t.detach().sum().float() for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    w_bad = ~torch.isfinite(torch.stack(sums).sum()) if sums else torch.zeros((), dtype=torch.bool, device=x.device)
    x_bad, y_bad, w_bad = torch.stack([~torch.isfinite(x).all(), y_bad.to(x.device), w_bad.to(x.device)]).tolist()
    if x_bad: check_finite(x, 'x')
    if y_bad and y.is_floating_point(): check_finite(y, 'y')
    if y_bad: raise ValueError(f'y must hold class indices in [0, {classes}); got {int(y[(y < 0) | (y >= classes)][0])}')
    if w_bad: check_model(model, 'model')


# %% [markdown]
# ## The exact first-layer moments
# `first_layer_moments` returns the mean and variance of $\mathrm{relu}(\Upsilon(x + n))$ per hidden unit. The
# variance map runs on one input (or on the batch, when $\sigma$ differs per sample), so it costs a fraction of a
# forward pass.

# %%
#| exporti
def _noise_std(x, sigma):
    "sigma as a tensor of x's dtype/device, shaped (1, *x.shape[1:]) or x.shape; checked."
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2:
        raise ValueError(f'x must be a floating batch (N, ...) of inputs; got '
                         f'{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}')
    if isinstance(sigma, (int, float)) and not isinstance(sigma, bool):   # checked on the host: no device round trip
        check_var(torch.tensor(float(sigma), dtype=torch.float64), 'sigma')
        if sigma > torch.finfo(x.dtype).max:
            raise ValueError(f'sigma must be at most the largest {str(x.dtype).removeprefix("torch.")} (the dtype of x); '
                             f'got {sigma!r}')
        return x.new_full((1, *x.shape[1:]), float(sigma))
    if not isinstance(sigma, Tensor) or not sigma.is_floating_point():
        raise TypeError(f'sigma must be a number or a floating tensor; got '
                        f'{sigma.dtype if isinstance(sigma, Tensor) else type(sigma).__name__}')
    if sigma.dtype != x.dtype:
        raise TypeError(f'x and sigma must share one floating dtype; found x {str(x.dtype).removeprefix("torch.")}, '
                        f'sigma {str(sigma.dtype).removeprefix("torch.")}')
    check_var(sigma, 'sigma')
    sigma = sigma.to(x.device)
    if sigma.shape == x.shape: return sigma
    try: return torch.broadcast_to(sigma, x.shape[1:])[None]
    except RuntimeError:
        raise ValueError(f'sigma must be a number, have the shape of one input {tuple(x.shape[1:])} (or broadcast to '
                         f'it), or the shape of x {tuple(x.shape)}; got {tuple(sigma.shape)}') from None

def _affine_var(affine, bn, var):
    "Variances after the affine layer (squared weights, no bias) and an eval-mode batch norm (squared scale)."
    w2 = affine.weight ** 2
    out = F.linear(var, w2) if isinstance(affine, nn.Linear) else affine._conv_forward(var, w2, None)
    if bn is not None:
        scale = (bn.running_var + bn.eps).rsqrt() * (bn.weight if bn.weight is not None else 1)
        out = out * (scale ** 2).reshape(-1, *[1] * (out.ndim - 2))
    return out

def _first_std(affine, bn, std):
    "Standard deviations after the affine layer and batch norm; the input std is first divided by a power of two >= its largest entry, so no variance overflows."
    k = _pow2(std.detach().amax().clamp(min=1))[1] * 2      # a power of two above every entry
    s, zero = _safe_std(_affine_var(affine, bn, (std / k) ** 2))
    return s.masked_fill(zero, 0) * k


# %%
#| export
def first_layer_moments(
    model:nn.Sequential,  # first block Linear/Conv2d (+ eval-mode BatchNorm) + ReLU, optionally after a Flatten
    x:Tensor,             # inputs (N, ...) in [0, 1]
    sigma:float|Tensor,   # noise std >= 0: a number, one per input entry (x.shape[1:]), or per sample (x.shape)
)->tuple:                 # (mean, var) of relu(first_layer(x + n)), n ~ N(0, diag(sigma^2)), each (N, hidden...)
    "Exact mean and variance of the first ReLU's output under Gaussian input noise (Alfadly et al. 2019, eqs. 1 and 5)."
    with eval_mode(model):       # the network's eval-mode map: running statistics used, never updated
        flat, affine, bn, _ = _first_block(model)
        std_x = _noise_std(x, sigma)
        check_finite(x, 'x')
        check_model(model, 'model'); _check_dtype(model, x)
        if flat is not None: x, std_x = flat(x), flat(std_x)
        try:
            mu2 = affine(x)
            if bn is not None: mu2 = bn(mu2)
        except RuntimeError as e:
            raise ValueError(f'x of shape {tuple(x.shape)} does not fit the first layer {affine}: {e}') from None
        s2 = _first_std(affine, bn, std_x).expand_as(mu2)
        # both moments are positively homogeneous in (mu, s): with s divided by a power of two K >= s, no s^2 overflows
        K = _pow2(s2.clamp(min=1))[1] * 2
        mu, var = mu2 / K, (s2 / K) ** 2
        return _relu_mean(mu, var) * K, _relu_var(mu, var) * K * K


# %% [markdown]
# It is exact: against $4\cdot10^4$ Monte Carlo samples of $\mathrm{relu}(\Upsilon(x + n))$ on the bundled LeNet
# (first layer a 5×5 convolution), 256 units spread over the 11,520 of an MNIST digit lie within 4 standard errors,
# mean and variance:

# %%
net = pretrained('lenet-mnist').double()
images, labels = mnist_slice()
images = images.double()
first = net[:2]
x0, sig = images[:1], 0.3
mean, var = first_layer_moments(net, x0, sig)
idx = torch.arange(0, 11520, 45)
mc = mc_moments(lambda t: first(t).flatten(1)[:, idx], x0[0], sig**2, n=40_000, seed=0, full_cov=False, chunk=4000)
test_close(mean.flatten()[idx], mc.mean, eps=4 * mc.mean_se)
test_close(var.flatten()[idx], mc.var, eps=4 * mc.var_se)
print(f'{len(idx)} units; largest |analytic - MC| / SE: mean {((mean.flatten()[idx] - mc.mean) / mc.mean_se).abs().max():.2f}, '
      f'var {((var.flatten()[idx] - mc.var) / mc.var_se).abs().max():.2f}')

# %% [markdown]
# With $\sigma = 0$ it is the network's own first block; a per-pixel $\sigma$ that is zero off a patch leaves the
# units that do not see the patch unchanged:

# %%
m0, v0 = first_layer_moments(net, images[:4], 0.)
test_close(m0, first(images[:4]), eps=1e-12); test_eq(v0.abs().max().item(), 0.)
patch = torch.zeros(1, 28, 28, dtype=torch.float64); patch[:, :5, :5] = 0.5
mp, vp = first_layer_moments(net, images[:4], patch)
test_eq(vp[..., 5:, :].abs().max().item(), 0.); test_eq(bool((vp[..., 0, 0] > 0).all()), True)

# %% [markdown]
# Bad inputs are refused with the reason: a negative, NaN or infinite $\sigma$, NaN inputs or weights, inputs of
# another dtype than the network's (or than a tensor $\sigma$), and networks that do not start with an affine layer and
# a ReLU:

# %%
test_fail(lambda: first_layer_moments(net, x0, -0.1), contains='sigma must be >= 0')
test_fail(lambda: first_layer_moments(net, x0, float('nan')), contains='sigma must be finite')
test_fail(lambda: first_layer_moments(net, x0.clone().fill_(float('nan')), 0.1), contains='x must be finite')
test_fail(lambda: first_layer_moments(net, x0.float(), 0.1), exc=TypeError, contains='x is float32')
test_fail(lambda: first_layer_moments(net, x0, torch.full((1, 28, 28), 0.1)), exc=TypeError,
          contains='x and sigma must share one floating dtype')
test_fail(lambda: first_layer_moments(net, x0, torch.ones(3, 3, dtype=torch.float64)), contains='sigma must be a number')
test_fail(lambda: first_layer_moments(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), torch.ones(2, 4), 0.1),
          contains='does not fit the first layer')
test_fail(lambda: first_layer_moments(nn.Sequential(nn.Linear(3, 3), nn.Sigmoid()), torch.ones(1, 3), 0.1),
          contains='first block of model must be')
test_fail(lambda: first_layer_moments(nn.Linear(3, 3), torch.ones(1, 3), 0.1), contains='must be an nn.Sequential')

# %% [markdown]
# The moments are those of the network in eval mode, whatever mode it is in: a batch norm uses its running statistics,
# which stay as they were, and every module's mode flag is restored. Very large or very small noise gives the limits,
# never NaN: the variances are computed from standard deviations divided by a power of two (exact in floating point), so
# none overflows before the result itself would.

# %%
bn_net = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)).double()
with torch.no_grad(): bn_net[1].running_mean.fill_(0.3); bn_net[1].running_var.fill_(2.)
xb = torch.randn(4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
eval_moments = first_layer_moments(bn_net.eval(), xb, 0.2)
state = {k: v.clone() for k, v in bn_net.state_dict().items()}
train_moments = first_layer_moments(bn_net.train(), xb, 0.2)
test_eq(torch.equal(train_moments[0], eval_moments[0]) and torch.equal(train_moments[1], eval_moments[1]), True)
test_eq(bn_net.training and bn_net[1].training, True)
test_eq(all(torch.equal(v, bn_net.state_dict()[k]) for k, v in state.items()), True)
bn_net.eval()
huge_mean, huge_var = first_layer_moments(bn_net, xb, 1e200)
test_eq(bool(torch.isfinite(huge_mean).all() and not torch.isnan(huge_var).any()), True)
test_close(first_layer_moments(bn_net, xb, 1e-200)[0], bn_net[:3](xb), eps=1e-12)


# %% [markdown]
# ## The expected logits (eq 4)
# `analytic_expected_logits` runs the rest of the network $\Omega$ at $\mu_3$: one extra forward pass of $\Omega$,
# differentiable in the weights, so it can sit inside a loss.

# %%
#| export
def analytic_expected_logits(
    model:nn.Sequential,  # as in `first_layer_moments`
    x:Tensor,             # inputs (N, ...) in [0, 1]
    sigma:float|Tensor,   # noise std, as in `first_layer_moments`
)->Tensor:                # Omega(mu_3) ~ E[model(x + n)], shape (N, d)
    "The cheap approximation of Alfadly et al. 2019, eq. 4, to the expected logits under Gaussian input noise."
    mean, _ = first_layer_moments(model, x, sigma)
    with eval_mode(model): return _first_block(model)[3](mean)


# %% [markdown]
# It is exact at $\sigma = 0$ and agrees with Monte Carlo of the whole LeNet only approximately: the table gives the
# relative error $\|\Omega(\mu_3) - \mathbb E_{MC}\|/\|\mathbb E_{MC}\|$ averaged over 10 digits (500 samples each)
# and, for scale, the Monte Carlo standard error. The approximation degrades as $\sigma$ grows, because $\Omega$ is
# far from linear over the spread of its input:

# %%
test_close(analytic_expected_logits(net, images[:8], 0.), net(images[:8]), eps=1e-10)
gen = torch.Generator().manual_seed(1)
omega_rows = []
for sig in (0.05, 0.1, 0.2, 0.3, 0.5):
    xs = images[:10]
    noisy = xs[None] + sig * torch.randn((500, *xs.shape), generator=gen, dtype=xs.dtype)
    with torch.no_grad(): outs = net(noisy.flatten(0, 1)).reshape(500, 10, 10)    # (samples, digits, logits)
    mc_mean, mc_se = outs.mean(0), outs.std(0) / 500**0.5
    ana = analytic_expected_logits(net, xs, sig)
    rel = lambda a: ((a - mc_mean).norm(dim=1) / mc_mean.norm(dim=1)).mean().item()
    omega_rows.append([sig, rel(ana), rel(net(xs)), (mc_se.norm(dim=1) / mc_mean.norm(dim=1)).mean()])
Table(omega_rows, ['sigma', 'rel. error of Omega(mu3)', 'rel. error of model(x)', 'MC rel. SE'],
      fmt={'sigma': '.2f', 'rel. error of Omega(mu3)': '.3f', 'rel. error of model(x)': '.3f', 'MC rel. SE': '.4f'})

# %% [markdown]
# The first column is the regularizer's error; the second is that of ignoring the noise altogether. That is not a
# defect of the code (the first layer is exact, above): eq 4 linearizes $\Omega$.

# %% [markdown]
# ## The regularized loss (eq 3)
# `GaussianMomentLoss` computes $\ell(\Phi(x), y) + \alpha\,\ell(\Omega(\mu_3), y)$ with cross entropy averaged over
# the batch. The first affine layer runs once; $\mathrm{relu}(\mu_2)$ and $\mu_3$ go through $\Omega$ as one
# batch of $2N$, so a step costs one extra pass of $\Omega$ (timed in [Robust training experiments](22_robust_training.ipynb)). If $\Omega$ holds a batch norm
# in training mode, the two halves go through it separately, so each is normalized by its own batch statistics.
#
# ## A fused first ReLU for training
# A training step evaluates $\mathrm{relu}(\mu_2)$ and $\mu_3 = T(\mu_2, \sigma_2)$ on every first-layer unit of
# every image (11,520 per MNIST digit in LeNet) and differentiates both. Composed from torch operations, $T$ is a chain
# of elementwise kernels forward and as many again in autograd's backward, each a pass over all those units. Its
# derivatives are simple, though: the terms from differentiating $\Phi$ and
# $\varphi$ cancel,
# $$\frac{\partial T}{\partial \mu} = \Phi(\mu/s), \qquad \frac{\partial T}{\partial s} = \varphi(\mu/s),$$
# which sympy confirms:

# %%
test_eq(sp.simplify(sp.diff(closed, mu) - (1 + sp.erf(mu / (s * sp.sqrt(2)))) / 2), 0)
test_eq(sp.simplify(sp.diff(closed, s) - sp.exp(-mu**2 / (2 * s**2)) / sp.sqrt(2 * sp.pi)), 0)
sp.diff(closed, mu), sp.simplify(sp.diff(closed, s))


# %% [markdown]
# `_relu_pair` therefore computes $[\mathrm{relu}(\mu_2); \mu_3]$ straight into the $2N$ batch that $\Omega$ takes,
# keeps $\Phi$ and $\varphi$ from the forward pass, and its backward is two multiply-adds. It writes $T$ as
# $\mathrm{relu}(\mu) + s\,g(|\mu|/s)$ with $g(a) = \varphi(a) - a\Phi(-a) \ge 0$ (the same function, as
# $\Phi(-a) = 1 - \Phi(a)$), so $T \ge \mathrm{relu}(\mu)$ holds in floating point too, and it caps $a$ where
# $\Phi(-a)$ and $\varphi(a)$ are still normal numbers (the cap and $g$ there are computed below the code): a CPU
# computes with subnormal numbers many times slower. $\sigma_2$ stays in the
# shape of the variance map (one input, or one per sample), and its gradient is summed over the batch. Where
# $\sigma_2 = 0$ the ratio $\mu/\sigma_2$ saturates at $\pm 50$, so $T = \mathrm{relu}(\mu)$ and the gradients are the
# one-sided limits, with no division by zero. When a second derivative is asked for (`create_graph=True`, e.g. a
# gradient penalty on top), the backward recomputes $\Phi$ and $\varphi$ with differentiable operations, so double
# backpropagation is exact, not a silent constant.

# %%
#| exporti
def _inverse(s):
    "1 / s, with the largest float instead of inf at s = 0, so that 0 / 0 gives 0 rather than nan."
    return s.reciprocal().clamp(max=torch.finfo(s.dtype).max)

def _ratio(mu, s):
    "mu / s, saturated at +-50 (where Phi is 0 or 1 and phi 0 in any float); s = 0 gives +-50 (or 0 at mu = 0)."
    return (mu * _inverse(s)).clamp(-50, 50)

class _ReluPair(torch.autograd.Function):
    "[relu(mu); mu Phi(mu/s) + s phi(mu/s)] along dim 0, with the closed-form derivatives (Phi, phi)."
    @staticmethod
    def forward(ctx, mu, s):
        n, r2 = len(mu), math.sqrt(2)
        # b = |h| / sqrt 2, capped where Phi(-|h|) and phi(h) are still normal floats (subnormals are slow on CPUs)
        cap = max(12., math.sqrt(-2 * math.log(torch.finfo(mu.dtype).tiny)) - 1) / r2
        b = mu.abs().mul_(_inverse(s) / r2).clamp_(max=cap)
        e = torch.special.erfc(b)                                             # 2 Phi(-|h|)
        pdf = b.square().neg_().exp_().mul_(1 / math.sqrt(2 * math.pi))      # phi(h)
        g = torch.addcmul(pdf, b, e, value=-1 / r2, out=b)                   # phi(|h|) - |h| Phi(-|h|) >= 0
        out = mu.new_empty((2 * n, *mu.shape[1:]))
        torch.clamp(mu, min=0, out=out[:n])
        torch.addcmul(out[:n], s, g, out=out[n:])                            # T = relu(mu) + s g
        cdf = torch.copysign(e.mul_(-0.5).add_(0.5), mu, out=e).add_(0.5)    # Phi(h) = 1/2 + sign(mu) (Phi(|h|) - 1/2)
        ctx.save_for_backward(mu, s, cdf, pdf)
        return out

    @staticmethod
    def backward(ctx, g):
        mu, s, cdf, pdf = ctx.saved_tensors
        g0, g1 = g[:len(mu)], g[len(mu):]
        if torch.is_grad_enabled():      # create_graph: the same formulas, recorded for a second derivative
            h = _ratio(mu, s)
            gmu = g0 * (mu > 0) + g1 * normal_cdf(h)
            gs = (g1 * normal_pdf(h)).sum_to_size(s.shape)
        else:
            gmu = torch.ops.aten.threshold_backward(g0, mu, 0).addcmul_(g1, cdf)
            gs = (g1 * pdf).sum_to_size(s.shape)
        return gmu, gs if ctx.needs_input_grad[1] else None

def _relu_pair(mu, var):
    "[relu(mu); E relu(z)] for z ~ N(mu, var) along dim 0: the two inputs of Omega; var broadcasts against mu."
    s, zero = _safe_std(var)
    return _ReluPair.apply(mu, s.masked_fill(zero, 0).to(mu.dtype))


# %%
cap32 = max(12., math.sqrt(-2 * math.log(torch.finfo(torch.float32).tiny)) - 1)   # the cap of _ReluPair.forward, as |h|
a_cap = torch.tensor(cap32, dtype=torch.float64)
Markdown(f'In float32 the cap is $a = {cap32:.3g}$, where $g(a) = {(normal_pdf(a_cap) - a_cap * normal_cdf(-a_cap)).item():.2g}$.')

# %% [markdown]
# It is the composed $T$ to rounding, with the same gradients (`gradcheck`, and `gradgradcheck` for the second
# derivatives), including units of zero variance; the timing at the end compares the two:

# %%
g_pair = torch.Generator().manual_seed(0)
mu_t = torch.randn(3, 4, 5, generator=g_pair, dtype=torch.float64).requires_grad_()
var_t = torch.rand(1, 4, 5, generator=g_pair, dtype=torch.float64)
var_t[0, 0] = 0                                    # a channel that sees no noise
var_t.requires_grad_()
composed_pair = lambda mu, var: torch.cat([mu.relu(), _relu_mean(mu, var.expand_as(mu))])
pair = _relu_pair(mu_t, var_t)
test_close(pair, composed_pair(mu_t, var_t), eps=1e-14)
var_pos = var_t.detach().clamp(min=0.05).requires_grad_()   # finite differences need var away from 0
test_eq(torch.autograd.gradcheck(_relu_pair, (mu_t, var_pos)), True)
test_eq(torch.autograd.gradgradcheck(_relu_pair, (mu_t, var_pos)), True)
g_fused = torch.autograd.grad(pair.sum(), (mu_t, var_t))
g_comp = torch.autograd.grad(composed_pair(mu_t, var_t).sum(), (mu_t, var_t))
test_close(g_fused[0], g_comp[0], eps=1e-14); test_close(g_fused[1], g_comp[1], eps=1e-12)
test_eq(bool(torch.isfinite(g_fused[1]).all()), True)

mu_b = torch.randn(100, 20, 24, 24, generator=g_pair).requires_grad_()   # LeNet's first layer on a batch of 100
var_b = torch.rand(1, 20, 24, 24, generator=g_pair).requires_grad_()
def composed(): composed_pair(mu_b, var_b).sum().backward()
def fused(): _relu_pair(mu_b, var_b).sum().backward()
t_comp, t_fused = best_time(composed, repeats=5), best_time(fused, repeats=5)
print(f'forward + backward over 100 x 11,520 units (float32): composed {1e3 * t_comp:.1f} ms, '
      f'fused {1e3 * t_fused:.1f} ms, {t_comp / t_fused:.1f}x faster')


# %%
#| export
class GaussianMomentLoss(nn.Module):
    "l(f(x), y) + alpha * l(E[f(x + n)], y) with the analytic expected logits (Alfadly et al. 2019, eq. 3), n ~ N(0, diag(sigma^2))."
    def __init__(self,
                 sigma:float|Tensor,  # training noise std (input units, images in [0, 1]); >= 0
                 alpha:float=1.,      # weight of the expected-logit term; >= 0
                 loss=F.cross_entropy):  # l(logits, y) -> scalar
        super().__init__()
        _check_weight(alpha, 'alpha')
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float, Tensor)):
            raise TypeError(f'sigma must be a number or a floating tensor; got {type(sigma).__name__}')
        check_var(torch.as_tensor(sigma, dtype=torch.float64), 'sigma')
        self.sigma, self.alpha, self.loss = sigma, alpha, loss

    def forward(self, model:nn.Sequential, x:Tensor, y:Tensor)->Tensor:
        "The regularized loss of `model` on the batch (x, y)."
        flat, affine, bn, rest = _first_block(model)
        _check_batch(x, y); _check_dtype(model, x)
        std_x, x0 = _noise_std(x, self.sigma), x
        if flat is not None: x, std_x = flat(x), flat(std_x)
        mu2 = affine(x)
        if bn is not None: mu2 = bn(mu2)
        pair = _ReluPair.apply(mu2, _first_std(affine, bn, std_x).to(mu2.dtype))
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in rest.modules()):
            logits = torch.cat([rest(pair[:len(x)]), rest(pair[len(x):])])   # each half its own batch statistics
        else: logits = rest(pair)
        _check_values(model, x0, y, logits)
        return self.loss(logits[:len(x)], y) + self.alpha * self.loss(logits[len(x):], y)


# %% [markdown]
# With $\alpha = 0$ it is the plain loss; at $\sigma = 0$ the two terms coincide, giving $(1 + \alpha)$ times it;
# and it matches the two terms computed separately:

# %%
ys = labels[:16]
plain = F.cross_entropy(net(images[:16]), ys)
test_close(GaussianMomentLoss(0.3, 0.)(net, images[:16], ys), plain, eps=1e-12)
test_close(GaussianMomentLoss(0., 2.)(net, images[:16], ys), 3 * plain, eps=1e-12)
expected_term = F.cross_entropy(analytic_expected_logits(net, images[:16], 0.3), ys)
test_close(GaussianMomentLoss(0.3, 1.5)(net, images[:16], ys), plain + 1.5 * expected_term, eps=1e-12)
test_fail(lambda: GaussianMomentLoss(0.3, -1.), contains='alpha must be')
test_fail(lambda: GaussianMomentLoss(-0.3, 1.), contains='sigma must be >= 0')
test_fail(lambda: GaussianMomentLoss(0.3)(net, images[:16], ys[:3]), contains='as many samples')
test_fail(lambda: GaussianMomentLoss(0.3)(net, images[:16], ys + 10), contains='y must hold class indices in [0, 10)')
test_fail(lambda: GaussianMomentLoss(0.3)(net, images[:0], ys[:0]), contains='x must hold at least one sample')
test_fail(lambda: GaussianMomentLoss(0.3)(net, images[:16].float(), ys), exc=TypeError, contains='x is float32')
test_fail(lambda: GaussianMomentLoss(0.3, float('inf')), contains='alpha must be a finite number')


# %% [markdown]
# ## Noisy data augmentation
# The baseline [Alfadly et al. (2019)](99_references.ipynb#alfadly2019) compare against: each sample becomes $\tilde N$ samples, itself and $\tilde N - 1$ noisy copies
# (our reading of $\tilde N \in \{2, 6, 11, 21\}$, "the number of added noisy training examples"), each with its own
# fresh i.i.d. noise. The official code drew one noise field per fold and added it to every sample of the batch;
# here no two samples, in or across folds, share noise. No clipping (the noise unit above).

# %%
#| export
def noisy_augmentation(
    x:Tensor,                     # inputs (N, ...)
    y:Tensor,                     # labels (N,)
    sigma:float|Tensor,           # noise std: a number, per input entry (x.shape[1:]) or per sample (x.shape)
    folds:int,                    # N~ >= 1: the clean batch plus folds - 1 noisy copies
    generator:torch.Generator|None=None,  # source of the noise
)->tuple:                         # (x', y'): (folds * N, ...) and (folds * N,), clean batch first
    "N-fold Gaussian noise augmentation with fresh i.i.d. noise for every sample of every fold."
    folds = check_count(folds, 'folds', 1)
    s = _noise_std(x, sigma)
    _check_batch(x, y, empty=True)
    check_finite(x, 'x')
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f'generator must be a torch.Generator or None; got {type(generator).__name__}')
    noise = torch.randn((folds - 1, *x.shape), generator=generator, dtype=x.dtype, device=x.device) * s
    return torch.cat([x[None], x[None] + noise]).flatten(0, 1), y.repeat(folds)


# %% [markdown]
# The copies differ from each other and from sample to sample, and the noise has the requested law:

# %%
xa, ya = noisy_augmentation(torch.zeros(500, 3, 4), torch.arange(500), 0.2, 5, torch.Generator().manual_seed(0))
test_eq(xa.shape, (2500, 3, 4)); test_eq(ya[:1000:500].tolist(), [0, 0]); test_eq(xa[:500].abs().max().item(), 0.)
noise = xa[500:]
test_close(noise.std().item(), 0.2, eps=4 * 0.2 / (2 * noise.numel())**0.5)
test_eq(bool((noise[:500] - noise[500:1000]).abs().min() > 0), True)      # fold 1 vs fold 2
test_eq(bool((noise[0] - noise[1]).abs().min() > 0), True)                # sample 0 vs sample 1
test_fail(lambda: noisy_augmentation(xa, ya, 0.1, 0), contains='folds must be')
test_fail(lambda: noisy_augmentation(xa, ya, 0.1, True), exc=TypeError, contains='folds must be an int')
test_fail(lambda: noisy_augmentation(xa, ya[:3], 0.1, 2), contains='as many samples')
test_eq(noisy_augmentation(xa[:0], ya[:0], 0.1, 3)[0].shape, (0, 3, 4))
test_eq(bool(torch.isfinite(noisy_augmentation(xa[:4].double(), ya[:4], 1e300, 2)[0]).all()), True)   # no sigma^2 overflows

# %% [markdown]
# ## The gradient family of Lyu et al. (2015), eqs. 1-4
# In [Lyu et al. (2015)](99_references.ipynb#lyu2015), the worst perturbation of $\ell_p$ size $\sigma$ to first order is
# $\epsilon = \sigma\,\mathrm{sign}(g)\,(|g|/\|g\|_{p^*})^{1/(p-1)}$, $g = \nabla_x L$, $1/p + 1/p^* = 1$:
# FGSM ([Goodfellow et al. (2015)](99_references.ipynb#goodfellow2015)) for $p = \infty$, $\sigma g/\|g\|_2$ for $p = 2$, all of $\sigma$ on the largest $|g_i|$ for $p = 1$. It
# raises the loss by $\sigma\|g\|_{p^*}$ to first order, which gives the regularized objective
# $L(x) + \sigma\|\nabla_x L\|_{p^*}$ (eq. 4). The perturbation itself is `lp_perturbation` of
# [Gaussian attacks and gradient-family perturbations](14_attacks.ipynb).

# %%
#| exporti
_DUAL = {1: float('inf'), 2: 2., float('inf'): 1.}

def _check_p(p):
    "p as 1., 2. or inf; anything else raises."
    if isinstance(p, bool) or not isinstance(p, (int, float)) or p not in _DUAL:
        raise ValueError(f"p must be 1, 2 or float('inf'); got {p!r}")
    return float(p)

def _dual_norm(g, q):
    "Per-sample q-norm of g (N, ...), with a finite gradient at g = 0."
    g = g.flatten(1)
    if q == 1: return g.abs().sum(1)
    if q == float('inf'): return g.abs().amax(1)
    sq = (g * g).sum(1)
    pos = sq > 0
    return torch.where(pos, torch.where(pos, sq, torch.ones_like(sq)).sqrt(), torch.zeros_like(sq))


# %%
#| export
class GradientNormLoss(nn.Module):
    "L(x) + sigma * ||grad_x L||_{p*} by double backpropagation (Lyu et al. 2015, eq. 4), both averaged over the batch."
    needs_input_grad = True
    def __init__(self,
                 sigma:float,         # perturbation size (input units); >= 0
                 p:float=2,           # the perturbation norm: 1, 2 or inf; the penalty uses its dual p*
                 loss=F.cross_entropy):  # loss(logits, y, reduction='none') -> per-sample losses
        super().__init__()
        _check_weight(sigma, 'sigma')
        self.sigma, self.p, self.loss = sigma, _check_p(p), loss

    def forward(self, model:nn.Module, x:Tensor, y:Tensor)->Tensor:
        "The loss plus the gradient-norm penalty of `model` on the batch (x, y)."
        _check_batch(x, y); _check_dtype(model, x)
        x = x.detach().requires_grad_(True)
        logits = model(x)
        _check_values(model, x, y, logits)
        losses = self.loss(logits, y, reduction='none')
        g, = torch.autograd.grad(losses.sum(), x, create_graph=True)   # per-sample gradients: samples are independent
        return losses.mean() + self.sigma * _dual_norm(g, _DUAL[self.p]).mean()


# %% [markdown]
# The penalty is $\sigma\|\nabla_x L\|_{p^*}$: for a linear model it is checked against the closed-form gradient
# $W^\top(\mathrm{softmax} - e_y)$, and it is differentiable (its gradient in the weights exists and is finite):

# %%
lin = nn.Linear(6, 3).double()
xl, yl = torch.randn(5, 6, dtype=torch.float64, generator=gen), torch.tensor([0, 1, 2, 0, 1])
g_true = (F.softmax(lin(xl), 1) - F.one_hot(yl, 3)) @ lin.weight
ce = F.cross_entropy(lin(xl), yl, reduction='none').mean()
for p, q in ((1, float('inf')), (2, 2.), (float('inf'), 1.)):
    want = ce + 0.3 * torch.linalg.vector_norm(g_true, q, dim=1).mean()
    test_close(GradientNormLoss(0.3, p)(nn.Sequential(lin), xl, yl), want, eps=1e-12)
GradientNormLoss(0.3, 2)(nn.Sequential(lin), xl, yl).backward()
test_eq(bool(torch.isfinite(lin.weight.grad).all() and lin.weight.grad.abs().sum() > 0), True)
test_fail(lambda: GradientNormLoss(0.3, 3), contains='p must be 1, 2')
test_fail(lambda: GradientNormLoss(float('nan')), contains='sigma must be a finite number')
test_fail(lambda: GradientNormLoss(0.3)(nn.Sequential(lin), xl, yl + 3), contains='y must hold class indices in [0, 3)')


# %% [markdown]
# ## Adversarial training with $\epsilon(p)$
# `AdversarialLoss` trains on $w\,L(x) + (1 - w)\,L(x + \epsilon(p))$ with the perturbation above computed at the
# current weights and held fixed (the objective of Goodfellow et al. (2015), which Lyu et al. (2015) generalize to any
# $p$). `adversarial_examples` attacks the network in eval mode (a batch norm on its running statistics, no dropout),
# leaving its statistics and mode flags as they were; the training loss then runs in the model's own mode, so in
# training mode only that forward pass updates the batch statistics.

# %%
#| export
def adversarial_examples(
    model:nn.Module,     # the classifier
    x:Tensor,            # inputs (N, ...)
    y:Tensor,            # labels (N,)
    eps:float,           # l_p size of the perturbation
    p:float=float('inf'),  # 1, 2 or inf
    loss=F.cross_entropy,  # loss(logits, y, reduction=...) whose gradient gives the direction
)->Tensor:               # x + eps(p), detached
    "x plus the first-order worst l_p perturbation of size eps (Lyu et al. 2015, eq. 3, via `attacks.lp_perturbation`; FGSM for p = inf)."
    p = _check_p(p)
    _check_weight(eps, 'eps')
    _check_batch(x, y, empty=True); _check_dtype(model, x)
    if len(x) == 0: return x.detach().clone()
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), eval_mode(model):    # the eval-mode network: no statistics updated, flags restored
        logits = model(x)
        _check_values(model, x, y, logits)
        g, = torch.autograd.grad(loss(logits, y, reduction='sum'), x)
    return (x + lp_perturbation(g, eps, p)).detach()

class AdversarialLoss(nn.Module):
    "weight * L(x) + (1 - weight) * L(adversarial_examples(x)), the adversarial-training objective."
    def __init__(self,
                 eps:float,             # l_p size of the perturbation
                 p:float=float('inf'),  # 1, 2 or inf
                 weight:float=0.5,      # weight of the clean loss, in [0, 1]
                 loss=F.cross_entropy): # loss(logits, y) -> scalar
        super().__init__()
        _check_weight(weight, 'weight', 1); _check_weight(eps, 'eps')
        self.eps, self.p, self.weight, self.loss = eps, _check_p(p), weight, loss

    def forward(self, model:nn.Module, x:Tensor, y:Tensor)->Tensor:
        "The weighted clean and adversarial loss of `model` on the batch (x, y): the attack in eval mode, the loss in the model's mode."
        _check_batch(x, y)
        xa = adversarial_examples(model, x, y, self.eps, self.p, self.loss)
        out = model(torch.cat([x, xa]))
        return self.weight * self.loss(out[:len(x)], y) + (1 - self.weight) * self.loss(out[len(x):], y)


# %% [markdown]
# The perturbations have $\ell_p$ norm $\epsilon$ and raise a linear model's loss by exactly
# $\epsilon\|g\|_{p^*}$ to first order (checked by a small step):

# %%
for p, q in ((1, float('inf')), (2, 2.), (float('inf'), 1.)):
    d = adversarial_examples(nn.Sequential(lin), xl, yl, 1e-6, p) - xl
    test_close(torch.linalg.vector_norm(d, p, dim=1), torch.full((5,), 1e-6, dtype=torch.float64), eps=1e-15)
    rise = F.cross_entropy(lin(xl + d), yl, reduction='none') - F.cross_entropy(lin(xl), yl, reduction='none')
    test_close(rise / 1e-6, torch.linalg.vector_norm(g_true, q, dim=1), eps=1e-5)
test_close(AdversarialLoss(0., 2)(nn.Sequential(lin), xl, yl), ce, eps=1e-12)
test_fail(lambda: adversarial_examples(nn.Sequential(lin), xl, yl, -0.1), contains='eps must be a finite number >= 0')
test_fail(lambda: AdversarialLoss(0.1, weight=1.5), contains='weight must be a finite number in [0, 1]')
test_fail(lambda: adversarial_examples(nn.Sequential(lin), xl, yl + 3, 0.1), contains='y must hold class indices')
test_eq(adversarial_examples(nn.Sequential(lin), xl[:0], yl[:0], 0.1).shape, (0, 6))

# %% [markdown]
# ## Export -

# %%
#| hide
#| eval: false
import nbdev; nbdev.nbdev_export()

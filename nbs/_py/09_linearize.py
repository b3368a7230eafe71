# %% [markdown]
# # Two-stage linearization
# > Cast a ReLU network into Affine-ReLU-Affine form around a point, through the Jacobians before and after its l-th ReLU (Bibi et al. 2018, §3.4; Alfadly et al. 2020, §3.3 and Table 1)

# %%
#| default_exp linearize

# %%
#| export
from __future__ import annotations
import math
from typing import NamedTuple
import torch
from torch import Tensor, nn
import torch.nn.functional as F
from torch.func import jacfwd, jacrev, vmap
from netmoments.ara import AraMoments, ara_moments
from netmoments.core import check_count, check_finite, check_model, eval_mode

# %%
#| hide
import copy, time
import sympy as sp
import matplotlib.pyplot as plt
from IPython.display import Markdown
from fastcore.test import test_eq, test_close, test_fail
from nbdev.showdoc import show_doc
from netmoments.core import Table
from netmoments.montecarlo import mc_moments


# %%
#| exporti
def _check_dtype(dtype, name):
    "Raise `TypeError` unless `dtype` is a floating torch dtype."
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f'{name} must be a floating torch dtype such as torch.float64; got {dtype!r}')


# %%
#| export
def seeded(
    net:nn.Module,               # a network of Conv2d, Linear and BatchNorm1d layers (others are left as they are)
    seed:int,                    # seeds a local generator; the global RNG is untouched
    dtype:torch.dtype=torch.float64,
)->nn.Module:                    # `net` itself, re-initialized, in eval mode, frozen, in `dtype`
    "Random test network: He-normal weights, small biases, non-trivial batch-norm statistics, all from `seed`."
    if not isinstance(net, nn.Module): raise TypeError(f'net must be a torch.nn.Module; got {type(net).__name__}')
    _check_dtype(dtype, 'dtype')
    gen = torch.Generator().manual_seed(check_count(seed, 'seed', 0))
    rn = lambda t, scale: torch.randn(t.shape, generator=gen) * scale
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(rn(m.weight, (2 / m.weight[0].numel())**0.5)); m.bias.copy_(rn(m.bias, 0.1))
            if isinstance(m, nn.BatchNorm1d):
                m.weight.copy_(1 + rn(m.weight, 0.2)); m.bias.copy_(rn(m.bias, 0.1))
                m.running_mean.copy_(rn(m.running_mean, 0.3)); m.running_var.copy_(rn(m.running_var, 0.3).exp())
    return net.to(dtype).eval().requires_grad_(False)


# %% [markdown]
# [Affine-ReLU-Affine networks](05_ara.ipynb) gives the exact mean and covariance of
# $g(x) = B\,\mathrm{relu}(Ax + c_1) + c_2$. A deeper ReLU network $R: \mathbb R^n \to \mathbb R^d$ is brought into that
# form by choosing its $l$-th ReLU and splitting there,
# $$R(x) = R_{l+1}\big(\mathrm{ReLU}_l(R_{l-1}(x))\big), \qquad R_{l-1}: \mathbb R^n \to \mathbb R^q,\quad
#   R_{l+1}: \mathbb R^q \to \mathbb R^d,$$
# and replacing the two outer pieces by their first-order Taylor expansions ([Bibi et al.
# (2018)](99_references.ipynb#bibi2018), §3.4; [Alfadly et al. (2020)](99_references.ipynb#alfadly2020), §3.3):
# $$R_{l-1}(x') \approx Ax' + c_1,\ A = \nabla R_{l-1}(x),\ c_1 = R_{l-1}(x) - Ax; \qquad
#   R_{l+1}(y') \approx By' + c_2,\ B = \nabla R_{l+1}(y),\ c_2 = R_{l+1}(y) - By.$$
# The bottom stage is linearized at the input point $x$. The papers use two points $y$ for the top stage: §3.4 of
# Bibi et al. (2018) writes $y = \mathrm{ReLU}_l(R_{l-1}(x))$, the input the top stage actually receives (`at="relu"`),
# while every experiment of both papers takes $y = R_{l-1}(x)$, the pre-activation (`at="pre"`). $q$, the number of
# features entering the $l$-th ReLU, is the hidden width $p$ of [Affine-ReLU-Affine networks](05_ara.ipynb).

# %% [markdown]
# ## Which point reproduces the network
# At the point of linearization itself, $Ax + c_1 = R_{l-1}(x)$ whatever $A$ is, so
# $g(x) = B\,\mathrm{relu}(R_{l-1}(x)) + c_2$. With `at="relu"` that is $By + c_2 = R_{l+1}(y) = R(x)$: the
# linearized network reproduces $R(x)$ exactly. With `at="pre"` it is
# $R_{l+1}(z) + B(\mathrm{relu}(z) - z)$ for $z = R_{l-1}(x)$, the top stage's Taylor expansion around $z$ evaluated
# at $\mathrm{relu}(z)$. That equals $R(x)$ only when $R_{l+1}$ is affine between $z$ and $\mathrm{relu}(z)$, for
# example when $z \ge 0$ or when $R_{l+1}$ is affine. sympy checks both cases with $R_{l-1}$ and $R_{l+1}$ left as
# unknown scalar functions:

# %%
x_s, t_s = sp.symbols('x t', real=True)
R_bottom, R_top = sp.Function('R_bottom'), sp.Function('R_top')
relu_s = lambda v: sp.Max(v, 0)
A_s = sp.diff(R_bottom(x_s), x_s)
c1_s = R_bottom(x_s) - A_s * x_s
def top_stage(y):
    B = sp.diff(R_top(t_s), t_s).subs(t_s, y)
    return B, R_top(y) - B * y
B_s, c2_s = top_stage(relu_s(R_bottom(x_s)))
g_relu = B_s * relu_s(A_s * x_s + c1_s) + c2_s
test_eq(sp.simplify(g_relu - R_top(relu_s(R_bottom(x_s)))), 0)
B_s, c2_s = top_stage(R_bottom(x_s))
g_pre = B_s * relu_s(A_s * x_s + c1_s) + c2_s
pre_error = sp.simplify(g_pre - R_top(relu_s(R_bottom(x_s))))
pre_error

# %% [markdown]
# The `at="pre"` error vanishes for $z > 0$ and, for $z < 0$, when the top stage is affine; not when it has a kink
# between $z$ and $0$: with $R_{l+1}(t) = \mathrm{relu}(t + 1)$ and $z = -2$, $g(x) = 0$ while $R(x) = 1$.

# %%
alpha, beta = sp.symbols('alpha beta', real=True)
z_pos, z_neg = sp.symbols('z', positive=True), sp.symbols('z', negative=True)
test_eq(sp.simplify(pre_error.subs(R_bottom(x_s), z_pos).doit()), 0)
affine_top = pre_error.subs(R_bottom(x_s), z_neg).replace(R_top, sp.Lambda(t_s, alpha * t_s + beta)).doit()
test_eq(sp.simplify(affine_top), 0)
kinked_error = pre_error.subs(R_bottom(x_s), -2).replace(R_top, sp.Lambda(t_s, relu_s(t_s + 1))).doit()
test_eq(kinked_error, -1)

# %% [markdown]
# ## The network as a sequence of modules
# `two_stage` reads the network as a flat sequence of modules, through a small protocol: the model is an
# `nn.Sequential`, or it has an `as_sequential()` method returning one (a module that keeps `.features` and
# `.classifier`, say, returns `nn.Sequential(self.features, self.classifier)`). Nested `nn.Sequential`s are flattened.
# Every module must be one `two_stage` can differentiate and split: `Conv2d`, `Linear`, `ReLU`, `MaxPool2d`,
# `AvgPool2d`, `Flatten`, `BatchNorm1d`, `BatchNorm2d`, `Dropout` or `Identity`. Batch norm and dropout depend on the
# batch or on chance in training mode, so `model_layers` requires eval mode (dropout is then the identity);
# `two_stage` and `linearization_memory` linearize the eval-mode network: they switch those modules to eval mode for the
# call and back afterwards, so the caller's modes and buffers (running statistics) end as they were, and gradients
# still reach the caller's parameters. ReLU modules are
# applied as the out-of-place `torch.relu`, so `nn.ReLU(inplace=True)` overwrites neither `x` nor the pre-activation
# that `c1` is computed from.

# %%
#| exporti
_SUPPORTED = (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, nn.BatchNorm1d, nn.BatchNorm2d,
              nn.Dropout, nn.Identity)

def _flatten(seq):
    for m in seq:
        if isinstance(m, nn.Sequential): yield from _flatten(m)
        else: yield m


# %%
#| export
def model_layers(
    model:nn.Module,  # an nn.Sequential, or a module whose `as_sequential()` returns one
)->list:              # its modules, nested nn.Sequentials flattened
    "The flat module list of `model`, each checked to be one that `two_stage` supports, in eval mode where it matters."
    seq = model.as_sequential() if hasattr(model, 'as_sequential') and not isinstance(model, nn.Sequential) else model
    if not isinstance(seq, nn.Sequential):
        got = type(model).__name__ + (f' whose as_sequential() returned {type(seq).__name__}' if seq is not model else '')
        raise TypeError(f'model must be an nn.Sequential or have an as_sequential() method returning one; got {got}')
    layers = list(_flatten(seq))
    for i, m in enumerate(layers):
        if not isinstance(m, _SUPPORTED):
            names = ', '.join(t.__name__ for t in _SUPPORTED)
            raise ValueError(f'module {i} of the model ({type(m).__name__}) is not supported; two_stage handles {names}')
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout)) and m.training:
            raise ValueError(f'module {i} of the model ({type(m).__name__}) is in training mode, where its output '
                             f'depends on the batch or on chance; call model.eval() first')
    return layers


# %% [markdown]
# Nested sequences are flattened, and a module exposing `as_sequential()` gives the same list as its sequence:

# %%
class SmallNet(nn.Module):
    "A LeNet-shaped module with `features` and `classifier`, following the protocol."
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                                      nn.Conv2d(4, 6, 3), nn.ReLU(), nn.AvgPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(6 * 2 * 2, 16), nn.BatchNorm1d(16), nn.ReLU(),
                                        nn.Dropout(0.5), nn.Linear(16, 3))
    def as_sequential(self): return nn.Sequential(self.features, self.classifier)
    def forward(self, x): return self.classifier(self.features(x))

small = seeded(SmallNet(), 0)
layers = model_layers(small)
test_eq([type(m).__name__ for m in layers], ['Conv2d', 'ReLU', 'MaxPool2d', 'Conv2d', 'ReLU', 'AvgPool2d', 'Flatten',
                                             'Linear', 'BatchNorm1d', 'ReLU', 'Dropout', 'Linear'])
test_eq(model_layers(small.as_sequential()), layers)

# %% [markdown]
# An unsupported module is named with its index in that list, and a training-mode batch norm is refused:

# %%
test_fail(lambda: model_layers(nn.Sequential(nn.Linear(3, 4), nn.Sigmoid())), exc=ValueError,
          contains='module 1 of the model (Sigmoid) is not supported')
test_fail(lambda: model_layers(nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.ReLU(), nn.LSTM(4, 2)))),
          exc=ValueError, contains='module 2 of the model (LSTM) is not supported')
test_fail(lambda: model_layers(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))), exc=ValueError,
          contains='module 1 of the model (BatchNorm1d) is in training mode')
test_fail(lambda: model_layers(nn.LSTM(4, 2)), exc=TypeError, contains='got LSTM')

# %% [markdown]
# ## Jacobians with `torch.func`
# Each stage is a function of one flattened point, and `vmap` maps its Jacobian over the batch of points, so no Python
# loop runs over points or outputs. For a map $\mathbb R^{k} \to \mathbb R^{m}$, forward mode (`jacfwd`) pushes $k$
# tangents through the stage and reverse mode (`jacrev`) pulls back $m$ cotangents, each at about the cost of one pass:
# `jacfwd` when the map has fewer inputs than outputs, `jacrev` otherwise. The bottom stage $\mathbb R^n \to \mathbb R^q$
# of a convolutional network usually widens ($q > n$ for an early $l$: `jacfwd`); the top stage
# $\mathbb R^q \to \mathbb R^d$ narrows to the $d$ logits (`jacrev`). Both materialize the whole Jacobian.

# %%
#| exporti
_IMAGE = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.BatchNorm2d)

def _split_max_pool(m, h):
    "`m(h)` for an nn.MaxPool2d `m`, whose derivative averages the members tied for a window's maximum."
    k, s, p, d = (nn.modules.utils._pair(v) for v in (m.kernel_size, m.stride or m.kernel_size, m.padding, m.dilation))
    out = m(h)                                                # the maxima; its shape follows ceil_mode
    extra = [(o - 1) * st + dl * (kk - 1) + 1 - (size + 2 * pp)
             for o, st, dl, kk, size, pp in zip(out.shape[2:], s, d, k, h.shape[2:], p)]
    padded = F.pad(h, (p[1], p[1] + max(extra[1], 0), p[0], p[0] + max(extra[0], 0)), value=float('-inf'))
    u = F.unfold(padded, k, dilation=d, stride=s).unflatten(1, (h.shape[1], k[0] * k[1]))   # (N, C, k, windows)
    top = out.flatten(2)[:, :, None]                          # (N, C, 1, windows)
    tied = u == top
    # out + mean over the tied of (u - top): the value is the maximum exactly, the derivative the tied members' mean
    return out + (torch.where(tied, u - top, 0).sum(2) / tied.sum(2)).reshape(out.shape)

def _forward(layers, h, start, stop, ties='first'):
    "Run layers[start:stop] on the batch `h`; a shape mismatch names the module. ties: see `two_stage`."
    for i in range(start, stop):
        m = layers[i]
        if isinstance(m, (nn.Dropout, nn.Identity)): continue
        if isinstance(m, _IMAGE) and h.ndim != 4:       # these would silently take an unbatched (C, H, W)
            raise ValueError(f'input of shape {tuple(h.shape)} does not fit module {i} of the model ({m}): '
                             f'it takes a batch (N, C, H, W)')
        try:
            if isinstance(m, nn.ReLU): h = torch.relu(h)
            elif ties == 'split' and isinstance(m, nn.MaxPool2d): h = _split_max_pool(m, h)
            else: h = m(h)
        except RuntimeError as e:
            raise ValueError(f'input of shape {tuple(h.shape)} does not fit module {i} of the model ({m}): {e}') from None
    return h

def _jacobian(layers, start, stop, points, shape, width, ties='first'):
    "Jacobians (N, width, k) of the flattened map layers[start:stop] at the N rows of `points` (N, k)."
    stage = lambda v: _forward(layers, v.reshape(1, *shape), start, stop, ties).reshape(-1)
    jac = jacfwd if points.shape[-1] <= width else jacrev     # k tangents forward or `width` cotangents back
    return vmap(jac(stage))(points)


# %% [markdown]
# Against `torch.autograd.functional.jacobian`, which builds the Jacobian row by row, on the bottom stage of the small
# network up to its second ReLU, in both modes: `jacrev` is the choice here ($n = 196 > q = 96$), and a huge `width`
# forces `jacfwd`:

# %%
gen = torch.Generator().manual_seed(1)
points = torch.rand(3, 1 * 14 * 14, generator=gen, dtype=torch.float64)
A_func = _jacobian(layers, 0, 4, points, (1, 14, 14), 6 * 4 * 4)
stage = lambda v: _forward(layers, v.reshape(1, 1, 14, 14), 0, 4).reshape(-1)
test_eq(A_func.shape, (3, 96, 196))
for i in range(3): test_close(A_func[i], torch.autograd.functional.jacobian(stage, points[i]), eps=1e-14)
test_close(_jacobian(layers, 0, 4, points, (1, 14, 14), 10**6), A_func, eps=1e-14)   # forced jacfwd

# %% [markdown]
# ### Ties in max-pooling
# A max-pooling window whose maximum is shared by several members has no derivative, and autograd sends the whole
# derivative to the first of them. Such exact ties are common in practice: MNIST digits sit on a constant background,
# so a convolution with a positive bias outputs the same value at every background position, and on the bundled LeNet
# many of the first pooling windows of a test image tie at a positive value ([Tightness on LeNet and
# MNIST](11_tightness.ipynb) counts them). Under noise the window then takes the largest of several equally likely
# members, a nonlinearity at every noise scale that no linearization reproduces exactly. Routing the noise through one
# member gives the window that member's full variance, while the maximum of several partly independent members varies
# less. `_forward(..., ties='split')` (what `two_stage` uses by default) computes the same value and splits the
# derivative evenly among the tied members: the centre of the window's subgradients, and the expected derivative when
# the noise treats the tied members alike. Where no window ties, nothing changes, and ties at zero after a ReLU carry no
# derivative either way. [Tightness on LeNet and MNIST](11_tightness.ipynb) measures what the split does to the moments
# of the bundled LeNet.
#
# The value is the maximum exactly, for any kernel, stride, padding, dilation and `ceil_mode`; on a constant image
# every member of a window gets a quarter of the derivative, against all of it to the first member with autograd's
# choice; and on random points, where nothing ties, the Jacobians are the same:

# %%
pools = [nn.MaxPool2d(2), nn.MaxPool2d(3, 2, 1), nn.MaxPool2d(2, 1, dilation=2), nn.MaxPool2d(3, 2, ceil_mode=True),
         nn.MaxPool2d((2, 3), (1, 2), (1, 0), ceil_mode=True)]
h = torch.randn(2, 3, 9, 8, generator=gen, dtype=torch.float64)
flat = h.clone(); flat[..., :4, :4] = 0.25                       # a tied corner
for pool in pools:
    for v in (h, flat): test_eq(_split_max_pool(pool, v), pool(v))
one = lambda ties: vmap(jacrev(lambda v: _forward([nn.MaxPool2d(2)], v.reshape(1, 1, 2, 2), 0, 1, ties).reshape(-1)))
test_eq(one('split')(torch.full((1, 4), 0.3, dtype=torch.float64)), torch.full((1, 1, 4), 0.25, dtype=torch.float64))
test_eq(one('first')(torch.full((1, 4), 0.3, dtype=torch.float64)), torch.tensor([[[1., 0., 0., 0.]]], dtype=torch.float64))
test_eq(_jacobian(layers, 0, 4, points, (1, 14, 14), 6 * 4 * 4, 'split'), A_func)


# %% [markdown]
# ## Memory per choice of layer
# [Alfadly et al. (2020)](99_references.ipynb#alfadly2020) (§4, "Choice of the two-stage linearization layer l") put the
# memory of storing the two Jacobians at $2q + n + d$ numbers per point and trades it against accuracy: an early
# convolutional $l$ has a large $q$ (every pixel of every feature map), a late fully connected one a small $q$.
# $2q + n + d$ counts the vectors $x$ ($n$), $c_1$ and $y$ ($q$ each) and $c_2$ ($d$); the Jacobians $A$ and $B$
# themselves hold $qn + dq$ numbers, and the moments of [Affine-ReLU-Affine networks](05_ara.ipynb) form the
# $q \times q$ hidden covariance $A\Sigma A^\top$ unless `ara_moments` is given a `chunk` (then `chunk` rows of it at a
# time). `linearization_memory` lists all three per candidate layer, from one forward pass of a single zero input. The
# peak while `two_stage` forms $A$ and $B$ is higher still: per point, every tangent (or cotangent) runs through every
# intermediate activation of its stage; fewer points per call lower it.

# %%
#| exporti
def _relu_positions(layers, layer=None):
    "Indices of the ReLU modules; with `layer`, check that it counts one of them (from 1)."
    relus = [i for i, m in enumerate(layers) if isinstance(m, nn.ReLU)]
    if not relus: raise ValueError('the model has 0 ReLU modules: there is no ReLU to split at')
    if layer is not None:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f'layer must be an int counting ReLU modules from 1; got {type(layer).__name__}')
        if not 1 <= layer <= len(relus):
            raise ValueError(f'layer must be between 1 and {len(relus)}, the number of ReLU modules of the model; got {layer}')
    return relus


# %%
#| export
class LinearizationMemory(NamedTuple):
    "Sizes and memory of the two-stage linearization at one layer l, per point."
    layer:int             # l, counted from 1
    n:int                 # input features
    q:int                 # features entering the l-th ReLU
    d:int                 # output features
    elements:int          # 2q + n + d: the papers' count (x, c1, y, c2)
    jacobian_bytes:int    # (q n + d q) floats: A and B as materialized
    hidden_cov_bytes:int  # q q floats: a dense hidden covariance


# %%
#| export
def linearization_memory(
    model:nn.Module,                 # an nn.Sequential, or a module whose `as_sequential()` returns one
    input_shape:tuple,               # shape of one input, without the batch dimension, e.g. (1, 28, 28)
    layer:int|None=None,             # one layer l; None: every ReLU of the model
    dtype:torch.dtype|None=None,     # float type of the linearization; default: the model's parameters'
)->LinearizationMemory|dict:         # the row for `layer`, or {l: row} for l = 1..L
    "Sizes (q, n, d) and bytes of the two-stage linearization of `model` at each choice of ReLU layer l."
    if not isinstance(input_shape, (tuple, list, torch.Size)) or not input_shape or any(
            isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in input_shape):
        raise ValueError(f'input_shape must be a non-empty tuple of positive integers; got {input_shape!r}')
    if dtype is not None: _check_dtype(dtype, 'dtype')
    with eval_mode(model): return _linearization_memory(model, input_shape, layer, dtype)

def _linearization_memory(model, input_shape, layer, dtype):
    "linearization_memory for a model whose batch norm and dropout modules are in eval mode."
    layers = model_layers(model)
    like = next((t for t in model.parameters() if t.is_floating_point()), torch.zeros(()))
    dtype = dtype or like.dtype
    itemsize = torch.empty((), dtype=dtype).element_size()
    relus = _relu_positions(layers, layer)
    widths, h = {}, torch.zeros(1, *input_shape, dtype=like.dtype, device=like.device)
    with torch.no_grad():
        for l, r in enumerate(relus, 1):
            h = _forward(layers, h, relus[l - 2] if l > 1 else 0, r)
            widths[l] = h[0].numel()
        d = _forward(layers, h, relus[-1], len(layers))[0].numel()
    n = math.prod(input_shape)
    rows = {l: LinearizationMemory(l, n, q, d, 2 * q + n + d, (q * n + d * q) * itemsize, q * q * itemsize)
            for l, q in widths.items()}
    return rows if layer is None else rows[layer]


# %% [markdown]
# For a LeNet-sized network on $28 \times 28$ inputs (two convolutions with pooling, two fully connected layers: three
# ReLUs), built on the `meta` device so that nothing is allocated or drawn:

# %%
with torch.device('meta'):
    lenet = nn.Sequential(nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10))
memory = linearization_memory(lenet, (1, 28, 28))
test_eq([(r.q, r.elements) for r in memory.values()], [(20 * 24 * 24, 2 * 11520 + 784 + 10), (50 * 8 * 8, 7194), (500, 1794)])
test_eq(memory[3].jacobian_bytes, (500 * 784 + 10 * 500) * 4)
test_eq(linearization_memory(lenet, (1, 28, 28), 2, dtype=torch.float64).hidden_cov_bytes, 3200**2 * 8)
Table([[r.layer, r.q, r.elements, r.jacobian_bytes / 2**20, r.hidden_cov_bytes / 2**20] for r in memory.values()],
      ['l', 'q', '2q + n + d', 'A and B (MiB)', 'dense hidden covariance (MiB)'],
      fmt={'l': 'd', 'q': 'd', '2q + n + d': 'd', 'A and B (MiB)': '.1f', 'dense hidden covariance (MiB)': '.1f'},
      caption='per point, float32')

# %%
Markdown(f'The early choice needs {memory[1].jacobian_bytes / memory[3].jacobian_bytes:.0f} times the Jacobian memory '
         f'of the late one and {memory[1].hidden_cov_bytes / memory[3].hidden_cov_bytes:.0f} times its dense hidden '
         f'covariance.')

# %% [markdown]
# A layer the model does not have is refused, saying how many ReLUs it has:

# %%
test_fail(lambda: linearization_memory(lenet, (1, 28, 28), 4), exc=ValueError,
          contains='layer must be between 1 and 3, the number of ReLU modules of the model; got 4')
test_fail(lambda: linearization_memory(lenet, (1, 28, 28), 0), exc=ValueError, contains='got 0')
test_fail(lambda: linearization_memory(nn.Sequential(nn.Linear(2, 2)), (2,)), exc=ValueError, contains='0 ReLU modules')
test_fail(lambda: linearization_memory(lenet, (1, 28, 28), 1.0), exc=TypeError, contains='layer must be an int')


# %% [markdown]
# ## The two-stage linearization
# `two_stage` returns $A, c_1, B, c_2$ for each point of a batch as an `AffineReluAffine`, a NamedTuple in the argument
# order of `ara_moments`: with $x$ of shape $(N, \ldots)$ and `mu = x.flatten(1)`, `ara_moments(mu, cov, *lin)` gives the
# moments of the linearized network around each point, $\mu$ and $\Sigma$ in the flattened input coordinates. Calling
# it evaluates the linearized network, and `moments` is that `ara_moments` call.

# %%
#| export
class AffineReluAffine(NamedTuple):
    "The Affine-ReLU-Affine network g(x) = B relu(A x + c1) + c2, its fields in the argument order of `ara_moments`."
    A:Tensor   # bottom-stage Jacobian, (..., q, n)
    c1:Tensor  # bottom-stage offset R_{l-1}(x) - A x, (..., q)
    B:Tensor   # top-stage Jacobian, (..., d, q)
    c2:Tensor  # top-stage offset R_{l+1}(y) - B y, (..., d)

    def __call__(self,
                 x:Tensor,  # flattened inputs (..., n); the leading dims broadcast with A's batch dims
                )->Tensor:  # outputs (..., d)
        "Evaluate B relu(A x + c1) + c2 on flattened inputs."
        h = torch.relu(torch.einsum('...n,...qn->...q', x, self.A) + self.c1)    # einsum: A is never copied per sample
        return torch.einsum('...q,...dq->...d', h, self.B) + self.c2

    def moments(self,
                mu:Tensor,   # input mean (..., n): `x.flatten(1)` for the points of linearization
                cov:Tensor,  # input covariance: number, variances (..., n) or matrix (..., n, n)
                **kwargs,    # passed on to ara_moments: method, terms, full, chunk
               )->AraMoments:  # mean (..., d), cov (..., d, d) or None, var (..., d)
        "Mean and covariance for x ~ N(mu, cov), mu (..., n): `ara_moments(mu, cov, A, c1, B, c2, **kwargs)`."
        return ara_moments(mu, cov, *self, **kwargs)


# %%
show_doc(AffineReluAffine.__call__)

# %%
show_doc(AffineReluAffine.moments)


# %% [markdown]
# `two_stage` validates the model and the split, runs the two stages forward on the batch (which checks that `x` fits
# the model and gives $q$ and $d$), refuses before any Jacobian is formed when $A$ and $B$ or the dense hidden
# covariances would exceed `max_bytes`, and then takes both Jacobians. The result is differentiable with respect to
# the model's parameters and to `x` when those require gradients; under `torch.no_grad()` it holds plain tensors.

# %%
#| exporti
def _check_points(x, model, name='x', model_name='model'):
    "`x`, a batch of points for `model`: a finite floating tensor (N, ...) of the parameters' dtype and device."
    if not isinstance(x, Tensor): raise TypeError(f'{name} must be a tensor; got {type(x).__name__}')
    if not x.is_floating_point(): raise TypeError(f'{name} must be a floating tensor; got {x.dtype}')
    if x.ndim < 2: raise ValueError(f'{name} must be a batch of points (N, *input_shape); got shape {tuple(x.shape)}')
    check_finite(x, name)
    check_model(model, model_name)
    like = next((t for t in model.parameters() if t.is_floating_point()), None)
    if like is not None and like.dtype != x.dtype:
        raise TypeError(f'{name} is {x.dtype} but the {model_name} is {like.dtype}; convert one to the other')
    if like is not None and like.device != x.device:
        raise ValueError(f'{name} is on {x.device} but the {model_name} is on {like.device}')

def _check_memory(N, n, q, d, itemsize, layer, max_bytes):
    if max_bytes is None: return
    gib = lambda b: f'{b / 2**30:.3g} GiB' if b >= 2**30 else f'{b / 2**20:.3g} MiB'
    jac = N * (q * n + d * q) * itemsize
    if jac > max_bytes:
        raise ValueError(f'A and B at layer {layer} take {N} x ({q} x {n} + {d} x {q}) floats = {gib(jac)}, over '
                         f'max_bytes = {gib(max_bytes)}; use fewer points per call or a later layer (smaller q), '
                         f'see linearization_memory')
    cov = N * q * q * itemsize
    if cov > max_bytes:
        chunk = max(1, max_bytes // (N * q * itemsize))
        raise ValueError(f'a dense {q} x {q} hidden covariance per point ({N} points: {gib(cov)}) would not fit '
                         f'max_bytes = {gib(max_bytes)}; ara_moments(..., full=False, chunk={chunk}) forms {chunk} rows '
                         f'of it at a time, or choose a different layer (see linearization_memory); '
                         f'max_bytes=None skips this check')


# %%
#| export
def two_stage(
    model:nn.Module,               # an nn.Sequential, or a module whose `as_sequential()` returns one; see model_layers
    x:Tensor,                      # points of linearization (N, *input_shape), in the model's dtype and on its device
    layer:int,                     # l: split at the l-th ReLU module, counted from 1
    at:str='relu',                 # top-stage point y: 'relu', relu(R_{l-1}(x)) (Bibi et al. 2018, §3.4); 'pre', R_{l-1}(x)
    max_bytes:int|None=2**31,      # refuse if A and B, or the N dense q x q hidden covariances, need more; None: no check
    ties:str='split',              # max-pooling windows tied for the maximum: 'split' the derivative evenly among the
                                   # tied, or 'first' to the first of them (autograd's choice)
)->AffineReluAffine:               # A (N, q, n), c1 (N, q), B (N, d, q), c2 (N, d); use with mu = x.flatten(1)
    "Two-stage linearization of the eval-mode `model` around each point of `x`, split at its `layer`-th ReLU (Bibi et al. 2018, §3.4)."
    if at not in ('relu', 'pre'): raise ValueError(f"at must be 'relu' or 'pre'; got {at!r}")
    if ties not in ('split', 'first'): raise ValueError(f"ties must be 'split' or 'first'; got {ties!r}")
    if max_bytes is not None: check_count(max_bytes, 'max_bytes', 0)
    with eval_mode(model):   # linearize the eval-mode network: no statistics are updated, the flags are restored
        return _two_stage(model, x, layer, at, max_bytes, ties)

def _two_stage(model, x, layer, at, max_bytes, ties):
    "two_stage for a model whose batch norm and dropout modules are in eval mode."
    if layer is None: raise TypeError('layer must be an int counting ReLU modules from 1; got NoneType')
    layers = model_layers(model)
    r = _relu_positions(layers, layer)[layer - 1]
    _check_points(x, model)
    N, n = x.shape[0], math.prod(x.shape[1:])
    if N == 0:                                                 # no points: the shapes come from one zero input
        z = _forward(layers, x.new_zeros(1, *x.shape[1:]), 0, r)
        q, d = z[0].numel(), _forward(layers, z, r + 1, len(layers))[0].numel()
        return AffineReluAffine(x.new_zeros(0, q, n), x.new_zeros(0, q), x.new_zeros(0, d, q), x.new_zeros(0, d))
    z = _forward(layers, x, 0, r)                              # R_{l-1}(x), (N, *hidden_shape)
    y = torch.relu(z) if at == 'relu' else z
    out = _forward(layers, y, r + 1, len(layers))              # R_{l+1}(y)
    q, d = z[0].numel(), out[0].numel()
    _check_memory(N, n, q, d, x.element_size(), layer, max_bytes)
    x_flat, y_flat = x.reshape(N, n), y.reshape(N, q)
    A = _jacobian(layers, 0, r, x_flat, x.shape[1:], q, ties)
    B = _jacobian(layers, r + 1, len(layers), y_flat, z.shape[1:], d, ties)
    c1 = z.reshape(N, q) - (A @ x_flat[..., None])[..., 0]
    c2 = out.reshape(N, d) - (B @ y_flat[..., None])[..., 0]
    return AffineReluAffine(A, c1, B, c2)


# %% [markdown]
# A network that is itself Affine-ReLU-Affine is its own linearization, for both points $y$: $A = W_1$ and $B = W_2$
# exactly, the biases up to rounding (they come out as $R_{l-1}(x) - Ax$):

# %%
gen = torch.Generator().manual_seed(2)
ara_net = seeded(nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)), 2)
W1, b1, W2, b2 = ara_net[0].weight, ara_net[0].bias, ara_net[2].weight, ara_net[2].bias
x = torch.randn(4, 5, generator=gen, dtype=torch.float64)
for at in ('relu', 'pre'):
    lin = two_stage(ara_net, x, 1, at=at)
    test_eq(lin.A, W1.expand(4, 7, 5)); test_eq(lin.B, W2.expand(4, 3, 7))
    test_close(lin.c1, b1.expand(4, 7), eps=1e-15); test_close(lin.c2, b2.expand(4, 3), eps=1e-15)

# %% [markdown]
# On the small convolutional network (`Conv2d, ReLU, MaxPool2d, Conv2d, ReLU, AvgPool2d, Flatten, Linear,
# BatchNorm1d, ReLU, Dropout, Linear`, eval mode), at each of its three ReLUs, $A$ and $B$ are the Jacobians
# `torch.autograd.functional.jacobian` finds for the network run module by module (with `ties='first'`, autograd's
# choice: at $l = 1$ the top stage starts with the max-pooling of $\mathrm{relu}(z)$, whose all-zero windows tie),
# and with `at="relu"` the linearized network gives back $R(x)$ at the points themselves, whatever `ties` is:

# %%
x = torch.rand(3, 1, 14, 14, generator=gen, dtype=torch.float64)
for l, r in enumerate([1, 4, 9], 1):                     # the ReLU modules of `small`
    bottom, top = nn.Sequential(*layers[:r]), nn.Sequential(*layers[r + 1:])
    z = bottom(x)
    lin = two_stage(small, x, l, ties='first')
    for i in range(3):
        A_ref = torch.autograd.functional.jacobian(lambda v: bottom(v.reshape(1, 1, 14, 14)).flatten(), x[i].flatten())
        B_ref = torch.autograd.functional.jacobian(lambda v: top(v.reshape(1, *z.shape[1:])).flatten(), z[i].relu().flatten())
        test_close(lin.A[i], A_ref, eps=1e-13); test_close(lin.B[i], B_ref, eps=1e-13)
    test_close(lin(x.flatten(1)), small(x), eps=1e-13)
    test_close(two_stage(small, x, l)(x.flatten(1)), small(x), eps=1e-13)

# %% [markdown]
# With `at="pre"` the top stage is linearized at a point with negative entries, which ReLU maps elsewhere, so the
# linearized network misses $R(x)$ by $B(\mathrm{relu}(z) - z) - (R_{l+1}(\mathrm{relu}(z)) - R_{l+1}(z))$, as the
# sympy cell found; here by a sizeable fraction of the output:

# %%
miss = {l: ((two_stage(small, x, l, at='pre')(x.flatten(1)) - small(x)).norm() / small(x).norm()).item() for l in (1, 2)}
assert all(m > 0.1 for m in miss.values()), miss
print("|g(x) - R(x)| / |R(x)| with at='pre':", ', '.join(f'l = {l}: {m:.3f}' for l, m in miss.items()))

# %% [markdown]
# The moments of the linearized network, computed by `ara_moments` through `moments`, agree with Monte Carlo of the
# linearized network within 4 standard errors (a full input covariance around one point, the top ReLU of the network):

# %%
lin = two_stage(small, x[:1], 3)
one = AffineReluAffine(*(t[0] for t in lin))
L = torch.randn(196, 196, generator=gen, dtype=torch.float64) * 0.02
cov_x = L @ L.mT
exact = one.moments(x[0].flatten(), cov_x)
mc = mc_moments(one, x[0].flatten(), cov_x, n=50_000, seed=3)
assert ((exact.mean - mc.mean).abs() <= 4 * mc.mean_se).all()
assert ((exact.cov - mc.cov).abs() <= 4 * mc.cov_se).all()
test_close(lin.moments(x[:1].flatten(1), cov_x).cov[0], exact.cov, eps=1e-14)

# %% [markdown]
# float32 follows float64, a batch gives what its points give one by one, and an inplace ReLU at the very front,
# which would otherwise rectify `x` itself, leaves `x` and the linearization untouched:

# %%
lin64 = two_stage(small, x, 2)
lin32 = two_stage(copy.deepcopy(small).float(), x.float(), 2)
test_eq([t.dtype for t in lin32], [torch.float32] * 4)
for a, b in zip(lin32, lin64): test_close(a.double(), b, eps=1e-5 * b.abs().max())
for a, b in zip(two_stage(small, x[1:2], 2), lin64): test_close(a[0], b[1], eps=1e-14)   # a batch = its points
front = seeded(nn.Sequential(nn.ReLU(inplace=True), nn.Linear(5, 4), nn.ReLU(inplace=True), nn.Linear(4, 2)), 4)
xs = torch.randn(6, 5, generator=gen, dtype=torch.float64)
kept = xs.clone()
with torch.no_grad(): lin = two_stage(front, xs, 2)
test_eq(xs, kept)
test_close(lin(xs), front(xs.clone()), eps=1e-14)

# %% [markdown]
# The errors it promises, for the split and the model:

# %%
test_fail(lambda: two_stage(small, x, 4), exc=ValueError, contains='between 1 and 3, the number of ReLU modules')
test_fail(lambda: two_stage(nn.Sequential(nn.Linear(5, 3)).double(), x, 1), exc=ValueError, contains='0 ReLU modules')
test_fail(lambda: two_stage(nn.Sequential(nn.Linear(196, 3), nn.Sigmoid()).double(), x.flatten(1), 1), exc=ValueError,
          contains='module 1 of the model (Sigmoid)')
test_fail(lambda: two_stage(small, x, 1, at='post'), exc=ValueError, contains="at must be 'relu' or 'pre'")
trained = seeded(SmallNet(), 0).double().train()       # batch norm in training mode: the eval-mode network is linearized
bn_state = {k: v.clone() for k, v in trained.state_dict().items()}
for a, b in zip(two_stage(trained, x, 1), two_stage(small, x, 1)): test_eq(a, b)
assert trained.training and all(m.training for m in trained.modules())
for k, v in trained.state_dict().items(): test_eq(v, bn_state[k])
test_fail(lambda: two_stage(small, x, 1, ties='last'), exc=ValueError, contains="ties must be 'split' or 'first'")

# %% [markdown]
# and for points that do not fit the model, or a linearization over the memory budget:

# %%
test_fail(lambda: two_stage(small, x[0], 1), exc=ValueError, contains='does not fit module 0')
test_fail(lambda: two_stage(small, x[:, :, :10], 2), exc=ValueError, contains='does not fit module 7')
test_fail(lambda: two_stage(small, x.flatten(), 1), exc=ValueError, contains='x must be a batch of points')
test_fail(lambda: two_stage(small, x.float(), 1), exc=TypeError, contains='x is torch.float32 but the model is torch.float64')
test_fail(lambda: two_stage(small, x, 1, max_bytes=2**22), exc=ValueError,
          contains='a dense 576 x 576 hidden covariance per point (3 points: 7.59 MiB) would not fit')
test_fail(lambda: two_stage(small, x, 1, max_bytes=2**20), exc=ValueError,
          contains='A and B at layer 1 take 3 x (576 x 196 + 3 x 576) floats')
test_fail(lambda: two_stage(small, x, 1, max_bytes=-1), exc=ValueError, contains='max_bytes must be >= 0')
broken = copy.deepcopy(small)
with torch.no_grad(): broken.features[0].weight[0, 0, 0, 0] = float('nan')
test_fail(lambda: two_stage(broken, x, 1), exc=ValueError, contains='model must have finite parameters; features.0.weight holds')

# %% [markdown]
# No points give no linearizations, shaped for the split:

# %%
none = two_stage(small, x[:0], 1)
test_eq([t.shape for t in none], [(0, 576, 196), (0, 576), (0, 3, 576), (0, 3)])

# %% [markdown]
# ## Linearization error against the noise level
# Table 1 of [Alfadly et al. (2020)](99_references.ipynb#alfadly2020) linearizes LeNet (trained, on MNIST) at
# $l = 1, 2, 3$ around a noisy image and reports the $\ell_2$ distance between the network's scores and the linearized
# network's, averaged over noise draws; its experiments take $y = R_{l-1}(x)$. The published numbers, for noise of
# amplitude $\pm a$:
#
# | noise | ±0.5 | ±0.75 | ±1 | ±1.5 | ±2 |
# |---|---|---|---|---|---|
# | $l = 1$ | 0.0241 | 0.0362 | 0.0485 | 0.0730 | 0.0977 |
# | $l = 2$ | 0.0330 | 0.0497 | 0.0663 | 0.0996 | 0.1330 |
# | $l = 3$ | 0.0329 | 0.0495 | 0.0661 | 0.0993 | 0.1327 |
#
# The error grows with the noise and is smallest for $l = 1$. [Tightness on synthetic networks](12_synthetic.ipynb)
# reproduces the table on the bundled trained LeNet; here we measure the same quantity on a random LeNet-shaped network
# (He-initialized, three ReLUs) around a random image in $[0, 1]^{28\times28}$:
# $\mathbb E\,\|R(x + \epsilon) - g(x + \epsilon)\|_2$ over 64 draws of $\epsilon \sim \mathcal N(0, \sigma^2 I)$, for
# both points $y$.

# %%
gen = torch.Generator().manual_seed(2018)
lenet_small = seeded(nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                                   nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 10)),
                     2018, dtype=torch.float32)
point = torch.rand(1, 1, 28, 28, generator=gen)
sigmas = torch.logspace(-3, 0, 13)
noise = torch.randn(64, 1, 28, 28, generator=gen)
errors = {}
with torch.no_grad():
    for at in ('relu', 'pre'):
        for l in (1, 2, 3):
            lin = two_stage(lenet_small, point, l, at=at)
            noisy = [point + s * noise for s in sigmas]
            errors[at, l] = torch.stack([(lenet_small(v) - lin(v.flatten(1))).norm(dim=-1).mean() for v in noisy])
    scale = lenet_small(point).norm()
assert all((e[0] < 1e-3 * scale).item() for (at, l), e in errors.items() if at == 'relu')
assert all((e.diff() > 0).all().item() for (at, l), e in errors.items() if at == 'relu')
test_close(errors['pre', 3], errors['relu', 3], eps=1e-5)         # the top stage of l = 3 is affine
shown = [0, 8, len(sigmas) - 1]   # sigma = 0.001, 0.1, 1
sigma_cols = [f'sigma = {sigmas[i]:.3g}' for i in shown]
Table([[at, l, *(e[i] for i in shown)] for (at, l), e in errors.items()], ['at', 'l', *sigma_cols],
      fmt=dict.fromkeys(sigma_cols, '.2g'), caption=f'mean ||R(x + e) - g(x + e)||, with |R(x)| = {scale:.3f}')

# %% [markdown]
# With `at="relu"` the error starts near zero: the network is piecewise linear, so its linearization is exact until
# the noise flips a ReLU of a linearized stage or changes the winner of a max-pooling window. Pooling is linearized
# whatever $l$ is, and its near-ties flip first here, which is why the three solid curves coincide at small $\sigma$;
# the error then grows faster than linearly. With `at="pre"` the error starts at the miss at $x$ itself (the `pre`
# rows at the smallest $\sigma$, for $l = 1, 2$) and joins the other curve once the noise dominates; at $l = 3$ the top
# stage is a single `Linear`, so both points give the same network. Unlike the trained LeNet of Alfadly et al. (2020),
# this random network shows no clear growth of the error with $l$: the published trend is not a property of the method
# alone, and [Tightness on synthetic networks](12_synthetic.ipynb) checks it on the trained LeNet.

# %%
#| label: fig-linearize-error
#| fig-cap: "Mean l2 distance between a random LeNet-shaped network and its two-stage linearization around a random image, under Gaussian noise of standard deviation sigma, for each layer l; solid: at='relu', dashed: at='pre' (the top stage linearized after or before the l-th ReLU); 64 noise draws."
fig, ax = plt.subplots(figsize=(5, 3.2), layout='constrained')
for l in (1, 2, 3):
    line, = ax.plot(sigmas, errors['relu', l], marker='o', ms=3, label=f'l = {l}')
    ax.plot(sigmas, errors['pre', l], '--', color=line.get_color())
ax.set(xscale='log', yscale='log', xlabel='noise standard deviation sigma', ylabel='mean ||R(x + e) - g(x + e)||'); ax.legend();

# %% [markdown]
# ## Export -

# %%
#| hide
#| eval: false
import nbdev; nbdev.nbdev_export()

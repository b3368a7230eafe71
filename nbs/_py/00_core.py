# %% [markdown]
# # Core checks
# > Input validation shared by every chapter: clear errors at the public boundary, nothing clamped silently

# %%
#| default_exp core

# %%
#| export
from __future__ import annotations
import functools, html, numbers, operator
from contextlib import contextmanager
import torch
from torch import Tensor

# %%
#| hide
import numpy as np
from fastcore.test import test_eq, test_fail


# %% [markdown]
# Every public function of `netmoments` validates its tensors with the helpers below before any arithmetic, so a bad
# input fails with a `ValueError` that names the argument, the rule it broke and what was found, rather than producing
# a NaN three functions later. They never modify their inputs and return nothing unless stated.

# %% [markdown]
# ## Values

# %%
#| export
def check_finite(
    x:Tensor,  # any tensor
    name:str,  # argument name used in the message
):
    "Raise `ValueError` if `x` holds NaN or infinite entries."
    bad = ~torch.isfinite(x)
    if bad.any():
        what = 'NaN' if torch.isnan(x).any() else 'infinite values'
        raise ValueError(f'{name} must be finite; it holds {what} ({int(bad.sum())} of {x.numel()} entries)')


# %%
test_fail(lambda: check_finite(torch.tensor([1., float('nan')]), 'mu'), contains='mu must be finite; it holds NaN')
test_fail(lambda: check_finite(torch.tensor([float('inf')]), 'A'), contains='infinite')
check_finite(torch.zeros(3), 'mu')


# %%
#| export
def check_var(
    var:Tensor,  # variances
    name:str,    # argument name used in the message
):
    "Raise `ValueError` unless every entry of `var` is finite and >= 0."
    check_finite(var, name)
    if (var < 0).any():
        raise ValueError(f'{name} must be >= 0; smallest entry is {var.min().item():.3g}')


# %%
test_fail(lambda: check_var(torch.tensor([1., -0.3]), 'var'), contains='var must be >= 0; smallest entry is -0.3')
check_var(torch.tensor([0., 2.]), 'var')


# %% [markdown]
# ## Counts
# Counts (samples, chunk sizes, terms) must be whole numbers; `n = 1e6` is accepted as the integer it names:

# %%
#| export
def check_count(
    k,            # the count: an int, a numpy integer, or an integral float such as 1e6
    name:str,     # argument name used in the message
    least:int,    # the smallest value allowed
)->int:           # the count as an int
    "`k` as an int >= `least`, or a `TypeError`/`ValueError` naming the argument."
    whole = int(k) if isinstance(k, float) and k.is_integer() else k
    try: count = None if isinstance(whole, bool) else operator.index(whole)
    except TypeError: count = None
    if count is None: raise TypeError(f'{name} must be an int; got {type(k).__name__}')
    if count < least: raise ValueError(f'{name} must be >= {least}; got {count}')
    return count


# %%
test_eq([check_count(k, 'n', 2) for k in (2, 1e6, np.int64(7))], [2, 1_000_000, 7])
test_fail(lambda: check_count(2.5, 'n', 2), contains='n must be an int; got float', exc=TypeError)
test_fail(lambda: check_count(True, 'chunk', 1), contains='chunk must be an int; got bool', exc=TypeError)
test_fail(lambda: check_count(1, 'n', 2), contains='n must be >= 2; got 1')


# %% [markdown]
# ## Tensors together
# Functions that combine several tensors require one device and a floating dtype; python numbers are accepted and
# converted to the dtype and device of the tensors beside them.

# %%
#| export
def as_tensors(
    *xs,                  # tensors or python numbers
    names:tuple|list,     # one argument name per entry, for the messages
)->tuple:                 # tensors of one floating dtype on one device
    "Convert `xs` to tensors of their floating dtype and device; raise on mixed dtypes, devices or non-float tensors."
    tensors = [x for x in xs if isinstance(x, Tensor)]
    devices = {x.device for x in tensors}
    if len(devices) > 1:
        found = ', '.join(f'{n} on {x.device}' for n, x in zip(names, xs) if isinstance(x, Tensor))
        raise ValueError(f'all tensors must be on one device; found {found}')
    for n, x in zip(names, xs):
        if isinstance(x, Tensor) and not (x.is_floating_point() or x.dtype in (torch.int64, torch.int32, torch.bool)):
            raise TypeError(f'{n} must be a real floating tensor; got {x.dtype}')
        if not isinstance(x, (Tensor, int, float)):
            raise TypeError(f'{n} must be a tensor or a number; got {type(x).__name__}')
    floats = [(n, x.dtype) for n, x in zip(names, xs) if isinstance(x, Tensor) and x.is_floating_point()]
    if len({d for _, d in floats}) > 1:
        found = ', '.join(f'{n} {str(d).removeprefix("torch.")}' for n, d in floats)
        raise TypeError(f'floating tensors must share one dtype; found {found} (convert one, e.g. with .double())')
    dtype = floats[0][1] if floats else torch.get_default_dtype()
    device = tensors[0].device if tensors else torch.device('cpu')
    return tuple(torch.as_tensor(x, dtype=dtype, device=device) for x in xs)


# %%
a, b = as_tensors(torch.ones(2, dtype=torch.float64), 3, names=('mu', 'var'))
test_eq((a.dtype, b.dtype, b.item()), (torch.float64, torch.float64, 3.))
test_eq(as_tensors(1, 2., names='ab')[0].dtype, torch.get_default_dtype())
test_eq(as_tensors(torch.ones(1), torch.arange(2), 3, names='abc')[1].dtype, torch.float32)
test_fail(lambda: as_tensors(torch.ones(2), 'x', names='ab'), contains='b must be a tensor or a number')

# %% [markdown]
# Two floating dtypes are refused rather than promoted: the result's precision is then the one the caller chose, and a
# float32 tensor that slipped into a float64 computation is named instead of silently widened (integer tensors and
# python numbers take the floating dtype beside them):

# %%
test_fail(lambda: as_tensors(torch.ones(1), torch.ones(1, dtype=torch.float64), names=('W', 'X')),
          contains='floating tensors must share one dtype; found W float32, X float64', exc=TypeError)

# %% [markdown]
# Mixed devices are refused (the `meta` device stands in for a GPU on a CPU-only machine):

# %%
test_fail(lambda: as_tensors(torch.ones(2), torch.ones(2, device='meta'), names=('mu', 'cov')),
          contains='all tensors must be on one device; found mu on cpu, cov on meta')


# %%
#| export
def check_broadcast(
    names:tuple|list,  # argument names, for the message
    *xs:Tensor,        # tensors that must broadcast together
)->torch.Size:         # their broadcast shape
    "Broadcast shape of `xs`, or a `ValueError` listing every shape."
    try: return torch.broadcast_shapes(*(x.shape for x in xs))
    except RuntimeError:
        found = ', '.join(f'{n} {tuple(x.shape)}' for n, x in zip(names, xs))
        raise ValueError(f'shapes do not broadcast: {found}') from None


# %%
test_eq(check_broadcast('ab', torch.ones(3, 1), torch.ones(4)), torch.Size([3, 4]))
test_fail(lambda: check_broadcast(('mu1', 'var2'), torch.ones(3), torch.ones(4)),
          contains='shapes do not broadcast: mu1 (3,), var2 (4,)')


# %% [markdown]
# ## Covariance matrices
# A covariance must be square, symmetric and positive semi-definite. Round-off makes computed covariances (such as
# $A\Sigma A^\top$ in float32) slightly asymmetric or slightly indefinite, so both checks allow a tolerance relative to
# the matrix scale: asymmetry up to $100\,\epsilon\,\max|\Sigma|$ and eigenvalues down to $-10\,n\,\epsilon\,\lambda_{\max}$,
# with $\epsilon$ the machine epsilon of the dtype. Anything beyond is an error, not a silent projection.

# %%
#| export
def check_cov(
    cov:Tensor,  # covariance matrices, shape (..., n, n)
    name:str,    # argument name used in the message
):
    "Raise `ValueError` unless `cov` is a finite, symmetric, positive semi-definite batch of square matrices."
    if cov.ndim < 2 or cov.shape[-1] != cov.shape[-2]:
        raise ValueError(f'{name} must have shape (..., n, n); got {tuple(cov.shape)}')
    check_finite(cov, name)
    eps = torch.finfo(cov.dtype).eps
    scale = cov.abs().amax(dim=(-2, -1), keepdim=True)
    asym = (cov - cov.mT).abs()
    if (asym > 100 * eps * scale).any():
        raise ValueError(f'{name} must be symmetric; largest |cov - cov^T| is {asym.max().item():.3g}')
    if (cov.diagonal(dim1=-2, dim2=-1) < 0).any():
        raise ValueError(f'{name} must have a non-negative diagonal; smallest variance is '
                         f'{cov.diagonal(dim1=-2, dim2=-1).min().item():.3g}')
    eig = torch.linalg.eigvalsh((cov + cov.mT) / 2)
    tol = 10 * cov.shape[-1] * eps * eig.abs().amax(-1, keepdim=True)
    if (eig < -tol).any():
        raise ValueError(f'{name} must be positive semi-definite; smallest eigenvalue is {eig.min().item():.3g}')


# %% [markdown]
# A valid covariance passes, and so does a singular one (rank 1); each broken rule is named:

# %%
check_cov(torch.tensor([[2., 1.], [1., 2.]]), 'cov')
check_cov(torch.ones(2, 2, dtype=torch.float64), 'cov')
test_fail(lambda: check_cov(torch.ones(2, 3), 'Sigma'), contains='Sigma must have shape (..., n, n); got (2, 3)')
test_fail(lambda: check_cov(torch.tensor([[1., .5], [0., 1.]]), 'cov'), contains='cov must be symmetric')
test_fail(lambda: check_cov(torch.tensor([[1., 2.], [2., 1.]]), 'cov'),
          contains='cov must be positive semi-definite; smallest eigenvalue is -1')
test_fail(lambda: check_cov(torch.tensor([[-1., 0.], [0., 1.]]), 'cov'), contains='non-negative diagonal')


# %% [markdown]
# ## Tables
# Results that are read as a grid (published numbers beside ours, timings side by side) are `Table`s: aligned text
# when printed in a terminal, an HTML table in a notebook and in the book, where monospace text would wrap mid-number.

# %%
#| export
class Table:
    "Rows under a header: aligned text when printed, an HTML table in a notebook or the book."
    def __init__(self,
        rows:list,                 # one sequence of cells per row (numbers, strings, 0-d tensors, None)
        header:list,               # column names, one per cell
        fmt:str|dict='.4g',        # format spec of numeric cells: one for all columns, or {column name: spec}
        caption:str|None=None,     # a line shown above the table
    ):
        self.header, self.caption = [str(h) for h in header], caption
        self.rows = [list(r) for r in rows]
        bad = [i for i, r in enumerate(self.rows) if len(r) != len(self.header)]
        if bad: raise ValueError(f'rows must have {len(self.header)} cells, one per header column; row {bad[0]} has {len(self.rows[bad[0]])}')
        self.fmt = fmt if isinstance(fmt, dict) else dict.fromkeys(self.header, fmt)
    def _cell(self, v, col):
        if isinstance(v, Tensor): v = v.item()
        if v is None: return ''
        if isinstance(v, numbers.Number) and not isinstance(v, bool): return format(v, self.fmt.get(col, '.4g'))
        return str(v)
    def _numeric(self, j):
        "Whether column `j` holds numbers only (right-aligned)."
        vals = [r[j] for r in self.rows if r[j] is not None]
        return bool(vals) and all(isinstance(v, (numbers.Number, Tensor)) and not isinstance(v, bool) for v in vals)
    def cells(self)->list:
        "The formatted cells, row by row."
        return [[self._cell(v, c) for v, c in zip(r, self.header)] for r in self.rows]
    def __str__(self):
        cells, num = self.cells(), [self._numeric(j) for j in range(len(self.header))]
        w = [max([len(h)] + [len(r[j]) for r in cells]) for j, h in enumerate(self.header)]
        line = lambda r: '  '.join(c.rjust(w[j]) if num[j] else c.ljust(w[j]) for j, c in enumerate(r)).rstrip()
        out = [line(self.header), '  '.join('-' * x for x in w)] + [line(r) for r in cells]
        return '\n'.join(([self.caption] if self.caption else []) + out)
    __repr__ = __str__
    def _repr_html_(self):
        num, e = [self._numeric(j) for j in range(len(self.header))], html.escape
        td = lambda tag, j, c: f'<{tag} style="text-align: {"right" if num[j] else "left"}">{e(c)}</{tag}>'
        head = ''.join(td('th', j, h) for j, h in enumerate(self.header))
        body = ''.join('<tr>' + ''.join(td('td', j, c) for j, c in enumerate(r)) + '</tr>' for r in self.cells())
        cap = f'<caption>{e(self.caption)}</caption>' if self.caption else ''
        return f'<table class="netmoments-table">{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# %% [markdown]
# Numbers take the column's format and align right; text aligns left; a missing value is an empty cell:

# %%
t = Table([['old', 0.2034, torch.tensor(0.2)], ['exact', 0.0189, None]], ['variance', 'ours', 'published'], fmt={'ours': '.3f'})
test_eq(str(t).splitlines(), ['variance   ours  published', '--------  -----  ---------', 'old       0.203        0.2',
                              'exact     0.019'])
assert '<th style="text-align: right">ours</th>' in t._repr_html_() and '<td style="text-align: left">old</td>' in t._repr_html_()
test_eq(Table([['<b>', 1]], ['a', 'b'], caption='x & y')._repr_html_().count('&lt;b&gt;'), 1)
test_fail(lambda: Table([[1, 2, 3]], ['a', 'b']), contains='rows must have 2 cells, one per header column; row 0 has 3')
t


# %% [markdown]
# ## Models
# Functions that evaluate a model (robustness under noise, attacks, Monte Carlo through a network) run it as it is
# deployed: in eval mode, so dropout is off and batch normalization uses its running statistics without updating them.
# They must not change the caller's model, so they switch modes for the call and put every module's own flag back.

# %%
#| export
@contextmanager
def eval_mode(model:torch.nn.Module):   # the network (anything else passes through, for its caller's own checks)
    "Run `model` in eval mode (no dropout, running statistics used and left unchanged), then restore every module's mode."
    modes = [(m, m.training) for m in model.modules()] if isinstance(model, torch.nn.Module) else []
    try:
        for m, _ in modes: m.training = False
        yield model
    finally:
        for m, t in modes: m.training = t


# %% [markdown]
# A model in training mode is evaluated in eval mode, its buffers stay as they were, and its modes come back, also
# after an error:

# %%
net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Dropout(0.5)).train()
net[2].eval()
state = {k: v.clone() for k, v in net.state_dict().items()}
with eval_mode(net) as m:
    assert not any(x.training for x in m.modules())
    m(torch.randn(5, 3))
test_eq([x.training for x in net.modules()], [True, True, True, False])
assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
def fails():
    with eval_mode(net): raise KeyError('inside')
test_fail(fails, exc=KeyError)
test_eq([x.training for x in net.modules()], [True, True, True, False])
with eval_mode('not a model') as m: test_eq(m, 'not a model')


# %% [markdown]
# A network's weights are inputs too: a NaN weight makes every output NaN, and a statistic computed from NaN outputs
# (a robustness rate, a success rate) can come out as a plausible number. Functions that take a model check it first,
# and the check also names a model whose dtype differs from its input's:

# %%
#| export
def check_device(
    device,                 # a str such as 'cpu', 'cuda', 'cuda:1', or a torch.device
    name:str='device',      # argument name used in the message
    types:tuple|None=None,  # device types accepted (None: any that torch can use here)
)->torch.device:
    "`device` as a torch.device that torch can use here, or a `ValueError` naming the argument."
    try: dev = torch.device(device)
    except (RuntimeError, TypeError): raise ValueError(f'{name} must name a torch device such as "cpu" or "cuda"; got {device!r}') from None
    if types is not None and dev.type not in types:
        raise ValueError(f'{name} must be a {" or ".join(types)} device; got {device!r}')
    if dev.type == 'cuda':
        if not torch.cuda.is_available(): raise ValueError(f'{name} is {device!r} but torch sees no CUDA device')
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f'{name} is {device!r} but torch sees {torch.cuda.device_count()} CUDA device(s)')
    return dev


# %%
test_eq(check_device('cpu'), torch.device('cpu'))
test_fail(lambda: check_device('gpu'), contains='device must name a torch device such as "cpu" or "cuda"')
test_fail(lambda: check_device(0.5, 'where'), contains='where must name a torch device')
test_fail(lambda: check_device('meta', types=('cpu', 'cuda')), contains="device must be a cpu or cuda device; got 'meta'")
if not torch.cuda.is_available(): test_fail(lambda: check_device('cuda'), contains='torch sees no CUDA device')
else: test_fail(lambda: check_device(f'cuda:{torch.cuda.device_count()}'), contains='CUDA device(s)')


# %%
#| export
def check_model(
    model:torch.nn.Module,  # the network
    name:str,               # argument name used in the message
    x:Tensor|None=None,     # an input the model will see, whose floating dtype must match the parameters'
    x_name:str|None=None,   # the input's argument name, for the message (None: "its input")
):
    "Raise `TypeError` unless `model` is a module (matching `x`'s dtype), `ValueError` if a parameter or buffer is not finite."
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f'{name} must be a torch.nn.Module; got {type(model).__name__}')
    for k, v in [*model.named_parameters(), *model.named_buffers()]:
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ValueError(f'{name} must have finite parameters; {k} holds NaN or infinite values')
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if x is not None and x.is_floating_point() and dtypes and x.dtype not in dtypes:
        found = ', '.join(sorted(str(d).removeprefix('torch.') for d in dtypes))
        raise TypeError(f'{name} has {found} parameters but {x_name or "its input"} is {str(x.dtype).removeprefix("torch.")}; '
                        f'convert one (e.g. {name}.double() or {x_name or "x"}.float())')


# %%
net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
check_model(net, 'net', torch.zeros(1, 3))
test_fail(lambda: check_model(net, 'net', torch.zeros(1, 3, dtype=torch.float64)),
          contains='net has float32 parameters but its input is float64', exc=TypeError)
test_fail(lambda: check_model(net, 'net', torch.zeros(1, 3, dtype=torch.float64), 'images'),
          contains='net has float32 parameters but images is float64', exc=TypeError)
test_fail(lambda: check_model(lambda x: x, 'f'), contains='f must be a torch.nn.Module; got function', exc=TypeError)
with torch.no_grad(): net[0].weight[0, 1] = float('nan')
test_fail(lambda: check_model(net, 'net'), contains='net must have finite parameters; 0.weight holds NaN')

# %% [markdown]
# ## Export -

# %%
#| hide
#| eval: false
import nbdev; nbdev.nbdev_export()

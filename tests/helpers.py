"""Shared test helpers: Monte Carlo tolerance checks, and the cases and hypothesis strategies of the fuzz suite.

A `Case` describes one public callable: how to build a small valid call, and which arguments play which role (float
tensors, counts, class indices, models, differentiable inputs). `tests/test_fuzz.py` turns the roles into properties
that hold for every case: a NaN, an infinity, an empty batch, a bad count, an out-of-range class or a second floating
dtype is refused with an error naming the argument; extreme but finite values give no NaN; gradients are finite and
match finite differences; models come back in the mode and with the weights they had.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import torch
from hypothesis import strategies as st
from torch import Tensor, nn

f32, f64 = torch.float32, torch.float64


def within(estimate, truth, se, k=4):
    "Every entry of `estimate` within `k` standard errors of `truth`, with a readable failure."
    z = ((estimate - truth) / se).abs().max()
    assert bool(((estimate - truth).abs() <= k * se).all()), f'max |error| / SE = {float(z):.2f} > {k}'


def gen(seed:int)->torch.Generator:
    "A CPU generator seeded with `seed`."
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0, dtype=f64, scale=1.):
    "Seeded standard normal tensor."
    return scale * torch.randn(*shape, generator=gen(seed), dtype=dtype)


def rand(*shape, seed=0, dtype=f64, low=0., high=1.):
    "Seeded uniform tensor on [low, high)."
    return low + (high - low) * torch.rand(*shape, generator=gen(seed), dtype=dtype)


def spd(n, seed=0, dtype=f64, scale=1., batch=()):
    "Seeded positive definite (n, n) covariance (a Wishart draw plus a small ridge)."
    A = randn(*batch, n, n + 2, seed=seed, dtype=dtype)
    return scale * (A @ A.mT / (n + 2) + 0.1 * torch.eye(n, dtype=dtype))


def mlp(sizes=(6, 8, 3), seed=0, dtype=f64, bn=False):
    "Seeded Linear-ReLU-...-Linear network in eval mode (BatchNorm after each hidden Linear when `bn`)."
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2: layers += [nn.BatchNorm1d(b)] * bn + [nn.ReLU()]
    return nn.Sequential(*layers).to(dtype).eval()


def cnn(classes=3, seed=0, dtype=f64, side=8):
    "Seeded small CNN on (1, side, side) images: Conv-ReLU-MaxPool-Flatten-Linear, in eval mode."
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(2 * (side // 2) ** 2, classes)).to(dtype).eval()


# ---------------------------------------------------------------------------------------------------------------------
# Strategies

seeds = st.integers(0, 2**16)
dtypes = st.sampled_from([f32, f64])
#: non-finite values a float tensor can hold
non_finite = st.sampled_from([math.nan, math.inf, -math.inf])
#: powers of ten that take a float64 input to the edge of its range
scales64 = st.sampled_from([1e-300, 1e-150, 1e-30, 1e30, 1e150, 1e300])
scales32 = st.sampled_from([1e-38, 1e-20, 1e20, 1e37])


def bad_counts(least:int):
    "Values a count argument with smallest valid value `least` must refuse."
    return st.sampled_from([least - 1, least - 3, -1, 2.5, float(least) + 0.5, math.nan, True, '3', None])


def bad_classes(classes:int):
    "Class indices outside [0, classes)."
    return st.sampled_from([classes, classes + 7, -1, -classes - 1])


# ---------------------------------------------------------------------------------------------------------------------
# Cases

@dataclass
class Case:
    "One public callable under fuzz: a builder of small valid calls, and the role each argument plays."
    fn: Callable                              # what is called: `fn(**make(seed, dtype))`
    make: Callable                            # (seed, dtype) -> dict of valid keyword arguments
    floats: tuple = ()                        # float tensor arguments: NaN (and inf unless in `inf_ok`) must raise
    inf_ok: tuple = ()                        # float arguments where +-inf is a valid limit: the result must not be NaN
    empty: dict = field(default_factory=dict) # argument -> 'raise' or 'ok' for a batch of 0 along dim 0
    counts: dict = field(default_factory=dict) # count argument -> smallest valid value
    classes: dict = field(default_factory=dict) # class argument -> number of classes
    models: tuple = ()                        # nn.Module arguments: NaN weight must raise; mode and weights unchanged
    trains: bool = False                      # True when changing the model is the function's job
    grads: tuple = ()                         # float arguments the output is differentiable in
    gradcheck: bool = True                    # also compare gradients with finite differences (float64)
    extreme: tuple = ()                       # float arguments scaled to the edge of the dtype: no NaN in the result
    dtypes: tuple = (f32, f64)                # dtypes `make` supports
    output: Callable | None = None            # result -> tensors to check (default: every tensor in the result)
    covers: tuple = ()                        # other public names this case exercises (classes built inside `make`)
    id: str = ''                              # test id (default: the function's name)

    def __post_init__(self):
        if not self.id: self.id = getattr(self.fn, '__name__', repr(self.fn))

    def call(self, seed, dtype, /, **over):
        "Call with valid arguments from `make`, replacing those in `over`."
        kw = self.make(seed, dtype)
        kw.update(over)
        return self.fn(**kw)

    def tensors(self, result)->list:
        "The tensors of `result` this case checks."
        return [t for t in (self.output(result) if self.output else flatten(result)) if isinstance(t, Tensor)]


def flatten(x)->list:
    "Every tensor inside nested tuples, lists, dicts and NamedTuples."
    if isinstance(x, Tensor): return [x]
    if isinstance(x, dict): return [t for v in x.values() for t in flatten(v)]
    if isinstance(x, (tuple, list)): return [t for v in x for t in flatten(v)]
    return []


def names_argument(exc:BaseException, name:str)->bool:
    "Does the message of `exc` name the argument `name` (as a whole word)?"
    return re.search(rf'(?<![\w.]){re.escape(name)}(?!\w)', str(exc)) is not None


def model_state(model:nn.Module):
    "Mode flags and a copy of every parameter and buffer, to compare before and after a call."
    return ([m.training for m in model.modules()],
            {k: v.detach().clone() for k, v in model.state_dict().items()})


def same_state(a, b)->bool:
    "Two `model_state` snapshots are identical."
    return a[0] == b[0] and a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])


def with_nan(x:Tensor, where:int, value=math.nan)->Tensor:
    "A copy of `x` with its flat entry `where % numel` set to `value`."
    y = x.detach().clone()
    y.view(-1)[where % y.numel()] = value
    return y.requires_grad_(x.requires_grad)

"""The fuzz suite: one set of properties, checked on every public callable of the package.

Each module's cases live in `tests/fuzzcases/` (the `Case` type and the strategies in `tests/helpers.py`). A public
name without a case must be listed in that file's `EXEMPT` with the reason; `test_every_public_name_is_fuzzed` fails
otherwise, so a new function cannot escape the suite.
"""
import importlib
import inspect
import math
import pkgutil

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import Tensor, nn

import fuzzcases
import netmoments
from helpers import (bad_classes, bad_counts, dtypes, f32, f64, model_state, names_argument, non_finite, same_state,
                     scales32, scales64, seeds, with_nan)

pytestmark = pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:DeprecationWarning')

MODULES = [importlib.import_module(f'fuzzcases.{m.name}') for m in pkgutil.iter_modules(fuzzcases.__path__)]
CASES = [c for m in MODULES for c in m.CASES]
EXEMPT = {k: v for m in MODULES for k, v in m.EXEMPT.items()}
fuzz = settings(max_examples=6)


def by_role(role):
    "pytest params (case, argument) for every case with arguments in `role`."
    return [pytest.param(c, a, id=f'{c.id}-{a}') for c in CASES for a in (getattr(c, role) or ())]


def public_names():
    "(module.name, object) for every public callable the package defines."
    out = []
    for m in pkgutil.iter_modules(netmoments.__path__):
        if m.name.startswith('_'): continue
        mod = importlib.import_module(f'netmoments.{m.name}')
        for name in getattr(mod, '__all__', []):
            obj = getattr(mod, name)
            if getattr(obj, '__module__', None) != mod.__name__ or not callable(obj): continue
            if isinstance(obj, type) and issubclass(obj, tuple): continue       # a result type
            out.append((f'{m.name}.{name}', obj))
    return out


def test_every_public_name_is_fuzzed():
    covered = {c.fn for c in CASES} | {o for c in CASES for o in c.covers}
    missing = [n for n, o in public_names() if o not in covered and n not in EXEMPT]
    assert not missing, f'public callables with neither a fuzz case nor an exemption: {missing}'
    stale = [n for n in EXEMPT if n not in dict(public_names())]
    assert not stale, f'exemptions for names that are not public: {stale}'


def no_nan(case, result):
    for t in case.tensors(result):
        if t.is_floating_point() or t.is_complex():
            assert not torch.isnan(t).any(), f'{case.id} returned NaN'


def expect_refusal(case, arg, exc_types, seed, dtype, /, **over):
    with pytest.raises(exc_types) as info:
        case.call(seed, dtype, **over)
    assert names_argument(info.value, arg), f'{case.id}: message does not name {arg!r}: {info.value}'


# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('case', [pytest.param(c, id=c.id) for c in CASES])
@fuzz
@given(seed=seeds, dtype=dtypes)
def test_valid_call_has_no_nan_and_keeps_dtype(case, seed, dtype):
    if dtype not in case.dtypes: dtype = case.dtypes[-1]
    result = case.call(seed, dtype)
    no_nan(case, result)
    for t in case.tensors(result):
        if t.is_floating_point(): assert t.dtype == dtype, f'{case.id} returned {t.dtype} for {dtype} inputs'


@pytest.mark.parametrize('case,arg', by_role('floats'))
@fuzz
@given(seed=seeds, dtype=dtypes, where=st.integers(0, 10**6), bad=non_finite)
def test_non_finite_input_is_refused(case, arg, seed, dtype, where, bad):
    if dtype not in case.dtypes: dtype = case.dtypes[-1]
    x = case.make(seed, dtype)[arg]
    if math.isinf(bad) and arg in case.inf_ok:
        no_nan(case, case.call(seed, dtype, **{arg: with_nan(x, where, bad)}))
    else:
        expect_refusal(case, arg, ValueError, seed, dtype, **{arg: with_nan(x, where, bad)})


@pytest.mark.parametrize('case,arg', [pytest.param(c, a, id=f'{c.id}-{a}') for c in CASES for a in c.empty])
@fuzz
@given(seed=seeds)
def test_empty_batch(case, arg, seed):
    dtype = case.dtypes[-1]
    x = case.make(seed, dtype)[arg]
    if case.empty[arg] == 'raise':
        expect_refusal(case, arg, ValueError, seed, dtype, **{arg: x[:0]})
    else:
        result = case.call(seed, dtype, **{arg: x[:0]})
        assert any(0 in t.shape for t in case.tensors(result)), f'{case.id}: no empty result for an empty {arg}'


@pytest.mark.parametrize('case,arg', [pytest.param(c, a, id=f'{c.id}-{a}') for c in CASES for a in c.counts])
@fuzz
@given(seed=seeds, data=st.data())
def test_bad_count_is_refused(case, arg, seed, data):
    bad = data.draw(bad_counts(case.counts[arg]))
    expect_refusal(case, arg, (ValueError, TypeError), seed, case.dtypes[-1], **{arg: bad})


@pytest.mark.parametrize('case,arg', [pytest.param(c, a, id=f'{c.id}-{a}') for c in CASES for a in c.classes])
@fuzz
@given(seed=seeds, data=st.data())
def test_class_out_of_range_is_refused(case, arg, seed, data):
    dtype = case.dtypes[-1]
    bad = data.draw(bad_classes(case.classes[arg]))
    valid = case.make(seed, dtype)[arg]
    if isinstance(valid, Tensor): bad = with_nan(valid, data.draw(st.integers(0, 10**6)), bad)
    expect_refusal(case, arg, ValueError, seed, dtype, **{arg: bad})


@pytest.mark.parametrize('case,arg', [pytest.param(c, a, id=f'{c.id}-{a}') for c in CASES for a in c.floats
                                      if len(c.dtypes) == 2 and len(c.floats) + len(c.models) >= 2])
@fuzz
@given(seed=seeds, dtype=dtypes)
def test_mixed_dtypes_are_refused(case, arg, seed, dtype):
    other = f64 if dtype == f32 else f32
    x = case.make(seed, dtype)[arg]
    expect_refusal(case, arg, TypeError, seed, dtype, **{arg: x.to(other)})


@pytest.mark.parametrize('case,arg', by_role('models'))
@fuzz
@given(seed=seeds, where=st.integers(0, 10**6), bad=non_finite)
def test_non_finite_weight_is_refused(case, arg, seed, where, bad):
    dtype = case.dtypes[-1]
    kw = case.make(seed, dtype)
    params = [p for p in kw[arg].parameters() if p.is_floating_point()]
    with torch.no_grad():
        p = params[where % len(params)]
        p.view(-1)[where % p.numel()] = bad
    with pytest.raises(ValueError) as info:
        case.fn(**kw)
    assert names_argument(info.value, arg), f'{case.id}: message does not name {arg!r}: {info.value}'


@pytest.mark.parametrize('case,arg', [pytest.param(c, a, id=f'{c.id}-{a}') for c in CASES for a in c.models
                                      if not c.trains])
@fuzz
@given(seed=seeds)
def test_model_mode_and_weights_unchanged(case, arg, seed):
    dtype = case.dtypes[-1]
    kw = case.make(seed, dtype)
    for train in (True, False):
        kw[arg].train(train)
        before = model_state(kw[arg])
        case.fn(**kw)
        assert same_state(before, model_state(kw[arg])), f'{case.id} changed the mode or weights of {arg}'


@pytest.mark.parametrize('case,arg', by_role('extreme'))
@fuzz
@given(seed=seeds, data=st.data())
def test_extreme_values_give_no_nan(case, arg, seed, data):
    dtype = data.draw(dtypes.filter(lambda d: d in case.dtypes) if len(case.dtypes) == 2 else st.just(case.dtypes[0]))
    k = data.draw(scales64 if dtype == f64 else scales32)
    x = case.make(seed, dtype)[arg]
    y = x.detach() * k
    if not torch.isfinite(y).all():                  # scaled past the range: put the largest entry at max / 8
        y = x.detach() / x.detach().abs().amax() * (torch.finfo(dtype).max / 8)
    no_nan(case, case.call(seed, dtype, **{arg: y}))


@pytest.mark.parametrize('case', [pytest.param(c, id=c.id) for c in CASES if c.grads])
@settings(max_examples=3)
@given(seed=seeds)
def test_gradients_are_finite_and_match_finite_differences(case, seed):
    dtype = f64 if f64 in case.dtypes else case.dtypes[0]
    kw = case.make(seed, dtype)
    inputs = [kw[a].detach().clone().requires_grad_() for a in case.grads]

    def f(*xs):
        out = [t for t in case.tensors(case.fn(**{**kw, **dict(zip(case.grads, xs))})) if t.is_floating_point()]
        return tuple(t for t in out if t.requires_grad)

    outs = f(*inputs)
    assert outs, f'{case.id}: no output depends on {case.grads}'
    total = sum(o.sum() for o in outs)
    grads = torch.autograd.grad(total, inputs, allow_unused=True)
    for a, g in zip(case.grads, grads):
        assert g is None or torch.isfinite(g).all(), f'{case.id}: non-finite gradient in {a}'
    if case.gradcheck and dtype == f64:
        assert torch.autograd.gradcheck(f, inputs, fast_mode=True, atol=1e-6, rtol=1e-4)

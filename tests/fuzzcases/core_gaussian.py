"Fuzz cases for `netmoments.core` and `netmoments.gaussian`."
import torch

from helpers import Case, rand, randn
from netmoments.core import (Table, check_broadcast, check_count, check_cov, check_device, check_finite, check_model,
                             check_var)
from netmoments.gaussian import bvn_cdf, bvn_pdf, normal_cdf, normal_pdf

_validator = 'a validator: the refusals it raises are what every other case checks'
EXEMPT = {f'core.{f.__name__}': _validator for f in (check_finite, check_var, check_count, check_broadcast,
                                                       check_cov, check_model, check_device)}
EXEMPT |= {'core.as_tensors': _validator, 'core.eval_mode': 'a context manager: every model case checks it'}


def _x(seed, dtype): return {'x': randn(5, 3, seed=seed, dtype=dtype)}


def _hkr(seed, dtype):
    return {'h': randn(4, 3, seed=seed, dtype=dtype), 'k': randn(3, seed=seed + 1, dtype=dtype),
            'rho': rand(3, seed=seed + 2, dtype=dtype, low=-1, high=1)}


def _table(rows, header=('a', 'b')): return str(Table(rows, list(header)))


CASES = [
    Case(normal_pdf, _x, floats=('x',), inf_ok=('x',), empty={'x': 'ok'}, grads=('x',), extreme=('x',)),
    Case(normal_cdf, _x, floats=('x',), inf_ok=('x',), empty={'x': 'ok'}, grads=('x',), extreme=('x',)),
    Case(bvn_pdf, _hkr, floats=('h', 'k', 'rho'), inf_ok=('h', 'k'), empty={'h': 'ok'}, grads=('h', 'k', 'rho'),
         extreme=('h', 'k')),
    Case(bvn_cdf, _hkr, floats=('h', 'k', 'rho'), inf_ok=('h', 'k'), empty={'h': 'ok'}, grads=('h', 'k', 'rho'),
         extreme=('h', 'k')),
    Case(_table, lambda seed, dtype: {'rows': [[1, 2.5], ['x', float(seed)]]}, covers=(Table,), dtypes=(torch.float64,),
         id='Table'),
]

"Fuzz cases for the moment core: `netmoments.montecarlo`, `relu`, `price` and `ara`."
import torch

from helpers import Case, rand, randn, spd
from netmoments.ara import ara_moments, ara_second_moment_zero_mean
from netmoments.montecarlo import LowRankCov, mc_moments
from netmoments.price import check_price, isserlis, price_derivative, price_rhs_mc
from netmoments.relu import (relu_cross_moment, relu_cross_moment_series, relu_cross_moment_zero_mean, relu_mean,
                             relu_moments, relu_second_moment, relu_var)

EXEMPT = {}


# --- montecarlo ------------------------------------------------------------------------------------------------------

def _mc(seed, dtype):
    return {'f': torch.relu, 'mu': randn(3, seed=seed, dtype=dtype), 'cov': spd(3, seed=seed + 1, dtype=dtype),
            'n': 64, 'chunk': 40}


def _mc_var(seed, dtype):
    return {'f': torch.relu, 'mu': randn(2, 3, seed=seed, dtype=dtype),
            'cov': rand(2, 3, seed=seed + 1, dtype=dtype, low=0.1, high=2), 'n': 64, 'full_cov': False}


def mc_moments_low_rank(f, mu, factor, diag, n):
    "mc_moments with a LowRankCov(factor, diag) covariance."
    return mc_moments(f, mu, LowRankCov(factor, diag), n)


def _mc_low_rank(seed, dtype):
    return {'f': torch.relu, 'mu': randn(4, seed=seed, dtype=dtype), 'factor': randn(4, 2, seed=seed + 1, dtype=dtype),
            'diag': rand(4, seed=seed + 2, dtype=dtype, low=0.1, high=1), 'n': 64}


# --- relu ------------------------------------------------------------------------------------------------------------

def _unit(seed, dtype):
    return {'mu': randn(5, 3, seed=seed, dtype=dtype), 'var': rand(3, seed=seed + 1, dtype=dtype, low=0.5, high=2)}


def _pair(seed, dtype, means=True):
    "A batch (4, 3) along mu1 (cov12 without means), the other arguments shared, so that each empties alone."
    var1, var2 = rand(3, seed=seed, dtype=dtype, low=0.5, high=2), rand(3, seed=seed + 1, dtype=dtype, low=0.5, high=2)
    rho = rand(*(() if means else (4,)), 3, seed=seed + 2, dtype=dtype, low=-0.9, high=0.9)
    kw = {'var1': var1, 'var2': var2, 'cov12': rho * (var1 * var2).sqrt()}
    if means: kw = {'mu1': randn(4, 3, seed=seed + 3, dtype=dtype), 'mu2': randn(3, seed=seed + 4, dtype=dtype), **kw}
    return kw


def _layer_diag(seed, dtype):
    return {'mean': randn(4, 3, seed=seed, dtype=dtype), 'cov': rand(3, seed=seed + 1, dtype=dtype, low=0.2, high=2)}


def _layer_full(seed, dtype):
    return {'mean': randn(4, 3, seed=seed, dtype=dtype), 'cov': spd(3, seed=seed + 1, dtype=dtype)}


_pair_roles = dict(floats=('mu1', 'mu2', 'var1', 'var2', 'cov12'), empty={'mu1': 'ok'},
                   grads=('mu1', 'mu2', 'var1', 'var2', 'cov12'), extreme=('mu1', 'mu2'))

# --- price -----------------------------------------------------------------------------------------------------------

def _isserlis(seed, dtype):
    return {'mu': randn(3, 4, seed=seed, dtype=dtype), 'cov': spd(4, seed=seed + 1, dtype=dtype)}


def _price(seed, dtype):
    return {'expectation': isserlis, 'pairs': [(0, 1)], **_isserlis(seed, dtype)}   # d/d sigma_12 = mu_3 mu_4 + sigma_34


def _relu_pair_expectation(mu, cov):
    "E[relu(x0) relu(x1)] for x ~ N(mu, cov), batched."
    return relu_cross_moment(mu[..., 0], mu[..., 1], cov[..., 0, 0], cov[..., 1, 1], cov[..., 0, 1])


def _relu_pair_partial(x):
    "d^2 / dx0 dx1 of relu(x0) relu(x1): the indicator of the positive quadrant."
    return ((x[..., 0] > 0) & (x[..., 1] > 0)).to(x.dtype)


def _price_mc(seed, dtype):
    return {'mixed_partial': _relu_pair_partial, 'mu': randn(3, 2, seed=seed, dtype=dtype),
            'cov': spd(2, seed=seed + 1, dtype=dtype), 'n': 64, 'chunk': 40}


def _check(seed, dtype):
    kw = {'expectation': _relu_pair_expectation, 'pairs': [(0, 1)], **_price_mc(seed, dtype), 'atol': 0.1}
    del kw['chunk']
    return kw


# --- ara -------------------------------------------------------------------------------------------------------------

def _ara(seed, dtype, zero_mean=False):
    kw = {'mu': randn(2, 3, seed=seed, dtype=dtype), 'cov': rand(3, seed=seed + 1, dtype=dtype, low=0.2, high=2),
          'A': randn(4, 3, seed=seed + 2, dtype=dtype), 'c1': randn(4, seed=seed + 3, dtype=dtype),
          'B': randn(2, 4, seed=seed + 4, dtype=dtype), 'c2': randn(2, seed=seed + 5, dtype=dtype)}
    if zero_mean:   # a batch of two input distributions
        del kw['mu'], kw['c1']
        kw['cov'] = rand(2, 3, seed=seed + 1, dtype=dtype, low=0.2, high=2)
    return kw


def _ara_full(seed, dtype):
    return {**_ara(seed, dtype), 'cov': spd(3, seed=seed + 1, dtype=dtype)}


def ara_moments_series(**kw):
    "ara_moments by the series of Alfadly et al. 2020, Lemma 4."
    return ara_moments(**kw, method='series')


def ara_moments_zero_mean(**kw):
    "ara_moments with the papers' zero-mean covariance."
    return ara_moments(**kw, method='zero_mean')


_ara_args = ('mu', 'cov', 'A', 'c1', 'B', 'c2')
_ara_roles = dict(floats=_ara_args, empty={'mu': 'ok'}, grads=_ara_args, extreme=_ara_args)


CASES = [
    Case(mc_moments, _mc, floats=('mu', 'cov'), empty={'mu': 'raise'}, counts={'n': 2, 'chunk': 1},
         extreme=('mu', 'cov')),
    Case(mc_moments, _mc_var, floats=('mu', 'cov'), empty={'mu': 'raise'}, counts={'n': 2}, extreme=('mu', 'cov'),
         id='mc_moments_variances'),
    Case(mc_moments_low_rank, _mc_low_rank, floats=('mu', 'factor', 'diag'), empty={'factor': 'raise'}, counts={'n': 2},
         extreme=('mu', 'factor', 'diag'), covers=(LowRankCov,)),

    Case(relu_mean, _unit, floats=('mu', 'var'), empty={'mu': 'ok'}, grads=('mu', 'var'), extreme=('mu', 'var')),
    Case(relu_second_moment, _unit, floats=('mu', 'var'), empty={'mu': 'ok'}, grads=('mu', 'var'),
         extreme=('mu', 'var')),
    Case(relu_var, _unit, floats=('mu', 'var'), empty={'mu': 'ok'}, grads=('mu', 'var'), extreme=('mu', 'var')),
    Case(relu_cross_moment_zero_mean, lambda seed, dtype: _pair(seed, dtype, means=False),
         floats=('var1', 'var2', 'cov12'), empty={'cov12': 'ok'}, grads=('var1', 'var2', 'cov12')),
    Case(relu_cross_moment, _pair, **_pair_roles),
    Case(relu_cross_moment_series, _pair, counts={'terms': 1}, **_pair_roles),
    Case(relu_moments, _layer_diag, floats=('mean', 'cov'), empty={'mean': 'ok'}, grads=('mean', 'cov'),
         extreme=('mean', 'cov')),
    # full covariances: no finite differences in cov (one entry moved alone makes it asymmetric, which is refused);
    # test_relu and test_ara differentiate in symmetric directions
    Case(relu_moments, _layer_full, floats=('mean', 'cov'), empty={'mean': 'ok'}, grads=('mean',),
         extreme=('mean', 'cov'), id='relu_moments_full'),

    Case(isserlis, _isserlis, floats=('mu', 'cov'), empty={'mu': 'ok'}, grads=('mu', 'cov'), extreme=('mu', 'cov')),
    Case(price_derivative, _price, floats=('mu', 'cov'), empty={'mu': 'ok'}, grads=('mu',), extreme=('mu', 'cov')),   # cov: full
    Case(price_rhs_mc, _price_mc, floats=('mu', 'cov'), empty={'mu': 'ok'}, counts={'n': 2, 'chunk': 1},
         extreme=('mu', 'cov')),
    Case(check_price, _check, floats=('mu', 'cov'), empty={'mu': 'ok'}, counts={'n': 2}, grads=('mu',),
         extreme=('mu', 'cov')),

    Case(ara_second_moment_zero_mean, lambda seed, dtype: _ara(seed, dtype, zero_mean=True),
         floats=('cov', 'A', 'B', 'c2'), empty={'cov': 'ok'}, grads=('cov', 'A', 'B', 'c2'),
         extreme=('cov', 'A', 'B', 'c2')),
    Case(ara_moments, _ara, **_ara_roles),   # chunk=None is valid (all rows): its bad values are in test_ara
    Case(ara_moments, _ara_full, floats=_ara_args, empty={'mu': 'ok'}, grads=('mu', 'A', 'c1', 'B', 'c2'),
         extreme=_ara_args, id='ara_moments_full'),
    Case(ara_moments_series, _ara, counts={'terms': 1}, **_ara_roles),
    Case(ara_moments_zero_mean, _ara, **_ara_roles),
]

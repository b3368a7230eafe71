"""Fuzz cases for the network-side modules: `bench`, `data`, `models`, `linearize`, `propagate`, `tightness`,
`synthetic` and `centers`.

The networks are the small seeded ones of `helpers` (an MLP 6-8-3, or 6-5-4-3 where a second ReLU matters); the
Monte Carlo functions run a handful of samples and the benchmarks a handful of pairs, so that the group stays fast.
Dataset files are tiny synthetic IDX files in the real format, written once per test run to a temporary folder.
"""
import atexit
import gzip
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch

from helpers import Case, cnn, f32, f64, gen, mlp, rand, randn, spd
from netmoments.bench import BenchRow, bench_ara_vs_mc, bench_pairs, best_time, format_rows, run_benchmarks
from netmoments.centers import LinearizationCache, centers_tightness, farthest_members, kmeans, nearest_center
from netmoments.data import data_dirs, load, split_indices, standardize
from netmoments.linearize import linearization_memory, model_layers, seeded, two_stage
from netmoments.models import lenet, mnist_slice, pretrained, synthetic
from netmoments.montecarlo import LowRankCov
from netmoments.propagate import propagate_moments
from netmoments.synthetic import analytic_vs_mc, fit_slope, linearization_error, regime_covariances
from netmoments.tightness import dense, random_covariance, relative_error, tightness_table

EXEMPT = {}

# ---------------------------------------------------------------------------------------------------------------------
# bench: argument checking with tiny sizes (the timings themselves are not fuzzed)

_row = BenchRow('exact E[relu relu]', 'cpu', 'float64', 1e6, 'pairs/s', 1., 'exact float64')

# ---------------------------------------------------------------------------------------------------------------------
# data: a tiny MNIST test split in the official format, written once

_root = None


def _data_root():
    "A temporary data root holding a 4-image MNIST test split (official gz names), removed at exit."
    global _root
    if _root is None:
        _root = Path(tempfile.mkdtemp(prefix='netmoments-fuzz-'))
        atexit.register(shutil.rmtree, _root, True)
        rng = np.random.default_rng(0)
        for stem, array in (('t10k-images-idx3-ubyte.gz', rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)),
                            ('t10k-labels-idx1-ubyte.gz', np.array([3, 1, 4, 1], np.uint8))):
            raw = struct.pack(f'>HBB{array.ndim}I', 0, 0x08, array.ndim, *array.shape) + array.tobytes()
            (_root/'mnist').mkdir(exist_ok=True)
            (_root/'mnist'/stem).write_bytes(gzip.compress(raw))
    return _root


def _standardize(train_x, others):
    "standardize with one other set (`others` is variadic: it cannot be passed by keyword)."
    return standardize(train_x, others)

# ---------------------------------------------------------------------------------------------------------------------
# linearize, propagate, tightness, synthetic, centers


def _two_stage(seed, dtype):
    return {'model': mlp(seed=seed, dtype=dtype), 'x': randn(3, 6, seed=seed, dtype=dtype), 'layer': 1}


def _propagate(seed, dtype):   # variances as cov: finite differences keep them valid (a matrix would turn asymmetric)
    return {'model': mlp((6, 5, 4, 3), seed=seed, dtype=dtype), 'mu': randn(3, 6, seed=seed, dtype=dtype),
            'cov': rand(6, seed=seed + 1, dtype=dtype, low=0.1, high=1.)}


def _propagate_lowrank(seed, dtype):
    return {'model': mlp((6, 5, 4, 3), seed=seed, dtype=dtype), 'mu': randn(3, 6, seed=seed, dtype=dtype),
            'cov': spd(6, seed=seed + 1, dtype=dtype), 'mode': 'lowrank', 'rank': 2}


def _propagate_cnn(seed, dtype):
    return {'model': cnn(seed=seed, dtype=dtype, side=4), 'mu': rand(2, 1, 4, 4, seed=seed, dtype=dtype),
            'cov': rand(1, 4, 4, seed=seed + 1, dtype=dtype, low=0.01, high=0.1), 'mode': 'diag'}


def _dense_factor(cov, diag):
    "dense of LowRankCov(cov, diag): fuzzes the factor (its messages name cov.factor)."
    return dense(LowRankCov(cov, diag))


def _dense_diag(factor, cov):
    "dense of LowRankCov(factor, cov): fuzzes the diagonal (its messages name cov.diag)."
    return dense(LowRankCov(factor, cov))


def _tightness(seed, dtype):
    model = mlp((6, 5, 4, 3), seed=seed, dtype=dtype)
    return {'model': model, 'images': randn(2, 6, seed=seed, dtype=dtype), 'sigma': 0.3, 'layer': 1, 'n_mc': 4,
            'generator': gen(seed)}


def _centers_tightness(seed, dtype):
    kw = _tightness(seed, dtype)
    kw['lins'] = {'centers': two_stage(kw['model'], kw['images'], 1)}
    del kw['layer']
    return kw


def _analytic_vs_mc(seed, dtype):
    return {'net': mlp((4, 5, 1), seed=seed, dtype=dtype), 'input_shape': (4,),
            'covs': spd(4, seed=seed, dtype=dtype, batch=(2,)), 'layer': 1, 'n_mc': 4, 'seed': seed}


def _linearization_error(seed, dtype):
    "A net with three ReLUs (l = 1, 2, 3), three inputs, two draws at two amplitudes, linearized four rows at a time."
    return {'net': mlp((4, 5, 5, 5, 3), seed=seed, dtype=dtype), 'images': rand(3, 4, seed=seed, dtype=dtype),
            'draws': 2, 'amplitudes': (0.5, 1.0), 'seed': seed, 'rows': 4}


def _fit_slope(seed, dtype):
    x = rand(5, seed=seed, dtype=dtype, low=0.5, high=2.)
    return {'x': x, 'y': 1.5 * x + randn(5, seed=seed + 1, dtype=dtype, scale=0.1)}


def _slope_values(r):
    "A Slope holds Python floats: one complex tensor, so that the suite checks them for NaN (there is no dtype to keep)."
    return [torch.tensor(complex(r.slope, r.se))]


def _kmeans(seed, dtype):
    return {'x': randn(8, 3, seed=seed, dtype=dtype), 'k': 2, 'iters': 5, 'seed': seed}


def _kmeans_init(seed, dtype):
    x = randn(8, 3, seed=seed, dtype=dtype)
    return {'x': x, 'k': 2, 'iters': 5, 'init': x[:2] + 0.1}


def _farthest(seed, dtype):
    return {'x': randn(6, 2, seed=seed, dtype=dtype), 'centers': randn(2, 2, seed=seed + 1, dtype=dtype),
            'assignments': torch.arange(6) % 2}


def _cache_moments(model, centers, x, cov, layer, chunk=32):
    "LinearizationCache(model, centers, layer, chunk=chunk).moments(x, cov): build, look up, evaluate."
    return LinearizationCache(model, centers, layer, chunk=chunk).moments(x, cov)


def _cache(seed, dtype):
    return {'model': mlp(seed=seed, dtype=dtype), 'centers': randn(2, 6, seed=seed, dtype=dtype),
            'x': randn(3, 6, seed=seed + 1, dtype=dtype), 'cov': rand(6, seed=seed + 2, dtype=dtype, low=0.1, high=1.),
            'layer': 1}


def _cache_farthest(model, x, centers, assignments, layer):
    "LinearizationCache.farthest(...).lookup(x): keys at the centers, each linearized at its farthest member."
    return LinearizationCache.farthest(model, x, centers, assignments, layer).lookup(x)


def _cache_far(seed, dtype):
    return {'model': mlp(seed=seed, dtype=dtype), 'x': randn(6, 6, seed=seed, dtype=dtype),
            'centers': randn(2, 6, seed=seed + 1, dtype=dtype), 'assignments': torch.arange(6) % 2, 'layer': 1}


CASES = [
    # bench
    Case(best_time, lambda seed, dtype: {'fn': lambda: None, 'repeats': 1}, counts={'repeats': 1}, dtypes=(f64,)),
    Case(bench_pairs, lambda seed, dtype: {'count': 3, 'repeats': 1, 'seed': seed}, counts={'count': 1, 'repeats': 1},
         dtypes=(f64,)),
    Case(bench_ara_vs_mc, lambda seed, dtype: {'n': 2, 'p': 3, 'd': 2, 'mc_samples': 2, 'repeats': 1, 'seed': seed},
         counts={'n': 1, 'p': 1, 'd': 1, 'mc_samples': 2, 'repeats': 1}, dtypes=(f64,)),
    Case(run_benchmarks, lambda seed, dtype: {'devices': ['cpu'], 'count': 3, 'mc_samples': 2, 'repeats': 1,
                                              'sizes': (2, 3, 2)},
         counts={'count': 1, 'mc_samples': 2, 'repeats': 1}, dtypes=(f64,)),
    Case(format_rows, lambda seed, dtype: {'rows': [_row]}, dtypes=(f64,)),
    # data
    Case(data_dirs, lambda seed, dtype: {'name': 'mnist', 'root': _data_root()}, dtypes=(f64,)),
    Case(load, lambda seed, dtype: {'name': 'mnist', 'root': _data_root(), 'limit': 3}, dtypes=(f32,)),  # float32 by design
    Case(split_indices, lambda seed, dtype: {'n': 10, 'fractions': (0.5, 0.3, 0.2), 'seed': seed}, counts={'n': 0},
         dtypes=(f64,)),
    Case(_standardize, lambda seed, dtype: {'train_x': randn(5, 3, seed=seed, dtype=dtype),
                                            'others': randn(4, 3, seed=seed + 1, dtype=dtype)},
         floats=('train_x', 'others'), empty={'train_x': 'raise', 'others': 'ok'}, grads=('train_x', 'others'),
         extreme=('train_x', 'others'), covers=(standardize,), id='standardize'),
    # models
    Case(lenet, lambda seed, dtype: {'generator': gen(seed)}, dtypes=(f32,)),
    Case(synthetic, lambda seed, dtype: {'name': ('FC-A', 'Conv-B')[seed % 2], 'seed': seed}, dtypes=(f32,)),
    Case(mnist_slice, lambda seed, dtype: {}, dtypes=(f32,)),
    Case(pretrained, lambda seed, dtype: {}, dtypes=(f32,)),
    # linearize (seeded re-draws every weight it knows, so a NaN weight of `net` is not an input it reads)
    Case(seeded, lambda seed, dtype: {'net': mlp(bn=True), 'seed': seed, 'dtype': dtype}),
    Case(model_layers, lambda seed, dtype: {'model': mlp(seed=seed, dtype=dtype)}),   # reads no weight values
    Case(linearization_memory,                                       # sizes only: meta-device skeletons are welcome
         lambda seed, dtype: {'model': cnn(seed=seed, dtype=dtype, side=4), 'input_shape': (1, 4, 4), 'layer': None}),
    Case(two_stage, _two_stage, floats=('x',), models=('model',), counts={'layer': 1}, empty={'x': 'ok'},
         grads=('x',), extreme=('x',)),
    Case(two_stage, lambda seed, dtype: {'model': cnn(seed=seed, dtype=dtype, side=4), 'x': rand(2, 1, 4, 4, seed=seed, dtype=dtype),
                                         'layer': 1},
         floats=('x',), models=('model',), id='two_stage-cnn'),     # pooling paths; other roles: the MLP case
    # propagate
    Case(propagate_moments, _propagate, floats=('mu', 'cov'), models=('model',), empty={'mu': 'ok'},
         grads=('mu', 'cov'), extreme=('mu', 'cov')),
    Case(propagate_moments, _propagate_lowrank, floats=('mu', 'cov'), models=('model',), counts={'rank': 0},
         empty={'mu': 'ok'}, extreme=('mu', 'cov'), id='propagate_moments-lowrank'),
    Case(propagate_moments, _propagate_cnn, floats=('mu', 'cov'), models=('model',), empty={'mu': 'ok'},
         grads=('mu',), extreme=('mu',), id='propagate_moments-cnn'),
    # tightness
    Case(relative_error, lambda seed, dtype: {'x': randn(4, 3, seed=seed, dtype=dtype), 'y': randn(3, seed=seed + 1, dtype=dtype)},
         floats=('x', 'y'), empty={'x': 'ok'}, grads=('x', 'y'), extreme=('x', 'y')),
    Case(random_covariance, lambda seed, dtype: {'n': 4, 'sigma': 0.5, 'generator': gen(seed), 'rank': 2, 'dtype': dtype},
         counts={'n': 1}),
    # a factor near the top of the range makes factor @ factor.mT overflow: refused (ValueError), so not `extreme`
    Case(_dense_factor, lambda seed, dtype: {'cov': randn(2, 4, 3, seed=seed, dtype=dtype),
                                             'diag': rand(4, seed=seed + 1, dtype=dtype)},
         floats=('cov',), empty={'cov': 'ok'}, grads=('cov', 'diag'), covers=(dense,), id='dense-factor'),
    Case(_dense_diag, lambda seed, dtype: {'factor': randn(4, 3, seed=seed, dtype=dtype),
                                           'cov': rand(2, 4, seed=seed + 1, dtype=dtype)},
         floats=('cov',), empty={'cov': 'ok'}, grads=('factor', 'cov'), extreme=('cov',), covers=(dense,), id='dense-diag'),
    # extreme images: a Monte Carlo moment beyond the range is refused (ValueError) by E_r, so not `extreme`
    Case(tightness_table, _tightness, floats=('images',), models=('model',), counts={'layer': 1, 'n_mc': 2},
         empty={'images': 'ok'}, dtypes=(f64,)),     # the analytic side is float64 by design, and so is the table
    # synthetic
    Case(regime_covariances, lambda seed, dtype: {'n': 3, 'regime': 'medium', 'count': 2, 'generator': gen(seed),
                                                  'dtype': dtype},
         counts={'n': 1, 'count': 0}),
    Case(fit_slope, _fit_slope, floats=('x', 'y'), empty={'x': 'raise', 'y': 'raise'}, extreme=('x', 'y'),
         output=_slope_values),
    Case(analytic_vs_mc, _analytic_vs_mc, floats=('covs',), models=('net',), counts={'layer': 1, 'n_mc': 2, 'chunk': 1},
         empty={'covs': 'ok'}, extreme=('covs',), dtypes=(f64,)),     # computed in float64 by design: the net is converted
    Case(linearization_error, _linearization_error, floats=('images',), models=('net',), counts={'draws': 1, 'rows': 1},
         empty={'images': 'raise'}),
    # centers
    Case(nearest_center, lambda seed, dtype: {'x': randn(5, 2, 2, seed=seed, dtype=dtype),
                                              'centers': randn(3, 2, 2, seed=seed + 1, dtype=dtype), 'chunk': 2},
         floats=('x', 'centers'), counts={'chunk': 1}, empty={'x': 'ok', 'centers': 'raise'}, grads=('x', 'centers'),
         extreme=('x', 'centers')),
    Case(kmeans, _kmeans, floats=('x',), counts={'k': 1, 'iters': 1, 'chunk': 1}, empty={'x': 'raise'}, grads=('x',),
         extreme=('x',)),
    Case(kmeans, _kmeans_init, floats=('x', 'init'), empty={'x': 'raise'}, grads=('x',), extreme=('x', 'init'),
         id='kmeans-init'),
    Case(farthest_members, _farthest, floats=('x', 'centers'), classes={'assignments': 2}),
    Case(_cache_moments, _cache, floats=('centers', 'x', 'cov'), models=('model',), counts={'layer': 1, 'chunk': 1},
         empty={'x': 'ok'}, grads=('x', 'cov'), extreme=('centers', 'x', 'cov'), covers=(LinearizationCache,),
         id='LinearizationCache'),
    Case(_cache_farthest, _cache_far, floats=('x', 'centers'), models=('model',), classes={'assignments': 2},
         extreme=('x', 'centers'), id='LinearizationCache.farthest'),
    Case(centers_tightness, _centers_tightness, floats=('images',), models=('model',), counts={'n_mc': 2},
         dtypes=(f64,)),     # float64 linearizations and tables, as tightness_table
]

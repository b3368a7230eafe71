"Fuzz cases for `netmoments.attacks`, `netmoments.survival`, `netmoments.minimal` and `netmoments.robustness`."
import math

import torch

from helpers import Case, cnn, mlp, rand, randn, spd
from netmoments.attacks import (ExpectedLogits, class_margin, expected_logits, from_paper_units, gaussian_sparse_pixels,
                                gaussian_sparse_smooth, gaussian_targeted, gradient_perturbation, lp_perturbation,
                                sample_success, sparsity, total_variation)
from netmoments.minimal import MinimalPerturbation, as_float64, min_over, minimal_l2, predict, ray_search, strongest
from netmoments.robustness import (minimum_perturbations, misclassification_rate, noise_robustness,
                                   predicted_misclassification)
from netmoments.survival import (analytic_logits, cantelli_survival, fooling_map, margin_moments, noise_survival,
                                 noise_survival_mc, orthant_probability, survival_grid, topk_agreement,
                                 universal_perturbation)

f64 = torch.float64
EXEMPT = {}


def _net(seed, dtype):
    "A 6-8-3 ReLU network with batch norm: a forward pass in training mode would move its running statistics."
    return mlp((6, 8, 3), seed=seed, dtype=dtype, bn=True)


def _pred(model, x):
    with torch.no_grad(): return model.eval()(x).argmax(-1)


# ---------------------------------------------------------------------------------------------------------------------
# attacks

def _paper(seed, dtype): return {'value': rand(4, seed=seed, dtype=dtype, high=255.), 'power': 1 + seed % 2}


def _expected(seed, dtype, method='linearize'):
    "mu per pixel (6,) and one sigma (): they broadcast over any batch of M, an empty one included."
    return {'model': _net(seed, dtype), 'M': randn(3, 6, seed=seed + 1, dtype=dtype),
            'mu': randn(6, seed=seed + 2, dtype=dtype, scale=0.1),
            'sigma': rand((), seed=seed + 3, dtype=dtype, low=0.1, high=0.5), 'layer': 1, 'method': method}


def _expected_class(model, M, mu, sigma, layer=None, method='linearize'):
    return ExpectedLogits(model, M, layer, method)(mu, sigma)


def _margin(seed, dtype):
    return {'logits': randn(4, 3, seed=seed, dtype=dtype), 'c': torch.arange(4) % 3}


def _sample(seed, dtype):
    model, M = _net(seed, dtype), randn(3, 6, seed=seed + 1, dtype=dtype)
    src = _pred(model, M)
    return {'model': model, 'M': M, 'mu': randn(3, 6, seed=seed + 2, dtype=dtype, scale=0.1),
            'sigma': rand(3, seed=seed + 3, dtype=dtype, low=0.1, high=0.5), 'source': src, 'target': (src + 1) % 3,
            'samples': 4, 'chunk': 8}


def _targeted(seed, dtype):
    model, M = _net(seed, dtype), randn(3, 6, seed=seed + 1, dtype=dtype)
    return {'model': model, 'M': M, 'target': (_pred(model, M) + 1) % 3, 'beta': 0.5, 'steps': 3, 'samples': 2,
            'relinearize': 0}


def _pixels(seed, dtype):
    return {'model': _net(seed, dtype), 'M': randn(3, 6, seed=seed + 1, dtype=dtype), 'alpha': 50., 'beta': 0.5,
            'steps': 3, 'samples': 2, 'relinearize': seed % 2}


def _smooth(seed, dtype):
    return {'model': cnn(3, seed=seed, dtype=dtype, side=4), 'M': rand(2, 1, 4, 4, seed=seed + 1, dtype=dtype),
            'gamma': 0.1, 'steps': 5, 'samples': 2, 'relinearize': seed % 2}


def _tv(seed, dtype): return {'mu': randn(2, 1, 4, 5, seed=seed, dtype=dtype)}


def _sparsity(seed, dtype):
    mu = randn(3, 7, seed=seed, dtype=dtype)
    return {'mu': torch.where(mu.abs() < 0.5, 0., mu)}


def _lp(seed, dtype):
    return {'g': randn(3, 5, seed=seed, dtype=dtype), 'sigma': rand((), seed=seed + 1, dtype=dtype, low=0.1, high=2.),
            'p': (1, 1.5, 2, 3, math.inf)[seed % 5]}


def _grad_pert(seed, dtype):
    model = _net(seed, dtype)
    return {'model': model, 'x': randn(3, 6, seed=seed + 1, dtype=dtype), 'y': torch.arange(3) % 3,
            'sigma': rand(3, seed=seed + 2, dtype=dtype, low=0.1, high=1.), 'p': (1, 2, math.inf)[seed % 3]}


# ---------------------------------------------------------------------------------------------------------------------
# survival

def _moments(seed, dtype):
    return {'mean': randn(4, 3, seed=seed, dtype=dtype), 'cov': spd(3, seed=seed + 1, dtype=dtype, batch=(4,)),
            'c': torch.arange(4) % 3}


def _orthant(seed, dtype):
    return {'mean': randn(2, 3, seed=seed, dtype=dtype), 'cov': spd(3, seed=seed + 1, dtype=dtype, batch=(2,)),
            'samples': 64, 'randomizations': 4}


def _cantelli(seed, dtype):
    "margin_var (3,) broadcasts over the batch of margin_mean."
    return {'margin_mean': randn(4, 3, seed=seed, dtype=dtype), 'margin_var': rand(3, seed=seed + 1, dtype=dtype,
                                                                                  low=0.1, high=2.)}


def _noise(seed, dtype):
    "sigma and shift per pixel (6,): they broadcast over any batch of x."
    return {'model': _net(seed, dtype), 'x': randn(3, 6, seed=seed + 1, dtype=dtype),
            'sigma': rand(6, seed=seed + 2, dtype=dtype, low=0.1, high=0.5),
            'shift': randn(6, seed=seed + 3, dtype=dtype, scale=0.1), 'layer': 1}


def _survival(seed, dtype):
    return {**_noise(seed, dtype), 'method': ('gaussian', 'cantelli')[seed % 2], 'samples': 32, 'chunk': 4}


def _survival_mc(seed, dtype):
    kw = _noise(seed, dtype)
    del kw['layer']
    return {**kw, 'samples': 20, 'chunk': 16}


def _grid(seed, dtype):
    return {'model': _net(seed, dtype), 'x': randn(3, 6, seed=seed + 1, dtype=dtype),
            'sigmas': rand(1, seed=seed + 2, dtype=dtype, low=0.1, high=0.5), 'samples': 10, 'layer': 1}


def _universal(seed, dtype):
    return {'model': _net(seed, dtype), 'x': randn(3, 6, seed=seed + 1, dtype=dtype), 'xi': 1.,
            'p': (2, math.inf)[seed % 2], 'passes': 1, 'steps': 2}


def _analytic(seed, dtype): return {**_noise(seed, dtype), 'chunk': 2}


def _topk(seed, dtype):
    return {'a': randn(5, 4, seed=seed, dtype=dtype), 'b': randn(5, 4, seed=seed + 1, dtype=dtype), 'k': 2}


def _fooling(seed, dtype):
    return {'model': cnn(3, seed=seed, dtype=dtype, side=4), 'x': rand(2, 1, 4, 4, seed=seed + 1, dtype=dtype),
            'sigma': 0.3, 'window': 2, 'layer': 1, 'chunk': 2}


# ---------------------------------------------------------------------------------------------------------------------
# minimal

def _verified(r:MinimalPerturbation):
    "The float64 fields of a MinimalPerturbation are float64 whatever the input dtype: check them here, return the rest."
    for t in (r.perturbation, r.norm):
        assert t.dtype == f64 and not torch.isnan(t).any(), 'perturbation and norm must be NaN-free float64'
    return r.success, r.label


def _scales(t):
    "ray_search returns float64 scales whatever the input dtype: check them here (inf marks a ray with none)."
    assert t.dtype == f64 and not torch.isnan(t).any(), 'scales must be NaN-free float64'
    return ()


def _as64(seed, dtype): return {'model': _net(seed, dtype)}


def _predict(seed, dtype): return {'model64': _net(seed, f64), 'x': randn(3, 6, seed=seed + 1, dtype=f64)}


def _ray(seed, dtype):
    model, x = _net(seed, dtype), randn(3, 6, seed=seed + 1, dtype=dtype)
    return {'model': model, 'model64': as_float64(model), 'x': x, 'u': randn(3, 6, seed=seed + 2, dtype=dtype),
            'hi': rand(3, seed=seed + 3, dtype=dtype, low=1., high=5.), 'label': _pred(model, x), 'steps': 5}


def _minimal(seed, dtype):
    return {'model': _net(seed, dtype), 'x': randn(3, 6, seed=seed + 1, dtype=dtype),
            'method': ('fgs', 'fgv', 'deepfool', 'ddn')[seed % 4], 'steps': 4, 'ray_steps': 4, 'batch_size': 2}


def _strongest(seed, dtype):
    return {'model': _net(seed, dtype), 'x': randn(3, 6, seed=seed + 1, dtype=dtype), 'methods': ('deepfool',),
            'steps': 3, 'ray_steps': 3}


def _min_over(seed, dtype):
    def one(s):
        eta = randn(3, 6, seed=s, dtype=f64)
        ok = torch.tensor([True, s % 2 == 0, False])
        eta = torch.where(ok[:, None], eta, 0.)
        return MinimalPerturbation(eta, torch.where(ok, eta.norm(dim=1), torch.inf), ok, torch.arange(3) % 3)
    return {'results': [one(seed), one(seed + 1)]}


# ---------------------------------------------------------------------------------------------------------------------
# robustness

def _robust(seed, dtype):
    return {'model': _net(seed, dtype), 'x': rand(3, 6, seed=seed + 1, dtype=dtype),
            'sigmas': rand(3, seed=seed + 2, dtype=dtype, high=0.5), 'samples': 2, 'mode': 'label',
            'y': torch.arange(3) % 3, 'batch_size': 2}


def _rate(seed, dtype):
    return {'p_miss': rand((), seed=seed, dtype=dtype, high=0.5), 'mu_a': rand((), seed=seed + 1, dtype=dtype, high=2.),
            's_a': rand((), seed=seed + 2, dtype=dtype, low=0.1), 'sigma': rand(4, seed=seed + 3, dtype=dtype)}


def _min_pert(seed, dtype):
    "Labels as predicted: every point is correct, so no norm is the NaN that marks a misclassified point."
    model, x = _net(seed, dtype), randn(3, 6, seed=seed + 1, dtype=dtype)
    return {'model': model, 'x': x, 'y': _pred(model, x), 'max_norm': 5., 'steps': 10, 'bisections': 5}


def _misclassification(r):
    "NaN marks a misclassified point in `perturbations` (documented): exactly p_miss of them; check the rest as usual."
    assert int(r.perturbations.isnan().sum()) == round(float(r.p_miss) * len(r.perturbations)), 'NaN beyond the marker'
    return r.sigmas, r.predicted, r.measured, r.p_miss, r.mu_a, r.s_a, r.perturbations.nan_to_num(0.)


def _predicted(seed, dtype):
    "An affine classifier (batch norm, then Linear): along the loss gradient every prediction flips, so a fit exists."
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(6), torch.nn.Linear(6, 3)).to(dtype).eval()
    x = randn(6, 6, seed=seed + 1, dtype=dtype)
    y = _pred(model, x)
    y[0] = (y[0] + 1) % 3                      # one misclassified point: p_miss > 0
    return {'model': model, 'x': x, 'y': y, 'sigma': rand(2, seed=seed + 2, dtype=dtype, high=0.5), 'max_norm': 50.,
            'steps': 8, 'draws': 1}


CASES = [
    # attacks
    Case(from_paper_units, _paper, floats=('value',), inf_ok=('value',), empty={'value': 'ok'}, counts={'power': 1},
         grads=('value',), extreme=('value',)),
    Case(expected_logits, _expected, floats=('M', 'mu', 'sigma'), empty={'M': 'ok'}, models=('model',),
         grads=('mu', 'sigma'), extreme=('M', 'mu', 'sigma')),
    Case(expected_logits, lambda s, d: _expected(s, d, 'propagate'), floats=('M', 'mu', 'sigma'), empty={'M': 'ok'},
         models=('model',), grads=('mu', 'sigma'), extreme=('M', 'mu'), id='expected_logits-propagate'),
    Case(_expected_class, _expected, floats=('M', 'mu', 'sigma'), empty={'M': 'ok'}, models=('model',),
         grads=('mu', 'sigma'), covers=(ExpectedLogits,), id='ExpectedLogits'),
    Case(class_margin, _margin, floats=('logits',), classes={'c': 3}, grads=('logits',), extreme=('logits',)),
    Case(sample_success, _sample, floats=('M', 'mu', 'sigma'), counts={'samples': 1, 'chunk': 1},
         classes={'source': 3, 'target': 3}, models=('model',), extreme=('M', 'mu', 'sigma')),
    Case(gaussian_targeted, _targeted, floats=('M',), counts={'steps': 0, 'samples': 1, 'relinearize': 0},
         classes={'target': 3}, models=('model',)),   # extreme M would move the predictions the targets avoid
    Case(gaussian_sparse_pixels, _pixels, floats=('M',), empty={'M': 'ok'},
         counts={'steps': 0, 'samples': 1, 'relinearize': 0}, models=('model',), extreme=('M',)),
    Case(gaussian_sparse_smooth, _smooth, floats=('M',), empty={'M': 'ok'},
         counts={'steps': 1, 'samples': 1, 'relinearize': 0}, models=('model',), extreme=('M',)),
    Case(total_variation, _tv, floats=('mu',), empty={'mu': 'ok'}, grads=('mu',), extreme=('mu',)),
    Case(sparsity, _sparsity, floats=('mu',), inf_ok=('mu',), empty={'mu': 'ok'}, extreme=('mu',)),
    Case(lp_perturbation, _lp, floats=('g', 'sigma'), empty={'g': 'ok'}, grads=('g', 'sigma'),
         extreme=('g', 'sigma')),
    Case(gradient_perturbation, _grad_pert, floats=('x', 'sigma'), classes={'y': 3}, models=('model',),
         extreme=('x', 'sigma')),
    # survival
    Case(margin_moments, _moments, floats=('mean', 'cov'), classes={'c': 3}, grads=('mean', 'cov'),
         extreme=('mean', 'cov')),
    Case(orthant_probability, _orthant, floats=('mean', 'cov'), inf_ok=('mean',),
         counts={'samples': 1, 'randomizations': 2}, grads=('mean', 'cov'), extreme=('mean', 'cov')),
    Case(cantelli_survival, _cantelli, floats=('margin_mean', 'margin_var'), inf_ok=('margin_mean',),
         empty={'margin_mean': 'ok'}, grads=('margin_mean', 'margin_var'), extreme=('margin_mean', 'margin_var')),
    Case(noise_survival, _survival, floats=('x', 'sigma', 'shift'), empty={'x': 'ok'},
         counts={'samples': 1, 'chunk': 1}, models=('model',), grads=('sigma', 'shift'),
         extreme=('x', 'sigma', 'shift')),
    Case(noise_survival_mc, _survival_mc, floats=('x', 'sigma', 'shift'), empty={'x': 'ok'},
         counts={'samples': 2, 'chunk': 1}, models=('model',), extreme=('x', 'sigma', 'shift')),
    Case(survival_grid, _grid, floats=('x', 'sigmas'), empty={'x': 'ok', 'sigmas': 'raise'},
         counts={'samples': 2}, models=('model',), extreme=('x', 'sigmas')),
    Case(universal_perturbation, _universal, floats=('x',), empty={'x': 'raise'}, counts={'passes': 1, 'steps': 1},
         models=('model',), extreme=('x',)),
    Case(analytic_logits, _analytic, floats=('x', 'sigma', 'shift'), empty={'x': 'ok'},
         counts={'chunk': 1}, models=('model',), grads=('sigma', 'shift'),
         extreme=('x', 'sigma', 'shift')),
    Case(topk_agreement, _topk, floats=('a', 'b'), inf_ok=('a', 'b'), empty={'a': 'raise'}, counts={'k': 1},
         extreme=('a', 'b')),
    Case(fooling_map, _fooling, floats=('x',), empty={'x': 'ok'}, counts={'window': 1, 'chunk': 1},
         models=('model',), extreme=('x',)),
    # minimal
    Case(as_float64, _as64, models=('model',)),
    Case(predict, _predict, floats=('x',), empty={'x': 'ok'}, models=('model64',), extreme=('x',), dtypes=(f64,)),
    Case(ray_search, _ray, floats=('x', 'u', 'hi'), inf_ok=('hi',), counts={'steps': 0}, classes={'label': 3},
         models=('model', 'model64'), extreme=('x', 'u', 'hi'), output=_scales),
    Case(minimal_l2, _minimal, floats=('x',), empty={'x': 'ok'}, counts={'steps': 1, 'ray_steps': 1, 'batch_size': 1},
         models=('model',), extreme=('x',), output=_verified),
    Case(strongest, _strongest, floats=('x',), empty={'x': 'ok'}, counts={'steps': 1, 'ray_steps': 1},
         models=('model',), output=_verified),
    Case(min_over, _min_over, empty={'results': 'raise'}, dtypes=(f64,), output=_verified),
    # robustness
    Case(noise_robustness, _robust, floats=('x', 'sigmas'), empty={'x': 'raise', 'sigmas': 'raise'},
         counts={'samples': 1, 'batch_size': 1}, classes={'y': 3}, models=('model',), extreme=('x', 'sigmas')),
    Case(misclassification_rate, _rate, floats=('p_miss', 'mu_a', 's_a', 'sigma'), empty={'sigma': 'ok'},
         grads=('p_miss', 'mu_a', 's_a', 'sigma'), extreme=('mu_a', 's_a', 'sigma')),
    Case(minimum_perturbations, _min_pert, floats=('x',), counts={'steps': 1, 'bisections': 0}, classes={'y': 3},
         models=('model',)),
    Case(predicted_misclassification, _predicted, floats=('x', 'sigma'), empty={'x': 'raise'},
         counts={'steps': 1, 'draws': 1}, classes={'y': 3}, models=('model',), output=_misclassification),
]

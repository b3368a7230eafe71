"Fuzz cases for `netmoments.bounds`, `netmoments.bound_experiments`, `netmoments.regularizers` and `netmoments.train`."
import torch
from torch import nn

from helpers import Case, cnn, f32, f64, gen, mlp, rand, randn
from netmoments.bound_experiments import (CNN_ROWS, LRN_COLUMNS, check_bounds, cnn_table, lenet_lrn, margin_delta,
                                          penalty_curve, show_cnn, show_lrn, small_cnn, tanh_mlp, train_classifier,
                                          uci_split)
from netmoments.bounds import (algorithm41, conv_spectral_norm, derivative_bounds, linear_bound, lipschitz_margin_bound,
                               mlp_bound, network_bound, pool_lipschitz, random_mlp, tight_example)
from netmoments.regularizers import (AdversarialLoss, GaussianMomentLoss, GradientNormLoss, adversarial_examples,
                                     analytic_expected_logits, first_layer_moments, noisy_augmentation)
from netmoments.train import cross_entropy_loss, fit, step_costs, step_schemes, training_scheme

EXEMPT = {'bound_experiments.lrn_table': 'an experiment that trains four LeNets on MNIST (about a minute at the '
                                         'smallest size); its counts are refused before any work, checked in its chapter'}


def _labels(n, classes, seed): return torch.randint(0, classes, (n,), generator=gen(seed))


def _params(model): return list(model.parameters())


# A `seed` argument cannot take the counts role (test_bad_count_is_refused passes its own `seed` to the case), so the
# seeds of tanh_mlp, uci_split, penalty_curve, small_cnn, lenet_lrn, fit and step_costs are checked in
# tests/test_bounds.py and tests/test_train.py.

# ---------------------------------------------------------------------------------------------------------------------
# bounds: the bounds are computed and returned in float64 whatever the input's dtype (a certificate is not rounded to
# float32), so the cases that return a bound run in float64 only; tests/test_bounds.py checks float32 inputs and
# refuses a float32 model with float64 inputs.

def _Wbx(seed, dtype):
    return {'W': randn(3, 4, seed=seed, dtype=dtype), 'b': randn(3, seed=seed + 1, dtype=dtype),
            'x': randn(5, 4, seed=seed + 2, dtype=dtype)}


def _mlp_x(seed, dtype):
    return {'model': mlp((4, 5, 3), seed=seed, dtype=dtype), 'x': randn(3, 4, seed=seed + 1, dtype=dtype)}


def _cnn_x(seed, dtype):
    return {'model': cnn(3, seed=seed, dtype=dtype), 'x': rand(2, 1, 8, 8, seed=seed + 1, dtype=dtype)}


def _conv(seed, dtype):
    torch.manual_seed(seed)
    return {'conv': nn.Conv2d(1, 2, 3, padding=1).to(dtype), 'input_shape': (1, 6, 6), 'method': 'power', 'iters': 5,
            'generator': gen(seed)}


def _pool(seed, dtype): return {'m': nn.MaxPool2d(2, stride=1 + seed % 2), 'input_shape': (2, 6, 5)}


def _random_mlp(seed, dtype):
    return {'sizes': (3, 4, 2), 'generator': gen(seed), 'dtype': dtype, 'low': -0.5, 'high': 0.5}


# ---------------------------------------------------------------------------------------------------------------------
# bound_experiments

def _out_h(seed, dtype):
    torch.manual_seed(seed)
    return {'out': nn.Linear(4, 3).to(dtype), 'h': randn(5, 4, seed=seed, dtype=dtype)}


def _train_cls(seed, dtype):
    return {'net': mlp((4, 5, 3), seed=seed, dtype=dtype), 'x': randn(6, 4, seed=seed, dtype=dtype),
            'y': _labels(6, 3, seed), 'x_val': randn(4, 4, seed=seed + 1, dtype=dtype), 'y_val': _labels(4, 3, seed + 1),
            'epochs': 1, 'batch_size': 4, 'penalty': 0.1, 'generator': gen(seed)}


def _check_bounds(seed, dtype):
    return {'net': tanh_mlp((4, 5, 3), seed), 'x': randn(2, 4, seed=seed, dtype=dtype), 'steps': 1, 'eps_max': 2.}


def _cnn_table(seed, dtype):
    net = cnn(3, seed=seed, dtype=dtype, side=4)
    with torch.no_grad(): net[0].weight.abs_(), net[0].bias.abs_()     # no dead ReLU: the attacks have a gradient
    return {'net': net, 'x': rand(2, 1, 4, 4, seed=seed, dtype=dtype), 'eps_cap': 0.5, 'steps': 1, 'batch_size': 2}


def _cnn_result(seed, dtype): return {'name': 'net', 't': {'n': 3, **{k: 0.5 + seed for k in CNN_ROWS}}, 'scale': 255}


def _lrn_rows(seed, dtype):
    return {'rows': {'LeNet': {**{c: 0.25 + seed for c in LRN_COLUMNS}, 'peck': 1e-6, 'peck_above_fgs': 0}}}


# ---------------------------------------------------------------------------------------------------------------------
# regularizers and train: a batch of 4 six-feature inputs, 3 classes, a net whose first block is Linear, eval-mode
# BatchNorm, ReLU

def _moments(seed, dtype):
    return {'model': mlp((6, 5, 3), seed=seed, dtype=dtype, bn=True), 'x': randn(4, 6, seed=seed, dtype=dtype),
            'sigma': rand(6, seed=seed + 1, dtype=dtype, low=0.1, high=0.5)}


def _batch(seed, dtype, bn=True):
    return {'model': mlp((6, 5, 3), seed=seed, dtype=dtype, bn=bn), 'x': randn(4, 6, seed=seed, dtype=dtype),
            'y': _labels(4, 3, seed)}


def gaussian_moment_loss(model, x, y, sigma, alpha=1.):
    "GaussianMomentLoss(sigma, alpha)(model, x, y)."
    return GaussianMomentLoss(sigma, alpha)(model, x, y)


def gradient_norm_loss(model, x, y, sigma=0.1, p=2):
    "GradientNormLoss(sigma, p)(model, x, y)."
    return GradientNormLoss(sigma, p)(model, x, y)


def adversarial_loss(model, x, y, eps=0.1, p=2, weight=0.5):
    "AdversarialLoss(eps, p, weight)(model, x, y)."
    return AdversarialLoss(eps, p, weight)(model, x, y)


def seeded_augmentation(x, y, sigma, folds, seed):
    "noisy_augmentation with a fresh generator seeded `seed`, so that repeated calls draw the same noise."
    return noisy_augmentation(x, y, sigma, folds, torch.Generator().manual_seed(seed))


def _augment(seed, dtype):
    return {'x': randn(4, 6, seed=seed, dtype=dtype), 'y': _labels(4, 3, seed), 'folds': 3, 'seed': seed,
            'sigma': rand(6, seed=seed + 1, dtype=dtype, low=0.1, high=0.5)}


def fit_xy(model, x, y, val, val_y, **kw):
    "fit(model, (x, y), (val, val_y), progress=False, ...)."
    return fit(model, (x, y), (val, val_y), progress=False, **kw)


def _fit(seed, dtype):
    return {**_batch(seed, dtype, bn=False), 'val': randn(3, 6, seed=seed + 1, dtype=dtype), 'val_y': _labels(3, 3, seed + 1),
            'epochs': 1, 'batch_size': 3, 'lr_patience': 1, 'patience': 1, 'seed': seed}


def _step_costs(seed, dtype):
    return {'model_fn': lambda: mlp((6, 5, 3), seed=seed, dtype=dtype), 'schemes': {'vanilla': cross_entropy_loss},
            'x': randn(4, 6, seed=seed, dtype=dtype), 'y': _labels(4, 3, seed), 'rounds': 1, 'steps': 1, 'seed': seed}


CASES = [
    # bounds
    Case(linear_bound, _Wbx, floats=('W', 'b', 'x'), empty={'x': 'raise'}, grads=('W', 'b', 'x'),
         extreme=('W', 'b', 'x')),
    Case(tight_example, lambda seed, dtype: {'x': randn(4, 3, seed=seed, dtype=dtype)}, floats=('x',),
         empty={'x': 'raise'}, grads=('x',), extreme=('x',)),
    Case(derivative_bounds, lambda seed, dtype: {'act': [nn.Tanh(), nn.Sigmoid(), nn.Softplus(2.), nn.ReLU()][seed % 4],
                                                 'relu_second': 0.5}),
    Case(algorithm41, lambda seed, dtype: {'model': mlp((4, 5, 3), seed=seed, dtype=dtype)}, models=('model',)),
    Case(random_mlp, _random_mlp, output=_params),
    Case(mlp_bound, _mlp_x, floats=('x',), empty={'x': 'raise'}, models=('model',), extreme=('x',), dtypes=(f64,)),
    Case(network_bound, _cnn_x, floats=('x',), empty={'x': 'raise'}, models=('model',), dtypes=(f64,)),
    Case(lipschitz_margin_bound, _cnn_x, floats=('x',), empty={'x': 'raise'}, models=('model',), extreme=('x',),
         dtypes=(f64,)),
    Case(conv_spectral_norm, _conv, models=('conv',), counts={'iters': 1}),
    Case(pool_lipschitz, _pool),
    # bound_experiments
    Case(margin_delta, _out_h, floats=('h',), empty={'h': 'ok'}, models=('out',), grads=('h',), extreme=('h',)),
    Case(train_classifier, _train_cls, floats=('x', 'x_val'), empty={'x': 'raise', 'x_val': 'raise'},
         classes={'y': 3, 'y_val': 3}, counts={'epochs': 1, 'batch_size': 1}, models=('net',), trains=True,
         output=_params),
    Case(tanh_mlp, lambda seed, dtype: {'sizes': (4, 5, 3), 'seed': seed}, output=_params, dtypes=(f64,)),
    Case(uci_split, lambda seed, dtype: {'name': 'iris', 'seed': seed}, dtypes=(f64,)),
    Case(check_bounds, _check_bounds, floats=('x',), empty={'x': 'raise'}, counts={'steps': 1}, models=('net',),
         dtypes=(f64,)),
    Case(penalty_curve, lambda seed, dtype: {'name': 'iris', 'sizes': (4, 3, 3), 'penalties': (0.1,), 'epochs': 1,
                                             'seed': seed % 4},
         counts={'epochs': 1}, trains=True, dtypes=(f64,)),
    Case(cnn_table, _cnn_table, floats=('x',), empty={'x': 'raise'}, counts={'steps': 1, 'batch_size': 1},
         models=('net',)),
    Case(show_cnn, _cnn_result, dtypes=(f64,)),
    Case(small_cnn, lambda seed, dtype: {'seed': seed}, output=_params, dtypes=(f32,)),
    Case(lenet_lrn, lambda seed, dtype: {'where': [(), (1,), (2,), (1, 2)][seed % 4], 'seed': seed},
         output=_params, dtypes=(f32,)),
    Case(show_lrn, _lrn_rows, dtypes=(f64,)),
    # regularizers
    Case(first_layer_moments, _moments, floats=('x', 'sigma'), empty={'x': 'ok'}, models=('model',),
         grads=('x', 'sigma'), extreme=('x', 'sigma')),
    Case(analytic_expected_logits, _moments, floats=('x', 'sigma'), empty={'x': 'ok'}, models=('model',),
         grads=('x', 'sigma'), extreme=('x', 'sigma')),
    # a training loss runs the model in the model's own mode: a BatchNorm in training mode updates its statistics,
    # as in any training step, so the losses are `trains=True`
    Case(gaussian_moment_loss, lambda seed, dtype: {**_moments(seed, dtype), 'y': _labels(4, 3, seed)},
         floats=('x', 'sigma'), empty={'x': 'raise'}, classes={'y': 3}, models=('model',), trains=True,
         grads=('x', 'sigma'), extreme=('x', 'sigma'), covers=(GaussianMomentLoss,)),
    # the empty role empties x alone, which then differs from y in length: the empty batch of noisy_augmentation and
    # adversarial_examples (an empty result) is checked in tests/test_regularizers.py
    Case(seeded_augmentation, _augment, floats=('x', 'sigma'), counts={'folds': 1},
         grads=('x', 'sigma'), extreme=('x', 'sigma'), covers=(noisy_augmentation,)),
    # GradientNormLoss detaches x (the penalty is a function of the weights): no gradient in x to check
    Case(gradient_norm_loss, _batch, floats=('x',), empty={'x': 'raise'}, classes={'y': 3}, models=('model',),
         trains=True, extreme=('x',), covers=(GradientNormLoss,)),
    Case(adversarial_examples, lambda seed, dtype: {**_batch(seed, dtype), 'eps': 0.1, 'p': [1, 2, float('inf')][seed % 3]},
         floats=('x',), classes={'y': 3}, models=('model',), extreme=('x',)),
    # the adversarial points are a constant of the training step (detached, as in adversarial training): finite
    # differences in x move them too, the gradient does not, so only finiteness is checked
    Case(adversarial_loss, _batch, floats=('x',), empty={'x': 'raise'}, classes={'y': 3}, models=('model',),
         trains=True, grads=('x',), gradcheck=False, extreme=('x',), covers=(AdversarialLoss,)),
    # train
    Case(cross_entropy_loss, _batch, floats=('x',), empty={'x': 'raise'}, classes={'y': 3}, models=('model',),
         trains=True, grads=('x',), extreme=('x',)),
    Case(fit_xy, _fit, floats=('x', 'val'), empty={'x': 'raise', 'val': 'raise'}, classes={'y': 3},
         counts={'epochs': 1, 'batch_size': 1, 'lr_patience': 1, 'patience': 1}, models=('model',),
         trains=True, output=lambda r: _params(r.model), covers=(fit,)),
    Case(step_costs, _step_costs, floats=('x',), empty={'x': 'raise'}, classes={'y': 3},
         counts={'rounds': 1, 'steps': 1}, trains=True),
    Case(step_schemes, lambda seed, dtype: {'sigma': 0.1 * (seed % 5), 'alpha': 1., 'folds': (2, 3)}, dtypes=(f64,)),
    Case(training_scheme, lambda seed, dtype: {'kind': 'augment', 'sigma': 0.1 * (seed % 5), 'level': 1 + seed % 6},
         counts={'level': 1}, dtypes=(f64,)),
]

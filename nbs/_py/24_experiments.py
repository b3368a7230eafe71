# %% [markdown]
# # The papers' experiments as grids
# > The registered experiments of `netmoments run`: each table and figure at the paper's size, split into independent units

# %%
#| default_exp experiments

# %% [markdown]
# Each experiment below is a grid for the [runner](23_runner.ipynb): its default preset is the paper's full grid, and
# a named reduced preset is what this machine (two CPU cores) can run; the merged results live in `data/results/` and
# the chapters that reproduce the papers read them from there. Every unit function imports what it needs when it runs,
# so listing the grids costs nothing.

# %%
#| export
from __future__ import annotations
import math
from netmoments.runner import Experiment, register, EXPERIMENTS

# %%
#| hide
import os, shutil, tempfile
import torch
from fastcore.test import test_eq, test_fail, test_close
from netmoments.bound_experiments import cnn_table
from netmoments.centers import kmeans
from netmoments.core import Table
from netmoments.data import load
from netmoments.models import pretrained
from netmoments.synthetic import TABLE1_AMPLITUDES
from netmoments.runner import run_unit
from netmoments.synthetic import AnalyticVsMC

# %% [markdown]
# ## Robust training: Alfadly et al. (2019), Figs. 3-4
# One unit trains one LeNet on the full training set of MNIST or Fashion-MNIST (10% held out for validation) with the
# recipe of [Alfadly et al. (2019)](99_references.ipynb#alfadly2019), Table 1 (Adam, learning rate $10^{-4}$, batches
# of 1000, the rate cut by 0.9 after 3 epochs without improvement, early stopping after 10, the best validation
# checkpoint kept), in one of three ways: plain (the baseline), with the moment regularizer at training noise
# $\sigma_x$ and weight $\alpha$ ([Gaussian-robust training losses](19_regularizers.ipynb)), or on $\tilde N$-fold
# noisy augmentation at $\sigma_x$. It then measures the clean test accuracy on the 10,000 test images and the
# robustness $\mathcal R$ of eq. 6 over 30 noise levels in $[0, 0.5]$ ([Robustness to Gaussian noise](20_robustness.ipynb)).
#
# - `paper`: the published grid: the baseline, $\tilde N \in \{2, 6, 11, 21\}$ at
#   $\sigma_x \in \{0.125, 0.25, 0.325, 0.5, 1\}$, and $\alpha \in \{0.5, 1, 1.5, 2, 5, 10, 20\}$ at those and
#   $\sigma_x \in \{2, 5, 10, 20\}$, up to 100 epochs; the network is the paper's LeNet (two 5x5 convolutions with 32
#   and 64 channels and padding 2, each followed by max-pooling and then ReLU, a hidden layer of 1024 on the
#   $7 \cdot 7 \cdot 64 = 3136$ features, no dropout).
# - `cpu`: what two CPU cores can run in a few sittings: the baseline, the regularizer at three $\sigma_x$ and two
#   $\alpha$, augmentation $\tilde N \in \{2, 6\}$ at the same $\sigma_x$, at most 10 epochs, on the moment papers'
#   smaller LeNet ([Trained models](08_models.ipynb)), whose forward pass costs about a sixth of the paper's.

# %%
#| export
ROBUST_SIGMAS = (0.125, 0.25, 0.325, 0.5, 1.)                       # training noise levels, Alfadly et al. 2019
ROBUST_ALPHAS = (0.5, 1., 1.5, 2., 5., 10., 20.)
ROBUST_FOLDS = (2, 6, 11, 21)

def paper_lenet(generator=None):
    "LeNet of Alfadly et al. 2019 on MNIST: conv 32 and 64 (5x5, padding 2), each max-pool then ReLU, fc 3136-1024-10."
    import torch
    from torch import nn
    if generator is not None: torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
    return nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(),
                         nn.Conv2d(32, 64, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(3136, 1024), nn.ReLU(), nn.Linear(1024, 10))

def _robust_grid(preset):
    if preset == 'paper':
        arch, epochs = 'paper', 100
        configs = ([('baseline', 0., 0)] + [('augment', s, n) for n in ROBUST_FOLDS for s in ROBUST_SIGMAS] +
                   [('regularizer', s, a) for a in ROBUST_ALPHAS for s in ROBUST_SIGMAS + (2., 5., 10., 20.)])
    else:
        arch, epochs = 'lenet', {'cpu': 10, 'tiny': 1}[preset]
        sigmas, alphas = (0.125, 0.25, 0.5), (1., 5.)
        configs = ([('baseline', 0., 0)] + [('regularizer', s, a) for a in alphas for s in sigmas] +
                   [('augment', s, n) for n in (2, 6) for s in sigmas])
    datasets = ('mnist', 'fashion-mnist')
    limit = {'paper': None, 'cpu': None, 'tiny': 600}[preset]
    return [{'dataset': d, 'kind': k, 'sigma': s, 'level': lv, 'arch': arch, 'epochs': epochs, 'limit': limit,
             'seed': 0} for d in datasets for k, s, lv in configs]

def robust_training_unit(p:dict)->dict:
    "Train one LeNet as `p` says (baseline, regularizer or augmentation), then measure clean accuracy and robustness."
    import time, torch
    from netmoments.data import load
    from netmoments.models import lenet
    from netmoments.robustness import noise_robustness
    from netmoments.train import fit, training_scheme
    device = p.get('device', 'cuda' if torch.cuda.is_available() else 'cpu')
    train = load(p['dataset'], 'train', limit=p['limit'])
    test = load(p['dataset'], 'test', limit=p['limit'])
    g = torch.Generator().manual_seed(p['seed'])
    net = (paper_lenet(g) if p['arch'] == 'paper' else lenet(g)).to(device)
    loss, augment = training_scheme(p['kind'], p['sigma'], p['level'])
    start = time.perf_counter()
    res = fit(net, (train.x, train.y), loss=loss, augment=augment, epochs=p['epochs'], lr=1e-4, batch_size=1000,
              seed=p['seed'], device=device, progress=False)
    seconds = time.perf_counter() - start
    x, y = test.x.to(device), test.y.to(device)
    with torch.no_grad():
        acc = torch.cat([res.model(b).argmax(1) for b in x.split(1000)]).eq(y).double().mean().item()
    rob = noise_robustness(res.model, x, seed=p['seed'])
    return {'accuracy': acc, 'robustness': rob.mean.item(), 'robustness_curve': rob.robustness.tolist(),
            'sigmas': rob.sigmas.tolist(), 'epochs': len(res.history), 'best_epoch': res.best_epoch,
            'train_seconds': seconds, 'val_accuracy': max(h['val_accuracy'] for h in res.history)}

def _robust_merge(params, results):
    return {'rows': [{**p, **{k: v for k, v in r.items() if k not in ('robustness_curve', 'sigmas')}}
                     for p, r in zip(params, results)],
            'sigmas': results[0]['sigmas'], 'curves': [r['robustness_curve'] for r in results]}

def _robust_cost(p):
    per_epoch = {'lenet': 80., 'paper': 500.}[p['arch']] * (1 if p['limit'] is None else p['limit'] / 54000)
    factor = {'baseline': 1., 'regularizer': 2.3, 'augment': 1. + p['level']}[p['kind']]
    return per_epoch * factor * p['epochs']

ROBUST_TRAINING = register(Experiment(
    'robust-training', _robust_grid, robust_training_unit, _robust_merge,
    presets={'paper': 'the published grid (84 settings x 2 data sets), the paper\'s LeNet, <= 100 epochs',
             'cpu': '13 settings x 2 data sets, the moment papers\' LeNet, <= 10 epochs',
             'tiny': '13 settings x 2 data sets on 600 images, 1 epoch (a test of the grid)'},
    description='Alfadly et al. 2019, Figs. 3-4: accuracy against robustness for the regularizer and augmentation',
    cost=_robust_cost, gpus=0.))

# %%
test_eq(len(ROBUST_TRAINING.units('paper')), 2 * (1 + 20 + 63))
test_eq(len(ROBUST_TRAINING.units('cpu')), 26)
test_eq(paper_lenet()(torch.zeros(2, 1, 28, 28)).shape, (2, 10))
test_eq(paper_lenet()[6:8](torch.zeros(1, 64, 7, 7)).shape, (1, 1024))

# %% [markdown]
# One unit of the `tiny` preset, to see that it runs (600 images, one epoch: the numbers mean nothing):

# %%
rec = run_unit('robust-training', ROBUST_TRAINING.units('tiny')[1])
assert 0 <= rec['result']['accuracy'] <= 1 and len(rec['result']['robustness_curve']) == 30
{k: rec['result'][k] for k in ('accuracy', 'robustness', 'epochs', 'train_seconds')}

# %% [markdown]
# ## Tightness on LeNet and MNIST: Alfadly et al. (2020), Table 2, and Bibi et al. (2018), Table 1
# One unit runs `tightness_table` ([Tightness on LeNet and MNIST](11_tightness.ipynb)) on one block of consecutive
# MNIST test images at one noise level $\sigma$: the bundled LeNet linearized in two stages at $l = 3$ around each
# image, one random covariance of trace $\sigma^2 \cdot 784$ per image, the analytic mean and the old (zero-mean) and
# exact variances against Monte Carlo of the real network. It also takes the exact variance of the linearization with
# autograd's choice at tied max-pooling windows (`ties='first'`) against the same Monte Carlo runs (the covariances
# redrawn from the unit's seed, and checked to be the ones `tightness_table` used), and each image's Monte Carlo floor
# $0.8\,\mathrm{se}(\mathrm{var}_{MC})/\mathrm{var}_{MC}$. It returns, per image, $E_r$ averaged over the ten logits
# for each of these, and the sums over its images of the ratios Monte Carlo / analytic per logit (the statistics of
# [Bibi et al. (2018)](99_references.ipynb#bibi2018), Table 1). The merge averages per noise level, the columns of the
# chapter's table ([Alfadly et al. (2020)](99_references.ipynb#alfadly2020), Table 2), in the format of its saved
# full-size run, and gives the per-logit mean and standard deviation of each ratio.
#
# - `paper`: the 10,000 test images at each of $\sigma \in \{0.001, 0.01, 0.05, 0.1\}$, $10^4$ Monte Carlo samples,
#   in blocks of 50 images.
# - `cpu`: the first 1,000 test images at $\sigma = 0.01$ and the first 300 at each other level, $10^4$ samples.
# - `tiny`: two images per level, 500 samples (a test of the grid).

# %%
#| export
TIGHTNESS_SIGMAS = (0.001, 0.01, 0.05, 0.1)     # noise levels of Alfadly et al. 2020, Table 2
MNIST_TEST = 10_000                             # images in the MNIST test set

def _blocks(total, size):
    "Consecutive (start, stop) ranges of at most `size` covering range(total)."
    return [(a, min(a + size, total)) for a in range(0, total, size)]

def _tightness_grid(preset):
    images, n_mc, size = {'paper': (dict.fromkeys(TIGHTNESS_SIGMAS, MNIST_TEST), 10_000, 50),
                          'cpu': ({0.001: 300, 0.01: 1000, 0.05: 300, 0.1: 300}, 10_000, 50),
                          'tiny': (dict.fromkeys(TIGHTNESS_SIGMAS, 2), 500, 2)}[preset]
    return [{'sigma': s, 'start': a, 'stop': b, 'n_mc': n_mc, 'layer': 3, 'seed': 2018 + 100_000 * j + a}
            for j, s in enumerate(TIGHTNESS_SIGMAS) for a, b in _blocks(images[s], size)]


# %%
#| export
def tightness_unit(p:dict)->dict:
    "Per-image E_r (mean; old, exact, ties-first variance), MC floor and MC/analytic ratio sums, images [start, stop)."
    import copy, torch
    from netmoments.data import load
    from netmoments.linearize import AffineReluAffine, two_stage
    from netmoments.models import pretrained
    from netmoments.tightness import dense, random_covariance, relative_error, tightness_table
    net = pretrained('lenet-mnist')
    x = load('mnist', 'test', limit=p['stop']).x[p['start']:]
    net64, x64 = copy.deepcopy(net).double(), x.double()
    with torch.no_grad():
        lin = two_stage(net64, x64, p['layer'])
        t = tightness_table(net, x, p['sigma'], layer=p['layer'], n_mc=p['n_mc'], lin=lin,
                            generator=torch.Generator().manual_seed(p['seed']))
        gen = torch.Generator().manual_seed(p['seed'])      # tightness_table draws the covariances first
        S = torch.stack([dense(random_covariance(x[0].numel(), p['sigma'], gen)) for _ in range(len(x))])
        mu = x64.flatten(1)
        again = AffineReluAffine(*(v[:1] for v in lin)).moments(mu[:1], S[:1], method='exact', full=False).var
        if not torch.allclose(again, t.var_exact[:1], rtol=1e-12, atol=0):
            raise RuntimeError('the redrawn covariance is not the one tightness_table used')
        first = two_stage(net64, x64, p['layer'], ties='first').moments(mu, S, method='exact', full=False).var
    ratios = {'mean': t.mc_mean / t.mean, 'old': t.mc_var / t.var_old, 'exact': t.mc_var / t.var_exact}
    per_image = lambda v: v.mean(1).tolist()
    return {'er_mean': per_image(t.er_mean), 'er_old': per_image(t.er_old), 'er_exact': per_image(t.er_exact),
            'er_exact_first': per_image(relative_error(first, t.mc_var)),
            'floor': per_image(0.8 * t.mc_var_se / t.mc_var),
            'ratio_sum': {k: r.sum(0).tolist() for k, r in ratios.items()},
            'ratio_sumsq': {k: (r * r).sum(0).tolist() for k, r in ratios.items()}}


# %% [markdown]
# The cost of a unit, measured on one unit of the `cpu` preset and scaled: seconds per image for the two
# linearizations and the moments, and per Monte Carlo sample.

# %%
#| export
TIGHTNESS_COST = (2.4, 2.5e-4)   # seconds on one core: per image; per image and Monte Carlo sample

def _mean(values):
    return sum(values) / len(values)

def _mean_sd(total, sumsq, n):
    "Mean and sample standard deviation of n values from their sum and sum of squares."
    mean = total / n
    return [mean, math.sqrt(max(sumsq - n * mean * mean, 0.) / (n - 1)) if n > 1 else float('nan')]

_TIGHTNESS_COLUMNS = {'er_mean': 'mean', 'er_old': 'old', 'er_exact': 'exact', 'er_exact_first': 'exact_first',
                      'floor': 'floor'}

def _tightness_merge(params, results):
    rows, sums = {}, {}
    for p, r in zip(params, results):
        row = rows.setdefault(str(p['sigma']), {k: [] for k in _TIGHTNESS_COLUMNS})
        for k in row: row[k] += r[k]
        acc = sums.setdefault(str(p['sigma']), {k: [[0.] * 10, [0.] * 10] for k in r['ratio_sum']})
        for k, (total, sumsq) in acc.items():
            for i in range(10): total[i] += r['ratio_sum'][k][i]; sumsq[i] += r['ratio_sumsq'][k][i]
    count = {s: len(row['er_mean']) for s, row in rows.items()}
    return {'samples': params[0]['n_mc'],
            'rows': {s: {'images': count[s], **{_TIGHTNESS_COLUMNS[k]: _mean(v) for k, v in row.items()}}
                     for s, row in rows.items()},
            'ratios': {s: {k: [_mean_sd(t, q, count[s]) for t, q in zip(*acc[k])] for k in acc}
                       for s, acc in sums.items()}}

TIGHTNESS = register(Experiment(
    'tightness', _tightness_grid, tightness_unit, _tightness_merge,
    presets={'paper': 'the 10,000 MNIST test images at 4 noise levels, 1e4 samples',
             'cpu': '1,000 test images at sigma = 0.01 and 300 at each other level, 1e4 samples',
             'tiny': '2 images per level, 500 samples (a test of the grid)'},
    description='Alfadly et al. 2020, Table 2 (and Bibi et al. 2018, Table 1): E_r of the analytic moments of LeNet',
    cost=lambda p: (p['stop'] - p['start']) * (TIGHTNESS_COST[0] + TIGHTNESS_COST[1] * p['n_mc'])))

# %% [markdown]
# The `cpu` preset covers at least 1,000 images at $\sigma = 0.01$ and 300 at the other levels with $10^4$ samples,
# the `paper` preset the whole test set at every level, each unit with its own seed:

# %%
grid = TIGHTNESS.units('cpu')
count = lambda g, s: sum(p['stop'] - p['start'] for p in g if p['sigma'] == s)
assert count(grid, 0.01) >= 1000 and all(count(grid, s) >= 300 for s in TIGHTNESS_SIGMAS)
assert {p['n_mc'] for p in grid} == {10_000} and all(count(TIGHTNESS.units(), s) == 10_000 for s in TIGHTNESS_SIGMAS)
seeds = [p['seed'] for p in TIGHTNESS.units()]
test_eq(len(set(seeds)), len(seeds))

# %% [markdown]
# One unit of the `tiny` preset (two images, 500 samples: the numbers mean little), merged alone:

# %%
rec = run_unit('tightness', TIGHTNESS.units('tiny')[1])
r = rec['result']
assert all(len(r[k]) == 2 for k in _TIGHTNESS_COLUMNS)
assert all(len(v) == 10 for v in r['ratio_sum'].values())
merged = _tightness_merge([rec['params']], [r])
test_eq(merged['rows']['0.01']['images'], 2)
test_eq(len(merged['ratios']['0.01']['exact']), 10)
Table([[s, v['images'], *(v[c] for c in _TIGHTNESS_COLUMNS.values())] for s, v in merged['rows'].items()],
      ['sigma', 'images', 'E_r mean', 'E_r old var', 'E_r exact var', 'ties first', 'MC floor'],
      fmt={'sigma': 'g', 'images': 'd', **dict.fromkeys(['E_r mean', 'E_r old var', 'E_r exact var', 'ties first',
                                                         'MC floor'], '.3f')},
      caption=f"one unit of the tiny preset, {rec['provenance']['wall_s']:.1f} s")

# %% [markdown]
# ## Synthetic networks: Bibi et al. (2018), Fig. 2, and Alfadly et al. (2020), Table 1
# Two kinds of unit ([Tightness on synthetic networks](12_synthetic.ipynb)). A `fig2` unit draws a block of random
# covariances of one noise regime (`regime_covariances`, from the unit's seed) and runs `analytic_vs_mc` on one of the
# six synthetic networks (drawn with seed 1, as in that chapter; $l = 1$ for FC-A and Conv-A, $l = 2$ for the others):
# the analytic and Monte Carlo output mean and variance per covariance. The merge joins the blocks of each network and
# regime and fits the slope of Monte Carlo on analytic (`fit_slope`) for the mean and for the variance: the rows of
# that chapter's table. A `table1` unit takes a block of MNIST test images and, for each image, a number of standard
# normal draws $z$; it linearizes the bundled LeNet at $l = 1, 2, 3$ at the noisy image $M + (a/255)\,z$ for each
# amplitude $a$ of [Alfadly et al. (2020)](99_references.ipynb#alfadly2020), Table 1, and measures
# $\|R(M) - g(M)\|_2$ at the clean image $M$, averaged over the draws (that chapter's reading of the table); the merge
# averages over the images.
#
# - `paper`: [Bibi et al. (2018)](99_references.ipynb#bibi2018), §4.1: 200 covariances per network and regime,
#   $7.5\cdot10^4$ samples each; Table 1 on 100 test images with 20 draws each.
# - `cpu`: 200 covariances per network and regime with $10^4$ samples; Table 1 on 100 images with 5 draws.
# - `tiny`: 2 covariances per network and regime, $10^3$ samples; Table 1 on one image with 2 draws.

# %%
#| export
SYNTHETIC_NETS = {'FC-A': ((100,), 1), 'FC-B': ((100,), 2), 'FC-C': ((100,), 2),   # input shape, l: Bibi et al. 2018
                  'Conv-A': ((1, 20, 20), 1), 'Conv-B': ((1, 20, 20), 2), 'Conv-C': ((1, 20, 20), 2)}
SYNTHETIC_REGIMES = ('low', 'medium', 'high')

def _synthetic_grid(preset):
    from netmoments.synthetic import TABLE1_AMPLITUDES
    count, n_mc, size, images, draws, per_unit = {'paper': (200, 75_000, {'FC': 100, 'Conv': 20}, 100, 20, 5),
                                                  'cpu': (200, 10_000, {'FC': 200, 'Conv': 50}, 100, 5, 10),
                                                  'tiny': (2, 1000, {'FC': 2, 'Conv': 2}, 1, 2, 1)}[preset]
    fig2 = [{'kind': 'fig2', 'network': name, 'regime': regime, 'start': a, 'stop': b, 'n_mc': n_mc, 'net_seed': 1,
             'seed': 2018 + 10_000 * i + 1_000 * j + a}
            for i, name in enumerate(SYNTHETIC_NETS) for j, regime in enumerate(SYNTHETIC_REGIMES)
            for a, b in _blocks(count, size[name.split('-')[0]])]
    table1 = [{'kind': 'table1', 'start': a, 'stop': b, 'draws': draws, 'amplitudes': list(TABLE1_AMPLITUDES),
               'seed': 7 + a} for a, b in _blocks(images, per_unit)]
    return fig2 + table1


# %%
#| export
def _fig2_unit(p):
    import torch
    from netmoments.models import synthetic
    from netmoments.synthetic import analytic_vs_mc, regime_covariances
    shape, layer = SYNTHETIC_NETS[p['network']]
    covs = regime_covariances(math.prod(shape), p['regime'], p['stop'] - p['start'],
                              torch.Generator().manual_seed(p['seed']))
    r = analytic_vs_mc(synthetic(p['network'], p['net_seed']), shape, covs, layer, n_mc=p['n_mc'],
                       seed=p['seed'] + 1_000_000)       # Monte Carlo streams apart from the covariances' one
    return {k: getattr(r, k).tolist() for k in r._fields}

def _table1_unit(p, rows=4):
    "Mean l2 error at the clean image of LeNet linearized at noisy copies, (images, l = 1..3, amplitudes)."
    from netmoments.data import load
    from netmoments.models import pretrained
    from netmoments.synthetic import linearization_error
    x = load('mnist', 'test', limit=p['stop']).x[p['start']:]
    res = linearization_error(pretrained('lenet-mnist'), x, p['draws'], p['amplitudes'], p['seed'], rows=rows)
    return {'error': res.error.tolist(), 'at_point': res.at_point}   # at l = 1, A takes 36 MB per row

def synthetic_unit(p:dict)->dict:
    "Analytic and MC moments of a synthetic network on a block of covariances, or LeNet's linearization error, l = 1-3."
    return _fig2_unit(p) if p['kind'] == 'fig2' else _table1_unit(p)


# %% [markdown]
# The merge, and the cost of a unit (per covariance: the analytic moments and each Monte Carlo sample, by network;
# per image and draw of Table 1), measured on units of the `cpu` preset:

# %%
#| export
def _synthetic_merge(params, results):
    import torch
    from netmoments.synthetic import fit_slope
    cells, errors, at_point = {}, [], 0.
    for p, r in zip(params, results):
        if p['kind'] == 'fig2':
            cell = cells.setdefault((p['network'], p['regime']), {k: [] for k in r})
            for k, v in r.items(): cell[k] += v
        else: errors += r['error']; at_point = max(at_point, r['at_point'])
    slopes = []
    for (name, regime), c in cells.items():
        sm, sv = (fit_slope(torch.tensor(c[a]), torch.tensor(c[b]))
                  for a, b in (('mean', 'mc_mean'), ('var', 'mc_var')))
        slopes.append([name, regime, len(c['mean']), sm.slope, sm.se, sv.slope, sv.se])
    t1 = [p for p in params if p['kind'] == 'table1']
    return {'slopes': slopes, 'n_mc': next((p['n_mc'] for p in params if p['kind'] == 'fig2'), None),
            'table1': torch.tensor(errors).mean(0).tolist() if errors else None, 'table1_images': len(errors),
            'table1_draws': t1[0]['draws'] if t1 else None, 'amplitudes': t1[0]['amplitudes'] if t1 else None,
            'table1_at_point': at_point}

SYNTHETIC_COST = {'FC': (0.01, 5.7e-6), 'Conv-A': (0.7, 7e-5), 'Conv-B': (0.5, 1.1e-4), 'Conv-C': (0.6, 1.7e-4),
                  'table1': 3.5}   # seconds on one core per covariance (analytic, per MC sample); per image and draw

def _synthetic_cost(p):
    if p['kind'] == 'table1': return SYNTHETIC_COST['table1'] * (p['stop'] - p['start']) * p['draws']
    a, b = SYNTHETIC_COST['FC' if p['network'].startswith('FC') else p['network']]
    return (p['stop'] - p['start']) * (a + b * p['n_mc'])

SYNTHETIC = register(Experiment(
    'synthetic', _synthetic_grid, synthetic_unit, _synthetic_merge,
    presets={'paper': '6 networks x 3 regimes x 200 covariances, 7.5e4 samples; Table 1 on 100 images x 20 draws',
             'cpu': '6 x 3 x 200 covariances, 1e4 samples; Table 1 on 100 images x 5 draws',
             'tiny': '6 x 3 x 2 covariances, 1e3 samples; Table 1 on 1 image x 2 draws (a test of the grid)'},
    description='Bibi et al. 2018, Fig. 2: slopes of Monte Carlo on analytic moments; Alfadly et al. 2020, Table 1',
    cost=_synthetic_cost))

# %% [markdown]
# Both large presets hold 200 covariances for every network and regime, with the stated samples and distinct seeds:

# %%
for preset, n_mc in {'paper': 75_000, 'cpu': 10_000}.items():
    fig2 = [p for p in SYNTHETIC.units(preset) if p['kind'] == 'fig2']
    for name in SYNTHETIC_NETS:
        for regime in SYNTHETIC_REGIMES:
            test_eq(sum(p['stop'] - p['start'] for p in fig2 if (p['network'], p['regime']) == (name, regime)), 200)
    test_eq({p['n_mc'] for p in fig2}, {n_mc})
seeds = [p['seed'] for p in SYNTHETIC.units()]
test_eq(len(set(seeds)), len(seeds))

# %% [markdown]
# A `fig2` unit (FC-B, medium regime) and the `table1` unit of the `tiny` preset, merged:

# %%
tiny = SYNTHETIC.units('tiny')
recs = [run_unit('synthetic', tiny[i]) for i in (4, len(tiny) - 1)]
test_eq(recs[0]['params']['network'], 'FC-B')
test_eq({k: len(v) for k, v in recs[0]['result'].items()}, dict.fromkeys(AnalyticVsMC._fields, 2))
test_eq(torch.tensor(recs[1]['result']['error']).shape, (1, 3, 5))
assert recs[1]['result']['at_point'] < 1e-3                 # the linearization is exact at its point
merged = _synthetic_merge([r['params'] for r in recs], [r['result'] for r in recs])
test_eq(merged['slopes'][0][:3], ['FC-B', 'medium', 2])
Table([[l + 1, *e] for l, e in enumerate(merged['table1'])], ['l', *(f'±{a}' for a in TABLE1_AMPLITUDES)],
      fmt={'l': 'd', **{f'±{a}': '.4f' for a in TABLE1_AMPLITUDES}},
      caption='Table 1 from one image and 2 draws (tiny preset)')

# %% [markdown]
# ## Linearization centers: Alfadly et al. (2020), Table 4
# One unit follows the protocol of [Linearization centers](13_centers.ipynb) for one block of evaluated images: the
# clustered MNIST test images are split by `kmeans` for every $k$ of the table; each image of the block is linearized
# (LeNet, $l = 3$, float64, through a `LinearizationCache`) at its cluster's center and, for the baseline's $k$, at
# the member of its cluster farthest from the center; `centers_tightness` compares the analytic moments of each of
# these linearizations with one Monte Carlo run of the real network per image, at every noise level of the unit. The
# unit returns, per noise level and linearization, each image's $E_r$ of the mean, of the old and of the exact variance
# averaged over the logits; the merge averages them over the images: the table of
# [Alfadly et al. (2020)](99_references.ipynb#alfadly2020), Table 4, in the format of that chapter's saved run.
#
# - `paper`: the 10,000 test images clustered with $k \in \{250, 500, 1000, 2500, 5000, 10000\}$, the baseline at
#   $k = 250$ and $500$, all 10,000 evaluated at the four noise levels of Table 2 with $10^4$ samples, in blocks of 25.
# - `cpu`: the same clusterings; 300 randomly chosen test images evaluated at the four levels with $10^4$ samples.
# - `tiny`: the first 200 test images clustered with $k$ at the paper's fractions of them
#   ($k \in \{5, 10, 20, 50, 100, 200\}$, the baseline at 5 and 10), one image evaluated at $\sigma = 0.01$ with 500
#   samples (a test of the grid).

# %%
#| export
CENTERS_KS = (250, 500, 1000, 2500, 5000, 10_000)    # Alfadly et al. 2020, Table 4
CENTERS_BASELINE_KS = (250, 500)                      # its farthest-member baseline

def _centers_grid(preset):
    if preset == 'tiny':
        clustered, ks, base, evaluated, sigmas, n_mc, size = 200, (5, 10, 20, 50, 100, 200), (5, 10), 1, (0.01,), 500, 1
    else:
        clustered, ks, base, n_mc, size = MNIST_TEST, CENTERS_KS, CENTERS_BASELINE_KS, 10_000, 25
        sigmas = TIGHTNESS_SIGMAS
        evaluated = {'paper': MNIST_TEST, 'cpu': 300}[preset]
    return [{'clustered': clustered, 'ks': list(ks), 'baseline_ks': list(base), 'kmeans_seed': 2018, 'pick_seed': 13,
             'start': a, 'stop': b, 'sigmas': list(sigmas), 'n_mc': n_mc, 'layer': 3, 'seed': 2018 + a}
            for a, b in _blocks(evaluated, size)]


# %% [markdown]
# Every unit needs every clustering, which depends only on the clustered images, $k$ and the seed, and the large ones
# take minutes: `cached_kmeans` computes each once per machine and keeps it on disk (in `$NETMOMENTS_CACHE`, by default
# `~/.cache/netmoments`), under a digest of the images, $k$, the seed and the number of threads (the runner fixes it
# for every unit), written atomically. A unit that finds a clustering there gets the numbers of one that computes it.

# %%
#| export
def cached_kmeans(
    x,         # points (N, *point_shape), a floating tensor
    k:int,     # clusters
    seed:int,  # kmeans seed
)->dict:       # centers, assignments, inertia, iters, converged
    "`kmeans(x, k, seed=seed)`, kept on disk in $NETMOMENTS_CACHE (default ~/.cache/netmoments), read back from there."
    import hashlib, os, tempfile, torch
    from pathlib import Path
    from netmoments.centers import kmeans
    digest = hashlib.sha256(x.contiguous().cpu().numpy().tobytes()).hexdigest()[:16]
    folder = Path(os.environ.get('NETMOMENTS_CACHE') or Path.home() / '.cache' / 'netmoments')
    path = folder / f'kmeans-{digest}-{x.dtype}-{len(x)}-k{k}-seed{seed}-threads{torch.get_num_threads()}.pt'
    if path.exists(): return torch.load(path, weights_only=True)
    km = kmeans(x, k, seed=seed)
    out = {'centers': km.centers, 'assignments': km.assignments, 'inertia': km.inertia.item(), 'iters': km.iters,
           'converged': km.converged}
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix='.tmp')
    os.close(fd)
    try: torch.save(out, tmp); os.chmod(tmp, 0o644); os.replace(tmp, path)
    finally:
        if os.path.exists(tmp): os.unlink(tmp)
    return out


# %%
#| export
def centers_unit(p:dict)->dict:
    "Per-image E_r of LeNet linearized at k-means centers and farthest members, for a block of evaluated test images."
    import copy, torch
    from netmoments.centers import LinearizationCache, centers_tightness
    from netmoments.data import load
    from netmoments.models import pretrained
    net = pretrained('lenet-mnist')
    x = load('mnist', 'test', limit=p['clustered']).x
    x64, net64 = x.double(), copy.deepcopy(net).double()
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(p['pick_seed']))[p['start']:p['stop']]
    lins, clusters = {}, {}
    with torch.no_grad():
        for k in p['ks']:
            km = cached_kmeans(x64, k, p['kmeans_seed'])
            clusters[str(k)] = {key: km[key] for key in ('inertia', 'iters', 'converged')}
            index = km['assignments'][pick]
            lins[str(k)] = LinearizationCache(net64, km['centers'], p['layer']).lookup(index=index)
            if k in p['baseline_ks']:
                far = LinearizationCache.farthest(net64, x64, km['centers'], km['assignments'], p['layer'])
                lins[f'{k}*'] = far.lookup(index=index)
        gen = torch.Generator().manual_seed(p['seed'])
        tables = {s: centers_tightness(net, x[pick], s, lins, p['n_mc'], gen) for s in p['sigmas']}
    return {'images': pick.tolist(), 'clusters': clusters,
            'er': {str(s): {name: {c: getattr(t, 'er_' + c).mean(1).tolist() for c in ('mean', 'old', 'exact')}
                            for name, t in rows.items()} for s, rows in tables.items()}}


# %% [markdown]
# The merge, and the cost of a unit (per image and linearization, the linearization and its moments at each level;
# per Monte Carlo sample; the clusterings, charged to the first unit), measured on units of the `cpu` preset:

# %%
#| export
def _centers_merge(params, results):
    table, images = {}, []
    for r in results:
        images += r['images']
        for s, rows in r['er'].items():
            for name, cols in rows.items():
                acc = table.setdefault(s, {}).setdefault(name, {c: [] for c in cols})
                for c, v in cols.items(): acc[c] += v
    return {'images': len(images), 'n_mc': params[0]['n_mc'], 'clustered': params[0]['clustered'],
            'clusters': results[0]['clusters'],
            'table': {s: {name: [_mean(cols[c]) for c in ('mean', 'old', 'exact')] for name, cols in rows.items()}
                      for s, rows in table.items()}}

CENTERS_COST = (0.7, 0.55, 2.5e-4, 200.)   # seconds, one core: linearization, its moments per level, MC sample, k-means

def _centers_cost(p):
    configs, images, levels = len(p['ks']) + len(p['baseline_ks']), p['stop'] - p['start'], len(p['sigmas'])
    once = CENTERS_COST[3] * (p['clustered'] / MNIST_TEST)**2 if p['start'] == 0 else 0.
    per_image = configs * (CENTERS_COST[0] + levels * CENTERS_COST[1]) + levels * CENTERS_COST[2] * p['n_mc']
    return once + images * per_image

CENTERS = register(Experiment(
    'centers', _centers_grid, centers_unit, _centers_merge,
    presets={'paper': '10,000 test images clustered, k = 250..10,000 and the baseline; all evaluated at 4 levels, '
                      '1e4 samples',
             'cpu': 'the same clusterings; 300 random test images evaluated at 4 levels, 1e4 samples',
             'tiny': '200 images clustered, k = 5..200; one image at sigma = 0.01, 500 samples (a test of the grid)'},
    description='Alfadly et al. 2020, Table 4: E_r of LeNet linearized at k-means centers, against the number k',
    cost=_centers_cost))

# %%
test_eq(sum(p['stop'] - p['start'] for p in CENTERS.units()), 10_000)
test_eq(sum(p['stop'] - p['start'] for p in CENTERS.units('cpu')), 300)
test_eq(CENTERS.units('cpu')[0]['ks'], list(CENTERS_KS))

# %% [markdown]
# The unit of the `tiny` preset (its clusterings kept in a temporary folder), merged; a clustering kept on disk is the
# one `kmeans` computes:

# %%
cache_dir = tempfile.mkdtemp()
os.environ['NETMOMENTS_CACHE'] = cache_dir
rec = run_unit('centers', CENTERS.units('tiny')[0])
r = rec['result']
test_eq(set(r['er']['0.01']), {'5', '10', '20', '50', '100', '200', '5*', '10*'})
assert all(len(v) == 1 for rows in r['er'].values() for cols in rows.values() for v in cols.values())
test_eq(len(os.listdir(cache_dir)), 6)                               # one file per k
x200 = load('mnist', 'test', limit=200).x.double()
fresh = kmeans(x200, 20, seed=2018)
for _ in range(2): test_eq(cached_kmeans(x200, 20, 2018)['centers'], fresh.centers)   # computed and kept, read back
merged = _centers_merge([rec['params']], [r])
Table([[name, *v] for name, v in merged['table']['0.01'].items()], ['k', 'E_r mean', 'E_r old var', 'E_r exact var'],
      fmt='.3f', caption=f"one image, 500 samples (tiny preset), {rec['provenance']['wall_s']:.1f} s")

# %%
#| hide
del os.environ['NETMOMENTS_CACHE']
shutil.rmtree(cache_dir)

# %% [markdown]
# ## Bounds against attacks: Peck et al. (2017), Table 1, and Peck (2017), Table 4.3
# A `lenet` unit takes a block of MNIST test images and computes per image, in batches of 100 as `cnn_table` does
# ([Bounds against attacks on trained networks](18_bounds_experiments.ipynb)), Peck's bound of the bundled LeNet
# (`network_bound`), the sound Lipschitz margin bound, the FGS perturbation ($\varepsilon \le 100/255$) and the
# smallest perturbation the strongest attack finds (`strongest`). The merge gives, over all the images, the quantities
# of [Peck et al. (2017)](99_references.ipynb#peck2017), Table 1, under the keys of `cnn_table` (per-pixel means, FGS
# success rate, violations of each bound, median ratios to the attack), which that chapter's `show_cnn` displays. An
# `mlp` unit follows [Peck (2017)](99_references.ipynb#peck2017thesis), Table 4.3, for one data set: the seeded
# 70/20/10 split, a tanh MLP trained with Adam, and `check_bounds` on every test point; the merge gives its accuracy,
# the statistics of FGS minus the bound of Theorem 4.2, the violations of both bounds and the median ratios of the
# bounds to the strongest attack.
#
# - `paper`: the 10,000 test images in blocks of 500, and Iris, Wine and Spambase.
# - `tiny`: 8 test images, and Iris (a test of the grid).
#
# The paper's size fits this machine, so there is no reduced preset.

# %%
#| export
PECK_MLPS = {'iris': (4, 5, 3), 'wine': (13, 5, 3, 3), 'spambase': (57, 7, 5, 3, 2)}   # Peck 2017, Table 4.3

def _bounds_grid(preset):
    images, size, sets = {'paper': (MNIST_TEST, 500, tuple(PECK_MLPS)), 'tiny': (8, 8, ('iris',))}[preset]
    return ([{'kind': 'lenet', 'start': a, 'stop': b, 'eps_cap': 100 / 255, 'steps': 40, 'batch_size': 100, 'seed': a}
             for a, b in _blocks(images, size)] +
            [{'kind': 'mlp', 'dataset': d, 'sizes': list(PECK_MLPS[d]), 'epochs': 300, 'lr': 1e-2, 'steps': 60,
              'seed': 0} for d in sets])


# %%
#| export
def _lenet_bounds_unit(p):
    import torch
    from netmoments.bounds import lipschitz_margin_bound, network_bound
    from netmoments.data import load
    from netmoments.minimal import minimal_l2, strongest
    from netmoments.models import pretrained
    net = pretrained('lenet-mnist')
    data = load('mnist', 'test', limit=p['stop'])
    x = data.x[p['start']:]
    out = {'peck': [], 'lipschitz': [], 'fgs': [], 'best': []}
    for xb in x.split(p['batch_size']):
        for k, v in zip(out, (network_bound(net, xb).bound, lipschitz_margin_bound(net, xb).bound,
                              minimal_l2(net, xb, 'fgs', eps_max=p['eps_cap']).norm,
                              strongest(net, xb, steps=p['steps']).norm)):
            out[k] += v.tolist()
    with torch.no_grad(): correct = (net(x).argmax(1) == data.y[p['start']:]).sum().item()
    return {**out, 'pixels': x[0].numel(), 'correct': correct}

def _mlp_bounds_unit(p):
    import torch
    from netmoments.bound_experiments import check_bounds, tanh_mlp, train_classifier, uci_split
    xtr, ytr, xte, yte, xva, yva = uci_split(p['dataset'], p['seed'])
    net = train_classifier(tanh_mlp(tuple(p['sizes']), p['seed']), xtr, ytr, xva, yva, epochs=p['epochs'], lr=p['lr'])
    with torch.no_grad(): acc = (net(xte).argmax(1) == yte).double().mean().item()
    c = check_bounds(net, xte, steps=p['steps'])
    return {'accuracy': acc, **{k: getattr(c, k).tolist() for k in c._fields}}

def bounds_unit(p:dict)->dict:
    "Bounds and attacks per image of a block of MNIST test images (LeNet), or per test point of a UCI set (tanh MLP)."
    return _lenet_bounds_unit(p) if p['kind'] == 'lenet' else _mlp_bounds_unit(p)


# %% [markdown]
# The merge, and the cost of a unit (per MNIST image; per MLP data set, its training included), measured on units of
# the `paper` preset:

# %%
#| export
def _lenet_summary(results):
    "The quantities of cnn_table (Peck et al. 2017, Table 1) over the images of all `lenet` results."
    import torch
    peck, lip, fgs, best = (torch.tensor(sum((r[k] for r in results), []), dtype=torch.float64)
                            for k in ('peck', 'lipschitz', 'fgs', 'best'))
    ok, d = torch.isfinite(best), results[0]['pixels']
    return dict(n=len(best), pixels=d, peck_norm=peck.mean().item() / d,
                fgs_norm=fgs[torch.isfinite(fgs)].mean().item() / d,
                fgs_rate=torch.isfinite(fgs).double().mean().item(),
                best_norm=best[ok].mean().item() / d, peck_violations=int((peck[ok] > best[ok]).sum()),
                lipschitz_violations=int((lip[ok] > best[ok]).sum()), attacked=int(ok.sum()),
                lip_ratio=(lip / best)[ok].median().item(), peck_ratio=(peck / best)[ok].median().item(),
                min_best=best[ok].min().item(), accuracy=sum(r['correct'] for r in results) / len(best))

def _mlp_summary(r):
    "Accuracy, FGS minus Theorem 4.2's bound, violations and median ratios of one `mlp` result (Peck 2017, Table 4.3)."
    import torch
    from netmoments.bound_experiments import BoundCheck
    c = BoundCheck(*(torch.tensor(r[k], dtype=torch.float64) for k in BoundCheck._fields))
    ok, dev = torch.isfinite(c.best), (c.fgs - c.bound)[torch.isfinite(c.fgs)]
    return dict(accuracy=r['accuracy'], test_points=len(c.best), **c.violations(),
                deviation={k: getattr(dev, k)().item() for k in ('mean', 'median', 'std', 'min', 'max')},
                bound_ratio=(c.bound / c.best)[ok].median().item(),
                lipschitz_ratio=(c.lipschitz / c.best)[ok].median().item(),
                best=c.best[ok].median().item(), fgs=c.fgs[ok].median().item())

def _bounds_merge(params, results):
    lenet = [r for p, r in zip(params, results) if p['kind'] == 'lenet']
    return {'lenet': _lenet_summary(lenet) if lenet else None,
            'mlp': {p['dataset']: _mlp_summary(r) for p, r in zip(params, results) if p['kind'] == 'mlp'}}

BOUNDS_COST = {'lenet': 0.09, 'iris': 1., 'wine': 1., 'spambase': 2.5}   # seconds on one core: per image; per data set

BOUNDS = register(Experiment(
    'bounds', _bounds_grid, bounds_unit, _bounds_merge,
    presets={'paper': 'the 10,000 MNIST test images (LeNet), and the tanh MLPs on Iris, Wine and Spambase',
             'tiny': '8 test images, and Iris (a test of the grid)'},
    description='Peck et al. 2017, Table 1 (LeNet, MNIST), Peck 2017, Table 4.3: bounds against the strongest attack',
    cost=lambda p: BOUNDS_COST['lenet'] * (p['stop'] - p['start']) if p['kind'] == 'lenet'
                   else BOUNDS_COST[p['dataset']]))

# %%
test_eq(sum(p['stop'] - p['start'] for p in BOUNDS.units() if p['kind'] == 'lenet'), 10_000)
test_eq([p['dataset'] for p in BOUNDS.units() if p['kind'] == 'mlp'], ['iris', 'wine', 'spambase'])

# %% [markdown]
# The `tiny` preset: its LeNet unit, merged, equals `cnn_table` on the same images (the same calls on the same batch,
# with one thread as in the unit); its Iris unit violates neither bound:

# %%
recs = [run_unit('bounds', p) for p in BOUNDS.units('tiny')]
test_eq(len(recs[0]['result']['best']), 8)
merged = _bounds_merge([r['params'] for r in recs], [r['result'] for r in recs])
threads = torch.get_num_threads()
torch.set_num_threads(1)
try: direct = cnn_table(pretrained('lenet-mnist'), load('mnist', 'test', limit=8).x, eps_cap=100 / 255)
finally: torch.set_num_threads(threads)
for k, v in direct.items(): test_close(merged['lenet'][k], v, eps=1e-12)
assert merged['lenet']['lipschitz_violations'] == 0
assert merged['mlp']['iris']['bound'] == 0 and merged['mlp']['iris']['lipschitz'] == 0
Table([[k, merged['lenet'][k]] for k in ('n', 'peck_norm', 'fgs_norm', 'fgs_rate', 'best_norm', 'peck_violations',
                                         'lipschitz_violations', 'accuracy')], ['LeNet, tiny preset', 'value'])

# %% [markdown]
# ## Surviving Gaussian noise: the robustness of Alfadly et al. (2019), eq. 6
# One unit runs `survival_grid` ([Predicting what noise does](15_survival.ipynb)) on a block of MNIST test images with
# the bundled LeNet in float64, linearized once per image at $l = 3$: for each noise level
# $\sigma \in \{0.1, 0.2, 0.3, 0.4, 0.5\}$, the predicted probability that the prediction survives
# $\mathcal N(0, \sigma^2 I)$ (Gaussian orthant probability, and Cantelli's bound) beside Monte Carlo of the real
# network. It returns these per image, with each image's mean absolute gap between the analytic and the sampled margin
# means, its mean sampled margin standard deviation and its mean ratio of analytic to sampled margin standard
# deviations. The merge gives, per noise level, the columns of that chapter's table (mean survival by Monte Carlo with
# its standard error, by the Gaussian prediction and by the Cantelli bound, the largest gap of one image, the
# margin-mean gap in margin standard deviations, the standard-deviation ratio), and the clean accuracy. Its Monte Carlo
# column is the robustness $\mathfrak R_{\mathcal D}$ of [Alfadly et al. (2019)](99_references.ipynb#alfadly2019),
# eq. 6, averaged over the test set, for $\mathcal D = \mathcal N(0, \sigma^2 I)$.
#
# - `full`: the 10,000 test images, $10^4$ samples per image and noise level, in blocks of 50.
# - `cpu`: the 10,000 test images, $10^3$ samples, in blocks of 100.
# - `tiny`: two images, 100 samples (a test of the grid).

# %%
#| export
SURVIVAL_SIGMAS = (0.1, 0.2, 0.3, 0.4, 0.5)

def _survival_grid(preset):
    images, samples, size = {'full': (MNIST_TEST, 10_000, 50), 'cpu': (MNIST_TEST, 1000, 100),
                             'tiny': (2, 100, 2)}[preset]
    return [{'start': a, 'stop': b, 'sigmas': list(SURVIVAL_SIGMAS), 'samples': samples, 'layer': 3, 'seed': a}
            for a, b in _blocks(images, size)]

def survival_unit(p:dict)->dict:
    "Gaussian and Cantelli survival predictions, and Monte Carlo, per image of a block of MNIST test images, per sigma."
    import torch
    from netmoments.data import load
    from netmoments.models import pretrained
    from netmoments.survival import survival_grid
    net = pretrained('lenet-mnist').double()
    data = load('mnist', 'test', limit=p['stop'])
    x, y = data.x[p['start']:].double(), data.y[p['start']:]
    grid = survival_grid(net, x, p['sigmas'], samples=p['samples'], layer=p['layer'], seed=p['seed'])
    out = {}
    for s, r in grid.items():
        out[str(s)] = {k: r[k].tolist() for k in ('gaussian', 'gaussian_se', 'cantelli', 'mc', 'mc_se')}
        out[str(s)].update(dmean=(r['margin_mean'] - r['mc_margin_mean']).abs().mean(1).tolist(),
                           mc_sd=r['mc_margin_sd'].mean(1).tolist(),
                           sd_ratio=(r['margin_sd'] / r['mc_margin_sd']).mean(1).tolist())
    with torch.no_grad(): correct = (net(x).argmax(1) == y).sum().item()
    return {'sigmas': out, 'correct': correct}


# %% [markdown]
# The merge, and the cost of a unit (per image and noise level: the linearization and the analytic prediction, and each
# Monte Carlo sample), measured on a unit of the `cpu` preset:

# %%
#| export
SURVIVAL_HEADER = ['sigma', 'MC', '+-SE', 'gauss', 'cantelli', 'max|g-MC|', '|dmean|/sd', 'sd ratio']

def _survival_merge(params, results):
    cols = {}
    for r in results:
        for s, v in r['sigmas'].items():
            acc = cols.setdefault(s, {k: [] for k in v})
            for k, vals in v.items(): acc[k] += vals
    rows = [[float(s), _mean(c['mc']), math.sqrt(sum(e * e for e in c['mc_se'])) / len(c['mc']), _mean(c['gaussian']),
             _mean(c['cantelli']), max(abs(g - m) for g, m in zip(c['gaussian'], c['mc'])),
             _mean(c['dmean']) / _mean(c['mc_sd']), _mean(c['sd_ratio'])] for s, c in cols.items()]
    n = len(next(iter(cols.values()))['mc'])
    return {'images': n, 'samples': params[0]['samples'], 'accuracy': sum(r['correct'] for r in results) / n,
            'header': SURVIVAL_HEADER, 'rows': rows}

SURVIVAL_COST = (0.34, 6.2e-4)   # seconds on one core per image and level: analytic; per Monte Carlo sample

SURVIVAL = register(Experiment(
    'survival', _survival_grid, survival_unit, _survival_merge,
    presets={'full': 'the 10,000 MNIST test images at 5 noise levels, 1e4 samples',
             'cpu': 'the 10,000 test images at 5 noise levels, 1e3 samples',
             'tiny': '2 images, 100 samples (a test of the grid)'},
    description="Alfadly et al. 2019, eq. 6: LeNet's survival of Gaussian noise, analytic against Monte Carlo",
    cost=lambda p: (p['stop'] - p['start']) * len(p['sigmas']) * (SURVIVAL_COST[0] + SURVIVAL_COST[1] * p['samples'])))

# %%
test_eq(sum(p['stop'] - p['start'] for p in SURVIVAL.units()), 10_000)
test_eq(sum(p['stop'] - p['start'] for p in SURVIVAL.units('cpu')), 10_000)

# %% [markdown]
# The unit of the `tiny` preset, merged:

# %%
rec = run_unit('survival', SURVIVAL.units('tiny')[0])
test_eq(set(rec['result']['sigmas']), {str(s) for s in SURVIVAL_SIGMAS})
assert all(len(v) == 2 for c in rec['result']['sigmas'].values() for v in c.values())
merged = _survival_merge([rec['params']], [rec['result']])
test_eq(len(merged['rows']), 5)
Table(merged['rows'], SURVIVAL_HEADER, fmt={'sigma': 'g', **dict.fromkeys(SURVIVAL_HEADER[1:], '.3f')},
      caption=f"two images, 100 samples (tiny preset), {rec['provenance']['wall_s']:.1f} s")

# %% [markdown]
# ## The registered experiments

# %% [markdown]
# Every preset of every experiment, the default first, with its number of units and the core-hours its `cost`
# estimates (seconds on one CPU core, measured on units of a reduced preset and scaled):

# %%
Table([[e.name if i == 0 else None, e.description if i == 0 else None, preset, e.presets[preset],
        len(e.units(preset)), sum(map(e.cost, e.units(preset))) / 3600]
       for e in EXPERIMENTS.values() if e.name != 'relu-mean' for i, preset in enumerate(e.presets)],
      ['name', 'what', 'preset', 'preset is', 'units', 'core-hours (estimated)'], fmt={'core-hours (estimated)': '.3g'})

# %% [markdown]
# ## Export -

# %%
#| hide
#| eval: false
import nbdev; nbdev.nbdev_export()

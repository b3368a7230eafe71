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
from fastcore.test import test_eq, test_fail
from netmoments.core import Table

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
    from netmoments.regularizers import GaussianMomentLoss, noisy_augmentation
    from netmoments.robustness import noise_robustness
    from netmoments.train import cross_entropy_loss, fit
    device = p.get('device', 'cuda' if torch.cuda.is_available() else 'cpu')
    train = load(p['dataset'], 'train', limit=p['limit'])
    test = load(p['dataset'], 'test', limit=p['limit'])
    g = torch.Generator().manual_seed(p['seed'])
    net = (paper_lenet(g) if p['arch'] == 'paper' else lenet(g)).to(device)
    loss, augment = cross_entropy_loss, None
    if p['kind'] == 'regularizer': loss = GaussianMomentLoss(p['sigma'], p['level'])
    if p['kind'] == 'augment':
        sigma, folds = p['sigma'], p['level']
        augment = lambda x, y, gen: noisy_augmentation(x, y, sigma, folds, gen)
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
import torch
test_eq(paper_lenet()(torch.zeros(2, 1, 28, 28)).shape, (2, 10))
test_eq(paper_lenet()[6:8](torch.zeros(1, 64, 7, 7)).shape, (1, 1024))

# %% [markdown]
# One unit of the `tiny` preset, to see that it runs (600 images, one epoch: the numbers mean nothing):

# %%
from netmoments.runner import run_unit
rec = run_unit('robust-training', ROBUST_TRAINING.units('tiny')[1])
assert 0 <= rec['result']['accuracy'] <= 1 and len(rec['result']['robustness_curve']) == 30
{k: rec['result'][k] for k in ('accuracy', 'robustness', 'epochs', 'train_seconds')}

# %% [markdown]
# ## The registered experiments

# %%
Table([[e.name, e.description, ', '.join(e.presets), len(e.units()), f'{sum(map(e.cost, e.units())) / 3600:.3g}']
       for e in EXPERIMENTS.values() if e.name != 'relu-mean'],
      ['name', 'what', 'presets', 'units (default)', 'core-hours (default, estimated)'])

# %% [markdown]
# ## Export -

# %%
#| hide
#| eval: false
import nbdev; nbdev.nbdev_export()

# %% [markdown]
# # Robust training experiments
# > `003` Figs 3-4 (accuracy vs robustness of LeNet trained with noisy augmentation or the analytic regularizer) on MNIST and Fashion-MNIST, Lyu et al.'s Tables V-IX (softmax models, weight decay, gradient regularization), and the cost of each training scheme

# %%
#| hide
import os, json, time, platform
from pathlib import Path
import torch
import torch.nn.functional as F
from torch import nn
import matplotlib.pyplot as plt
from fastcore.test import test_eq, test_close
from netmoments.data import load
from netmoments.models import lenet
from netmoments.regularizers import GaussianMomentLoss, GradientNormLoss, noisy_augmentation
from netmoments.robustness import noise_robustness, predicted_misclassification, misclassification_rate
from netmoments.train import fit, cross_entropy_loss, step_costs, step_schemes

# %% [markdown]
# This chapter exports nothing: it runs the experiments of `003` §4 and `004` §IV-V with the library of chapters
# 19-21. Every training run uses `fit` (the Table 1 recipe) and every robustness number `noise_robustness` with true
# Gaussian noise, fresh per test point, unclipped, inputs in $[0, 1]$ (chapter 20).
#
# **What runs by default (the CPU-sized run, a few minutes on 2 cores).** 1,500 training images (10% of them for
# validation), 500 test images, 2 epochs at learning rate $10^{-3}$ with batches of 100 (Table 1's $10^{-4}$ and
# 1000 would not move in 2 epochs), a reduced grid of training settings, and robustness over 15 $\sigma$s in
# $[0, 0.5]$ with one sample per point. These numbers show the machinery and the direction of the effects, not the
# published values. **The full grid** (all of `003`'s settings, full data, up to 100 epochs with early stopping, 30
# $\sigma$s) is the `#| slow` cell at the end; it writes `data/results/robust_training_<dataset>.json`, which this page
# displays when present.
#
# **CIFAR-10/100 are not present on this machine** (`netmoments.data.load('cifar10')` finds no files; SPEC §10), so
# the CIFAR panels of Figs 3-5 and AlexNet are not reproduced.

# %%
try: load('cifar10', 'test', limit=1); CIFAR = True
except FileNotFoundError: CIFAR = False
print('CIFAR-10 present:', CIFAR)

# %%
SMALL = dict(n_train=1500, n_test=500, epochs=2, lr=1e-3, batch_size=100, sigmas=torch.linspace(0, 0.5, 15))
FULL = dict(n_train=None, n_test=None, epochs=100, lr=1e-4, batch_size=1000, sigmas=torch.linspace(0, 0.5, 30))
torch.set_num_threads(min(2, torch.get_num_threads()))

def datasets(name, cfg):
    tr, te = load(name, 'train', limit=cfg['n_train']), load(name, 'test', limit=cfg['n_test'])
    return (tr.x, tr.y), (te.x, te.y)

def run(train, test, kind, sigma=0., level=0, cfg=SMALL, seed=0, device='cpu'):
    "Train LeNet one way ('baseline', 'augment' with N = level, 'regularizer' with alpha = level); measure it."
    net = lenet(torch.Generator().manual_seed(seed)).to(device)
    loss, augment = cross_entropy_loss, None
    if kind == 'regularizer': loss = GaussianMomentLoss(sigma, level)
    if kind == 'augment': augment = lambda x, y, g: noisy_augmentation(x, y, sigma, level, g)
    t0 = time.perf_counter()
    res = fit(net, train, loss=loss, augment=augment, epochs=cfg['epochs'], lr=cfg['lr'], batch_size=cfg['batch_size'],
              seed=seed, device=device, progress=False)
    seconds = time.perf_counter() - t0
    xt, yt = test[0].to(device), test[1].to(device)
    with torch.no_grad(): acc = (res.model(xt).argmax(1) == yt).float().mean().item()
    rob = noise_robustness(res.model, xt, cfg['sigmas'].to(device), seed=seed)
    return dict(kind=kind, sigma=sigma, level=level, accuracy=acc, robustness=rob.mean.item(), auc=rob.auc.item(),
                epochs=len(res.history), seconds=seconds)


# %% [markdown]
# ## Accuracy against robustness (`003` Fig 3), reduced grid
# The reduced grid: the baseline; augmentation with $\tilde N \in \{2, 6\}$ at $\sigma = 0.5$; the regularizer with
# $\alpha = 1$ at $\sigma \in \{0.5, 2\}$ and $\alpha = 5$ at $\sigma = 2$. The paper's grid is $\tilde N \in \{2, 6, 11, 21\}$ × $\sigma \in \{0.125, 0.25, 0.325, 0.5, 1\}$
# and $\alpha \in \{0.5, 1, 1.5, 2, 5, 10, 20\}$ × $\sigma \in \{0.125, \dots, 1, 2, 5, 10, 20\}$ (the full run).

# %%
SMALL_GRID = ([('baseline', 0., 0), ('augment', 0.5, 2), ('augment', 0.5, 6)]
              + [('regularizer', 0.5, 1), ('regularizer', 2., 1), ('regularizer', 2., 5)])
run(*datasets('mnist', dict(SMALL, n_train=200, n_test=50)), 'baseline')   # warm-up, so the first timed run pays no one-time costs
t_all = time.perf_counter()
small = {}
for name in ('mnist', 'fashion-mnist'):
    train, test = datasets(name, SMALL)
    small[name] = [run(train, test, *setting) for setting in SMALL_GRID]
print(f'{2 * len(SMALL_GRID)} training runs in {time.perf_counter() - t_all:.0f} s')
for name, rows in small.items():
    print(f'\n{name}: kind          sigma  N/alpha  accuracy  robustness  s/epoch')
    for r in rows: print(f'{"":{len(name)}}  {r["kind"]:12s} {r["sigma"]:6.3f}  {r["level"]:7g}  {r["accuracy"]:8.3f}  '
                         f'{r["robustness"]:10.3f}  {r["seconds"] / r["epochs"]:7.2f}')

# %% [markdown]
# The baseline is the least robust model of each dataset's grid only if training noise helps at all in 2 epochs; the
# assertion checks the weaker claim that some noisy-trained model is more robust than the baseline:

# %%
for name, rows in small.items():
    test_eq(max(r['robustness'] for r in rows[1:]) > rows[0]['robustness'], True)

# %%
#| label: fig-acc-rob
#| fig-cap: "Clean test accuracy against robustness (003 Fig 3 analogue, reduced CPU run): baseline, noisy augmentation (numbers: N), analytic regularizer (numbers: alpha); colour: training sigma."
fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), layout='constrained')
for ax, (name, rows) in zip(axes, small.items()):
    for kind, marker in (('baseline', 'k*'), ('augment', 's'), ('regularizer', 'o')):
        pts = [r for r in rows if r['kind'] == kind]
        colour = dict(color='k') if kind == 'baseline' else dict(c=[min(r['sigma'], 5) for r in pts], cmap='viridis',
                                                                 vmin=0, vmax=5)
        ax.scatter([r['robustness'] for r in pts], [r['accuracy'] for r in pts], marker=marker[-1], label=kind, **colour)
        for r in pts:
            if kind != 'baseline': ax.annotate(f"{r['level']:g}", (r['robustness'], r['accuracy']), fontsize=7)
    ax.set(title=f'LeNet, {name} (reduced)', xlabel='robustness (mean over sigma)', ylabel='clean accuracy')
    ax.legend(fontsize=7);


# %% [markdown]
# ## Fair comparison at matched accuracy (`003` Fig 4)
# `003` keeps only models whose clean accuracy is at least the baseline's minus a tolerance (0% on MNIST) and then
# compares the most robust of each method. With 2 epochs and 500 test images the measured accuracy has a standard
# error of about 2%, so the reduced run uses one standard error of the baseline's accuracy as the tolerance (on so
# small a run the comparison is indicative only; with no model inside the tolerance it says so):

# %%
def fair(rows, tol):
    base = rows[0]
    keep = [r for r in rows[1:] if r['accuracy'] >= base['accuracy'] - tol]
    best = {k: max((r for r in keep if r['kind'] == k), key=lambda r: r['robustness'], default=None)
            for k in ('augment', 'regularizer')}
    return base, best

for name, rows in small.items():
    acc = rows[0]['accuracy']
    base, best = fair(rows, (acc * (1 - acc) / SMALL['n_test']) ** 0.5)
    print(f"{name}: baseline accuracy {base['accuracy']:.3f} robustness {base['robustness']:.3f}")
    for k, r in best.items():
        print(f"  best {k:11s}: " + ('none within tolerance' if r is None else
              f"sigma {r['sigma']:g}, N/alpha {r['level']:g}: accuracy {r['accuracy']:.3f} robustness {r['robustness']:.3f}"))

# %% [markdown]
# Published (`003` Fig 4a, MNIST, LeNet, full training): the regularizer reaches the robustness of 21-fold
# augmentation at the baseline's accuracy; on CIFAR-10 twice the best augmentation's. The figure's bar heights are
# not given in the text, so no numbers are compared here.

# %% [markdown]
# ## Cost of each scheme
# The last column of the grid above is the training time per epoch of each run (1,350 images, validation included),
# measured in one sitting. A cleaner figure is one training step (forward, backward, Adam update) of LeNet on a batch
# of 100 MNIST images, timed side by side by `step_costs` (chapter 21). The regularizer runs the first layer once and
# the network after the first ReLU, $\Omega$, on $2N$ inputs ($\mathrm{relu}(\mu_2)$ and $\mu_3$). In LeNet, 87% of
# the multiply-adds of a forward pass (conv2, fc1, fc2: 2.0M of 2.3M) come after the first ReLU, so a regularized
# step costs about what a vanilla step on a batch of $2N$ costs: about twice a vanilla step on this CPU, which
# has no spare throughput for a larger batch. The row "vanilla, batch 2N" measures that floor directly. Since the fused
# first ReLU of chapter 19, the regularizer sits on it (the composed elementwise moments made it 2.5-3.4× before).
# **The target of about 1.5× is therefore out of reach on a CPU for LeNet**, by arithmetic rather than by
# implementation. The regularizer still costs no more than 2-fold augmentation, and it stays flat in $\tilde N$, where
# augmentation grows with it. The CPU here is shared, so the ratios move by some 10% between runs.

# %%
mn_batch = load('mnist', 'train', limit=100)[:2]
schemes = {**step_schemes(sigma=0.5, alpha=1., folds=(2, 6)), 'gradient norm (p=2)': GradientNormLoss(0.1, 2)}
costs = step_costs(lambda: lenet(torch.Generator().manual_seed(0)), schemes, *mn_batch, rounds=5, steps=4)
for k, (sec, ratio) in costs.items(): print(f'{k:28s} {1e3 * sec:7.1f} ms/step   {ratio:5.2f} x vanilla')
test_eq(costs['regularizer (eq 3), alpha 1'][1] < costs['augmentation N=6'][1], True)


# %% [markdown]
# **On a GPU** a small LeNet step is bound by kernel launches rather than arithmetic, so there the second pass of
# $\Omega$ costs little and the extra elementwise kernels decide. Measured once (2026-11-30, NVIDIA H200, torch 2.11,
# CUDA 13; random images in $[0, 1]$, best of 5 rounds of 20 synchronized steps), **with the composed elementwise
# moments, before the fused first ReLU**: at batch 100, vanilla 2.17 ms, regularizer 3.96 ms (1.83×), augmentation
# N=2 2.65 ms (1.22×), N=6 2.54 ms (1.17×); at batch 1000, vanilla 1.99 ms, regularizer 4.97 ms (2.50×), N=2 2.95 ms
# (1.48×), N=6 7.35 ms (3.70×). The fused version cuts the operations a regularized step launches from 198 to 156
# (a vanilla step: 99; leaf ATen operations counted with the torch profiler, allocations and views left out) and no
# longer waits on the host for the check of $\sigma$. It has not been measured on a GPU yet (none was lent to the
# session that wrote it): `netmoments stepcost --device cuda` (chapter 90) prints the same table there.

# %% [markdown]
# ## Lyu et al.: softmax models and weight decay (Tables VI-IX)
# `004` §V-A fits its misclassification model to softmax regressions on MNIST trained with weight decay
# $\lambda \in \{10^{-4}, 10^{-2}, 1\}$. The paper does not say how $\lambda$ scales against the data term; we read it as
# $\sum_{\text{batch of }100} L + \lambda\|W\|^2$, i.e. $\lambda/100$ against the mean loss. Default run: 5,000
# training images, 15 epochs of Adam ($10^{-2}$, batches of 500); the line search, the fit (Table VI), eq 33
# (Table VIII) and the measured rates (Table VII) on the first 5,000 test images (the paper fits on the training set).

# %%
def softmax_model(train, lam, epochs=15, seed=0):
    torch.manual_seed(seed)   # notebook fixture
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    loss = lambda m, x, y: F.cross_entropy(m(x), y) + lam / 100 * m[1].weight.pow(2).sum()
    return fit(model, train, loss=loss, epochs=epochs, lr=1e-2, batch_size=500, progress=False, lr_patience=100,
               patience=100).model

mn_train = load('mnist', 'train', limit=5_000)[:2]
mn_test = load('mnist', 'test', limit=5_000)[:2]
LYU = {1e-4: (0.2744, 0.1511, (6.02, 11.99, 40.07), (6.02, 12.12, 25.47), (0.07, 0.04)),
       1e-2: (0.4722, 0.2531, (6.29, 8.22, 22.44), (6.29, 10.16, 17.01), (0.01, 0.02)),
       1.: (1.2718, 0.6654, (8.93, 9.16, 11.33), (8.93, 11.61, 12.63), (0.01, 0.01))}
lyu = {lam: predicted_misclassification(softmax_model(mn_train, lam), *mn_test, [0., 0.01, 0.1, 0.3], max_norm=8.,
                                        steps=160, draws=3) for lam in LYU}
print('Table VI: minimum perturbation   ours mu_a   s_a    (published mu_a  s_a)   found')
for lam, r in lyu.items():
    print(f'  lambda = {lam:g}:{"":14s}{r.mu_a:8.4f} {r.s_a:7.4f}   ({LYU[lam][0]:.4f}  {LYU[lam][1]:.4f})   {r.found}')
print('\nTables VII / VIII, % error at sigma 0, 0.1, 0.3: measured | eq 33 (published measured | published eq 33)')
for lam, r in lyu.items():
    meas = [100 * r.measured[i].item() for i in (0, 2, 3)]
    pred = [100 * r.p_miss.item()] + [100 * r.predicted[i].item() for i in (2, 3)]
    print(f'  lambda = {lam:g}: ' + ' '.join(f'{v:5.2f}' for v in meas) + ' | ' + ' '.join(f'{v:5.2f}' for v in pred)
          + f'   ({" ".join(map(str, LYU[lam][2]))} | {" ".join(map(str, LYU[lam][3]))})')
print('\nTable IX, additional % error at sigma = 0.01: measured | eq 33 minus P(miss) (published actual | predicted)')
for lam, r in lyu.items():
    add_m = 100 * (r.measured[1] - r.measured[0]).item()
    add_p = 100 * (misclassification_rate(r.p_miss, r.mu_a, r.s_a, 0.01) - misclassification_rate(r.p_miss, r.mu_a, r.s_a, 0.)).item()
    print(f'  lambda = {lam:g}: {add_m:6.3f} | {add_p:6.3f}   ({LYU[lam][4][0]} | {LYU[lam][4][1]})')

# %% [markdown]
# Our softmax models, trained on 5,000 images, err more than the paper's (about 11-15% clean against 6-9%), so the
# absolute rates differ. The paper's trends hold: a larger $\lambda$ gives a larger mean minimum perturbation
# (Table VI, where the $\lambda = 1$ value is close to the published 1.27) and a flatter error curve under noise
# (Table VII), and eq 33 follows the measured rates within a few points at $\sigma = 0.3$ while overestimating them
# at $\sigma = 0.1$ (the normal fit puts mass near $\|a\| = 0$, `004` §V-A). For Table IX the paper replaces the
# normal fit near 0 by a linear density read off its histogram; we show plain eq 33, which is not built for that
# regime, beside the measured increase (5,000 points × 3 draws: 0.01% is one or two flips, so only the order of
# magnitude is meaningful). The assertion checks the Table VI trend:

# %%
mus = [lyu[lam].mu_a.item() for lam in sorted(LYU)]
test_eq(mus == sorted(mus), True)

# %% [markdown]
# ## Gradient regularization under Gaussian noise (`004` Tables IV-V analogue)
# `004` reports test errors under Gaussian noise of std 0, 0.1, 0.3 for maxout networks trained with and without the
# $p = 2$ gradient regularizer (MNIST Table IV: conv. maxout 0.45/0.76/20.17% vs 0.39/0.44/14.36%). We train LeNet
# both ways on the reduced MNIST run (the penalty's $\sigma = 0.5$, not tuned) and measure the same errors on 500 test
# images (one noise draw per image, `mode="label"`). In 2 epochs the penalty mostly slows training down, so the
# regularized model need not be better here; the published gain is for fully trained maxout networks:

# %%
train, test = datasets('mnist', SMALL)
errors = {}
for label, loss in (('LeNet', cross_entropy_loss), ('LeNet + gradient p = 2', GradientNormLoss(0.5, 2))):
    m = fit(lenet(torch.Generator().manual_seed(0)), train, loss=loss, epochs=SMALL['epochs'], lr=SMALL['lr'],
            batch_size=SMALL['batch_size'], progress=False).model
    errors[label] = 1 - noise_robustness(m, test[0], [0., 0.1, 0.3], mode='label', y=test[1]).robustness
for label, e in errors.items(): print(f'{label:24s} ' + '  '.join(f'{100 * v:6.2f}%' for v in e.tolist()))

# %% [markdown]
# ## Full grid (`#| slow`)
# All of `003`'s LeNet settings on MNIST and Fashion-MNIST with the full training sets and Table 1's recipe. On this
# 2-core CPU a baseline run takes tens of minutes and 21-fold augmentation 21 times that: the whole grid (2 × 84 runs)
# needs a GPU. It runs only with `NETMOMENTS_FULL=1` and writes `data/results/robust_training_<dataset>.json`;
# **it has not been run for this page.** The cell after it shows saved results when present.

# %%
#| slow
FULL_GRID = ([('baseline', 0., 0)] + [('augment', s, n) for n in (2, 6, 11, 21) for s in (0.125, 0.25, 0.325, 0.5, 1.)]
             + [('regularizer', s, a) for a in (0.5, 1, 1.5, 2, 5, 10, 20)
                for s in (0.125, 0.25, 0.325, 0.5, 1., 2., 5., 10., 20.)])
if os.environ.get('NETMOMENTS_FULL') == '1':
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    where = torch.cuda.get_device_name() if device == 'cuda' else platform.processor() or platform.machine()
    for name in ('mnist', 'fashion-mnist'):
        train, test = datasets(name, FULL)
        rows = [run(train, test, *s, cfg=FULL, device=device) for s in FULL_GRID]
        out = Path('../data/results'); out.mkdir(parents=True, exist_ok=True)
        (out / f'robust_training_{name}.json').write_text(json.dumps(dict(device=where, rows=rows), indent=1))
else: print('full grid: set NETMOMENTS_FULL=1 (GPU advised; hours on this CPU)')

# %%
for name in ('mnist', 'fashion-mnist'):
    path = Path(f'../data/results/robust_training_{name}.json')
    if not path.exists(): print(f'{path.name}: not present (full grid not run)'); continue
    saved = json.loads(path.read_text())
    base, best = fair(saved['rows'], 0.)
    print(f"{name} (ran on {saved['device']}): baseline {base['accuracy']:.4f} / {base['robustness']:.3f}; best: "
          + '; '.join(f"{k} {r['sigma']:g}/{r['level']:g}: {r['accuracy']:.4f} / {r['robustness']:.3f}"
                      for k, r in best.items() if r is not None))

# %% [markdown]
# # Training loop
# > The training recipe of Alfadly et al. 2019 (Table 1): a seeded validation split, learning-rate decay on plateau, early stopping and the best-validation checkpoint, for any loss taking (model, x, y); CPU or GPU, with a progress bar

# %%
#| default_exp train

# %%
#| export
from __future__ import annotations
import copy, time
from typing import Callable, NamedTuple
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm
from netmoments.bench import best_time
from netmoments.regularizers import GaussianMomentLoss, noisy_augmentation

# %%
#| hide
from fastcore.test import test_eq, test_close, test_fail
from netmoments.core import Table
from netmoments.regularizers import GradientNormLoss


# %% [markdown]
# [Alfadly et al. (2019)](99_references.ipynb#alfadly2019) train every model the same way (Table 1): 10% of the training set held out for validation, the validation
# loss monitored after each epoch, the learning rate multiplied by `lr_factor` after `lr_patience` epochs without
# improvement, training stopped after `patience` such epochs or 100 epochs, and the model with the best validation
# loss kept. For LeNet: Adam ([Kingma & Ba (2015)](99_references.ipynb#kingma2015)), learning rate $10^{-4}$, batches of 1000,
# patience 3 and factor 0.9, early stop 10, no weight decay. `fit` does that for any loss `loss(model, x, y) -> scalar`:
# plain cross entropy, the losses of [Gaussian-robust training losses](19_regularizers.ipynb), or anything else. An `augment(x, y, generator) -> (x, y)` hook transforms each training batch (N-fold noisy
# augmentation). The validation loss is the training loss on the clean validation set (without `augment`).

# %%
#| export
def cross_entropy_loss(model:nn.Module, x:Tensor, y:Tensor)->Tensor:
    "The vanilla loss: cross entropy of model(x), averaged over the batch."
    return F.cross_entropy(model(x), y)

class FitResult(NamedTuple):
    "What `fit` returns."
    model:nn.Module    # the trained model, holding the best-validation weights, in eval mode
    history:list       # one dict per epoch: epoch, train_loss, val_loss, val_accuracy, lr, seconds
    best_epoch:int     # epoch (1-based) of the kept weights
    best_val_loss:float  # validation loss of the kept weights


# %%
#| exporti
def _as_xy(data, name):
    "(x, y) of a Dataset or a tuple; anything else raises."
    if hasattr(data, 'x') and hasattr(data, 'y'): return data.x, data.y
    if isinstance(data, (tuple, list)) and len(data) >= 2: return data[0], data[1]
    raise TypeError(f'{name} must be a Dataset (x, y, ...) or a tuple (x, y); got {type(data).__name__}')

def _split(x, y, val, val_fraction, generator):
    "(train x, y, val x, y): the given validation set, or a seeded random `val_fraction` of the training set."
    if val is not None: return (x, y, *_as_xy(val, 'val'))
    if not 0 < val_fraction < 1: raise ValueError(f'val_fraction must be in (0, 1); got {val_fraction!r}')
    perm = torch.randperm(len(x), generator=generator)
    k = max(1, round(val_fraction * len(x)))
    return x[perm[k:]], y[perm[k:]], x[perm[:k]], y[perm[:k]]

def _evaluate(model, loss, x, y, batch_size, device):
    "Mean loss and accuracy over (x, y), in batches."
    total, right = 0., 0
    grad = getattr(loss, 'needs_input_grad', False)
    for s in range(0, len(x), batch_size):
        xb, yb = x[s:s + batch_size].to(device), y[s:s + batch_size].to(device)
        with torch.set_grad_enabled(grad):
            total += loss(model, xb, yb).item() * len(xb)
        with torch.no_grad(): right += (model(xb).argmax(-1) == yb).sum().item()
    return total / len(x), right / len(x)


# %%
#| export
def fit(
    model:nn.Module,           # trained in place (then set to its best-validation weights)
    train,                     # Dataset or (x, y)
    val=None,                  # Dataset or (x, y); None: a seeded `val_fraction` of `train`
    loss:Callable=cross_entropy_loss,  # loss(model, x, y) -> scalar
    epochs:int=100,            # at most this many epochs
    lr:float=1e-4,             # initial learning rate
    batch_size:int=1000,       # samples per training step
    lr_patience:int=3,         # epochs without improvement before the learning rate is cut
    lr_factor:float=0.9,       # the cut
    patience:int=10,           # epochs without improvement before stopping
    optimizer:str='adam',      # 'adam' or 'sgd' (Nesterov, momentum 0.9)
    weight_decay:float=0.,     # the optimizer's weight decay
    val_fraction:float=0.1,    # share of `train` held out when `val` is None
    augment:Callable|None=None,  # augment(x, y, generator) -> (x, y), applied to each training batch
    seed:int=0,                # seeds the split, the shuffling and `augment`'s generator
    device:str|torch.device|None=None,  # default: the device of the model's parameters
    progress:bool=True,        # tqdm bar over the epochs
)->FitResult:
    "Train `model` with the recipe of Alfadly et al. 2019, Table 1: validation split, LR decay on plateau, early stopping, best checkpoint."
    x, y = _as_xy(train, 'train')
    if len(x) != len(y): raise ValueError(f'train x and y must hold as many samples; got {len(x)} and {len(y)}')
    for name, v in (('epochs', epochs), ('batch_size', batch_size), ('lr_patience', lr_patience), ('patience', patience)):
        if not isinstance(v, int) or v < 1: raise ValueError(f'{name} must be an int >= 1; got {v!r}')
    if optimizer not in ('adam', 'sgd'): raise ValueError(f"optimizer must be 'adam' or 'sgd'; got {optimizer!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    cpu_gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator(device=device).manual_seed(seed + 1)
    xt, yt, xv, yv = _split(x, y, val, val_fraction, cpu_gen)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.Adam(params, lr=lr, weight_decay=weight_decay) if optimizer == 'adam' else
           torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay))
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=lr_factor, patience=lr_patience - 1, threshold=0.)
    best, best_state, best_epoch, stale, history = float('inf'), None, 0, 0, []
    bar = tqdm(range(1, epochs + 1), disable=not progress, unit='epoch')
    for epoch in bar:
        t0, model = time.perf_counter(), model.train()
        perm, run = torch.randperm(len(xt), generator=cpu_gen), 0.
        for s in range(0, len(xt), batch_size):
            idx = perm[s:s + batch_size]
            xb, yb = xt[idx].to(device), yt[idx].to(device)
            if augment is not None: xb, yb = augment(xb, yb, aug_gen)
            opt.zero_grad(set_to_none=True)
            value = loss(model, xb, yb)
            value.backward(); opt.step()
            run += value.item() * len(idx)
        model.eval()
        val_loss, val_acc = _evaluate(model, loss, xv, yv, batch_size, device)
        sched.step(val_loss)
        history.append(dict(epoch=epoch, train_loss=run / len(xt), val_loss=val_loss, val_accuracy=val_acc,
                            lr=opt.param_groups[0]['lr'], seconds=time.perf_counter() - t0))
        bar.set_postfix(val_loss=f'{val_loss:.4f}', val_acc=f'{val_acc:.4f}')
        if val_loss < best:
            best, best_epoch, stale = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= patience: break
    model.load_state_dict(best_state)
    return FitResult(model.eval(), history, best_epoch, best)


# %% [markdown]
# A small problem shows each rule at work. Two Gaussian blobs in 20 dimensions, a two-layer ReLU net: training lowers
# the validation loss, the split is 10%, and the same seed gives the same weights:

# %%
def blobs(n, seed):
    "n points of two Gaussian blobs in 20 dimensions and their labels."
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    return torch.randn(n, 20, generator=g) * 0.8 + (2 * y[:, None] - 1) * 0.5, y

def small_net(seed):
    "A two-layer ReLU net for the blobs."
    torch.manual_seed(seed)   # notebook fixture only; the library never touches the global RNG
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 2))

data = blobs(2000, 0)
res = fit(small_net(0), data, epochs=15, lr=1e-2, batch_size=100, progress=False)
test_eq(res.history[0]['val_loss'] > res.best_val_loss, True)
test_eq(res.history[-1]['val_accuracy'] > 0.9, True)
res2 = fit(small_net(0), data, epochs=15, lr=1e-2, batch_size=100, progress=False)
test_eq([h['val_loss'] for h in res.history], [h['val_loss'] for h in res2.history])
print(f"{len(res.history)} epochs, best epoch {res.best_epoch}, val loss {res.best_val_loss:.4f}, "
      f"val accuracy {res.history[res.best_epoch - 1]['val_accuracy']:.3f}")

# %% [markdown]
# **Plateau, early stop, checkpoint.** With an absurd learning rate the validation loss stops improving: the rate is
# cut by `lr_factor` after `lr_patience` stale epochs, training stops after `patience` of them, and the kept weights
# are those of the best epoch (their validation loss is re-measured):

# %%
res = fit(small_net(1), data, epochs=60, lr=5., batch_size=100, lr_patience=2, lr_factor=0.5, patience=4,
          optimizer='sgd', progress=False)
h = res.history
test_eq(len(h) - res.best_epoch, 4)                          # stopped 4 stale epochs after the best
test_eq(h[-1]['lr'] < 5., True)
xv, yv = _split(*data, None, 0.1, torch.Generator().manual_seed(0))[2:]
test_close(_evaluate(res.model, cross_entropy_loss, xv, yv, 100, 'cpu')[0], res.best_val_loss, eps=1e-5)

# %% [markdown]
# Any loss module of [Gaussian-robust training losses](19_regularizers.ipynb) plugs in, and so does augmentation; bad arguments are refused:

# %%
img = (torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.randint(0, 3, (300,), generator=torch.Generator().manual_seed(1)))
conv = lambda: nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
for loss in (GaussianMomentLoss(0.5, 1.), GradientNormLoss(0.1, 2)):
    r = fit(conv(), img, loss=loss, epochs=2, lr=1e-3, batch_size=50, progress=False)
    test_eq(len(r.history), 2)
r = fit(conv(), img, epochs=1, batch_size=50, augment=lambda x, y, g: noisy_augmentation(x, y, 0.2, 3, g), progress=False)
test_fail(lambda: fit(conv(), img, epochs=0), contains='epochs must be')
test_fail(lambda: fit(conv(), (img[0], img[1][:5])), contains='as many samples')
test_fail(lambda: fit(conv(), img, optimizer='lbfgs'), contains='optimizer must be')


# %% [markdown]
# ## The cost of a training step
# `step_costs` times one training step (zero the gradients, the loss, backward, an optimizer update) of several
# schemes side by side: each scheme trains its own fresh copy of the model on the same batch, the schemes take turns
# (round robin), and each keeps its best round, so a load that comes and goes on a shared machine hits them alike.
# On a CUDA device every timed round is synchronized. The first scheme is the baseline of the ratios.

# %%
#| export
def step_costs(
    model_fn:Callable,   # () -> a fresh model; each scheme trains its own
    schemes:dict,        # name -> loss(model, x, y), or (loss, augment(x, y, generator) -> (x, y)); first: baseline
    x:Tensor,            # one batch of inputs, on the device to time
    y:Tensor,            # its labels
    rounds:int=5,        # round-robin rounds; each scheme keeps its best
    steps:int=10,        # training steps per timed round
    lr:float=1e-3,       # Adam's learning rate
    seed:int=0,          # seeds each augmentation generator
)->dict:                 # name -> (seconds per step, ratio to the first scheme)
    "Seconds per training step (loss, backward, Adam update) of each scheme, timed side by side on one batch."
    if not schemes: raise ValueError('schemes must name at least one scheme')
    if len(x) != len(y): raise ValueError(f'x and y must hold as many samples; got {len(x)} and {len(y)}')
    for name, v in (('rounds', rounds), ('steps', steps)):
        if not isinstance(v, int) or v < 1: raise ValueError(f'{name} must be an int >= 1; got {v!r}')
    def step_fn(scheme):
        loss, augment = scheme if isinstance(scheme, tuple) else (scheme, None)
        model = model_fn().to(x.device).train()
        opt = torch.optim.Adam(model.parameters(), lr)
        gen = torch.Generator(device=x.device).manual_seed(seed)
        def run():
            for _ in range(steps):
                xb, yb = augment(x, y, gen) if augment else (x, y)
                opt.zero_grad(set_to_none=True); loss(model, xb, yb).backward(); opt.step()
        return run
    runs = {k: step_fn(v) for k, v in schemes.items()}
    best = dict.fromkeys(runs, float('inf'))
    for _ in range(rounds):
        for k, run in runs.items(): best[k] = min(best[k], best_time(run, repeats=1, device=x.device) / steps)
    base = next(iter(best.values()))
    return {k: (t, t / base) for k, t in best.items()}


# %% [markdown]
# For example the two-layer net above, plain and with the regularizer of
# [Gaussian-robust training losses](19_regularizers.ipynb) (timings depend on the hardware that runs the page;
# [Robust training experiments](22_robust_training.ipynb) times LeNet):

# %%
xs_, ys_ = data[0][:100], data[1][:100]
costs = step_costs(lambda: small_net(0), {'vanilla': cross_entropy_loss, 'regularizer': GaussianMomentLoss(0.5, 1.),
                                          'augmentation N=3': (cross_entropy_loss,
                                                               lambda x, y, g: noisy_augmentation(x, y, 0.5, 3, g))},
                   xs_, ys_, rounds=3, steps=5)
test_eq(list(costs), ['vanilla', 'regularizer', 'augmentation N=3']); test_eq(costs['vanilla'][1], 1.)
test_fail(lambda: step_costs(lambda: small_net(0), {}, xs_, ys_), contains='at least one')
test_fail(lambda: step_costs(lambda: small_net(0), {'v': cross_entropy_loss}, xs_, ys_[:5]), contains='as many samples')
Table([[k, 1e6 * sec, ratio] for k, (sec, ratio) in costs.items()], ['scheme', 'us / step', 'x vanilla'],
      fmt={'us / step': '.0f', 'x vanilla': '.2f'})


# %% [markdown]
# `step_schemes` names the schemes of the cost comparison of Alfadly et al. (2019), as
# [Robust training experiments](22_robust_training.ipynb) and `netmoments stepcost` ([Command line](90_cli.ipynb))
# time them:
# vanilla; vanilla on the batch repeated twice, the floor under the regularizer, which runs everything after the
# first ReLU on $2N$ inputs; the regularizer of eq 3; and $\tilde N$-fold noisy augmentation.

# %% [markdown]
# `training_scheme` gives the loss and the batch augmentation of each way of training that Alfadly et al. (2019) compare,
# for `fit`: plain cross-entropy, the moment regularizer of eq. 3 with weight $\alpha$, or $\tilde N$-fold noisy
# augmentation; the robust-training experiments and the cost comparison below use it.

# %%
#| export
def training_scheme(
    kind:str,          # 'baseline', 'regularizer' or 'augment'
    sigma:float=0.,    # training noise std of the regularizer or the augmentation
    level:float=0,     # the regularizer's weight alpha, or the augmentation's folds N~
)->tuple:              # (loss, augment) for `fit`; augment is None for the first two
    "The loss and batch augmentation of one training scheme of Alfadly et al. 2019: plain, moment regularizer (eq. 3) or N-fold noise."
    if kind == 'baseline': return cross_entropy_loss, None
    if kind == 'regularizer': return GaussianMomentLoss(sigma, level), None
    if kind == 'augment': return cross_entropy_loss, lambda x, y, g: noisy_augmentation(x, y, sigma, level, g)
    raise ValueError(f"kind must be 'baseline', 'regularizer' or 'augment'; got {kind!r}")


# %%
test_eq(training_scheme('baseline'), (cross_entropy_loss, None))
assert isinstance(training_scheme('regularizer', 0.5, 1.)[0], GaussianMomentLoss)
xa, ya = training_scheme('augment', 0.5, 3)[1](torch.zeros(2, 1, 4, 4), torch.tensor([1, 2]), torch.Generator())
test_eq(len(xa), len(ya))
test_fail(lambda: training_scheme('mixup'), contains="kind must be 'baseline', 'regularizer' or 'augment'")


# %%
#| export
def step_schemes(
    sigma:float=0.5,     # training noise std of the regularizer and of the augmentation
    alpha:float=1.,      # the regularizer's weight
    folds:tuple=(2, 6),  # augmentation folds N~
)->dict:                 # name -> scheme, for `step_costs`
    "Vanilla, vanilla on 2N, the analytic regularizer (Alfadly et al. 2019, eq. 3) and N-fold augmentation, as `step_costs` schemes."
    return {'vanilla': cross_entropy_loss,
            'vanilla, batch 2N': (cross_entropy_loss, lambda x, y, g: (x.repeat(2, *[1] * (x.ndim - 1)), y.repeat(2))),
            f'regularizer (eq 3), alpha {alpha:g}': training_scheme('regularizer', sigma, alpha)[0],
            **{f'augmentation N={n}': training_scheme('augment', sigma, n) for n in folds}}


# %%
sch = step_schemes(folds=(2, 3))
test_eq(list(sch), ['vanilla', 'vanilla, batch 2N', 'regularizer (eq 3), alpha 1', 'augmentation N=2', 'augmentation N=3'])
test_eq([v[1](xs_, ys_, torch.Generator())[0].shape[0] for k, v in sch.items() if isinstance(v, tuple)], [200, 200, 300])

# %% [markdown]
# ## Export -

# %%
#| hide
#| eval: false
import nbdev; nbdev.nbdev_export()

# %% [markdown]
# # Training loop
# > The training recipe of Alfadly et al. 2019 (Table 1): a seeded validation split, learning-rate decay on plateau, early stopping and the best-validation checkpoint, for any loss taking (model, x, y); CPU or GPU, with a progress bar

# %%
#| default_exp train

# %%
#| export
from __future__ import annotations
import copy, math, numbers, time, warnings
from typing import Callable, NamedTuple
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm
from netmoments.bench import best_time
from netmoments.core import check_count, check_finite, check_model, eval_mode
from netmoments.regularizers import GaussianMomentLoss, noisy_augmentation, _check_batch, _check_dtype, _check_values

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
    _check_batch(x, y); _check_dtype(model, x)
    logits = model(x)
    _check_values(model, x, y, logits)
    return F.cross_entropy(logits, y)

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
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) or not 0 < val_fraction < 1:
        raise ValueError(f'val_fraction must be in (0, 1); got {val_fraction!r}')
    k = max(1, round(val_fraction * len(x)))
    if k >= len(x): raise ValueError(f'val_fraction {val_fraction!r} of {len(x)} train samples leaves none to train on')
    perm = torch.randperm(len(x), generator=generator)
    return x[perm[k:]], y[perm[k:]], x[perm[:k]], y[perm[:k]]

def _check_data(x, y, name, model):
    "Raise naming `name` x or y unless x is a non-empty finite floating batch of the model's dtype and y matches it."
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 1:
        raise ValueError(f'{name} x must be a floating tensor (N, ...); got '
                         f'{f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__}')
    if len(x) == 0: raise ValueError(f'{name} x must hold at least one sample; got shape {tuple(x.shape)}')
    if not isinstance(y, Tensor) or len(y) != len(x):
        raise ValueError(f'{name} x and y must hold as many samples; got {len(x)} and '
                         f'{len(y) if isinstance(y, Tensor) else type(y).__name__}')
    check_finite(x, f'{name} x')
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    if p is not None and p.dtype != x.dtype:
        raise TypeError(f'model has {str(p.dtype).removeprefix("torch.")} parameters but {name} x is '
                        f'{str(x.dtype).removeprefix("torch.")}; convert one')

def _finite_weights(model):
    "Are all the floating parameters of model finite?"
    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.is_floating_point())

def _check_classes(y, name, classes):
    "Raise ValueError naming `name` y where integer labels fall outside [0, classes)."
    if y.is_floating_point(): return check_finite(y, f'{name} y')   # targets of the loss's own form
    bad = (y < 0) | (y >= classes)
    if bad.any(): raise ValueError(f'{name} y must hold class indices in [0, {classes}); got {int(y[bad][0])}')

def _check_positive(v, name, high=math.inf):
    "Raise ValueError unless v is a finite number in (0, high)."
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or not 0 < v < high:
        raise ValueError(f'{name} must be a finite number > 0{f" and < {high:g}" if high < math.inf else ""}; got {v!r}')

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
    check_model(model, 'model')
    x, y = _as_xy(train, 'train')
    _check_data(x, y, 'train', model)
    epochs, batch_size = check_count(epochs, 'epochs', 1), check_count(batch_size, 'batch_size', 1)
    lr_patience, patience = check_count(lr_patience, 'lr_patience', 1), check_count(patience, 'patience', 1)
    seed = check_count(seed, 'seed', 0)
    _check_positive(lr, 'lr'); _check_positive(lr_factor, 'lr_factor', 1)
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, numbers.Real) or not 0 <= weight_decay < math.inf:
        raise ValueError(f'weight_decay must be a finite number >= 0; got {weight_decay!r}')
    if optimizer not in ('adam', 'sgd'): raise ValueError(f"optimizer must be 'adam' or 'sgd'; got {optimizer!r}")
    if not callable(loss): raise TypeError(f'loss must be callable as loss(model, x, y); got {type(loss).__name__}')
    if augment is not None and not callable(augment):
        raise TypeError(f'augment must be callable as augment(x, y, generator) or None; got {type(augment).__name__}')
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    cpu_gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator(device=device).manual_seed(seed + 1)
    xt, yt, xv, yv = _split(x, y, val, val_fraction, cpu_gen)
    if val is not None: _check_data(xv, yv, 'val', model)
    with torch.no_grad(), eval_mode(model): classes = model(x[:1].to(device)).shape[1]
    _check_classes(y, 'train', classes); _check_classes(yv, 'val', classes)
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
            try: value = loss(model, xb, yb)
            except ValueError:             # the losses refuse non-finite weights: an update made them so
                if _finite_weights(model): raise
                break
            value.backward(); opt.step()
            run += value.item() * len(idx)
        if not _finite_weights(model):     # diverged: no later epoch can recover, the best weights are kept
            if best_state is None:
                raise ValueError(f'training diverged in epoch {epoch}: the weights of model became NaN or infinite '
                                 f'before any validation; lower lr (it is {opt.param_groups[0]["lr"]:g})')
            warnings.warn(f'training diverged in epoch {epoch}: the weights of model became NaN or infinite; '
                          f'keeping those of epoch {best_epoch}')
            break
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
# A learning rate so large that an update makes the weights NaN or infinite ends the training at once, since no later
# epoch can recover: with a warning and the best weights when an epoch was validated, else with an error.

# %%
test_fail(lambda: fit(small_net(1), data, epochs=3, lr=1e38, batch_size=100, optimizer='sgd', progress=False),
          contains='training diverged in epoch 1')

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
test_fail(lambda: fit(conv(), (img[0], img[1] + 3)), contains='train y must hold class indices in [0, 3)')
test_fail(lambda: fit(conv(), (img[0].clone().fill_(torch.nan), img[1])), contains='train x must be finite')
test_fail(lambda: fit(conv(), img, val=(img[0][:0], img[1][:0])), contains='val x must hold at least one sample')
test_fail(lambda: fit(conv(), (img[0].double(), img[1])), exc=TypeError, contains='train x is float64')
test_fail(lambda: fit(conv(), img, seed=-1), contains='seed must be >= 0')
test_fail(lambda: fit(conv(), (img[0][:1], img[1][:1])), contains='leaves none to train on')
test_fail(lambda: cross_entropy_loss(conv(), img[0][:5], img[1][:5] + 3), contains='y must hold class indices in [0, 3)')


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
    if not isinstance(schemes, dict) or not schemes: raise ValueError('schemes must name at least one scheme')
    for k, v in schemes.items():
        if not (callable(v) or isinstance(v, tuple) and len(v) == 2 and all(map(callable, v))):
            raise TypeError(f'schemes[{k!r}] must be a loss(model, x, y) or a pair (loss, augment); got {v!r}')
    if not callable(model_fn): raise TypeError(f'model_fn must be callable; got {type(model_fn).__name__}')
    _check_batch(x, y)
    check_finite(x, 'x')
    rounds, steps, seed = check_count(rounds, 'rounds', 1), check_count(steps, 'steps', 1), check_count(seed, 'seed', 0)
    _check_positive(lr, 'lr')
    probe = model_fn()
    check_model(probe, 'model_fn')
    dtypes = {p.dtype for p in probe.parameters() if p.is_floating_point()}
    if dtypes and x.dtype not in dtypes:
        raise TypeError(f'model_fn makes models with {", ".join(str(d).removeprefix("torch.") for d in dtypes)} '
                        f'parameters but x is {str(x.dtype).removeprefix("torch.")}; convert one')
    with torch.no_grad(), eval_mode(probe): classes = probe.to(x.device)(x[:1]).shape[1]
    if not y.is_floating_point() and ((y < 0) | (y >= classes)).any():
        raise ValueError(f'y must hold class indices in [0, {classes}); got {int(y[(y < 0) | (y >= classes)][0])}')
    def step_fn(scheme, model):
        loss, augment = scheme if isinstance(scheme, tuple) else (scheme, None)
        model = model.to(x.device).train()
        opt = torch.optim.Adam(model.parameters(), lr)
        gen = torch.Generator(device=x.device).manual_seed(seed)
        def run():
            for _ in range(steps):
                xb, yb = augment(x, y, gen) if augment else (x, y)
                opt.zero_grad(set_to_none=True); loss(model, xb, yb).backward(); opt.step()
        return run
    runs = {k: step_fn(v, probe if i == 0 else model_fn()) for i, (k, v) in enumerate(schemes.items())}
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
test_fail(lambda: step_costs(lambda: small_net(0), {'v': cross_entropy_loss}, xs_, ys_ + 2), contains='y must hold class indices in [0, 2)')
test_fail(lambda: step_costs(lambda: small_net(0), {'v': cross_entropy_loss}, xs_, ys_, steps=0), contains='steps must be >= 1')
test_fail(lambda: step_costs(lambda: small_net(0), {'v': 'ce'}, xs_, ys_), exc=TypeError, contains="schemes['v'] must be")
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
    if kind == 'augment':
        folds = check_count(level, 'level', 1)                 # refused here, not at the first batch
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f'sigma must be a finite number >= 0; got {sigma!r}')
        return cross_entropy_loss, lambda x, y, g: noisy_augmentation(x, y, sigma, folds, g)
    raise ValueError(f"kind must be 'baseline', 'regularizer' or 'augment'; got {kind!r}")


# %%
test_eq(training_scheme('baseline'), (cross_entropy_loss, None))
assert isinstance(training_scheme('regularizer', 0.5, 1.)[0], GaussianMomentLoss)
xa, ya = training_scheme('augment', 0.5, 3)[1](torch.zeros(2, 1, 4, 4), torch.tensor([1, 2]), torch.Generator())
test_eq(len(xa), len(ya))
test_fail(lambda: training_scheme('mixup'), contains="kind must be 'baseline', 'regularizer' or 'augment'")
test_fail(lambda: training_scheme('augment', 0.5, 0), contains='level must be')
test_fail(lambda: training_scheme('augment', float('nan'), 2), contains='sigma must be a finite number')


# %%
#| export
def step_schemes(
    sigma:float=0.5,     # training noise std of the regularizer and of the augmentation
    alpha:float=1.,      # the regularizer's weight
    folds:tuple=(2, 6),  # augmentation folds N~
)->dict:                 # name -> scheme, for `step_costs`
    "Vanilla, vanilla on 2N, the analytic regularizer (Alfadly et al. 2019, eq. 3) and N-fold augmentation, as `step_costs` schemes."
    if not isinstance(folds, (tuple, list)): raise TypeError(f'folds must be a tuple of ints >= 1; got {folds!r}')
    folds = tuple(check_count(n, 'folds', 1) for n in folds)
    return {'vanilla': cross_entropy_loss,
            'vanilla, batch 2N': (cross_entropy_loss, lambda x, y, g: (x.repeat(2, *[1] * (x.ndim - 1)), y.repeat(2))),
            f'regularizer (eq 3), alpha {alpha:g}': training_scheme('regularizer', sigma, alpha)[0],
            **{f'augmentation N={n}': training_scheme('augment', sigma, n) for n in folds}}


# %%
sch = step_schemes(folds=(2, 3))
test_eq(list(sch), ['vanilla', 'vanilla, batch 2N', 'regularizer (eq 3), alpha 1', 'augmentation N=2', 'augmentation N=3'])
test_eq([v[1](xs_, ys_, torch.Generator())[0].shape[0] for k, v in sch.items() if isinstance(v, tuple)], [200, 200, 300])
test_fail(lambda: step_schemes(folds=(0,)), contains='folds must be >= 1')
test_fail(lambda: step_schemes(sigma=-1.), contains='sigma must be >= 0')

# %% [markdown]
# ## Export -

# %%
#| hide
#| eval: false
import nbdev; nbdev.nbdev_export()

# %% [markdown]
# # Models
# > LeNet for MNIST (l = 3 of Alfadly et al. 2020), the synthetic FC-A/B/C and Conv-A/B/C networks with i.i.d. Gaussian weights (Bibi et al. 2018, §4.1), and the pretrained LeNet with a slice of the MNIST test set that ship with the package

# %%
#| default_exp models

# %%
#| export
from __future__ import annotations
import math
from pathlib import Path
import torch
from torch import nn
import netmoments
from netmoments.core import check_count, check_device

# %%
#| hide
import os
import time
import numpy as np
import matplotlib.pyplot as plt
from matplotlib.colors import LogNorm
import torch.nn.functional as F
from fastcore.test import test_eq, test_close, test_fail
from netmoments.core import Table
from netmoments.data import load


# %% [markdown]
# The moment expressions of the earlier chapters are exact for one Affine-ReLU-Affine network; the papers test them,
# through the [two-stage linearization](09_linearize.ipynb), on deeper networks of two kinds: synthetic ones whose
# weights are i.i.d. Gaussian ([Bibi et al. (2018)](99_references.ipynb#bibi2018), §4.1) and LeNet trained on MNIST
# (Bibi et al. (2018), §4.1; [Alfadly et al. (2020)](99_references.ipynb#alfadly2020), §4). This chapter builds both
# as plain `nn.Sequential` stacks, so that later chapters can cut them at any layer by slicing, and ships the trained
# LeNet and the first 1000 MNIST test images inside the package (`netmoments/data/`), so that the book, the main job
# and an installed wheel run without external data.
#
# No function here touches torch's global random state: networks are first built on the `meta` device (which draws
# nothing) and then filled from a local `torch.Generator`.

# %% [markdown]
# ## LeNet
# The papers' LeNet has "a total of four layers, two of which are convolutional with max pooling and the other two are
# fully connected", input $\mathbb R^{28\times 28}$ and $d = 10$ logits (Bibi et al. (2018), §4.1; Alfadly et al.
# (2020), §4). We use the common variant of the network of [LeCun et al. (1998)](99_references.ipynb#lecun1998)
# (20 and 50 channels of $5\times5$ filters, 500 hidden units) with a ReLU after each of the first three layers:
#
# | index | 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9 |
# |---|---|---|---|---|---|---|---|---|---|---|
# | module | Conv2d(1, 20, 5) | ReLU | MaxPool2d(2) | Conv2d(20, 50, 5) | ReLU | MaxPool2d(2) | Flatten | Linear(800, 500) | **ReLU #3** | Linear(500, 10) |
#
# Alfadly et al. (2020) choose $l$ as "the fully-connected layer just before the last ReLU activation", $l = 3$:
# ReLU #3 is module 8, so $R_{l-1}$ = `net[:8]` (input to the 500 pre-activations, $q = 500$) and $R_{l+1}$ =
# `net[9:]`. Inputs are $(N, 1, 28, 28)$ with pixels in $[0, 1]$ and no further normalization, as the
# $M \in [0, 1]^{28\times28}$ of Alfadly et al. (2020).
#
# `lenet` returns an untrained network with torch's default initialization (the law of `nn.Linear.reset_parameters`),
# drawn from `generator`.

# %%
#| exporti
def _init_default(net, generator):
    "Re-draw every Conv2d/Linear of `net` from torch's default init law, using `generator`."
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
                bound = 1 / math.sqrt(m.weight[0].numel())
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)
    return net


# %%
#| export
def lenet(
    generator:torch.Generator|None=None,  # source of the initial weights (None: torch's global generator)
    device:str|torch.device|None=None,    # where the parameters live (default CPU; 'meta' allocates nothing)
)->nn.Sequential:                         # maps images (N, 1, 28, 28) in [0, 1] to logits (N, 10)
    "The papers' LeNet: two conv + max-pool layers, two fully connected ones; module 8 is ReLU #3 (l = 3)."
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f'generator must be a torch.Generator or None; got {type(generator).__name__}')
    device = check_device('cpu' if device is None else device)
    with torch.device('meta'):
        net = nn.Sequential(
            nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10))
    if device.type == 'meta': return net
    return _init_default(net.to_empty(device='cpu'), generator).to(device)   # drawn on the CPU: same on every device


# %% [markdown]
# The shapes, the 431,080 parameters and the place of ReLU #3:

# %%
net = lenet(torch.Generator().manual_seed(0))
x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))
test_eq(net(x).shape, (5, 10))
test_eq(sum(p.numel() for p in net.parameters()), 431_080)
test_eq([i for i, m in enumerate(net) if isinstance(m, nn.ReLU)], [1, 4, 8])
test_eq((net[7].out_features, net[9].in_features), (500, 500))
assert torch.equal(net[9:](net[8](net[:8](x))), net(x))

# %% [markdown]
# The same generator seed gives the same network, another seed another one, and the global random state is not
# touched; `device='meta'` builds the skeleton without memory (how `pretrained` loads):

# %%
state = torch.get_rng_state()
first, again = lenet(torch.Generator().manual_seed(0)), lenet(torch.Generator().manual_seed(0))
other = lenet(torch.Generator().manual_seed(1))
test_eq(torch.get_rng_state(), state)
assert torch.equal(first[7].weight, again[7].weight)
assert not torch.equal(first[7].weight, other[7].weight)
bound = 1 / 800**0.5
assert first[7].weight.abs().max() <= bound and first[7].weight.abs().max() > 0.99 * bound
test_eq(lenet(device='meta')[0].weight.device.type, 'meta')
test_fail(lambda: lenet(0), exc=TypeError, contains='generator must be a torch.Generator or None; got int')
test_fail(lambda: lenet(device='gpu'), exc=ValueError, contains='device must name a torch device')

# %% [markdown]
# ## Synthetic networks
# Bibi et al. (2018), §4.1: "The first type only consists of fully connected layers separated by ReLU activations
# with input size $\mathbb R^{100}$ [...] with 2, 3 and 4 layers, denoted as FC-A, FC-B and FC-C [...] The other
# network type consists of convolutional layers separated by ReLU activations with input size $\mathbb R^{20\times20}$
# [...] depths of 2, 3 and 4, denoted as Conv-A, Conv-B and Conv-C. [...] The weights of all networks are randomly
# generated as i.i.d. Gaussian. [...] all networks have a fully connected layer at the end to map the output to a
# single scalar."
# The widths are in the supplementary material, which we do not have; our choices:
#
# - **Depth** counts the affine layers, the final fully connected one included, for both types. FC-A and Conv-A are
#   then Affine-ReLU-Affine networks, on which Theorems 1–2 hold without linearization; B and C need it.
# - **FC**: hidden layers of 100 units (as wide as the input). **Conv**: one input channel, 4 channels per layer,
#   $3\times3$ filters, stride 1, no padding and no pooling ($20\to18\to16\to14$ pixels a side), then `Flatten` and
#   the final layer. Every affine layer but the last is followed by a ReLU.
# - **Weights and biases** are i.i.d. $\mathcal N(0, 2/\text{fan-in})$, fan-in being the inputs of one unit (100 for
#   an FC layer, $9\times$ channels in for a convolution). This scaling of
#   [He et al. (2015)](99_references.ipynb#he2015) keeps the activations at the scale of the input whatever the depth
#   or width, so one set of input noise levels means the same thing for all six networks.
#
# | name | layers | hidden width(s) | parameters | input |
# |---|---|---|---|---|
# | FC-A | Linear, ReLU, Linear | 100 | 10,201 | (N, 100) |
# | FC-B | 2 × (Linear, ReLU), Linear | 100, 100 | 20,301 | (N, 100) |
# | FC-C | 3 × (Linear, ReLU), Linear | 100, 100, 100 | 30,401 | (N, 100) |
# | Conv-A | Conv, ReLU, Flatten, Linear | 4×18×18 = 1296 | 1,337 | (N, 1, 20, 20) |
# | Conv-B | 2 × (Conv, ReLU), Flatten, Linear | 1296, 1024 | 1,213 | (N, 1, 20, 20) |
# | Conv-C | 3 × (Conv, ReLU), Flatten, Linear | 1296, 1024, 784 | 1,121 | (N, 1, 20, 20) |
#
# Each maps a batch to one scalar per input, shape $(N, 1)$.

# %%
#| exporti
_SYNTHETIC = {'FC-A': ('fc', 2), 'FC-B': ('fc', 3), 'FC-C': ('fc', 4),
              'Conv-A': ('conv', 2), 'Conv-B': ('conv', 3), 'Conv-C': ('conv', 4)}

def _synthetic_layers(kind, depth):
    "The modules of a synthetic network: `depth` affine layers, ReLU between them, one scalar out."
    layers = []
    if kind == 'fc':
        for _ in range(depth - 1): layers += [nn.Linear(100, 100), nn.ReLU()]
        return layers + [nn.Linear(100, 1)]
    for k in range(depth - 1): layers += [nn.Conv2d(1 if k == 0 else 4, 4, 3), nn.ReLU()]
    side = 20 - 2 * (depth - 1)
    return layers + [nn.Flatten(), nn.Linear(4 * side * side, 1)]


# %%
#| export
def synthetic(
    name:str,   # 'FC-A', 'FC-B', 'FC-C' (input (N, 100)) or 'Conv-A', 'Conv-B', 'Conv-C' (input (N, 1, 20, 20))
    seed:int=0, # seed of the local generator that draws every weight and bias
)->nn.Sequential: # float32 on the CPU, output (N, 1)
    "Synthetic network `name` (Bibi et al. 2018, §4.1): ReLU between affine layers, i.i.d. N(0, 2/fan-in) parameters."
    if not isinstance(name, str) or name not in _SYNTHETIC:
        raise ValueError(f'name must be one of {", ".join(_SYNTHETIC)}; got {name!r}')
    seed = check_count(seed, 'seed', 0)
    with torch.device('meta'): net = nn.Sequential(*_synthetic_layers(*_SYNTHETIC[name]))
    net = net.to_empty(device='cpu')
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                s = (2 / m.weight[0].numel()) ** 0.5
                m.weight.copy_(s * torch.randn(m.weight.shape, generator=generator))
                m.bias.copy_(s * torch.randn(m.bias.shape, generator=generator))
    return net


# %% [markdown]
# Every network gives one scalar per input and has the parameter count of the table:

# %%
counts = {'FC-A': 10_201, 'FC-B': 20_301, 'FC-C': 30_401, 'Conv-A': 1_337, 'Conv-B': 1_213, 'Conv-C': 1_121}
inputs = {'FC': torch.randn(7, 100), 'Conv': torch.randn(7, 1, 20, 20)}
for name, count in counts.items():
    net = synthetic(name, seed=0)
    test_eq(net(inputs[name.split('-')[0]]).shape, (7, 1))
    test_eq(sum(p.numel() for p in net.parameters()), count)
    test_eq(sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in net), 'ABC'.index(name[-1]) + 2)

# %% [markdown]
# A seed reproduces its network and another seed gives another one, without touching the global random state; the
# weights have the promised spread (10,000 draws for the first FC-C layer, 3,600 for Conv-C's last):

# %%
state = torch.get_rng_state()
assert torch.equal(synthetic('FC-B', 3)[2].weight, synthetic('FC-B', 3)[2].weight)
assert not torch.equal(synthetic('FC-B', 3)[2].weight, synthetic('FC-B', 4)[2].weight)
test_eq(torch.get_rng_state(), state)
test_close(synthetic('FC-C', 0)[0].weight.std(), (2 / 100) ** 0.5, eps=0.05 * (2 / 100) ** 0.5)
test_close(synthetic('Conv-C', 0)[-1].weight.std(), (2 / 784) ** 0.5, eps=0.05 * (2 / 784) ** 0.5)

# %% [markdown]
# An unknown name is refused with the list of valid ones:

# %%
test_fail(lambda: synthetic('FC-D'), exc=ValueError,
          contains="name must be one of FC-A, FC-B, FC-C, Conv-A, Conv-B, Conv-C; got 'FC-D'")
test_fail(lambda: synthetic('FC-A', seed=1.5), exc=TypeError, contains='seed must be an int')


# %% [markdown]
# ## Bundled files
# The trained LeNet (`lenet-mnist.pt`, a float32 `state_dict`) and the first 1000 images of the MNIST test set
# (`mnist-test-slice.pt`, uint8 images and labels) are package data: they live in `netmoments/data/`, next to the
# modules, and are found relative to the imported package, so a source checkout, an editable install and an installed
# wheel all carry them. The training section below writes both. A missing file (a broken installation) raises a
# `FileNotFoundError` that says where it was looked for.

# %%
#| exporti
def _data_dir():
    "The package's `data/` folder, where the bundled network and MNIST slice live."
    return Path(netmoments.__file__).parent / 'data'

def _bundled(filename):
    "Path of the bundled file `filename`, or a FileNotFoundError that says where it was looked for."
    path = _data_dir() / filename
    if not path.is_file():
        raise FileNotFoundError(f'bundled file {filename} not found at {path}: it is package data of netmoments '
                                '(netmoments/data/); reinstall netmoments')
    return path


# %% [markdown]
# The folder sits inside the package, and both files are there; their sizes:

# %%
test_eq(_data_dir().parent, Path(netmoments.__file__).parent)
bundled_files = [_bundled(f) for f in ('lenet-mnist.pt', 'mnist-test-slice.pt')]
Table([(f.name, f.stat().st_size / 1e6) for f in bundled_files], ['file', 'MB'], fmt={'MB': '.2f'})

# %% [markdown]
# A missing file names itself and the place it was looked for:

# %%
test_fail(lambda: _bundled('missing.pt'), exc=FileNotFoundError, contains='bundled file missing.pt not found at')


# %% [markdown]
# ## Training LeNet on MNIST
# [Alfadly et al. (2019)](99_references.ipynb#alfadly2019) (§4.2, Table 1) train their LeNet with Adam
# ([Kingma & Ba (2015)](99_references.ipynb#kingma2015)), learning rate $10^{-4}$, batch 1000, plateau decay and early
# stopping on a validation split, up to 100 epochs: far too slow on a CPU. Plain cross-entropy training reaches the
# usual LeNet accuracy in a few epochs, so we use: Adam with learning rate $10^{-3}$ decayed to 0 by a cosine schedule
# over **3 epochs** of the 60,000 training images, **batch 128**, no weight decay, no augmentation, no validation
# split. Seeds: one local generator (seed 0) draws the initial weights and then each epoch's order. It runs on one CPU
# thread (the previous count is restored after), so the result does not depend on the machine's core count. Only the
# moment experiments use the network, and the test accuracy measured below is all they need of it.
#
# MNIST comes from `netmoments.data.load` ([Datasets](07_data.ipynb)), which reads the IDX files under
# `$NETMOMENTS_DATA` (the Makefile sets it; without the variable, the hidden cell below looks in the folder the
# Makefile uses). When they are missing, the full-test-set check further down is skipped and only the bundled slice is
# scored.

# %%
#| hide
def _mnist(split):
    "MNIST `split` as (x, y): float32 (N, 1, 28, 28) in [0, 1], int64; root $NETMOMENTS_DATA, else ../shared/data."
    root = None if os.environ.get('NETMOMENTS_DATA') else Path(netmoments.__file__).parents[2] / 'shared' / 'data'
    x, y, _ = load('mnist', split, root=root)
    return x, y

def _save_bundled(obj, path, replace=False):
    "torch.save `obj` (a dict of tensors and strings) to `path` if missing, or if different and `replace`; what it did."
    if path.is_file():
        old = torch.load(path, weights_only=True)
        same = lambda a, b: torch.equal(a, b) if torch.is_tensor(a) and torch.is_tensor(b) else a == b
        if old.keys() == obj.keys() and all(same(old[k], obj[k]) for k in obj): return 'unchanged'
        if not replace: return 'differs from this run: kept (NETMOMENTS_RETRAIN=1 replaces it)'
    torch.save(obj, path)
    return 'written'


# %% [markdown]
# `predict` scores images in chunks; `train_lenet` is the recipe above and returns the network in eval mode with its
# history: the mean training loss over each 47 steps (ten points an epoch) and the test accuracy after each epoch.

# %%
def predict(net, x, chunk=1000):
    "Predicted class of each image of `x` ((N, 1, 28, 28) in [0, 1])."
    with torch.no_grad(): return torch.cat([net(c).argmax(-1) for c in x.split(chunk)])

def train_lenet(x, y, x_test, y_test, epochs=3, batch=128, lr=1e-3, seed=0):
    "LeNet trained by Adam with cosine decay on images `x` in [0, 1] and labels `y`; returns (net, history)."
    generator = torch.Generator().manual_seed(seed)
    net = lenet(generator)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * math.ceil(len(x) / batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    history = dict(step=[], loss=[], epoch=[], test_accuracy=[], seconds=[])
    start, step, window, threads = time.perf_counter(), 0, 0., torch.get_num_threads()
    torch.set_num_threads(1)    # restored below
    try:
        for epoch in range(1, epochs + 1):
            net.train()
            for rows in torch.randperm(len(x), generator=generator).split(batch):
                loss = F.cross_entropy(net(x[rows]), y[rows])
                opt.zero_grad(); loss.backward(); opt.step(); schedule.step(); step += 1
                window = window + loss.item()
                if step % 47 == 0: history['step'].append(step); history['loss'].append(window / 47); window = 0.
            net.eval()
            history['epoch'].append(epoch); history['seconds'].append(time.perf_counter() - start)
            history['test_accuracy'].append((predict(net, x_test) == y_test).float().mean().item())
    finally: torch.set_num_threads(threads)
    return net, history


# %% [markdown]
# The training run itself (minutes on one CPU thread: its times are printed below). It writes
# `netmoments/data/lenet-mnist.pt` (float32 weights) and `netmoments/data/mnist-test-slice.pt` (test images 0–999 as
# uint8 with their labels) when they are missing. Training is seeded, but its floating-point result can differ from
# one CPU to another; a bundled file that differs from this run is kept unless `NETMOMENTS_RETRAIN=1`, so that the
# numbers stored in every chapter stay those of the bundled network:

# %%
#| slow
x_train, y_train = _mnist('train')
x_test, y_test = _mnist('test')
trained, history = train_lenet(x_train, y_train, x_test, y_test)
weights = {k: v.detach().float().contiguous().clone() for k, v in trained.state_dict().items()}
test_slice = {'images': (255 * x_test[:1000, 0]).round().to(torch.uint8), 'labels': y_test[:1000].to(torch.uint8),
              'source': 'MNIST t10k, images 0-999'}
assert torch.equal(test_slice['images'].float() / 255, x_test[:1000, 0])    # uint8 storage is lossless
for obj, filename in ((weights, 'lenet-mnist.pt'), (test_slice, 'mnist-test-slice.pt')):
    print(filename, _save_bundled(obj, _data_dir() / filename, replace=os.environ.get('NETMOMENTS_RETRAIN') == '1'))
for epoch, acc, sec in zip(history['epoch'], history['test_accuracy'], history['seconds']):
    print(f'epoch {epoch}: test accuracy {acc:.2%} after {sec:.0f} s')
assert history['test_accuracy'][-1] >= 0.985

# %%
#| slow
#| label: fig-lenet-training
#| fig-cap: "Training LeNet on MNIST: training cross-entropy (left, mean over each 47 batches) and test accuracy after each epoch (right)."
fig, (left, right) = plt.subplots(1, 2, figsize=(7, 2.8), layout='constrained')
per_epoch = math.ceil(len(x_train) / 128)
left.semilogy(np.array(history['step']) / per_epoch, history['loss'])
left.set(xlabel='epoch', ylabel='training loss')
right.plot(history['epoch'], 100 * np.array(history['test_accuracy']), 'o-')
right.set(xlabel='epoch', ylabel='test accuracy (%)', xticks=history['epoch']);


# %% [markdown]
# ## Loading the bundled files
# `mnist_slice` returns the bundled test images as the networks take them, float32 in $[0, 1]$, with int64 labels.

# %%
#| export
def mnist_slice(
    device:str|torch.device|None=None,  # where the tensors go (default CPU)
)->tuple:                               # (x, y): images (1000, 1, 28, 28) float32 in [0, 1], labels (1000,) int64
    "The bundled first 1000 MNIST test images and labels (netmoments/data/mnist-test-slice.pt)."
    data = torch.load(_bundled('mnist-test-slice.pt'), map_location=check_device('cpu' if device is None else device), weights_only=True)
    return data['images'][:, None].float() / 255, data['labels'].long()


# %% [markdown]
# Shapes, types and range, and the classes all present:

# %%
x_slice, y_slice = mnist_slice()
test_eq((x_slice.shape, x_slice.dtype, y_slice.shape, y_slice.dtype),
        ((1000, 1, 28, 28), torch.float32, (1000,), torch.int64))
test_eq((x_slice.min().item(), x_slice.max().item()), (0., 1.))
test_eq(y_slice.unique().tolist(), list(range(10)))
test_eq(y_slice[:10].tolist(), [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])   # the well-known first MNIST test labels

# %% [markdown]
# `pretrained` returns a bundled network ready for the moment experiments: in eval mode, its parameters not requiring
# gradients (the experiments differentiate with respect to the input, never the weights), on `device`.

# %%
#| exporti
_PRETRAINED = {'lenet-mnist': ('lenet-mnist.pt', lenet)}


# %%
#| export
def pretrained(
    name:str='lenet-mnist',            # the bundled network; only 'lenet-mnist' so far
    device:str|torch.device|None=None, # where the parameters go (default CPU; 'meta' for the skeleton)
)->nn.Sequential:                      # in eval mode, requires_grad False
    "A bundled trained network: 'lenet-mnist' is `lenet()` trained on MNIST (99% test accuracy)."
    if not isinstance(name, str) or name not in _PRETRAINED:
        raise ValueError(f'name must be one of {", ".join(_PRETRAINED)}; got {name!r}')
    filename, build = _PRETRAINED[name]
    state = torch.load(_bundled(filename), map_location=check_device('cpu' if device is None else device), weights_only=True)
    net = build(device='meta')
    net.load_state_dict(state, assign=True)
    return net.eval().requires_grad_(False)


# %% [markdown]
# Eval mode, no gradients required, float32, and the device asked for (`meta` standing in for a GPU here); unknown
# names are refused:

# %%
net = pretrained()
assert not any(m.training for m in net.modules())
assert not any(p.requires_grad for p in net.parameters())
test_eq({(p.dtype, p.device.type) for p in net.parameters()}, {(torch.float32, 'cpu')})
test_eq({p.device.type for p in pretrained(device='meta').parameters()}, {'meta'})
test_fail(lambda: pretrained('alexnet'), exc=ValueError, contains="name must be one of lenet-mnist; got 'alexnet'")
test_fail(lambda: pretrained(device='gpu'), exc=ValueError, contains='device must name a torch device')
test_fail(lambda: mnist_slice(device=0.5), exc=ValueError, contains='device must name a torch device')

# %% [markdown]
# Gradients with respect to the input still flow, which is what linearization needs:

# %%
x = x_slice[:2].clone().requires_grad_()
net(x)[:, 0].sum().backward()
test_eq(x.grad.shape, (2, 1, 28, 28))
assert x.grad.abs().sum() > 0

# %% [markdown]
# ## Accuracy of the bundled LeNet
# On the bundled slice and, when the MNIST files are available, on the whole test set:

# %%
pred_slice = predict(net, x_slice)
slice_accuracy = (pred_slice == y_slice).float().mean().item()
print(f'bundled slice (1000 images): {slice_accuracy:.2%}')
assert slice_accuracy >= 0.97
try: x_test, y_test = _mnist('test')
except FileNotFoundError: x_test = None
if x_test is None: print('MNIST files not found (set NETMOMENTS_DATA): full test set skipped')
else:
    pred_test = predict(net, x_test)
    test_eq(pred_test[:1000], pred_slice)                  # the slice is the start of the test set
    test_accuracy = (pred_test == y_test).float().mean().item()
    print(f'full MNIST test set (10,000 images): {test_accuracy:.2%}')
    assert test_accuracy >= 0.985

# %% [markdown]
# Per-class accuracy and the confusion matrix, on the full test set (on the slice when MNIST is missing):

# %%
labels, preds = (y_slice, pred_slice) if x_test is None else (y_test, pred_test)
confusion = torch.bincount(10 * labels + preds, minlength=100).reshape(10, 10)
per_class = confusion.diag() / confusion.sum(1)
test_eq(confusion.sum().item(), len(labels))
Table([(c, n, 100 * a) for c, (n, a) in enumerate(zip(confusion.sum(1).tolist(), per_class.tolist()))],
      ['class', 'images', 'accuracy (%)'], fmt={'accuracy (%)': '.1f'})

# %%
#| label: fig-lenet-confusion
#| fig-cap: "Confusion matrix of the bundled LeNet on the MNIST test set (counts; log colour scale, empty cells white)."
fig, ax = plt.subplots(figsize=(4.2, 3.6), layout='constrained')
shown = np.ma.masked_equal(confusion.numpy(), 0)
image = ax.imshow(shown, cmap='Blues', norm=LogNorm(vmin=1, vmax=confusion.max().item()))
for (i, j), n in np.ndenumerate(confusion.numpy()):
    if n and i != j: ax.text(j, i, n, ha='center', va='center', fontsize=7)
ax.set(xlabel='predicted class', ylabel='true class', xticks=range(10), yticks=range(10))
fig.colorbar(image, ax=ax, label='images');

# %% [markdown]
# ## Export -

# %%
#| hide
#| eval: false
import nbdev; nbdev.nbdev_export()

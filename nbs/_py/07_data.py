# %% [markdown]
# # Datasets
# > MNIST, Fashion-MNIST, Iris, Wine, Spambase and CIFAR-10/100 as tensors, read from local files and never downloaded

# %%
#| default_exp data

# %%
#| export
from __future__ import annotations
import functools, gzip, math, numbers, os, pickle, struct, zlib
from pathlib import Path
from typing import Callable, NamedTuple
import numpy as np
import torch
from torch import Tensor
from netmoments.core import check_count

# %%
#| hide
import sys, tempfile, time
from unittest import mock
import matplotlib.pyplot as plt
from fastcore.test import test_eq, test_close, test_fail

# %% [markdown]
# The papers test their networks on images (MNIST, Fashion-MNIST, CIFAR-10/100) and on small tabular sets (Iris, Wine,
# Spambase). `load(name, split)` returns any of them as a `Dataset(x, y, classes)`: float32 inputs, int64 labels and
# the class names, with images as $(N, C, H, W)$ in $[0, 1]$ and tabular rows as raw feature values.
#
# Nothing is ever downloaded: every file is read from a folder on disk, so that loading works offline and always
# reads the same verified bytes. The data folder's `README.md` records where each file came from, with its checksums.
#
# | name | splits | `x` | classes | where the book reads it | licence |
# |---|---|---|---|---|---|
# | `mnist` | train 60,000, test 10,000 | (N, 1, 28, 28) | 10 digits | `$NETMOMENTS_DATA/mnist` | CC BY-SA 3.0 (LeCun & Cortes) |
# | `fashion-mnist` | train 60,000, test 10,000 | (N, 1, 28, 28) | 10 garments | Debian `dataset-fashion-mnist` | MIT (Zalando Research) |
# | `iris` | all 150 | (N, 4) | 3 species, 50 each | inside scikit-learn | CC BY 4.0 (UCI) |
# | `wine` | all 178 | (N, 13) | 3 cultivars, 59/71/48 | inside scikit-learn | CC BY 4.0 (UCI) |
# | `spambase` | all 4,601 | (N, 57) | non-spam 2,788, spam 1,813 | `$NETMOMENTS_DATA/spambase` | CC BY 4.0 (UCI) |
# | `cifar10` | train 50,000, test 10,000 | (N, 3, 32, 32) | 10 objects | not on disk | none stated; cite [Krizhevsky (2009)](99_references.ipynb#krizhevsky2009) |
# | `cifar100` | train 50,000, test 10,000 | (N, 3, 32, 32) | 100 fine classes | not on disk | none stated; cite [Krizhevsky (2009)](99_references.ipynb#krizhevsky2009) |
#
# The readers are strict: a file whose header, size or labels disagree with its format is refused with a `ValueError`
# that names the file and what is wrong, instead of turning into wrong images.

# %% [markdown]
# ## Where the files are
# The data root is the `root` argument, else the `NETMOMENTS_DATA` environment variable, else
# `~/.local/share/netmoments` (under `$XDG_DATA_HOME` when that is set). For each dataset `load` searches the
# dataset's folder under the root, then the root itself, then system folders: Debian's package installs Fashion-MNIST
# into `/usr/share/datasets/fashion-mnist`. Iris and Wine ship inside scikit-learn and need no folder.

# %%
#| export
DATASETS = ('mnist', 'fashion-mnist', 'iris', 'wine', 'spambase', 'cifar10', 'cifar100')  # the names `load` knows

# %%
#| exporti
_FOLDERS = {'mnist': 'mnist', 'fashion-mnist': 'fashion-mnist', 'spambase': 'spambase',
            'cifar10': 'cifar-10-batches-py', 'cifar100': 'cifar-100-python'}  # folder under the data root
_SYSTEM_FOLDERS = {'fashion-mnist': ('/usr/share/datasets/fashion-mnist',)}    # Debian's dataset-fashion-mnist

def _check_name(name):
    if not isinstance(name, str) or name not in DATASETS:
        raise ValueError(f'name must be one of {", ".join(map(repr, DATASETS))}; got {name!r}')

def _data_root(root):
    "The data root and where it came from, for the not-found message."
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise TypeError(f'root must be a folder (str or Path) or None; got {type(root).__name__}')
    if root is not None: return Path(root).expanduser(), f'root={str(root)!r}'
    if os.environ.get('NETMOMENTS_DATA'): return Path(os.environ['NETMOMENTS_DATA']).expanduser(), 'NETMOMENTS_DATA'
    home = Path(os.environ.get('XDG_DATA_HOME') or '~/.local/share').expanduser()
    return home/'netmoments', 'the default, as NETMOMENTS_DATA is not set'


# %%
#| export
def data_dirs(
    name:str,                 # one of `DATASETS`
    root:str|Path|None=None,  # data root; None: $NETMOMENTS_DATA, else ~/.local/share/netmoments
)->list:                      # folders, in search order; [] for the datasets inside scikit-learn
    "Every folder `load(name, root=root)` searches for the files of `name`, in order."
    _check_name(name)
    if name not in _FOLDERS: return []
    base, _ = _data_root(root)
    return [base/_FOLDERS[name], base] + [Path(d) for d in _SYSTEM_FOLDERS.get(name, ())]


# %% [markdown]
# `root` wins over the environment variable, which wins over the default; Fashion-MNIST adds Debian's folder last:

# %%
with mock.patch.dict(os.environ, {'NETMOMENTS_DATA': '/env'}):
    test_eq(data_dirs('mnist'), [Path('/env/mnist'), Path('/env')])
    test_eq(data_dirs('cifar10', root='/data'), [Path('/data/cifar-10-batches-py'), Path('/data')])
    test_eq(data_dirs('fashion-mnist')[-1], Path('/usr/share/datasets/fashion-mnist'))
with mock.patch.dict(os.environ, {'NETMOMENTS_DATA': '', 'XDG_DATA_HOME': '/xdg'}):
    test_eq(data_dirs('spambase'), [Path('/xdg/netmoments/spambase'), Path('/xdg/netmoments')])
test_eq(data_dirs('iris'), [])
test_fail(lambda: data_dirs('svhn'), contains="name must be one of 'mnist', 'fashion-mnist'", exc=ValueError)
test_fail(lambda: data_dirs('mnist', root=3), contains="root must be a folder (str or Path) or None; got int", exc=TypeError)


# %% [markdown]
# ## The loader
# Every dataset comes back as the same named tuple, so `x, y, classes = load(...)` reads the same for all of them:

# %%
#| export
class Dataset(NamedTuple):
    "A dataset as tensors: inputs `x`, labels `y`, and the names of the classes `y` indexes."
    x:Tensor       # float32 inputs: images (N, C, H, W) in [0, 1], tabular rows (N, features) as raw values
    y:Tensor       # int64 labels (N,), in range(len(classes))
    classes:tuple  # class names


# %% [markdown]
# Each dataset section below registers a reader: the splits it has, the files a split needs (each in every spelling
# accepted, `None` when it needs no file) and the function that reads them. `_find_files` takes the first searched
# folder that holds all of a split's files, so a split is never stitched together from two folders.

# %%
#| exporti
class _Reader(NamedTuple):
    splits:tuple         # the valid values of `split`
    files:Callable|None  # split -> required files, each a tuple of accepted spellings; None: no files
    read:Callable        # (paths, split, limit) -> Dataset

_READERS = {}  # name -> _Reader, filled by the sections below

def _find_files(dirs, required):
    "Paths of the required files in the first of `dirs` that holds them all, else None."
    for folder in dirs:
        found = [next((folder/s for s in spellings if (folder/s).is_file()), None) for spellings in required]
        if all(found): return found
    return None


# %% [markdown]
# A dataset that is not there raises one `FileNotFoundError` listing the files it wanted, every folder it searched,
# where the root came from, and the two ways to point at the files:

# %%
#| exporti
def _not_found(name, split, required, dirs, root):
    wanted = ', '.join(s[0] + (f' (or {", ".join(s[1:])})' if len(s) > 1 else '') for s in required)
    _, origin = _data_root(root)
    return (f"{name} (split={split!r}) not found: no folder holds all of {wanted}.\n"
            f"Searched, in order (data root from {origin}):\n" + ''.join(f'  {d}\n' for d in dirs) +
            f"Put the files in {dirs[0]}, or point at the folder holding them (or its parent) with "
            f"load({name!r}, root=...) or the NETMOMENTS_DATA environment variable. Nothing is downloaded.")


# %%
#| export
def load(
    name:str,                 # one of `DATASETS`
    split:str='test',         # 'train' or 'test' for images; 'all' for iris, wine and spambase
    root:str|Path|None=None,  # data root (see `data_dirs`); None: $NETMOMENTS_DATA, else ~/.local/share/netmoments
    limit:int|None=None,      # keep only the first `limit` samples (files are read only that far where possible)
)->Dataset:
    "Load dataset `name` from local files as float32 inputs, int64 labels and class names; never downloads."
    _check_name(name)
    reader = _READERS[name]
    if split not in reader.splits:
        hint = (f'; {name} has no official train/test split: load split="all" and divide it with split_indices'
                if reader.splits == ('all',) else '')
        raise ValueError(f'split must be {" or ".join(map(repr, reader.splits))} for {name}; got {split!r}{hint}')
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f'limit must be a positive int or None; got {limit!r}')
    _data_root(root)                                           # a root of the wrong type is refused for every dataset
    if reader.files is None: return reader.read(None, split, limit)
    dirs, required = data_dirs(name, root), reader.files(split)
    paths = _find_files(dirs, required)
    if paths is None: raise FileNotFoundError(_not_found(name, split, required, dirs, root))
    return reader.read(paths, split, limit)


# %% [markdown]
# An unknown name is refused with the valid ones (unknown splits and limits are tested under the datasets below):

# %%
test_fail(lambda: load('svhn'), contains="name must be one of 'mnist', 'fashion-mnist', 'iris'", exc=ValueError)

# %% [markdown]
# The cells below also read the real files, from the folder `NETMOMENTS_DATA` names (the Makefile sets it); `DATA`
# follows that variable and falls back to the folder the Makefile uses, so the notebook also runs on its own (its
# working directory is `nbs/`):

# %%
DATA = os.environ.get('NETMOMENTS_DATA') or '../../shared/data'
tmp_dir = tempfile.TemporaryDirectory()   # synthetic files go here; removed when the kernel exits
tmp = Path(tmp_dir.name)

# %% [markdown]
# ## IDX files
# MNIST and Fashion-MNIST come as IDX files, usually gzip-compressed: two zero bytes, a type byte (0x08: unsigned
# bytes), a byte giving the number of dimensions $n$, then $n$ big-endian uint32 sizes and the raw data in row-major
# order. Images are $n = 3$ (count, 28, 28), magic number 0x00000803; labels are $n = 1$ (count), magic 0x00000801.
# `_read_idx` checks the magic number, that the file can hold what the header promises before allocating it (its size;
# for gzip, deflate's largest ratio, 1032 bytes per compressed byte, times its size), that the data fills exactly that
# size, and turns gzip
# errors into the same `ValueError`. With `limit` it decompresses only the first `limit` items. The bytes go straight
# into a numpy array that `torch.from_numpy` shares, one copy in all.

# %%
#| exporti
_DEFLATE_RATIO = 1032   # deflate's largest compression ratio: n compressed bytes hold at most ~1032 n bytes

def _check_idx_size(path, dims, needed, header):
    "Refuse a header that promises more bytes than the file can hold (uncompressed: its size; gzip: 1032 x its size)."
    size = os.path.getsize(path)
    have = size - header if path.suffix != '.gz' else _DEFLATE_RATIO * size
    if needed > have:
        what = f'the data ends after {have} of {needed} bytes' if path.suffix != '.gz' else \
               f'{needed} bytes, more than its {size} compressed bytes can hold'
        raise ValueError(f'{path.name} is truncated: its header promises {dims} but {what}')

def _read_idx(
    path:Path,       # IDX file, gzip-compressed when its name ends in .gz
    ndim:int,        # expected number of dimensions: 3 for images, 1 for labels
    limit:int|None,  # read only the first `limit` items
)->tuple:            # (uint8 tensor of the first min(limit, count) items, count the header promises)
    "Read an IDX file of unsigned bytes, checking its magic number, dimensions and size."
    wanted = 0x0800 | ndim
    with (gzip.open if path.suffix == '.gz' else open)(path, 'rb') as f:
        try:
            head = f.read(4 + 4 * ndim)
            magic = int.from_bytes(head[:4], 'big')
            if magic != wanted:
                raise ValueError(f'{path.name}: IDX magic number 0x{magic:08x}, expected 0x{wanted:08x} '
                                 f'(unsigned bytes, {ndim} dimension{"s" if ndim > 1 else ""})')
            if len(head) < 4 + 4 * ndim: raise ValueError(f'{path.name} is truncated inside its header')
            dims = struct.unpack(f'>{ndim}I', head[4:])
            shape = (dims[0] if limit is None else min(limit, dims[0]), *dims[1:])
            _check_idx_size(path, dims, math.prod(shape), len(head))   # before allocating what the header promises
            out = np.empty(shape, np.uint8)
            buf, filled = memoryview(out.reshape(-1)), 0              # 1-D: a view of an empty array casts too
            while filled < len(buf) and (got := f.readinto(buf[filled:])): filled += got
            if filled < len(buf):
                raise ValueError(f'{path.name} is truncated: its header promises {dims} but the data ends after '
                                 f'{filled} of {len(buf)} bytes')
            if limit is None and f.read(1):
                raise ValueError(f'{path.name} holds more data than the {dims} its header promises')
        except (OSError, EOFError, zlib.error) as e: raise ValueError(f'{path.name} is corrupt: {e}') from None
    return torch.from_numpy(out), dims[0]


# %% [markdown]
# The format, written out as the tests need it (a fixture here, not part of the package):

# %%
def write_idx(path, array):
    "Write a uint8 array as an IDX file, gzip-compressed when `path` ends in .gz."
    array = np.ascontiguousarray(array, dtype=np.uint8)
    raw = struct.pack(f'>HBB{array.ndim}I', 0, 0x08, array.ndim, *array.shape) + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with (gzip.open if path.suffix == '.gz' else open)(path, 'wb') as f: f.write(raw)

rng = np.random.default_rng(0)
images, labels = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), np.array([3, 1, 4, 1, 5], np.uint8)

# %% [markdown]
# A round trip, compressed and not, whole and limited; the header's count comes back even when `limit` stops early:

# %%
for suffix in ('.gz', ''):
    write_idx(tmp/f'idx/images{suffix}', images)
    read, count = _read_idx(tmp/f'idx/images{suffix}', 3, None)
    test_eq((read.dtype, read.shape, count), (torch.uint8, (5, 28, 28), 5))
    test_eq(read.numpy(), images)
    read, count = _read_idx(tmp/f'idx/images{suffix}', 3, 2)
    test_eq((read.shape, count), ((2, 28, 28), 5))
    test_eq(read.numpy(), images[:2])

# %% [markdown]
# A labels file read as images, a truncated file or header, trailing bytes and a broken gzip stream are refused:

# %%
write_idx(tmp/'idx/labels.gz', labels)
test_fail(lambda: _read_idx(tmp/'idx/labels.gz', 3, None), exc=ValueError,
          contains='labels.gz: IDX magic number 0x00000801, expected 0x00000803 (unsigned bytes, 3 dimensions)')
raw = (tmp/'idx/images').read_bytes()
(tmp/'idx/short').write_bytes(raw[:-10])
test_fail(lambda: _read_idx(tmp/'idx/short', 3, None), exc=ValueError,
          contains='short is truncated: its header promises (5, 28, 28) but the data ends after 3910 of 3920 bytes')
(tmp/'idx/stub').write_bytes(raw[:10])
test_fail(lambda: _read_idx(tmp/'idx/stub', 3, None), contains='stub is truncated inside its header', exc=ValueError)
(tmp/'idx/long').write_bytes(raw + b'\0')
test_fail(lambda: _read_idx(tmp/'idx/long', 3, None), contains='holds more data than the (5, 28, 28)', exc=ValueError)
(tmp/'idx/broken.gz').write_bytes((tmp/'idx/images.gz').read_bytes()[:200])
test_fail(lambda: _read_idx(tmp/'idx/broken.gz', 3, None), contains='broken.gz is corrupt', exc=ValueError)

# %% [markdown]
# A header promising $2^{31}$ images is refused before anything is allocated, and a file of no images reads as an
# empty tensor of the right shape:

# %%
(tmp/'idx/huge.gz').write_bytes(gzip.compress(struct.pack('>HBB3I', 0, 8, 3, 2**31, 28, 28) + bytes(784)))
test_fail(lambda: _read_idx(tmp/'idx/huge.gz', 3, None), exc=ValueError,
          contains='huge.gz is truncated: its header promises (2147483648, 28, 28) but 1683627180032 bytes')
write_idx(tmp/'idx/none.gz', np.zeros((0, 28, 28), np.uint8))
test_eq(_read_idx(tmp/'idx/none.gz', 3, None)[0].shape, (0, 28, 28))

# %% [markdown]
# ## MNIST
# Handwritten digits 0–9 (LeCun, Cortes & Burges): 60,000 training and 10,000 test images of 28×28 grey levels, ink
# bright on black. Licence: CC BY-SA 3.0, copyright Yann LeCun and Corinna Cortes (a derivative of NIST data); cite
# [LeCun et al. (1998)](99_references.ipynb#lecun1998). The four official gz files are in `$NETMOMENTS_DATA/mnist`,
# checked against the official md5s.
#
# A split is two IDX files, `train-*` or `t10k-*`, accepted under the official names (`t10k-images-idx3-ubyte.gz`),
# uncompressed, or with the `t10k-images.idx3-ubyte` spelling some mirrors use. The reader checks that the images are
# 28×28, that both files promise the same count, and that every label names a class; pixels become $v / 255$.

# %%
#| exporti
_IDX_SPELLINGS = ('{}-idx{}-ubyte.gz', '{}-idx{}-ubyte', '{}.idx{}-ubyte', '{}.idx{}-ubyte.gz')

def _idx_files(split):
    stem = 'train' if split == 'train' else 't10k'
    return tuple(tuple(s.format(f'{stem}-{kind}', n) for s in _IDX_SPELLINGS)
                 for kind, n in (('images', 3), ('labels', 1)))

def _read_idx_dataset(classes, paths, split, limit):
    (x, n_images), (y, n_labels) = _read_idx(paths[0], 3, limit), _read_idx(paths[1], 1, limit)
    if x.shape[1:] != (28, 28): raise ValueError(f'{paths[0].name}: images must be 28x28; got {tuple(x.shape[1:])}')
    if n_images != n_labels:
        raise ValueError(f'{paths[0].name} holds {n_images} images but {paths[1].name} holds {n_labels} labels')
    if len(y) and int(y.max()) >= len(classes):
        raise ValueError(f'{paths[1].name}: label {int(y.max())} is out of range for {len(classes)} classes')
    return Dataset(x.unsqueeze(1).float().div_(255), y.long(), classes)

_READERS['mnist'] = _Reader(('train', 'test'), _idx_files, functools.partial(_read_idx_dataset, tuple('0123456789')))

# %% [markdown]
# The real test set: shape, dtype, range, the label counts and mean pixel (33.79 / 255) that the data folder's `README.md` records,
# read in well under a second:

# %%
start = time.perf_counter()
mnist = load('mnist', root=DATA)
test_eq(time.perf_counter() - start < 1, True)
test_eq((mnist.x.shape, mnist.x.dtype, mnist.y.dtype), ((10000, 1, 28, 28), torch.float32, torch.int64))
test_eq((mnist.x.min().item(), mnist.x.max().item()), (0., 1.))
test_eq(torch.bincount(mnist.y).tolist(), [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009])
test_close(mnist.x.mean().item() * 255, 33.79, eps=0.005)
test_eq(mnist.classes, ('0', '1', '2', '3', '4', '5', '6', '7', '8', '9'))

# %% [markdown]
# And the training set, whole and limited (the limit reads only the first images of the file):

# %%
train = load('mnist', split='train', root=DATA)
test_eq(train.x.shape, (60000, 1, 28, 28))
test_eq(torch.bincount(train.y).tolist(), [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])
test_close(train.x.mean().item() * 255, 33.32, eps=0.005)
first = load('mnist', split='train', root=DATA, limit=100)
test_eq((first.x.shape, first.y.shape), ((100, 1, 28, 28), (100,)))
test_eq(first.x, train.x[:100]); test_eq(first.y, train.y[:100])

# %% [markdown]
# Synthetic files in each accepted spelling, in the dataset's folder or the root itself, read back exactly:

# %%
for folder, spelling in ((tmp/'gz/mnist', '{}-idx{}-ubyte.gz'), (tmp/'flat', '{}.idx{}-ubyte')):
    write_idx(folder/spelling.format('t10k-images', 3), images)
    write_idx(folder/spelling.format('t10k-labels', 1), labels)
    got = load('mnist', root=folder.parent if folder.name == 'mnist' else folder)
    test_eq(got.x, torch.from_numpy(images).float().unsqueeze(1) / 255)
    test_eq((got.y.tolist(), got.y.dtype), ([3, 1, 4, 1, 5], torch.int64))

# %% [markdown]
# An unknown split, a limit that is not a positive int, and files that disagree with each other or with the format
# are refused:

# %%
test_fail(lambda: load('mnist', split='val'), contains="split must be 'train' or 'test' for mnist; got 'val'",
          exc=ValueError)
for bad_limit in (0, -3, 2.5, True):
    test_fail(lambda: load('mnist', limit=bad_limit), contains='limit must be a positive int or None', exc=ValueError)
bad = tmp/'bad/mnist'
write_idx(bad/'t10k-images-idx3-ubyte.gz', images)
write_idx(bad/'t10k-labels-idx1-ubyte.gz', labels[:4])
test_fail(lambda: load('mnist', root=bad), contains='holds 5 images but t10k-labels-idx1-ubyte.gz holds 4 labels',
          exc=ValueError)
write_idx(bad/'t10k-labels-idx1-ubyte.gz', [3, 1, 4, 1, 10])
test_fail(lambda: load('mnist', root=bad), contains='label 10 is out of range for 10 classes', exc=ValueError)
write_idx(bad/'t10k-images-idx3-ubyte.gz', images[:, :27])
test_fail(lambda: load('mnist', root=bad), contains='images must be 28x28; got (27, 28)', exc=ValueError)

# %% [markdown]
# A missing dataset names every folder searched and how to point at the files:

# %%
test_fail(lambda: load('mnist', root=tmp/'nowhere'), exc=FileNotFoundError,
          contains=f"mnist (split='test') not found: no folder holds all of t10k-images-idx3-ubyte.gz (or "
                   f"t10k-images-idx3-ubyte, t10k-images.idx3-ubyte, t10k-images.idx3-ubyte.gz), t10k-labels")
try: load('mnist', split='train', root='/nowhere')
except FileNotFoundError as e: message = str(e)
for part in ('  /nowhere/mnist\n  /nowhere\n', "data root from root='/nowhere'", "root=...", 'NETMOMENTS_DATA'):
    test_eq(part in message, True)
print(message)

# %% [markdown]
# ## Fashion-MNIST
# Zalando's article images ([Xiao et al. (2017)](99_references.ipynb#xiao2017)), a drop-in replacement for MNIST: the
# same IDX format and sizes, 60,000 training and 10,000 test images of 28×28 grey levels, 6,000 and 1,000 per class, in
# ten classes of clothing. Licence: MIT. Here it comes from the Debian package `dataset-fashion-mnist`, which installs
# the four gz files into `/usr/share/datasets/fashion-mnist`; a `fashion-mnist` folder under the data root comes first.

# %%
#| exporti
_FASHION_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
                    'Ankle boot')
_READERS['fashion-mnist'] = _Reader(('train', 'test'), _idx_files,
                                    functools.partial(_read_idx_dataset, _FASHION_CLASSES))

# %%
fashion = load('fashion-mnist')
test_eq((fashion.x.shape, fashion.x.dtype, fashion.y.dtype), ((10000, 1, 28, 28), torch.float32, torch.int64))
test_eq((fashion.x.min().item(), fashion.x.max().item()), (0., 1.))
test_eq(torch.bincount(fashion.y).tolist(), [1000] * 10)
test_eq(fashion.classes[9], 'Ankle boot')
fashion_train = load('fashion-mnist', split='train')
test_eq((fashion_train.x.shape, torch.bincount(fashion_train.y).tolist()), ((60000, 1, 28, 28), [6000] * 10))

# %% [markdown]
# A few test images of each, with their labels:

# %%
#| label: fig-data-samples
#| fig-cap: "The first eight MNIST (top) and Fashion-MNIST (bottom) test images, titled with their classes."
fig, axes = plt.subplots(2, 8, figsize=(8, 2.6), layout='constrained')
for row, data in zip(axes, (mnist, fashion)):
    for ax, image, label in zip(row, data.x, data.y):
        ax.imshow(image[0], cmap='gray', vmin=0, vmax=1)
        ax.set_title(data.classes[label], fontsize=8); ax.set_axis_off();


# %% [markdown]
# ## Iris and Wine
# Two classic small tables from the UCI repository, both bundled with scikit-learn (`sklearn.datasets.load_iris`,
# `load_wine`), so no folder is needed. Iris ([Fisher (1936)](99_references.ipynb#fisher1936)): 150 flowers, 4
# measurements in cm, 3 species of 50. Wine ([Aeberhard and Forina (1991)](99_references.ipynb#aeberhard1991), from the
# PARVUS data of Forina et al.): 178 wines from 3 cultivars (59, 71, 48), 13 chemical measurements. Licence: CC BY 4.0
# (UCI).
#
# They have no official train/test split, so `split` must be `'all'`; divide them with `split_indices` (below).
# `x` holds the raw measurements: standardize them with `standardize`, using training statistics only. scikit-learn is
# imported only when one of them is loaded, so the package does not depend on it.

# %%
#| exporti
def _read_sklearn(loader_name, paths, split, limit):
    try:
        import sklearn.datasets
    except ImportError:
        raise ImportError(f'{loader_name.removeprefix("load_")} ships with scikit-learn, which is not installed: '
                          f'pip install scikit-learn') from None
    bunch = getattr(sklearn.datasets, loader_name)()
    x = torch.as_tensor(bunch.data[:limit], dtype=torch.float32)
    return Dataset(x, torch.as_tensor(bunch.target[:limit], dtype=torch.int64), tuple(map(str, bunch.target_names)))

_READERS['iris'] = _Reader(('all',), None, functools.partial(_read_sklearn, 'load_iris'))
_READERS['wine'] = _Reader(('all',), None, functools.partial(_read_sklearn, 'load_wine'))

# %%
iris, wine = load('iris', split='all'), load('wine', split='all')
test_eq((iris.x.shape, iris.x.dtype, iris.y.dtype), ((150, 4), torch.float32, torch.int64))
test_eq((torch.bincount(iris.y).tolist(), iris.classes), ([50, 50, 50], ('setosa', 'versicolor', 'virginica')))
test_close(iris.x[0], torch.tensor([5.1, 3.5, 1.4, 0.2]), eps=1e-6)   # Fisher's first flower, in cm
test_eq((wine.x.shape, torch.bincount(wine.y).tolist()), ((178, 13), [59, 71, 48]))
test_eq(wine.classes, ('class_0', 'class_1', 'class_2'))
test_eq(load('wine', split='all', limit=7).x, wine.x[:7])

# %% [markdown]
# The default split, `'test'`, does not exist for them, and the error says what to do instead; without scikit-learn
# the error says what to install:

# %%
test_fail(lambda: load('iris'), exc=ValueError, contains="split must be 'all' for iris; got 'test'; iris has no "
          'official train/test split: load split="all" and divide it with split_indices')
with mock.patch.dict(sys.modules, {'sklearn': None, 'sklearn.datasets': None}):
    test_fail(lambda: load('iris', split='all'), exc=ImportError,
              contains='iris ships with scikit-learn, which is not installed: pip install scikit-learn')


# %% [markdown]
# ## Spambase
# 4,601 e-mails from Hewlett-Packard ([Hopkins et al. (1999)](99_references.ipynb#hopkins1999)), 1,813 of them spam, as
# 57 numeric features: 48 word frequencies and 6 character frequencies (percent), then the average, longest and total
# length of runs of capital letters. Licence: CC BY 4.0 (UCI ML Repository, DOI 10.24432/C53G6X). The file
# `<root>/spambase/spambase.data` is a headerless CSV of 58 columns, the last one the label (1 = spam), rows in UCI's
# order (spam first). There is no official split: `split='all'`.

# %%
#| exporti
def _read_spambase(paths, split, limit):
    path = paths[0]
    try: table = np.loadtxt(path, delimiter=',', dtype=np.float64, ndmin=2, max_rows=limit)
    except ValueError as e: raise ValueError(f'{path.name} is not a numeric CSV: {e}') from None
    if table.shape[1] != 58: raise ValueError(f'{path.name}: rows must have 58 columns; got {table.shape[1]}')
    label = table[:, -1]
    if not np.isin(label, (0, 1)).all():
        raise ValueError(f'{path.name}: the last column must be 0 or 1; found {label[~np.isin(label, (0, 1))][0]}')
    x = torch.from_numpy(table[:, :-1].astype(np.float32))
    return Dataset(x, torch.from_numpy(label.astype(np.int64)), ('non-spam', 'spam'))

_READERS['spambase'] = _Reader(('all',), lambda split: (('spambase.data',),), _read_spambase)

# %%
spam = load('spambase', split='all', root=DATA)
test_eq((spam.x.shape, spam.x.dtype, spam.y.dtype), ((4601, 57), torch.float32, torch.int64))
test_eq((torch.bincount(spam.y).tolist(), spam.classes), ([2788, 1813], ('non-spam', 'spam')))
test_eq(spam.x.min().item() >= 0, True)
test_close(spam.x[0, -3:], torch.tensor([3.756, 61., 278.]), eps=1e-6)   # the first row ends 3.756,61,278,1
test_eq(load('spambase', split='all', root=DATA, limit=10).x, spam.x[:10])

# %% [markdown]
# A synthetic file in the root itself is found, and a wrong column count or label is refused:

# %%
table = np.hstack([rng.random((6, 57)).round(3), [[1], [1], [0], [0], [0], [1]]])
np.savetxt(tmp/'spambase.data', table, delimiter=',', fmt='%g')
got = load('spambase', split='all', root=tmp)
test_close(got.x, torch.from_numpy(table[:, :-1]).float(), eps=1e-6); test_eq(got.y.tolist(), [1, 1, 0, 0, 0, 1])
np.savetxt(tmp/'bad/spambase.data', table[:, 1:], delimiter=',', fmt='%g')
test_fail(lambda: load('spambase', split='all', root=tmp/'bad'), contains='rows must have 58 columns; got 57',
          exc=ValueError)
np.savetxt(tmp/'bad/spambase.data', table + 1, delimiter=',', fmt='%g')
test_fail(lambda: load('spambase', split='all', root=tmp/'bad'), contains='last column must be 0 or 1; found 2',
          exc=ValueError)


# %% [markdown]
# ## Splitting and standardizing
# The tabular sets are divided 70/20/10 into training, validation and test sets by a seeded random permutation.
# Split points are rounded cumulative fractions, so the sizes add up to $n$; the seed fixes the permutation without
# touching torch's global random state.

# %%
#| export
def split_indices(
    n:int,                             # number of samples
    fractions:tuple=(0.7, 0.2, 0.1),   # one fraction per part, each >= 0, summing to 1
    seed:int=0,                        # seed of the permutation
)->tuple:                              # int64 index tensors, one per fraction: disjoint, covering range(n)
    "Random disjoint index sets of `range(n)` with sizes in proportion to `fractions` (70/20/10 by default)."
    if not isinstance(n, int) or isinstance(n, bool) or n < 0: raise ValueError(f'n must be an int >= 0; got {n!r}')
    if isinstance(fractions, (str, bytes)) or not hasattr(fractions, '__len__') or not all(
            isinstance(f, numbers.Real) and not isinstance(f, bool) for f in fractions):
        raise TypeError(f'fractions must be a tuple of numbers; got {fractions!r}')
    seed = check_count(seed, 'seed', 0)
    if not all(math.isfinite(f) and f >= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f'fractions must be >= 0 and sum to 1; got {tuple(fractions)}')
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    ends = [round(n * f) for f in np.cumsum(fractions)[:-1]] + [n]
    return tuple(perm[start:end] for start, end in zip([0] + ends[:-1], ends))


# %%
parts = split_indices(len(spam.y))
test_eq([len(p) for p in parts], [3221, 920, 460])
test_eq(torch.cat(parts).sort().values, torch.arange(4601))
test_eq([len(p) for p in split_indices(150)], [105, 30, 15])
test_eq(split_indices(150, seed=3)[0], split_indices(150, seed=3)[0])
test_eq(torch.equal(split_indices(150, seed=3)[0], split_indices(150, seed=4)[0]), False)
test_eq([len(p) for p in split_indices(10, (0.5, 0.5))], [5, 5])
test_fail(lambda: split_indices(10, (0.7, 0.2)), contains='fractions must be >= 0 and sum to 1; got (0.7, 0.2)',
          exc=ValueError)
test_fail(lambda: split_indices(10, ('a', 1.)), contains="fractions must be a tuple of numbers; got ('a', 1.0)", exc=TypeError)
test_fail(lambda: split_indices(10, seed=0.5), contains='seed must be an int', exc=TypeError)


# %% [markdown]
# Standardizing maps every feature to mean 0 and standard deviation 1 (population std, as scikit-learn's
# `StandardScaler`) using the training set's statistics only, applied unchanged to the other sets so that nothing is
# learned from them. A feature constant over the training set is only centred (its std is taken as 1), never divided
# by zero.

# %%
#| export
def standardize(
    train_x:Tensor,  # training inputs (N, ...): statistics are taken over dim 0
    *others:Tensor,  # more inputs (M, ...) with the same trailing shape, e.g. validation and test
)->tuple:            # (train_x, *others) standardized with the training mean and std, same dtype
    "Standardize `train_x` and `others` with the per-feature mean and std of `train_x`."
    if not train_x.is_floating_point() or train_x.ndim < 1 or len(train_x) < 1:
        raise ValueError(f'train_x must be a floating tensor with at least one row; '
                         f'got {train_x.dtype} {tuple(train_x.shape)}')
    for i, x in enumerate(others):
        if not isinstance(x, Tensor): raise TypeError(f'others[{i}] must be a tensor; got {type(x).__name__}')
        if x.shape[1:] != train_x.shape[1:]:
            raise ValueError(f'others[{i}] must have trailing shape {tuple(train_x.shape[1:])}; got {tuple(x.shape)}')
        if x.is_floating_point() and x.dtype != train_x.dtype:
            raise TypeError(f'others[{i}] is {str(x.dtype)[6:]} but train_x is {str(train_x.dtype)[6:]}; convert one '
                            f'(e.g. with .to(train_x.dtype))')
    top = train_x.abs().amax(0)                      # NaN or inf in train_x shows here: no separate finiteness pass
    if not torch.isfinite(top).all(): raise ValueError('train_x must be finite; it holds NaN or infinite values')
    for i, x in enumerate(others):
        if not torch.isfinite(x).all(): raise ValueError(f'others[{i}] must be finite; it holds NaN or infinite values')
    # statistics of train_x / c, c a power of two per feature near its largest |value|: exact rescaling, so squares
    # neither overflow nor underflow at the edges of the float range
    c = torch.ldexp(torch.ones_like(top), torch.frexp(top).exponent)
    s, mean = torch.std_mean(train_x / c, dim=0, correction=0)
    spread = s > 0
    s = torch.where(spread, s, torch.ones_like(s))
    # a constant feature is only centred, in its own units
    return tuple(torch.where(spread, (x / c - mean) / s, x - mean * c) for x in (train_x, *others))


# %% [markdown]
# On the Spambase split: the training set has mean 0 and std 1, the others use the training statistics:

# %%
train_x, val_x, test_x = standardize(*(spam.x[p] for p in parts))
test_close(train_x.mean(0), torch.zeros(57), eps=1e-5)
test_close(train_x.std(0, correction=0), torch.ones(57), eps=1e-4)
mean, s = spam.x[parts[0]].mean(0), spam.x[parts[0]].std(0, correction=0)
test_close(val_x, (spam.x[parts[1]] - mean) / s, eps=1e-4)
test_eq((test_x.shape, test_x.dtype), ((460, 57), torch.float32))

# %% [markdown]
# A constant feature is centred, not divided by zero; shapes that do not match are refused:

# %%
const = torch.tensor([[1., 5.], [3., 5.]])
test_eq(standardize(const)[0], torch.tensor([[-1., 0.], [1., 0.]]))
test_fail(lambda: standardize(const, torch.ones(3, 3)), contains='others[0] must have trailing shape (2,); got (3, 3)',
          exc=ValueError)
test_fail(lambda: standardize(torch.ones(2, 2, dtype=torch.int64)), contains='train_x must be a floating tensor',
          exc=ValueError)
test_fail(lambda: standardize(const, const.double()), contains='others[0] is float64 but train_x is float32',
          exc=TypeError)

# %% [markdown]
# The statistics are taken in units of a power of two near each feature's largest value, an exact rescaling, so data
# at the edges of the float range standardize as any other:

# %%
for scale in (1e-300, 1e300):
    test_close(standardize(const.double() * scale)[0], standardize(const.double())[0], eps=1e-15)

# %% [markdown]
# ## CIFAR-10 and CIFAR-100
# Tiny colour images ([Krizhevsky (2009)](99_references.ipynb#krizhevsky2009)), 32×32 RGB: 50,000 for training and
# 10,000 for testing. CIFAR-10 has 10 classes of 6,000 images; CIFAR-100 has 100 fine classes of 600 (grouped into 20
# coarse ones, which `load` does not use). No licence is stated by the authors; cite the technical report. **The data
# folder holds no copy of them** (its `README.md` lists no source), so the reader is tested on small synthetic
# files written in the official format.
#
# That format is the "python version": pickled dicts, written by Python 2, read with `encoding='bytes'` so their keys
# stay bytes. `cifar-10-batches-py/` holds `data_batch_1` … `data_batch_5` (10,000 images each), `test_batch` and
# `batches.meta`; `cifar-100-python/` holds `train`, `test` and `meta`. In a batch, `b'data'` is a uint8 array
# $(N, 3072)$, each row the red, green and blue 32×32 planes one after the other, each plane row by row, so a row
# reshapes to $(3, 32, 32)$; the labels are the list `b'labels'` (CIFAR-10) or `b'fine_labels'` (CIFAR-100); the
# class names are the lists `b'label_names'` or `b'fine_label_names'` of the meta file.
#
# Unpickling can run arbitrary code, so the unpickler is restricted to what these files contain (numpy arrays,
# lists, dicts, bytes): a file asking for anything else is refused before it runs.

# %%
#| exporti
_PICKLE_GLOBALS = {('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
                   ('numpy.core.numeric', '_frombuffer'), ('numpy._core.numeric', '_frombuffer'),
                   ('numpy', 'ndarray'), ('numpy', 'dtype'), ('_codecs', 'encode')}

class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f'it asks for {module}.{name}, which CIFAR files never contain; refused')
        return super().find_class(module, name)

def _unpickle(path, keys):
    "The dict pickled in `path`, checked to hold `keys`."
    try:
        with open(path, 'rb') as f: d = _CifarUnpickler(f, encoding='bytes').load()
    except Exception as e: raise ValueError(f'{path.name} is not a CIFAR python-version file: {e}') from None
    missing = [k for k in keys if not isinstance(d, dict) or k not in d]
    if missing: raise ValueError(f'{path.name} is not a CIFAR python-version file: no {missing[0]!r} entry')
    return d


# %%
#| exporti
def _read_cifar(label_key, names_key, paths, split, limit):
    *batches, meta = paths
    classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in _unpickle(meta, [names_key])[names_key])
    xs, ys, taken = [], [], 0
    for path in batches:
        if limit is not None and taken >= limit: break
        batch = _unpickle(path, [b'data', label_key])
        data, labels = batch[b'data'], batch[label_key]
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072):
            found = f'{data.dtype} {data.shape}' if isinstance(data, np.ndarray) else type(data).__name__
            raise ValueError(f'{path.name}: data must be a uint8 array (N, 3072); got {found}')
        if len(labels) != len(data): raise ValueError(f'{path.name} holds {len(data)} images but {len(labels)} labels')
        take = len(data) if limit is None else min(len(data), limit - taken)
        xs.append(data[:take]); ys.extend(labels[:take]); taken += take
    y = torch.tensor(ys, dtype=torch.int64)
    if len(y) and not 0 <= int(y.min()) <= int(y.max()) < len(classes):
        raise ValueError(f'{label_key.decode()} must lie in range({len(classes)}); '
                         f'found {int(y.min())}..{int(y.max())}')
    x = torch.from_numpy(np.concatenate(xs)).reshape(-1, 3, 32, 32).float().div_(255)
    return Dataset(x, y, classes)

def _cifar10_files(split):
    batches = [f'data_batch_{i}' for i in range(1, 6)] if split == 'train' else ['test_batch']
    return tuple((f,) for f in (*batches, 'batches.meta'))

_READERS['cifar10'] = _Reader(('train', 'test'), _cifar10_files,
                              functools.partial(_read_cifar, b'labels', b'label_names'))
_READERS['cifar100'] = _Reader(('train', 'test'), lambda split: ((split,), ('meta',)),
                               functools.partial(_read_cifar, b'fine_labels', b'fine_label_names'))


# %% [markdown]
# The synthetic files: five training batches of 2 images and a test batch of 3, pickled (protocol 2, as Python 2's
# `cPickle` wrote them) with bytes keys and names. The first test image is a colour test: red plane 255, green 0, blue
# 128; the second has one lit red pixel at row 0, column 1, which pins the row-major order of each plane:

# %%
def write_pickle(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'wb') as f: pickle.dump(obj, f, protocol=2)

def cifar_batch(n, label_key, n_classes, seed):
    gen = np.random.default_rng(seed)
    return {b'batch_label': b'synthetic', b'data': gen.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: gen.integers(0, n_classes, n).tolist(), b'filenames': [b'img%d.png' % i for i in range(n)]}

names10 = [b'airplane', b'automobile', b'bird', b'cat', b'deer', b'dog', b'frog', b'horse', b'ship', b'truck']
cifar10_dir = tmp/'cifar-10-batches-py'
batches = {f'data_batch_{i}': cifar_batch(2, b'labels', 10, i) for i in range(1, 6)}
batches['test_batch'] = cifar_batch(3, b'labels', 10, 0)
batches['test_batch'][b'data'][:2] = 0
batches['test_batch'][b'data'][0] = np.repeat(np.array([255, 0, 128], np.uint8), 1024)
batches['test_batch'][b'data'][1, 1] = 255
for file, batch in batches.items(): write_pickle(cifar10_dir/file, batch)
write_pickle(cifar10_dir/'batches.meta', {b'label_names': names10, b'num_cases_per_batch': 2, b'num_vis': 3072})

# %% [markdown]
# Read back: planes in RGB order, pixels row by row, labels and names as written, training batches in order:

# %%
cifar = load('cifar10', root=tmp)
test_eq((cifar.x.shape, cifar.x.dtype, cifar.y.dtype), ((3, 3, 32, 32), torch.float32, torch.int64))
test_eq((cifar.x[0, :, 5, 7] * 255).tolist(), [255., 0., 128.])
test_eq(cifar.x[1].nonzero().tolist(), [[0, 0, 1]])
test_eq((cifar.y.tolist(), cifar.classes[:2]), (batches['test_batch'][b'labels'], ('airplane', 'automobile')))
cifar_train = load('cifar10', split='train', root=tmp)
expected = np.concatenate([batches[f'data_batch_{i}'][b'data'] for i in range(1, 6)]).reshape(10, 3, 32, 32)
test_eq(cifar_train.x, torch.from_numpy(expected).float() / 255)
test_eq(cifar_train.y.tolist(), sum((batches[f'data_batch_{i}'][b'labels'] for i in range(1, 6)), []))
test_eq(load('cifar10', split='train', root=tmp, limit=5).x, cifar_train.x[:5])   # stops in the third batch

# %% [markdown]
# CIFAR-100 reads the fine labels and their names:

# %%
cifar100_dir = tmp/'cifar-100-python'
names100 = [b'class%02d' % i for i in range(100)]
for split, n in (('train', 4), ('test', 3)):
    write_pickle(cifar100_dir/split, cifar_batch(n, b'fine_labels', 100, n) | {b'coarse_labels': [0] * n})
write_pickle(cifar100_dir/'meta', {b'fine_label_names': names100, b'coarse_label_names': [b'coarse']})
cifar100 = load('cifar100', split='train', root=tmp)
test_eq((cifar100.x.shape, len(cifar100.classes), cifar100.classes[42]), ((4, 3, 32, 32), 100, 'class42'))
test_eq(cifar100.y.tolist(), cifar_batch(4, b'fine_labels', 100, 4)[b'fine_labels'])


# %% [markdown]
# Broken files are refused, and so is a pickle that would run code when loaded (here a harmless `print`):

# %%
class RunsCode:
    def __reduce__(self): return (print, ('this must never run',))

bad_cifar = tmp/'bad/cifar-100-python'
write_pickle(bad_cifar/'meta', {b'fine_label_names': names100})
write_pickle(bad_cifar/'test', {b'data': np.zeros((2, 3072), np.uint8), b'fine_labels': [0]})
test_fail(lambda: load('cifar100', root=tmp/'bad'), contains='test holds 2 images but 1 labels', exc=ValueError)
write_pickle(bad_cifar/'test', {b'data': np.zeros((2, 1024), np.uint8), b'fine_labels': [0, 1]})
test_fail(lambda: load('cifar100', root=tmp/'bad'), contains='data must be a uint8 array (N, 3072)', exc=ValueError)
write_pickle(bad_cifar/'test', {b'data': np.zeros((2, 3072), np.uint8), b'labels': [0, 1]})
test_fail(lambda: load('cifar100', root=tmp/'bad'), contains="no b'fine_labels' entry", exc=ValueError)
write_pickle(bad_cifar/'test', RunsCode())
test_fail(lambda: load('cifar100', root=tmp/'bad'), exc=ValueError,
          contains='test is not a CIFAR python-version file: it asks for __builtin__.print, which CIFAR files never')

# %% [markdown]
# Every name in `DATASETS` has a reader. Where CIFAR is not on disk, `load('cifar10')` says so:

# %%
test_eq(set(_READERS), set(DATASETS))
try: load('cifar10', split='train', root='/nowhere')
except FileNotFoundError as e: message = str(e)
test_eq(message.startswith("cifar10 (split='train') not found: no folder holds all of data_batch_1, "), True)
print(message)

# %% [markdown]
# ## Export -

# %%
#| hide
#| eval: false
import nbdev; nbdev.nbdev_export()

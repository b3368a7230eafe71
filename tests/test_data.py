"""`netmoments.data`: every loader on synthetic files written here in the real formats (IDX, CSV, CIFAR pickles),
then on the real datasets when present (`NETMOMENTS_DATA`, Debian's Fashion-MNIST); skipped, with the reason, if not."""
import gzip, math, pickle, struct, sys, time

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from torch.testing import assert_close

from netmoments.data import DATASETS, Dataset, data_dirs, load, split_indices, standardize

IDX_SPELLINGS = ['{}-idx{}-ubyte.gz', '{}-idx{}-ubyte', '{}.idx{}-ubyte', '{}.idx{}-ubyte.gz']
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


# ---------------------------------------------------------------------------------------------------------- writers
def idx_bytes(array, type_byte=0x08):
    "An IDX file's bytes, written from the format description (independent of the reader)."
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return struct.pack(f'>HBB{array.ndim}I', 0, type_byte, array.ndim, *array.shape) + array.tobytes()


def write(path, raw):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith('.gz'): raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def write_idx_split(folder, split='test', n=6, spelling=IDX_SPELLINGS[0], seed=0, n_classes=10):
    "Synthetic images (n, 28, 28) and labels for `split` in `folder`; returns them."
    gen = np.random.default_rng(seed)
    images, labels = gen.integers(0, 256, (n, 28, 28), dtype=np.uint8), gen.integers(0, n_classes, n).astype(np.uint8)
    stem = 'train' if split == 'train' else 't10k'
    write(folder/spelling.format(f'{stem}-images', 3), idx_bytes(images))
    write(folder/spelling.format(f'{stem}-labels', 1), idx_bytes(labels))
    return images, labels


def write_pickle(path, obj, protocol=2):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'wb') as f: pickle.dump(obj, f, protocol=protocol)


def cifar_batch(n, label_key, n_classes, seed):
    gen = np.random.default_rng(seed)
    return {b'batch_label': b'synthetic', b'data': gen.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: gen.integers(0, n_classes, n).tolist(), b'filenames': [b'f%d.png' % i for i in range(n)]}


def write_cifar10(root, sizes=(2, 3, 1, 2, 2), n_test=3, protocol=2):
    "A synthetic cifar-10-batches-py folder; returns {file name: batch dict}."
    folder, batches = root/'cifar-10-batches-py', {}
    for i, n in enumerate(sizes, 1): batches[f'data_batch_{i}'] = cifar_batch(n, b'labels', 10, i)
    batches['test_batch'] = cifar_batch(n_test, b'labels', 10, 0)
    for name, batch in batches.items(): write_pickle(folder/name, batch, protocol)
    names = [b'airplane', b'automobile', b'bird', b'cat', b'deer', b'dog', b'frog', b'horse', b'ship', b'truck']
    write_pickle(folder/'batches.meta', {b'label_names': names, b'num_cases_per_batch': 2, b'num_vis': 3072}, protocol)
    return batches


def write_cifar100(root, n_train=4, n_test=3, protocol=2):
    folder, batches = root/'cifar-100-python', {}
    for split, n in (('train', n_train), ('test', n_test)):
        batches[split] = cifar_batch(n, b'fine_labels', 100, n) | {b'coarse_labels': [0] * n}
        write_pickle(folder/split, batches[split], protocol)
    write_pickle(folder/'meta', {b'fine_label_names': [b'c%02d' % i for i in range(100)],
                                 b'coarse_label_names': [b'coarse%d' % i for i in range(20)]}, protocol)
    return batches


def spambase_table(n=8, seed=0):
    gen = np.random.default_rng(seed)
    return np.hstack([gen.random((n, 57)).round(4) * gen.integers(1, 1000, 57), gen.integers(0, 2, (n, 1))])


def write_spambase(path, table):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, table, delimiter=',', fmt='%.17g')


def check_dataset(d, shape, n_classes):
    "Types, shapes and ranges every Dataset promises."
    assert isinstance(d, Dataset)
    assert (d.x.dtype, d.y.dtype, tuple(d.x.shape), tuple(d.y.shape)) == (torch.float32, torch.int64, shape, shape[:1])
    assert isinstance(d.classes, tuple) and len(d.classes) == n_classes and all(isinstance(c, str) for c in d.classes)
    if len(d.y): assert 0 <= int(d.y.min()) and int(d.y.max()) < n_classes


# ------------------------------------------------------------------------------------------------------ IDX datasets
@pytest.mark.parametrize('name', ['mnist', 'fashion-mnist'])
@pytest.mark.parametrize('spelling', IDX_SPELLINGS)
@pytest.mark.parametrize('in_folder', [True, False], ids=['root/name', 'root'])
@pytest.mark.parametrize('split', ['train', 'test'])
def test_idx_round_trip(tmp_path, name, spelling, in_folder, split):
    folder = tmp_path/name if in_folder else tmp_path
    images, labels = write_idx_split(folder, split, spelling=spelling)
    d = load(name, split=split, root=tmp_path)
    check_dataset(d, (6, 1, 28, 28), 10)
    assert torch.equal(d.x, torch.from_numpy(images).float().unsqueeze(1) / 255)
    assert d.y.tolist() == labels.tolist()
    assert float(d.x.min()) >= 0 and float(d.x.max()) <= 1


@pytest.mark.parametrize('limit', [1, 4, 6, 100])
def test_idx_limit(tmp_path, limit):
    images, labels = write_idx_split(tmp_path/'mnist', n=6)
    d = load('mnist', root=tmp_path, limit=limit)
    n = min(limit, 6)
    check_dataset(d, (n, 1, 28, 28), 10)
    assert torch.equal(d.x, torch.from_numpy(images[:n]).float().unsqueeze(1) / 255)
    assert d.y.tolist() == labels[:n].tolist()


def test_idx_first_folder_holding_both_files_wins(tmp_path):
    "A split is never stitched from two folders: images alone in root/mnist do not stop the search."
    write(tmp_path/'mnist/t10k-images-idx3-ubyte.gz', idx_bytes(np.zeros((2, 28, 28))))
    images, _ = write_idx_split(tmp_path, n=3)
    assert torch.equal(load('mnist', root=tmp_path).x[:, 0], torch.from_numpy(images).float() / 255)


def corrupt_cases():
    gen = np.random.default_rng(1)
    images, labels = gen.integers(0, 256, (4, 28, 28), dtype=np.uint8), np.array([1, 2, 3, 4], np.uint8)
    good_images, good_labels = idx_bytes(images), idx_bytes(labels)
    return {  # case: (images bytes, labels bytes, message fragment)
        'labels as images': (good_labels, good_labels, 'magic number 0x00000801, expected 0x00000803'),
        'images as labels': (good_images, good_images, 'magic number 0x00000803, expected 0x00000801'),
        'signed bytes': (idx_bytes(images, 0x09), good_labels, 'magic number 0x00000903, expected 0x00000803'),
        'empty': (b'', good_labels, 'magic number 0x00000000'),
        'short header': (good_images[:10], good_labels, 't10k-images-idx3-ubyte.gz is truncated inside its header'),
        'truncated': (good_images[:-1], good_labels, 'is truncated: its header promises (4, 28, 28)'),
        'trailing bytes': (good_images + b'\x00', good_labels, 'holds more data than the (4, 28, 28)'),
        'count mismatch': (good_images, idx_bytes(labels[:3]), 'holds 4 images but t10k-labels-idx1-ubyte.gz holds 3'),
        'label out of range': (good_images, idx_bytes([1, 2, 10, 3]), 'label 10 is out of range for 10 classes'),
        'not 28x28': (idx_bytes(images[:, :, :27]), good_labels, 'images must be 28x28; got (28, 27)'),
    }


@pytest.mark.parametrize('case', list(corrupt_cases()))
def test_idx_corrupt(tmp_path, case):
    images, labels, message = corrupt_cases()[case]
    write(tmp_path/'t10k-images-idx3-ubyte.gz', images)
    write(tmp_path/'t10k-labels-idx1-ubyte.gz', labels)
    with pytest.raises(ValueError) as err: load('mnist', root=tmp_path)
    assert message in str(err.value)


@pytest.mark.parametrize('damage', ['cut', 'flipped', 'not gzip'])
def test_idx_bad_gzip(tmp_path, damage):
    _ = write_idx_split(tmp_path)
    path = tmp_path/'t10k-images-idx3-ubyte.gz'
    raw = path.read_bytes()
    raw = {'cut': raw[:len(raw) // 2], 'flipped': raw[:40] + bytes(b ^ 0xFF for b in raw[40:80]) + raw[80:],
           'not gzip': idx_bytes(np.zeros((6, 28, 28)))}[damage]
    path.write_bytes(raw)
    with pytest.raises(ValueError) as err: load('mnist', root=tmp_path)
    assert 't10k-images-idx3-ubyte.gz' in str(err.value)


# ---------------------------------------------------------------------------------------------------------- Spambase
def test_spambase_round_trip(tmp_path):
    table = spambase_table()
    write_spambase(tmp_path/'spambase/spambase.data', table)
    d = load('spambase', split='all', root=tmp_path)
    check_dataset(d, (8, 57), 2)
    assert d.classes == ('non-spam', 'spam')
    assert_close(d.x, torch.from_numpy(table[:, :-1]).float(), rtol=0, atol=0)
    assert d.y.tolist() == table[:, -1].astype(int).tolist()
    assert torch.equal(load('spambase', split='all', root=tmp_path, limit=3).x, d.x[:3])


def test_spambase_in_root_itself(tmp_path):
    write_spambase(tmp_path/'spambase.data', spambase_table(2))
    assert load('spambase', split='all', root=tmp_path).x.shape == (2, 57)


@pytest.mark.parametrize('case', ['columns', 'label', 'text', 'ragged'])
def test_spambase_corrupt(tmp_path, case):
    table, path = spambase_table(), tmp_path/'spambase/spambase.data'
    if case == 'columns': write_spambase(path, table[:, 1:])
    elif case == 'label': write_spambase(path, np.hstack([table[:, :-1], np.full((8, 1), 0.5)]))
    else:
        write_spambase(path, table)
        lines = path.read_text().splitlines()
        lines[2] = lines[2].replace(',', ',x', 1) if case == 'text' else lines[2].rsplit(',', 1)[0]
        path.write_text('\n'.join(lines) + '\n')
    message = {'columns': 'rows must have 58 columns; got 57', 'label': 'last column must be 0 or 1; found 0.5',
               'text': 'spambase.data is not a numeric CSV', 'ragged': 'spambase.data is not a numeric CSV'}[case]
    with pytest.raises(ValueError) as err: load('spambase', split='all', root=tmp_path)
    assert message in str(err.value)


# ------------------------------------------------------------------------------------------------------------- CIFAR
@pytest.mark.parametrize('protocol', [2, 5])
def test_cifar10_round_trip(tmp_path, protocol):
    batches = write_cifar10(tmp_path, protocol=protocol)
    test = load('cifar10', root=tmp_path)
    check_dataset(test, (3, 3, 32, 32), 10)
    assert test.classes[0] == 'airplane' and test.classes[-1] == 'truck'
    data = batches['test_batch'][b'data']
    # pixel (c, h, w) of image i is byte c*1024 + h*32 + w of row i: RGB planes, each row-major
    for i, c, h, w in [(0, 0, 0, 0), (1, 2, 31, 31), (2, 1, 5, 17), (0, 0, 1, 0)]:
        assert float(test.x[i, c, h, w]) * 255 == pytest.approx(float(data[i, c * 1024 + h * 32 + w]), abs=1e-4)
    assert test.y.tolist() == batches['test_batch'][b'labels']
    train = load('cifar10', split='train', root=tmp_path)
    check_dataset(train, (10, 3, 32, 32), 10)
    expected = np.concatenate([batches[f'data_batch_{i}'][b'data'] for i in range(1, 6)])
    assert torch.equal(train.x, torch.from_numpy(expected).reshape(10, 3, 32, 32).float() / 255)
    assert train.y.tolist() == sum((batches[f'data_batch_{i}'][b'labels'] for i in range(1, 6)), [])


@pytest.mark.parametrize('limit', [1, 2, 3, 6, 10, 50])
def test_cifar10_limit_across_batches(tmp_path, limit):
    write_cifar10(tmp_path)   # batch sizes 2, 3, 1, 2, 2
    full = load('cifar10', split='train', root=tmp_path)
    part = load('cifar10', split='train', root=tmp_path, limit=limit)
    assert torch.equal(part.x, full.x[:limit]) and torch.equal(part.y, full.y[:limit])


@pytest.mark.parametrize('protocol', [2, 5])
@pytest.mark.parametrize('split', ['train', 'test'])
def test_cifar100_round_trip(tmp_path, protocol, split):
    batches = write_cifar100(tmp_path, protocol=protocol)
    d = load('cifar100', split=split, root=tmp_path)
    n = len(batches[split][b'fine_labels'])
    check_dataset(d, (n, 3, 32, 32), 100)
    assert d.classes[7] == 'c07'
    assert d.y.tolist() == batches[split][b'fine_labels']
    assert torch.equal(d.x, torch.from_numpy(batches[split][b'data']).reshape(n, 3, 32, 32).float() / 255)


def test_cifar_folder_as_root(tmp_path):
    "root may also be the batches folder itself."
    write_cifar10(tmp_path)
    assert load('cifar10', root=tmp_path/'cifar-10-batches-py').x.shape == (3, 3, 32, 32)


class RunsCode:
    def __reduce__(self): return (sys.exit, ('must never run',))


@pytest.mark.parametrize('case', ['labels short', 'data shape', 'data dtype', 'data list', 'no labels', 'not a dict',
                                  'label range', 'runs code', 'garbage', 'truncated'])
def test_cifar_corrupt(tmp_path, case):
    write_cifar100(tmp_path)
    path, zeros = tmp_path/'cifar-100-python/test', np.zeros((2, 3072), np.uint8)
    obj, message = {
        'labels short': ({b'data': zeros, b'fine_labels': [0]}, 'test holds 2 images but 1 labels'),
        'data shape': ({b'data': zeros[:, :100], b'fine_labels': [0, 0]}, 'data must be a uint8 array (N, 3072)'),
        'data dtype': ({b'data': zeros.astype(np.int64), b'fine_labels': [0, 0]}, 'got int64'),
        'data list': ({b'data': [[0] * 3072] * 2, b'fine_labels': [0, 0]}, 'got list'),
        'no labels': ({b'data': zeros, b'labels': [0, 0]}, "no b'fine_labels' entry"),
        'not a dict': ([zeros], "no b'data' entry"),
        'label range': ({b'data': zeros, b'fine_labels': [0, 100]}, 'fine_labels must lie in range(100); found 0..100'),
        'runs code': (RunsCode(), 'exit, which CIFAR files never contain; refused'),
        'garbage': (None, 'test is not a CIFAR python-version file'),
        'truncated': (None, 'test is not a CIFAR python-version file'),
    }[case]
    if case == 'garbage': path.write_bytes(b'\x00not a pickle at all')
    elif case == 'truncated': path.write_bytes(path.read_bytes()[:100])
    else: write_pickle(path, obj)
    with pytest.raises(ValueError) as err: load('cifar100', root=tmp_path)
    assert message in str(err.value)


def test_cifar_meta_checked(tmp_path):
    write_cifar10(tmp_path)
    write_pickle(tmp_path/'cifar-10-batches-py/batches.meta', {b'fine_label_names': []})
    with pytest.raises(ValueError, match="batches.meta is not a CIFAR python-version file: no b'label_names' entry"):
        load('cifar10', root=tmp_path)


# ------------------------------------------------------------------------------------------------------- Iris, Wine
@pytest.mark.parametrize('name, shape, counts, first', [
    ('iris', (150, 4), [50, 50, 50], [5.1, 3.5, 1.4, 0.2]),
    ('wine', (178, 13), [59, 71, 48], [14.23, 1.71, 2.43, 15.6])])
def test_sklearn_tables(name, shape, counts, first):
    pytest.importorskip('sklearn', reason='scikit-learn (a dev requirement) is not installed')
    d = load(name, split='all')
    check_dataset(d, shape, 3)
    assert torch.bincount(d.y).tolist() == counts
    assert_close(d.x[0, :4], torch.tensor(first), rtol=0, atol=1e-6)
    assert torch.equal(load(name, split='all', limit=5).x, d.x[:5])


def test_sklearn_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, 'sklearn', None)
    monkeypatch.setitem(sys.modules, 'sklearn.datasets', None)
    with pytest.raises(ImportError, match='wine ships with scikit-learn, which is not installed: pip install scikit'):
        load('wine', split='all')


# --------------------------------------------------------------------------------------------- names, splits, paths
def test_bad_arguments():
    with pytest.raises(ValueError, match="name must be one of 'mnist', 'fashion-mnist', 'iris', 'wine', 'spambase', "
                                         "'cifar10', 'cifar100'; got 'MNIST'"):
        load('MNIST')
    with pytest.raises(ValueError, match="split must be 'train' or 'test' for cifar10; got 'all'"):
        load('cifar10', split='all')
    for name in ('iris', 'wine', 'spambase'):
        with pytest.raises(ValueError, match=f"split must be 'all' for {name}; got 'test'; {name} has no official"):
            load(name)
    for limit in (0, -1, 1.0, '3', True):
        with pytest.raises(ValueError, match='limit must be a positive int or None'):
            load('iris', split='all', limit=limit)


@pytest.mark.parametrize('name, split', [('mnist', 'test'), ('mnist', 'train'), ('spambase', 'all'),
                                         ('cifar10', 'train'), ('cifar100', 'test')])
def test_missing_says_where_it_looked(tmp_path, monkeypatch, name, split):
    nowhere = tmp_path/'nowhere'
    with pytest.raises(FileNotFoundError) as err: load(name, split=split, root=nowhere)
    message = str(err.value)
    assert message.startswith(f'{name} (split={split!r}) not found')
    for folder in data_dirs(name, nowhere): assert f'  {folder}\n' in message
    assert f"load({name!r}, root=...)" in message and 'NETMOMENTS_DATA' in message
    assert f"data root from root={str(nowhere)!r}" in message
    monkeypatch.setenv('NETMOMENTS_DATA', str(nowhere))
    with pytest.raises(FileNotFoundError, match='data root from NETMOMENTS_DATA'): load(name, split=split)
    monkeypatch.delenv('NETMOMENTS_DATA')
    monkeypatch.setenv('XDG_DATA_HOME', str(nowhere))
    with pytest.raises(FileNotFoundError, match='data root from the default, as NETMOMENTS_DATA is not set') as err:
        load(name, split=split)
    assert f'  {nowhere/"netmoments"}\n' in str(err.value)


def test_root_environment_default(tmp_path, monkeypatch):
    write_idx_split(tmp_path/'env/mnist', n=2)
    write_idx_split(tmp_path/'arg/mnist', n=3)
    monkeypatch.setenv('NETMOMENTS_DATA', str(tmp_path/'env'))
    assert len(load('mnist').y) == 2
    assert len(load('mnist', root=tmp_path/'arg').y) == 3
    assert len(load('mnist', root=str(tmp_path/'arg')).y) == 3
    monkeypatch.setenv('NETMOMENTS_DATA', '')
    monkeypatch.setenv('XDG_DATA_HOME', str(tmp_path/'xdg'))
    assert data_dirs('mnist') == [tmp_path/'xdg/netmoments/mnist', tmp_path/'xdg/netmoments']
    assert data_dirs('fashion-mnist')[-1].as_posix() == '/usr/share/datasets/fashion-mnist'
    assert data_dirs('iris') == data_dirs('wine') == []
    assert set(DATASETS) == {'mnist', 'fashion-mnist', 'iris', 'wine', 'spambase', 'cifar10', 'cifar100'}


# ------------------------------------------------------------------------------------------ split_indices, standardize
@given(n=st.integers(0, 400), weights=st.lists(st.integers(0, 9), min_size=1, max_size=5), seed=st.integers(0, 2**31))
def test_split_indices_partition(n, weights, seed):
    if sum(weights) == 0: weights = weights[:-1] + [1]
    fractions = tuple(w / sum(weights) for w in weights)
    parts = split_indices(n, fractions, seed=seed)
    assert len(parts) == len(fractions) and all(p.dtype == torch.int64 for p in parts)
    assert torch.equal(torch.cat(parts).sort().values, torch.arange(n))
    for p, f in zip(parts, fractions): assert abs(len(p) - n * f) <= 1 + 1e-9   # ends are rounded cumulative sums
    for a, b in zip(parts, split_indices(n, fractions, seed=seed)): assert torch.equal(a, b)


def test_split_indices_defaults_and_errors():
    state = torch.random.get_rng_state()
    assert [len(p) for p in split_indices(150)] == [105, 30, 15]
    assert [len(p) for p in split_indices(178)] == [125, 35, 18]
    assert [len(p) for p in split_indices(4601)] == [3221, 920, 460]
    assert torch.equal(torch.random.get_rng_state(), state)   # no global random state touched
    assert not torch.equal(split_indices(100, seed=0)[0], split_indices(100, seed=1)[0])
    with pytest.raises(ValueError, match=r'fractions must be >= 0 and sum to 1; got \(0.5, 0.6\)'):
        split_indices(10, (0.5, 0.6))
    with pytest.raises(ValueError, match='fractions must be >= 0'): split_indices(10, (1.5, -0.5))
    with pytest.raises(ValueError, match='n must be an int >= 0; got -1'): split_indices(-1)


@given(rows=st.integers(1, 30), cols=st.integers(1, 6), seed=st.integers(0, 2**31))
def test_standardize_matches_reference(rows, cols, seed):
    gen = torch.Generator().manual_seed(seed)
    train = torch.randn(rows, cols, generator=gen, dtype=torch.float64) * 100 + 7
    train[:, 0] = 3.   # a constant feature
    others = [torch.randn(5, cols, generator=gen, dtype=torch.float64) for _ in range(2)]
    mean = train.numpy().mean(0)
    s = train.numpy().std(0)   # population std, as sklearn's StandardScaler
    s = np.where(s > 0, s, 1.)
    out = standardize(train, *others)
    assert len(out) == 3 and all(o.dtype == torch.float64 for o in out)
    for got, x in zip(out, (train, *others)):
        assert_close(got, torch.from_numpy((x.numpy() - mean) / s), rtol=1e-12, atol=1e-12)
    assert torch.equal(out[0][:, 0], torch.zeros(rows, dtype=torch.float64))


def test_standardize_images_and_errors():
    images = torch.rand(10, 1, 4, 4)
    out, = standardize(images)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert_close(out.mean(0), torch.zeros(1, 4, 4), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r'others\[1\] must have trailing shape \(1, 4, 4\); got \(2, 16\)'):
        standardize(images, images, torch.ones(2, 16))
    with pytest.raises(ValueError, match='train_x must be a floating tensor'):
        standardize(torch.ones(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match='at least one row'): standardize(torch.ones(0, 2))


# ---------------------------------------------------------------------------------------- the real data, when present
def real(name, split='test', **kw):
    "The real dataset, or a skip saying where it was looked for (NETMOMENTS_DATA, the Debian package)."
    try: return load(name, split=split, **kw)
    except FileNotFoundError as e:
        pytest.skip(f'real {name} not found (point NETMOMENTS_DATA at the data folder): {str(e).splitlines()[0]}')


def test_real_mnist_test():
    d = real('mnist')
    check_dataset(d, (10000, 1, 28, 28), 10)
    assert torch.bincount(d.y).tolist() == MNIST_TEST_COUNTS
    assert (float(d.x.min()), float(d.x.max())) == (0., 1.)
    assert float(d.x.double().mean()) * 255 == pytest.approx(33.79, abs=0.005)
    seconds = []
    for _ in range(2):
        start = time.perf_counter(); load('mnist'); seconds.append(time.perf_counter() - start)
    assert min(seconds) < 1, f'MNIST test set took {min(seconds):.2f} s to load'


def test_real_mnist_train():
    d = real('mnist', 'train')
    check_dataset(d, (60000, 1, 28, 28), 10)
    assert torch.bincount(d.y).tolist() == MNIST_TRAIN_COUNTS
    assert float(d.x.double().mean()) * 255 == pytest.approx(33.32, abs=0.005)
    first = load('mnist', split='train', limit=50)
    assert torch.equal(first.x, d.x[:50]) and torch.equal(first.y, d.y[:50])


@pytest.mark.parametrize('split, n', [('test', 10000), ('train', 60000)])
def test_real_fashion_mnist(split, n):
    d = real('fashion-mnist', split)
    check_dataset(d, (n, 1, 28, 28), 10)
    assert torch.bincount(d.y).tolist() == [n // 10] * 10
    assert (float(d.x.min()), float(d.x.max())) == (0., 1.)
    assert d.classes[0] == 'T-shirt/top' and d.classes[9] == 'Ankle boot'


def test_real_spambase():
    d = real('spambase', 'all')
    check_dataset(d, (4601, 57), 2)
    assert torch.bincount(d.y).tolist() == [2788, 1813]
    assert d.y[:1813].eq(1).all()   # UCI's order: spam first
    assert_close(d.x[0, -3:], torch.tensor([3.756, 61., 278.]), rtol=0, atol=1e-6)
    assert float(d.x.min()) >= 0


# --- headers that promise more than the file holds; empty files -----------------------------------------------------

@pytest.mark.parametrize('suffix', ['.gz', ''])
@pytest.mark.parametrize('count', [2**31, 2**32 - 1, 1000])
def test_idx_header_promising_too_much_is_refused_before_allocating(tmp_path, suffix, count):
    "A header promising 2^31 images (1.5 TiB) is checked against the file's size first: a ValueError naming the file."
    head = struct.pack('>HBB3I', 0, 8, 3, count, 28, 28)
    name = f't10k-images-idx3-ubyte{suffix}'
    write(tmp_path/name, head + bytes(28 * 28))
    write(tmp_path/f't10k-labels-idx1-ubyte{suffix}', idx_bytes(np.zeros(1)))
    with pytest.raises(ValueError, match=f'{name} is truncated: its header promises \\({count}, 28, 28\\)'):
        load('mnist', root=tmp_path)


@pytest.mark.parametrize('suffix', ['.gz', ''])
def test_idx_empty_split(tmp_path, suffix):
    "A 0-image IDX split reads as empty tensors of the right shape."
    write(tmp_path/f't10k-images-idx3-ubyte{suffix}', idx_bytes(np.zeros((0, 28, 28))))
    write(tmp_path/f't10k-labels-idx1-ubyte{suffix}', idx_bytes(np.zeros(0)))
    ds = load('mnist', root=tmp_path)
    assert ds.x.shape == (0, 1, 28, 28) and ds.y.shape == (0,)
    assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64


def test_standardize_and_split_refuse_bad_values():
    "NaN or infinite inputs, non-tensors, boolean counts and NaN fractions are refused by name."
    with pytest.raises(ValueError, match='train_x must be finite'): standardize(torch.tensor([[1., math.nan]]))
    with pytest.raises(ValueError, match=r'others\[0\] must be finite'):
        standardize(torch.ones(3, 2), torch.tensor([[math.inf, 0.]]))
    with pytest.raises(TypeError, match=r'others\[0\] must be a tensor; got list'): standardize(torch.ones(3, 2), [[1., 2.]])
    with pytest.raises(ValueError, match='n must be an int >= 0; got True'): split_indices(True)
    with pytest.raises(ValueError, match='fractions must be >= 0 and sum to 1'): split_indices(10, (math.nan, 1.))


def test_arguments_of_the_wrong_type_are_named():
    "A root, fractions or seed of the wrong type, and a limit that is not a positive int, name the argument."
    with pytest.raises(TypeError, match='root must be a folder'): data_dirs('mnist', root=3)
    with pytest.raises(TypeError, match='root must be a folder'): load('iris', split='all', root=['/data'])
    for limit in (0, -3, 2.5, math.nan, True, '3'):
        with pytest.raises(ValueError, match='limit must be a positive int or None'): load('mnist', limit=limit)
    with pytest.raises(TypeError, match='fractions must be a tuple of numbers'): split_indices(10, 'abc')
    with pytest.raises(TypeError, match='fractions must be a tuple of numbers'): split_indices(10, (0.5, None))
    with pytest.raises(TypeError, match='seed must be an int'): split_indices(10, seed=1.5)
    assert [len(p) for p in split_indices(10, np.array([0.5, 0.5]))] == [5, 5]   # any sequence of numbers


def test_standardize_refuses_a_second_dtype():
    with pytest.raises(TypeError, match=r'others\[0\] is float64 but train_x is float32'):
        standardize(torch.ones(3, 2), torch.ones(3, 2, dtype=torch.float64))


@given(rows=st.integers(2, 20), power=st.sampled_from([-1000, -500, 500, 1000, 1020]), seed=st.integers(0, 2**31))
def test_standardize_is_scale_free_to_the_ends_of_the_range(rows, power, seed):
    "Statistics in units of a power of two per feature: data scaled by 2^power standardize to the very same values."
    x = torch.randn(rows, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[:, 2] = 1.5                                  # a constant feature: centred in its own units
    ref, got = standardize(x, x[:2]), standardize(x * 2.**power, x[:2] * 2.**power)
    for a, b in zip(got, ref): assert torch.equal(a, b)

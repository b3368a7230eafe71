"Properties of `netmoments.models`: LeNet, the synthetic networks of Bibi et al. 2018, §4.1, and the bundled LeNet and MNIST slice."
from pathlib import Path

import pytest
import torch
from torch import nn

import netmoments.models as models
from netmoments.models import lenet, mnist_slice, pretrained, synthetic

NAMES = ['FC-A', 'FC-B', 'FC-C', 'Conv-A', 'Conv-B', 'Conv-C']
COUNTS = dict(zip(NAMES, [10_201, 20_301, 30_401, 1_337, 1_213, 1_121]))


def example_input(name, n=5, seed=0):
    shape = (n, 100) if name.startswith('FC') else (n, 1, 20, 20)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def n_params(net): return sum(p.numel() for p in net.parameters())


def test_lenet_layers():
    net = lenet(torch.Generator().manual_seed(0))
    assert n_params(net) == 431_080
    assert [type(m).__name__ for m in net] == ['Conv2d', 'ReLU', 'MaxPool2d', 'Conv2d', 'ReLU', 'MaxPool2d', 'Flatten',
                                               'Linear', 'ReLU', 'Linear']
    assert [i for i, m in enumerate(net) if isinstance(m, nn.ReLU)] == [1, 4, 8]   # ReLU #3 (l = 3) is module 8
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    assert net(x).shape == (3, 10)
    assert net[:8](x).shape == (3, 500)          # R_{l-1}: q = 500
    assert torch.equal(net[8:](net[:8](x)), net(x))


def test_lenet_seeded_and_global_rng_untouched():
    state = torch.get_rng_state()
    a, b = lenet(torch.Generator().manual_seed(5)), lenet(torch.Generator().manual_seed(5))
    c = lenet(torch.Generator().manual_seed(6))
    assert torch.equal(torch.get_rng_state(), state)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_lenet_default_init_law():
    "kaiming_uniform(a=sqrt5) gives U(-1/sqrt(fan_in), 1/sqrt(fan_in)) weights, as nn.Linear's own init."
    net = lenet(torch.Generator().manual_seed(0))
    for m, fan_in in ((net[0], 25), (net[3], 500), (net[7], 800), (net[9], 500)):
        bound = fan_in ** -0.5
        for w in (m.weight, m.bias):
            assert w.abs().max() <= bound
        assert m.weight.abs().max() > 0.95 * bound


def test_lenet_meta():
    net = lenet(device='meta')
    assert {p.device.type for p in net.parameters()} == {'meta'}


@pytest.mark.parametrize('name', NAMES)
def test_synthetic_shapes(name):
    net = synthetic(name, seed=0)
    assert n_params(net) == COUNTS[name]
    y = net(example_input(name))
    assert y.shape == (5, 1) and y.dtype == torch.float32 and torch.isfinite(y).all()
    depth = 'ABC'.index(name[-1]) + 2
    assert sum(isinstance(m, (nn.Linear, nn.Conv2d)) for m in net) == depth
    assert sum(isinstance(m, nn.ReLU) for m in net) == depth - 1
    assert isinstance(net[-1], nn.Linear) and net[-1].out_features == 1


@pytest.mark.parametrize('name', NAMES)
def test_synthetic_seeds(name):
    state = torch.get_rng_state()
    a, b, c = synthetic(name, 11), synthetic(name, 11), synthetic(name, 12)
    assert torch.equal(torch.get_rng_state(), state)
    x = example_input(name)
    assert torch.equal(a(x), b(x))
    assert not torch.equal(a(x), c(x))


@pytest.mark.parametrize('name', ['FC-C', 'Conv-C'])
def test_synthetic_weight_law(name):
    "Weights and biases i.i.d. N(0, 2/fan_in): pooled over 20 seeds, standardized draws have mean 0 and variance 1."
    draws = []
    for seed in range(20):
        for m in synthetic(name, seed):
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                s = (2 / m.weight[0].numel()) ** 0.5
                draws += [m.weight.detach().flatten() / s, m.bias.detach() / s]
    z = torch.cat(draws).double()
    se = len(z) ** -0.5
    assert abs(z.mean()) < 5 * se
    assert abs(z.var() - 1) < 5 * 2 ** 0.5 * se


def test_synthetic_activation_scale():
    "He scaling: the output of FC-C is of the order of its input whatever the depth."
    x = example_input('FC-A', n=2000)
    for name in ('FC-A', 'FC-B', 'FC-C'):
        with torch.no_grad(): scale = synthetic(name, 0)(x).std()
        assert 0.1 < scale < 10, (name, scale)


def test_synthetic_unknown_name():
    with pytest.raises(ValueError, match='name must be one of FC-A, FC-B, FC-C, Conv-A, Conv-B, Conv-C'):
        synthetic('fc-a')


def test_mnist_slice():
    x, y = mnist_slice()
    assert x.shape == (1000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (1000,) and y.dtype == torch.int64
    assert x.min() == 0 and x.max() == 1
    assert torch.equal(torch.bincount(y, minlength=10) > 50, torch.ones(10, dtype=torch.bool))
    assert y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_pretrained_state():
    net = pretrained('lenet-mnist')
    assert not any(m.training for m in net.modules())
    assert not any(p.requires_grad for p in net.parameters())
    assert {p.dtype for p in net.parameters()} == {torch.float32}
    assert [type(m) for m in net] == [type(m) for m in lenet(device='meta')]


def test_pretrained_accuracy_on_slice():
    x, y = mnist_slice()
    with torch.no_grad(): accuracy = (pretrained()(x).argmax(-1) == y).float().mean().item()
    assert accuracy >= 0.97


def test_pretrained_meta():
    net = pretrained(device='meta')
    assert {p.device.type for p in net.parameters()} == {'meta'}
    assert net(torch.empty(2, 1, 28, 28, device='meta')).shape == (2, 10)


def test_pretrained_device(device):
    net = pretrained(device=device)
    x, y = mnist_slice(device=device)
    assert {p.device.type for p in net.parameters()} == {device} and x.device.type == device
    with torch.no_grad(): accuracy = (net(x[:200]).argmax(-1) == y[:200]).float().mean().item()
    assert accuracy >= 0.95


def test_input_gradients_flow():
    net = pretrained()
    x = mnist_slice()[0][:2].clone().requires_grad_()
    net(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_pretrained_unknown_name():
    with pytest.raises(ValueError, match="name must be one of lenet-mnist; got 'lenet'"):
        pretrained('lenet')


def test_missing_files(monkeypatch, tmp_path):
    "Without the package's data/ folder (a broken installation) the loaders say which file is missing and where they looked."
    monkeypatch.setattr(models, '_data_dir', lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match='bundled file lenet-mnist.pt not found'):
        pretrained()
    with pytest.raises(FileNotFoundError, match='bundled file mnist-test-slice.pt not found'):
        mnist_slice()


def test_bundled_files_are_package_data():
    "The bundled files live inside the package (netmoments/data/), so a wheel carries them; not in the repository's data/."
    folder = models._data_dir()
    assert folder == Path(models.__file__).parent / 'data'
    assert {p.name for p in folder.glob('*.pt')} == {'lenet-mnist.pt', 'mnist-test-slice.pt'}
    assert not list((Path(models.__file__).parents[1] / 'data').glob('*.pt'))


def test_data_folder_small():
    "The bundled files stay a few MB."
    folder = models._data_dir()
    sizes = {f: (folder / f).stat().st_size for f in ('lenet-mnist.pt', 'mnist-test-slice.pt')}
    assert sum(sizes.values()) < 3e6, sizes


@pytest.mark.parametrize('call', [lambda: lenet(device='gpu'), lambda: lenet(device=1.5), lambda: pretrained(device='tpu'),
                                  lambda: mnist_slice(device=object())], ids=['lenet', 'lenet-float', 'pretrained', 'slice'])
def test_bad_device_is_named(call):
    with pytest.raises(ValueError, match='device must name a torch device'): call()


def test_bad_generator_seed_and_name_are_named():
    with pytest.raises(TypeError, match='generator must be a torch.Generator or None; got int'): lenet(3)
    for seed in (-1, 2.5, '1', None, True):
        with pytest.raises((TypeError, ValueError), match='seed must be'): synthetic('FC-A', seed)
    for name in (['FC-A'], None):
        with pytest.raises(ValueError, match='name must be one of'): synthetic(name)
    with pytest.raises(ValueError, match='name must be one of lenet-mnist'): pretrained(['lenet-mnist'])

"Properties of `netmoments.train.fit`: seeded, early stopping, best checkpoint, any loss, devices, errors."
import pytest
import torch
from torch import nn

from conftest import DEVICE_PARAMS
from netmoments.regularizers import GaussianMomentLoss, noisy_augmentation
from netmoments.train import cross_entropy_loss, fit, step_costs


def blobs(n=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    return torch.randn(n, 8, generator=g) + (2 * y[:, None] - 1) * 0.7, y


def net(seed=0):
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        for p in m.parameters(): p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return m


@pytest.mark.parametrize('device', DEVICE_PARAMS)
def test_learns_and_is_seeded(device):
    data = blobs()
    a = fit(net(), data, epochs=8, lr=1e-2, batch_size=64, device=device, progress=False)
    b = fit(net(), data, epochs=8, lr=1e-2, batch_size=64, device=device, progress=False)
    assert [h['val_loss'] for h in a.history] == [h['val_loss'] for h in b.history]
    assert a.history[0]['val_loss'] >= a.best_val_loss and a.history[a.best_epoch - 1]['val_accuracy'] > 0.8
    assert next(a.model.parameters()).device.type == device and not a.model.training


def test_early_stop_plateau_and_checkpoint():
    data = blobs()
    # lr 5: the validation loss stalls without the weights diverging (at lr 20 they become NaN: see below)
    r = fit(net(), data, epochs=80, lr=5., batch_size=64, optimizer='sgd', lr_patience=2, lr_factor=0.5, patience=5,
            progress=False)
    assert len(r.history) - r.best_epoch == 5 and len(r.history) < 80
    assert r.history[-1]['lr'] < 5.
    assert r.best_val_loss == min(h['val_loss'] for h in r.history)


def test_divergence_stops_and_keeps_the_best_weights():
    """Weights made NaN or infinite by an update end the training at once (no later epoch can recover): with a validated
    epoch, a warning and its weights; before any, an error."""
    data = blobs()
    with pytest.warns(UserWarning, match='training diverged in epoch 2'):
        r = fit(net(), data, epochs=80, lr=20., batch_size=64, optimizer='sgd', progress=False)
    assert len(r.history) == r.best_epoch == 1 and all(torch.isfinite(p).all() for p in r.model.parameters())
    with pytest.raises(ValueError, match='training diverged in epoch 1'):
        fit(net(), data, epochs=3, lr=1e38, batch_size=64, optimizer='sgd', progress=False)


def test_explicit_validation_set_and_hooks():
    x = torch.rand(200, 1, 6, 6)
    y = torch.randint(0, 3, (200,), generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 3))
    r = fit(model, (x[:150], y[:150]), val=(x[150:], y[150:]), loss=GaussianMomentLoss(0.3, 1.), epochs=2,
            batch_size=50, augment=lambda a, b, g: noisy_augmentation(a, b, 0.1, 2, g), progress=False)
    assert len(r.history) == 2


def test_errors():
    data = blobs(50)
    with pytest.raises(ValueError, match='epochs must be'): fit(net(), data, epochs=0)
    with pytest.raises(ValueError, match='as many samples'): fit(net(), (data[0], data[1][:3]))
    with pytest.raises(ValueError, match='val_fraction'): fit(net(), data, val_fraction=1.5)
    with pytest.raises(ValueError, match='optimizer'): fit(net(), data, optimizer='x')
    with pytest.raises(TypeError, match='train must be'): fit(net(), 3)


@pytest.mark.parametrize('device', DEVICE_PARAMS)
def test_step_costs_trains_each_scheme_on_its_own_model(device):
    "Every scheme trains its own model on the device, warm-up runs included; the first scheme is the baseline."
    x, y = blobs(40)
    x, y = x.to(device), y.to(device)
    models, calls = [], []
    def make():
        models.append(net(0)); return models[-1]
    def augment(xb, yb, g):
        calls.append(g.device.type); return noisy_augmentation(xb, yb, 0.1, 2, g)
    out = step_costs(make, {'plain': cross_entropy_loss, 'reg': GaussianMomentLoss(0.3, 1.),
                            'aug': (cross_entropy_loss, augment)}, x, y, rounds=2, steps=3)
    assert list(out) == ['plain', 'reg', 'aug'] and out['plain'][1] == 1.
    assert all(sec > 0 and ratio > 0 for sec, ratio in out.values())
    assert len(models) == 3 and all(next(m.parameters()).device.type == device for m in models)
    assert len(calls) == 2 * 2 * 3 and set(calls) == {device}       # 2 rounds of (warm-up + timed run) of 3 steps
    start = net(0).state_dict()
    assert all(not torch.equal(m.state_dict()['0.weight'].cpu(), start['0.weight']) for m in models)


def test_step_costs_errors():
    x, y = blobs(10)
    with pytest.raises(ValueError, match='at least one'): step_costs(net, {}, x, y)
    with pytest.raises(ValueError, match='as many samples'): step_costs(net, {'p': cross_entropy_loss}, x, y[:3])
    with pytest.raises(ValueError, match='rounds must be'): step_costs(net, {'p': cross_entropy_loss}, x, y, rounds=0)


BAD_SEEDS = [-1, 2.5, True, '3', None, float('nan')]


@pytest.mark.parametrize('seed', BAD_SEEDS)
def test_seeds_are_counts(seed):
    "The seeds of fit and step_costs are ints >= 0 (the fuzz suite cannot give a case's `seed` argument the counts role)."
    x, y = blobs(20)
    with pytest.raises((TypeError, ValueError), match='seed must be'): fit(net(), (x, y), epochs=1, seed=seed)
    with pytest.raises((TypeError, ValueError), match='seed must be'):
        step_costs(net, {'p': cross_entropy_loss}, x, y, rounds=1, steps=1, seed=seed)


def test_data_refusals_name_the_argument():
    "Train and validation data are checked before any training: finite, non-empty, labels in range, the model's dtype."
    x, y = blobs(40)
    with pytest.raises(ValueError, match='val y must hold class indices in \\[0, 2\\)'): fit(net(), (x, y), (x, y + 1))
    with pytest.raises(ValueError, match='val x must be finite'): fit(net(), (x, y), (x * torch.nan, y))
    with pytest.raises(ValueError, match='train x must hold at least one sample'): fit(net(), (x[:0], y[:0]), (x, y))
    with pytest.raises(TypeError, match='val x is float64'): fit(net(), (x, y), (x.double(), y))
    with pytest.raises(ValueError, match='leaves none to train on'): fit(net(), (x[:1], y[:1]))
    with pytest.raises(ValueError, match='lr must be a finite number > 0'): fit(net(), (x, y), lr=float('nan'))
    with pytest.raises(ValueError, match='lr_factor'): fit(net(), (x, y), lr_factor=1.)
    with pytest.raises(ValueError, match='model must have finite parameters'):
        bad = net()
        with torch.no_grad(): bad[0].bias[0] = torch.inf
        fit(bad, (x, y))
    with pytest.raises(ValueError, match='y must hold class indices in \\[0, 2\\)'): cross_entropy_loss(net(), x, y + 1)
    with pytest.raises(TypeError, match='model_fn makes models with float32 parameters but x is float64'):
        step_costs(net, {'p': cross_entropy_loss}, x.double(), y)
    with pytest.raises(TypeError, match="schemes\\['p'\\] must be"): step_costs(net, {'p': (cross_entropy_loss, 3)}, x, y)


def test_one_epoch_returns_the_model_in_eval_mode():
    "One epoch of small batches: fit returns the model it trained, in eval mode."
    x, y = blobs(60)
    model = net()
    r = fit(model, (x, y), epochs=1, batch_size=20, progress=False)
    assert r.model is model and not model.training and len(r.history) == 1


def test_step_schemes_checks_folds_and_sigma():
    from netmoments.train import step_schemes
    with pytest.raises(ValueError, match='folds must be >= 1'): step_schemes(folds=(2, 0))
    with pytest.raises(TypeError, match='folds must be'): step_schemes(folds=2)
    with pytest.raises(ValueError, match='sigma must be'): step_schemes(sigma=float('nan'))

"""The certified Lipschitz margin bound is sound for every layer option it accepts: layer constants against each layer's
operator norm, and end to end against the strongest attack on networks built to attain each layer's worst case."""
import math

import pytest
import torch
from torch import nn

from netmoments.bounds import conv_spectral_norm, lipschitz_margin_bound, pool_lipschitz
from netmoments.minimal import strongest

LAYERS = {  # (layer, input shape): the options a kernel-size formula gets wrong, and the common ones
    'MaxPool2d(2)': (nn.MaxPool2d(2), (1, 6, 6)),
    'MaxPool2d(3, stride=2)': (nn.MaxPool2d(3, stride=2), (1, 9, 9)),
    'MaxPool2d((2, 3), stride=(1, 2), padding=1)': (nn.MaxPool2d((2, 3), stride=(1, 2), padding=1), (1, 6, 7)),
    'MaxPool2d(2, ceil_mode=True)': (nn.MaxPool2d(2, ceil_mode=True), (1, 5, 5)),
    'MaxPool2d(3, stride=3, dilation=3)': (nn.MaxPool2d(3, stride=3, dilation=3), (1, 12, 13)),
    'AdaptiveMaxPool2d((3, 4))': (nn.AdaptiveMaxPool2d((3, 4)), (1, 7, 9)),
    'AvgPool2d(2, ceil_mode=True)': (nn.AvgPool2d(2, ceil_mode=True), (1, 3, 3)),
    'AvgPool2d(2, stride=3)': (nn.AvgPool2d(2, stride=3), (1, 8, 8)),
    'AvgPool2d((2, 3), stride=(1, 2))': (nn.AvgPool2d((2, 3), stride=(1, 2)), (1, 6, 7)),
    'AvgPool2d(3, 1, 1, count_include_pad=False)': (nn.AvgPool2d(3, 1, 1, count_include_pad=False), (1, 5, 5)),
    'AvgPool2d(2, divisor_override=1)': (nn.AvgPool2d(2, divisor_override=1), (1, 6, 6)),
    'AdaptiveAvgPool2d((3, 4))': (nn.AdaptiveAvgPool2d((3, 4)), (1, 7, 9)),
    'Conv2d circular': (nn.Conv2d(1, 2, 3, padding=2, padding_mode='circular'), (1, 5, 5)),
    'Conv2d reflect': (nn.Conv2d(1, 2, 3, padding=2, padding_mode='reflect'), (1, 5, 5)),
    'Conv2d replicate': (nn.Conv2d(1, 2, 3, padding=2, padding_mode='replicate'), (1, 5, 5)),
    "Conv2d padding='same', dilation 2": (nn.Conv2d(1, 2, 3, padding='same', dilation=2), (1, 6, 6)),
    'Conv2d stride 2, groups 1': (nn.Conv2d(1, 2, 3, stride=2, padding=1), (1, 7, 7)),
    'Conv2d groups 2': (nn.Conv2d(2, 4, 3, groups=2, padding=1), (2, 5, 5)),
}

def _seeded(layer, seed=0):
    "A float64 copy of `layer` with seeded weights."
    torch.manual_seed(seed)
    layer = layer.double()
    for p in layer.parameters(): nn.init.normal_(p)
    return layer.requires_grad_(False)

def _constant(layer, shape):
    return conv_spectral_norm(layer, shape) if isinstance(layer, nn.Conv2d) else pool_lipschitz(layer, shape)

def _worst(layer, shape, iters=200):
    "A point and direction where the layer's Jacobian attains its largest gain, and that gain (power iteration)."
    if isinstance(layer, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)):   # a one-hot pixel held by the most windows
        best = (-1, None)
        for i in range(shape[1] * shape[2]):
            x = torch.zeros((1,) + shape, dtype=torch.float64); x.view(-1)[i] = 1.
            best = max(best, ((layer(x) == 1).sum().item(), x), key=lambda t: t[0])
        x0 = best[1]
    else: x0 = torch.zeros((1,) + shape, dtype=torch.float64)
    f = lambda t: layer(t)
    v = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    if isinstance(layer, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)): v = x0.clone()   # raise the hot pixel
    else:
        for _ in range(iters):
            v = v / v.norm()
            v = torch.autograd.functional.vjp(f, x0, torch.autograd.functional.jvp(f, x0, v)[1])[1]
    v = v / v.norm()
    jv = torch.autograd.functional.jvp(f, x0, v)[1]
    return x0, v, jv.norm().item(), jv

@pytest.mark.parametrize('name', list(LAYERS))
def test_layer_constant(name):
    "Each certified layer constant is at least the layer's operator norm found by power iteration through the layer."
    layer, shape = LAYERS[name]
    layer = _seeded(layer)
    _, _, gain, _ = _worst(layer, shape)
    L = _constant(layer, shape)
    assert gain <= L * (1 + 1e-9), (name, gain, L)
    if isinstance(layer, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)): assert gain == pytest.approx(L, rel=1e-12)

@pytest.mark.parametrize('name', list(LAYERS))
def test_end_to_end_sound(name):
    """On a network built so that one logit difference grows along the layer's worst direction at its full gain, no
    perturbation found by the strongest attack is smaller than the certified radius. With the layer's true gain in place
    of the certified constant the radius would be 1/sqrt 2 of the minimal perturbation, so any constant below
    1/sqrt 2 of the true one makes this test fail."""
    layer, shape = LAYERS[name]
    layer = _seeded(layer)
    x0, v, gain, jv = _worst(layer, shape)
    u = (jv / jv.norm()).flatten()
    y0 = layer(x0).flatten()
    head = nn.Linear(len(u), 2).double().requires_grad_(False)
    head.weight.zero_(); head.weight[1] = u                       # logit 1 - logit 0 = u . y - b0
    head.bias.copy_(torch.tensor([float(u @ y0) + 0.05, 0.]))
    net = nn.Sequential(layer, nn.Flatten(), head).eval()
    cert = lipschitz_margin_bound(net, x0).bound
    found = strongest(net, x0)
    assert found.success.all()
    assert (cert <= found.norm * (1 + 1e-9)).all(), (name, cert.item(), found.norm.item())
    # the attack reached the minimal perturbation along the worst direction: margin / gain
    assert found.norm.item() <= 0.05 / gain * (1 + 1e-3)

def test_conv_input_checks():
    "Inputs the layer cannot take, and 'same' padding, get clear answers."
    with pytest.raises(ValueError, match='smaller than the 5x5 reach'): conv_spectral_norm(nn.Conv2d(1, 2, 5), (1, 2, 2))
    with pytest.raises(ValueError, match='channels'): conv_spectral_norm(nn.Conv2d(3, 2, 3), (1, 8, 8))
    assert conv_spectral_norm(nn.Conv2d(1, 2, 3, padding='same'), (1, 8, 8)) > 0
    with pytest.raises(ValueError, match='cannot take inputs of shape'): pool_lipschitz(nn.MaxPool2d(3, stride=3, dilation=3), (1, 3, 3))

"Fuzz cases for `netmoments.cli`: the bundled network, the check of its moments, and the tightness rows and figure."
import torch

from helpers import Case, rand, randn
from netmoments.cli import (AraNetwork, bundled_network, check_moments, check_report, check_text, tightness_figure,
                            tightness_rows, tightness_text)
from netmoments.tightness import TightnessTable

EXEMPT = {'cli.main': 'the command line: tests/test_cli.py::test_every_option_refuses_bad_values draws bad values for '
                      'every option of every command and asserts exit status 2 before any work'}

NET = AraNetwork._fields                     # A, c1, B, c2, mu, cov
TABLE = TightnessTable._fields[1:]           # every (N, d) field


def _bundled(seed, dtype): return {'n': 3, 'p': 5, 'd': 2, 'seed': seed, 'dtype': dtype}


def _net(seed, dtype):
    "A small network's fields, with a few Monte Carlo samples."
    return {**bundled_network(3, 5, 2, seed=seed, dtype=dtype)._asdict(), 'samples': 200, 'seed': seed}


def _check_moments(A, c1, B, c2, mu, cov, samples, seed):
    return check_moments(AraNetwork(A, c1, B, c2, mu, cov), samples, seed)


def _check_report(A, c1, B, c2, mu, cov, samples, seed):
    return check_report(AraNetwork(A, c1, B, c2, mu, cov), samples, seed)


def _check_text(seed, dtype):
    net = bundled_network(3, 5, 2, seed=seed, dtype=dtype)
    return {'net': net, 'result': check_moments(net, 100, seed)}


def _table(seed, dtype, N=3, d=4):
    "TightnessTable fields of N images and d logits: positive variances and standard errors, E_r in [0, 2]."
    pos = lambda s: rand(N, d, seed=seed + s, dtype=dtype, low=0.1, high=2.)
    return {'mean': randn(N, d, seed=seed, dtype=dtype), 'var_exact': pos(1), 'var_old': pos(2),
            'mc_mean': randn(N, d, seed=seed + 3, dtype=dtype), 'mc_var': pos(4), 'mc_mean_se': pos(5) / 100,
            'mc_var_se': pos(6) / 100, 'er_mean': pos(7), 'er_old': pos(8), 'er_exact': pos(9)}


def _rows_kw(seed, dtype): return {**_table(seed, dtype), 'labels': torch.tensor([0, 3, 1])}


def _tightness_rows(labels, **fields): return tightness_rows(TightnessTable(0.1, **fields), labels)


def _tightness_figure(**fields):
    import matplotlib
    matplotlib.use('Agg')
    return tightness_figure(TightnessTable(0.1, **fields))


def _tightness_text(seed, dtype):
    table = TightnessTable(0.1, **_table(seed, dtype))
    return {'rows': tightness_rows(table), 'summary': table.summary()}


CASES = [
    # `seed` is a count too (>= 0), but test_fuzz's expect_refusal takes a `seed` of its own: tests/test_cli.py
    # checks the seeds' refusals (test_seed_arguments_are_refused).
    Case(bundled_network, _bundled, counts={'n': 1, 'p': 1, 'd': 1}),
    # The z's compare the analytic moments with Monte Carlo, which runs without gradients: finite differences of z
    # would move the Monte Carlo estimate too, so only the finiteness of the gradients is checked.
    Case(_check_moments, _net, floats=NET, counts={'samples': 2}, grads=NET, gradcheck=False,
         covers=(check_moments, AraNetwork), id='check_moments'),
    Case(_check_report, _net, floats=NET, counts={'samples': 2}, covers=(check_report,), id='check_report'),
    Case(check_text, _check_text),
    Case(_tightness_rows, _rows_kw, floats=TABLE, classes={'labels': 4}, covers=(tightness_rows,), id='tightness_rows'),
    Case(tightness_text, _tightness_text),
    Case(_tightness_figure, _table, floats=TABLE, covers=(tightness_figure,), id='tightness_figure'),
]

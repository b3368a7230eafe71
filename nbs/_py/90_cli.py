# %% [markdown]
# # Command line
# > `netmoments check` and `netmoments bench`: the analytic moments of a bundled network beside Monte Carlo, and the benchmark table

# %%
#| default_exp cli

# %%
#| export
from __future__ import annotations
import argparse, sys, time
from typing import NamedTuple
import torch
from torch import Tensor
from netmoments.ara import ara_moments
from netmoments.bench import best_time, format_rows, run_benchmarks
from netmoments.montecarlo import mc_moments

# %%
#| hide
import contextlib, io
from fastcore.test import test_eq, test_fail


# %% [markdown]
# ## The bundled network
# `netmoments check` needs no data: its default network is generated from a seed, an Affine-ReLU-Affine network with
# every ingredient the general case has (non-zero input mean, full input covariance, non-zero biases), small enough that
# Monte Carlo with $10^5$ samples takes seconds.

# %%
#| export
class AraNetwork(NamedTuple):
    "An Affine-ReLU-Affine network g(x) = B relu(A x + c1) + c2 with a Gaussian input N(mu, cov)."
    A:Tensor
    c1:Tensor
    B:Tensor
    c2:Tensor
    mu:Tensor
    cov:Tensor

    def __call__(self, x:Tensor)->Tensor: return torch.relu(x @ self.A.mT + self.c1) @ self.B.mT + self.c2

def bundled_network(
    n:int=8, p:int=32, d:int=4,   # input, hidden and output sizes
    seed:int=2018,                # the network and the input distribution are drawn from this seed
    dtype:torch.dtype=torch.float64,
    device:str='cpu',
)->AraNetwork:
    "The seeded random Affine-ReLU-Affine network and Gaussian input that `netmoments check` uses."
    gen = torch.Generator().manual_seed(seed)
    rn = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)
    A, c1, B, c2 = rn(p, n) / n**0.5, 0.5 * rn(p), rn(d, p) / p**0.5, rn(d)
    L = rn(n, n) / n**0.5
    net = AraNetwork(A, c1, B, c2, rn(n), L @ L.mT + 0.1 * torch.eye(n, dtype=torch.float64))
    return AraNetwork(*(x.to(dtype=dtype, device=device) for x in net))


# %%
net = bundled_network()
test_eq([tuple(x.shape) for x in net], [(32, 8), (32,), (4, 32), (4,), (8,), (8, 8)])
test_eq(net(torch.zeros(5, 8, dtype=torch.float64)).shape, (5, 4))


# %% [markdown]
# ## `netmoments check`
# Computes the exact mean, variance and covariance with `ara_moments`, a seeded Monte Carlo estimate with standard
# errors, and prints them side by side with the deviation in standard errors and the time each took (analytic: best
# of 5 after a warm-up; Monte Carlo: one run, it is the long one). It exits with
# status 1 if any entry is more than `--max-se` standard errors from Monte Carlo (5 by default: with the default
# network's 14 compared entries a correct run fails about once in $10^5$ runs), so it doubles as a smoke test.

# %%
#| export
def check_report(
    net:AraNetwork,         # network and input distribution
    samples:int=100_000,    # Monte Carlo samples
    seed:int=0,             # Monte Carlo seed
    progress:bool=False,    # progress bar over Monte Carlo chunks
)->tuple:                   # (report text, largest deviation in standard errors)
    "Analytic moments of `net` beside Monte Carlo, as printable text, and the worst deviation in standard errors."
    exact = ara_moments(net.mu, net.cov, net.A, net.c1, net.B, net.c2)
    t_ara = best_time(lambda: ara_moments(net.mu, net.cov, net.A, net.c1, net.B, net.c2), repeats=5, device=net.mu.device)
    t0 = time.perf_counter()
    mc = mc_moments(net, net.mu, net.cov, n=samples, seed=seed, progress=progress)
    t_mc = time.perf_counter() - t0
    z_mean = ((exact.mean - mc.mean) / mc.mean_se).abs()
    z_var = ((exact.var - mc.var) / mc.var_se).abs()
    iu = torch.triu_indices(*exact.cov.shape, offset=1)
    z_cov = ((exact.cov - mc.cov) / mc.cov_se).abs()[iu[0], iu[1]]
    d, p, n = net.B.shape[0], net.A.shape[0], net.A.shape[1]
    lines = [f'Affine-ReLU-Affine network n={n} p={p} d={d}, {exact.mean.dtype}, {exact.mean.device}; '
             f'Monte Carlo: {samples} samples, seed {seed}', '',
             f"{'output':>6} | {'mean (exact)':>13} {'mean (MC)':>13} {'SE':>9} {'|z|':>5} | "
             f"{'var (exact)':>12} {'var (MC)':>12} {'SE':>9} {'|z|':>5}"]
    for i in range(d):
        lines.append(f'{i:>6} | {exact.mean[i]:>13.6f} {mc.mean[i]:>13.6f} {mc.mean_se[i]:>9.2e} {z_mean[i]:>5.2f} | '
                     f'{exact.var[i]:>12.6f} {mc.var[i]:>12.6f} {mc.var_se[i]:>9.2e} {z_var[i]:>5.2f}')
    lines += ['', 'covariance (exact; upper triangle: MC):']
    for i in range(d):
        lines.append('  ' + ' '.join(f'{(mc.cov if j > i else exact.cov)[i, j]:>10.5f}' for j in range(d)))
    worst = max(z_mean.max().item(), z_var.max().item(), z_cov.max().item() if len(z_cov) else 0.)
    lines += ['', f'largest |z| of off-diagonal covariances: {z_cov.max().item() if len(z_cov) else 0.:.2f}',
              f'time: analytic {t_ara * 1e3:.2f} ms (best of 5), Monte Carlo {t_mc * 1e3:.1f} ms: ratio MC / analytic = {t_mc / t_ara:.1f}',
              f'largest deviation: {worst:.2f} standard errors']
    return '\n'.join(lines), worst


# %% [markdown]
# On the bundled network every entry agrees within a few standard errors:

# %%
text, worst = check_report(bundled_network(), samples=50_000)
print(text)
assert worst < 5


# %% [markdown]
# ## The entry point
# `main` parses the sub-command; `netmoments` is installed as a console script pointing at it (`settings.ini`).

# %%
#| export
def _parser():
    ap = argparse.ArgumentParser(prog='netmoments', description='Probabilistic moments of ReLU networks under Gaussian input.')
    sub = ap.add_subparsers(dest='command', required=True)
    c = sub.add_parser('check', help='analytic moments of the bundled random network beside Monte Carlo')
    c.add_argument('--samples', type=int, default=100_000, help='Monte Carlo samples (default 1e5)')
    c.add_argument('--seed', type=int, default=0, help='Monte Carlo seed')
    c.add_argument('--network-seed', type=int, default=2018, help='seed of the bundled network')
    c.add_argument('--sizes', type=int, nargs=3, default=(8, 32, 4), metavar=('N', 'P', 'D'), help='input, hidden, output sizes')
    c.add_argument('--dtype', choices=('float64', 'float32'), default='float64')
    c.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    c.add_argument('--max-se', type=float, default=5., help='exit 1 if any entry is further than this many SEs from MC')
    b = sub.add_parser('bench', help='speed ratios: exact cross moments, Lemma 4 series, analytic vs Monte Carlo')
    b.add_argument('--devices', nargs='*', default=None, help='default: cpu, and cuda when available')
    b.add_argument('--pairs', type=int, default=100_000)
    b.add_argument('--mc-samples', type=int, default=10_000)
    b.add_argument('--repeats', type=int, default=3)
    return ap

def main(argv:list|None=None)->int:
    "The `netmoments` command: `check` or `bench`."
    args = _parser().parse_args(argv)
    if args.command == 'check':
        if args.device.startswith('cuda') and not torch.cuda.is_available():
            print('netmoments check: --device cuda asked for, but torch sees no CUDA device', file=sys.stderr); return 2
        net = bundled_network(*args.sizes, seed=args.network_seed, dtype=getattr(torch, args.dtype), device=args.device)
        text, worst = check_report(net, samples=args.samples, seed=args.seed, progress=sys.stderr.isatty())
        print(text)
        if worst > args.max_se:
            print(f'FAILED: a moment is {worst:.1f} standard errors from Monte Carlo (limit {args.max_se})', file=sys.stderr)
            return 1
        return 0
    print(format_rows(run_benchmarks(args.devices, count=args.pairs, mc_samples=args.mc_samples, repeats=args.repeats)))
    return 0


# %% [markdown]
# The command runs end to end (here with few samples), and a CUDA request without CUDA is refused:

# %%
out = io.StringIO()
with contextlib.redirect_stdout(out): status = main(['check', '--samples', '20000', '--sizes', '4', '8', '2'])
test_eq(status, 0)
assert 'largest deviation' in out.getvalue()
if not torch.cuda.is_available():
    with contextlib.redirect_stderr(io.StringIO()): test_eq(main(['check', '--device', 'cuda']), 2)

# %% [markdown]
# ## Export -

# %%
#| hide
#| eval: false
import nbdev; nbdev.nbdev_export()

# %% [markdown]
# # Command line
# > `netmoments check`, `bench`, `tightness` and `stepcost`: the analytic moments of a bundled network beside Monte Carlo, the benchmark table, the tightness of the linearized LeNet, and the cost of a robust-training step

# %%
#| default_exp cli

# %%
#| export
from __future__ import annotations
import argparse, json, sys, time
from typing import NamedTuple
import torch
from torch import Tensor
from netmoments.ara import ara_moments
from netmoments.bench import best_time, format_rows, run_benchmarks
from netmoments.montecarlo import mc_moments
from netmoments.tightness import TightnessTable, tightness_table

# %%
#| hide
import contextlib, io, os, tempfile
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
# ## `netmoments tightness`
# The tightness chapter's protocol (TPAMI §4.2) from the command line: the bundled LeNet two-stage linearized at
# `--layer` around the first `--images` images of the bundled MNIST slice, each under a random covariance of trace
# `--sigma`$^2 \cdot 784$, the analytic mean, exact and old variance of every logit beside seeded Monte Carlo of the
# real network, with their $E_r$. `tightness_rows` flattens a `TightnessTable` into the rows printed and written as
# JSON; `tightness_figure` plots Monte Carlo against analytic variances.

# %%
#| export
def tightness_rows(
    table:TightnessTable,  # from tightness_table
    labels:list|None=None, # the images' labels, if known
)->list:                   # one dict per image: index, label, logits (one dict per logit)
    "The per-image, per-logit rows of a TightnessTable, as plain Python numbers (JSON-ready)."
    keys = {'analytic_mean': 'mean', 'exact_var': 'var_exact', 'old_var': 'var_old', 'mc_mean': 'mc_mean',
            'mc_mean_se': 'mc_mean_se', 'mc_var': 'mc_var', 'mc_var_se': 'mc_var_se', 'er_mean': 'er_mean',
            'er_exact_var': 'er_exact', 'er_old_var': 'er_old'}
    cols = {k: getattr(table, f).tolist() for k, f in keys.items()}
    return [{'index': i, 'label': None if labels is None else int(labels[i]),
             'logits': [{'logit': j, **{k: cols[k][i][j] for k in keys}} for j in range(table.mean.shape[1])]}
            for i in range(table.mean.shape[0])]

def tightness_text(rows:list, summary:dict)->str:
    "The rows of tightness_rows as a printable table, and the mean E_r."
    lines = [f"{'image':>5} {'logit':>5} | {'mean':>10} {'MC mean':>10} {'SE':>8} {'E_r':>6} | {'exact var':>10} "
             f"{'old var':>10} {'MC var':>10} {'SE':>8} {'E_r ex':>6} {'E_r old':>7}"]
    for r in rows:
        for g in r['logits']:
            lines.append(f"{r['index']:>5} {g['logit']:>5} | {g['analytic_mean']:>10.4f} {g['mc_mean']:>10.4f} "
                         f"{g['mc_mean_se']:>8.1e} {g['er_mean']:>6.3f} | {g['exact_var']:>10.3e} {g['old_var']:>10.3e} "
                         f"{g['mc_var']:>10.3e} {g['mc_var_se']:>8.1e} {g['er_exact_var']:>6.3f} {g['er_old_var']:>7.3f}")
    lines.append(f"mean E_r: mean {summary['mean']:.4f}, exact variance {summary['exact']:.4f}, "
                 f"old variance {summary['old']:.4f}")
    return '\n'.join(lines)

def tightness_figure(table:TightnessTable, path:str):
    "Save a log-log scatter of Monte Carlo against analytic (exact and old) variances to `path`."
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.5, 4), layout='constrained')
    ax.loglog(table.var_exact.flatten(), table.mc_var.flatten(), 'o', ms=3, label='exact')
    ax.loglog(table.var_old.flatten(), table.mc_var.flatten(), 'x', ms=3, label='old (zero mean)')
    lim = [min(table.mc_var.min(), table.var_old.min()).item(), max(table.mc_var.max(), table.var_old.max()).item()]
    ax.plot(lim, lim, 'k--', lw=1)
    ax.set(xlabel='analytic variance', ylabel='Monte Carlo variance', title=f'sigma = {table.sigma}'); ax.legend()
    fig.savefig(path, dpi=120); plt.close(fig)


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
    t = sub.add_parser('tightness', help='analytic moments of the two-stage linearized LeNet beside Monte Carlo, with E_r')
    t.add_argument('--model', default='lenet-mnist', help='bundled network (default lenet-mnist)')
    t.add_argument('--layer', type=int, default=3, help='l of the two-stage linearization (default 3)')
    t.add_argument('--at', choices=('relu', 'pre'), default='relu', help='top-stage point of the linearization')
    t.add_argument('--ties', choices=('split', 'first'), default='split',
                   help="tied max-pooling windows: split the derivative evenly (default) or give it to the first")
    t.add_argument('--sigma', type=float, default=0.01, help='noise level: trace of the covariance = sigma^2 * 784')
    t.add_argument('--images', type=int, default=3, help='first images of the bundled MNIST slice (default 3)')
    t.add_argument('--samples', type=int, default=10_000, help='Monte Carlo samples per image (default 1e4)')
    t.add_argument('--seed', type=int, default=0, help='seed of the covariances and of Monte Carlo')
    t.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    t.add_argument('--json', default=None, metavar='PATH', help='also write the table as JSON')
    t.add_argument('--figure', default='tightness.png', metavar='PATH', help="MC against analytic variances ('' : none)")
    s = sub.add_parser('stepcost', help='seconds per LeNet training step: vanilla, regularizer (eq 3), N-fold augmentation')
    s.add_argument('--batch', type=int, nargs='+', default=[100, 1000], help='batch sizes (default 100 1000)')
    s.add_argument('--sigma', type=float, default=0.5, help='training noise std (default 0.5)')
    s.add_argument('--alpha', type=float, default=1., help="weight of the regularizer's term (default 1)")
    s.add_argument('--folds', type=int, nargs='*', default=[2, 6], help='augmentation folds N (default 2 6)')
    s.add_argument('--rounds', type=int, default=5, help='round-robin rounds, best kept (default 5)')
    s.add_argument('--steps', type=int, default=20, help='steps per timed round (default 20)')
    s.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    return ap

def _tightness(args)->int:
    from netmoments.models import mnist_slice, pretrained
    model = pretrained(args.model, device=args.device)
    x, y = mnist_slice(device=args.device)
    x, y = x[:args.images], y[:args.images].tolist()
    t0 = time.perf_counter()
    table = tightness_table(model, x, args.sigma, layer=args.layer, at=args.at, n_mc=args.samples, ties=args.ties,
                            generator=torch.Generator().manual_seed(args.seed), progress=sys.stderr.isatty())
    rows, summary = tightness_rows(table, y), table.summary()
    print(f'{args.model}, layer {args.layer}, at={args.at!r}, ties={args.ties!r}, sigma {args.sigma}, {len(y)} images, '
          f'Monte Carlo: {args.samples} samples, seed {args.seed}, {time.perf_counter() - t0:.1f} s\n')
    print(tightness_text(rows, summary))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'model': args.model, 'layer': args.layer, 'at': args.at, 'ties': args.ties, 'sigma': args.sigma,
                       'samples': args.samples, 'seed': args.seed, 'summary': summary, 'images': rows}, f, indent=1)
    if args.figure: tightness_figure(table, args.figure)
    return 0

def _stepcost(args)->int:
    from netmoments.models import lenet
    from netmoments.train import step_costs, step_schemes
    dev = torch.device(args.device)
    where = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
    print(f'LeNet training step (Adam), random images in [0, 1]; torch {torch.__version__}, {where}; '
          f'best of {args.rounds} rounds of {args.steps} steps')
    schemes = step_schemes(args.sigma, args.alpha, args.folds)
    gen = torch.Generator().manual_seed(0)
    for n in args.batch:
        x = torch.rand(n, 1, 28, 28, generator=gen).to(dev)
        y = torch.randint(0, 10, (n,), generator=gen).to(dev)
        costs = step_costs(lambda: lenet(torch.Generator().manual_seed(0)), schemes, x, y, rounds=args.rounds,
                           steps=args.steps)
        print(f'\nbatch N = {n}')
        for k, (sec, ratio) in costs.items(): print(f'  {k:28s} {1e3 * sec:8.2f} ms/step  {ratio:5.2f}x vanilla')
    return 0

def main(argv:list|None=None)->int:
    "The `netmoments` command: `check`, `bench`, `tightness` or `stepcost`."
    args = _parser().parse_args(argv)
    if getattr(args, 'device', 'cpu').startswith('cuda') and not torch.cuda.is_available():
        print(f'netmoments {args.command}: --device cuda asked for, but torch sees no CUDA device', file=sys.stderr)
        return 2
    if args.command == 'tightness': return _tightness(args)
    if args.command == 'stepcost': return _stepcost(args)
    if args.command == 'check':
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
# `tightness` on two images with few samples writes the JSON table (per image, per logit: analytic mean, exact and
# old variance, Monte Carlo mean and variance with their standard errors, the three $E_r$) and the figure:

# %%
with tempfile.TemporaryDirectory() as tmp:
    tmpfile, tmpfig = os.path.join(tmp, 't.json'), os.path.join(tmp, 't.png')
    with contextlib.redirect_stdout(io.StringIO()) as out:
        test_eq(main(['tightness', '--images', '2', '--samples', '500', '--json', tmpfile, '--figure', tmpfig]), 0)
    with open(tmpfile) as f: report = json.load(f)
    assert os.path.getsize(tmpfig) > 0
test_eq(set(report), {'model', 'layer', 'at', 'ties', 'sigma', 'samples', 'seed', 'summary', 'images'})
test_eq(set(report['summary']), {'mean', 'exact', 'old'})
test_eq([len(r['logits']) for r in report['images']], [10, 10])
test_eq(set(report['images'][0]['logits'][0]), {'logit', 'analytic_mean', 'exact_var', 'old_var', 'mc_mean', 'mc_mean_se',
                                                'mc_var', 'mc_var_se', 'er_mean', 'er_exact_var', 'er_old_var'})
assert 'mean E_r' in out.getvalue()

# %% [markdown]
# `stepcost` times one LeNet training step of each scheme of chapter 22 side by side, on random images (the cost does
# not depend on the pixels); "vanilla, batch 2N" is a plain step on the batch repeated twice, the cost the regularizer
# cannot go below (it runs the network after the first ReLU on $2N$ inputs). Here with a small batch and few rounds:

# %%
with contextlib.redirect_stdout(io.StringIO()) as out: test_eq(main(['stepcost', '--batch', '20', '--rounds', '1', '--steps', '2', '--folds', '2']), 0)
print(out.getvalue())
for k in ('vanilla ', 'vanilla, batch 2N', 'regularizer (eq 3)', 'augmentation N=2'): assert k in out.getvalue()
if not torch.cuda.is_available():
    with contextlib.redirect_stderr(io.StringIO()): test_eq(main(['stepcost', '--device', 'cuda']), 2)

# %% [markdown]
# ## Export -

# %%
#| hide
#| eval: false
import nbdev; nbdev.nbdev_export()

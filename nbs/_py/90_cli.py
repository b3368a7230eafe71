# %% [markdown]
# # Command line
# > `netmoments check`, `bench`, `tightness` and `stepcost`: the analytic moments of a bundled network beside Monte Carlo, the benchmark table, the tightness of the linearized LeNet, and the cost of a robust-training step

# %%
#| default_exp cli

# %% [markdown]
# The `netmoments` command has four sub-commands; `netmoments --version` prints the version, `netmoments --help` and
# `netmoments CMD --help` describe every option. The module imports torch only inside the commands, so that the help
# and every mistake in the options are answered at once, without the seconds `import torch` takes; the names used in
# annotations alone are imported for type checkers only.

# %%
#| export
from __future__ import annotations
import argparse, importlib.util, json, math, os, re, sys, tempfile, time
from typing import TYPE_CHECKING, NamedTuple
from netmoments import __version__
if TYPE_CHECKING:
    import torch
    from torch import Tensor
    from netmoments.ara import AraMoments
    from netmoments.montecarlo import MCMoments
    from netmoments.tightness import TightnessTable

# %%
#| hide
import contextlib, io, subprocess, tempfile
import matplotlib.pyplot as plt
import torch
from fastcore.test import test_eq, test_fail
from netmoments.tightness import tightness_table
from netmoments.models import mnist_slice, pretrained


# %% [markdown]
# ## Options checked before any work
# Every option that is cheap to check is checked while the command line is parsed, so that a mistake ends the command
# at once with argparse's usage message and exit status 2, before a network is built or a sample drawn: counts must be
# whole numbers $\ge 1$, noise levels and limits finite and $\ge 0$ (NaN included in the refusal), an output file needs
# an existing, writable folder, and a figure needs matplotlib (the `plot` extra: `pip install 'netmoments[plot]'`)
# and a file name whose extension says the format. Each file a command writes is announced on a line `wrote PATH`.

# %%
#| exporti
def _positive_int(text:str)->int:
    "argparse type: a whole number >= 1."
    try: value = int(text)
    except ValueError: raise argparse.ArgumentTypeError(f'expected a whole number >= 1, got {text!r}') from None
    if value < 1: raise argparse.ArgumentTypeError(f'must be >= 1, got {value}')
    return value

def _nonnegative_float(text:str)->float:
    "argparse type: a finite number >= 0 (NaN and infinities refused)."
    try: value = float(text)
    except ValueError: raise argparse.ArgumentTypeError(f'expected a number, got {text!r}') from None
    if not math.isfinite(value) or value < 0: raise argparse.ArgumentTypeError(f'must be finite and >= 0, got {text}')
    return value

def _output_path(text:str)->str:
    "argparse type: a file to write, in an existing writable folder ('' for none)."
    if not text: return text
    folder = os.path.dirname(os.path.abspath(text))
    if os.path.isdir(text): raise argparse.ArgumentTypeError(f'{text} is a folder, not a file name')
    why = ('does not exist' if not os.path.isdir(folder) else
           'is not writable' if not os.access(folder, os.W_OK | os.X_OK) else None)
    if why: raise argparse.ArgumentTypeError(f'cannot write {text}: folder {folder} {why}')
    return text

_FIGURE_FORMATS = ('png', 'pdf', 'svg', 'jpg', 'jpeg', 'eps', 'ps', 'tif', 'tiff', 'webp')

def _figure_path(text:str)->str:
    "argparse type: a figure file ('' for none); needs matplotlib and an extension naming the format."
    if not text: return text
    if importlib.util.find_spec('matplotlib') is None:
        raise argparse.ArgumentTypeError("a figure needs matplotlib, which is not installed: "
                                         "pip install 'netmoments[plot]' (or pip install matplotlib)")
    if os.path.splitext(text)[1].lower().lstrip('.') not in _FIGURE_FORMATS:
        raise argparse.ArgumentTypeError(f'{text}: the file name must end in .{", .".join(_FIGURE_FORMATS)}')
    return _output_path(text)

def _device(text:str)->str:
    "argparse type: 'cpu', 'cuda' or 'cuda:N' (whether CUDA is there is checked once the options parse)."
    if text == 'cpu' or re.fullmatch(r'cuda(:\d+)?', text): return text
    raise argparse.ArgumentTypeError(f"expected 'cpu', 'cuda' or 'cuda:N', got {text!r}")

def _write_json(path:str, obj:dict):
    "Write `obj` as JSON to `path` atomically (a temporary file in the same folder, then a rename) and say so."
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix='.' + os.path.basename(path) + '.')
    try:
        with os.fdopen(fd, 'w') as f: json.dump(obj, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp): os.unlink(tmp)
        raise
    print(f'wrote {path}')


# %% [markdown]
# Counts below 1, NaN and negative numbers, a missing folder and a file name without a known extension are refused
# with a message naming what is wrong:

# %%
for check, text, message in ((_positive_int, '0', 'must be >= 1, got 0'), (_positive_int, '2.5', 'whole number'),
                             (_nonnegative_float, 'nan', 'finite'), (_nonnegative_float, '-1', '>= 0'),
                             (_output_path, '/no/such/folder/x.json', 'does not exist'),
                             (_figure_path, 'figure.txt', 'must end in .png')):
    test_fail(check, args=[text], exc=argparse.ArgumentTypeError, contains=message)
test_eq((_positive_int('3'), _nonnegative_float('0'), _output_path(''), _figure_path('')), (3, 0., '', ''))

# %% [markdown]
# A device is 'cpu', 'cuda' or 'cuda:N'; anything else is refused before torch is imported. JSON is written to a
# temporary file beside the target and renamed over it, so an interrupted write never leaves a half file or destroys
# the previous one:

# %%
test_eq([_device(d) for d in ('cpu', 'cuda', 'cuda:1')], ['cpu', 'cuda', 'cuda:1'])
for d in ('meta', 'mps', 'cuda:x', 'gpu'): test_fail(lambda: _device(d), exc=argparse.ArgumentTypeError, contains="expected 'cpu', 'cuda' or 'cuda:N'")
with tempfile.TemporaryDirectory() as tmp:
    target = os.path.join(tmp, 'out.json')
    with contextlib.redirect_stdout(io.StringIO()): _write_json(target, {'a': 1})
    class Boom:
        "Not JSON-serializable: the write fails halfway."
    test_fail(lambda: _write_json(target, {'a': 2, 'b': Boom()}), exc=TypeError)
    test_eq(json.load(open(target)), {'a': 1})                        # the previous file is intact
    test_eq(os.listdir(tmp), ['out.json'])                            # and no temporary file is left behind


# %% [markdown]
# ## The bundled network
# `netmoments check` needs no data: its default network is generated from a seed, an Affine-ReLU-Affine network with
# every ingredient the general case has (non-zero input mean, full input covariance, non-zero biases), small enough that
# Monte Carlo with $10^5$ samples takes seconds.

# %%
#| export
class AraNetwork(NamedTuple):
    "An Affine-ReLU-Affine network g(x) = B relu(A x + c1) + c2 with a Gaussian input N(mu, cov)."
    A:Tensor    # (p, n) weights of the first affine layer
    c1:Tensor   # (p,) its bias
    B:Tensor    # (d, p) weights of the second affine layer
    c2:Tensor   # (d,) its bias
    mu:Tensor   # (n,) mean of the Gaussian input
    cov:Tensor  # (n, n) covariance of the Gaussian input, positive definite

    def __call__(self, x:Tensor)->Tensor: return (x @ self.A.mT + self.c1).relu() @ self.B.mT + self.c2

def bundled_network(
    n:int=8, p:int=32, d:int=4,   # input, hidden and output sizes
    seed:int=2018,                # the network and the input distribution are drawn from this seed
    dtype:str|torch.dtype='float64', # 'float64', 'float32' or a torch dtype
    device:str='cpu',
)->AraNetwork:
    "The seeded random Affine-ReLU-Affine network and Gaussian input that `netmoments check` uses."
    import torch
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
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
test_eq(net(net.mu), torch.relu(net.mu @ net.A.mT + net.c1) @ net.B.mT + net.c2)
test_eq(bundled_network(dtype=torch.float32).A.dtype, bundled_network(dtype='float32').A.dtype)


# %% [markdown]
# ## `netmoments check`
# Computes the exact mean, variance and covariance with `ara_moments`, a seeded Monte Carlo estimate with standard
# errors, and prints them side by side with the deviation in standard errors and the time each took (analytic: best
# of 5 after a warm-up; Monte Carlo: one run, it is the long one). It exits with
# status 1 if any entry is more than `--max-se` standard errors from Monte Carlo (5 by default: with the default
# network's 14 compared entries a correct run fails about once in $10^5$ runs), so it doubles as a smoke test.
# `check_moments` computes, `check_text` formats; `check_report` does both.

# %%
#| export
class CheckResult(NamedTuple):
    "Analytic moments of an Affine-ReLU-Affine network beside Monte Carlo, how far apart they are, and their times."
    exact:AraMoments       # analytic mean (d,), covariance (d, d) and variance (d,), from ara_moments
    mc:MCMoments           # Monte Carlo estimates of the same with their standard errors, from mc_moments
    z_mean:Tensor          # (d,) |analytic - Monte Carlo| / standard error, for each mean
    z_var:Tensor           # (d,) the same for each variance
    z_cov:Tensor           # (d (d - 1) / 2,) the same for each covariance above the diagonal, row by row
    seconds_exact:float    # analytic time: best of 5 runs after a warm-up
    seconds_mc:float       # Monte Carlo time: one run
    samples:int            # Monte Carlo samples
    seed:int               # Monte Carlo seed

    @property
    def worst(self)->float:
        "The largest deviation in standard errors, over means, variances and covariances."
        z_cov = self.z_cov.max().item() if len(self.z_cov) else 0.
        return max(self.z_mean.max().item(), self.z_var.max().item(), z_cov)

def check_moments(
    net:AraNetwork,         # network and input distribution
    samples:int=100_000,    # Monte Carlo samples
    seed:int=0,             # Monte Carlo seed
    progress:bool=False,    # progress bar over Monte Carlo chunks
)->CheckResult:
    "Analytic moments of `net` beside seeded Monte Carlo, both timed, and each entry's deviation in standard errors."
    import torch
    from netmoments.ara import ara_moments
    from netmoments.bench import best_time
    from netmoments.montecarlo import mc_moments
    analytic = lambda: ara_moments(net.mu, net.cov, net.A, net.c1, net.B, net.c2)
    exact = analytic()
    t_exact = best_time(analytic, repeats=5, device=net.mu.device)
    t0 = time.perf_counter()
    mc = mc_moments(net, net.mu, net.cov, n=samples, seed=seed, progress=progress)
    t_mc = time.perf_counter() - t0
    iu = torch.triu_indices(*exact.cov.shape, offset=1)
    z = lambda a, b, se: ((a - b) / se).abs()
    return CheckResult(exact, mc, z(exact.mean, mc.mean, mc.mean_se), z(exact.var, mc.var, mc.var_se),
                       z(exact.cov, mc.cov, mc.cov_se)[iu[0], iu[1]], t_exact, t_mc, samples, seed)


# %%
#| export
def check_text(
    net:AraNetwork,      # the network checked
    result:CheckResult,  # from check_moments
)->str:
    "A CheckResult as printable text: means and variances side by side, the covariances, the times and the worst |z|."
    exact, mc, d = result.exact, result.mc, net.B.shape[0]
    p, n = net.A.shape
    lines = [f'Affine-ReLU-Affine network n={n} p={p} d={d}, {exact.mean.dtype}, {exact.mean.device}; '
             f'Monte Carlo: {result.samples} samples, seed {result.seed}', '',
             f"{'output':>6} | {'mean (exact)':>13} {'mean (MC)':>13} {'SE':>9} {'|z|':>5} | "
             f"{'var (exact)':>12} {'var (MC)':>12} {'SE':>9} {'|z|':>5}"]
    for i in range(d):
        lines.append(f'{i:>6} | {exact.mean[i]:>13.6f} {mc.mean[i]:>13.6f} {mc.mean_se[i]:>9.2e} {result.z_mean[i]:>5.2f} | '
                     f'{exact.var[i]:>12.6f} {mc.var[i]:>12.6f} {mc.var_se[i]:>9.2e} {result.z_var[i]:>5.2f}')
    lines += ['', 'covariance (exact; upper triangle: MC):']
    for i in range(d):
        lines.append('  ' + ' '.join(f'{(mc.cov if j > i else exact.cov)[i, j]:>10.5f}' for j in range(d)))
    t_exact, t_mc, z_cov = result.seconds_exact, result.seconds_mc, result.z_cov
    lines += ['', f'largest |z| of off-diagonal covariances: {z_cov.max().item() if len(z_cov) else 0.:.2f}',
              f'time: analytic {t_exact * 1e3:.2f} ms (best of 5), Monte Carlo {t_mc * 1e3:.1f} ms: '
              f'ratio MC / analytic = {t_mc / t_exact:.1f}',
              f'largest deviation: {result.worst:.2f} standard errors']
    return '\n'.join(lines)

def check_report(
    net:AraNetwork,         # network and input distribution
    samples:int=100_000,    # Monte Carlo samples
    seed:int=0,             # Monte Carlo seed
    progress:bool=False,    # progress bar over Monte Carlo chunks
)->tuple:                   # (report text, largest deviation in standard errors)
    "Analytic moments of `net` beside Monte Carlo, as printable text, and the worst deviation in standard errors."
    result = check_moments(net, samples, seed, progress)
    return check_text(net, result), result.worst


# %% [markdown]
# On the bundled network every entry agrees within a few standard errors:

# %%
text, worst = check_report(bundled_network(), samples=50_000)
print(text)
assert worst < 5


# %% [markdown]
# The command prints that report and, with `--json PATH`, writes the same numbers: the network, the analytic and
# Monte Carlo moments with their standard errors and deviations, the times, the limit and whether the check passed.

# %%
#| exporti
def _check_parser(sub):
    "The options of `netmoments check`."
    c = sub.add_parser('check', help='analytic moments of the bundled random network beside Monte Carlo',
                       description='Analytic moments of a seeded random Affine-ReLU-Affine network beside Monte Carlo; '
                                   'exit status 1 when an entry is further than --max-se standard errors from it.')
    c.add_argument('--samples', type=_positive_int, default=100_000, help='Monte Carlo samples (default 1e5)')
    c.add_argument('--seed', type=int, default=0, help='Monte Carlo seed (default 0)')
    c.add_argument('--network-seed', type=int, default=2018, help='seed of the bundled network (default 2018)')
    c.add_argument('--sizes', type=_positive_int, nargs=3, default=(8, 32, 4), metavar=('N', 'P', 'D'),
                   help='input, hidden and output sizes (default 8 32 4)')
    c.add_argument('--dtype', choices=('float64', 'float32'), default='float64',
                   help='floating point type (default float64)')
    c.add_argument('--device', type=_device, default='cpu', help="'cpu' (default) or 'cuda'")
    c.add_argument('--max-se', type=_nonnegative_float, default=5.,
                   help='exit 1 if any entry is further than this many standard errors from Monte Carlo (default 5)')
    c.add_argument('--json', type=_output_path, metavar='PATH', help='also write the moments and deviations as JSON')
    c.set_defaults(run=_check)

def _check(args)->int:
    "Run `netmoments check`."
    net = bundled_network(*args.sizes, seed=args.network_seed, dtype=args.dtype, device=args.device)
    result = check_moments(net, samples=args.samples, seed=args.seed, progress=sys.stderr.isatty())
    print(check_text(net, result))
    ok = result.worst <= args.max_se
    if args.json:
        exact, mc = result.exact, result.mc
        network = dict(zip(('n', 'p', 'd'), args.sizes), seed=args.network_seed, dtype=args.dtype, device=args.device)
        _write_json(args.json, {'network': network, 'samples': args.samples, 'seed': args.seed,
            'mean': exact.mean.tolist(), 'var': exact.var.tolist(), 'cov': exact.cov.tolist(),
            'mc_mean': mc.mean.tolist(), 'mc_mean_se': mc.mean_se.tolist(), 'mc_var': mc.var.tolist(),
            'mc_var_se': mc.var_se.tolist(), 'mc_cov': mc.cov.tolist(), 'mc_cov_se': mc.cov_se.tolist(),
            'z_mean': result.z_mean.tolist(), 'z_var': result.z_var.tolist(), 'z_cov': result.z_cov.tolist(),
            'seconds_exact': result.seconds_exact, 'seconds_mc': result.seconds_mc,
            'largest_deviation': result.worst, 'max_se': args.max_se, 'passed': ok})
    if not ok:
        print(f'FAILED: a moment is {result.worst:.1f} standard errors from Monte Carlo (limit {args.max_se})', file=sys.stderr)
    return 0 if ok else 1


# %% [markdown]
# ## `netmoments tightness`
# The [tightness](11_tightness.ipynb) protocol of [Alfadly et al. (2020)](99_references.ipynb#alfadly2020) (§4.2)
# from the command line: the bundled LeNet two-stage linearized at `--layer` around the first `--images` images of the
# bundled MNIST slice, each under a random covariance of trace `--sigma`$^2 \cdot 784$, the analytic mean, exact and
# old variance of every logit beside seeded Monte Carlo of the real network, with their $E_r$. `tightness_rows`
# flattens a `TightnessTable` into the rows printed and written as JSON; `tightness_figure` plots Monte Carlo against
# analytic variances.

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


# %% [markdown]
# The figure puts both analytic variances against Monte Carlo on shared logarithmic axes, with the diagonal where
# they agree. Its ticks sit at 1, 2 and 5 times powers of ten (powers of ten alone past three decades), labelled in
# short notation (`5e-4`, `0.2`, `20`), and the minor ticks carry no label, so the labels never run into each other.
# Without an `ax` it draws on a bare `matplotlib.figure.Figure` (no pyplot), so the command changes no global
# matplotlib state; here it draws on a notebook figure.

# %%
#| exporti
def _log_ticks(axis, low:float, high:float):
    "Labelled major ticks at 1, 2, 5 x 10^k (10^k alone past three decades) and unlabelled minor ones on a log axis."
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    axis.set_major_locator(LogLocator(subs=(1., 2., 5.) if high / low < 1e3 else (1.,)))
    short = lambda v: f'{v:g}' if 1e-2 <= v < 1e4 else f'{v:.0e}'.replace('e-0', 'e-').replace('e+0', 'e')
    axis.set_major_formatter(FuncFormatter(lambda v, _: short(v)))
    axis.set_minor_formatter(NullFormatter())


# %%
#| export
def tightness_figure(
    table:TightnessTable,  # from tightness_table
    path:str|None=None,    # where to save it (the format follows the extension); None: not saved
    ax=None,               # a matplotlib Axes to draw on; None: a new Figure of its own
):                         # the matplotlib Figure drawn on
    "Log-log scatter of Monte Carlo against analytic (exact and old) variances, saved to `path`; returns the Figure."
    from matplotlib.figure import Figure
    import torch
    mc, exact, old = (v.flatten().cpu() for v in (table.mc_var, table.var_exact, table.var_old))
    positive = torch.cat([mc, exact, old])
    positive = positive[positive > 0]
    low, high = (positive.min().item() / 1.3, positive.max().item() * 1.3) if len(positive) else (1e-6, 1.)
    if ax is None: ax = Figure(figsize=(4.5, 4.5), layout='constrained').subplots()
    fig = ax.figure
    ax.loglog(exact, mc, 'o', ms=3, label='exact')
    ax.loglog(old, mc, 'x', ms=4, label='old (zero mean)')
    ax.plot([low, high], [low, high], 'k--', lw=1, label='equal')
    ax.set(xlim=(low, high), ylim=(low, high), aspect='equal', xlabel='analytic variance',
           ylabel='Monte Carlo variance', title=f'sigma = {table.sigma:g}')
    for axis in (ax.xaxis, ax.yaxis): _log_ticks(axis, low, high)
    ax.legend(loc='upper left')
    if path: fig.savefig(path, dpi=120)
    return fig


# %% [markdown]
# Two images at the default noise level, with few samples:

# %%
#| label: fig-cli-tightness
#| fig-cap: "Monte Carlo against analytic variance of each logit of the linearized LeNet (2 MNIST images, sigma 0.01, 1000 samples): the exact variance lies on the diagonal, the old zero-mean one off it."
images, _ = mnist_slice()
table = tightness_table(pretrained(), images[:2], 0.01, n_mc=1000, generator=torch.Generator().manual_seed(0))
fig, ax = plt.subplots(figsize=(4.5, 4.5), layout='constrained')
tightness_figure(table, ax=ax);


# %% [markdown]
# `netmoments tightness` prints the table of `tightness_text` and, with `--json PATH`, writes its rows with the
# settings and the mean $E_r$; a figure only when `--figure PATH` asks for one.

# %%
#| exporti
def _tightness_parser(sub):
    "The options of `netmoments tightness`."
    t = sub.add_parser('tightness', help='analytic moments of the two-stage linearized LeNet beside Monte Carlo, with E_r',
                       description='Analytic mean and variances of the two-stage linearized bundled LeNet beside Monte '
                                   'Carlo of the real network on bundled MNIST test images, with their E_r.')
    t.add_argument('--model', default='lenet-mnist', help='bundled network (default lenet-mnist)')
    t.add_argument('--layer', type=int, default=3, help='l of the two-stage linearization (default 3)')
    t.add_argument('--at', choices=('relu', 'pre'), default='relu',
                   help='top-stage point of the linearization (default relu)')
    t.add_argument('--ties', choices=('split', 'first'), default='split',
                   help="tied max-pooling windows: split the derivative evenly (default) or give it to the first")
    t.add_argument('--sigma', type=_nonnegative_float, default=0.01,
                   help='noise level: trace of the covariance = sigma^2 * 784 (default 0.01)')
    t.add_argument('--images', type=_positive_int, default=3,
                   help='first images of the bundled MNIST slice (default 3)')
    t.add_argument('--samples', type=_positive_int, default=10_000, help='Monte Carlo samples per image (default 1e4)')
    t.add_argument('--seed', type=int, default=0, help='seed of the covariances and of Monte Carlo (default 0)')
    t.add_argument('--device', type=_device, default='cpu', help="'cpu' (default) or 'cuda'")
    t.add_argument('--json', type=_output_path, metavar='PATH', help='also write the table as JSON')
    t.add_argument('--figure', type=_figure_path, metavar='PATH',
                   help="also save Monte Carlo against analytic variances as a figure, e.g. tightness.png "
                        "(needs matplotlib: pip install 'netmoments[plot]'); default: no figure")
    t.set_defaults(run=_tightness)


# %%
#| exporti
def _tightness(args)->int:
    "Run `netmoments tightness`."
    import torch
    from netmoments.models import mnist_slice, pretrained
    from netmoments.tightness import tightness_table
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
        _write_json(args.json, {'model': args.model, 'layer': args.layer, 'at': args.at, 'ties': args.ties,
                                'sigma': args.sigma, 'samples': args.samples, 'seed': args.seed, 'summary': summary,
                                'images': rows})
    if args.figure:
        tightness_figure(table, args.figure)
        print(f'wrote {args.figure}')
    return 0


# %% [markdown]
# ## `netmoments stepcost`
# Seconds per LeNet training step of each scheme of the [robust training experiments](22_robust_training.ipynb) side
# by side (`step_costs` and `step_schemes` of the [training loop](21_train.ipynb)), on random images: the cost does not
# depend on the pixels. With `--json PATH` the same numbers are written per batch size and scheme.

# %%
#| exporti
def _stepcost_parser(sub):
    "The options of `netmoments stepcost`."
    s = sub.add_parser('stepcost', help='seconds per LeNet training step: vanilla, moment regularizer, N-fold augmentation',
                       description='Seconds per LeNet training step (Adam) of vanilla training, the analytic moment '
                                   'regularizer and N-fold Gaussian augmentation, timed side by side.')
    s.add_argument('--batch', type=_positive_int, nargs='+', default=[100, 1000], help='batch sizes (default 100 1000)')
    s.add_argument('--sigma', type=_nonnegative_float, default=0.5, help='training noise std (default 0.5)')
    s.add_argument('--alpha', type=_nonnegative_float, default=1., help="weight of the regularizer's term (default 1)")
    s.add_argument('--folds', type=_positive_int, nargs='*', default=[2, 6], help='augmentation folds N (default 2 6)')
    s.add_argument('--rounds', type=_positive_int, default=5, help='round-robin rounds, best kept (default 5)')
    s.add_argument('--steps', type=_positive_int, default=20, help='steps per timed round (default 20)')
    s.add_argument('--device', type=_device, default='cpu', help="'cpu' (default) or 'cuda'")
    s.add_argument('--json', type=_output_path, metavar='PATH', help='also write the times as JSON')
    s.set_defaults(run=_stepcost)

def _stepcost(args)->int:
    "Run `netmoments stepcost`."
    import torch
    from netmoments.models import lenet
    from netmoments.train import step_costs, step_schemes
    dev = torch.device(args.device)
    where = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
    print(f'LeNet training step (Adam), random images in [0, 1]; torch {torch.__version__}, {where}; '
          f'best of {args.rounds} rounds of {args.steps} steps')
    schemes = step_schemes(args.sigma, args.alpha, args.folds)
    gen, batches = torch.Generator().manual_seed(0), []
    for n in args.batch:
        x = torch.rand(n, 1, 28, 28, generator=gen).to(dev)
        y = torch.randint(0, 10, (n,), generator=gen).to(dev)
        costs = step_costs(lambda: lenet(torch.Generator().manual_seed(0)), schemes, x, y, rounds=args.rounds,
                           steps=args.steps)
        print(f'\nbatch N = {n}')
        for k, (sec, ratio) in costs.items(): print(f'  {k:28s} {1e3 * sec:8.2f} ms/step  {ratio:5.2f}x vanilla')
        batches.append({'batch': n, 'schemes': [{'scheme': k, 'seconds_per_step': sec, 'ratio_to_vanilla': ratio}
                                                for k, (sec, ratio) in costs.items()]})
    if args.json:
        _write_json(args.json, {'torch': torch.__version__, 'device': where, 'rounds': args.rounds, 'steps': args.steps,
                                'sigma': args.sigma, 'alpha': args.alpha, 'batches': batches})
    return 0


# %% [markdown]
# ## `netmoments bench`
# The table of the [benchmarks](06_bench.ipynb), on the CPU and on CUDA when torch sees a device; `--json PATH` writes
# its rows.

# %%
#| exporti
def _bench_parser(sub):
    "The options of `netmoments bench`."
    b = sub.add_parser('bench', help='speed ratios: exact cross moments, Lemma 4 series, analytic vs Monte Carlo',
                       description='Speed of the exact ReLU cross moments, the Lemma 4 series and the analytic network '
                                   'moments against Monte Carlo, as ratios to their baselines.')
    b.add_argument('--devices', type=_device, nargs='*', default=None, metavar='DEVICE',
                   help="devices to time on, e.g. cpu cuda (default: cpu, and cuda when torch sees one)")
    b.add_argument('--pairs', type=_positive_int, default=100_000,
                   help='Gaussian pairs for the cross-moment benchmarks (default 1e5)')
    b.add_argument('--mc-samples', type=_positive_int, default=10_000,
                   help='Monte Carlo samples for the network benchmark (default 1e4)')
    b.add_argument('--repeats', type=_positive_int, default=3,
                   help='timed runs of each benchmark, best kept (default 3)')
    b.add_argument('--json', type=_output_path, metavar='PATH', help='also write the rows as JSON')
    b.set_defaults(run=_bench)

def _bench(args)->int:
    "Run `netmoments bench`."
    from netmoments.bench import format_rows, run_benchmarks
    rows = run_benchmarks(args.devices, count=args.pairs, mc_samples=args.mc_samples, repeats=args.repeats)
    print(format_rows(rows))
    if args.json:
        _write_json(args.json, {'pairs': args.pairs, 'mc_samples': args.mc_samples, 'repeats': args.repeats,
                                'rows': [r._asdict() for r in rows]})
    return 0


# %% [markdown]
# ## The entry point
# `main` parses the command line and runs the sub-command; `netmoments` is installed as a console script pointing at
# it (`settings.ini`), and `python -m netmoments` runs it too ([Running the package](91_main.ipynb)). A request
# for CUDA where torch sees none is refused with exit status 2.

# %%
#| export
def _parser():
    "The parser of the `netmoments` command line, with one sub-parser per command."
    ap = argparse.ArgumentParser(prog='netmoments', description='Probabilistic moments of ReLU networks under Gaussian input.')
    ap.add_argument('--version', action='version', version=f'%(prog)s {__version__}', help='print the version and exit')
    sub = ap.add_subparsers(dest='command', required=True, metavar='COMMAND',
                            help="the command to run; 'netmoments COMMAND --help' describes its options")
    for add in (_check_parser, _bench_parser, _tightness_parser, _stepcost_parser): add(sub)
    return ap

def main(argv:list|None=None)->int:
    "The `netmoments` command: `check`, `bench`, `tightness` or `stepcost`."
    args = _parser().parse_args(argv)
    devices = [getattr(args, 'device', None)] + list(getattr(args, 'devices', None) or [])
    if any(d and d.startswith('cuda') for d in devices):
        import torch
        if not torch.cuda.is_available():
            print(f'netmoments {args.command}: --device cuda asked for, but torch sees no CUDA device', file=sys.stderr)
            return 2
    return args.run(args)


# %% [markdown]
# Every option, of the command and of each sub-command, has a help text:

# %%
ap = _parser()
subparsers = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction)).choices
test_eq(sorted(subparsers), ['bench', 'check', 'stepcost', 'tightness'])
for parser in (ap, *subparsers.values()):
    for action in parser._actions: assert action.help, (parser.prog, action.option_strings)

# %% [markdown]
# Neither the version nor the help imports torch, and mistakes in the options end the command with exit status 2
# before any work: here in a fresh Python process, which has not imported torch yet.

# %%
probe = ('import contextlib, io, sys\nfrom netmoments.cli import main\n'
         'for argv in (["--version"], ["--help"], ["tightness", "--help"], ["check", "--samples", "0"],\n'
         '             ["tightness", "--images", "-1"], ["check", "--max-se", "nan"], ["bench", "--json", "/no/x.json"]):\n'
         '    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n'
         '        try: main(argv)\n'
         '        except SystemExit as e: print(argv[0], e.code, file=sys.__stdout__)\n'
         'print("torch imported:", "torch" in sys.modules)')
out = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, check=True).stdout
print(out)
test_eq(out.splitlines(), ['--version 0', '--help 0', 'tightness 0', 'check 2', 'tightness 2', 'check 2', 'bench 2',
                           'torch imported: False'])

# %% [markdown]
# `check` runs end to end (here with few samples) and writes its JSON when asked; a CUDA request without CUDA is
# refused:

# %%
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'check.json')
    with contextlib.redirect_stdout(io.StringIO()) as out:
        status = main(['check', '--samples', '20000', '--sizes', '4', '8', '2', '--json', path])
    with open(path) as f: report = json.load(f)
test_eq(status, 0)
assert 'largest deviation' in out.getvalue() and out.getvalue().rstrip().endswith(f'wrote {path}')
test_eq((report['network']['d'], len(report['mc_cov_se']), report['passed']), (2, 2, True))
if not torch.cuda.is_available():
    with contextlib.redirect_stderr(io.StringIO()): test_eq(main(['check', '--device', 'cuda']), 2)

# %% [markdown]
# `tightness` on two images with few samples writes the JSON table (per image, per logit: analytic mean, exact and
# old variance, Monte Carlo mean and variance with their standard errors, the three $E_r$) and the figure, and says
# so:

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
assert 'mean E_r' in out.getvalue() and f'wrote {tmpfile}\nwrote {tmpfig}' in out.getvalue()

# %% [markdown]
# `stepcost` times one LeNet training step of each scheme side by side; "vanilla, batch 2N" is a plain step on the
# batch repeated twice, the cost the regularizer cannot go below (it runs the network after the first ReLU on $2N$
# inputs). Here with a small batch and few rounds:

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

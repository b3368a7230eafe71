# %% [markdown]
# # Command line
# > `netmoments check`, `bench`, `tightness`, `stepcost` and `run`: the analytic moments of a bundled network beside Monte Carlo, the benchmark table, the tightness of the linearized LeNet, the cost of a robust-training step, and the papers' experiments at scale

# %%
#| default_exp cli

# %% [markdown]
# The `netmoments` command has five sub-commands; `netmoments --version` prints the version, `netmoments --help` and
# `netmoments CMD --help` describe every option. The module imports torch only inside the commands, so that the help
# and every mistake in the options are answered at once, without the seconds `import torch` takes; the names used in
# annotations alone are imported for type checkers only.

# %%
#| export
from __future__ import annotations
import argparse, importlib.util, json, math, os, re, sys, time
from typing import TYPE_CHECKING, NamedTuple
from netmoments import __version__
from netmoments.runner import output_problem, write_atomic, write_json
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
from matplotlib.backend_bases import FigureCanvasBase
import torch
from fastcore.test import test_eq, test_fail
from netmoments.tightness import tightness_table
from netmoments.models import _PRETRAINED, mnist_slice, pretrained

# %% [markdown]
# ## Options checked before any work
# Every option is checked while the command line is parsed, so that a mistake ends the command at once with
# argparse's usage message, a line naming the option, and exit status 2, before a network is built or a sample drawn:
# counts must be whole numbers in their range (Monte Carlo needs at least 2 samples, `--images` cannot exceed the
# bundled MNIST slice, a tensor dimension fits in 64 bits), seeds whole numbers that `torch.Generator.manual_seed` takes
# ($0 \le$ seed $< 2^{64}$), noise levels and limits finite and $\ge 0$ (NaN included in the refusal; the noise of
# `tightness` also small enough that the Monte Carlo of its float32 network stays far from overflow), a device one
# that torch sees, and a file to write a name in an existing folder where a file can be created. A figure also needs
# matplotlib (the `plot` extra: `pip install 'netmoments[plot]'`) and a file name whose extension says the format.
# Each file a command writes is announced on a line `wrote PATH`.

# %%
#| exporti
_INT64_MAX = 2**63 - 1   # the largest size of a torch tensor dimension
_SEED_MAX = 2**64 - 1    # the largest seed torch.Generator.manual_seed takes

class _Count:
    "argparse type: a whole number in [least, most]; `why` explains the upper limit."
    def __init__(self, least:int=1, most:int=_INT64_MAX, why:str=''): self.least, self.most, self.why = least, most, why
    def __repr__(self): return f'_Count({self.least}, {self.most})'
    def __call__(self, text:str)->int:
        try: value = int(text)
        except ValueError: raise argparse.ArgumentTypeError(f'expected a whole number >= {self.least}, got {text!r}') from None
        if value < self.least: raise argparse.ArgumentTypeError(f'must be >= {self.least}, got {value}')
        if value > self.most: raise argparse.ArgumentTypeError(f'must be <= {self.most}{self.why}, got {value}')
        return value

class _Number:
    "argparse type: a finite number in [least, most] (NaN and infinities refused); `why` explains the upper limit."
    def __init__(self, least:float=0., most:float=math.inf, why:str=''): self.least, self.most, self.why = least, most, why
    def __repr__(self): return f'_Number({self.least:g}, {self.most:g})'
    def __call__(self, text:str)->float:
        try: value = float(text)
        except ValueError: raise argparse.ArgumentTypeError(f'expected a number, got {text!r}') from None
        if not math.isfinite(value) or value < self.least:
            raise argparse.ArgumentTypeError(f'must be finite and >= {self.least:g}, got {text}')
        if value > self.most: raise argparse.ArgumentTypeError(f'must be <= {self.most:g}{self.why}, got {text}')
        return value

_positive_int, _nonnegative_float = _Count(1), _Number(0.)
_seed = _Count(0, _SEED_MAX, ' (the largest seed torch takes)')
_samples = _Count(2)    # Monte Carlo needs two samples for a variance


# %% [markdown]
# A device is 'cpu', 'cuda' or 'cuda:N'. Naming a CUDA device imports torch to ask whether it sees that device; 'cpu'
# and every malformed name are answered without torch.

# %%
#| exporti
def _device(text:str)->str:
    "argparse type: 'cpu', or 'cuda' / 'cuda:N' naming a CUDA device torch sees."
    if text == 'cpu': return text
    m = re.fullmatch(r'cuda(?::(0|[1-9][0-9]*))?', text)
    if not m: raise argparse.ArgumentTypeError(f"expected 'cpu', 'cuda' or 'cuda:N', got {text!r}")
    import torch
    if not torch.cuda.is_available(): raise argparse.ArgumentTypeError(f'{text} asked for, but torch sees no CUDA device')
    count = torch.cuda.device_count()
    if m[1] is not None and int(m[1]) >= count:
        raise argparse.ArgumentTypeError(f'{text} asked for, but torch sees {count} CUDA device(s): cuda:0 to cuda:{count - 1}')
    return text


# %% [markdown]
# Files are written atomically, by the writer of the [experiment runner](23_runner.ipynb): into a temporary file beside
# the target, flushed to disk, then renamed over it, so an interrupted write never leaves a half file or destroys the
# previous one; only regular files are replaced (never `/dev/null` or a folder). Whether a name can be written is
# checked before any work by the same module's `output_problem`, which creates and removes a temporary file in its
# folder, the one test that also holds for the superuser and on read-only file systems.

# %%
#| exporti
def _write_json(path:str, obj:dict):
    "Write `obj` as JSON to `path` atomically and say so."
    write_json(path, obj)
    print(f'wrote {path}')


# %% [markdown]
# The argparse types of file names run those checks; a figure's name must also end in a format matplotlib writes.

# %%
#| exporti
def _output_path(text:str)->str:
    "argparse type: a file that can be written (an existing folder where a file can be created)."
    why = output_problem(text)
    if why: raise argparse.ArgumentTypeError(why)
    return text

_FIGURE_FORMATS = ('png', 'pdf', 'svg', 'jpg', 'jpeg', 'eps', 'ps', 'tif', 'tiff', 'webp')

def _figure_format(path:str)->str|None:
    "The figure format `path`'s extension names, or None."
    ext = os.path.splitext(path)[1].lower().lstrip('.')
    return ext if ext in _FIGURE_FORMATS else None

def _figure_path(text:str)->str:
    "argparse type: a figure file; needs matplotlib and an extension naming the format."
    if importlib.util.find_spec('matplotlib') is None:
        raise argparse.ArgumentTypeError("a figure needs matplotlib, which is not installed: "
                                         "pip install 'netmoments[plot]' (or pip install matplotlib)")
    if text and _figure_format(text) is None:
        raise argparse.ArgumentTypeError(f'{text}: the file name must end in .{", .".join(_FIGURE_FORMATS)}')
    return _output_path(text)


# %% [markdown]
# Counts out of range, NaN and negative numbers, seeds torch cannot take, malformed devices, an empty name, a missing
# folder, a device file and a file name without a known extension are refused with a message naming what is wrong:

# %%
for check, text, message in ((_positive_int, '0', 'must be >= 1, got 0'), (_positive_int, '2.5', 'whole number'),
                             (_samples, '1', 'must be >= 2, got 1'), (_positive_int, str(2**63), 'must be <= '),
                             (_seed, '-1', 'must be >= 0'), (_seed, str(2**64), 'the largest seed torch takes'),
                             (_nonnegative_float, 'nan', 'finite'), (_nonnegative_float, '-1', '>= 0'),
                             (_nonnegative_float, '1e999', 'finite'), (_Number(0, 10), '11', 'must be <= 10'),
                             (_device, 'gpu', "expected 'cpu', 'cuda' or 'cuda:N'"),
                             (_device, 'cuda:01', "expected 'cpu', 'cuda' or 'cuda:N'"),
                             (_output_path, '', 'empty'), (_output_path, '/no/such/folder/x.json', 'does not exist'),
                             (_output_path, '/dev/null', 'not a regular file'), (_output_path, '/proc/x.json', 'not writable'),
                             (_output_path, 'x' * 300 + '.json', 'longer than'),
                             (_figure_path, 'figure.txt', 'must end in .png')):
    test_fail(check, args=[text], exc=argparse.ArgumentTypeError, contains=message)
test_eq((_positive_int('3'), _seed(str(2**64 - 1)), _nonnegative_float('0'), _device('cpu')), (3, 2**64 - 1, 0., 'cpu'))
if not torch.cuda.is_available():
    test_fail(_device, args=['cuda'], exc=argparse.ArgumentTypeError, contains='torch sees no CUDA device')


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
    n:int=8, p:int=32, d:int=4,   # input, hidden and output sizes, each >= 1
    seed:int=2018,                # the network and the input distribution are drawn from this seed, 0 <= seed < 2^64
    dtype:str|torch.dtype='float64', # 'float64', 'float32' or the torch dtype
    device:str|torch.device='cpu',   # 'cpu', or a CUDA device torch sees
)->AraNetwork:
    "The seeded random Affine-ReLU-Affine network and Gaussian input that `netmoments check` uses."
    import torch
    from netmoments.core import check_count, check_device
    n, p, d = (check_count(v, k, 1) for k, v in (('n', n), ('p', p), ('d', d)))
    seed = _check_seed(seed, 'seed')
    dtype = _check_dtype(dtype, 'dtype')
    device = check_device(device, 'device', types=('cpu', 'cuda'))
    gen = torch.Generator().manual_seed(seed)
    rn = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)
    A, c1, B, c2 = rn(p, n) / n**0.5, 0.5 * rn(p), rn(d, p) / p**0.5, rn(d)
    L = rn(n, n) / n**0.5
    net = AraNetwork(A, c1, B, c2, rn(n), L @ L.mT + 0.1 * torch.eye(n, dtype=torch.float64))
    return AraNetwork(*(x.to(dtype=dtype, device=device) for x in net))


# %% [markdown]
# Its arguments are checked before anything is drawn: sizes and seed are whole numbers in range, the dtype one of the
# two the analytic moments are exact in, the device one torch sees.

# %%
#| exporti
def _check_seed(seed, name:str)->int:
    "`seed` as an int in [0, 2^64), the seeds torch.Generator.manual_seed takes, or an error naming `name`."
    from netmoments.core import check_count
    seed = check_count(seed, name, 0)
    if seed > _SEED_MAX: raise ValueError(f'{name} must be < 2^64, the seeds torch takes; got {seed}')
    return seed

def _check_dtype(dtype, name:str):
    "torch.float64 or torch.float32, from the dtype or its name, or an error naming `name`."
    import torch
    allowed = {'float64': torch.float64, 'float32': torch.float32, torch.float64: torch.float64, torch.float32: torch.float32}
    if not isinstance(dtype, (str, torch.dtype)): raise TypeError(f'{name} must be a str or a torch dtype; got {type(dtype).__name__}')
    if dtype not in allowed: raise ValueError(f"{name} must be 'float64', 'float32', torch.float64 or torch.float32; got {dtype!r}")
    return allowed[dtype]



# %%
net = bundled_network()
test_eq([tuple(x.shape) for x in net], [(32, 8), (32,), (4, 32), (4,), (8,), (8, 8)])
test_eq(net(torch.zeros(5, 8, dtype=torch.float64)).shape, (5, 4))
test_eq(net(net.mu), torch.relu(net.mu @ net.A.mT + net.c1) @ net.B.mT + net.c2)
test_eq(bundled_network(dtype=torch.float32).A.dtype, bundled_network(dtype='float32').A.dtype)

# %% [markdown]
# Sizes below 1, seeds torch cannot take, other dtypes and devices are refused, naming the argument:

# %%
for kw, exc, message in ((dict(p=0), ValueError, 'p must be >= 1'), (dict(n=2.5), TypeError, 'n must be an int'),
                         (dict(seed=-1), ValueError, 'seed must be >= 0'), (dict(seed=2**64), ValueError, 'seed must be < 2^64'),
                         (dict(dtype='float16'), ValueError, "dtype must be 'float64'"), (dict(dtype=torch.int64), ValueError, 'dtype must be'),
                         (dict(device='gpu'), ValueError, 'device must name a torch device'), (dict(device='meta'), ValueError, 'device must be a cpu or cuda device')):
    test_fail(bundled_network, kwargs=kw, exc=exc, contains=message)
if not torch.cuda.is_available(): test_fail(bundled_network, kwargs=dict(device='cuda'), exc=ValueError, contains='no CUDA device')


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
        "The largest deviation in standard errors, over means, variances and covariances (NaN if any is NaN)."
        import torch
        return torch.cat([self.z_mean, self.z_var, self.z_cov]).max().item()

def check_moments(
    net:AraNetwork,         # network and input distribution, unbatched: A (p, n), c1 (p,), B (d, p), c2 (d,), mu (n,)
    samples:int=100_000,    # Monte Carlo samples, >= 2
    seed:int=0,             # Monte Carlo seed, 0 <= seed < 2^64
    progress:bool=False,    # progress bar over Monte Carlo chunks
)->CheckResult:
    "Analytic moments of `net` beside seeded Monte Carlo, both timed, and each entry's deviation in standard errors."
    import torch
    from netmoments.bench import best_time
    from netmoments.core import check_count
    from netmoments.montecarlo import mc_moments
    samples, seed = check_count(samples, 'samples', 2), _check_seed(seed, 'seed')
    analytic = _analytic(net)
    exact = analytic()
    t_exact = best_time(analytic, repeats=5, device=net.mu.device)
    t0 = time.perf_counter()
    mc = mc_moments(net, net.mu, net.cov, n=samples, seed=seed, progress=progress)
    t_mc = time.perf_counter() - t0
    iu = torch.triu_indices(*exact.cov.shape, offset=1, device=exact.cov.device)
    return CheckResult(exact, mc, _z(exact.mean, mc.mean, mc.mean_se), _z(exact.var, mc.var, mc.var_se),
                       _z(exact.cov, mc.cov, mc.cov_se)[iu[0], iu[1]], t_exact, t_mc, samples, seed)


# %% [markdown]
# `net` is checked before any work: an `AraNetwork` of tensors with the unbatched shapes above, which `ara_moments`
# accepts (one floating dtype, finite weights and mean, a positive semi-definite covariance); its refusals are passed
# on with the argument's name in front. Where both agree exactly (an output that does not vary, with standard error 0,
# or both infinite) $|z| = 0$; a standard error of 0 and a difference give $|z| = \infty$; never $0/0$.

# %%
#| exporti
def _analytic(net):
    "Check `net` and return the call of ara_moments on it (run once here: ara_moments validates its inputs)."
    from torch import Tensor
    from netmoments.ara import ara_moments
    if not isinstance(net, AraNetwork):
        raise TypeError(f'net must be an AraNetwork (e.g. from bundled_network); got {type(net).__name__}')
    for k, x in net._asdict().items():
        if not isinstance(x, Tensor): raise TypeError(f'net: {k} must be a tensor; got {type(x).__name__}')
    shapes = {'A': ('(p, n)', 2), 'c1': ('(p,)', 1), 'B': ('(d, p)', 2), 'c2': ('(d,)', 1), 'mu': ('(n,)', 1)}
    for k, (want, ndim) in shapes.items():
        if getattr(net, k).ndim != ndim: raise ValueError(f'net: {k} must have shape {want}; got {tuple(getattr(net, k).shape)}')
    if net.cov.ndim > 2: raise ValueError(f'net: cov must be a number, variances (n,) or a matrix (n, n); got {tuple(net.cov.shape)}')
    analytic = lambda: ara_moments(net.mu, net.cov, net.A, net.c1, net.B, net.c2)
    try: analytic()
    except (ValueError, TypeError) as e: raise type(e)(f'net: {e}') from None
    return analytic

def _z(a, b, se):
    "|a - b| / se, with 0 where a = b (infinities included), inf where se = 0 and a != b."
    import torch
    diff = torch.where(a == b, torch.zeros_like(a), (a - b).abs())
    return torch.where(se > 0, diff / torch.where(se > 0, se, torch.ones_like(se)),
                       torch.where(diff == 0, torch.zeros_like(diff), torch.full_like(diff, math.inf)))


# %%
#| export
def check_text(
    net:AraNetwork,      # the network checked
    result:CheckResult,  # from check_moments(net)
)->str:
    "A CheckResult as printable text: means and variances side by side, the covariances, the times and the worst |z|."
    if not isinstance(net, AraNetwork): raise TypeError(f'net must be an AraNetwork; got {type(net).__name__}')
    if not isinstance(result, CheckResult): raise TypeError(f'result must be a CheckResult from check_moments; got {type(result).__name__}')
    exact, mc, d = result.exact, result.mc, net.B.shape[0]
    p, n = net.A.shape
    if tuple(exact.mean.shape) != (d,):
        raise ValueError(f'result must come from check_moments of net: it has {tuple(exact.mean.shape)} outputs, net has {d}')
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
    net:AraNetwork,         # network and input distribution, as check_moments takes it
    samples:int=100_000,    # Monte Carlo samples, >= 2
    seed:int=0,             # Monte Carlo seed, 0 <= seed < 2^64
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
# A network that is not an `AraNetwork`, a NaN weight, a batched layer, two dtypes, too few samples and a negative seed
# are refused before any work, naming the argument; a result is only formatted beside the network it came from:

# %%
small = bundled_network(3, 5, 2)
nan_A = small.A.clone(); nan_A[0, 0] = math.nan
for args, exc, message in (((tuple(small),), TypeError, 'net must be an AraNetwork'),
                           ((small._replace(A=nan_A),), ValueError, 'net: A must be finite'),
                           ((small._replace(c1=small.c1[None]),), ValueError, 'net: c1 must have shape (p,)'),
                           ((small._replace(cov=small.cov.float()),), TypeError, 'net: floating tensors must share one dtype'),
                           ((small._replace(cov=-small.cov),), ValueError, 'net: cov must'),
                           ((small, 1), ValueError, 'samples must be >= 2'), ((small, 100, -1), ValueError, 'seed must be >= 0')):
    test_fail(check_moments, args=args, exc=exc, contains=message)
test_fail(check_text, args=(bundled_network(3, 5, 3), check_moments(small, 100)), exc=ValueError, contains='result must come from')

# %% [markdown]
# An output that does not vary at all (here the second layer is zero) has standard error 0 and $|z| = 0$, not NaN:

# %%
flat = check_moments(small._replace(B=torch.zeros_like(small.B)), 100)
test_eq((flat.z_mean.tolist(), flat.z_var.tolist(), flat.worst), ([0., 0.], [0., 0.], 0.))


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
    c.add_argument('--samples', type=_samples, default=100_000, help='Monte Carlo samples, >= 2 (default 1e5)')
    c.add_argument('--seed', type=_seed, default=0, help='Monte Carlo seed, 0 <= seed < 2^64 (default 0)')
    c.add_argument('--network-seed', type=_seed, default=2018, help='seed of the bundled network (default 2018)')
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
    labels:list|None=None, # the images' labels, if known: one class index in [0, d) per image
)->list:                   # one dict per image: index, label, logits (one dict per logit)
    "The per-image, per-logit rows of a TightnessTable, as plain Python numbers (JSON-ready)."
    N, d = _check_table(table, 'table')
    labels = None if labels is None else _check_labels(labels, N, d)
    keys = {'analytic_mean': 'mean', 'exact_var': 'var_exact', 'old_var': 'var_old', 'mc_mean': 'mc_mean',
            'mc_mean_se': 'mc_mean_se', 'mc_var': 'mc_var', 'mc_var_se': 'mc_var_se', 'er_mean': 'er_mean',
            'er_exact_var': 'er_exact', 'er_old_var': 'er_old'}
    cols = {k: getattr(table, f).tolist() for k, f in keys.items()}
    return [{'index': i, 'label': None if labels is None else labels[i],
             'logits': [{'logit': j, **{k: cols[k][i][j] for k in keys}} for j in range(d)]} for i in range(N)]

def tightness_text(
    rows:list,     # from tightness_rows
    summary:dict,  # from TightnessTable.summary: the mean E_r of 'mean', 'exact' and 'old'
)->str:
    "The rows of tightness_rows as a printable table, and the mean E_r."
    if not isinstance(summary, dict) or not {'mean', 'exact', 'old'} <= summary.keys():
        raise ValueError(f"summary must be a dict with the keys 'mean', 'exact' and 'old' (TightnessTable.summary()); got {summary!r:.80}")
    lines = [f"{'image':>5} {'logit':>5} | {'mean':>10} {'MC mean':>10} {'SE':>8} {'E_r':>6} | {'exact var':>10} "
             f"{'old var':>10} {'MC var':>10} {'SE':>8} {'E_r ex':>6} {'E_r old':>7}"]
    try:
        for r in rows:
            for g in r['logits']:
                lines.append(f"{r['index']:>5} {g['logit']:>5} | {g['analytic_mean']:>10.4f} {g['mc_mean']:>10.4f} "
                             f"{g['mc_mean_se']:>8.1e} {g['er_mean']:>6.3f} | {g['exact_var']:>10.3e} {g['old_var']:>10.3e} "
                             f"{g['mc_var']:>10.3e} {g['mc_var_se']:>8.1e} {g['er_exact_var']:>6.3f} {g['er_old_var']:>7.3f}")
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f'rows must be the rows of tightness_rows; formatting them failed: {type(e).__name__}: {e}') from None
    lines.append(f"mean E_r: mean {summary['mean']:.4f}, exact variance {summary['exact']:.4f}, "
                 f"old variance {summary['old']:.4f}")
    return '\n'.join(lines)


# %% [markdown]
# A table is checked before it is used: a `TightnessTable` whose fields are finite tensors of one floating dtype and
# one shape (images, logits), with a finite noise level $\ge 0$; a refusal names the table and the field. Labels are
# whole numbers, one per image, each a class index below the number of logits.

# %%
#| exporti
def _check_table(table, name:str)->tuple:
    "Refuse anything but a finite, one-dtype, one-shape TightnessTable, naming `name` and the field; return (N, d)."
    import torch
    from netmoments.core import check_finite
    from netmoments.tightness import TightnessTable
    if not isinstance(table, TightnessTable):
        raise TypeError(f'{name} must be a TightnessTable (from tightness_table); got {type(table).__name__}')
    sigma = table.sigma
    if isinstance(sigma, torch.Tensor) and sigma.numel() == 1: sigma = sigma.item()
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f'{name}: sigma must be a finite number >= 0; got {table.sigma!r}')
    fields = {k: getattr(table, k) for k in TightnessTable._fields[1:]}
    for k, v in fields.items():
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise TypeError(f'{name}: {k} must be a floating tensor; got {getattr(v, "dtype", type(v).__name__)}')
    odd = [f'{k} is {str(v.dtype)[6:]}' for k, v in fields.items() if v.dtype != table.mean.dtype]
    if odd: raise TypeError(f'{name}: every field must have the dtype of mean ({str(table.mean.dtype)[6:]}); ' + ', '.join(odd))
    odd = [f'{k} {tuple(v.shape)}' for k, v in fields.items() if v.shape != table.mean.shape]
    if table.mean.ndim != 2 or odd:
        raise ValueError(f'{name}: every field must have the shape (images, logits) of mean {tuple(table.mean.shape)}; '
                         + (', '.join(odd) if odd else 'mean is not 2-dimensional'))
    for k, v in fields.items(): check_finite(v, f'{name}: {k}')
    return tuple(table.mean.shape)

def _check_labels(labels, N:int, d:int)->list:
    "`labels` as a list of N ints in [0, d), or an error naming labels."
    import operator, torch
    if isinstance(labels, torch.Tensor):
        if labels.is_floating_point() or labels.is_complex(): raise TypeError(f'labels must hold whole numbers; got {labels.dtype}')
        labels = labels.tolist()
    try: labels = list(labels)
    except TypeError: raise TypeError(f'labels must be a list of class indices; got {type(labels).__name__}') from None
    if len(labels) != N: raise ValueError(f'labels must hold one label per image ({N}); got {len(labels)}')
    out = []
    for v in labels:
        try: out.append(None if isinstance(v, bool) else operator.index(v))
        except TypeError: out.append(None)
        if out[-1] is None: raise TypeError(f'labels must hold whole numbers; got {v!r}')
        if not 0 <= out[-1] < d: raise ValueError(f'labels must be class indices in [0, {d}), one per logit; got {out[-1]}')
    return out


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
    path:str|None=None,    # where to save it, atomically (the format follows the extension); None: not saved
    ax=None,               # a matplotlib Axes to draw on; None: a new Figure of its own
):                         # the matplotlib Figure drawn on
    "Log-log scatter of Monte Carlo against analytic (exact and old) variances, saved to `path`; returns the Figure."
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    import torch
    _check_table(table, 'table')
    if path is not None:
        if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
            raise TypeError(f'path must be a file name (str or os.PathLike); got {type(path).__name__}')
        path = os.fspath(path)
        if _figure_format(path) is None: raise ValueError(f'path must end in .{", .".join(_FIGURE_FORMATS)}; got {path!r}')
        why = output_problem(path)
        if why: raise ValueError(f'path: {why}')
    if ax is not None and not isinstance(ax, Axes): raise TypeError(f'ax must be a matplotlib Axes; got {type(ax).__name__}')
    mc, exact, old = (v.detach().flatten().cpu() for v in (table.mc_var, table.var_exact, table.var_old))
    positive = torch.cat([mc, exact, old])
    positive = positive[positive > 0]
    low, high = (positive.min().item() / 1.3, positive.max().item() * 1.3) if len(positive) else (1e-6, 1.)
    if ax is None: ax = Figure(figsize=(4.5, 4.5), layout='constrained').subplots()
    fig = ax.figure
    ax.loglog(exact, mc, 'o', ms=3, label='exact')
    ax.loglog(old, mc, 'x', ms=4, label='old (zero mean)')
    ax.plot([low, high], [low, high], 'k--', lw=1, label='equal')
    ax.set(xlim=(low, high), ylim=(low, high), aspect='equal', xlabel='analytic variance',
           ylabel='Monte Carlo variance', title=f'sigma = {float(table.sigma):g}')
    for axis in (ax.xaxis, ax.yaxis): _log_ticks(axis, low, high)
    ax.legend(loc='upper left')
    if path: write_atomic(path, lambda f: fig.savefig(f, format=_figure_format(path), dpi=120), binary=True)
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
# A table with a NaN, with two dtypes or not a `TightnessTable` at all, labels that do not fit it, and a figure name
# without a known format or in a missing folder are refused, naming the argument and the field:

# %%
nan_table = table._replace(mc_var=table.mc_var.clone().fill_(math.nan))
for fn, args, exc, message in ((tightness_rows, (nan_table,), ValueError, 'table: mc_var must be finite'),
                               (tightness_rows, (table._replace(er_old=table.er_old.float()),), TypeError, 'er_old is float32'),
                               (tightness_rows, (tuple(table),), TypeError, 'table must be a TightnessTable'),
                               (tightness_rows, (table, [1]), ValueError, 'one label per image (2)'),
                               (tightness_rows, (table, [1, 10]), ValueError, 'labels must be class indices in [0, 10)'),
                               (tightness_rows, (table, [1, 2.5]), TypeError, 'labels must hold whole numbers'),
                               (tightness_text, ([], {}), ValueError, 'summary must be a dict'),
                               (tightness_text, ([{'index': 0}], table.summary()), ValueError, 'rows must be the rows'),
                               (tightness_figure, (nan_table,), ValueError, 'table: mc_var must be finite'),
                               (tightness_figure, (table, 'figure.txt'), ValueError, 'path must end in .png'),
                               (tightness_figure, (table, '/no/such/folder/t.png'), ValueError, 'does not exist'),
                               (tightness_figure, (table, None, 'axes'), TypeError, 'ax must be a matplotlib Axes')):
    test_fail(fn, args=args, exc=exc, contains=message)
test_eq([r['label'] for r in tightness_rows(table, torch.tensor([7, 2]))], [7, 2])

# %% [markdown]
# The figure is written atomically like the JSON, in each format the command line offers, all of which matplotlib
# writes:

# %%
assert set(_FIGURE_FORMATS) <= set(FigureCanvasBase.get_supported_filetypes())
with tempfile.TemporaryDirectory() as tmp:
    for ext in ('png', 'svg'): tightness_figure(table, os.path.join(tmp, f't.{ext}'))
    test_eq(sorted(os.listdir(tmp)), ['t.png', 't.svg'])
    test_eq(open(os.path.join(tmp, 't.png'), 'rb').read(8), b'\x89PNG\r\n\x1a\n')

# %% [markdown]
# `netmoments tightness` prints the table of `tightness_text` and, with `--json PATH`, writes its rows with the
# settings and the mean $E_r$; a figure only when `--figure PATH` asks for one.

# %%
#| exporti
_MODELS = {'lenet-mnist': 3}   # the bundled networks tightness takes, with their number of ReLU modules (largest layer)
_MNIST_SLICE = 1000            # images in the bundled MNIST slice
_SIGMA_MAX = 1e15              # noise beyond this brings the float32 Monte Carlo variances near overflow

def _tightness_parser(sub):
    "The options of `netmoments tightness`."
    t = sub.add_parser('tightness', help='analytic moments of the two-stage linearized LeNet beside Monte Carlo, with E_r',
                       description='Analytic mean and variances of the two-stage linearized bundled LeNet beside Monte '
                                   'Carlo of the real network on bundled MNIST test images, with their E_r.')
    t.add_argument('--model', choices=tuple(_MODELS), default='lenet-mnist', help='bundled network (default lenet-mnist)')
    t.add_argument('--layer', type=_Count(1, max(_MODELS.values()), ' (the number of ReLU modules of the network)'),
                   default=3, help='l of the two-stage linearization: split at the l-th ReLU (default 3)')
    t.add_argument('--at', choices=('relu', 'pre'), default='relu',
                   help='top-stage point of the linearization (default relu)')
    t.add_argument('--ties', choices=('split', 'first'), default='split',
                   help="tied max-pooling windows: split the derivative evenly (default) or give it to the first")
    t.add_argument('--sigma', type=_Number(0., _SIGMA_MAX, ' (larger noise brings the float32 Monte Carlo near overflow)'),
                   default=0.01, help='noise level: trace of the covariance = sigma^2 * 784 (default 0.01, at most 1e15)')
    t.add_argument('--images', type=_Count(1, _MNIST_SLICE, f' (the bundled MNIST slice holds {_MNIST_SLICE} images)'),
                   default=3, help=f'first images of the bundled MNIST slice, at most {_MNIST_SLICE} (default 3)')
    t.add_argument('--samples', type=_samples, default=10_000, help='Monte Carlo samples per image, >= 2 (default 1e4)')
    t.add_argument('--seed', type=_seed, default=0,
                   help='seed of the covariances and of Monte Carlo, 0 <= seed < 2^64 (default 0)')
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
    s.add_argument('--folds', type=_positive_int, nargs='+', default=[2, 6], help='augmentation folds N (default 2 6)')
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
    b.add_argument('--devices', type=_device, nargs='+', default=None, metavar='DEVICE',
                   help="devices to time on, e.g. cpu cuda (default: cpu, and cuda when torch sees one)")
    b.add_argument('--pairs', type=_positive_int, default=100_000,
                   help='Gaussian pairs for the cross-moment benchmarks (default 1e5)')
    b.add_argument('--mc-samples', type=_samples, default=10_000,
                   help='Monte Carlo samples for the network benchmark, >= 2 (default 1e4)')
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
# ## `netmoments run`
# Runs a registered experiment of the papers ([The papers' experiments as grids](24_experiments.ipynb)) with the
# [experiment runner](23_runner.ipynb): on a local Ray instance by default, on a Ray cluster with `--address`, or in
# this process with `--engine local`. `--dry-run` lists the units with their estimated cost and does nothing else;
# `--merge` only merges a complete run. Every option is checked before the first unit starts: the preset against the
# experiment's, a shard and a list of units against the size of its grid, and the output folder must exist or be
# creatable.

# %%
#| exporti
def _shard(text:str)->str:
    "argparse type: 'i/n' with 0 <= i < n."
    m = re.fullmatch(r'(0|[1-9][0-9]*)/([1-9][0-9]*)', text)
    if not m or int(m[1]) >= int(m[2]): raise argparse.ArgumentTypeError(f"expected 'i/n' with 0 <= i < n, got {text!r}")
    return text

def _unit_list(text:str)->str:
    "argparse type: unit indices and ranges such as '0,3,5-9'."
    if not re.fullmatch(r'(0|[1-9][0-9]*)(-(0|[1-9][0-9]*))?(,(0|[1-9][0-9]*)(-(0|[1-9][0-9]*))?)*', text):
        raise argparse.ArgumentTypeError(f"expected indices and ranges such as '0,3,5-9', got {text!r}")
    for part in text.split(','):
        lo, _, hi = part.partition('-')
        if hi and int(hi) < int(lo): raise argparse.ArgumentTypeError(f'{part}: a range must not run backwards')
    return text

def _run_folder(text:str)->str:
    "argparse type: a folder for the run's files, existing or creatable (its nearest existing parent writable)."
    if not text or '\0' in text: raise argparse.ArgumentTypeError(f'expected a folder name, got {text!r}')
    path = os.path.abspath(text)
    if os.path.exists(path) and not os.path.isdir(path): raise argparse.ArgumentTypeError(f'{text} exists and is not a folder')
    parent = path
    while not os.path.exists(parent): parent = os.path.dirname(parent)
    if not os.path.isdir(parent): raise argparse.ArgumentTypeError(f'cannot create {text}: {parent} is not a folder')
    why = output_problem(os.path.join(parent, 'probe.json'))
    if why: raise argparse.ArgumentTypeError(f'cannot write into {text}: {why}')
    return text

def _address(text:str)->str:
    "argparse type: a Ray address ('auto', 'HOST:PORT' or 'ray://HOST:PORT')."
    if not re.fullmatch(r'auto|local|(ray://)?[A-Za-z0-9_.\-]+:[0-9]{1,5}', text):
        raise argparse.ArgumentTypeError(f"expected 'auto', 'HOST:PORT' or 'ray://HOST:PORT', got {text!r}")
    return text

def _experiment_names()->list:
    "Names of the registered experiments (importing `netmoments.experiments`, which needs no torch)."
    import netmoments.experiments
    from netmoments.runner import EXPERIMENTS
    return sorted(EXPERIMENTS)

def _run_parser(sub):
    "The options of `netmoments run`."
    r = sub.add_parser('run', help="run a registered experiment of the papers as a grid of units (Ray or in process)",
                       description='Run a registered experiment as independent units, each saved atomically with its '
                                   'provenance; --resume continues an interrupted run; the merged result is written '
                                   'when the grid is complete.')
    r.add_argument('experiment', choices=_experiment_names(), help='the experiment to run')
    r.add_argument('--preset', type=_name, help="grid preset (default: the experiment's first, the paper's full grid)")
    r.add_argument('--out', type=_run_folder, default='results',
                   help='folder of runs: units in OUT/NAME-PRESET/units, the result in OUT/NAME-PRESET.json (default results)')
    r.add_argument('--engine', choices=('ray', 'local'), default='ray',
                   help="'ray' (default: a local Ray instance, or the cluster at --address) or 'local' (this process)")
    r.add_argument('--address', type=_address, help="address of a running Ray cluster ('auto', HOST:PORT, ray://HOST:PORT)")
    r.add_argument('--workers', type=_positive_int, help='CPUs of the local Ray instance (default: all)')
    r.add_argument('--shard', type=_shard, help="run every n-th unit from the i-th: 'i/n'")
    r.add_argument('--units', type=_unit_list, help="run these units only, e.g. '0,3,5-9'")
    r.add_argument('--resume', action='store_true', help='skip units already on disk (continue an interrupted run)')
    r.add_argument('--dry-run', action='store_true', help='list the units to run with their estimated cost; run nothing')
    r.add_argument('--merge', action='store_true', help='only merge the units of a complete run into its result file')
    r.add_argument('--no-progress', action='store_true', help='no progress bar')
    r.set_defaults(run=_run, check=_run_check)

def _name(text:str)->str:
    "argparse type: a preset name (letters, digits, '-', '_')."
    if not re.fullmatch(r'[A-Za-z0-9_\-]+', text): raise argparse.ArgumentTypeError(f'expected a preset name, got {text!r}')
    return text

def _run_check(args, sub):
    "Checks of `netmoments run` that need the experiment: its preset, and the units against its grid."
    from netmoments.runner import experiment, finished_units, run_dir, select_units
    exp = experiment(args.experiment)
    if args.preset is not None and args.preset not in exp.presets:
        sub.error(f'argument --preset: {args.experiment} has no preset {args.preset!r}; choose one of {", ".join(exp.presets)}')
    if args.address and args.engine != 'ray': sub.error('argument --address: needs --engine ray')
    grid = exp.units(args.preset)
    if args.units:
        try: select_units(len(grid), units=args.units)
        except ValueError as e: sub.error(f'argument --units: {e}')
    try: found = finished_units(run_dir(args.out, args.experiment, exp.preset(args.preset)), grid)
    except ValueError as e: sub.error(f'argument --out: {e}')
    if found and not (args.resume or args.dry_run or args.merge):
        sub.error(f'argument --resume: {args.out} already holds {len(found)} finished units of this run; '
                  'pass --resume to continue it, or choose another --out folder')

def _run(args)->int:
    "Run `netmoments run`."
    from netmoments.runner import experiment, merge, run, run_dir, select_units, unit_name
    exp = experiment(args.experiment)
    preset = exp.preset(args.preset)
    if args.merge:
        print(f'wrote {merge(args.experiment, preset, args.out)}')
        return 0
    if args.dry_run:
        grid = exp.units(preset)
        folder = run_dir(args.out, args.experiment, preset)
        chosen = select_units(len(grid), args.shard, args.units)
        todo = [i for i in chosen if not (folder / unit_name(i, grid[i])).exists()]
        cost = sum(exp.cost(grid[i]) for i in todo)
        for i in todo: print(f'{i:5d}  ~{exp.cost(grid[i]):8.0f} s  {json.dumps(grid[i])}')
        print(f'{args.experiment}-{preset}: {len(todo)} of {len(chosen)} selected units to run (grid of {len(grid)}); '
              f'~{cost / 3600:.3g} core-hours, {exp.gpus * len(todo):g} GPU units')
        return 0
    summary = run(args.experiment, preset, out=args.out, engine=args.engine, address=args.address,
                  workers=args.workers, resume=args.resume, shard=args.shard, units=args.units,
                  progress=not args.no_progress)
    print(f'{args.experiment}-{preset}: {len(summary.done)} units run, {len(summary.skipped)} found on disk, '
          f'{summary.pending} still missing, {summary.wall_s:.1f} s')
    if summary.merged: print(f'wrote {summary.merged}')
    return 0


# %% [markdown]
# ## The entry point
# `main` parses the command line and runs the sub-command; `netmoments` is installed as a console script pointing at
# it (`settings.ini`), and `python -m netmoments` runs it too ([Running the package](91_main.ipynb)). Besides the
# checks of each option, it refuses a figure and a JSON file of the same name, which would overwrite each other. A value
# that starts with a dash and is not a plain negative number (`-inf`, `-1e3`) looks like an option to argparse, which
# ends a list of values there: after the values of a list option (`--batch`, `--folds`, `--devices`) it is reported as
# a bad value of that option rather than as an unknown argument.

# %%
#| export
def _parser():
    "The parser of the `netmoments` command line, with one sub-parser per command."
    ap = argparse.ArgumentParser(prog='netmoments', description='Probabilistic moments of ReLU networks under Gaussian input.')
    ap.add_argument('--version', action='version', version=f'%(prog)s {__version__}', help='print the version and exit')
    sub = ap.add_subparsers(dest='command', required=True, metavar='COMMAND',
                            help="the command to run; 'netmoments COMMAND --help' describes its options")
    for add in (_check_parser, _bench_parser, _tightness_parser, _stepcost_parser, _run_parser): add(sub)
    return ap

def _unrecognized(sub, argv:list, extra:list):
    "argparse's error for tokens it left over; one right after the values of a multi-value option is a bad value of it."
    token = extra[0]
    before = argv[:argv.index(token)] if token in argv else []
    flags = [i for i, t in enumerate(before) if t.startswith('-') and t.split('=')[0] in sub._option_string_actions]
    action = sub._option_string_actions[before[flags[-1]].split('=')[0]] if flags else None
    if action is not None and action.nargs in ('+', '*') and action.type is not None:
        try: action.type(token)
        except argparse.ArgumentTypeError as e: sub.error(f'argument {"/".join(action.option_strings)}: {e}')
    sub.error(f'unrecognized arguments: {" ".join(extra)}')

def main(argv:list|None=None)->int:
    "The `netmoments` command: `check`, `bench`, `tightness`, `stepcost` or `run`."
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = _parser()
    args, extra = ap.parse_known_args(argv)
    sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction)).choices[args.command]
    if extra: _unrecognized(sub, argv, extra)
    json_path, figure = getattr(args, 'json', None), getattr(args, 'figure', None)
    if json_path and figure and os.path.realpath(json_path) == os.path.realpath(figure):
        sub.error(f'argument --figure: {figure} is also the --json file; give them different names')
    if hasattr(args, 'check'): args.check(args, sub)
    return args.run(args)


# %% [markdown]
# Every option, of the command and of each sub-command, has a help text:

# %%
ap = _parser()
subparsers = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction)).choices
test_eq(sorted(subparsers), ['bench', 'check', 'run', 'stepcost', 'tightness'])
for parser in (ap, *subparsers.values()):
    for action in parser._actions: assert action.help, (parser.prog, action.option_strings)

# %% [markdown]
# `netmoments run --dry-run` lists a grid without running anything: here the robust-training experiment in its
# reduced preset, whose 26 units are all still to run in an empty folder:

# %%
with tempfile.TemporaryDirectory() as tmp:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf): test_eq(main(['run', 'robust-training', '--preset', 'cpu', '--out', tmp, '--dry-run']), 0)
print('\n'.join(buf.getvalue().splitlines()[-4:]))
assert '26 of 26 selected units to run' in buf.getvalue()

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
# In this process: each refusal is argparse's, exit status 2 with a line naming the option; a figure and a JSON file of
# the same name are refused too. The limits of `tightness` are those of the bundled network and images:

# %%
def refusal(argv):
    "Exit status and error line of `main(argv)`, which must end in SystemExit."
    with contextlib.redirect_stderr(io.StringIO()) as err:
        try: main(argv)
        except SystemExit as e: return e.code, err.getvalue().strip().splitlines()[-1]
    raise AssertionError(f'{argv} did not exit')

for argv, message in ((['tightness', '--images', '1001'], 'argument --images: must be <= 1000'),
                      (['tightness', '--layer', '4'], 'argument --layer: must be <= 3'),
                      (['tightness', '--model', 'resnet'], 'argument --model: invalid choice'),
                      (['tightness', '--sigma', '1e16'], 'argument --sigma: must be <= 1e+15'),
                      (['check', '--seed', str(2**64)], 'argument --seed: must be <='),
                      (['bench', '--devices'], 'argument --devices: expected at least one argument'),
                      (['stepcost', '--folds', '2', '-inf'], "argument --folds: expected a whole number >= 1, got '-inf'"),
                      (['check', '--bogus'], 'unrecognized arguments: --bogus'),
                      (['tightness', '--json', 'same.png', '--figure', 'same.png'], 'argument --figure: same.png is also the --json file')):
    code, line = refusal(argv)
    test_eq(code, 2)
    assert line.startswith(f'netmoments {argv[0]}: error: {message}'), line
assert not os.path.exists('same.png')
test_eq(set(_MODELS), set(_PRETRAINED))
test_eq(sum(isinstance(m, torch.nn.ReLU) for m in pretrained().modules()), _MODELS['lenet-mnist'])
test_eq(len(mnist_slice()[0]), _MNIST_SLICE)

# %% [markdown]
# `check` runs end to end (here with few samples) and writes its JSON when asked; a CUDA request without CUDA is
# refused before any work:

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
    test_eq(refusal(['check', '--device', 'cuda']), (2, 'netmoments check: error: argument --device: cuda asked for, but torch sees no CUDA device'))

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
if not torch.cuda.is_available(): test_eq(refusal(['stepcost', '--device', 'cuda'])[0], 2)

# %% [markdown]
# ## Export -

# %%
#| hide
#| eval: false
import nbdev; nbdev.nbdev_export()

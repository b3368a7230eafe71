# %% [markdown]
# # Benchmarks
# > How fast the exact moments are: cross-moment throughput, Lemma 4's series, and analytic moments against Monte Carlo at equal accuracy

# %%
#| default_exp bench

# %%
#| export
from __future__ import annotations
import time
from typing import Callable, NamedTuple
import torch
from netmoments.ara import ara_moments
from netmoments.core import check_count, check_device
from netmoments.montecarlo import mc_moments
from netmoments.relu import relu_cross_moment, relu_cross_moment_series

# %%
#| hide
import os
import matplotlib.pyplot as plt
from IPython.display import display
from fastcore.test import test_eq, test_fail
from netmoments.core import Table


# %% [markdown]
# Every figure here is a ratio measured side by side in one run, so it carries over to other hardware better than the
# absolute numbers do. The functions are exported so that `netmoments bench` prints the same table on any computer,
# with CUDA rows where torch sees a GPU. Timings are the best of `repeats` runs after one warm-up, with
# `torch.cuda.synchronize` around GPU work. On a CPU shared with other work, run with `OMP_WAIT_POLICY=PASSIVE` (as
# `make bench` does): OpenMP threads that spin while the cores are busy elsewhere make small torch operations many times
# slower and the table meaningless.

# %%
#| export
def best_time(
    fn:Callable,     # the work to time, called with no argument
    repeats:int=3,   # timed runs after one warm-up; the best is kept
    device:str|torch.device='cpu',  # synchronized before and after each run when it is a CUDA device
)->float:            # seconds
    "Best wall-clock time of `fn()` over `repeats` runs, after a warm-up."
    if not callable(fn): raise TypeError(f'fn must be callable with no argument; got {type(fn).__name__}')
    repeats = check_count(repeats, 'repeats', 1)
    sync = torch.cuda.synchronize if check_device(device, 'device').type == 'cuda' else (lambda: None)
    fn(); sync()
    best = float('inf')
    for _ in range(repeats):
        t0 = time.perf_counter(); fn(); sync()
        best = min(best, time.perf_counter() - t0)
    return best


# %%
test_eq(best_time(lambda: None, repeats=2) < 0.01, True)
test_fail(lambda: best_time(lambda: None, repeats=0), exc=ValueError, contains='repeats must be >= 1; got 0')
test_fail(lambda: best_time(None), exc=TypeError, contains='fn must be callable')
test_fail(lambda: best_time(lambda: None, device='gpu'), exc=ValueError, contains="device must name a torch device")


# %% [markdown]
# ## The benchmarks
# 1. Exact `relu_cross_moment` evaluations per second, float64 and float32, on random pairs from the paper's range.
# 2. The Lemma 4 series of [Alfadly et al. (2020)](99_references.ipynb#alfadly2020) at 5 and 20 terms on the same
#    pairs, as a ratio to the exact form.
# 3. `ara_moments` (exact mean and full covariance) against `mc_moments` with $10^4$ samples, the accuracy the papers'
#    Monte Carlo references use, on a random Affine-ReLU-Affine network.

# %%
#| export
class BenchRow(NamedTuple):
    "One measurement: what, where, the figure and its unit, and its ratio to the row's baseline."
    name:str      # what was timed
    device:str    # 'cpu' or 'cuda'
    dtype:str     # 'float64' or 'float32'
    value:float   # the measured figure, in `unit`
    unit:str      # 'pairs/s' (throughput) or 'ms' (time per call)
    ratio:float   # times faster than `baseline` (1 on the baseline's own row)
    baseline:str  # the row this one is compared with

def _pairs(count, dtype, device, generator):
    "Random (mu1, mu2, var1, var2, cov12) over the range of Alfadly et al. 2020, Fig. 2, |rho| < 0.7."
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(count, generator=generator, dtype=torch.float64)
    s1, s2, rho = u(0.2, 2), u(0.2, 2), u(-0.69, 0.69)
    args = (u(-2, 2), u(-2, 2), s1**2, s2**2, rho * s1 * s2)
    return tuple(x.to(dtype=dtype, device=device) for x in args)


# %%
#| export
def bench_pairs(
    device:str='cpu',        # 'cpu' or 'cuda'
    count:int=100_000,       # pairs per call
    repeats:int=3,           # timed runs, best kept
    seed:int=0,              # seeds the random pairs
)->list:                     # BenchRow list: exact form per dtype, and the series at 5 and 20 terms (float64)
    "Throughput of the exact cross moment (float64, float32) and of the Lemma 4 series (Alfadly et al. 2020), on `count` random pairs."
    count, repeats = check_count(count, 'count', 1), check_count(repeats, 'repeats', 1)
    device, gen = check_device(device, 'device'), torch.Generator().manual_seed(check_count(seed, 'seed', 0))
    rows, exact_time = [], {}
    for dtype in (torch.float64, torch.float32):
        args = _pairs(count, dtype, device, gen)
        t = best_time(lambda: relu_cross_moment(*args), repeats, device)
        exact_time[dtype] = t
        rows.append(BenchRow('exact E[relu relu]', str(device), str(dtype)[6:], count / t, 'pairs/s',
                             exact_time[torch.float64] / t, 'exact float64'))
    args = _pairs(count, torch.float64, device, gen)
    for terms in (5, 20):
        t = best_time(lambda: relu_cross_moment_series(*args, terms=terms), repeats, device)
        rows.append(BenchRow(f'Lemma 4 series, {terms} terms', str(device), 'float64', count / t, 'pairs/s',
                             exact_time[torch.float64] / t, 'exact float64'))
    return rows


# %%
#| export
def bench_ara_vs_mc(
    device:str='cpu',        # 'cpu' or 'cuda'
    n:int=100, p:int=256, d:int=10,   # network sizes: input, hidden, output
    mc_samples:int=10_000,   # the Monte Carlo sample count compared against
    repeats:int=3,           # timed runs, best kept
    seed:int=0,              # seeds the random network and input
)->list:                     # BenchRow list: analytic time, MC time and their ratio, per dtype
    "Time of `ara_moments` (exact mean and covariance) against `mc_moments` with `mc_samples` samples."
    n, p, d = (check_count(v, name, 1) for v, name in ((n, 'n'), (p, 'p'), (d, 'd')))
    mc_samples, repeats = check_count(mc_samples, 'mc_samples', 2), check_count(repeats, 'repeats', 1)
    device, gen = check_device(device, 'device'), torch.Generator().manual_seed(check_count(seed, 'seed', 0))
    rows = []
    for dtype in (torch.float64, torch.float32):
        mk = lambda *shape, scale=1.: (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype=dtype, device=device)
        A, c1, B, c2 = mk(p, n, scale=n**-0.5), mk(p, scale=0.5), mk(d, p, scale=p**-0.5), mk(d)
        mu, L = mk(n), mk(n, n, scale=n**-0.5)
        cov = L @ L.mT + 1e-3 * torch.eye(n, dtype=dtype, device=device)
        net = lambda x: torch.relu(x @ A.mT + c1) @ B.mT + c2
        t_ara = best_time(lambda: ara_moments(mu, cov, A, c1, B, c2), repeats, device)
        t_mc = best_time(lambda: mc_moments(net, mu, cov, n=mc_samples, seed=seed), repeats, device)
        size = f'n={n} p={p} d={d}'
        rows.append(BenchRow(f'ara_moments exact ({size})', str(device), str(dtype)[6:], t_ara * 1e3, 'ms', t_mc / t_ara,
                             f'mc_moments {mc_samples:.0e} samples'))
        rows.append(BenchRow(f'mc_moments {mc_samples:.0e} samples ({size})', str(device), str(dtype)[6:], t_mc * 1e3, 'ms',
                             1., f'mc_moments {mc_samples:.0e} samples'))
    return rows


# %% [markdown]
# `run_benchmarks` runs both on the CPU and, when present, on CUDA (`sizes` sets the network's widths); `format_rows` writes them as one fixed-width text
# table for the terminal (what `netmoments bench` prints). The ratio column is "times faster than the baseline" (the
# baseline's own row reads 1).

# %%
#| export
def run_benchmarks(
    devices:list|None=None,  # default: cpu, and cuda when available
    count:int=100_000,       # pairs for the cross-moment benchmarks
    mc_samples:int=10_000,   # Monte Carlo samples for the network benchmark
    repeats:int=3,           # timed runs, best kept
    sizes:tuple=(100, 256, 10),  # (n, p, d): input, hidden and output width of the network benchmark
)->list:                     # BenchRow list
    "All benchmarks on every device."
    count, repeats = check_count(count, 'count', 1), check_count(repeats, 'repeats', 1)
    mc_samples = check_count(mc_samples, 'mc_samples', 2)
    if not isinstance(sizes, (tuple, list)) or len(sizes) != 3:
        raise TypeError(f'sizes must be a tuple (n, p, d) of three widths; got {sizes!r}')
    n, p, d = (check_count(v, 'sizes', 1) for v in sizes)
    if devices is not None and (isinstance(devices, (str, torch.device)) or not hasattr(devices, '__iter__')):
        raise TypeError(f'devices must be a list of devices or None; got {devices!r}')
    devices = [check_device(d, 'devices') for d in devices] if devices else \
              [torch.device('cpu')] + ([torch.device('cuda')] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        rows += bench_pairs(device, count, repeats) + bench_ara_vs_mc(device, n, p, d, mc_samples, repeats)
    return rows

def format_rows(rows:list)->str:
    "The rows as an aligned text table."
    if not isinstance(rows, (list, tuple)) or not all(isinstance(r, BenchRow) for r in rows):
        found = type(rows).__name__ if not isinstance(rows, (list, tuple)) else \
                f'a {next(type(r).__name__ for r in rows if not isinstance(r, BenchRow))} in the list'
        raise TypeError(f'rows must be a list of BenchRow; got {found}')
    head = f"{'benchmark':<44} {'device':<6} {'dtype':<8} {'value':>12} {'unit':<8} {'ratio':>8}  baseline"
    lines = [head, '-' * len(head)]
    for r in rows:
        lines.append(f'{r.name:<44} {r.device:<6} {r.dtype:<8} {r.value:>12.4g} {r.unit:<8} {r.ratio:>8.3g}  {r.baseline}')
    return '\n'.join(lines)


# %% [markdown]
# Sizes, counts and devices are checked before anything is timed:

# %%
test_fail(lambda: bench_pairs(count=0), exc=ValueError, contains='count must be >= 1; got 0')
test_fail(lambda: bench_pairs(seed=2.5), exc=TypeError, contains='seed must be an int')
test_fail(lambda: bench_ara_vs_mc(p=0), exc=ValueError, contains='p must be >= 1; got 0')
test_fail(lambda: bench_ara_vs_mc(mc_samples=1), exc=ValueError, contains='mc_samples must be >= 2; got 1')
test_fail(lambda: run_benchmarks(devices='cpu'), exc=TypeError, contains='devices must be a list of devices')
test_fail(lambda: run_benchmarks(devices=['tpu']), exc=ValueError, contains='devices must name a torch device')
test_fail(lambda: run_benchmarks(repeats=2.5), exc=TypeError, contains='repeats must be an int')
test_fail(lambda: run_benchmarks(sizes=(100, 0, 10)), exc=ValueError, contains='sizes must be >= 1; got 0')
test_fail(lambda: format_rows([('a', 'cpu')]), exc=TypeError, contains='rows must be a list of BenchRow; got a tuple')

# %% [markdown]
# ## Measured on the CPU
# A run smaller than the CLI's default, so that the notebook stays quick; the ratios, not the absolute numbers, are
# what to compare, and the caption says how many cores and torch threads the run had. Nothing here is asserted about
# speed (timings are noisy when other work shares the cores); the table is the result:

# %%
bench_header = ['benchmark', 'device', 'dtype', 'value', 'unit', 'ratio', 'baseline']   # format_rows' columns

def bench_table(rows, caption=None):
    "BenchRows as a `Table`, the columns of `format_rows`."
    return Table(rows, bench_header, fmt={'value': '.4g', 'ratio': '.3g'}, caption=caption)

rows = run_benchmarks(devices=['cpu'], count=20_000, mc_samples=10_000, repeats=2)
test_eq(len(rows), 8)
assert all(r.value > 0 and r.ratio > 0 for r in rows)
test_eq(format_rows(rows).splitlines()[0].split(), bench_header)
bench_table(rows, f'CPU: {os.cpu_count()} cores, {torch.get_num_threads()} torch threads')

# %%
#| label: fig-bench
#| fig-cap: "Speed-ups measured side by side in one CPU run: each bar is the baseline's time over the benchmark's (log scale)."
fig, ax = plt.subplots(figsize=(6, 3), layout='constrained')
shown = [r for r in rows if r.ratio != 1 or r.name.startswith('exact')]
ax.barh([f'{r.name}\n{r.dtype}' for r in shown], [r.ratio for r in shown], color='C0')
ax.axvline(1, color='k', lw=0.8)
ax.set_xscale('log'); ax.set(xlabel='times faster than the baseline'); ax.tick_params(axis='y', labelsize=7);

# %% [markdown]
# ## On a GPU
# `netmoments bench` adds CUDA rows when torch sees a device, and the cell below does the same; where torch sees no
# GPU it says so, and the page shows CPU figures only.

# %%
if torch.cuda.is_available():
    gpu_rows = run_benchmarks(devices=['cuda'])
    assert all(r.value > 0 for r in gpu_rows)
    display(bench_table(gpu_rows, torch.cuda.get_device_name()))
else: print('no CUDA device: GPU benchmarks not run')

# %% [markdown]
# ## Export -

# %%
#| hide
#| eval: false
import nbdev; nbdev.nbdev_export()

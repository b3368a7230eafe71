# %% [markdown]
# # Running the package
# > `python -m netmoments`: the `netmoments` command without the console script

# %%
#| default_exp __main__

# %% [markdown]
# `python -m netmoments ARGS` runs `netmoments.cli.main` with the same arguments as the `netmoments` console script,
# and exits with its status: useful where the script's folder is not on `PATH`, or to pick the interpreter explicitly.
# Python runs this module as `__main__` inside the package; a notebook kernel, whose `__name__` is `'__main__'` too,
# has no package, so running this cell here does nothing.

# %%
#| export
import sys
from netmoments.cli import main

if __name__ == '__main__' and __package__: sys.exit(main())

# %%
#| hide
import subprocess
from fastcore.test import test_eq
from netmoments import __version__

# %% [markdown]
# The module prints the version as the console script does:

# %%
out = subprocess.run([sys.executable, '-m', 'netmoments', '--version'], capture_output=True, text=True, check=True).stdout
test_eq(out.strip(), f'netmoments {__version__}')

# %% [markdown]
# ## Export -

# %%
#| hide
#| eval: false
import nbdev; nbdev.nbdev_export()

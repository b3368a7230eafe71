# %% [markdown]
# # Preface {.unnumbered}
# > Probabilistic moments of piecewise-linear neural networks under Gaussian input, and the experiments of the papers that use them

# %% [markdown]
# `netmoments` computes what a ReLU network does to a Gaussian input $x \sim \mathcal N(\mu, \Sigma)$ in closed form:
# the exact mean and covariance of $g(x) = B\,\mathrm{relu}(Ax + c_1) + c_2$
# ([Bibi et al. (2018)](99_references.ipynb#bibi2018); [Alfadly et al. (2020)](99_references.ipynb#alfadly2020)), the
# Price's-theorem identities behind them, and the Monte Carlo reference every formula is checked against. Linearized
# around an input, a deep ReLU network takes the Affine-ReLU-Affine form, and the same moments then predict how its
# logits react to Gaussian noise, build Gaussian attacks, and give the analytic regularizer of
# [Alfadly et al. (2019)](99_references.ipynb#alfadly2019) for training networks robust to noise. Beside them stand the
# lower bounds on the robustness to adversarial perturbations of [Peck et al. (2017)](99_references.ipynb#peck2017) and
# [Peck (2017)](99_references.ipynb#peck2017thesis), checked against minimal-norm attacks, and the gradient
# regularization family of [Lyu et al. (2015)](99_references.ipynb#lyu2015).
#
# Each chapter states a result with the paper's label, derives it with sympy, checks it in float64 against an
# independent reference, and then gives the code of the `netmoments` package and its tests; the experiments set our
# numbers beside the published ones.
#
# ```python
# import torch
# from netmoments.ara import ara_moments
# from netmoments.montecarlo import mc_moments
# ```

# %% [markdown]
# ## Foundations
#
# | chapter | what it holds | papers |
# |---|---|---|
# | [Core checks](00_core.ipynb) | input validation shared by all chapters, and the `Table` that shows results | |
# | [Gaussian toolbox](01_gaussian.ipynb) | normal pdf and cdf with accurate tails, the bivariate normal CDF $\Phi_2$ | [Genz (2004)](99_references.ipynb#genz2004), [Drezner and Wesolowsky (1990)](99_references.ipynb#drezner1990) |
# | [Monte Carlo](02_montecarlo.ipynb) | the seeded, streaming reference estimator with standard errors | |
# | [ReLU moments](03_relu.ipynb) | Remark 1 and Lemmas 1, 3 and 4, and the exact general-mean $\mathbb E[\mathrm{relu}(z_1)\,\mathrm{relu}(z_2)]$ | [Bibi et al. (2018)](99_references.ipynb#bibi2018), [Alfadly et al. (2020)](99_references.ipynb#alfadly2020), [Rosenbaum (1961)](99_references.ipynb#rosenbaum1961) |
# | [Price's theorem](04_price.ipynb) | Lemma 2, symbolic and numeric checks | [Price (1958)](99_references.ipynb#price1958), [Bibi et al. (2018)](99_references.ipynb#bibi2018) |
# | [Affine-ReLU-Affine networks](05_ara.ipynb) | Theorems 1–2 and the exact output mean and covariance | [Bibi et al. (2018)](99_references.ipynb#bibi2018), [Alfadly et al. (2020)](99_references.ipynb#alfadly2020) |
# | [Benchmarks](06_bench.ipynb) | speed of the exact moments against Monte Carlo and the series | |
#
# ## Deep networks
#
# | chapter | what it holds | papers |
# |---|---|---|
# | [Datasets](07_data.ipynb) | MNIST, Fashion-MNIST, Iris, Wine, Spambase and CIFAR-10/100 as tensors, read offline | [LeCun et al. (1998)](99_references.ipynb#lecun1998), [Xiao et al. (2017)](99_references.ipynb#xiao2017), [Krizhevsky (2009)](99_references.ipynb#krizhevsky2009) |
# | [Models](08_models.ipynb) | the papers' LeNet, bundled with its trained weights, and the synthetic FC and Conv networks | [Bibi et al. (2018)](99_references.ipynb#bibi2018), [Alfadly et al. (2020)](99_references.ipynb#alfadly2020) |
# | [Two-stage linearization](09_linearize.ipynb) | a ReLU network split at its $l$-th ReLU into an Affine-ReLU-Affine network | [Bibi et al. (2018)](99_references.ipynb#bibi2018), [Alfadly et al. (2020)](99_references.ipynb#alfadly2020) |
# | [Layer-wise moment propagation](10_propagate.ipynb) | mean and full, low-rank or diagonal covariance through convolution, pooling and ReLU layers | [Clark (1961)](99_references.ipynb#clark1961) |
# | [Tightness on LeNet and MNIST](11_tightness.ipynb) | analytic mean and variance of the linearized LeNet against Monte Carlo of the real network | [Alfadly et al. (2020)](99_references.ipynb#alfadly2020), [Bibi et al. (2018)](99_references.ipynb#bibi2018) |
# | [Tightness on synthetic networks](12_synthetic.ipynb) | FC and Conv networks in three noise regimes; the linearization error against the layer | [Bibi et al. (2018)](99_references.ipynb#bibi2018), [Alfadly et al. (2020)](99_references.ipynb#alfadly2020) |
# | [Linearization centers](13_centers.ipynb) | k-means centers as shared points of linearization, nearest-center lookup | [Alfadly et al. (2020)](99_references.ipynb#alfadly2020) |
#
# ## Attacks and noise
#
# | chapter | what it holds | papers |
# |---|---|---|
# | [Gaussian attacks and gradient-family perturbations](14_attacks.ipynb) | expected logits under $\mathcal N(M + \mu, \sigma^2)$; targeted, $\alpha$%-pixel and sparse + smooth Gaussian attacks; the $\epsilon(p)$ gradient family | [Bibi et al. (2018)](99_references.ipynb#bibi2018), [Alfadly et al. (2020)](99_references.ipynb#alfadly2020), [Lyu et al. (2015)](99_references.ipynb#lyu2015) |
# | [Predicting what noise does](15_survival.ipynb) | the probability that a prediction survives noise, universal perturbations, fooling maps | [Bibi et al. (2018)](99_references.ipynb#bibi2018), [Alfadly et al. (2019)](99_references.ipynb#alfadly2019) |
#
# ## Bounds
#
# | chapter | what it holds | papers |
# |---|---|---|
# | [Lower bounds on the robustness to adversarial perturbations](16_bounds.ipynb) | lower bounds for linear, MLP and CNN classifiers, layer by layer, beside a global-Lipschitz margin bound | [Peck et al. (2017)](99_references.ipynb#peck2017), [Peck (2017)](99_references.ipynb#peck2017thesis) |
# | [Minimal-norm L2 attacks](17_minimal.ipynb) | FGS and FGV with a line search, DeepFool and DDN, verified in float64 | [Peck (2017)](99_references.ipynb#peck2017thesis), [Moosavi-Dezfooli et al. (2016)](99_references.ipynb#moosavidezfooli2016), [Rony et al. (2019)](99_references.ipynb#rony2019) |
# | [Bounds against attacks on trained networks](18_bounds_experiments.ipynb) | tanh MLPs on Iris, Wine and Spambase; LeNet and its LRN variants; margin-penalty training | [Peck (2017)](99_references.ipynb#peck2017thesis), [Peck et al. (2017)](99_references.ipynb#peck2017) |
#
# ## Robust training
#
# | chapter | what it holds | papers |
# |---|---|---|
# | [Gaussian-robust training losses](19_regularizers.ipynb) | the analytic expected-logit regularizer, noisy augmentation, gradient-norm regularization and adversarial training | [Alfadly et al. (2019)](99_references.ipynb#alfadly2019), [Lyu et al. (2015)](99_references.ipynb#lyu2015) |
# | [Robustness to Gaussian noise](20_robustness.ipynb) | the robustness metric with fresh seeded noise and its area under the curve; a misclassification model | [Alfadly et al. (2019)](99_references.ipynb#alfadly2019), [Lyu et al. (2015)](99_references.ipynb#lyu2015) |
# | [Training loop](21_train.ipynb) | validation split, learning-rate decay on plateau, early stopping, best checkpoint | [Alfadly et al. (2019)](99_references.ipynb#alfadly2019) |
# | [Robust training experiments](22_robust_training.ipynb) | accuracy against robustness for augmentation and the regularizer on MNIST and Fashion-MNIST; gradient regularization; training cost | [Alfadly et al. (2019)](99_references.ipynb#alfadly2019), [Lyu et al. (2015)](99_references.ipynb#lyu2015) |
#
# ## Experiments at scale
#
# | chapter | what it holds |
# |---|---|
# | [Running experiments at scale](23_runner.ipynb) | a named grid of independent units run on Ray (a local instance or a cluster) or in process; each unit saved atomically with its provenance; resume, shards, merge |
# | [The papers' experiments as grids](24_experiments.ipynb) | the registered experiments of `netmoments run`, each with the paper's grid as its default and reduced presets |
#
# ## Tools
#
# | chapter | what it holds |
# |---|---|
# | [Command line](90_cli.ipynb) | `netmoments check`, `bench`, `tightness`, `stepcost` and `run` |
# | [Running the package](91_main.ipynb) | `python -m netmoments` |
#
# The [References](99_references.ipynb) list every work cited in the book.

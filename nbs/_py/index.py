# %% [markdown]
# # netmoments
# > Probabilistic moments of piecewise-linear neural networks under Gaussian input, as a book whose experiments reproduce the papers

# %% [markdown]
# `netmoments` computes what a ReLU network does to a Gaussian input $x \sim \mathcal N(\mu, \Sigma)$ in closed form:
# the exact mean and covariance of $g(x) = B\,\mathrm{relu}(Ax + c_1) + c_2$, the Price's-theorem identities behind
# them, and the Monte Carlo reference every formula is checked against. Each chapter derives its lemma with sympy,
# checks it numerically in float64, exports the verified code to the `netmoments` package and tests it.
#
# ```python
# import torch
# from netmoments.ara import ara_moments
# from netmoments.montecarlo import mc_moments
# ```
#
# | chapter | what it holds | source |
# |---|---|---|
# | Core checks | input validation shared by all chapters | |
# | Gaussian toolbox | normal pdf/cdf with accurate tails, bivariate normal CDF $\Phi_2$ (Genz BVND) | SPEC §1, §3 |
# | Monte Carlo | the seeded, streaming reference estimator with standard errors | |
# | ReLU moments | Remark 1, Lemmas 1, 3 and 4 (with TPAMI Fig. 2), and the exact general-mean $\mathbb E[\mathrm{relu}(z_1)\mathrm{relu}(z_2)]$ | CVPR 2018, TPAMI, SPEC §2–3 |
# | Price's theorem | Lemma 2, symbolic and numeric checks | CVPR 2018, SPEC §4 |
# | Affine-ReLU-Affine | Theorems 1–2 and the exact output mean and covariance | CVPR 2018, TPAMI, SPEC §3 |
# | Benchmarks | speed of the exact moments against Monte Carlo and the series | |
# | Datasets | MNIST, Fashion-MNIST, Iris, Wine, Spambase, CIFAR-10/100 loaders, offline | SPEC §10 |
# | Models | the papers' LeNet (bundled, trained on MNIST, 99.1% test accuracy) and the synthetic FC/Conv nets | CVPR §4.1, TPAMI §4 |
# | Two-stage linearization | split a ReLU network at its l-th ReLU into an Affine-ReLU-Affine network (torch.func Jacobians) | CVPR §3.4, TPAMI §3.3, SPEC §5 |
# | Moment propagation | layer-wise mean and full/low-rank/diagonal covariance through conv, pooling and ReLU layers, against MC and two-stage linearization | beyond the papers |
# | Tightness on LeNet and MNIST | TPAMI Tables 2–3 and CVPR Table 1, CPU-sized, beside the published numbers | TPAMI §4.2, CVPR §4.1 |
# | Tightness on synthetic networks | CVPR Fig. 2 slopes on FC-A/B/C and Conv-A/B/C in three noise regimes; TPAMI Table 1, linearization error against the layer | CVPR §4.1, TPAMI §4.2 |
# | Linearization centers | k-means centers as shared points of linearization, nearest-center lookup, the farthest-member baseline; TPAMI Table 4 | TPAMI §4.2 |
# | Gaussian attacks | expected logits under $\mathcal N(M + \mu, \sigma^2)$, targeted, $\alpha$%-pixel and sparse + smooth Gaussian attacks verified by sampling; Lyu's $\epsilon(p)$ gradient family | CVPR §4.4–4.5, TPAMI §4.3, Lyu §II |
# | Predicting what noise does | probability that a prediction survives noise (Gaussian orthant, Cantelli) against MC; universal perturbation fooling rate; fooling maps | CVPR §4.2–4.3, Alfadly eq. 6 |
# | Robustness lower bounds | Peck et al.'s bounds for linear, MLP and CNN classifiers, per-layer report, beside a sound global-Lipschitz margin bound | NIPS 2017, thesis |
# | Minimal-norm attacks | FGS/FGV with line search, DeepFool, DDN, verified in float64 | thesis §2.5 |
# | Bounds on trained networks | thesis Table 4.3 (Iris, Wine, Spambase), NIPS Tables 1–2 (LeNet, LRN), margin-penalty training | NIPS 2017, thesis |
# | Gaussian-robust losses | the analytic expected-logit regularizer, noisy augmentation, gradient-norm regularizer and adversarial training | Alfadly et al., Lyu et al. |
# | Robustness to Gaussian noise | the robustness metric with fresh seeded Gaussian noise and its AUC; Lyu's misclassification model | Alfadly eq. 6, Lyu eqs 26–33 |
# | Training loop | validation split, LR decay on plateau, early stopping, best checkpoint | Alfadly Table 1 |
# | Robust training experiments | accuracy against robustness for augmentation and the regularizer on MNIST and Fashion-MNIST; Lyu Tables V–IX; training cost | Alfadly Figs 3–4, Lyu |
# | Command line | `netmoments tightness` (the main job), `netmoments check` and `netmoments bench` | |
#
# Install for development with `make setup`; `make check` compares the analytic moments of a random
# Affine-ReLU-Affine network with Monte Carlo, and `make test` runs every notebook and the test suite.

# %% [markdown]
# # References {.unnumbered}
# > The papers this book reproduces, and the other works it cites

# %% [markdown]
# ## Papers reproduced
#
# - <a id="alfadly2019"></a>Alfadly, M., Bibi, A., and Ghanem, B. (2019). Analytical moment regularizer for Gaussian
#   robust networks. arXiv:1904.11005.
# - <a id="alfadly2020"></a>Alfadly, M., Bibi, A., Botero, E., Alsubaihi, S., and Ghanem, B. (2020). Network moments:
#   extensions and sparse-smooth attacks. arXiv:2006.11776. The journal extension of
#   [Bibi et al. (2018)](#bibi2018).
# - <a id="bibi2018"></a>Bibi, A., Alfadly, M., and Ghanem, B. (2018). Analytic expressions for probabilistic moments
#   of PL-DNN with Gaussian input. In *Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition
#   (CVPR)*, pp. 9099–9107.
# - <a id="lyu2015"></a>Lyu, C., Huang, K., and Liang, H.-N. (2015). A unified gradient regularization family for
#   adversarial examples. In *IEEE International Conference on Data Mining (ICDM)*, pp. 301–309.
# - <a id="peck2017thesis"></a>Peck, J. (2017). Master's dissertation, Ghent University. The extended version of
#   [Peck et al. (2017)](#peck2017).
# - <a id="peck2017"></a>Peck, J., Roels, J., Goossens, B., and Saeys, Y. (2017). Lower bounds on the robustness to
#   adversarial perturbations. In *Advances in Neural Information Processing Systems 30 (NIPS)*, pp. 804–813.

# %% [markdown]
# ## Other works cited
#
# - <a id="aeberhard1991"></a>Aeberhard, S. and Forina, M. (1991). Wine \[data set\]. UCI Machine Learning
#   Repository. doi:10.24432/C5PC7J.
# - <a id="arthur2007"></a>Arthur, D. and Vassilvitskii, S. (2007). k-means++: the advantages of careful seeding. In
#   *Proceedings of the 18th Annual ACM-SIAM Symposium on Discrete Algorithms (SODA)*, pp. 1027–1035.
# - <a id="bussgang1952"></a>Bussgang, J. J. (1952). Crosscorrelation functions of amplitude-distorted Gaussian
#   signals. Technical Report 216, Research Laboratory of Electronics, Massachusetts Institute of Technology.
# - <a id="clark1961"></a>Clark, C. E. (1961). The greatest of a finite set of random variables. *Operations
#   Research*, 9(2), 145–162.
# - <a id="drezner1990"></a>Drezner, Z. and Wesolowsky, G. O. (1990). On the computation of the bivariate normal
#   integral. *Journal of Statistical Computation and Simulation*, 35, 101–107.
# - <a id="fisher1936"></a>Fisher, R. A. (1936). The use of multiple measurements in taxonomic problems. *Annals of
#   Eugenics*, 7(2), 179–188.
# - <a id="genz1992"></a>Genz, A. (1992). Numerical computation of multivariate normal probabilities. *Journal of
#   Computational and Graphical Statistics*, 1(2), 141–149.
# - <a id="genz2004"></a>Genz, A. (2004). Numerical computation of rectangular bivariate and trivariate normal and t
#   probabilities. *Statistics and Computing*, 14, 251–260.
# - <a id="goodfellow2013"></a>Goodfellow, I. J., Warde-Farley, D., Mirza, M., Courville, A., and Bengio, Y. (2013).
#   Maxout networks. In *Proceedings of the 30th International Conference on Machine Learning (ICML)*, pp. 1319–1327.
# - <a id="goodfellow2015"></a>Goodfellow, I. J., Shlens, J., and Szegedy, C. (2015). Explaining and harnessing
#   adversarial examples. In *International Conference on Learning Representations (ICLR)*. arXiv:1412.6572.
# - <a id="he2015"></a>He, K., Zhang, X., Ren, S., and Sun, J. (2015). Delving deep into rectifiers: surpassing
#   human-level performance on ImageNet classification. In *Proceedings of the IEEE International Conference on
#   Computer Vision (ICCV)*, pp. 1026–1034.
# - <a id="hopkins1999"></a>Hopkins, M., Reeber, E., Forman, G., and Suermondt, J. (1999). Spambase \[data set\]. UCI
#   Machine Learning Repository. doi:10.24432/C53G6X.
# - <a id="jia2014"></a>Jia, Y., Shelhamer, E., Donahue, J., Karayev, S., Long, J., Girshick, R., Guadarrama, S., and
#   Darrell, T. (2014). Caffe: convolutional architecture for fast feature embedding. In *Proceedings of the 22nd ACM
#   International Conference on Multimedia*, pp. 675–678.
# - <a id="kingma2015"></a>Kingma, D. P. and Ba, J. (2015). Adam: a method for stochastic optimization. In
#   *International Conference on Learning Representations (ICLR)*. arXiv:1412.6980.
# - <a id="krizhevsky2009"></a>Krizhevsky, A. (2009). Learning multiple layers of features from tiny images. Technical
#   report, University of Toronto.
# - <a id="krizhevsky2012"></a>Krizhevsky, A., Sutskever, I., and Hinton, G. E. (2012). ImageNet classification with
#   deep convolutional neural networks. In *Advances in Neural Information Processing Systems 25 (NIPS)*,
#   pp. 1097–1105.
# - <a id="lecun1998"></a>LeCun, Y., Bottou, L., Bengio, Y., and Haffner, P. (1998). Gradient-based learning applied to
#   document recognition. *Proceedings of the IEEE*, 86(11), 2278–2324.
# - <a id="lichman2013"></a>Lichman, M. (2013). UCI Machine Learning Repository. University of California, Irvine,
#   School of Information and Computer Sciences.
# - <a id="lin2014"></a>Lin, M., Chen, Q., and Yan, S. (2014). Network in network. In *International Conference on
#   Learning Representations (ICLR)*. arXiv:1312.4400.
# - <a id="lloyd1982"></a>Lloyd, S. P. (1982). Least squares quantization in PCM. *IEEE Transactions on Information
#   Theory*, 28(2), 129–137.
# - <a id="mcmahon1964"></a>McMahon, E. L. (1964). An extension of Price's theorem. *IEEE Transactions on Information
#   Theory*, 10(2), 168.
# - <a id="moosavidezfooli2016"></a>Moosavi-Dezfooli, S.-M., Fawzi, A., and Frossard, P. (2016). DeepFool: a simple and
#   accurate method to fool deep neural networks. In *Proceedings of the IEEE Conference on Computer Vision and Pattern
#   Recognition (CVPR)*, pp. 2574–2582.
# - <a id="moosavidezfooli2017"></a>Moosavi-Dezfooli, S.-M., Fawzi, A., Fawzi, O., and Frossard, P. (2017). Universal
#   adversarial perturbations. In *Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition
#   (CVPR)*, pp. 1765–1773.
# - <a id="owen1956"></a>Owen, D. B. (1956). Tables for computing bivariate normal probabilities. *The Annals of
#   Mathematical Statistics*, 27, 1075–1090.
# - <a id="plackett1954"></a>Plackett, R. L. (1954). A reduction formula for normal multivariate integrals.
#   *Biometrika*, 41(3/4), 351–360.
# - <a id="price1958"></a>Price, R. (1958). A useful theorem for nonlinear devices having Gaussian inputs. *IRE
#   Transactions on Information Theory*, 4, 69–72.
# - <a id="rony2019"></a>Rony, J., Hafemann, L. G., Oliveira, L. S., Ben Ayed, I., Sabourin, R., and Granger, E.
#   (2019). Decoupling direction and norm for efficient gradient-based L2 adversarial attacks and defenses. In
#   *Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition (CVPR)*, pp. 4322–4330.
# - <a id="rosenbaum1961"></a>Rosenbaum, S. (1961). Moments of a truncated bivariate normal distribution. *Journal of
#   the Royal Statistical Society, Series B*, 23, 405–408.
# - <a id="russakovsky2015"></a>Russakovsky, O., Deng, J., Su, H., Krause, J., Satheesh, S., Ma, S., Huang, Z.,
#   Karpathy, A., Khosla, A., Bernstein, M., Berg, A. C., and Fei-Fei, L. (2015). ImageNet large scale visual
#   recognition challenge. *International Journal of Computer Vision*, 115(3), 211–252.
# - <a id="sedghi2019"></a>Sedghi, H., Gupta, V., and Long, P. M. (2019). The singular values of convolutional layers.
#   In *International Conference on Learning Representations (ICLR)*. arXiv:1805.10408.
# - <a id="simonyan2015"></a>Simonyan, K. and Zisserman, A. (2015). Very deep convolutional networks for large-scale
#   image recognition. In *International Conference on Learning Representations (ICLR)*. arXiv:1409.1556.
# - <a id="stein1981"></a>Stein, C. M. (1981). Estimation of the mean of a multivariate normal distribution. *The
#   Annals of Statistics*, 9(6), 1135–1151.
# - <a id="xiao2017"></a>Xiao, H., Rasul, K., and Vollgraf, R. (2017). Fashion-MNIST: a novel image dataset for
#   benchmarking machine learning algorithms. arXiv:1708.07747.
# - <a id="xu2020"></a>Xu, K., Shi, Z., Zhang, H., Wang, Y., Chang, K.-W., Huang, M., Kailkhura, B., Lin, X., and
#   Hsieh, C.-J. (2020). Automatic perturbation analysis for scalable certified robustness and beyond. In *Advances in
#   Neural Information Processing Systems 33 (NeurIPS)*. arXiv:2002.12920.
# - <a id="zhang2018"></a>Zhang, H., Weng, T.-W., Chen, P.-Y., Hsieh, C.-J., and Daniel, L. (2018). Efficient neural
#   network robustness certification with general activation functions. In *Advances in Neural Information
#   Processing Systems 31 (NeurIPS)*, pp. 4939–4948.

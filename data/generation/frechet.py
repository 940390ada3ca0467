"""Fréchet distance between two sets of feature vectors, each summarised by a Gaussian.

Heusel et al. (2017) fit a Gaussian N(mu, S) to each set's features and compare them by the
Fréchet (2-Wasserstein) distance between the two Gaussians:

  d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}).

The features are whatever the caller passes. The method passes the non-robust classifier's
penultimate activations (models/features.py), so its number is a Fréchet distance in that
classifier's feature space, not Inception FID; Inception-v3 pool features (2048-d, pytorch-fid's
weights) passed to the same functions give FID. Values from different feature spaces, or from sets
of different sizes (the estimate is biased upward for small sets), are not comparable.

Conventions follow pytorch-fid and clean-fid: float64 statistics, S the unbiased covariance
(numpy.cov, divided by n - 1), the square root by scipy.linalg.sqrtm; where the product S1 S2 is
too singular for it to return finite values, eps * I is added to both covariances and the root
taken again, and a small imaginary part left by rounding is dropped (a large one is an error).
"""
import logging

import numpy as np
from scipy import linalg

# pytorch-fid's values: the diagonal offset on failure, and the imaginary part treated as rounding.
EPS = 1e-6
_IMAGINARY_ATOL = 1e-3


def statistics(features, name: str = 'features') -> tuple[np.ndarray, np.ndarray]:
  """(mu (d,), sigma (d, d)) in float64 of (n, d) features; sigma is unbiased (n - 1)."""
  x = _check_features(features, name)
  return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def frechet_distance(a, b, *, eps: float = EPS) -> float:
  """The Fréchet distance between the Gaussians fitted to feature arrays a (n, d) and b (m, d)."""
  a, b = _check_features(a, 'a'), _check_features(b, 'b')
  if a.shape[1] != b.shape[1]:
    raise ValueError(f'feature dimensions differ: a has {a.shape[1]}, b has {b.shape[1]}')
  return distance_from_statistics(*statistics(a, 'a'), *statistics(b, 'b'), eps=eps)


def distance_from_statistics(mu1, sigma1, mu2, sigma2, *, eps: float = EPS) -> float:
  """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)) for two Gaussians in R^d."""
  mu1, sigma1 = _check_gaussian(mu1, sigma1, '1')
  mu2, sigma2 = _check_gaussian(mu2, sigma2, '2')
  if mu1.shape != mu2.shape:
    raise ValueError(f'feature dimensions differ: mu1 has {mu1.shape[0]}, mu2 {mu2.shape[0]}')
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
               - 2.0 * _trace_sqrt_product(sigma1, sigma2, eps))


def _trace_sqrt_product(sigma1, sigma2, eps):
  """Tr((sigma1 sigma2)^{1/2}), retried with eps * I on both factors if the root is not finite."""
  root = linalg.sqrtm(sigma1 @ sigma2)
  if not np.isfinite(root).all():
    logging.warning('Fréchet distance: sigma1 sigma2 is singular; adding %g to the diagonal of '
                    'both covariances', eps)
    offset = eps * np.eye(sigma1.shape[0])
    root = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(root):
    imaginary = np.abs(np.diagonal(root).imag).max()
    if imaginary > _IMAGINARY_ATOL:
      raise ValueError(f'Fréchet distance: the square root of sigma1 sigma2 has an imaginary '
                       f'diagonal part of {imaginary:.3g} (more than rounding); are both '
                       'covariances symmetric positive semi-definite?')
    root = root.real
  if not np.isfinite(root).all():
    raise ValueError(f'Fréchet distance: no finite square root of sigma1 sigma2, even with {eps} '
                     'added to the diagonals')
  return np.trace(root)


def _check_features(features, name):
  x = np.asarray(features, np.float64)
  if x.ndim != 2:
    raise ValueError(f'{name}: features must be a 2-D (n, d) array, got shape {x.shape}')
  if x.shape[0] < 2:
    raise ValueError(f'{name}: a covariance needs at least 2 feature vectors, got {x.shape[0]}')
  _check_finite(x, name)
  return x


def _check_gaussian(mu, sigma, which):
  mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(f'mu{which} must be (d,) and sigma{which} (d, d); got {mu.shape} and '
                     f'{sigma.shape}')
  _check_finite(mu, f'mu{which}')
  _check_finite(sigma, f'sigma{which}')
  return mu, sigma


def _check_finite(x, name):
  bad = ~np.isfinite(x)
  if bad.any():
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f'{name}: {int(bad.sum())} non-finite values (NaN or inf), the first at '
                     f'index {where}')

"""Class-balanced generated sets as the paper builds them from a DDPM: the first K of each class.

Gowal, Rebuffi et al. (2021), App. D: "We sample images from each model until we have 100K images
for each class" (10K for CIFAR-100), with no further filtering; confidence filtering (top-K by
score, `topk.py`) was for BigGAN and VDVAE samples only. Over a stream of pseudo-labelled samples,
a sample is kept when its class still holds fewer than K: the kept set is exactly K per class,
depends only on the stream's order, and needs nothing but the per-class counts between batches.
`sampling.write_samples(..., class_balanced=True)` runs it over a generator's sample stream.
"""
import numpy as np


def first_k(labels, counts, k):
  """Mask of the samples of one batch (in stream order) that enter a set of k per class.

  `counts` (classes,) holds what each class has before the batch and is updated in place.
  """
  labels = np.asarray(labels)
  keep = np.zeros(labels.shape, bool)
  for c in np.unique(labels):
    rows = np.flatnonzero(labels == c)[:max(0, k - int(counts[c]))]
    keep[rows] = True
    counts[c] += rows.size
  return keep


def host_share(k, process_index, process_count):
  """Host h's share of k per class when P hosts each fill their own: k // P, one more for the
  first k % P hosts, so the hosts' sets add up to exactly k per class."""
  return k // process_count + (process_index < k % process_count)


def per_class(num, num_classes):
  """K of a class-balanced set of `num` samples; `num` must be a multiple of the classes."""
  if num % num_classes:
    raise ValueError(f'a class-balanced set of {num} samples: not a multiple of the '
                     f'{num_classes} classes (choose {num - num % num_classes} or '
                     f'{num + num_classes - num % num_classes})')
  return num // num_classes


def short_classes(counts, k):
  """{class: count} of the classes with fewer than k."""
  return {int(c): int(n) for c, n in enumerate(counts) if n < k}

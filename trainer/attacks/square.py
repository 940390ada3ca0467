"""Square Attack (Andriushchenko et al., ECCV 2020): a score-based black-box attack, L∞ and L2.

Each query changes the current best perturbation inside one random square window (per example
and per iteration) and keeps the change if it lowers the margin z_y − max_{j≠y} z_j, or if it
misclassifies. The window side shrinks with the query count following the reference's p schedule
(the fraction of pixels changed). The schedule is written for 10,000 queries; AutoAttack
'standard' runs 5,000 queries on it as written (`resc_schedule=False`, so p stops at p_init/128),
while `resc_schedule=True` (the Square paper's code default) stretches it to n_queries.

- L∞ starts from vertical stripes of ±ε (one sign per example, column and channel) and sets a
  window to ±ε per channel (a vertex of the ball).
- L2 starts from a grid of "double-pyramid" tiles (`_eta`) with random signs, scaled to ‖δ‖₂ = ε.
  A step moves the mass of a second window into the first one, redrawn as a tile plus the old
  content of the first window, so that ‖δ‖₂ stays at ε.

Only points not yet fooled are updated, and the loop stops once every point is fooled. The
batch keeps static shapes (every point is evaluated, only the unfooled ones change), window
positions are drawn per example and applied through index masks, and the window size comes
from a per-query table, so the whole attack is one jit-compiled `while_loop`. On CPU the model's
convolutions are rewritten to the layout XLA:CPU runs fast inside a loop (`conv_layout`), so that
a query costs what one jitted forward pass costs, whatever layout the model is written in. Pass
the model as a `jax.tree_util.Partial` so that its weights are arguments of the compiled program:

    x_adv = square(jax.tree_util.Partial(model.apply, variables), x, y, norm='linf', eps=8/255)
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from trainer.attacks import losses as losses_lib
from trainer.attacks import projections
from trainer.attacks.common import as_jit_arg
from trainer.attacks.common import bcast
from trainer.attacks.common import canonical_norm
from trainer.attacks.common import compact_random
from trainer.attacks.common import host_loops
from trainer.attacks.conv_layout import canonical_convolutions

# The reference's schedule: p_init is halved after each of these (rescaled) query counts.
_P_BREAKPOINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_selection(it, n_queries, p_init=0.8, resc_schedule=True):
  """Fraction of the image a square covers at query `it` (0-based) of n_queries."""
  if resc_schedule:
    it = int(it / n_queries * 10000)
  return p_init / 2 ** sum(it > b for b in _P_BREAKPOINTS)


def square_sizes(norm, n_queries, p_init, height, width, resc_schedule=True):
  """Side of the square at every query, as an int array of length n_queries.

  The side is round(√(p·h·w)) (Python's round, as in the reference), at least 1 for L∞ and an
  odd number ≥ 3 for L2 (so the L2 tile has a centre), and never larger than the image.
  """
  sizes = []
  for it in range(n_queries):
    s = int(round(math.sqrt(p_selection(it, n_queries, p_init, resc_schedule) * height * width)))
    if norm == 'linf':
      s = max(s, 1)
    else:
      s = max(s, 3)
      s += 1 - s % 2
    sizes.append(min(s, height, width))
  return np.asarray(sizes, np.int32)


def _margin(logits_fn, x, y):
  """z_y − max_{j≠y} z_j: the attack minimises it; ≤ 0 means fooled."""
  return -losses_lib.margin(logits_fn(x).astype(jnp.float32), y)


def _window_offsets(key, batch, s, height, width):
  """Top-left corners, uniform over 0 … side − s − 1 as in the reference (0 when s = side)."""
  kh, kw = jax.random.split(key)
  vh = jax.random.randint(kh, (batch,), 0, jnp.maximum(height - s, 1))
  vw = jax.random.randint(kw, (batch,), 0, jnp.maximum(width - s, 1))
  return vh, vw


def _local_coords(vh, vw, height, width):
  """Row and column of every pixel relative to each example's corner, (B, H, 1) and (B, 1, W)."""
  r = jnp.arange(height)[None, :] - vh[:, None]
  c = jnp.arange(width)[None, :] - vw[:, None]
  return r[:, :, None], c[:, None, :]


def _window(vh, vw, s, height, width):
  """(B, H, W, 1) float mask of each example's s×s window."""
  r, c = _local_coords(vh, vw, height, width)
  inside = (r >= 0) & (r < s) & (c >= 0) & (c < s)
  return inside[..., None].astype(jnp.float32)


def _pyramid(rows, cols, a, b, table):
  """Entry (a, b) of the reference's rows×cols nested-squares tile, before normalisation.

  The tile adds 1/(k+1)² on the square of half-width k around the centre (rows//2, cols//2) for
  k = 0 … max(rows//2, cols//2), so an entry at Chebyshev distance d from the centre holds
  Σ_{k=d}^{K−1} 1/(k+1)² = table[K] − table[d].
  """
  k_max = jnp.maximum(rows // 2, cols // 2) + 1
  d = jnp.maximum(jnp.abs(a - rows // 2), jnp.abs(b - cols // 2))
  return table[k_max] - table[jnp.clip(d, 0, table.shape[0] - 1)]


def _eta(s, m):
  """The reference's L2 tile of side s (may be traced) in the corner of an m×m array.

  Upper s//2 rows: a positive pyramid; lower rows: a negative one; each half at unit norm, then
  the whole at unit norm.
  """
  table = jnp.concatenate([jnp.zeros(1), jnp.cumsum(1.0 / jnp.arange(1, m + 2) ** 2)])
  a = jnp.arange(m)[:, None]
  b = jnp.arange(m)[None, :]
  half = s // 2
  upper = a < half
  rows = jnp.where(upper, half, s - half)
  val = _pyramid(rows, s, jnp.where(upper, a, a - half), b, table)
  val = jnp.where((a < s) & (b < s), val, 0.0)
  sq = val * val
  up_norm = jnp.sqrt(jnp.sum(jnp.where(upper, sq, 0.0)))
  low_norm = jnp.sqrt(jnp.sum(jnp.where(upper, 0.0, sq)))
  val = jnp.where(upper, val / jnp.maximum(up_norm, 1e-12), -val / jnp.maximum(low_norm, 1e-12))
  return val / jnp.sqrt(jnp.sum(val * val))


def _random_tiles(key, tile, batch):
  """The tile, transposed with probability 1/2 per example: (B, m, m)."""
  flip = jax.random.bernoulli(key, 0.5, (batch,))
  return jnp.where(flip[:, None, None], tile.T[None], tile[None])


def _place(tiles, vh, vw, height, width):
  """Puts each example's (m, m) tile with its corner at (vh, vw): (B, H, W, 1), zero elsewhere."""
  m = tiles.shape[1]
  r, c = _local_coords(vh, vw, height, width)
  valid = (r >= 0) & (r < m) & (c >= 0) & (c < m)
  rows = jnp.clip(r, 0, m - 1)
  cols = jnp.clip(c, 0, m - 1)
  batch = jnp.arange(tiles.shape[0])[:, None, None]
  return jnp.where(valid, tiles[batch, rows, cols], 0.0)[..., None]


def _l2_normalize(v, radius):
  n = projections.per_example_norm(v, 'l2')
  return v * bcast(radius / (n + 1e-12), v)


def _channel_norm(v):
  """L2 norm over the spatial axes, per example and channel: (B, 1, 1, C)."""
  return jnp.sqrt(jnp.sum(v * v, axis=(1, 2), keepdims=True))


def _init_linf(key, x, eps):
  b, _, w, c = x.shape
  stripes = jax.random.rademacher(key, (b, 1, w, c), x.dtype)
  return jnp.clip(x + eps * stripes, 0.0, 1.0)


def _init_l2(key, x, eps):
  """A grid of randomly signed, randomly transposed tiles of side h//5, scaled to ‖δ‖₂ = ε.

  The reference lays h//s × w//s tiles side by side from (start, start); tiles falling off the
  image are cropped. Built as one (rows·s, cols·s) mosaic so it compiles to a handful of ops.
  """
  b, h, w, c = x.shape
  s = max(h // 5, 1)
  start = max((h - 5 * s) // 2, 0)  # the reference uses the row offset for both axes
  rows, cols = h // s, w // s
  k_sign, k_flip = jax.random.split(key)
  tile = _eta(s, s)
  flip = jax.random.bernoulli(k_flip, 0.5, (b, rows, cols, 1, 1))
  tiles = jnp.where(flip, tile.T, tile)[..., None]                       # (B, R, Q, s, s, 1)
  tiles = tiles * jax.random.rademacher(k_sign, (b, rows, cols, 1, 1, c), x.dtype)
  mosaic = tiles.transpose(0, 1, 3, 2, 4, 5).reshape(b, rows * s, cols * s, c)
  mosaic = mosaic[:, :h - start, :w - start]
  delta = jnp.pad(mosaic, ((0, 0), (start, h - start - mosaic.shape[1]),
                           (start, w - start - mosaic.shape[2]), (0, 0)))
  return jnp.clip(x + _l2_normalize(delta, eps), 0.0, 1.0)


def _propose_linf(key, x, x_best, s, eps):
  """Sets one window per example to a random vertex (±ε per channel) of the ε-ball."""
  b, h, w, c = x.shape
  k_pos, k_sign = jax.random.split(key)
  mask = _window(*_window_offsets(k_pos, b, s, h, w), s, h, w)
  signs = jax.random.rademacher(k_sign, (b, 1, 1, c), x.dtype)
  x_new = jnp.clip(x_best + mask * 2.0 * eps * signs, x - eps, x + eps)
  return jnp.clip(x_new, 0.0, 1.0)


def _propose_l2(key, x, x_best, s, eps, tile_side):
  """Moves the perturbation mass of window 2 (and window 1) into a fresh tile in window 1."""
  b, h, w, c = x.shape
  k_pos1, k_pos2, k_sign, k_flip = jax.random.split(key, 4)
  vh, vw = _window_offsets(k_pos1, b, s, h, w)
  mask1 = _window(vh, vw, s, h, w)
  mask2 = _window(*_window_offsets(k_pos2, b, s, h, w), s, h, w)
  union = jnp.maximum(mask1, mask2)

  delta = x_best - x
  image_norm = bcast(projections.per_example_norm(delta, 'l2'), x)
  old_in_1 = delta * mask1 / (1e-12 + _channel_norm(delta * mask1))
  tiles = _place(_random_tiles(k_flip, _eta(s, tile_side), b), vh, vw, h, w)
  signs = jax.random.rademacher(k_sign, (b, 1, 1, c), x.dtype)
  new = tiles * signs + old_in_1
  # Budget for the window: what the two windows held plus what the image lacks to reach ε.
  budget = jnp.sqrt(jnp.maximum(eps ** 2 - image_norm ** 2, 0.0) / c
                    + _channel_norm(delta * union) ** 2)
  new = new / (1e-12 + _channel_norm(new)) * budget
  delta = delta * (1.0 - union) + new
  return jnp.clip(x + _l2_normalize(delta, eps), 0.0, 1.0)


def square(logits_fn, x, y, *, norm, eps, n_queries=5000, p_init=0.8, seed=0,
           resc_schedule=True):
  """Untargeted Square attack with the margin loss; returns x_adv of x's shape.

  For each point: the fooling point found, or the clean point if none was (also for points
  misclassified already).

  Args:
    logits_fn: x (NHWC float32 in [0, 1]) -> logits. A `jax.tree_util.Partial(apply_fn,
      variables)` keeps the weights out of the compiled program.
    x, y: clean images and integer labels.
    norm: 'linf' or 'l2'.
    eps: radius of the threat model.
    n_queries: iterations after the initial query (the reference's n_queries).
    p_init: initial fraction of pixels in a square; the schedule divides it down.
    seed: the attack is a deterministic function of the seed.
    resc_schedule: stretch the 10,000-query p schedule to n_queries (AutoAttack 'standard'
      does not: False).
  """
  norm = canonical_norm(norm)
  projections.check_norm(norm)
  if x.ndim != 4:
    raise ValueError(f'Square expects NHWC images; got x of shape {x.shape}.')
  if n_queries < 1:
    raise ValueError(f'n_queries must be positive, got {n_queries}.')
  return _square(as_jit_arg(logits_fn), x, y, jax.random.key(seed), jnp.asarray(eps, jnp.float32),
                 norm=norm, n_queries=n_queries, p_init=float(p_init),
                 resc_schedule=bool(resc_schedule), canonical=host_loops(x))


@functools.partial(jax.jit, static_argnames=('norm', 'n_queries', 'p_init', 'resc_schedule',
                                             'canonical'))
def _square(logits_fn, x, y, key, eps, *, norm, n_queries, p_init, resc_schedule,
            canonical=False):
  # canonical (on CPU): the model's convolutions in the layout XLA:CPU runs fast inside the loop
  # body too (trainer/attacks/conv_layout.py): a query then costs one forward pass.
  if canonical:
    logits_fn = canonical_convolutions(logits_fn)
  with compact_random():  # every draw of the attack, its start and each query
    x = x.astype(jnp.float32)
    _, h, w, _ = x.shape
    k_init, k_loop = jax.random.split(key)
    sizes = jnp.asarray(square_sizes(norm, n_queries, p_init, h, w, resc_schedule))

    correct = jnp.argmax(logits_fn(x), axis=1) == y
    if norm == 'linf':
      x_best = _init_linf(k_init, x, eps)
      propose = lambda k, xb, s: _propose_linf(k, x, xb, s, eps)
    else:
      x_best = _init_l2(k_init, x, eps)
      propose = lambda k, xb, s: _propose_l2(k, x, xb, s, eps, min(h, w))
    # Points already misclassified are left alone, as in the reference.
    margin_best = jnp.where(correct, _margin(logits_fn, x_best, y), -jnp.inf)

    def unfinished(carry):
      i, _, margin_best = carry
      return (i < n_queries) & jnp.any(margin_best > 0)

    def query(carry):
      i, x_best, margin_best = carry
      x_new = propose(jax.random.fold_in(k_loop, i), x_best, sizes[i])
      margin = _margin(logits_fn, x_new, y)
      # The loss is the margin itself, so "lower loss or misclassified" is one comparison.
      accept = (margin_best > 0) & ((margin < margin_best) | (margin <= 0))
      x_best = jnp.where(bcast(accept, x), x_new, x_best)
      return i + 1, x_best, jnp.where(accept, margin, margin_best)

    _, x_best, _ = jax.lax.while_loop(unfinished, query, (0, x_best, margin_best))
    fooled = correct & (jnp.argmax(logits_fn(x_best), axis=1) != y)
    return jnp.where(bcast(fooled, x), x_best, x)

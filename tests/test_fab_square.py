"""FAB-T and Square: threat model, closed-form linear cases, determinism, the p schedule.

On an affine model z = W(x − ½) + b the smallest perturbation that makes class t beat the label
y is (z_y − z_t)/‖w_y − w_t‖_* (dual norm: L1 for L∞, L2 for L2) as long as the box [0, 1] does
not get in the way, which it cannot for images in [0.3, 0.7] and distances below 0.3. The
smallest misclassifying perturbation is the minimum over t.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.attacks.autoattack import autoattack
from trainer.attacks.autoattack import feasible
from trainer.attacks.fab import fab
from trainer.attacks.fab import fab_targeted
from trainer.attacks.square import _eta
from trainer.attacks.square import p_selection
from trainer.attacks.square import square
from trainer.attacks.square import square_sizes

BATCH, SIDE, CLASSES = 128, 8, 10
SQUARE_QUERIES = 400   # enough on 64 pixels: single-pixel squares from query ~40 on


def _affine(params, x):
  w, b = params
  return (x.reshape(x.shape[0], -1) - 0.5) @ w + b


def _model(seed, classes=CLASSES, scale=1.0):
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(SIDE * SIDE, classes)).astype(np.float32) / SIDE * scale
  b = 0.05 * rng.normal(size=classes).astype(np.float32)
  return jax.tree_util.Partial(_affine, (jnp.asarray(w), jnp.asarray(b))), w


def _mlp_apply(params, x):
  w1, b1, w2 = params
  return jnp.tanh(x.reshape(x.shape[0], -1) @ w1 + b1) @ w2


def _mlp(seed, hidden=32):
  rng = np.random.default_rng(seed)
  w1 = rng.normal(size=(SIDE * SIDE, hidden)).astype(np.float32) / SIDE
  b1 = rng.normal(size=hidden).astype(np.float32)
  w2 = rng.normal(size=(hidden, CLASSES)).astype(np.float32)
  return jax.tree_util.Partial(_mlp_apply, tuple(map(jnp.asarray, (w1, b1, w2))))


def _images(seed, low=0.3, high=0.7):
  rng = np.random.default_rng(seed)
  return rng.uniform(low, high, (BATCH, SIDE, SIDE, 1)).astype(np.float32)


def _minimal_distance(logits_fn, w, x, y, norm):
  """Closed-form distance to the nearest decision boundary y/t of the affine model."""
  z = np.asarray(logits_fn(x))
  gaps = z[np.arange(len(y)), y][:, None] - z                      # (B, K)
  normals = w[:, y].T[:, None, :] - w.T[None]                       # (B, K, d)
  dual = np.abs(normals).sum(-1) if norm == 'linf' else np.linalg.norm(normals, axis=-1)
  dist = np.where(np.arange(z.shape[1]) == y[:, None], np.inf, gaps / np.maximum(dual, 1e-12))
  return dist.min(1)


def _norms(x_adv, x, norm):
  delta = (np.asarray(x_adv, np.float64) - x).reshape(len(x), -1)
  return np.abs(delta).max(1) if norm == 'linf' else np.linalg.norm(delta, axis=1)


def _setup(norm, seed=0):
  logits_fn, w = _model(seed)
  x = _images(seed)
  y = np.asarray(jnp.argmax(logits_fn(x), axis=1))
  d = _minimal_distance(logits_fn, w, x, y, norm)
  return logits_fn, w, x, y, d


def _broken(logits_fn, x_adv, y):
  return np.asarray(jnp.argmax(logits_fn(x_adv), axis=1)) != y


@pytest.mark.parametrize('norm', ['linf', 'l2'])
@pytest.mark.parametrize('attack', ['fab', 'square'])
def test_outputs_stay_in_threat_model(attack, norm):
  # A non-linear model, images spanning the whole box and saturated rows so that [0, 1] binds.
  logits_fn = _mlp(1)
  x = _images(1, 0.0, 1.0)
  x[:, :2] = 0.0
  x[:, -2:] = 1.0
  y = np.asarray(jnp.argmax(logits_fn(x), axis=1))
  eps = 0.02 if norm == 'linf' else 0.12
  if attack == 'fab':
    x_adv = fab_targeted(logits_fn, x, y, norm=norm, eps=eps)
  else:
    x_adv = square(logits_fn, x, y, norm=norm, eps=eps, n_queries=SQUARE_QUERIES)
  x_adv = np.asarray(x_adv)
  assert x_adv.shape == x.shape and x_adv.dtype == np.float32
  assert feasible(x_adv, x, norm=norm, eps=eps).all()
  broken = _broken(logits_fn, x_adv, y)
  assert 0 < broken.sum() < BATCH                  # the check is not vacuous
  np.testing.assert_array_equal(x_adv[~broken], x[~broken])   # clean where nothing was found


@pytest.mark.parametrize('norm', ['linf', 'l2'])
def test_fab_breaks_exactly_the_points_theory_says(norm):
  logits_fn, _, x, y, d = _setup(norm)
  eps = float(np.median(d))
  x_adv = fab_targeted(logits_fn, x, y, norm=norm, eps=eps)
  broken = _broken(logits_fn, x_adv, y)
  decidable = np.abs(d / eps - 1.0) > 0.02          # FAB overshoots the boundary by ~0.5%
  np.testing.assert_array_equal(broken[decidable], (d < eps)[decidable])
  found = _norms(x_adv, x, norm)[broken]
  assert np.all(found >= d[broken] * (1 - 1e-4))    # nothing beats the closed form
  assert np.all(found <= eps * (1 + 1e-6))


@pytest.mark.parametrize('norm', ['linf', 'l2'])
def test_fab_finds_the_minimal_perturbation(norm):
  # With ε far beyond every distance, FAB returns the closest point it found for the first target
  # (the runner-up class). When that class also has the nearest boundary, that is the minimum.
  logits_fn, w, x, y, d = _setup(norm)
  z = np.asarray(logits_fn(x))
  runner_up = np.argsort(z, axis=1)[:, -2]
  normals = w[:, y] - w[:, runner_up]
  dual = np.abs(normals).sum(0) if norm == 'linf' else np.linalg.norm(normals, axis=0)
  d_runner_up = (z[np.arange(BATCH), y] - z[np.arange(BATCH), runner_up]) / dual
  nearest = np.isclose(d_runner_up, d)
  assert nearest.sum() > BATCH // 4
  x_adv = fab_targeted(logits_fn, x, y, norm=norm, eps=0.3 if norm == 'linf' else 3.0)
  assert _broken(logits_fn, x_adv, y).all()
  ratio = _norms(x_adv, x, norm) / d
  assert np.all(ratio >= 1 - 1e-4)
  np.testing.assert_array_less(ratio[nearest], 1.02)
  assert np.median(ratio[nearest]) < 1.01


@pytest.mark.parametrize('norm', ['linf', 'l2'])
def test_untargeted_fab_finds_the_minimal_perturbation_for_every_point(norm):
  # Untargeted FAB follows the closest linearised boundary, which on an affine model is the
  # closest boundary: unlike FAB-T's first target, it reaches the minimum for every point.
  logits_fn, _, x, y, d = _setup(norm)
  x_adv = fab(logits_fn, x, y, norm=norm, eps=0.3 if norm == 'linf' else 3.0, n_restarts=1)
  assert _broken(logits_fn, x_adv, y).all()
  ratio = _norms(x_adv, x, norm) / d
  assert np.all(ratio >= 1 - 1e-4)
  np.testing.assert_array_less(ratio, 1.02)


@pytest.mark.parametrize('norm', ['linf', 'l2'])
def test_square_breaks_weak_points_and_never_robust_ones(norm):
  logits_fn, _, x, y, d = _setup(norm)
  eps = float(np.quantile(d, 0.6))
  x_adv = square(logits_fn, x, y, norm=norm, eps=eps, n_queries=SQUARE_QUERIES)
  broken = _broken(logits_fn, x_adv, y)
  weak = d < (0.5 if norm == 'linf' else 0.3) * eps
  assert weak.sum() > 10 and (d > eps).sum() > 10
  assert broken[weak].all()
  assert not broken[d > eps].any()                  # provably robust points stay robust
  assert feasible(np.asarray(x_adv), x, norm=norm, eps=eps).all()


@pytest.mark.integration
def test_cascade_runs_both_stages_sharded():
  # Through the cascade the batch is split over the 8 test devices (L2: the more involved code).
  norm = 'l2'
  logits_fn, _, x, y, d = _setup(norm)
  eps = float(np.median(d))
  version = [('fab-t', {'n_iter': 20}), ('square', {'n_queries': SQUARE_QUERIES})]
  result = autoattack(logits_fn, x, y, norm=norm, eps=eps, version=version, batch_size=BATCH)
  assert list(result.stage_accuracy) == ['fab-t', 'square']
  assert result.clean_accuracy == 1.0
  decidable = np.abs(d / eps - 1.0) > 0.02
  np.testing.assert_array_equal(result.robust[decidable], (d >= eps)[decidable])


def test_deterministic_per_seed():
  logits_fn = _mlp(1)
  x = _images(1, 0.0, 1.0)
  y = np.asarray(jnp.argmax(logits_fn(x), axis=1))
  run_sq = lambda seed: np.asarray(square(logits_fn, x, y, norm='linf', eps=0.05,
                                          n_queries=SQUARE_QUERIES, seed=seed))
  np.testing.assert_array_equal(run_sq(3), run_sq(3))
  assert not np.array_equal(run_sq(3), run_sq(4))
  # The seed drives FAB's random restarts only (which rarely change the outcome).
  run_fab = lambda seed: np.asarray(fab_targeted(logits_fn, x, y, norm='linf', eps=0.05,
                                                 n_iter=5, n_restarts=2, seed=seed))
  np.testing.assert_array_equal(run_fab(3), run_fab(3))


@pytest.mark.parametrize('n_queries, table', [
    # (query index, p) read off the reference's p_selection: the schedule is written for 10,000
    # queries and the index is rescaled by int(it / n_queries * 10000) before the comparisons.
    (10000, [(0, 0.8), (10, 0.8), (11, 0.4), (50, 0.4), (51, 0.2), (200, 0.2), (201, 0.1),
             (500, 0.1), (501, 0.05), (1000, 0.05), (1001, 0.025), (2000, 0.025),
             (2001, 0.0125), (4000, 0.0125), (4001, 0.00625), (6000, 0.00625),
             (6001, 0.003125), (8000, 0.003125), (8001, 0.0015625), (9999, 0.0015625)]),
    (5000, [(0, 0.8), (5, 0.8), (6, 0.4), (25, 0.4), (26, 0.2), (100, 0.2), (101, 0.1),
            (250, 0.1), (251, 0.05), (500, 0.05), (501, 0.025), (1000, 0.025),
            (1001, 0.0125), (2000, 0.0125), (2001, 0.00625), (3000, 0.00625),
            (3001, 0.003125), (4000, 0.003125), (4001, 0.0015625), (4999, 0.0015625)]),
    # 1000 queries: one query is ten units of the 10,000-query schedule.
    (1000, [(1, 0.8), (2, 0.4), (5, 0.4), (6, 0.2), (20, 0.2), (21, 0.1), (101, 0.025),
            (801, 0.0015625)]),
])
def test_p_schedule_matches_reference(n_queries, table):
  for it, p in table:
    assert p_selection(it, n_queries, 0.8) == pytest.approx(p, rel=1e-12), it


def test_square_sizes_cifar():
  # 32×32: √(0.8·1024) = 28.6 → 29 at the start; at the end √(0.0015625·1024) = 1.26 → 1 (L∞),
  # raised to 3 for L2, which also keeps sizes odd.
  linf = square_sizes('linf', 5000, 0.8, 32, 32)
  l2 = square_sizes('l2', 5000, 0.8, 32, 32)
  assert (linf[0], linf[6], linf[26], linf[101], linf[4999]) == (29, 20, 14, 10, 1)
  assert (l2[0], l2[6], l2[26], l2[101], l2[4999]) == (29, 21, 15, 11, 3)
  assert np.all(l2 % 2 == 1)


def test_l2_tile_matches_reference_pattern():
  # The reference's 3×3 tile: upper row [¼, 1¼, ¼] and the lower 2×3 block [[¼, ¼, ¼],
  # [¼, 1¼, ¼]] negated, each at unit norm, the whole at unit norm.
  upper = np.array([[0.25, 1.25, 0.25]])
  lower = -np.array([[0.25, 0.25, 0.25], [0.25, 1.25, 0.25]])
  tile = np.concatenate([upper / np.linalg.norm(upper), lower / np.linalg.norm(lower)])
  tile /= np.linalg.norm(tile)
  eta = jax.jit(_eta, static_argnums=1)               # the side may be traced, the canvas not
  np.testing.assert_allclose(np.asarray(eta(3, 3)), tile, rtol=1e-6)
  padded = np.asarray(eta(3, 5))
  np.testing.assert_allclose(padded[:3, :3], tile, rtol=1e-6)
  assert np.all(padded[3:] == 0) and np.all(padded[:, 3:] == 0)

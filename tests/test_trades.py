"""TRADES: the loss against a NumPy transcription of the reference, and the inner maximisation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from trainer.robust import objectives
from trainer.robust import trades
from trainer.attacks import compositions
from trainer.attacks import inits
from trainer.attacks import losses
from trainer.attacks.pgd import pgd_attack


def _np_log_softmax(z):
  z = z - z.max(1, keepdims=True)
  return z - np.log(np.exp(z).sum(1, keepdims=True))


def reference_trades(logits_clean, logits_adv, targets, beta):
  """yaodongyu/TRADES: CE(clean) + β·(1/B)·Σ KLDiv(log_softmax(adv), softmax(clean))."""
  log_p_clean = _np_log_softmax(logits_clean)
  natural = -(targets * log_p_clean).sum(1).mean()
  p = np.exp(log_p_clean)
  robust = (p * (log_p_clean - _np_log_softmax(logits_adv))).sum() / len(p)
  return natural + beta * robust


def _config(norm='linf', eps=8 / 255):
  c = base.get_config()
  c.threat.norm, c.threat.eps = norm, eps
  c.train.beta = 6.0
  return c


def test_trades_loss_matches_reference_formula():
  rng = np.random.default_rng(0)
  b, k = 16, 10
  logits_clean = rng.normal(size=(b, k)).astype(np.float32) * 3
  logits_adv = rng.normal(size=(b, k)).astype(np.float32) * 3
  labels = rng.integers(0, k, b)
  targets = np.asarray(objectives.targets(labels, rng.random(b) < 0.5, k, 0.1))
  # A stand-in model: clean inputs (0) give logits_clean, the "adversarial" ones (1) logits_adv.
  def forward(params, x):
    del params
    return jnp.where(x.reshape(b, -1)[:, :1] > 0.5, logits_adv, logits_clean), {}
  loss = trades.make_loss(lambda fn, x, p, key: x + 1.0, beta=_config().train.beta)
  batch = {'image': jnp.zeros((b, 2, 2, 1)), 'label': labels}
  total, (_, aux) = loss(forward, None, batch, targets, jax.random.PRNGKey(0))
  np.testing.assert_allclose(total, reference_trades(logits_clean, logits_adv, targets, 6.0),
                             rtol=1e-5)
  np.testing.assert_allclose(aux['loss_natural'],
                             reference_trades(logits_clean, logits_adv, targets, 0.0), rtol=1e-5)


def test_label_smoothing_only_on_generated():
  t = np.asarray(objectives.targets(np.array([2, 2]), np.array([False, True]), 4, 0.1))
  np.testing.assert_allclose(t[0], [0, 0, 1, 0])
  np.testing.assert_allclose(t[1], [0.025, 0.025, 0.925, 0.025])


def test_label_smoothing_on_every_row_when_asked():
  t = np.asarray(objectives.targets(np.array([2, 2]), np.array([False, True]), 4, 0.1, True))
  np.testing.assert_allclose(t, [[0.025, 0.025, 0.925, 0.025]] * 2)
  # The objective reads generated.smooth_real_labels: cross-entropy against the smoothed target.
  logits = jnp.array([[2.0, -1.0, 0.5, 0.0], [0.3, 0.2, -0.4, 1.0]])
  batch = {'image': jnp.zeros((2, 1)), 'label': jnp.array([2, 0]),
           'is_generated': jnp.array([False, False])}
  forward = lambda params, x: (logits, None)
  log_p = np.asarray(jax.nn.log_softmax(logits))
  for real_too, target in ((False, np.eye(4)[[2, 0]]), (True, 0.9 * np.eye(4)[[2, 0]] + 0.025)):
    c = base.get_config()
    c.train.loss, c.generated.smooth_real_labels = 'standard', real_too
    total, _ = objectives.build(c, 4)(forward, None, batch, None)
    np.testing.assert_allclose(total, -(target * log_p).sum(1).mean(), rtol=1e-6)


def _linear_model(k=5, d=3 * 4 * 4, seed=0):
  w = jax.random.normal(jax.random.PRNGKey(seed), (d, k)) * 0.3
  return lambda x: x.reshape(x.shape[0], -1) @ w


@pytest.mark.integration
@pytest.mark.parametrize('norm,eps', [('linf', 8 / 255), ('l2', 0.5)])
def test_inner_maximisation_stays_feasible_and_raises_kl(norm, eps):
  logits_fn = _linear_model()
  x = jax.random.uniform(jax.random.PRNGKey(1), (32, 4, 4, 3))
  x = x.at[:4].set(0.0).at[4:8].set(1.0)  # images on the box boundary exercise the [0,1] clip
  p_clean = jax.nn.softmax(logits_fn(x))
  config = _config(norm, eps)
  x_adv = compositions.trades_attack(config)(logits_fn, x, p_clean, jax.random.PRNGKey(2))
  delta = np.asarray(x_adv - x).reshape(32, -1)
  dist = np.abs(delta).max(1) if norm == 'linf' else np.linalg.norm(delta, axis=1)
  assert dist.max() <= eps * (1 + 1e-5) + 1e-7
  assert np.asarray(x_adv).min() >= 0.0 and np.asarray(x_adv).max() <= 1.0
  kl_adv = losses.kl_divergence(logits_fn(x_adv), p_clean)
  # The uniform start alone, for comparison: 10 Adam steps must do much better than the start.
  x0 = inits.uniform(norm, eps)(jax.random.PRNGKey(2), x)
  kl_start = losses.kl_divergence(logits_fn(x0), p_clean)
  assert float(jnp.mean(kl_adv)) > 2 * float(jnp.mean(kl_start))
  assert float(jnp.mean(kl_adv > kl_start)) > 0.9


@pytest.mark.integration
@pytest.mark.parametrize('keep', ['last', 'best'])
def test_unrolled_attack_is_the_loop_written_out(keep):
  """unroll: the program loses the attack's loop and computes what the loop does (to float
  rounding: XLA may fuse the written-out steps differently). The random start keeps a loop of its
  own (the PRNG's), so loops are counted."""
  logits_fn = _linear_model()
  x = jax.random.uniform(jax.random.PRNGKey(1), (16, 4, 4, 3))
  y = jax.random.randint(jax.random.PRNGKey(3), (16,), 0, 5)
  key = jax.random.PRNGKey(2)
  results, loops = {}, {}
  for unroll in (False, True):
    attack = pgd_attack(norm='linf', eps=8 / 255, steps=7, loss='margin', keep=keep,
                            unroll=unroll)
    fn = jax.jit(lambda x, y, k, attack=attack: attack(logits_fn, x, y, k))
    loops[unroll] = fn.lower(x, y, key).as_text().count('stablehlo.while')
    results[unroll] = np.asarray(fn(x, y, key))
  assert loops[True] == loops[False] - 1, loops
  np.testing.assert_allclose(results[True], results[False], atol=1e-6)
  assert np.abs(results[True] - np.asarray(x)).max() > 1e-3  # the attack moved the points


def test_attack_unroll_key_reaches_the_training_attack():
  config = _config('linf', 8 / 255)
  x = jnp.zeros((2, 4, 4, 3))
  p = jax.nn.softmax(jnp.zeros((2, 5)))
  loops = {}
  for value in ('loop', 'unroll', 'auto'):
    config.train.attack_unroll = value
    attack = compositions.trades_attack(config)
    loops[value] = jax.jit(lambda x, p, attack=attack: attack(
        _linear_model(), x, p, jax.random.PRNGKey(0))).lower(x, p).as_text().count(
            'stablehlo.while')
  assert loops['unroll'] == loops['loop'] - 1, loops
  assert loops['auto'] == loops['unroll' if jax.default_backend() == 'cpu' else 'loop'], loops

"""Learning-rate schedule, EMA decay and the weight-decay mask."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base
from models import registry
from trainer.harness import ema
from trainer.robust import optimizer


def _config(batch=1024, epochs=400, warmup=10):
  c = base.get_config()
  c.train.batch_size, c.train.num_epochs, c.optim.warmup_epochs = batch, epochs, warmup
  return c


def test_learning_rate_schedule_values():
  c = _config()
  sched = optimizer.learning_rate_schedule(c)
  total = optimizer.total_steps(c)
  assert total == round(400 * 50_000 / 1024)  # 19531 CIFAR-10-equivalent steps
  warm = round(10 * 50_000 / 1024)             # 488
  assert optimizer.peak_learning_rate(c) == 0.4
  np.testing.assert_allclose(sched(0), 0.0)
  np.testing.assert_allclose(sched(warm // 2), 0.4 * (warm // 2) / warm, rtol=1e-5)
  np.testing.assert_allclose(sched(warm), 0.4, rtol=1e-6)
  mid = warm + (total - warm) // 2
  np.testing.assert_allclose(sched(mid), 0.2, rtol=1e-3)  # cosine is at half its height midway
  np.testing.assert_allclose(sched(total), 0.0, atol=1e-7)


def test_headline_run_step_count():
  c = _config(epochs=2000)
  assert optimizer.total_steps(c) == round(2000 * 50_000 / 1024)  # ≈ 98K steps


def test_ema_decay_values():
  for t, want in [(0, 0.1), (1, 2 / 11), (10, 11 / 20), (100, 101 / 110), (1000, 1001 / 1010),
                  (1790, 0.995), (2000, 0.995), (10 ** 6, 0.995)]:
    np.testing.assert_allclose(ema.decay(t, 0.995), want, rtol=1e-6)
  avg = ema.update({'w': jnp.array(1.0)}, {'w': jnp.array(3.0)}, 0, 0.995)
  np.testing.assert_allclose(avg['w'], 0.1 * 1 + 0.9 * 3, rtol=1e-6)


@pytest.mark.integration
def test_weight_decay_skips_batchnorm():
  model = registry.get_model('wrn-10-1', num_classes=10, mean=(0.5,), std=(0.25,))
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)['params']
  mask = optimizer.weight_decay_mask(params)
  flat = jax.tree_util.tree_flatten_with_path(mask)[0]
  names = {jax.tree_util.keystr(p): m for p, m in flat}
  assert any(m for m in names.values()) and not all(names.values())
  for path, m in names.items():
    assert m == ("['kernel']" in path or ("['bias']" in path and "['bn" not in path)), path
  # One step of pure decay (zero gradient): BN scale untouched, kernels shrunk.
  c = _config()
  tx = optax.add_decayed_weights(c.optim.weight_decay, mask=optimizer.weight_decay_mask)
  zero = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  for (path, u), (_, p) in zip(jax.tree_util.tree_flatten_with_path(updates)[0],
                               jax.tree_util.tree_flatten_with_path(params)[0]):
    if names[jax.tree_util.keystr(path)]:
      np.testing.assert_allclose(u, 5e-4 * p, rtol=1e-6)
    else:
      assert not np.any(u), jax.tree_util.keystr(path)

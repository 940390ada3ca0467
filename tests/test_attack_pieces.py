"""The attack library's pieces (inits, projections, step rules) and their compositions.

The compositions are checked bitwise against a transcription of the single string-switched `pgd`
they replaced, and the reference selection attack against a transcription of DeepMind's PGD
(adversarial_robustness/jax/attacks.py: Adam, then the schedule, then ×−1, on −margin).
"""
import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base
from trainer.attacks import compositions
from trainer.attacks import inits
from trainer.attacks import iterative
from trainer.attacks import losses
from trainer.attacks import projections
from trainer.attacks import steps
from trainer.attacks.common import as_jit_arg
from trainer.attacks.multitargeted import mt_attack
from trainer.attacks.multitargeted import targeted_margin_loss
from trainer.attacks.pgd import pgd_attack

# The module, not the function of the same name that trainer.attacks exports.
multitargeted = importlib.import_module('trainer.attacks.multitargeted')
B, SHAPE, CLASSES = 16, (4, 4, 3), 10
NORMS = [('linf', 8 / 255), ('l2', 0.5)]


def _model():
  rng = np.random.default_rng(0)
  w1 = rng.normal(size=(int(np.prod(SHAPE)), 32)).astype(np.float32) / 4
  w2 = rng.normal(size=(32, CLASSES)).astype(np.float32) / 2
  return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2


@pytest.fixture(scope='module')
def data():
  logits_fn = _model()
  x = np.random.default_rng(1).uniform(0, 1, size=(B,) + SHAPE).astype(np.float32)
  x[:2], x[2:4] = 0.0, 1.0  # on the box boundary
  y = np.asarray(logits_fn(x)).argmax(1).astype(np.int32)
  return logits_fn, x, y


def _config(norm, eps, steps_=10):
  c = base.get_config()
  c.threat.norm, c.threat.eps = norm, eps
  c.train.attack_steps = steps_
  # The replaced implementation was one loop; bitwise equality is a claim about the same program.
  # The unrolled program (CPU's default) is checked against the loop in test_trades.py.
  c.train.attack_unroll = 'loop'
  return c


# --------------------------------------------------------------------------------------------
# The replaced implementation, transcribed: one loop with string switches.
# --------------------------------------------------------------------------------------------

def _old_random_init(key, x, norm, eps):
  if norm == 'linf':
    delta = jax.random.uniform(key, x.shape, x.dtype, -eps, eps)
  else:
    k1, k2 = jax.random.split(key)
    direction = projections.normalize(jax.random.normal(k1, x.shape, x.dtype), 'l2')
    radius = eps * jax.random.uniform(k2, (x.shape[0],), x.dtype) ** (1.0 / x[0].size)
    delta = direction * radius.reshape((-1,) + (1,) * (x.ndim - 1))
  return jnp.clip(x + delta, 0.0, 1.0)


def _old_project(x_adv, x, norm, eps):
  delta = x_adv - x
  if norm == 'linf':
    delta = jnp.clip(delta, -eps, eps)
  else:
    n = jnp.sqrt(jnp.sum(delta.reshape(len(x), -1) ** 2, axis=1))
    delta = delta * jnp.minimum(1.0, eps / jnp.maximum(n, 1e-12)).reshape(-1, 1, 1, 1)
  return jnp.clip(x + delta, 0.0, 1.0)


def old_pgd(logits_fn, x, y, *, norm, eps, steps_, key, loss, optimizer, raw_gradient,
            keep_best):
  x_adv = _old_random_init(key, x, norm, eps)
  bcast = lambda v: v.reshape(-1, 1, 1, 1)

  def objective(z):
    per_example = loss(logits_fn(z).astype(jnp.float32), y)
    return jnp.sum(per_example), per_example
  grad_fn = jax.grad(objective, has_aux=True)

  def body(_, carry):
    z, opt_state, best, best_loss = carry
    g, current = grad_fn(z)
    best = jnp.where(bcast(current > best_loss), z, best)
    best_loss = jnp.maximum(current, best_loss)
    direction = g if raw_gradient else projections.normalize(g, norm)
    updates, opt_state = optimizer.update(-direction, opt_state, z)
    return _old_project(z + updates, x, norm, eps), opt_state, best, best_loss

  carry = (x_adv, optimizer.init(x_adv), x_adv, jnp.full((x.shape[0],), -jnp.inf))
  z, _, best, best_loss = jax.lax.fori_loop(0, steps_, body, carry)
  if not keep_best:
    return z
  _, final = objective(z)
  return jnp.where(bcast(final > best_loss), z, best)


@pytest.mark.integration
@pytest.mark.parametrize('norm,eps', NORMS)
def test_compositions_equal_the_replaced_pgd_bitwise(data, norm, eps):
  logits_fn, x, y = data
  key = jax.random.PRNGKey(3)
  p_clean = jax.nn.softmax(logits_fn(x))
  trades_adam = optax.adam(optax.piecewise_constant_schedule(0.1, {5: 0.1}))
  cases = {
      'trades': (compositions.trades_attack(_config(norm, eps))(logits_fn, x, p_clean, key),
                 old_pgd(logits_fn, x, p_clean, norm=norm, eps=eps, steps_=10, key=key,
                         loss=losses.kl_divergence, optimizer=trades_adam, raw_gradient=True,
                         keep_best=False)),
      'madry': (compositions.madry_attack(_config(norm, eps))(logits_fn, x, y, key),
                old_pgd(logits_fn, x, y, norm=norm, eps=eps, steps_=10, key=key,
                        loss=losses.cross_entropy, optimizer=optax.sgd(0.25 * eps),
                        raw_gradient=False, keep_best=False)),
      'selection': (compositions.selection_attack(_config(norm, eps))(logits_fn, x, y, key),
                    old_pgd(logits_fn, x, y, norm=norm, eps=eps, steps_=40, key=key,
                            loss=losses.margin, optimizer=optax.sgd(2.5 * eps / 40),
                            raw_gradient=False, keep_best=True)),
  }
  target = (y + 1) % CLASSES
  cases['mt'] = (mt_attack(y, target, norm=norm, eps=eps, n_steps=12)(logits_fn, x, y, key),
                 old_pgd(logits_fn, x, y, norm=norm, eps=eps, steps_=12, key=key,
                         loss=targeted_margin_loss(y, target),
                         optimizer=optax.adam(optimizer_lr(eps, 12), eps=1e-12)
                         if norm == 'linf' else optax.sgd(optimizer_lr(eps, 12)),
                         raw_gradient=norm == 'linf', keep_best=True))
  for name, (new, old) in cases.items():
    assert not np.array_equal(np.asarray(old), x), name  # the attack moved
    np.testing.assert_array_equal(np.asarray(new), np.asarray(old), err_msg=name)


@pytest.mark.parametrize('norm,eps', NORMS)
def test_multitargeted_driven_from_the_host_equals_the_one_program(data, norm, eps):
  """CPU drives each restart's steps from the host; accelerators run all restarts as one program."""
  logits_fn, x, y = data
  key, restarts = jax.random.key(5), jnp.arange(4, dtype=jnp.int32)
  host = multitargeted.multitargeted_runs(logits_fn, x, y, key, restarts, norm=norm, eps=eps,
                                          n_steps=12)
  fn = as_jit_arg(logits_fn)
  state = multitargeted._begin(fn, x, y, n_target_classes=10)
  program = multitargeted._all_restarts(fn, x, y, key, restarts, state, norm=norm, eps=eps,
                                        n_steps=12, restarts_per_target=0).x_adv
  assert not np.array_equal(np.asarray(host), x)  # the attack moved
  # Same arithmetic; one fused program and per-step programs round float32 differently (L2's
  # normalised steps of length 2ε drift by up to ~1e-5 over 12 steps), so: close, and the same
  # predictions.
  np.testing.assert_allclose(np.asarray(host), np.asarray(program), atol=3e-5)
  np.testing.assert_array_equal(np.argmax(logits_fn(host), 1), np.argmax(logits_fn(program), 1))


@pytest.mark.parametrize('keep', ['last', 'best'])
@pytest.mark.parametrize('norm,eps', NORMS)
def test_an_attack_driven_from_the_host_equals_the_one_program(data, norm, eps, keep):
  logits_fn, x, y = data
  attack = pgd_attack(norm=norm, eps=eps, steps=7, loss='margin', keep=keep)
  key, fn = jax.random.key(2), as_jit_arg(logits_fn)
  host = iterative.drive_on_host(attack, fn, x, y, key)
  program = jax.jit(attack)(fn, x, y, key)
  assert not np.array_equal(np.asarray(host), x)  # the attack moved
  np.testing.assert_allclose(np.asarray(host), np.asarray(program), atol=3e-5)
  np.testing.assert_array_equal(np.argmax(logits_fn(host), 1), np.argmax(logits_fn(program), 1))


def optimizer_lr(eps, n_steps):
  """MultiTargeted's: 2ε, ×0.1 after half the steps and again after three quarters."""
  return optax.piecewise_constant_schedule(2.0 * eps, {n_steps // 2: 0.1, (3 * n_steps) // 4: 0.1})


# --------------------------------------------------------------------------------------------
# The reference selection attack and Adam's ε.
# --------------------------------------------------------------------------------------------

def test_reference_schedule_is_the_reference_one():
  schedule = compositions.reference_schedule(40)
  got = [float(schedule(s)) for s in (0, 19, 20, 29, 30, 39)]
  np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.01, 1e-4, 1e-4], rtol=1e-6)


def deepmind_pgd(logits_fn, x, y, key, *, eps, num_steps=40):
  """DeepMind's eval attack: Adam(ε 1e-9) → schedule {20: .1, 30: .01} → ×−1, minimising
  label logit − best other logit, from x + U[−ε, ε] projected, returning the last iterate."""
  tx = optax.chain(optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-9),
                   optax.scale_by_schedule(optax.piecewise_constant_schedule(
                       0.1, {20: 0.1, 30: 0.01})), optax.scale(-1.0))
  project = lambda z: jnp.clip(x + jnp.clip(z - x, -eps, eps), 0.0, 1.0)

  def loss(z):
    logits = logits_fn(z)
    mask = jax.nn.one_hot(y, logits.shape[1])
    return jnp.sum(logits[jnp.arange(len(y)), y] - jnp.max(logits - 1e8 * mask, axis=1))

  def body(_, carry):
    z, state = carry
    updates, state = tx.update(jax.grad(loss)(z), state, z)
    return project(optax.apply_updates(z, updates)), state

  z = project(x + jax.random.uniform(key, x.shape, minval=-eps, maxval=eps))
  return jax.lax.fori_loop(0, num_steps, body, (z, tx.init(z)))[0]


@pytest.mark.integration
def test_reference_selection_attack_matches_deepmind_transcription(data):
  logits_fn, x, y = data
  eps, key = 8 / 255, jax.random.PRNGKey(5)
  config = _config('linf', eps)
  config.eval.selection_attack = 'reference'
  ours = compositions.selection_attack(config)(logits_fn, x, y, key)
  theirs = deepmind_pgd(logits_fn, x, y, key, eps=eps)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), atol=1e-6)
  # Not the default attack: the sign-step PGD-40 lands elsewhere.
  default = compositions.selection_attack(_config('linf', eps))(logits_fn, x, y, key)
  assert not np.allclose(np.asarray(default), np.asarray(ours), atol=1e-6)


def test_unknown_selection_attack_names_the_key():
  config = _config('linf', 0.1)
  config.eval.selection_attack = 'apgd'
  with pytest.raises(ValueError, match=r"eval.selection_attack='apgd'"):
    compositions.selection_attack(config)


def test_adam_eps_reaches_optax(monkeypatch):
  seen = []
  real_adam = optax.adam
  monkeypatch.setattr(optax, 'adam', lambda lr, **kw: seen.append(kw) or real_adam(lr, **kw))
  config = _config('linf', 0.1)
  compositions.trades_attack(config)
  config.train.attack_adam_eps = 1e-9
  compositions.trades_attack(config)
  assert [kw['eps'] for kw in seen] == [1e-8, 1e-9]


def test_adam_eps_sets_the_first_step():
  """Adam's first update is −lr·g/(|g| + ε); for |g| = ε it is half a full step."""
  g = jnp.full((2, 3), 1e-9)
  for eps, want in ((1e-9, -0.05), (1e-8, -0.1 / 11)):
    tx = steps.adam(0.1, eps=eps)
    updates, _ = tx.update(g, tx.init(g))
    np.testing.assert_allclose(np.asarray(updates), want, rtol=1e-5)
  with pytest.raises(ValueError, match='eps'):
    steps.adam(0.1, eps=0.0)


# --------------------------------------------------------------------------------------------
# Pieces.
# --------------------------------------------------------------------------------------------

def test_projections_on_hand_made_points():
  x = jnp.array([[0.5, 0.0, 1.0], [0.5, 0.5, 0.5]])
  z = jnp.array([[0.9, -0.3, 1.0], [0.5, 0.5, 1.5]])
  np.testing.assert_allclose(projections.linf_ball(0.1)(z, x), [[0.6, -0.1, 1.0], [0.5, 0.5, 0.6]],
                             rtol=1e-6)
  np.testing.assert_allclose(projections.l2_ball(0.5)(z, x),  # ‖(0.4, −0.3, 0)‖ = 0.5: kept
                             [[0.9, -0.3, 1.0], [0.5, 0.5, 1.0]], rtol=1e-6)
  np.testing.assert_allclose(projections.box()(z, x), [[0.9, 0.0, 1.0], [0.5, 0.5, 1.0]])
  both = projections.compose(projections.linf_ball(0.1), projections.box())
  np.testing.assert_allclose(both(z, x), [[0.6, 0.0, 1.0], [0.5, 0.5, 0.6]], rtol=1e-6)
  np.testing.assert_array_equal(projections.threat_model('linf', 0.1)(z, x), both(z, x))
  np.testing.assert_array_equal(projections.project(z, x, norm='linf', eps=0.1), both(z, x))
  with pytest.raises(ValueError, match='Unknown norm'):
    projections.threat_model('l1', 0.1)


def test_steepest_steps():
  g = jnp.array([[3.0, -4.0], [0.0, 2.0]])
  tx = steps.sign(0.1)
  np.testing.assert_allclose(tx.update(g, tx.init(g))[0], [[-0.1, 0.1], [0.0, -0.1]])
  tx = steps.normalized_l2(0.5)
  np.testing.assert_allclose(tx.update(g, tx.init(g))[0], [[-0.3, 0.4], [0.0, -0.5]], rtol=1e-6)


@pytest.mark.parametrize('norm,eps', NORMS)
def test_inits_are_feasible(norm, eps):
  x = jnp.asarray(np.random.default_rng(2).uniform(0, 1, (64,) + SHAPE), jnp.float32)
  x0 = inits.uniform(norm, eps)(jax.random.PRNGKey(0), x)
  size = projections.per_example_norm(x0 - x, norm)
  assert float(size.max()) <= eps * (1 + 1e-6) and float(size.min()) > 0
  assert float(x0.min()) >= 0 and float(x0.max()) <= 1
  np.testing.assert_array_equal(inits.zero()(jax.random.PRNGKey(0), x), x)


def test_random_starts_are_the_compact_threefry_draws_on_any_sharding():
  """APGD's start comes from the non-partitionable threefry (cheaper to compile on CPU, see
  `compact_random`), and a batch split over 8 devices gets the same start as on one."""
  apgd = importlib.import_module('trainer.attacks.apgd')
  x = jnp.asarray(np.random.default_rng(3).uniform(0, 1, (16,) + SHAPE), jnp.float32)
  key = jax.random.key(5)
  start = jax.jit(functools.partial(apgd.start_point, norm='linf', eps=0.1))
  with jax.threefry_partitionable(False):
    t = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
  t = t / jnp.max(jnp.abs(t.reshape(len(t), -1)), axis=1).reshape(-1, 1, 1, 1)
  np.testing.assert_allclose(start(key, x), jnp.clip(x + 0.1 * t, 0.0, 1.0), atol=1e-7)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ('batch',))
  split = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('batch')))
  np.testing.assert_array_equal(start(key, split), start(key, x))


def test_attack_result_carries_no_gradient(data):
  _, x, y = data
  attack = pgd_attack(norm='linf', eps=0.1, steps=3, loss='ce', keep='last')
  w = jnp.ones((int(np.prod(SHAPE)), CLASSES)) * 0.01

  def f(w, x):
    return jnp.sum(attack(lambda z: z.reshape(len(z), -1) @ w, x, y, jax.random.PRNGKey(0)))
  assert float(jnp.abs(jax.grad(f)(w, x)).max()) == 0.0
  assert float(jnp.abs(jax.grad(f, argnums=1)(w, x)).max()) == 0.0


def test_keep_best_returns_the_highest_loss_iterate(data):
  """A step rule that walks away from the optimum: 'best' keeps the start, 'last' does not."""
  logits_fn, x, y = data
  away = optax.GradientTransformation(lambda _: optax.EmptyState(),
                                      lambda u, s, p=None: (jax.tree.map(lambda g: 0.01 * g, u), s))
  common = dict(init=inits.zero(), step_rule=away, project=projections.threat_model('linf', 1.0),
                num_steps=5)
  best = iterative.iterative_attack(losses.margin, keep='best', **common)(logits_fn, x, y, None)
  last = iterative.iterative_attack(losses.margin, keep='last', **common)(logits_fn, x, y, None)
  np.testing.assert_array_equal(np.asarray(best), x)
  assert np.all(np.asarray(losses.margin(logits_fn(last), y)) <=
                np.asarray(losses.margin(logits_fn(x), y)))
  assert not np.array_equal(np.asarray(last), x)
  with pytest.raises(ValueError, match='keep'):
    iterative.iterative_attack(losses.margin, keep='first', **common)

"""Attacks and cascades on a linear model, where the optimal attack is known in closed form.

For logits z = x·W + b and a rival class t, the best perturbation of norm ≤ ε raises z_t − z_y by
ε‖w_t − w_y‖_q (q = 1 for L∞, 2 for L2), as long as the optimum stays inside [0, 1]; the inputs
lie in [0.3, 0.7] and ε < 0.3 so it does. A point is breakable iff
min_t (z_y − z_t) / ‖w_y − w_t‖_q < ε. One model and one batch shape serve every test, since jit
compilation dominates the run time.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.attacks import losses
from trainer.attacks.apgd import apgd
from trainer.attacks.apgd import apgd_targeted
from trainer.attacks.apgd import checkpoints
from trainer.attacks.autoattack import autoattack
from trainer.attacks.autoattack import feasible
from trainer.attacks.stages import Stage
from trainer.attacks.stages import make_stage
from trainer.attacks.stages import resolve_stages
from trainer.attacks.multitargeted import multitargeted
from trainer.attacks.pgd import pgd

N, SHAPE, CLASSES = 64, (4, 4, 3), 10
DIM = int(np.prod(SHAPE))
GAP = 0.03  # points whose minimal ε is within 3% of ε are left out of exactness checks


def _linear(params, x):
  return (x.reshape(x.shape[0], -1) - 0.5) @ params['w'] + params['b']


@pytest.fixture(scope='module')
def problem():
  rng = np.random.default_rng(0)
  params = {'w': rng.normal(size=(DIM, CLASSES)).astype(np.float32),
            'b': rng.normal(size=(CLASSES,)).astype(np.float32)}
  x = rng.uniform(0.3, 0.7, size=(N,) + SHAPE).astype(np.float32)
  logits = (x.reshape(N, -1).astype(np.float64) - 0.5) @ params['w'] + params['b']
  y = logits.argmax(1).astype(np.int32)
  y[:4] = (y[:4] + 1) % CLASSES  # a few points misclassified before any attack
  logits_fn = jax.tree_util.Partial(_linear, params)
  return dict(params=params, x=x, y=y, logits=logits, logits_fn=logits_fn)


def minimal_eps(problem, norm):
  """Per point: the smallest ε at which some rival overtakes the label (0 if misclassified)."""
  w, logits, y = problem['params']['w'].astype(np.float64), problem['logits'], problem['y']
  q = 1 if norm == 'linf' else 2
  diff = w[:, y].T[:, None, :] - w.T[None]                          # (n, classes, dim)
  dual = np.linalg.norm(diff, ord=q, axis=2)
  margin = np.take_along_axis(logits, y[:, None], 1) - logits       # z_y − z_t
  ratio = np.where(np.arange(CLASSES)[None] == y[:, None], np.inf, margin / np.maximum(dual, 1e-12))
  return np.maximum(ratio.min(1), 0.0)


def epsilon(problem, norm):
  """ε at the median of the correctly classified points' minimal ε: about half are breakable."""
  eps = float(np.median(minimal_eps(problem, norm)[4:]))
  assert eps < 0.3, 'the optimum must stay inside [0, 1] for the closed form to hold'
  return eps


def broken(problem, x_adv, index=slice(None)):
  return np.asarray(_linear(problem['params'], x_adv)).argmax(1) != problem['y'][index]


def in_threat_model(x_adv, x, norm, eps):
  delta = (np.asarray(x_adv, np.float64) - x).reshape(len(x), -1)
  size = np.abs(delta).max(1) if norm == 'linf' else np.linalg.norm(delta, axis=1)
  return (size <= eps * (1 + 1e-6) + 1e-6) & (np.asarray(x_adv) >= 0).all((1, 2, 3)) & (
      np.asarray(x_adv) <= 1).all((1, 2, 3))


ATTACKS = {
    'pgd': lambda f, x, y, norm, eps, seed: pgd(
        f, x, y, norm=norm, eps=eps, steps=20, key=jax.random.key(seed), loss='margin'),
    'apgd-ce': lambda f, x, y, norm, eps, seed: apgd(
        f, x, y, norm=norm, eps=eps, n_iter=50, loss='ce', seed=seed),
    'apgd-t': lambda f, x, y, norm, eps, seed: apgd_targeted(
        f, x, y, norm=norm, eps=eps, n_iter=50, seed=seed),
    'mt': lambda f, x, y, norm, eps, seed: multitargeted(
        f, x, y, norm=norm, eps=eps, n_restarts=9, n_steps=30, seed=seed),
}


@pytest.fixture(scope='module')
def attacked(problem):
  """Every attack on both norms, once: {(attack, norm): (x_adv, eps)}."""
  out = {}
  for norm in ('linf', 'l2'):
    eps = epsilon(problem, norm)
    for name, attack in ATTACKS.items():
      x_adv = attack(problem['logits_fn'], problem['x'], problem['y'], norm, eps, 0)
      out[name, norm] = np.asarray(x_adv), eps
  return out


# --------------------------------------------------------------------------------------------
# Pieces.
# --------------------------------------------------------------------------------------------

def test_apgd_checkpoints():
  assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
  assert checkpoints(10) == list(range(2, 11))
  assert checkpoints(1) == [1]


def test_dlr_on_hand_made_logits():
  logits = jnp.array([[1., 2., 3., 4.], [1., 2., 3., 4.], [0., 5., 1., 2.]])
  # Label on top: −(4 − 3)/(4 − 2); label at the bottom: −(1 − 4)/(4 − 2); −(5 − 2)/(5 − 1).
  np.testing.assert_allclose(losses.dlr(logits, jnp.array([3, 0, 1])), [-0.5, 1.5, -0.75],
                             rtol=1e-6)


def test_targeted_dlr_on_hand_made_logits():
  logits = jnp.array([[1., 2., 3., 4., 5.], [0., 4., 1., 2., 8.]])
  # −(z_y − z_t)/(z_π1 − (z_π3 + z_π4)/2): −(5 − 2)/(5 − 2.5); −(4 − 0)/(8 − 1.5).
  np.testing.assert_allclose(losses.targeted_dlr(logits, jnp.array([4, 1]), jnp.array([1, 0])),
                             [-1.2, -4 / 6.5], rtol=1e-6)


def test_feasible_tolerates_rounding_only():
  x = np.full((3, 4), 0.5, np.float32)
  x_adv = x + np.array([[0.1, 0, 0, 0], [0.1 + 1e-4, 0, 0, 0], [0.05, 0, 0, np.nan]], np.float32)
  np.testing.assert_array_equal(feasible(x_adv, x, norm='linf', eps=0.1), [True, False, False])
  x_adv = np.array([[1.0, 0.5, 0.5, 0.5], [1.0 + 1e-6, 0.5, 0.5, 0.5]], np.float32)
  np.testing.assert_array_equal(feasible(x_adv, x[:2], norm='l2', eps=0.5), [True, False])


# --------------------------------------------------------------------------------------------
# Attacks.
# --------------------------------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.parametrize('norm', ['linf', 'l2'])
@pytest.mark.parametrize('name', list(ATTACKS))
def test_outputs_stay_in_threat_model(problem, attacked, name, norm):
  x_adv, eps = attacked[name, norm]
  assert x_adv.dtype == np.float32 and x_adv.shape == problem['x'].shape
  assert in_threat_model(x_adv, problem['x'], norm, eps).all()
  assert feasible(x_adv, problem['x'], norm=norm, eps=eps).all()


@pytest.mark.parametrize('norm', ['linf', 'l2'])
@pytest.mark.parametrize('name', ['mt', 'apgd-t'])
def test_targeted_attacks_are_optimal_on_a_linear_model(problem, attacked, name, norm):
  x_adv, eps = attacked[name, norm]
  need = minimal_eps(problem, norm)
  clear = np.abs(need / eps - 1) > GAP
  np.testing.assert_array_equal(broken(problem, x_adv)[clear], (need < eps)[clear])


@pytest.mark.parametrize('norm', ['linf', 'l2'])
@pytest.mark.parametrize('name', ['pgd', 'apgd-ce'])
def test_untargeted_attacks_break_only_breakable_points(problem, attacked, name, norm):
  x_adv, eps = attacked[name, norm]
  need = minimal_eps(problem, norm)
  hit = broken(problem, x_adv)
  assert not np.any(hit & (need > eps * (1 + 1e-4)))
  assert hit[need < eps * (1 - GAP)].mean() > 0.8


def test_misclassified_points_are_returned_clean(problem, attacked):
  for name in ('apgd-ce', 'apgd-t'):
    np.testing.assert_array_equal(attacked[name, 'linf'][0][:4], problem['x'][:4])


@pytest.mark.parametrize('name', ['apgd-ce', 'mt'])
def test_attacks_are_deterministic(problem, attacked, name):
  x_adv, eps = attacked[name, 'linf']
  again = ATTACKS[name](problem['logits_fn'], problem['x'], problem['y'], 'linf', eps, 0)
  np.testing.assert_array_equal(np.asarray(again), x_adv)


# --------------------------------------------------------------------------------------------
# Cascades.
# --------------------------------------------------------------------------------------------

def test_versions_resolve_to_the_reference_stages():
  standard = resolve_stages('standard', CLASSES)
  assert [(s.name, s.n_passes) for s in standard] == [
      ('apgd-ce', 1), ('apgd-t', 9), ('fab-t', 1), ('square', 1)]
  assert [(s.name, s.n_passes) for s in resolve_stages('aa+mt', CLASSES)] == [
      ('apgd-ce', 5), ('apgd-dlr', 5), ('mt', 10)]
  assert resolve_stages(['pgd-20', ('apgd-t', {'n_restarts': 2})], 5)[1].n_passes == 8
  with pytest.raises(ValueError, match='Unknown attack stage'):
    make_stage('cw', CLASSES)
  with pytest.raises(ValueError, match='Unknown AutoAttack version'):
    resolve_stages('minus', CLASSES)


class Spy:
  """Wraps a stage and records every call: the points it received and what it returned."""

  def __init__(self, stage, x, calls):
    self.stage, self.x, self.calls = stage, x, calls

  def __call__(self, logits_fn, xb, yb, **kwargs):
    out = self.stage.attack(logits_fn, xb, yb, **kwargs)
    received = np.asarray(xb).reshape(len(xb), -1)
    index = [int(np.flatnonzero((self.x == row).all(1))[0]) for row in received]
    keep = [index.index(i) for i in dict.fromkeys(index)]  # drop the padding (repeated rows)
    self.calls.append((self.stage.name, kwargs['pass_index'], [index[k] for k in keep],
                       np.asarray(out)[keep]))
    return out

  def wrap(self):
    return Stage(self.stage.name, self.stage.n_passes, self)


def _cheat(logits_fn, x, y, *, norm, eps, seed, pass_index):
  """Returns the image of a point of another class: misclassified, far outside the ε-ball."""
  del logits_fn, norm, eps, seed, pass_index
  x, y = np.asarray(x), np.asarray(y)
  return x[[np.flatnonzero(y != label)[0] for label in y]]


CASCADE = [('apgd-ce', {'n_restarts': 2, 'n_iter': 20}),
           ('mt', {'n_restarts': 3, 'n_steps': 20})]


def _cascade(problem, mesh=None, calls=None, logits_fn=None, **kwargs):
  eps = epsilon(problem, 'linf')
  stages = [Stage('cheat', 1, _cheat)] + resolve_stages(CASCADE, CLASSES)
  if calls is not None:
    flat = problem['x'].reshape(N, -1)
    stages = [Spy(s, flat, calls).wrap() for s in stages]
  return autoattack(logits_fn or problem['logits_fn'], problem['x'], problem['y'], norm='linf',
                    eps=eps, version=stages, seed=1, batch_size=8, mesh=mesh, **kwargs), eps


@pytest.fixture(scope='module')
def spied(problem):
  calls = []
  result, eps = _cascade(problem, calls=calls)
  return result, eps, calls


def test_cascade_attacks_only_robust_points_and_keeps_worst_case(problem, spied):
  result, eps, calls = spied
  robust = problem['logits'].argmax(1) == problem['y']
  first = {}
  for name, _, index, out in calls:  # replay the calls in order
    index = np.array(index)
    assert robust[index].all(), f'{name} received a point that was already broken'
    wrong = broken(problem, out, index)
    inside = in_threat_model(out, problem['x'][index], 'linf', eps)
    if name == 'cheat':
      assert wrong.all() and not inside.any()
    hit = wrong & inside
    for i, row in zip(index[hit], out[hit]):
      first.setdefault(i, (name, row))
    robust[index[hit]] = False
  np.testing.assert_array_equal(result.robust, robust)
  for i, (name, row) in first.items():
    assert result.broken_by[i] == name
    np.testing.assert_array_equal(result.x_adv[i], row)
  np.testing.assert_array_equal(result.x_adv[robust], problem['x'][robust])
  assert not np.any(result.broken_by == 'cheat')
  assert list(result.stage_accuracy) == ['cheat', 'apgd-ce', 'mt']
  assert result.clean_accuracy == result.stage_accuracy['cheat'] == np.mean(
      problem['logits'].argmax(1) == problem['y'])
  accuracies = [result.clean_accuracy] + list(result.stage_accuracy.values())
  assert accuracies == sorted(accuracies, reverse=True)
  assert result.stage_accuracy['mt'] == result.robust_accuracy


def test_cascade_matches_theory_on_a_linear_model(problem, spied):
  result, eps, _ = spied
  need = minimal_eps(problem, 'linf')
  clear = np.abs(need / eps - 1) > GAP
  np.testing.assert_array_equal(result.robust[clear], (need >= eps)[clear])


def test_cascade_same_result_on_one_and_eight_devices(problem, spied):
  """Also passes a plain function (weights closed over) instead of a Partial."""
  assert len(jax.devices()) == 8
  one = jax.make_mesh((1,), ('data',), axis_types=(jax.sharding.AxisType.Auto,),
                      devices=jax.devices()[:1])
  params = problem['params']
  result, _ = _cascade(problem, mesh=one, logits_fn=lambda x: _linear(params, x))
  eight = spied[0]
  np.testing.assert_array_equal(result.robust, eight.robust)
  np.testing.assert_array_equal(result.broken_by, eight.broken_by)
  assert result.stage_accuracy == eight.stage_accuracy
  np.testing.assert_allclose(result.x_adv, eight.x_adv, atol=1e-6)


def test_cascade_rejects_bad_input(problem):
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    autoattack(problem['logits_fn'], problem['x'] * 2, problem['y'], norm='linf', eps=0.1)
  with pytest.raises(ValueError, match='Unknown norm'):
    autoattack(problem['logits_fn'], problem['x'], problem['y'], norm='l1', eps=0.1)


def test_a_resumed_cascade_equals_an_uninterrupted_one(problem, spied):
  """Every finished pass reports its state; resuming from any of them gives the same points."""
  states = []
  result, _ = _cascade(problem, on_pass=states.append)
  # cheat (1 pass), apgd-ce (2), mt (3): a state after every pass, the last one 'all done'.
  assert [(s.stage, s.next_pass) for s in states] == [(1, 0), (1, 1), (2, 0), (2, 1), (2, 2),
                                                      (3, 0)]
  np.testing.assert_array_equal(result.robust, spied[0].robust)
  for state in (states[1], states[3], states[-1]):
    resumed, _ = _cascade(problem, resume=state)
    np.testing.assert_array_equal(resumed.robust, result.robust)
    np.testing.assert_array_equal(resumed.broken_by, result.broken_by)
    np.testing.assert_array_equal(resumed.x_adv, result.x_adv)
    assert resumed.stage_accuracy == result.stage_accuracy
  # A state of other points is refused, and says why.
  other = states[1]._replace(robust=states[1].robust[:5])
  with pytest.raises(ValueError, match='robust has shape'):
    _cascade(problem, resume=other)

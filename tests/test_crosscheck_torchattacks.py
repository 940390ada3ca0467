"""Cross-check of our attacks against an implementation no one here wrote: torchattacks.

A small ReLU MLP is adversarially trained in plain JAX on the real scikit-learn `digits` images
(8×8 grey, shipped with scikit-learn), its weights are copied into an equivalent torch module,
and on the same 500 held-out images our APGD-CE, APGD-T and Square robust accuracies must each
be within one percentage point of torchattacks' APGD (loss='ce'), APGDT and Square, run with the
same steps, restarts, targets and queries. Square uses 1,000 queries on both sides (not 5,000)
to keep torchattacks' Python loop short, and both sides run the p schedule as AutoAttack
'standard' does, not stretched to the query budget (`resc_schedule=False`): by query 1,000 the
squares on 64 pixels are down to 2×2.

ε = 0.15 (L∞, on 17 grey levels) puts robust accuracy near 50%, where a weaker or a broken attack
would show. A single run of a random attack is itself noisy: on this model one Square run's robust
accuracy varies by about 0.8 points (standard deviation) from seed to seed, on either side, so
one run against one run would miss the 1-point bar by chance alone about 40% of the time. Each
side therefore reports its mean over the same seeds: twenty for Square (standard error about 0.2
points per side; over 20 seeds the two means differed by 0.3 points), five for APGD, whose runs
vary much less. The seeds are fixed, so the numbers are reproducible on a given platform. torch
runs single-threaded: for a model this small its thread pool only adds overhead (a lot of it on
a busy machine).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch  # requirements-dev.txt and .ci/run install both: this test never skips
import torchattacks

from trainer.attacks.apgd import apgd
from trainer.attacks.apgd import apgd_targeted
from trainer.attacks.pgd import pgd
from trainer.attacks.square import square

pytestmark = pytest.mark.integration

EPS = 0.15
N_TEST = 500
HIDDEN = 64
SQUARE_QUERIES = 1000
TOLERANCE = 0.01
SEEDS = {'apgd-ce': range(5), 'apgd-t': range(5), 'square': range(20)}


def _mlp(params, x):
  h = jax.nn.relu(x.reshape(x.shape[0], -1) @ params['w1'] + params['b1'])
  return h @ params['w2'] + params['b2']


def _digits():
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  x = (digits.images / 16.0).astype(np.float32)[..., None]   # NHWC in [0, 1]
  y = digits.target.astype(np.int32)
  return (x[:-N_TEST], y[:-N_TEST]), (x[-N_TEST:], y[-N_TEST:])


def _train(x, y, *, epochs=20, batch=128, seed=0):
  """Half clean, half PGD-7 cross-entropy: robust enough that ε = 0.15 leaves about half."""
  k_w1, k_w2, k_attack = jax.random.split(jax.random.key(seed), 3)
  params = {'w1': jax.random.normal(k_w1, (64, HIDDEN)) / 8, 'b1': jnp.zeros(HIDDEN),
            'w2': jax.random.normal(k_w2, (HIDDEN, 10)) / np.sqrt(HIDDEN), 'b2': jnp.zeros(10)}
  opt = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state, xb, yb, key):
    x_adv = pgd(lambda z: _mlp(params, z), xb, yb, norm='linf', eps=EPS, steps=7, key=key,
                loss='ce', step_size=EPS / 3)
    x_adv = jax.lax.stop_gradient(x_adv)

    def loss(params):
      ce = lambda z: optax.softmax_cross_entropy_with_integer_labels(_mlp(params, z), yb).mean()
      return 0.5 * ce(xb) + 0.5 * ce(x_adv)

    updates, opt_state = opt.update(jax.grad(loss)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = opt.init(params)
  rng = np.random.default_rng(seed)
  for epoch in range(epochs):
    order = rng.permutation(len(x))
    for i in range(0, len(order) - batch + 1, batch):
      idx = order[i:i + batch]
      params, opt_state = step(params, opt_state, x[idx], y[idx],
                               jax.random.fold_in(k_attack, epoch * len(x) + i))
  return params


class TorchMLP(torch.nn.Module):
  """The same MLP in torch; it takes NCHW and flattens in our NHWC order."""

  def __init__(self, params):
    super().__init__()
    to_torch = lambda a: torch.tensor(np.asarray(a))
    self.fc1 = torch.nn.Linear(64, HIDDEN)
    self.fc2 = torch.nn.Linear(HIDDEN, 10)
    with torch.no_grad():
      self.fc1.weight.copy_(to_torch(params['w1']).T)
      self.fc1.bias.copy_(to_torch(params['b1']))
      self.fc2.weight.copy_(to_torch(params['w2']).T)
      self.fc2.bias.copy_(to_torch(params['b2']))

  def forward(self, x):
    return self.fc2(torch.relu(self.fc1(x.permute(0, 2, 3, 1).flatten(1))))


@pytest.fixture(scope='module')
def single_threaded_torch():
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def models(single_threaded_torch):  # pylint: disable=redefined-outer-name,unused-argument
  (x_train, y_train), (x_test, y_test) = _digits()
  params = _train(x_train, y_train)
  logits_fn = jax.tree_util.Partial(_mlp, params)
  torch_model = TorchMLP(params).eval()
  return logits_fn, torch_model, x_test, y_test


def _ours(logits_fn, x, y, x_adv):
  return float(np.mean(np.asarray(jnp.argmax(logits_fn(x_adv), axis=1)) == y))


def _theirs(torch_model, attack, x, y):
  x_t = torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  y_t = torch.tensor(y, dtype=torch.long)
  x_adv = attack(x_t, y_t)
  with torch.no_grad():
    return float((torch_model(x_adv).argmax(1) == y_t).float().mean())


def test_ported_model_gives_the_same_logits(models):  # pylint: disable=redefined-outer-name
  logits_fn, torch_model, x, _ = models
  with torch.no_grad():
    theirs = torch_model(torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
  np.testing.assert_allclose(theirs, np.asarray(logits_fn(x)), atol=1e-4)


ATTACKS = {
    'apgd-ce': (
        lambda f, x, y, seed: apgd(f, x, y, norm='linf', eps=EPS, n_iter=100, n_restarts=1,
                                   loss='ce', seed=seed),
        lambda m, seed: torchattacks.APGD(m, norm='Linf', eps=EPS, steps=100, n_restarts=1,
                                          loss='ce', seed=seed)),
    'apgd-t': (
        lambda f, x, y, seed: apgd_targeted(f, x, y, norm='linf', eps=EPS, n_iter=100,
                                            n_target_classes=9, seed=seed),
        lambda m, seed: torchattacks.APGDT(m, norm='Linf', eps=EPS, steps=100, n_restarts=1,
                                           n_classes=10, seed=seed)),
    'square': (
        lambda f, x, y, seed: square(f, x, y, norm='linf', eps=EPS, n_queries=SQUARE_QUERIES,
                                     seed=seed, resc_schedule=False),
        lambda m, seed: torchattacks.Square(m, norm='Linf', eps=EPS, n_queries=SQUARE_QUERIES,
                                            n_restarts=1, p_init=0.8, loss='margin',
                                            resc_schedule=False, seed=seed)),
}


@pytest.mark.parametrize('name', list(ATTACKS))
def test_robust_accuracy_matches_torchattacks(models, name):  # pylint: disable=redefined-outer-name
  logits_fn, torch_model, x, y = models
  ours_attack, their_attack = ATTACKS[name]
  ours = [_ours(logits_fn, x, y, ours_attack(logits_fn, x, y, seed)) for seed in SEEDS[name]]
  theirs = [_theirs(torch_model, their_attack(torch_model, seed), x, y) for seed in SEEDS[name]]
  runs = lambda accs: ' '.join(f'{100 * a:.1f}' for a in accs)
  print(f'\n{name}: ours {100 * np.mean(ours):.2f}% ({runs(ours)}); '
        f'torchattacks {100 * np.mean(theirs):.2f}% ({runs(theirs)})')
  assert 0.2 < np.mean(theirs) < 0.8, f'ε = {EPS} is not informative: {np.mean(theirs):.3f}'
  assert abs(np.mean(ours) - np.mean(theirs)) <= TOLERANCE, (name, ours, theirs)

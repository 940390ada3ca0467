"""The bottleneck ResNets (`models.resnet`): sizes and shapes as torchvision's, activations,
initialisation, remat, BatchNorm groups, dtypes, weight decay, bad names.

ResNet-50/101/152 themselves are only traced (`jax.eval_shape`); what needs numbers runs on a
ResNet with one bottleneck block per stage, the same code. Equality with torchvision's class is
tests/test_torchvision_resnet.py.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import registry
from models import resnet
from trainer.robust import optimizer

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _key(seed):
  return jax.random.key(seed, impl='rbg')  # compiles faster on CPU than threefry


def _tiny(**kwargs):
  """One bottleneck block per stage, widths 8 / 16 / 32 / 64 (outputs 4x): fast to compile."""
  kwargs.setdefault('stem_features', 8)
  return resnet.ResNet(stage_sizes=(1, 1, 1, 1), num_classes=10, mean=MEAN, std=STD, **kwargs)


@functools.lru_cache
def _tiny_variables():
  """Random variables of the tiny ResNet: its own initialisation plus a non-zero head and random
  BatchNorm scales and biases, so that every part moves the logits (of order 1)."""
  variables = jax.jit(functools.partial(_tiny().init, train=False))(
      _key(0), jnp.zeros((1, 32, 32, 3)))
  rng = np.random.default_rng(0)
  def randomise(path, leaf):
    names = [p.key for p in path]
    if names[-1] == 'scale':
      return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32)
    if names[-1] == 'bias' or names[-2] == 'head':
      return jnp.asarray(rng.normal(0.0, 0.1, leaf.shape), jnp.float32)
    return leaf
  return jax.tree_util.tree_map_with_path(randomise, variables)


def _images(n, size=32, seed=1):
  return jax.random.uniform(_key(seed), (n, size, size, 3))


# torchvision's counts for its resnet50 / resnet101 / resnet152 (1,000 classes), as its model
# documentation lists them ("num_params").
@pytest.mark.parametrize('name, count', [
    ('resnet-50', 25_557_032), ('resnet-101', 44_549_160), ('resnet-152', 60_192_808),
    ('resnet-152-swish', 60_192_808)])
def test_parameter_counts_are_torchvisions(name, count):
  model = registry.get_model(name, num_classes=1000, mean=MEAN, std=STD)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), _key(0),
                          jnp.zeros((1, 224, 224, 3)))
  assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes['params'])) == count


def test_feature_maps_at_224_are_torchvisions():
  """56x56x256, 28x28x512, 14x14x1024, 7x7x2048 after the four stages of a ResNet-50."""
  model = registry.get_model('resnet-50', num_classes=1000, mean=MEAN, std=STD)
  logits, state = jax.eval_shape(functools.partial(
      model.apply, train=False, capture_intermediates=True, mutable=['intermediates']),
      jax.eval_shape(functools.partial(model.init, train=False), _key(0),
                     jnp.zeros((1, 224, 224, 3))), jnp.zeros((2, 224, 224, 3)))
  found = state['intermediates']
  assert found['stem']['__call__'][0].shape == (2, 112, 112, 64)
  last = {0: 2, 1: 3, 2: 5, 3: 2}
  for stage, size, width in ((0, 56, 256), (1, 28, 512), (2, 14, 1024), (3, 7, 2048)):
    out, = found[f'stage_{stage}_block_{last[stage]}']['__call__']
    assert out.shape == (2, size, size, width)
  assert logits.shape == (2, 1000) and logits.dtype == jnp.float32


@pytest.mark.parametrize('name, activation', [
    ('resnet-50', nn.relu), ('resnet-152', nn.relu), ('resnet-152-swish', nn.swish),
    ('resnet-50-swish', nn.swish)])
def test_activation_is_in_the_name(name, activation):
  assert registry.get_model(name, num_classes=2, mean=MEAN, std=STD).activation is activation


@pytest.mark.parametrize('name, message', [
    ('resnet-18', 'depth 50, 101, 152'), ('resnet-34', 'depth 50, 101, 152'),
    ('resnet-50-gelu', 'resnet-152-swish'), ('ResNet-50', 'resnet-152-swish')])
def test_bad_names(name, message):
  with pytest.raises(ValueError, match=message):
    registry.get_model(name, num_classes=2, mean=MEAN, std=STD)


def test_initialisation():
  """He-normal (fan-out) convolutions as torchvision, a zero head (zero logits), BN at 1 / 0."""
  model = _tiny(stem_features=16)
  variables = jax.jit(functools.partial(model.init, train=False))(
      _key(0), jnp.zeros((1, 32, 32, 3)))
  params = variables['params']
  kernel = np.asarray(params['stage_3_block_0']['conv_1']['kernel'])  # 3 x 3 x 128 x 128
  expected = np.sqrt(2.0 / (3 * 3 * 128))
  assert abs(kernel.std() / expected - 1) < 0.01 and abs(kernel.mean()) < 0.02 * expected
  assert np.abs(kernel).max() > 3 * expected  # a normal, not a truncated one
  np.testing.assert_array_equal(params['head']['kernel'], 0.0)
  np.testing.assert_array_equal(params['bn_stem']['scale'], 1.0)
  logits = jax.jit(functools.partial(model.apply, train=False))(variables, _images(2))
  np.testing.assert_array_equal(logits, 0.0)


@pytest.mark.integration  # two gradient compiles: ~10 s of CPU
def test_remat_gives_the_same_values_and_gradients():
  variables, x = _tiny_variables(), _images(4)
  def loss(model, params):
    logits, _ = model.apply({**variables, 'params': params}, x, train=True,
                            mutable=['batch_stats'])
    return jnp.sum(jnp.sin(logits))
  plain = jax.jit(jax.value_and_grad(functools.partial(loss, _tiny())))(variables['params'])
  remat = jax.jit(jax.value_and_grad(functools.partial(loss, _tiny(remat='block'))))(
      variables['params'])
  np.testing.assert_allclose(remat[0], plain[0], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(remat[1]), jax.tree.leaves(plain[1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bn_groups_normalise_each_group_alone():
  """With bn_group_size = 2, a batch of 4 in train mode gives what each half gives alone: every
  BatchNorm, the stem's and the shortcuts' included, takes the group size."""
  variables, x = _tiny_variables(), _images(4)
  apply = jax.jit(lambda m, z: m.apply(variables, z, train=True), static_argnums=0)
  grouped = apply(_tiny(bn_group_size=2), x)
  halves = np.concatenate([apply(_tiny(), x[:2]), apply(_tiny(), x[2:])])
  np.testing.assert_allclose(grouped, halves, rtol=1e-5, atol=1e-6)
  assert np.max(np.abs(apply(_tiny(), x) - halves)) > 1e-3  # whole-batch statistics differ


def test_bfloat16_compute_float32_parameters_and_logits():
  variables, x = _tiny_variables(), _images(4)
  apply = jax.jit(lambda m, z: m.apply(variables, z, train=False), static_argnums=0)
  f32, bf16 = apply(_tiny(), x), apply(_tiny(dtype=jnp.bfloat16), x)
  assert bf16.dtype == jnp.float32
  np.testing.assert_allclose(bf16, f32, rtol=0.05, atol=0.05 * float(jnp.max(jnp.abs(f32))))
  for leaf in jax.tree.leaves(variables):
    assert leaf.dtype == jnp.float32


def test_weight_decay_reaches_every_kernel_and_no_batchnorm():
  """Every BatchNorm is named bn* (the optimiser's rule); every convolution and the head decay."""
  model = registry.get_model('resnet-50', num_classes=1000, mean=MEAN, std=STD)
  params = jax.eval_shape(functools.partial(model.init, train=False), _key(0),
                          jnp.zeros((1, 64, 64, 3)))['params']
  mask = optimizer.weight_decay_mask(params)
  flat = jax.tree_util.tree_flatten_with_path(mask)[0]
  decayed = ['/'.join(p.key for p in path) for path, keep in flat if keep]
  kept = ['/'.join(p.key for p in path) for path, keep in flat if not keep]
  # 53 convolutions (1 stem + 16 blocks x 3 + 4 projections), the head's kernel and bias.
  assert len(decayed) == 53 + 2 and all(p.endswith('kernel') or p == 'head/bias'
                                        for p in decayed)
  assert len(kept) == 2 * 53 and all(p.split('/')[-2].startswith('bn') for p in kept)

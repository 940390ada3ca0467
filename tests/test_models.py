"""Tests of the classifiers: sizes, dtypes, BatchNorm behaviour, naming.

Everything runs under `jax.jit`: compiling a small network once is much
cheaper on CPU than compiling it op by op, and the big models are only
traced (`jax.eval_shape`), never materialised.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import features
from models import preact_resnet
from models import registry

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)


def _model(name='wrn-10-1', channels=1, **kwargs):
  mean = kwargs.pop('mean', (0.4,) * channels)
  std = kwargs.pop('std', (0.3,) * channels)
  return registry.get_model(name, num_classes=10, mean=mean, std=std,
                            **kwargs)


def _key(seed):
  # RBG keys compile far faster on CPU than threefry ones.
  return jax.random.key(seed, impl='rbg')


def _init(module, x, seed=0, **kwargs):
  kwargs.setdefault('train', False)
  return jax.jit(functools.partial(module.init, **kwargs))(_key(seed), x)


def _apply(module, variables, x, **kwargs):
  return jax.jit(functools.partial(module.apply, **kwargs))(variables, x)


@functools.lru_cache
def _wrn_10_1_variables(channels):
  """Shared: the parameters depend on neither the image size nor the dtype."""
  return _init(_model(channels=channels), jnp.zeros((1, 8, 8, channels)))


def _images(shape, seed=1):
  return jax.random.uniform(_key(seed), shape)


def _randomise_head(variables, seed=2):
  """A non-zero head, so that the logits depend on the trunk."""
  head = variables['params']['head']
  keys = jax.random.split(_key(seed), 2)
  head = {'kernel': jax.random.normal(keys[0], head['kernel'].shape),
          'bias': jax.random.normal(keys[1], head['bias'].shape)}
  return {**variables, 'params': {**variables['params'], 'head': head}}


def _shapes(model, shape):
  return jax.eval_shape(lambda: _init(model, jnp.zeros(shape)))


def _paths(tree):
  return [tuple(k.key for k in path)
          for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


# The exact counts, and the paper's rounded ones they must agree with.
@pytest.mark.parametrize('name, exact, paper', [
    ('wrn-28-10', 36_479_194, 36.5e6),
    ('wrn-70-16', 266_796_506, 267e6),
    ('preact-resnet-18', 12_548_426, None),  # DeepMind's; the paper gives no count
])
def test_parameter_counts(name, exact, paper):
  model = _model(name, channels=3, mean=CIFAR_MEAN, std=CIFAR_STD)
  params = _shapes(model, (1, 32, 32, 3))['params']
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  print(f'{name}: {count:,} parameters')
  assert count == exact
  if paper is not None:
    assert abs(count - paper) / paper < 0.005


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('shape', [(2, 8, 8, 1), (2, 32, 32, 3)])
def test_output_shape_dtype_and_zero_head(dtype, shape):
  model = _model(channels=shape[-1], dtype=dtype)
  variables = _wrn_10_1_variables(shape[-1])
  for leaf in jax.tree.leaves(variables):
    assert leaf.dtype == jnp.float32
  logits, intermediates = _apply(
      model, variables, _images(shape), train=False,
      capture_intermediates=True, mutable=['intermediates'])
  assert logits.shape == (shape[0], 10)
  assert logits.dtype == jnp.float32
  np.testing.assert_array_equal(logits, 0.)
  stem_out, = intermediates['intermediates']['stem']['__call__']
  assert stem_out.dtype == jnp.dtype(dtype)


def test_bfloat16_close_to_float32():
  shape = (4, 8, 8, 1)
  variables = _randomise_head(_wrn_10_1_variables(1))
  x = _images(shape)
  f32 = _apply(_model(), variables, x, train=True)
  bf16 = _apply(_model(dtype='bfloat16'), variables, x, train=True)
  np.testing.assert_allclose(bf16, f32, atol=0.1, rtol=0.1)


def test_naming_contract():
  """BN is named bn*, nothing else is; conv/dense weights are `kernel`."""
  for name in ('wrn-10-1', 'preact-resnet-18', 'resnet-50', 'resnet-152-swish'):
    variables = _shapes(_model(name), (1, 8, 8, 1))
    for path in _paths(variables['params']):
      *modules, leaf = path
      if any(m.startswith('bn') for m in modules):
        assert modules[-1].startswith('bn'), path
        assert leaf in ('scale', 'bias'), path
      else:
        assert leaf == 'kernel' or path == ('head', 'bias'), path
    for path in _paths(variables['batch_stats']):
      assert path[-2].startswith('bn') and path[-1] in ('mean', 'var'), path


def test_wrn_28_10_on_64x64_images():
  """TinyImageNet's shape (64x64, 200 classes): the same weights as at 32x32, logits per image."""
  at = {size: _shapes(registry.get_model('wrn-28-10', num_classes=200, mean=CIFAR_MEAN,
                                         std=CIFAR_STD), (2, size, size, 3))
        for size in (32, 64)}
  assert (jax.tree.map(lambda a: a.shape, at[64]) == jax.tree.map(lambda a: a.shape, at[32]))
  model = registry.get_model('wrn-28-10', num_classes=200, mean=CIFAR_MEAN, std=CIFAR_STD)
  logits = jax.eval_shape(functools.partial(model.apply, train=False), at[64],
                          jnp.zeros((2, 64, 64, 3)))
  assert logits.shape == (2, 200)


def test_wrn_pools_the_whole_final_map_at_64x64():
  """The head reads the mean of the activated final map over all its positions: 16x16 at 64x64
  (8x8 at 32x32), as DeepMind's JAX WideResNet (`jnp.mean(net, axis=[1, 2])`). RobustBench's
  `DMWideResNet` pools with a fixed `avg_pool2d(out, 8)` and fits 32x32 inputs only, which is why
  the export to it refuses other sizes."""
  model = _model(channels=3, mean=CIFAR_MEAN, std=CIFAR_STD)
  variables = _init(model, jnp.zeros((1, 64, 64, 3)))
  x = _images((2, 64, 64, 3))
  _, state = _apply(model, variables, x, train=False, capture_intermediates=True,
                    mutable=['intermediates'])
  final, = state['intermediates']['bn_final']['__call__']
  assert final.shape == (2, 16, 16, 64)
  head_input = features.make_feature_fn(model, variables)(x)
  np.testing.assert_allclose(head_input, jnp.mean(nn.swish(final), axis=(1, 2)), rtol=1e-5,
                             atol=1e-6)


def test_wrn_shortcuts():
  """Each group's first block projects, even 16 -> 16 channels; no other."""
  params = _shapes(_model('wrn-16-1'), (1, 8, 8, 1))['params']
  blocks = {k: v for k, v in params.items() if k.startswith('stage_')}
  assert len(blocks) == 6
  for name, block in blocks.items():
    assert ('shortcut' in block) == name.endswith('_block_0'), name
  shortcut = params['stage_0_block_0']['shortcut']['kernel']
  assert shortcut.shape == (1, 1, 16, 16)


def test_block_matches_formula():
  """Projection on the activated input; stride 2 with TF 'SAME' padding."""
  block = preact_resnet.PreActBlock(8, strides=2, project=True)
  x = jax.random.normal(_key(0), (2, 6, 6, 4))
  variables = _init(block, x)
  p = variables['params']

  def bn(y, name):  # Running averages at init: mean 0, variance 1.
    return y * p[name]['scale'] / np.sqrt(1 + 1e-5) + p[name]['bias']

  def conv(y, name, strides, pads):
    return jax.lax.conv_general_dilated(
        y, p[name]['kernel'], (strides, strides), pads,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  y = nn.swish(bn(x, 'bn_0'))
  shortcut = conv(y, 'shortcut', 2, 'VALID')
  out = conv(y, 'conv_0', 2, [(0, 1), (0, 1)])
  out = conv(nn.swish(bn(out, 'bn_1')), 'conv_1', 1, [(1, 1), (1, 1)])
  np.testing.assert_allclose(_apply(block, variables, x, train=False),
                             out + shortcut, atol=1e-5, rtol=1e-5)


def test_batchnorm_matches_flax():
  x = jax.random.normal(_key(0), (8, 3, 3, 5)) * 3. + 1.
  ours = preact_resnet.BatchNorm(momentum=0.9, epsilon=1e-3)
  theirs = nn.BatchNorm(momentum=0.9, epsilon=1e-3)
  variables = ours.init(_key(0), x, use_running_average=False)
  jax.tree.map(np.testing.assert_array_equal, variables,
               theirs.init(_key(0), x, use_running_average=False))
  y, new = ours.apply(variables, x, use_running_average=False,
                      mutable=['batch_stats'])
  y_ref, new_ref = theirs.apply(variables, x, use_running_average=False,
                                mutable=['batch_stats'])
  np.testing.assert_allclose(y, y_ref, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5),
               new, new_ref)


def test_batch_stats_update_only_in_train_mode():
  model = _model()
  variables = _randomise_head(_wrn_10_1_variables(1))
  x = _images((4, 8, 8, 1))
  old = variables['batch_stats']

  logits, new = _apply(model, variables, x, train=True,
                       mutable=['batch_stats'])
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), old,
                         new['batch_stats'])
  assert all(jax.tree.leaves(changed))

  _, same = _apply(model, variables, x, train=False, mutable=['batch_stats'])
  jax.tree.map(np.testing.assert_array_equal, old, same['batch_stats'])

  # Batch statistics without touching the averages (TRADES' clean pass).
  np.testing.assert_allclose(_apply(model, variables, x, train=True), logits,
                             atol=1e-5, rtol=1e-5)
  assert not np.allclose(_apply(model, variables, x, train=False), logits)


def test_normalisation_inside_model():
  # In eval mode, where BN cannot undo a per-channel affine map of the input.
  mean, std = (0.3, 0.5, 0.7), (0.2, 0.25, 0.3)
  normalising = _model(channels=3, mean=mean, std=std)
  plain = _model(channels=3, mean=(0.,) * 3, std=(1.,) * 3)
  variables = _randomise_head(_wrn_10_1_variables(3))
  x = _images((4, 8, 8, 3))
  logits = _apply(normalising, variables, x, train=False)
  np.testing.assert_allclose(
      logits, _apply(plain, variables, (x - np.array(mean)) / np.array(std),
                     train=False), atol=1e-4, rtol=1e-4)
  assert not np.allclose(logits, _apply(plain, variables, x, train=False),
                         atol=1e-2)


def test_input_gradient_under_jit():
  """Attacks differentiate the logits with respect to the pixels."""
  shape = (2, 8, 8, 1)
  model = _model()
  variables = _randomise_head(_wrn_10_1_variables(1))
  grad = jax.jit(jax.grad(
      lambda x: model.apply(variables, x, train=False)[:, 0].sum()))(
          _images(shape))
  assert grad.shape == shape and np.all(np.isfinite(grad))
  assert np.any(grad != 0)


@pytest.mark.parametrize('name', ['wrn-27-10', 'wrn-4-1', 'wrn-28-0'])
def test_bad_wrn_shape(name):
  with pytest.raises(ValueError, match='must be'):
    _model(name)


@pytest.mark.parametrize('name', ['resnet-50-gelu', 'wrn-28', 'WRN-28-10', ''])
def test_unknown_name(name):
  with pytest.raises(ValueError, match='preact-resnet-18'):
    _model(name)


def test_bad_dtype():
  with pytest.raises(ValueError, match='float16'):
    _model(dtype='float16')


def test_mean_std_must_match_channels():
  with pytest.raises(ValueError, match='1 channel'):
    _model(channels=3).init(_key(0), jnp.zeros((1, 8, 8, 1)), train=False)


# --- Against RobustBench's copies of DeepMind's PyTorch models --------------------------------

def _dm_model(kind, **kwargs):
  """RobustBench's DMWideResNet / DMPreActResNet with random weights and BN statistics."""
  torch = pytest.importorskip('torch')
  import robustbench_models  # pylint: disable=g-import-not-at-top
  arch = robustbench_models.load_architectures()
  torch.manual_seed(0)
  cls = arch.DMWideResNet if kind == 'wrn' else arch.DMPreActResNet
  model = cls(num_classes=10, activation_fn=arch.Swish, mean=CIFAR_MEAN, std=CIFAR_STD,
              **kwargs)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.normal_(0., 0.2)
        module.running_var.uniform_(0.5, 2.)
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0., 0.2)
    model.logits.weight.normal_(0., 1.)  # logits of order 1, not PyTorch's small default
  return model.eval()


@pytest.mark.parametrize('name, kind, kwargs', [
    ('preact-resnet-18', 'preact', dict(depth=18, width=0)),
    ('wrn-10-2', 'wrn', dict(depth=10, width=2)),
])
def test_equals_robustbench_with_copied_weights(name, kind, kwargs):
  """Same parameter count and eval-mode logits as DeepMind's PyTorch model, weights copied."""
  torch = pytest.importorskip('torch')
  import robustbench_models  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(1)
  theirs = _dm_model(kind, **kwargs)
  ours = _model(name, channels=3, mean=CIFAR_MEAN, std=CIFAR_STD)
  abstract = _shapes(ours, (1, 32, 32, 3))
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(abstract['params']))
  their_count = sum(p.numel() for p in theirs.parameters())
  print(f'{name}: {count:,} parameters here, {their_count:,} in RobustBench')
  assert count == their_count

  variables = robustbench_models.to_flax(theirs.state_dict(), abstract, kind)
  x = np.asarray(_images((4, 32, 32, 3)))
  with torch.no_grad():
    expected = theirs(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  logits = np.asarray(_apply(ours, variables, x, train=False))
  print(f'{name}: max |logit difference| {np.abs(logits - expected).max():.2e}, '
        f'logit std {expected.std():.2f}')
  assert expected.std() > 0.1  # the comparison is not between near-zero logits
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)

  # And back: our variables load into the PyTorch model unchanged.
  back = robustbench_models.to_torch(variables, kind)
  for key, value in theirs.state_dict().items():
    if not key.endswith('num_batches_tracked'):
      np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)

"""Convolutions rewritten to the canonical NHWC/HWIO/NHWC layout, and Square's query loop.

`canonical_convolutions` must compute what the function computes (any layout, rank, stride,
dilation, groups; convolutions nested in jit, custom derivatives, scan, while and cond) with
only canonical convolutions left; Square's compiled loop must hold only canonical convolutions
for a model written NCHW (XLA:CPU runs the others inside a loop on a naive kernel, 22-33x slower)
and cost, per query, about one forward pass of the model (XLA's cost analysis).
"""
import importlib

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from trainer.attacks.conv_layout import canonical_convolutions
from trainer.attacks.conv_layout import canonical_dimension_numbers

CANONICAL_LABELS = 'dim_labels=b01f_01io->b01f'


def _convs(jaxpr):
  """Dimension numbers of every convolution in a jaxpr, nested ones included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'conv_general_dilated':
      found.append(eqn.params['dimension_numbers'])
    for value in eqn.params.values():
      for item in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(item, jax.extend.core.ClosedJaxpr):
          found += _convs(item.jaxpr)
        elif isinstance(item, jax.extend.core.Jaxpr):
          found += _convs(item)
  return found


def _check(fn, *args, rtol=1e-5):
  """Same values as fn, and every convolution left canonical."""
  rewritten = canonical_convolutions(fn)
  want, got = jax.jit(fn)(*args), jax.jit(rewritten)(*args)
  for w, g in zip(jax.tree_util.tree_leaves(want), jax.tree_util.tree_leaves(got)):
    np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * float(np.abs(w).max()))
  convs = _convs(jax.make_jaxpr(rewritten)(*args).jaxpr)
  assert convs, 'the test function has no convolution'
  for dn in convs:
    assert dn == canonical_dimension_numbers(len(dn.lhs_spec)), dn


def _rand(*shape, seed=0):
  return jnp.asarray(np.random.RandomState(seed).randn(*shape), jnp.float32)


@pytest.mark.parametrize('lhs_shape,rhs_shape,dims,kwargs', [
    ((2, 3, 9, 8), (4, 3, 3, 3), ('NCHW', 'OIHW', 'NCHW'), {}),
    ((2, 9, 8, 3), (3, 3, 3, 4), ('NHWC', 'HWIO', 'NHWC'), {}),
    ((2, 3, 9, 8), (4, 3, 3, 3), ('NCHW', 'OIHW', 'NHWC'), dict(window_strides=(2, 1))),
    ((9, 8, 3, 2), (3, 3, 4, 3), ('HWCN', 'HWOI', 'CNHW'), dict(rhs_dilation=(2, 1))),
    ((2, 4, 9, 8), (6, 2, 3, 3), ('NCHW', 'OIHW', 'NCHW'), dict(feature_group_count=2)),
    ((4, 9, 8, 3), (3, 3, 3, 2), ('NHWC', 'HWIO', 'NHWC'), dict(batch_group_count=2)),
    ((2, 3, 9), (4, 3, 3), ('NCH', 'OIH', 'NCH'), dict(lhs_dilation=(2,))),
    ((2, 2, 5, 6, 4), (3, 2, 3, 3, 2), ('NCDHW', 'OIDHW', 'NCDHW'), {}),
])
def test_rewritten_convolution_is_canonical_and_equal(lhs_shape, rhs_shape, dims, kwargs):
  padding = [(1, 0)] * (len(lhs_shape) - 2)
  kwargs = dict(dict(window_strides=(1,) * (len(lhs_shape) - 2), padding=padding), **kwargs)
  conv = lambda lhs, rhs: lax.conv_general_dilated(lhs, rhs, dimension_numbers=dims, **kwargs)
  _check(conv, _rand(*lhs_shape), _rand(*rhs_shape, seed=1))


def _nchw_cnn(params, x):
  """A PyTorch port's CNN: NHWC input transposed once, then NCHW convolutions, max-pooling after
  every second one, a dense head on the (C, H, W)-flattened features."""
  h = x.transpose(0, 3, 1, 2)
  for i, kernel in enumerate(params['conv']):
    h = jax.nn.relu(lax.conv_general_dilated(h, kernel, (1, 1), 'VALID',
                                             dimension_numbers=('NCHW', 'OIHW', 'NCHW')))
    if i % 2:
      h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), 'VALID')
  return h.reshape(h.shape[0], -1) @ params['dense']


def _nhwc_cnn(params, x):
  """The same network written NHWC (kernels HWIO)."""
  h = x
  for i, kernel in enumerate(params['conv']):
    h = jax.nn.relu(lax.conv_general_dilated(h, kernel.transpose(2, 3, 1, 0), (1, 1), 'VALID',
                                             dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
    if i % 2:
      h = lax.reduce_window(h, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID')
  return h.transpose(0, 3, 1, 2).reshape(h.shape[0], -1) @ params['dense']


def _cnn_params(channels=(8, 8), side=26, seed=0):
  """OIHW kernels for `channels` 3×3 VALID convolutions on side×side×1 inputs, and the head."""
  r = np.random.RandomState(seed)
  conv, cin = [], 1
  for c in channels:
    conv.append(jnp.asarray(r.randn(c, cin, 3, 3) / np.sqrt(4.5 * cin), jnp.float32))
    cin = c
  for i in range(len(channels)):
    side = side - 2 if i % 2 == 0 else (side - 2) // 2
  dense = jnp.asarray(r.randn(cin * side * side, 10) / np.sqrt(cin * side * side), jnp.float32)
  return {'conv': conv, 'dense': dense}


def test_nested_calls_loops_and_branches_are_rewritten():
  params, x = _cnn_params(), jax.random.uniform(jax.random.key(0), (3, 26, 26, 1))
  jitted = jax.jit(_nchw_cnn)

  def in_loops(params, x):
    def layer(h, kernel):   # the second layer twice, through scan
      out = lax.conv_general_dilated(h, kernel, (1, 1), 'SAME',
                                     dimension_numbers=('NCHW', 'OIHW', 'NCHW'))
      return jax.nn.relu(out), None
    h = lax.conv_general_dilated(x.transpose(0, 3, 1, 2), params['conv'][0], (1, 1), 'SAME',
                                 dimension_numbers=('NCHW', 'OIHW', 'NCHW'))
    h, _ = lax.scan(layer, h, jnp.stack([params['conv'][1]] * 2))
    h = lax.cond(jnp.sum(h) > 0, lambda h: layer(h, params['conv'][1])[0], lambda h: -h, h)
    return lax.fori_loop(0, 2, lambda i, h: layer(h, params['conv'][1])[0], h)

  _check(jitted, params, x)
  _check(jax.checkpoint(_nchw_cnn), params, x)
  _check(in_loops, params, x)


def test_gradient_programs_are_rewritten():
  """The input gradient of a convolution comes out of autodiff with a transposed kernel."""
  params, x = _cnn_params(), jax.random.uniform(jax.random.key(0), (3, 26, 26, 1))
  grad = jax.grad(lambda x: jnp.sum(_nchw_cnn(params, x)[:, 0] - _nchw_cnn(params, x)[:, 1]))
  _check(grad, x)


def test_a_function_without_convolutions_is_left_alone():
  fn = lambda x: {'y': jnp.tanh(x) * 2}
  x = jnp.arange(4.0)
  np.testing.assert_array_equal(canonical_convolutions(fn)(x)['y'], fn(x)['y'])


# ---------------------------------------------------------------------------------------------
# Square's query loop.
# ---------------------------------------------------------------------------------------------

def _square_program(logits_fn, x, y, n_queries=4, canonical=True):
  square = importlib.import_module('trainer.attacks.square')  # the module, not the function
  args = (logits_fn, x, y, jax.random.key(0), jnp.float32(0.05))
  statics = dict(norm='linf', n_queries=n_queries, p_init=0.8, resc_schedule=False,
                 canonical=canonical)
  return square._square.lower(*args, **statics).compile(), lambda: square._square(*args,
                                                                                  **statics)


@pytest.fixture(scope='module')
def nchw_model():
  logits_fn = jax.tree_util.Partial(_nchw_cnn, _cnn_params())
  x = jax.random.uniform(jax.random.key(1), (6, 26, 26, 1))
  return logits_fn, x, jnp.argmax(logits_fn(x), axis=1)


@pytest.mark.integration
def test_square_loop_holds_only_canonical_convolutions(nchw_model):
  compiled, _ = _square_program(*nchw_model)
  labels = [line for line in compiled.as_text().split('\n') if ' convolution(' in line]
  assert labels, 'no convolution in the compiled program'
  assert all(CANONICAL_LABELS in line for line in labels), labels
  # Without the rewrite the loop body keeps the model's NCHW convolutions (the slow kernel).
  plain, _ = _square_program(*nchw_model, canonical=False)
  assert any(CANONICAL_LABELS not in line for line in plain.as_text().split('\n')
             if ' convolution(' in line)


@pytest.mark.integration
def test_square_result_does_not_depend_on_the_rewrite(nchw_model):
  _, rewritten = _square_program(*nchw_model, n_queries=30)
  _, plain = _square_program(*nchw_model, n_queries=30, canonical=False)
  np.testing.assert_allclose(rewritten(), plain(), atol=1e-6)


@pytest.mark.integration
@pytest.mark.parametrize('apply', [_nchw_cnn, _nhwc_cnn], ids=['nchw', 'nhwc'])
def test_square_query_costs_about_one_forward_pass(apply):
  """XLA's cost analysis counts a loop body once, so Square's program is the clean check, the
  start's margin, the final check (three forward passes) and one query; on the max-pooling CNN
  of the benchmark (conv 32-32-pool-64-64-pool, 28×28×1) the query must cost at most 1.15
  forward passes in flops and in bytes accessed: window masks and the accept step included."""
  logits_fn = jax.tree_util.Partial(apply, _cnn_params((32, 32, 64, 64), side=28))
  x = jax.random.uniform(jax.random.key(1), (8, 28, 28, 1))
  y = jnp.zeros(8, jnp.int32)
  forward = jax.jit(lambda f, x: f(x)).lower(logits_fn, x).compile().cost_analysis()
  program = _square_program(logits_fn, x, y)[0].cost_analysis()
  for key in ('flops', 'bytes accessed'):
    query = program[key] - 3 * forward[key]
    assert 0.9 * forward[key] < query < 1.15 * forward[key], (key, query / forward[key])

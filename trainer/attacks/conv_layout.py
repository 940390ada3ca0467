"""Convolutions in the one layout XLA:CPU runs fast everywhere: NHWC input, HWIO kernel, NHWC out.

XLA:CPU hands a convolution to its fast (Eigen) kernels only when its dimension numbers are
canonical: batch first and features last in the input and output, kernel (spatial…, in, out).
Its ConvCanonicalization pass rewrites other convolutions into that form with transposes, but it
visits only a program's entry computation, never the body of a `while_loop`/`fori_loop`. Inside a
loop, a model written NCHW as a PyTorch port writes it (`('NCHW', 'OIHW', 'NCHW')`), or the input
gradient of any convolution (its kernel comes out of autodiff as `01oi`), runs on a naive kernel:
a query of Square's loop cost 22-33× one jitted forward pass of an NCHW CNN (BENCHMARKS.md,
"AutoAttack on model families").

`canonical_convolutions(fn)` does what that pass does, before XLA sees the program and wherever
the function is traced: it traces `fn` to a jaxpr and evaluates it again with every
`conv_general_dilated` replaced by transposes to the canonical layout, the same convolution in
it, and a transpose back. Convolutions nested in `jit`, custom-derivative calls and checkpoints
are rewritten in place (the call is inlined); those in the bodies of `while`, `cond` and `scan`
are rewritten inside the loop. Transposes of loop-invariant weights are hoisted out of loops by
XLA. The arithmetic is the same convolution, so the results are equal up to float rounding
(XLA's pass would give the same).

Apply it to what is evaluated, not to a function that is differentiated afterwards: an inlined
custom-derivative call keeps its primal computation and loses its rule (e.g. relu's gradient at
exactly 0). It only matters on CPU; elsewhere XLA assigns convolution layouts in loops too.
"""
import contextlib
import functools

import jax
from jax import lax
from jax.extend import core as jex_core

_CONV = jex_core.primitives.conv_general_dilated_p
# Call-like primitives whose one sub-jaxpr maps the call's inputs to its outputs: inlined.
_CALLS = ('jit', 'pjit', 'closed_call', 'core_call', 'call', 'custom_jvp_call', 'custom_vjp_call',
          'custom_vjp_call_jaxpr', 'checkpoint', 'remat', 'remat2')


def canonical_convolutions(fn):
  """`fn` with every convolution it runs in the NHWC/HWIO/NHWC layout (any rank, any groups)."""
  @functools.wraps(fn)
  def wrapped(*args):
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    if not _has_conv(closed.jaxpr):
      return fn(*args)
    out = _evaluate(closed.jaxpr, closed.consts, jax.tree_util.tree_leaves(args))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), out)
  return wrapped


def canonical_dimension_numbers(rank):
  """(lhs, rhs, out) specs of the canonical layout for `rank`-dimensional operands."""
  spatial = tuple(range(1, rank - 1))
  image = (0, rank - 1) + spatial                      # batch, feature, spatial…
  kernel = (rank - 1, rank - 2) + tuple(range(rank - 2))  # out, in, spatial…
  return lax.ConvDimensionNumbers(image, kernel, image)


def _is_canonical(dimension_numbers):
  return tuple(map(tuple, dimension_numbers)) == tuple(
      map(tuple, canonical_dimension_numbers(len(dimension_numbers.lhs_spec))))


def _canonical_conv(lhs, rhs, *, dimension_numbers, **params):
  """The convolution on transposed operands; the result transposed back to the given layout."""
  if _is_canonical(dimension_numbers):
    return _CONV.bind(lhs, rhs, dimension_numbers=dimension_numbers, **params)
  lhs_spec, rhs_spec, out_spec = dimension_numbers
  rank = len(lhs_spec)
  lhs = _transpose(lhs, (lhs_spec[0],) + tuple(lhs_spec[2:]) + (lhs_spec[1],))
  rhs = _transpose(rhs, tuple(rhs_spec[2:]) + (rhs_spec[1], rhs_spec[0]))
  out = _CONV.bind(lhs, rhs, dimension_numbers=canonical_dimension_numbers(rank), **params)
  # The canonical output holds batch, spatial…, feature; out_spec[j] is where role j goes.
  position = {0: 0, 1: rank - 1, **{j: j - 1 for j in range(2, rank)}}
  order = [0] * rank
  for role, axis in enumerate(out_spec):
    order[axis] = position[role]
  return _transpose(out, tuple(order))


def _transpose(x, order):
  return x if order == tuple(range(x.ndim)) else lax.transpose(x, order)


# ---------------------------------------------------------------------------------------------
# The jaxpr walk.
# ---------------------------------------------------------------------------------------------

def _sub_jaxprs(params):
  for value in params.values():
    items = value if isinstance(value, (tuple, list)) else (value,)
    for item in items:
      if isinstance(item, jex_core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jex_core.Jaxpr):
        yield item


def _has_conv(jaxpr):
  return any(eqn.primitive is _CONV or any(_has_conv(j) for j in _sub_jaxprs(eqn.params))
             for eqn in jaxpr.eqns)


def _evaluate(jaxpr, consts, args):
  """Evaluates `jaxpr` as `jax.core.eval_jaxpr` does, rewriting convolutions on the way."""
  env = {}
  read = lambda v: v.val if isinstance(v, jex_core.Literal) else env[v]
  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    ctx = getattr(eqn, 'ctx', None)
    with ctx.manager if ctx is not None else contextlib.nullcontext():
      outvals = _apply(eqn, invals)
    if not eqn.primitive.multiple_results:
      outvals = [outvals]
    env.update(zip(eqn.outvars, outvals))
  return [read(v) for v in jaxpr.outvars]


def _apply(eqn, invals):
  params = eqn.params
  if eqn.primitive is _CONV:
    return _canonical_conv(*invals, **params)
  inner = list(_sub_jaxprs(params))
  if not any(_has_conv(j) for j in inner):
    return _bind(eqn.primitive, invals, params)
  if eqn.primitive.name in _CALLS and len(inner) == 1:
    sub = next(v for v in params.values() if isinstance(v, (jex_core.ClosedJaxpr, jex_core.Jaxpr)))
    consts = sub.consts if isinstance(sub, jex_core.ClosedJaxpr) else ()
    out = _evaluate(inner[0], consts, invals)
    return out if eqn.primitive.multiple_results else out[0]
  # Loops and branches: the same primitive with its bodies rewritten.
  return _bind(eqn.primitive, invals, {k: _rewrite_param(v) for k, v in params.items()})


def _bind(primitive, invals, params):
  """primitive.bind as `eval_jaxpr` does it; older JAX returned (subfuns, params) here."""
  bind_params = primitive.get_bind_params(params)
  if isinstance(bind_params, tuple):
    subfuns, bind_params = bind_params
    return primitive.bind(*subfuns, *invals, **bind_params)
  return primitive.bind(*invals, **bind_params)


def _rewrite_param(value):
  if isinstance(value, jex_core.ClosedJaxpr):
    return _rewrite_closed(value)
  if isinstance(value, tuple) and value and all(isinstance(v, jex_core.ClosedJaxpr)
                                                for v in value):
    return tuple(_rewrite_closed(v) for v in value)
  return value


def _rewrite_closed(closed):
  """A ClosedJaxpr of the same signature whose convolutions are canonical."""
  if not _has_conv(closed.jaxpr):
    return closed
  specs = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype, weak_type=v.aval.weak_type)
           for v in closed.jaxpr.invars]
  return jax.make_jaxpr(lambda *a: _evaluate(closed.jaxpr, closed.consts, a))(*specs)

"""Helpers shared by the attacks: models as jit arguments, per-example broadcasting, rival
classes, and how loops run.

Loops on the host on CPU. XLA:CPU canonicalises convolutions (puts their kernels in the layout
its fast Eigen kernels take) only in the program's top-level computation, not inside loop
bodies; the input gradient of a convolution comes out of JAX's autodiff with a transposed kernel
layout (`b01f_01oi->b01f`), so inside a `fori_loop` or `while_loop` it falls back to a naive
kernel, about 4× slower on a small CNN. On CPU the iterative attacks therefore run one jitted
step per call from a host loop (the state stays on the device, so a step costs one dispatch of
about 0.1 ms); on accelerators they run the whole loop in one program.
"""
import contextlib

import jax
import jax.numpy as jnp


# fra31/auto-attack's spelling of the norms, accepted wherever a norm is.
_NORM_NAMES = {'Linf': 'linf', 'L2': 'l2'}


def canonical_norm(norm: str) -> str:
  """'Linf' -> 'linf', 'L2' -> 'l2'; other names unchanged (and checked where they are used)."""
  return _NORM_NAMES.get(norm, norm)


def as_jit_arg(logits_fn):
  """Makes `logits_fn` a pytree that jit can take as an argument.

  A `jax.tree_util.Partial` keeps its bound arrays as traced leaves, so `Partial(model.apply,
  variables)` does not bake the weights into the compiled program; any other callable is wrapped
  without leaves and is cached by identity (closed-over arrays then do become constants).
  """
  if isinstance(logits_fn, jax.tree_util.Partial):
    return logits_fn
  return jax.tree_util.Partial(logits_fn)


def bcast(v, like):
  """Per-example values (n,) reshaped to (n, 1, …, 1) to broadcast against `like` (n, …)."""
  return v.reshape((-1,) + (1,) * (like.ndim - 1))


def rival_class(logits, y, rank):
  """The class with the (rank + 1)-th highest logit among the classes other than y.

  For a correctly classified input this is the reference's choice of target for APGD-T and
  FAB-T (the (rank + 2)-th highest logit overall). `rank` may be traced.
  """
  others = jnp.where(jax.nn.one_hot(y, logits.shape[1], dtype=bool), -jnp.inf, logits)
  order = jnp.argsort(-others, axis=1)
  return jnp.take(order, rank, axis=1)


def host_loops(x) -> bool:
  """Whether iterations over `x` (a host or device array) should be driven from the host."""
  if isinstance(x, jax.Array):
    return all(d.platform == 'cpu' for d in x.devices())
  return jax.default_backend() == 'cpu'


def steps_per_call(x, n_steps: int) -> int:
  """Iterations per jitted call: 1 where loops run on the host (CPU), else all of them."""
  return 1 if host_loops(x) else n_steps


def run_steps(body, start, n, state):
  """`state = body(i, state)` for i = start … start + n − 1; traceable; no loop when n == 1."""
  if n == 1:
    return body(start, state)
  return jax.lax.fori_loop(start, start + n, body, state)


def compact_random():
  """Context for the evaluation attacks' random draws: threefry in its non-partitionable form.

  XLA:CPU compiles it about 2.7× faster than the partitionable form that JAX uses by default
  (0.31 against 0.83 s for a (40, 28, 28, 1) uniform draw), and random starts are compiled for
  every batch size of a cascade. Its values are equally independent of the sharding and the
  platform (other values than the default's, of the same distribution); it draws the whole
  array on every device, which for a batch of starting points costs nothing next to the model.
  """
  switch = getattr(jax, 'threefry_partitionable', None)
  return contextlib.nullcontext() if switch is None else switch(False)


def random_direction(key, like, norm):
  """A random array shaped like `like`: uniform in [−1, 1] for L∞, standard normal for L2 (the
  reference's random starts, before each attack scales them), drawn under `compact_random`."""
  with compact_random():
    if norm == 'linf':
      return jax.random.uniform(key, like.shape, like.dtype, -1.0, 1.0)
    return jax.random.normal(key, like.shape, like.dtype)

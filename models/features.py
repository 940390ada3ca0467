"""Penultimate-layer features of any registry model: the input of its `head` Dense layer.

The data metrics (complementarity, coverage) compare images in the feature space of the
non-robust classifier. Rather than giving every architecture a second output, the head's call is
intercepted and its input recorded, so any model with a module named `head` works unchanged.
"""
import flax.linen as nn
import jax


def make_feature_fn(model, variables):
  """Returns jit-ed `features(x) -> (batch, width)` for images x in [0, 1]."""
  def features(x):
    captured = []
    def record_head_input(next_fun, args, kwargs, context):
      if context.module.name == 'head' and context.method_name == '__call__':
        captured.append(args[0])
      return next_fun(*args, **kwargs)
    with nn.intercept_methods(record_head_input):
      model.apply(variables, x, train=False)
    if not captured:
      raise ValueError(f'{type(model).__name__} has no module named "head" to read features from.')
    return captured[-1].reshape(x.shape[0], -1)
  return jax.jit(features)


"""Step rules of the iterative attacks, as optax gradient transformations.

Like any optax transformation, a step rule receives the gradient of a loss to MINIMISE (the
attack passes −∇ of the loss it maximises) and returns the update added to the iterate. The
steepest-ascent rules normalise each example's gradient for the norm before the step; Adam works
on the raw gradient (its second-moment scaling already makes its steps sign-like).
"""
from typing import Union

import jax
import optax

from trainer.attacks import projections

LearningRate = Union[float, optax.Schedule]


def normalize(norm: str) -> optax.GradientTransformation:
  """Replaces each example's gradient by its steepest direction: sign for L∞, unit-L2 for L2."""
  projections.check_norm(norm)

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda g: projections.normalize(g, norm), updates), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def steepest(norm: str, learning_rate: LearningRate) -> optax.GradientTransformation:
  """Steps of length `learning_rate` along the steepest direction (sign steps for L∞)."""
  return optax.chain(normalize(norm), optax.sgd(learning_rate))


def sign(learning_rate: LearningRate) -> optax.GradientTransformation:
  """Iterated FGSM: `learning_rate` · sign(∇)."""
  return steepest('linf', learning_rate)


def normalized_l2(learning_rate: LearningRate) -> optax.GradientTransformation:
  """`learning_rate` · ∇/‖∇‖₂ per example."""
  return steepest('l2', learning_rate)


def adam(learning_rate: LearningRate, *, eps: float = 1e-8) -> optax.GradientTransformation:
  """Adam (β = 0.9, 0.999) on the raw gradient; `eps` is Adam's ε (optax's default: 1e-8)."""
  if not eps > 0:
    raise ValueError(f'Adam eps must be > 0, got {eps!r}.')
  return optax.adam(learning_rate, eps=eps)

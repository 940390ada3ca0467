"""The outer optimiser: SGD with Nesterov momentum, warm-up + cosine, L2 weight decay off BatchNorm.

Epochs are CIFAR-10-equivalents (`epoch_size` images each, 50,000 by default), so a preset can say
"400 epochs" exactly as the paper does whatever the mix of real and generated data.
"""
import jax
import optax


def steps_per_epoch(config):
  return config.train.epoch_size / config.train.batch_size


def total_steps(config):
  return max(1, round(config.train.num_epochs * steps_per_epoch(config)))


def peak_learning_rate(config):
  return config.optim.lr_per_256 * config.train.batch_size / 256


def learning_rate_schedule(config):
  """Linear warm-up from 0 to the peak, then cosine decay to 0 at the last step."""
  warmup = round(config.optim.warmup_epochs * steps_per_epoch(config))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak_learning_rate(config),
      warmup_steps=min(warmup, total_steps(config) - 1), decay_steps=total_steps(config),
      end_value=0.0)


def weight_decay_mask(params):
  """True for conv/dense kernels and biases; False for anything inside a BatchNorm (`bn*`)."""
  def decays(path, _):
    names = [getattr(k, 'key', str(k)) for k in path]
    return names[-1] in ('kernel', 'bias') and not any(n.startswith('bn') for n in names[:-1])
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config):
  # Decay is added to the gradient before momentum: the gradient of (wd/2)·‖w‖², i.e. L2
  # regularisation as in the paper, not decoupled (AdamW-style) decay.
  return optax.chain(
      optax.add_decayed_weights(config.optim.weight_decay, mask=weight_decay_mask),
      optax.sgd(learning_rate_schedule(config), momentum=config.optim.momentum, nesterov=True))

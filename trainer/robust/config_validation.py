"""Checks a resolved config before any work starts, with messages that name the key and value."""
import pkgutil

import jax

import configs
from data import real
from data.input import alpha_schedule
from models.diffusion import generators
from trainer.robust import objectives
from trainer.robust import optimizer
from trainer.attacks import compositions
from trainer.attacks import projections


def _require(ok, key, value, why):
  if not ok:
    raise ValueError(f'config.{key}={value!r}: {why}')


def validate(config, device_count=None, process_count=None):
  device_count = jax.device_count() if device_count is None else device_count
  process_count = jax.process_count() if process_count is None else process_count
  real.check_config(config.dataset)
  objectives.get(config.train.loss)
  projections.check_norm(config.threat.norm)
  _require(config.threat.eps >= 0, 'threat.eps', config.threat.eps, 'must be ≥ 0.')
  alpha = config.generated.alpha
  _require(0.0 <= alpha <= 1.0, 'generated.alpha', alpha, 'the real share must lie in [0, 1].')
  _require(0.0 <= config.generated.label_smoothing < 1.0, 'generated.label_smoothing',
           config.generated.label_smoothing, 'must lie in [0, 1).')
  _require(config.generated.on_corrupt in ('raise', 'skip'), 'generated.on_corrupt',
           config.generated.on_corrupt, "must be 'raise' or 'skip'.")
  batch = config.train.batch_size
  _require(batch > 0 and batch % device_count == 0, 'train.batch_size', batch,
           f'must be a positive multiple of the device count ({device_count}).')
  _require(batch % process_count == 0, 'train.batch_size', batch,
           f'must divide evenly over the {process_count} processes.')
  _require(config.eval.batch_size % device_count == 0, 'eval.batch_size', config.eval.batch_size,
           f'must be a multiple of the device count ({device_count}).')
  _require(config.train.num_epochs > 0, 'train.num_epochs', config.train.num_epochs, 'must be > 0.')
  validate_alpha_schedule(config)
  _require(config.train.attack_steps >= 1 or config.train.loss == 'standard',
           'train.attack_steps', config.train.attack_steps, 'must be ≥ 1.')
  for key in ('model.dtype', 'eval.dtype'):
    section, leaf = key.split('.')
    _require(config[section][leaf] in ('float32', 'bfloat16'), key, config[section][leaf],
             "must be 'float32' or 'bfloat16'.")
  _require(config.eval.selection_attack in compositions.SELECTION_ATTACKS, 'eval.selection_attack',
           config.eval.selection_attack, f'must be one of {compositions.SELECTION_ATTACKS}.')
  _require(config.train.attack_unroll in compositions.UNROLL, 'train.attack_unroll',
           config.train.attack_unroll, f'must be one of {tuple(compositions.UNROLL)}.')
  _require(config.model.remat in ('none', 'block'), 'model.remat', config.model.remat,
           "must be 'none' or 'block'.")
  group = config.model.bn_group_size
  _require(group == 0 or (group > 0 and batch % group == 0), 'model.bn_group_size', group,
           f'must be 0 (statistics over the batch) or divide train.batch_size={batch}.')
  _require(0.0 <= config.optim.ema_decay < 1.0, 'optim.ema_decay', config.optim.ema_decay,
           'must lie in [0, 1).')
  _require(config.dataset.holdout >= 0, 'dataset.holdout', config.dataset.holdout, 'must be ≥ 0.')
  validate_pipeline(config)


def validate_alpha_schedule(config):
  """The real share over training: each phase's alpha in [0, 1], its changes inside the run, and
  shards whenever some phase asks for generated rows."""
  phases = alpha_schedule.phases(config)   # malformed entries: one line naming the key
  schedule = config.generated.get('alpha_schedule', ())
  steps = optimizer.total_steps(config)
  _require(phases[-1][0] < steps, alpha_schedule.KEY, schedule,
           f'its last change falls on step {phases[-1][0]}, at or after the end of training '
           f'(train.num_epochs={config.train.num_epochs:g}: {steps} steps).')
  needs = min(alpha for _, alpha in phases) < 1.0
  what = (f'generated.alpha={config.generated.alpha} < 1' if len(phases) == 1 else
          f'{alpha_schedule.KEY} (with generated.alpha={config.generated.alpha})')
  _require(not needs or config.generated.path, 'generated.path', config.generated.path,
           f'{what} asks for generated data, but no shard manifest is set.')


def generator_presets(kind):
  """The generator presets of an objective in configs/ (trainer.train_generator configs:
  ddpm_*.py, edm_*.py)."""
  return sorted(m.name for m in pkgutil.iter_modules(configs.__path__)
                if m.name.startswith(f'{kind}_'))


def validate_pipeline(config, num_classes=None):
  """The keys of the whole method (trainer.method) that no training stage reads. The class-
  balanced set size is checked against `num_classes`, or without it against a built-in dataset's
  (a dataset read from a path is not read here; the method passes its count)."""
  p = config.pipeline
  _require(p.generator in ('gaussian', 'ddpm', 'edm'), 'pipeline.generator', p.generator,
           "must be 'gaussian', 'ddpm' or 'edm'.")
  _require(isinstance(p.generator_steps, int) and p.generator_steps >= 0,
           'pipeline.generator_steps', p.generator_steps,
           "must be ≥ 0 (0: the preset's train.num_steps).")
  if p.generator != 'gaussian' and not p.generator_checkpoint:   # a generator trained here
    presets = generator_presets(p.generator)
    _require(p.generator_preset in presets, 'pipeline.generator_preset', p.generator_preset,
             f'must name a {p.generator.upper()} preset in configs/ by its module name: one of '
             f'{", ".join(presets)}.')
  _require(p.sampler in generators.SAMPLERS, 'pipeline.sampler', p.sampler,
           f'must be one of {", ".join(generators.SAMPLERS)}.')
  _require(isinstance(p.sampler_steps, int) and p.sampler_steps >= 0, 'pipeline.sampler_steps',
           p.sampler_steps, "must be ≥ 0 (0: the sampler's default).")
  _require(p.labels in ('classifier', 'generator'), 'pipeline.labels', p.labels,
           "must be 'classifier' or 'generator'.")
  _require(p.labels == 'classifier' or p.generator != 'gaussian', 'pipeline.labels', p.labels,
           "'generator' takes a class-conditional diffusion generator's own classes: set "
           "pipeline.generator to 'ddpm' or 'edm'.")
  _require(p.labels == 'generator' or not p.classes, 'pipeline.classes', p.classes,
           "samples a class-conditional generator for its own labels: set pipeline.labels to "
           "'generator'.")
  _require(p.shard_encoding in ('raw', 'png', 'jpeg'), 'pipeline.shard_encoding',
           p.shard_encoding, "must be 'raw', 'png' or 'jpeg'.")
  _require(p.shard_encoding == 'raw' or p.generator != 'gaussian', 'pipeline.shard_encoding',
           p.shard_encoding, "applies to a diffusion generator's shards; the Gaussian fit's are "
           'raw.')
  builtin = real.DATASETS.get(config.dataset.name)
  classes = num_classes or (builtin.num_classes if builtin else 0)
  _require(not classes or not p.class_balanced or p.top_k or p.num_generated % classes == 0,
           'pipeline.num_generated', p.num_generated,
           f'a class-balanced set (pipeline.class_balanced) needs a multiple of the {classes} '
           'classes.')

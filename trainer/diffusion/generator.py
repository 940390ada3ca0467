"""Generator training as one harness task, whatever the objective (trainer/diffusion/ddpm.py: Ho
et al.'s DDPM; trainer/diffusion/edm.py: Karras et al.'s EDM).

    python -m trainer.train_generator --config=configs/ddpm_digits.py --workdir=DIR

The task owns what the objectives share: the state (step, params, optimiser, EMA), the step
(loss, gradient, update, EMA), the batches (a function of (seed, step) alone: epoch-wise
permutations of the training split without its held-out head, so a restart needs no iterator
state and resumes bitwise; random horizontal flips when `dataset.flip`), the sample grid in
TensorBoard every `eval.every_steps` (trainer/diffusion/grid.py), and at the end the EMA weights
as WORKDIR/generator, a checkpoint `trainer.sample` reads. An objective supplies the network, its
loss, optimiser, EMA rule, sampler and checkpoint format (`Objective`).
"""
import itertools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath

from data import real
from trainer.diffusion import ddpm
from trainer.diffusion import edm
from trainer.diffusion import grid
from trainer.diffusion import objective as objective_lib
from trainer.harness import loop

# The rate is constant after warm-up, the EMA ignores the total, batches are a function of the
# step and the log and grid periods touch no state: a run may be lengthened or shortened and
# resume (its generator is written at the new last step), or change how often it reports.
RESUMABLE = ('train.num_steps', 'train.log_every', 'eval.every', 'eval.grid_')


@flax.struct.dataclass
class DiffusionState:
  step: jax.Array
  params: Any
  opt_state: Any
  ema: Any


def batch_indices(seed: int, step: int, num_examples: int, batch_size: int) -> np.ndarray:
  """The global batch of step `step` (0-based): epoch-wise permutations, dropping the remainder.

  A set smaller than the batch (a data-scarce subset, dataset.train_fraction) fills each batch
  with whole permutations, k = ceil(batch / set) of them, cut to the batch: every image at least
  k - 1 times, at most k.
  """
  if num_examples < 1:
    raise ValueError('no training images')
  per_epoch = num_examples // batch_size
  if per_epoch == 0:
    k = -(-batch_size // num_examples)
    return np.concatenate([np.random.default_rng([seed, step * k + j]).permutation(num_examples)
                           for j in range(k)])[:batch_size]
  epoch, pos = divmod(step, per_epoch)
  order = np.random.default_rng([seed, epoch]).permutation(num_examples)
  return order[pos * batch_size:(pos + 1) * batch_size]


class GeneratorTraining(loop.Task):
  """The state is a DiffusionState; no best checkpoint (the generator is the last EMA)."""
  resumable = RESUMABLE

  def __init__(self, config, objective: objective_lib.Objective):
    self.config, self.objective = config, objective
    self.train_data, _, _ = real.training_splits(config)
    objective.check_grid(config)
    grid.check_config(config, objective.num_classes)
    self.tx = objective.optimizer()
    self.total_steps = config.train.num_steps
    self.key = jax.random.key(config.seed + 1)   # init draws from key(seed), the steps from here

  def init_state(self):
    params = self.objective.init_params(jax.random.key(self.config.seed))
    return DiffusionState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=self.tx.init(params), ema=params)

  def train_step(self, state, batch):
    key = jax.random.fold_in(self.key, state.step)
    k_flip, k_loss = jax.random.split(key)
    x0 = objective_lib.to_model_scale(batch['image'])
    if self.config.dataset.flip:
      mirror = jax.random.bernoulli(k_flip, 0.5, (x0.shape[0], 1, 1, 1))
      x0 = jnp.where(mirror, x0[:, :, ::-1], x0)
    y = batch['label'] if self.objective.num_classes else None
    loss, grads = jax.value_and_grad(self.objective.loss)(state.params, x0, y, k_loss)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = DiffusionState(step=state.step + 1, params=params, opt_state=opt_state,
                         ema=self.objective.ema(state.ema, params, state.step))
    return new, {'loss': loss, 'grad_norm': optax.global_norm(grads)}

  def data(self, first_step):
    c = self.config
    n, rows = len(self.train_data['label']), c.train.batch_size // jax.process_count()
    for s in itertools.count(first_step):
      mine = batch_indices(c.seed, s, n, c.train.batch_size)[
          jax.process_index() * rows:(jax.process_index() + 1) * rows]
      yield {'image': self.train_data['image'][mine], 'label': self.train_data['label'][mine]}

  def setup(self, run):
    self.writer = run.writer
    if self.config.eval.every_steps:
      self.sample_grid = grid.make_sampler(self.config, self.objective, run.mesh,
                                           run.state_shardings.ema)
    self.generator = str(epath.Path(run.workdir, 'generator'))

  def evaluate(self, step, state):
    if self.config.eval.every_steps:
      images = grid.tile(self.sample_grid(state.ema), self.objective.num_classes)
      if jax.process_index() == 0:
        self.writer.write_images(step, {'samples': images[None]})
    return {}

  def finish(self, state, results):
    if jax.process_index() == 0:
      self.objective.save(self.generator, jax.device_get(state.ema),
                          f'trainer.train_generator step {self.total_steps}')
    return {**results, 'generator': self.generator}


OBJECTIVES = {'ddpm': ddpm.DDPMObjective, 'edm': edm.EDMObjective}


def objective(config: ml_collections.ConfigDict) -> objective_lib.Objective:
  """The objective `config.objective` names, built from the config."""
  kinds = OBJECTIVES
  if config.objective not in kinds:
    raise ValueError(f'config.objective={config.objective!r}: use one of {sorted(kinds)}.')
  return kinds[config.objective](config)


def train(config: ml_collections.ConfigDict, workdir: str, *, progress_name: str | None = None):
  """Trains (or resumes) in `workdir`; returns {'step', 'finished', 'history', 'generator' (once
  finished)}. `progress_name` names the console progress bar (None: none)."""
  return loop.run(GeneratorTraining(config, objective(config)), config, workdir,
                  progress_name=progress_name)

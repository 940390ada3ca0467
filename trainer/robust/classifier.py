"""A trained classifier, loaded from its workdir for evaluation, labelling or export."""
import functools

import jax

from data import real
from models import registry
from trainer.harness import checkpoints
from trainer.harness import loop
from trainer.harness import workdir as workdir_lib
from trainer.robust import optimizer
from trainer.robust import train_state


def abstract_state(config):
  """ShapeDtypeStructs of the TrainState a workdir of `config` holds."""
  create = functools.partial(train_state.create, registry.from_config(config),
                             optimizer.make_optimizer(config),
                             real.info(config.dataset).shape, config.seed)
  return jax.eval_shape(create)


def load(workdir, which='best'):
  """(config, model, EMA variables) of the checkpoint `which`: 'best', 'latest' or a step.

  The variables come back replicated on this run's devices, whichever mesh and however many
  hosts wrote them (a checkpoint of a pod run can be evaluated on one machine); weights that are
  not finite are refused rather than evaluated.
  """
  config = workdir_lib.load_config(workdir)
  abstract = abstract_state(config)
  if which == 'best':
    variables = checkpoints.read_best(workdir, abstract.ema_variables())
  else:
    variables = checkpoints.read_state(workdir, which, abstract).ema_variables()
  if not loop.all_finite(variables):
    raise loop.NonFiniteError(f'the {which!r} checkpoint in {workdir} holds non-finite EMA '
                              'weights (the run that wrote them diverged): refusing to use them')
  return config, registry.from_config(config), variables

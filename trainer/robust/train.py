"""Classifier training as a harness task: TRADES, Madry or standard training on batches of
exactly α real and 1 − α generated images, with the EMA weights of the best held-out robust
accuracy kept in best/ (trainer/harness/loop.py runs it: resume, preemption, checkpoints).

    result = train_and_evaluate(config, workdir)   # python -m trainer.main is this call
"""
from absl import logging

from data import real
from data.input import pipeline
from models import registry
from trainer.attacks import compositions
from trainer.harness import loop
from trainer.harness import progress
from trainer.robust import config_validation
from trainer.robust import optimizer
from trainer.robust import robust_accuracy
from trainer.robust import step as step_lib
from trainer.robust import train_state


def selection_key(config):
  """The held-out metric the best checkpoint is chosen by: robust accuracy, or clean accuracy for
  the non-robust classifier (whose robust accuracy only falls as it learns)."""
  return 'holdout/clean_accuracy' if config.train.loss == 'standard' else 'holdout/robust_accuracy'


class RobustTraining(loop.Task):
  """The state is a TrainState (trainer/robust/train_state.py); the batches come from the Grain
  pipeline (its position saved with every checkpoint); every evaluation measures clean and
  selection-attack accuracy of the EMA weights on the held-out and test images."""
  data_in_checkpoint = True
  keeps_best = True

  def __init__(self, config):
    config_validation.validate(config)
    self.config = config
    self.info = real.info(config.dataset)
    self.train_data, self.holdout, self.test = real.training_splits(config)
    self.model = registry.from_config(config)
    self.tx = optimizer.make_optimizer(config)
    self.total_steps = optimizer.total_steps(config)
    self.learning_rate = optimizer.learning_rate_schedule(config)
    self.train_step = step_lib.make_train_step(config, self.model, self.tx, self.info.num_classes)

  def init_state(self):
    return train_state.create(self.model, self.tx, self.info.shape, self.config.seed)

  def data(self, first_step):
    del first_step  # the iterator's own position, restored from the checkpoint by the harness
    self.iterator = pipeline.make_train_iterator(  # arrays in RAM, or a split it streams
        self.config, self.train_data, num_classes=self.info.num_classes)
    return self.iterator

  def setup(self, run):
    c = self.config
    self.checkpoints = run.checkpoints
    self.measure = robust_accuracy.make_measure(  # attacks in eval.dtype (float32 by default)
        registry.from_config(c, dtype=c.eval.dtype), compositions.selection_attack(c), run.mesh,
        c.eval.batch_size, seed=c.seed)

  def log_extras(self, step):
    return {'learning_rate': float(self.learning_rate(step - 1)),
            'skipped_records': self.iterator.skipped_records}

  def evaluate(self, step, state):
    results = {}
    for name, split in (('holdout', self.holdout), ('test', self.test)):
      if len(split['label']):
        accuracy = self.measure(state.ema_variables(), split['image'], split['label'])
        results[f'{name}/clean_accuracy'] = accuracy['clean']
        results[f'{name}/robust_accuracy'] = accuracy['robust']
    key = selection_key(self.config)
    if key in results:
      self.checkpoints.maybe_save_best(step, state.ema_variables(), results, key)
    logging.info('Step %d: %s', step, results)
    return results

  def shown(self, results):
    return {'held-out': progress.percent(results.get(selection_key(self.config)))}


def train_and_evaluate(config, workdir, *, record_batch_ids=False, progress_name=None):
  """Trains (or resumes) in `workdir`; returns {'step', 'finished', 'history', **the final
  held-out and test accuracies}. `progress_name` names the console progress bar (None: none)."""
  return loop.run(RobustTraining(config), config, workdir, progress_name=progress_name,
                  record_batch_ids=record_batch_ids)

"""The train loop end to end on digits: TensorBoard scalars, best checkpoint, exact resume."""
import os
import shutil

import numpy as np
import pytest

from configs import demo
from trainer.harness import loop
from trainer.robust import train
from trainer_runs import read_scalars

pytestmark = pytest.mark.integration  # the integration tier (pytest.ini)


def tiny_config():
  c = demo.get_config()
  c.model.name = 'wrn-10-1'
  c.generated.alpha = 1.0
  c.dataset.holdout = 32
  c.dataset.test_size = 64
  c.train.batch_size = 32
  c.train.epoch_size = 32 * 6  # 6 steps
  c.train.num_epochs = 1
  c.train.attack_steps = 2
  c.train.log_every_steps = 1
  c.optim.warmup_epochs = 0.5
  c.eval.every_steps = 3
  c.eval.pgd_steps = 3
  c.eval.batch_size = 32
  c.checkpoint.every_steps = 3
  c.checkpoint.keep = 5
  c.loader.prefetch = 0
  return c


@pytest.fixture(scope='module')
def full_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('full'))
  result = train.train_and_evaluate(tiny_config(), workdir)
  return workdir, result


def test_tensorboard_has_the_training_scalars(full_run):
  workdir, result = full_run
  assert result['finished'] and result['step'] == 6
  scalars = read_scalars(workdir)
  for tag in ('train/loss', 'train/loss_natural', 'train/loss_robust', 'train/accuracy_clean',
              'train/accuracy_adv', 'train/learning_rate', 'train/grad_norm',
              'train/images_per_second', 'holdout/robust_accuracy', 'holdout/clean_accuracy',
              'test/clean_accuracy', 'test/robust_accuracy'):
    assert tag in scalars, f'{tag} missing; have {sorted(scalars)}'
  assert sorted(scalars['train/loss']) == [1, 2, 3, 4, 5, 6]
  assert sorted(scalars['test/robust_accuracy']) == [3, 6]
  assert all(np.isfinite(v) for v in scalars['train/loss'].values())
  lr = scalars['train/learning_rate']
  assert lr[1] < lr[3] and lr[6] < lr[4]  # warm-up then cosine decay
  assert os.path.exists(os.path.join(workdir, 'best.json'))
  assert os.path.exists(os.path.join(workdir, 'done.json'))


def test_resume_continues_the_same_run(full_run, tmp_path):
  workdir, _ = full_run
  # A run interrupted right after its step-3 checkpoint: drop everything saved later.
  resumed = str(tmp_path / 'resumed')
  os.makedirs(os.path.join(resumed, 'checkpoints'))
  shutil.copytree(os.path.join(workdir, 'checkpoints', '3'),
                  os.path.join(resumed, 'checkpoints', '3'))
  result = train.train_and_evaluate(tiny_config(), resumed)
  assert result['step'] == 6
  want, got = read_scalars(workdir), read_scalars(resumed)
  assert sorted(got['train/loss']) == [4, 5, 6]  # the step counter carried on from 3
  for s in (4, 5, 6):
    np.testing.assert_allclose(got['train/loss'][s], want['train/loss'][s], rtol=1e-6)
  np.testing.assert_allclose(got['test/robust_accuracy'][6], want['test/robust_accuracy'][6])


def test_non_finite_loss_stops_without_losing_checkpoints(full_run, tmp_path):
  workdir, _ = full_run
  broken = str(tmp_path / 'broken')
  shutil.copytree(os.path.join(workdir, 'checkpoints'), os.path.join(broken, 'checkpoints'))
  shutil.rmtree(os.path.join(broken, 'checkpoints', '6'))
  c = tiny_config()
  c.optim.lr_per_256 = float('inf')  # the first update from step 3 makes the weights non-finite
  with pytest.raises(loop.NonFiniteError, match='step 5'):
    train.train_and_evaluate(c, broken)
  assert sorted(os.listdir(os.path.join(broken, 'checkpoints'))) == ['3']

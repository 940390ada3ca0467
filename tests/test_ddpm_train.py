"""DDPM training: the loss falls on a toy set, resume is exact, the result a loadable generator,
and TensorBoard gets a grid of EMA samples every eval period."""
import dataclasses
import glob
import json
import io
import os
import re
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import trainer_runs
from configs import ddpm_digits
from models.diffusion import checkpoint
from trainer import sharding
from trainer.diffusion import ddpm
from trainer.diffusion import generator
from trainer.diffusion import grid
from trainer.harness import workdir as workdir_lib


def _tiny(num_steps):
  c = ddpm_digits.get_config()
  c.unet.block_out_channels = (16, 32)
  c.unet.dropout = 0.0
  c.train.batch_size = 64
  c.train.num_steps = num_steps
  c.train.log_every_steps = 10
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 10
  c.checkpoint.every_steps = num_steps // 2
  c.eval.every_steps = 20
  c.eval.grid_samples = 20        # two per class
  c.eval.grid_sampler_steps = 2
  return c


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('ddpm')
  return workdir, generator.train(_tiny(60), str(workdir))


@pytest.mark.integration
def test_loss_falls_and_writes_a_generator(run):
  _, result = run
  losses = [logged['loss'] for _, logged in result['history']]
  print('DDPM loss every 10 steps (digits, 16/32-channel UNet, batch 64):',
        ' '.join(f'{v:.3f}' for v in losses))
  assert result['step'] == 60 and result['finished']
  assert np.mean(losses[-2:]) < 0.6 * losses[0]
  gen = checkpoint.load(result['generator'])
  assert gen.num_classes == 10 and gen.image_shape == (8, 8, 1)
  assert gen.schedule.num_timesteps == 1000
  x = np.zeros((2, 8, 8, 1), np.float32)
  assert np.all(np.isfinite(jax.jit(gen.eps_fn)(gen.params, x, np.array([0, 999]),
                                                np.array([1, 2]))))


@pytest.fixture(scope='module')
def resumed_run(run, tmp_path_factory):
  """The run of `run` restarted from its step-30 checkpoint in a workdir of its own."""
  workdir, _ = run
  again = tmp_path_factory.mktemp('ddpm_resumed')
  shutil.copy(workdir / 'config.json', again / 'config.json')
  shutil.copytree(workdir / 'checkpoints' / '30', again / 'checkpoints' / '30')
  return again, generator.train(_tiny(60), str(again))


@pytest.mark.integration
def test_resume_is_exact(run, resumed_run):
  """A run stopped after its step-30 checkpoint and restarted ends bitwise where one run does."""
  workdir, result = run
  _, resumed = resumed_run
  assert resumed['history'][0][0] == 40  # it started at step 31
  a = checkpoint.flatten(checkpoint.load(result['generator']).params)
  b = checkpoint.flatten(checkpoint.load(resumed['generator']).params)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_batches_are_a_function_of_the_step():
  a = generator.batch_indices(0, 17, 1000, 64)
  np.testing.assert_array_equal(a, generator.batch_indices(0, 17, 1000, 64))
  epoch = np.concatenate([generator.batch_indices(0, s, 1000, 64) for s in range(15)])
  assert len(np.unique(epoch)) == len(epoch) == 960  # no image twice within an epoch
  assert not np.array_equal(generator.batch_indices(0, 15, 1000, 64)[:64], epoch[:64])


def test_cifar10_preset_is_ho_et_al():
  """configs/ddpm_cifar10.py builds google/ddpm-cifar10-32's UNet (35.7M) with dropout 0.1,
  initialised as Ho et al.'s."""
  from configs import ddpm_cifar10  # pylint: disable=g-import-not-at-top
  from models.diffusion import unet  # pylint: disable=g-import-not-at-top
  config = ddpm_cifar10.get_config()
  assert ddpm.unet_config(config) == dataclasses.replace(unet.CIFAR10_DDPM, dropout=0.1,
                                                         init='ddpm')
  np.testing.assert_allclose(ddpm.noise_schedule(config).betas,
                             np.linspace(1e-4, 0.02, 1000))


# ------------------------------------------------------------------------------------------------
# The sample grid in TensorBoard
# ------------------------------------------------------------------------------------------------

def _tensorboard_images(workdir, tag='samples'):
  """{step: decoded uint8 image} of every image summary `tag` in the workdir's event files."""
  images = {}
  for path in glob.glob(os.path.join(workdir, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        if v.tag == tag:
          width, height, png = tf.make_ndarray(v.tensor)   # tf.summary.image: sizes, then PNGs
          image = np.asarray(Image.open(io.BytesIO(png)))
          assert image.shape[:2] == (int(height), int(width))
          images[event.step] = image
  return images


@pytest.mark.integration
def test_a_grid_of_ema_samples_every_eval_period(run):
  workdir, _ = run
  images = _tensorboard_images(str(workdir))
  assert sorted(images) == [20, 40, 60]
  # Ten rows (classes) of two 8 x 8 samples, 1-pixel white borders, scaled 4x to 32-pixel tiles.
  for image in images.values():
    assert image.shape == (4 * (10 * 9 + 1), 4 * (2 * 9 + 1), 3) and image.dtype == np.uint8
  tiles = images[60][4:4 + 32, 4:4 + 32]
  assert tiles.std() > 0    # a sample, not the white background
  assert not np.array_equal(images[20], images[60])  # the model moved between the two


@pytest.mark.integration
def test_resumed_grids_equal_the_uninterrupted_ones(run, resumed_run):
  """Same noise at every grid, EMA bitwise equal after resume: the grids of steps 40 and 60 agree,
  and the restart wrote only those (it began after step 30)."""
  first, again = _tensorboard_images(str(run[0])), _tensorboard_images(str(resumed_run[0]))
  assert sorted(again) == [40, 60]
  for step in again:
    np.testing.assert_array_equal(again[step], first[step], err_msg=f'step {step}')


@pytest.mark.integration
def test_the_last_grid_is_the_ema_generator_from_the_fixed_grid_noise(run):
  """Step 60's grid is the saved EMA generator sampled again from the grid key: the grid shows
  the EMA weights, and the noise is the same at every call."""
  workdir, result = run
  c = _tiny(60)
  mesh = sharding.make_mesh(c)
  sample = grid.make_sampler(c, ddpm.DDPMObjective(c), mesh,
                             sharding.replicated(mesh))
  ema = checkpoint.load(result['generator']).params
  samples = sample(ema)   # 20 samples on 8 devices: padded to 24 and cut back
  assert samples.shape == (20, 8, 8, 1) and samples.dtype == np.uint8
  np.testing.assert_array_equal(samples, sample(ema))
  np.testing.assert_array_equal(_tensorboard_images(str(workdir))[60],
                                grid.tile(samples, 10))


def test_grid_layout():
  images = np.arange(10, dtype=np.uint8)[:, None, None, None] * np.ones((1, 8, 8, 1), np.uint8)
  conditional = grid.tile(images, 5)   # classes 0 0 1 1 2 2 ...: 5 rows of 2
  assert conditional.shape == (4 * (5 * 9 + 1), 4 * (2 * 9 + 1), 3)
  assert conditional[4 * (1 + 9), 4 * (1 + 9), 0] == 3   # row 1, column 1: sample 3
  np.testing.assert_array_equal(grid.labels(10, 5), [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
  plain = grid.tile(images, None)   # 10 samples: 4 columns, 3 rows
  assert plain.shape == (4 * (3 * 9 + 1), 4 * (4 * 9 + 1), 3)
  assert plain[4 * (1 + 9), 4 * 1, 0] == 4   # row 1, column 0: sample 4
  cifar = grid.tile(np.zeros((4, 32, 32, 3), np.uint8), None)
  assert cifar.shape == (2 * 33 + 1, 2 * 33 + 1, 3)   # 32-pixel tiles stay at scale 1


@pytest.mark.parametrize('key,value,message', [
    ('grid_samples', 25, 'grid_samples=25 must be a multiple of the 10 classes'),
    ('grid_samples', 0, 'grid_samples=0 must be >= 1'),
    ('grid_sampler', 'euler', "grid_sampler='euler'"),
    ('grid_sampler_steps', 1, 'grid_sampler_steps=1 (dpm++2m): steps must be in [2, 999]'),
    ('every_steps', -1, 'every_steps=-1'),
])
def test_bad_grid_settings_are_named(key, value, message):
  c = _tiny(10)
  c.eval[key] = value
  def check():
    ddpm.DDPMObjective(c).check_grid(c)
    grid.check_config(c, 10)
  with pytest.raises(ValueError, match=re.escape(message)):
    check()
  c.eval.every_steps = 0
  if key != 'every_steps':
    check()   # no grids: the grid keys do not matter


def test_a_run_may_be_lengthened_but_not_changed(tmp_path):
  """train.num_steps and the reporting periods may change on resume (constant rate after
  warm-up, an EMA that ignores the total, batches a function of the step); the model may not."""
  planned = _tiny(30)
  planned.checkpoint.every_steps = 15
  workdir_lib.save_config(str(tmp_path), planned)
  longer = _tiny(60)
  longer.checkpoint.every_steps = 15
  longer.train.log_every_steps, longer.eval.every_steps = 7, 0
  resumable = generator.RESUMABLE
  workdir_lib.check_same_run(str(tmp_path), longer, resumable=resumable)
  with pytest.raises(workdir_lib.ConfigMismatchError, match='train.num_steps'):
    workdir_lib.check_same_run(str(tmp_path), longer)
  longer.unet.dropout = 0.3
  with pytest.raises(workdir_lib.ConfigMismatchError, match='unet.dropout'):
    workdir_lib.check_same_run(str(tmp_path), longer, resumable=resumable)


@pytest.mark.integration
def test_sigterm_saves_and_stops_the_ddpm_and_the_rerun_finishes(tmp_path):
  """`python -m trainer.train_generator` on the harness: a SIGTERM saves at the next step and
  exits 0 without the generator; the same command then resumes from that step to the end."""
  workdir = tmp_path / 'ddpm'
  overrides = ['--config.unet.block_out_channels=(16,32)', '--config.train.batch_size=64',
               '--config.train.num_steps=400', '--config.train.log_every_steps=1',
               '--config.checkpoint.every_steps=1000', '--config.eval.every_steps=0']
  command = [sys.executable, '-m', 'trainer.train_generator', '--config=configs/ddpm_digits.py',
             f'--workdir={workdir}'] + overrides
  env = trainer_runs.env(2, tmp_path / 'cache')
  log = tmp_path / 'log.txt'
  with open(log, 'wb') as out:
    proc = subprocess.Popen(command, cwd=trainer_runs.ROOT, env=env, stdout=out,
                            stderr=subprocess.STDOUT)
  proc.log_path = log
  events = lambda: glob.glob(str(workdir / 'events.out.tfevents.*'))  # noqa: E731
  trainer_runs.wait_until(lambda: events() and os.path.getsize(events()[0]) > 2000, proc,
                          timeout=300, poll=0.05)
  time.sleep(0.5)
  assert trainer_runs.signal_and_wait(proc, trainer_runs.SIGTERM) == 0, trainer_runs.log_tail(proc)
  stopped = re.search(r'stopped at step (\d+) \(checkpoint saved\)', log.read_text())
  assert stopped, trainer_runs.log_tail(proc)
  step = int(stopped.group(1))
  assert 0 < step < 400 and trainer_runs.committed_steps(str(workdir / 'checkpoints')) == [step]
  assert not (workdir / 'generator').exists() and not (workdir / 'done.json').exists()
  rerun = subprocess.run(command + ['--config.train.num_steps=' + str(step + 3)],
                         cwd=trainer_runs.ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
  assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
  assert f'step {step + 3}: loss' in rerun.stdout
  assert json.loads((workdir / 'done.json').read_text())['step'] == step + 3
  assert (workdir / 'generator' / 'manifest.json').exists()

"""DDPM training: the loss falls on a toy set, resume is exact, the result a loadable generator,
and TensorBoard gets a grid of EMA samples every eval period."""
import dataclasses
import glob
import io
import os
import re
import shutil

import jax
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from configs import ddpm_digits
from models.diffusion import checkpoint
from models.diffusion import unet as unet_lib
from trainer import ddpm_train
from trainer import sharding


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
  c.train.eval_every_steps = 20
  c.train.grid_samples = 20        # two per class
  c.train.grid_sampler_steps = 2
  return c


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('ddpm')
  return workdir, ddpm_train.train(_tiny(60), str(workdir))


def test_loss_falls_and_writes_a_generator(run):
  _, result = run
  losses = [loss for _, loss in result['losses']]
  print('DDPM loss every 10 steps (digits, 16/32-channel UNet, batch 64):',
        ' '.join(f'{v:.3f}' for v in losses))
  assert result['step'] == 60 and not result['preempted']
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
  return again, ddpm_train.train(_tiny(60), str(again))


@pytest.mark.slow
def test_resume_is_exact(run, resumed_run):
  """A run stopped after its step-30 checkpoint and restarted ends bitwise where one run does."""
  workdir, result = run
  _, resumed = resumed_run
  assert resumed['losses'][0][0] == 40  # it started at step 31
  a = checkpoint.flatten(checkpoint.load(result['generator']).params)
  b = checkpoint.flatten(checkpoint.load(resumed['generator']).params)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_batches_are_a_function_of_the_step():
  a = ddpm_train.batch_indices(0, 17, 1000, 64)
  np.testing.assert_array_equal(a, ddpm_train.batch_indices(0, 17, 1000, 64))
  epoch = np.concatenate([ddpm_train.batch_indices(0, s, 1000, 64) for s in range(15)])
  assert len(np.unique(epoch)) == len(epoch) == 960  # no image twice within an epoch
  assert not np.array_equal(ddpm_train.batch_indices(0, 15, 1000, 64)[:64], epoch[:64])


def test_cifar10_preset_is_ho_et_al():
  """configs/ddpm_cifar10.py builds google/ddpm-cifar10-32's UNet (35.7M) with dropout 0.1."""
  from configs import ddpm_cifar10  # pylint: disable=g-import-not-at-top
  from models.diffusion import unet  # pylint: disable=g-import-not-at-top
  config = ddpm_cifar10.get_config()
  assert ddpm_train.unet_config(config) == dataclasses.replace(unet.CIFAR10_DDPM, dropout=0.1)
  np.testing.assert_allclose(ddpm_train.noise_schedule(config).betas,
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


@pytest.mark.slow
def test_resumed_grids_equal_the_uninterrupted_ones(run, resumed_run):
  """Same noise at every grid, EMA bitwise equal after resume: the grids of steps 40 and 60 agree,
  and the restart wrote only those (it began after step 30)."""
  first, again = _tensorboard_images(str(run[0])), _tensorboard_images(str(resumed_run[0]))
  assert sorted(again) == [40, 60]
  for step in again:
    np.testing.assert_array_equal(again[step], first[step], err_msg=f'step {step}')


def test_the_last_grid_is_the_ema_generator_from_the_fixed_grid_noise(run):
  """Step 60's grid is the saved EMA generator sampled again from the grid key: the grid shows
  the EMA weights, and the noise is the same at every call."""
  workdir, result = run
  c = _tiny(60)
  model = unet_lib.UNet(ddpm_train.unet_config(c))
  mesh = sharding.make_mesh(c)
  sample = ddpm_train.make_grid_sampler(c, model, ddpm_train.noise_schedule(c).alphas_cumprod,
                                        mesh, sharding.replicated(mesh))
  ema = checkpoint.load(result['generator']).params
  samples = sample(ema)   # 20 samples on 8 devices: padded to 24 and cut back
  assert samples.shape == (20, 8, 8, 1) and samples.dtype == np.uint8
  np.testing.assert_array_equal(samples, sample(ema))
  np.testing.assert_array_equal(_tensorboard_images(str(workdir))[60],
                                ddpm_train.sample_grid(samples, 10))


def test_grid_layout():
  images = np.arange(10, dtype=np.uint8)[:, None, None, None] * np.ones((1, 8, 8, 1), np.uint8)
  conditional = ddpm_train.sample_grid(images, 5)   # classes 0 0 1 1 2 2 ...: 5 rows of 2
  assert conditional.shape == (4 * (5 * 9 + 1), 4 * (2 * 9 + 1), 3)
  assert conditional[4 * (1 + 9), 4 * (1 + 9), 0] == 3   # row 1, column 1: sample 3
  np.testing.assert_array_equal(ddpm_train.grid_labels(10, 5), [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
  plain = ddpm_train.sample_grid(images, None)   # 10 samples: 4 columns, 3 rows
  assert plain.shape == (4 * (3 * 9 + 1), 4 * (4 * 9 + 1), 3)
  assert plain[4 * (1 + 9), 4 * 1, 0] == 4   # row 1, column 0: sample 4
  cifar = ddpm_train.sample_grid(np.zeros((4, 32, 32, 3), np.uint8), None)
  assert cifar.shape == (2 * 33 + 1, 2 * 33 + 1, 3)   # 32-pixel tiles stay at scale 1


@pytest.mark.parametrize('key,value,message', [
    ('grid_samples', 25, 'grid_samples=25 must be a multiple of the 10 classes'),
    ('grid_samples', 0, 'grid_samples=0 must be >= 1'),
    ('grid_sampler', 'euler', "grid_sampler='euler'"),
    ('grid_sampler_steps', 1, 'grid_sampler_steps=1 (dpm++2m): steps must be in [2, 999]'),
    ('eval_every_steps', -1, 'eval_every_steps=-1'),
])
def test_bad_grid_settings_are_named(key, value, message):
  c = _tiny(10)
  c.train[key] = value
  with pytest.raises(ValueError, match=re.escape(message)):
    ddpm_train.check_grid_config(c, 10)
  c.train.eval_every_steps = 0
  if key != 'eval_every_steps':
    ddpm_train.check_grid_config(c, 10)   # no grids: the grid keys do not matter


def test_a_run_may_be_lengthened_but_not_changed(tmp_path):
  """train.num_steps and the reporting periods may change on resume (constant rate after
  warm-up, an EMA that ignores the total, batches a function of the step); the model may not."""
  from trainer import checkpointing  # pylint: disable=g-import-not-at-top
  planned = _tiny(30)
  planned.checkpoint.every_steps = 15
  checkpointing.save_config(str(tmp_path), planned)
  longer = _tiny(60)
  longer.checkpoint.every_steps = 15
  longer.train.log_every_steps, longer.train.eval_every_steps = 7, 0
  resumable = ddpm_train.RESUMABLE
  checkpointing.check_same_run(str(tmp_path), longer, resumable=resumable)
  with pytest.raises(checkpointing.ConfigMismatchError, match='train.num_steps'):
    checkpointing.check_same_run(str(tmp_path), longer)
  longer.unet.dropout = 0.3
  with pytest.raises(checkpointing.ConfigMismatchError, match='unet.dropout'):
    checkpointing.check_same_run(str(tmp_path), longer, resumable=resumable)

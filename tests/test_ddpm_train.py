"""DDPM training: the loss falls on a toy set, resume is exact, the result a loadable generator."""
import dataclasses
import shutil

import jax
import numpy as np
import pytest

from configs import ddpm_digits
from models.diffusion import checkpoint
from trainer import ddpm_train


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


@pytest.mark.slow
def test_resume_is_exact(run, tmp_path):
  """A run stopped after its step-30 checkpoint and restarted ends bitwise where one run does."""
  workdir, result = run
  shutil.copy(workdir / 'config.json', tmp_path / 'config.json')
  shutil.copytree(workdir / 'checkpoints' / '30', tmp_path / 'checkpoints' / '30')
  resumed = ddpm_train.train(_tiny(60), str(tmp_path))
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

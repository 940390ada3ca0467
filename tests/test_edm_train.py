"""EDM training on the harness (trainer/diffusion/edm.py): the loss falls on the digits, the
result is a loadable EDM generator whose Heun samples are images, and a run restarted from its
middle checkpoint ends bitwise where one run does."""
import shutil

import jax
import numpy as np
import pytest

from configs import edm_digits
from models.diffusion import checkpoint
from models.diffusion.edm import checkpoint as edm_checkpoint
from models.diffusion.edm import sampler as edm_sampler
from trainer.diffusion import generator

pytestmark = pytest.mark.integration  # the integration tier (pytest.ini): a training run


def _tiny(num_steps):
  c = edm_digits.get_config()
  c.network.model_channels = 16
  c.train.batch_size = 64
  c.train.num_steps = num_steps
  c.train.log_every_steps = 10
  c.optim.lr = 2e-3
  c.optim.lr_rampup_kimg = 0.64           # 10 steps of 64
  c.checkpoint.every_steps = num_steps // 2
  c.eval.every_steps = num_steps
  c.eval.grid_samples = 10
  c.eval.grid_sampler_steps = 3
  return c


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('edm')
  return workdir, generator.train(_tiny(60), str(workdir))


def test_the_loss_falls_and_the_generator_samples(run):
  _, result = run
  losses = [logged['loss'] for _, logged in result['history']]
  print('EDM loss every 10 steps (digits, 16-channel DDPM++, batch 64):',
        ' '.join(f'{v:.3f}' for v in losses))
  assert result['finished'] and result['step'] == 60
  assert np.mean(losses[-2:]) < 0.7 * losses[0]
  gen = edm_checkpoint.load(result['generator'])
  assert gen.num_classes == 10 and tuple(gen.network.image_shape) == (8, 8, 1)
  x = edm_sampler.sample(gen.denoiser, gen.params, jax.random.key(0), (4, 8, 8, 1), num_steps=3,
                         y=np.arange(4))
  assert np.all(np.isfinite(np.asarray(x)))


def test_a_restarted_run_ends_bitwise_where_one_run_does(run, tmp_path):
  workdir, result = run
  again = tmp_path / 'again'
  again.mkdir()
  shutil.copy(workdir / 'config.json', again / 'config.json')
  shutil.copytree(workdir / 'checkpoints' / '30', again / 'checkpoints' / '30')
  resumed = generator.train(_tiny(60), str(again))
  assert resumed['history'][0][0] == 40            # it started after step 30
  a = checkpoint.flatten(edm_checkpoint.load(result['generator']).params)
  b = checkpoint.flatten(edm_checkpoint.load(resumed['generator']).params)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)

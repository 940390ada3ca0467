"""Configs: every preset loads and validates; bad values and unknown keys fail clearly."""
import dataclasses
import glob
import importlib
import os
import subprocess
import sys

import pytest

from configs import base
from data import datasets
from trainer.diffusion import ddpm
from trainer.diffusion import edm
from trainer.diffusion import generator
from trainer.diffusion import grid
from trainer.robust import config_validation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_PRESETS = sorted(os.path.basename(p)[:-3]
                     for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                     if not p.endswith(('__init__.py', 'base.py')))
# Generator training (trainer.train_generator) has configs of its own; the rest extend base.py.
DDPM_PRESETS = [p for p in ALL_PRESETS if p.startswith('ddpm_')]
EDM_PRESETS = [p for p in ALL_PRESETS if p.startswith('edm_')]
PRESETS = [p for p in ALL_PRESETS if p not in DDPM_PRESETS + EDM_PRESETS]


@pytest.mark.parametrize('name', PRESETS)
def test_presets_differ_from_base_only_in_known_keys(name):
  preset = importlib.import_module(f'configs.{name}').get_config()
  base_keys = set(_flat(base.get_config()))
  assert set(_flat(preset)) == base_keys  # presets change values, never invent keys
  if preset.generated.alpha < 1.0 and not preset.generated.path:
    preset.generated.path = 'gs://bucket/set/manifest.json'  # the user passes this
  if preset.dataset.name in datasets.PATH_NAMES:
    preset.dataset.path = 'gs://bucket/dataset'              # and this
  config_validation.validate(preset, device_count=1, process_count=1)


@pytest.mark.parametrize('name', DDPM_PRESETS)
def test_ddpm_presets_build_their_unet_and_schedule(name):
  preset = importlib.import_module(f'configs.{name}').get_config()
  assert set(_flat(preset)) == set(_flat(importlib.import_module(
      f'configs.{DDPM_PRESETS[0]}').get_config()))  # the DDPM presets share one set of keys
  assert ddpm.unet_config(preset).image_shape[-1] in (1, 3)
  assert ddpm.noise_schedule(preset).num_timesteps == 1000


@pytest.mark.parametrize('name', DDPM_PRESETS + EDM_PRESETS)
def test_generator_presets_draw_a_sample_grid_every_few_log_periods(name):
  preset = importlib.import_module(f'configs.{name}').get_config()
  t = preset.train
  every = preset.eval.every_steps
  assert every > 0 and every % t.log_every_steps == 0
  assert t.num_steps // every >= 5   # a run shows its progress, not one end grid
  objective = generator.objective(preset)
  objective.check_grid(preset)
  grid.check_config(preset, objective.num_classes)


@pytest.mark.parametrize('name', EDM_PRESETS)
def test_edm_presets_build_their_network(name):
  preset = importlib.import_module(f'configs.{name}').get_config()
  assert set(_flat(preset)) == set(_flat(importlib.import_module(
      f'configs.{EDM_PRESETS[0]}').get_config()))  # the EDM presets share one set of keys
  objective = generator.objective(preset)
  assert objective.name == 'edm' and objective.precond.kind == 'edm'


def test_edm_cifar10_is_the_reference_setting():
  """NVlabs/edm train.py --cond=1 --arch=ddpmpp with its defaults, less the augmentation pipe."""
  from configs import edm_cifar10  # pylint: disable=g-import-not-at-top
  from models.diffusion.edm import network as song_unet  # pylint: disable=g-import-not-at-top
  c = edm_cifar10.get_config()
  network = edm.network_config(c)
  assert network == dataclasses.replace(song_unet.CIFAR10_DDPMPP, augment_dim=0)
  assert (c.train.batch_size, c.train.num_steps * c.train.batch_size) == (512, 200_000_000)
  assert (c.optim.lr, c.optim.lr_rampup_kimg, c.optim.ema_halflife_kimg,
          c.optim.ema_rampup_ratio) == (1e-3, 10_000, 500, 0.05)
  assert (c.loss.p_mean, c.loss.p_std, c.precond.sigma_data) == (-1.2, 1.2, 0.5)


def _flat(d, prefix=''):
  for k, v in d.items():
    if hasattr(v, 'items'):
      yield from _flat(v, f'{prefix}{k}.')
    else:
      yield f'{prefix}{k}'


@pytest.mark.parametrize('key,value,message', [
    ('threat.eps', -0.1, 'threat.eps=-0.1'),
    ('generated.alpha', 1.5, 'generated.alpha=1.5'),
    ('train.batch_size', 100, 'multiple of the device count (8)'),
    ('threat.norm', 'l1', "Unknown norm 'l1'"),
    ('train.loss', 'mart', "Unknown train.loss 'mart'"),
    ('dataset.name', 'imagenet', "Unknown dataset 'imagenet'"),
    ('model.dtype', 'float16', 'model.dtype'),
    ('pipeline.generator', 'gan', "pipeline.generator='gan'"),
    ('pipeline.generator_preset', 'ddpm_digitz',
     "ddpm_digitz': must name a DDPM preset in configs/"),
    ('pipeline.generator_preset', 'demo', "pipeline.generator_preset='demo'"),  # a method's
    ('pipeline.generator_preset', 'configs/ddpm_digits.py', 'by its module name'),
    ('pipeline.generator_preset', 'edm_digits', 'must name a DDPM preset'),  # another objective
    ('pipeline.generator_steps', -1, 'pipeline.generator_steps=-1'),
])
def test_bad_values_are_named(key, value, message):
  c = base.get_config()
  c.generated.path = 'x/manifest.json'
  c.pipeline.generator = 'ddpm'   # a generator trained by the method: its preset is read
  section, leaf = key.split('.')
  c[section][leaf] = value
  with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
    config_validation.validate(c, device_count=8, process_count=1)


def test_generated_mix_without_shards_is_rejected():
  c = base.get_config()
  with pytest.raises(ValueError, match='no shard manifest'):
    config_validation.validate(c, device_count=1, process_count=1)


@pytest.mark.integration
def test_unknown_command_line_key_stops_the_run(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'trainer.main', '--config=configs/demo.py',
       '--config.train.bogus_key=3', f'--workdir={tmp_path}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert 'bogus_key' in proc.stderr
  assert not os.listdir(tmp_path)  # nothing was started


def test_the_tinyimagenet_and_imagenet_presets_say_what_the_paper_ran():
  from configs import imagenet_linf_resnet152, tinyimagenet_linf_wrn28_10  # pylint: disable=g-import-not-at-top
  tiny = tinyimagenet_linf_wrn28_10.get_config()   # Table 2's row
  assert (tiny.dataset.name, tiny.model.name, tiny.train.loss) == (
      'tiny_imagenet', 'wrn-28-10', 'trades')
  assert tiny.threat.eps == 8 / 255 and tiny.generated.alpha == 0.3
  assert tiny.train.num_epochs * tiny.train.epoch_size == 400 * 50_000
  inet = imagenet_linf_resnet152.get_config()      # App. B
  assert (inet.dataset.name, inet.model.name, inet.train.loss) == (
      'imagenet2012', 'resnet-152', 'madry')
  assert inet.threat.eps == 4 / 255 and inet.generated.alpha == 0.8
  assert inet.train.num_epochs == 200 and inet.train.epoch_size == 1_281_167
  assert inet.train.batch_size == 1024 and inet.optim.ema_decay == 0.995
  assert (inet.dataset.crop, inet.dataset.image_size) == ('inception', 224)


@pytest.mark.parametrize('name,model,batch,epochs,lr,phases', [
    # The reference's counts: its sampler draws ceil(50,000 / B) batches per epoch, int(B * f)
    # generated rows of each at unsup_fraction f, and OneCycleLR warms up over 2.5% of the run.
    ('cifar10_linf_wrn28_10_edm_20m', 'wrn-28-10', 2048, 2400, 0.2, ((0, 410),)),
    ('cifar10_linf_wrn70_16_edm_50m', 'wrn-70-16', 1024, 2000, 0.2, ((0, 205),)),
    ('cifar10_linf_wrn94_16_edm_300m', 'wrn-94-16', 2048, 10_000, 0.1,
     ((0, 0), (6000 * 25, 2048 - int(2048 * 0.875)))),
])
def test_the_edm_recipes_say_what_their_code_ran(name, model, batch, epochs, lr, phases):
  from data.input import alpha_schedule  # pylint: disable=g-import-not-at-top
  from data.input import batch_mix  # pylint: disable=g-import-not-at-top
  from trainer.robust import optimizer  # pylint: disable=g-import-not-at-top
  c = importlib.import_module(f'configs.{name}').get_config()
  assert (c.model.name, c.train.batch_size, c.train.num_epochs) == (model, batch, epochs)
  batches_per_epoch = -(-50_000 // batch)
  assert optimizer.total_steps(c) == epochs * batches_per_epoch
  assert optimizer.peak_learning_rate(c) == pytest.approx(lr, rel=1e-12)
  assert round(c.optim.warmup_epochs * optimizer.steps_per_epoch(c)) == round(
      0.025 * epochs * batches_per_epoch)
  assert [(s, batch_mix.real_count(batch, a, c.dataset.real_repeats))
          for s, a in alpha_schedule.phases(c)] == list(phases)
  assert (c.train.loss, c.train.beta, c.threat.norm, c.threat.eps) == ('trades', 5.0, 'linf',
                                                                      8 / 255)
  assert (c.generated.label_smoothing, c.generated.smooth_real_labels) == (0.1, True)
  assert (c.optim.ema_decay, c.optim.weight_decay, c.optim.momentum) == (0.995, 5e-4, 0.9)
  assert (c.model.bn_group_size, c.dataset.real_repeats, c.dataset.holdout) == (0, 1, 1024)
  assert (c.pipeline.generator, c.pipeline.sampler, c.pipeline.sampler_steps) == (
      'edm', 'heun', 20)

"""Configs: every preset loads and validates; bad values and unknown keys fail clearly."""
import glob
import importlib
import os
import subprocess
import sys

import pytest

from configs import base
from data import datasets
from trainer import config_validation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_PRESETS = sorted(os.path.basename(p)[:-3]
                     for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                     if not p.endswith(('__init__.py', 'base.py')))
# Generator training (trainer.ddpm_train) has a config of its own; the rest extend base.py.
DDPM_PRESETS = [p for p in ALL_PRESETS if p.startswith('ddpm_')]
PRESETS = [p for p in ALL_PRESETS if p not in DDPM_PRESETS]


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
  from trainer import ddpm_train  # pylint: disable=g-import-not-at-top
  preset = importlib.import_module(f'configs.{name}').get_config()
  assert set(_flat(preset)) == set(_flat(importlib.import_module(
      f'configs.{DDPM_PRESETS[0]}').get_config()))  # the DDPM presets share one set of keys
  assert ddpm_train.unet_config(preset).image_shape[-1] in (1, 3)
  assert ddpm_train.noise_schedule(preset).num_timesteps == 1000


@pytest.mark.parametrize('name', DDPM_PRESETS)
def test_ddpm_presets_draw_a_sample_grid_every_few_log_periods(name):
  from trainer import ddpm_train  # pylint: disable=g-import-not-at-top
  preset = importlib.import_module(f'configs.{name}').get_config()
  t = preset.train
  assert t.eval_every_steps > 0 and t.eval_every_steps % t.log_every_steps == 0
  assert t.num_steps // t.eval_every_steps >= 5   # a run shows its progress, not one end grid
  ddpm_train.check_grid_config(preset, ddpm_train.unet_config(preset).num_class_embeds)


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
    ('pipeline.ddpm_preset', 'ddpm_digitz', "ddpm_digitz': must name a DDPM preset in configs/"),
    ('pipeline.ddpm_preset', 'demo', "pipeline.ddpm_preset='demo'"),  # a method preset
    ('pipeline.ddpm_preset', 'configs/ddpm_digits.py', 'by its module name'),
    ('pipeline.ddpm_steps', -1, 'pipeline.ddpm_steps=-1'),
])
def test_bad_values_are_named(key, value, message):
  c = base.get_config()
  c.generated.path = 'x/manifest.json'
  section, leaf = key.split('.')
  c[section][leaf] = value
  with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
    config_validation.validate(c, device_count=8, process_count=1)


def test_generated_mix_without_shards_is_rejected():
  c = base.get_config()
  with pytest.raises(ValueError, match='no shard manifest'):
    config_validation.validate(c, device_count=1, process_count=1)


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

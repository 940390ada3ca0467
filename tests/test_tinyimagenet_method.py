"""The paper's TinyImageNet route at toy size: a small random-weight class-conditional ADM (scale-
shift norm, resnet up/down, learned variance, ImageNet's 1,000 class embeddings) restricted to a
fake tiny-imagenet-200's classes, sampled with the learned-variance ancestral sampler on
guided-diffusion's respaced steps into PNG shards labelled by the generator (no classifier,
footnote 12), then TRADES and the evaluation, through `trainer.method` from a relative workdir."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import fake_datasets as fake
import test_readme
from data import real
from data.records import shards
from models.diffusion import checkpoint
from models.diffusion import unet
from models.interop import guided_diffusion

pytestmark = pytest.mark.integration  # the integration tier (pytest.ini)

ADM = dict(image_size=64, num_channels=32, num_res_blocks=1, attention_resolutions='32',
           channel_mult='1,1', class_cond=True, num_classes=1000, num_head_channels=16,
           use_scale_shift_norm=True, resblock_updown=True, use_new_attention_order=True,
           learn_sigma=True, noise_schedule='cosine')
TOY = ['--config.dataset.name=tiny_imagenet', '--config.dataset.path=tiny-imagenet-200',
       '--config.model.name=wrn-10-1', '--config.dataset.holdout=8',
       '--config.dataset.test_size=8', '--config.train.batch_size=16',
       '--config.train.epoch_size=32', '--config.train.num_epochs=1',
       '--config.train.attack_steps=1', '--config.eval.every_steps=1000',
       '--config.eval.pgd_steps=1', '--config.eval.batch_size=8', '--config.eval.attacks=pgd-2',
       '--config.pipeline.eval_examples=8', '--config.loader.prefetch=0',
       '--config.pipeline.generator=ddpm', '--config.pipeline.generator_checkpoint=adm',
       '--config.pipeline.labels=generator', '--config.pipeline.classes=dataset',
       '--config.pipeline.sampler=ddpm', '--config.pipeline.sampler_steps=3',
       '--config.pipeline.sampler_spacing=guided', '--config.pipeline.shard_encoding=png',
       '--config.pipeline.num_generated=16', '--config.pipeline.num_shards=2',
       '--config.pipeline.sample_batch_size=8', '--config.generated.alpha=0.5']


def _method(cwd, *overrides):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             PYTHONPATH=test_readme.ROOT)
  return subprocess.run(
      [sys.executable, '-m', 'trainer.method',
       f'--config={os.path.join(test_readme.ROOT, "configs", "demo.py")}', '--workdir=runs/t',
       *TOY, *overrides], cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)


def test_an_adm_restricted_to_tinyimagenets_classes_feeds_trades(tmp_path):
  root = fake.tiny_imagenet(str(tmp_path), classes=4, per_class=8, val=8)
  cfg = guided_diffusion.unet_config(ADM)
  assert cfg.resnet_time_scale_shift == 'scale_shift' and cfg.out_channels == 6
  params = unet.init_params(unet.UNet(cfg), jax.random.PRNGKey(0))
  checkpoint.save(str(tmp_path / 'adm'), cfg, guided_diffusion.schedule(ADM), params,
                  name='tiny-adm')
  proc = _method(tmp_path)
  assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
  assert "classifier   skipped: the generator's own classes are the labels" in proc.stdout
  assert 'data metrics skipped' in proc.stdout
  assert 'tiny-adm: class-conditional (1000 classes) DDPM' in proc.stdout

  workdir = tmp_path / 'runs' / 't'
  manifest = shards.load_manifest(str(workdir / 'generated' / 'ddpm.json'))
  class_map = list(real.info({'name': 'tiny_imagenet', 'path': root}).class_map)
  assert manifest['metadata']['generator_classes'] == class_map
  assert manifest['label_counts'] == [4, 4, 4, 4] and manifest['num_classes'] == 4
  assert manifest['image_encoding'] == 'png'
  assert manifest['metadata']['sampler_options'] == {'spacing': 'guided'}
  batch = next(shards.read_examples(str(workdir / 'generated' / 'ddpm.json'), batch_size=16))
  assert batch['image'].shape == (16, 64, 64, 3) and batch['image'].dtype == np.uint8
  assert not (workdir / 'classifier').exists()

  evaluation = json.loads((workdir / 'robust' / 'eval.json').read_text())
  assert evaluation['num_examples'] == 8
  report = (workdir / 'report.md').read_text()
  assert "The generator's own classes label the generated data" in report
  assert 'none (the generator\'s labels)' in proc.stdout

  again = _method(tmp_path)   # every stage done: nothing reruns, nothing refused
  assert again.returncode == 0, (again.stdout[-3000:], again.stderr[-3000:])
  assert again.stdout.count('done before') == 4, again.stdout

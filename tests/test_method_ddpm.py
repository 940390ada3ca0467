"""The whole method with a diffusion generator: a tiny, untrained digits UNet in our checkpoint
format, sampled with DPM-Solver++(2M) straight into pseudo-labelled shards, then TRADES and the
evaluation, from a temporary working directory with a relative workdir."""
import json
import os
import subprocess
import sys

import jax
import pytest

import test_readme
from data.records import shards
from models.diffusion import checkpoint
from models.diffusion import schedule
from models.diffusion import unet


@pytest.mark.slow
def test_method_runs_with_a_ddpm_generator(tmp_path):
  cfg = unet.digits_config()
  params = unet.init_params(unet.UNet(cfg), jax.random.PRNGKey(0))
  checkpoint.save(str(tmp_path / 'ddpm'), cfg, schedule.ho_linear(), params, name='tiny-ddpm')
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             PYTHONPATH=test_readme.ROOT)
  proc = subprocess.run(
      [sys.executable, '-m', 'trainer.method',
       f'--config={os.path.join(test_readme.ROOT, "configs", "demo.py")}', '--workdir=runs/d',
       *test_readme.TOY, '--config.pipeline.generator=ddpm',
       '--config.pipeline.generator_checkpoint=ddpm', '--config.pipeline.sampler_steps=3',
       '--config.pipeline.sample_batch_size=200'],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)
  assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
  workdir = tmp_path / 'runs' / 'd'
  manifest = shards.load_manifest(str(workdir / 'generated' / 'ddpm.json'))
  assert manifest['generator'] == 'tiny-ddpm' and max(manifest['label_counts']) <= 40
  assert manifest['metadata']['sampler'] == 'dpm++2m' and manifest['metadata']['steps'] == 3
  assert 'tiny-ddpm: unconditional DDPM' in proc.stdout
  evaluation = json.loads((workdir / 'robust' / 'eval.json').read_text())
  assert evaluation['num_examples'] == 32
  assert '  generator               ddpm\n' in proc.stdout  # the closing report, relative path

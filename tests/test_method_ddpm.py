"""The whole method with a diffusion generator: a tiny, untrained digits UNet in our checkpoint
format, sampled with DPM-Solver++(2M) straight into pseudo-labelled shards, then TRADES and the
evaluation, from a temporary working directory with a relative workdir; and a DDPM the method
trains itself (pipeline.generator_checkpoint=''), skipped when the method runs again."""
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import test_readme
from configs import ddpm_digits
from configs import demo
from data.generation import frechet
from data.generation import metrics
from data.records import shards
from models.diffusion import checkpoint
from models.diffusion import schedule
from models.diffusion import unet
from trainer.diffusion import generator
from trainer.pipeline import console as console_lib
from trainer.pipeline import stages as method
from trainer.pipeline import report

pytestmark = pytest.mark.integration  # the integration tier (pytest.ini)


def _method(tmp_path, *overrides):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             PYTHONPATH=test_readme.ROOT)
  return subprocess.run(
      [sys.executable, '-m', 'trainer.method',
       f'--config={os.path.join(test_readme.ROOT, "configs", "demo.py")}', '--workdir=runs/d',
       *test_readme.TOY, '--config.pipeline.generator=ddpm', '--config.pipeline.sampler_steps=3',
       '--config.pipeline.sample_batch_size=200', *overrides],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1500)


def test_method_runs_with_a_ddpm_generator(tmp_path):
  cfg = unet.digits_config()
  params = unet.init_params(unet.UNet(cfg), jax.random.PRNGKey(0))
  checkpoint.save(str(tmp_path / 'ddpm'), cfg, schedule.ho_linear(), params, name='tiny-ddpm')
  proc = _method(tmp_path, '--config.pipeline.generator_checkpoint=ddpm')
  assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
  workdir = tmp_path / 'runs' / 'd'
  manifest = shards.load_manifest(str(workdir / 'generated' / 'ddpm.json'))
  assert manifest['generator'] == 'tiny-ddpm' and max(manifest['label_counts']) <= 40
  assert manifest['metadata']['sampler'] == 'dpm++2m' and manifest['metadata']['steps'] == 3
  assert 'tiny-ddpm: unconditional DDPM' in proc.stdout
  evaluation = json.loads((workdir / 'robust' / 'eval.json').read_text())
  assert evaluation['num_examples'] == 32
  assert '  generator               ddpm\n' in proc.stdout  # the closing report, relative path


def test_the_ddpm_trains_on_the_methods_data_and_seed():
  """The preset's UNet and schedule, the method's dataset, held-out head and seed: the DDPM never
  sees the images that select the robust checkpoint."""
  c = demo.get_config()
  c.dataset.holdout, c.seed, c.dataset.data_dir = 77, 3, 'data/here'
  d = method.generator_config(c)
  preset = ddpm_digits.get_config()
  assert (d.dataset.name, d.dataset.holdout, d.seed, d.dataset.data_dir) == (
      'digits', 77, 3, 'data/here')
  assert d.train.num_steps == preset.train.num_steps and d.unet == preset.unet
  c.pipeline.generator_steps = 12
  assert method.generator_config(c).train.num_steps == 12


def test_a_preempted_ddpm_stops_the_method(tmp_path, monkeypatch):
  calls = []
  def preempted(config, workdir, progress_name=None):
    del progress_name
    calls.append((config.train.num_steps, workdir))
    return {'history': [], 'step': 2, 'finished': False}
  monkeypatch.setattr(generator, 'train', preempted)
  c = demo.get_config()
  c.pipeline.generator, c.pipeline.generator_steps = 'ddpm', 5
  lines = []
  with pytest.raises(method.Stopped, match='generator'):
    method.stage_generator(c, str(tmp_path), console_lib.Console(lines.append))
  assert calls == [(5, str(tmp_path / 'generator'))]
  assert lines == [f'[2/6] generator    training a DDPM (ddpm_digits: 5 steps of 128) → '
                   f'{report.shown(str(tmp_path / "generator" / "generator"))}']


def test_the_method_trains_its_ddpm_and_skips_it_when_run_again(tmp_path):
  proc = _method(tmp_path, '--config.pipeline.generator_steps=4')
  assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
  workdir = tmp_path / 'runs' / 'd'
  run = workdir / 'generator'
  assert ('[2/6] generator    training a DDPM (ddpm_digits: 4 steps of 128) → '
          'runs/d/generator/generator\n') in proc.stdout
  ddpm = json.loads((run / 'config.json').read_text())
  assert (ddpm['dataset']['holdout'], ddpm['seed'], ddpm['train']['num_steps']) == (32, 0, 4)
  assert 'ddpm-digits: class-conditional (10 classes) DDPM' in proc.stdout
  manifest = shards.load_manifest(str(workdir / 'generated' / 'ddpm.json'))
  assert manifest['generator'] == 'ddpm-digits'
  assert manifest['metadata']['generator_checkpoint'] == str(run / 'generator')
  data = json.loads((workdir / 'generated' / 'data_metrics.json').read_text())
  assert data['classifier_fd_label'] == 'classifier-feature FD (not Inception FID)'
  assert data['classifier_fd'] > 0 and data['classifier_fd_real'] > 0
  assert data['classifier_fd_real_sets'] == f"held-out 32 vs test {data['num_per_set']:.0f}"
  scalars = report.read_scalars(str(workdir / 'generated'))
  assert math.isclose(scalars['data/classifier_fd'][0][1], data['classifier_fd'], rel_tol=1e-6)
  assert {f'data/{k}' for k in ('c_train', 'c_test', 'c_self', 'v_train', 'v_test')} <= set(
      scalars)
  assert 'classifier-feature FD (not Inception FID)' in (workdir / 'report.md').read_text()
  assert (workdir / 'generator_curves.png').exists()

  params = run / 'generator' / 'params.safetensors'
  written = params.stat().st_mtime_ns
  again = _method(tmp_path, '--config.pipeline.generator_steps=4')
  assert again.returncode == 0, (again.stdout[-3000:], again.stderr[-3000:])
  assert '[2/6] generator    done before → runs/d/generator/generator  4 steps, final loss ' in (
      again.stdout)
  assert params.stat().st_mtime_ns == written and 'training a DDPM' not in again.stdout


def test_the_fd_uses_the_sets_algorithm_1_draws():
  """The data-metrics stage draws its class-balanced sets once for Algorithm 1 and the Fréchet
  distance: the same numbers as metrics.data_metrics, and the distance of generated to test."""
  rng = np.random.default_rng(0)
  sizes = {'train': 900, 'test': 400, 'generated': 700}
  images = {k: rng.integers(0, 256, (n, 8, 8, 1)).astype(np.uint8) for k, n in sizes.items()}
  labels = {k: rng.integers(0, 10, n) for k, n in sizes.items()}
  feature_fn = lambda x: np.asarray(x, np.float32).reshape(len(x), -1) / 255.0
  feats = method._balanced_features(feature_fn, images, labels, 300, 10, seed=5)
  assert metrics.metrics_from_features(feats['train'], feats['test'], feats['generated']) == (
      metrics.data_metrics(images, labels, feature_fn, 10, 300, seed=5))
  fd = method._classifier_fd(feats, feats['train'][:50])
  assert fd['classifier_fd'] == frechet.frechet_distance(feats['generated'], feats['test'])
  assert fd['classifier_fd_real'] == frechet.frechet_distance(feats['train'][:50], feats['test'])
  assert (fd['classifier_fd_sets'], fd['classifier_fd_real_sets']) == (
      'generated 300 vs test 300', 'held-out 50 vs test 300')

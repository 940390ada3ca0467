"""The whole method in one command, end to end on digits at toy sizes, and its resumption."""
import json
import os
import subprocess
import sys

import pytest

from data.records import shards

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = ['--config.model.name=wrn-10-1', '--config.pipeline.classifier_model=wrn-10-1',
       '--config.dataset.holdout=32', '--config.dataset.test_size=64',
       '--config.train.batch_size=32', '--config.train.epoch_size=128',
       '--config.train.num_epochs=1', '--config.pipeline.classifier_epochs=2',
       '--config.train.attack_steps=2', '--config.eval.every_steps=4',
       '--config.eval.pgd_steps=2', '--config.eval.batch_size=32',
       '--config.pipeline.num_generated=600', '--config.pipeline.num_shards=2',
       '--config.pipeline.top_k=40', '--config.pipeline.metrics_samples=100',
       '--config.pipeline.eval_examples=32', '--config.eval.attacks=pgd-5',
       '--config.loader.prefetch=0']


def _run(workdir):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  return subprocess.run([sys.executable, '-m', 'trainer.method', '--config=configs/demo.py',
                         f'--workdir={workdir}', *TOY],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)


@pytest.mark.slow
def test_pipeline_runs_end_to_end_and_resumes(tmp_path):
  workdir = tmp_path / 'method'
  proc = _run(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  manifest = shards.load_manifest(str(workdir / 'generated' / 'gaussian.json'))
  counts = manifest['label_counts']
  assert sum(counts) == manifest['count'] and max(counts) <= 40  # top-K per class
  metrics = json.loads((workdir / 'generated' / 'data_metrics.json').read_text())
  assert 0.0 <= metrics['complementarity'] <= 1.0 and 0.0 <= metrics['coverage'] <= 1.0
  assert (workdir / 'generated' / 'samples.png').stat().st_size > 0
  assert (workdir / 'classifier' / 'done.json').exists()
  assert json.loads((workdir / 'robust' / 'done.json').read_text())['step'] == 4
  assert any((workdir / 'robust' / 'best').iterdir())
  evaluation = json.loads((workdir / 'robust' / 'eval.json').read_text())
  assert evaluation['num_examples'] == 32
  cascade = evaluation['cascades']['pgd-5']
  assert list(cascade['stage_accuracy']) == ['pgd-5']
  assert 0.0 <= cascade['robust_accuracy'] <= evaluation['clean_accuracy'] <= 1.0
  # The closing report names each stage's output and the headline numbers.
  assert f"clean {100 * evaluation['clean_accuracy']:.2f}%" in proc.stdout
  assert str(workdir / 'generated' / 'gaussian.json') in proc.stdout
  assert f"complementarity {metrics['complementarity']:.3f}" in proc.stdout

  # A second start finds every stage's output and redoes nothing.
  before = {p: p.stat().st_mtime_ns for p in workdir.rglob('*.json')}
  proc = _run(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert {p: p.stat().st_mtime_ns for p in workdir.rglob('*.json')} == before

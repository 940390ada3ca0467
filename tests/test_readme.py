"""The README's main-job command, run as written on a fresh clone, and the method it runs.

The command is read from the README itself (the first block under "## The two commands"), run in
a `git clone` of this repository with its default relative workdir (runs/demo), at toy sizes
through overrides after `--` (the same script, defaults and path handling). The clone shares this
checkout's virtual environment (a link to .venv), which holds the same lock the script installs.
"""
import json
import os
import re
import subprocess

import pytest

import trainer_runs
from data.records import shards

pytestmark = pytest.mark.integration  # the integration tier (pytest.ini)

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


def readme_main_command():
  text = open(os.path.join(ROOT, 'README.md')).read()
  section = text.split('## The two commands', 1)[1]
  return re.search(r'```bash\n(.+?)\n```', section, re.S).group(1).strip()


@pytest.fixture(scope='module')
def clone(tmp_path_factory):
  path = tmp_path_factory.mktemp('fresh') / 'clone'
  subprocess.run(['git', 'clone', '-q', ROOT, str(path)], check=True)
  os.symlink(os.path.join(ROOT, '.venv'), path / '.venv')
  return path


def _run_main_command(clone):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  env.pop('PYTHONPATH', None)
  command = readme_main_command() + ' -- ' + ' '.join(TOY)
  return subprocess.run(['bash', '-c', command], cwd=clone, env=env, capture_output=True,
                        text=True, timeout=1500)


def test_the_readme_names_the_local_runner():
  assert readme_main_command() == 'bash launch/local.sh'


def test_main_command_on_a_fresh_clone_runs_the_method_and_resumes(clone):
  proc = _run_main_command(clone)
  assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
  workdir = clone / 'runs' / 'demo'
  manifest = shards.load_manifest(str(workdir / 'generated' / 'gaussian.json'))
  counts = manifest['label_counts']
  assert sum(counts) == manifest['count'] and max(counts) <= 40  # top-K per class
  data = json.loads((workdir / 'generated' / 'data_metrics.json').read_text())
  assert abs(data['c_train'] + data['c_test'] + data['c_self'] - 1) < 1e-9
  assert 0 < data['v_train'] <= 1 and 0 < data['v_test'] <= 1
  assert (workdir / 'classifier' / 'done.json').exists()
  assert json.loads((workdir / 'robust' / 'done.json').read_text())['step'] == 4
  evaluation = json.loads((workdir / 'robust' / 'eval.json').read_text())
  assert evaluation['num_examples'] == 32
  cascade = evaluation['cascades']['pgd-5']
  assert list(cascade['stage_accuracy']) == ['pgd-5']
  assert 0.0 <= cascade['robust_accuracy'] <= evaluation['clean_accuracy'] <= 1.0

  # The console: a line per stage start and end, the closing report with relative paths, and
  # no library records (they are in the log).
  lines = proc.stdout.splitlines() + proc.stderr.splitlines()
  for i, stage in enumerate(('classifier', 'generator', 'samples', 'data metrics', 'robust',
                             'evaluation'), 1):
    assert sum(line.startswith(f'[{i}/6] {stage}') for line in lines) == 2, stage
  assert 'The method ran to the end:' in proc.stdout
  assert f"clean {100 * evaluation['clean_accuracy']:.2f}%" in proc.stdout
  assert 'runs/demo/generated/gaussian.json' in proc.stdout
  assert f"complementarity train/test/self {data['c_train']:.3f}" in proc.stdout
  assert not [line for line in lines if trainer_runs.INFO_RECORD.match(line)]
  assert any((workdir / 'logs').glob('*.INFO'))

  # The report to look at.
  report = (workdir / 'report.md').read_text()
  for png in ('generated/samples.png', 'classifier_curves.png', 'robust_curves.png'):
    assert f']({png})' in report and (workdir / png).stat().st_size > 0
  assert '| pgd-5 | clean |' in report and f'tensorboard --logdir {workdir}' in report

  # A second start finds every stage's output and redoes nothing.
  before = {p: p.stat().st_mtime_ns for p in workdir.rglob('*.json')}
  proc = _run_main_command(clone)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert {p: p.stat().st_mtime_ns for p in workdir.rglob('*.json')} == before
  assert sum('done before' in line for line in proc.stdout.splitlines()) == 6

  # A start with a setting the finished stages did not run with is refused in one line before
  # any work, and nothing is rewritten.
  command = readme_main_command() + ' -- ' + ' '.join(TOY + ['--config.train.beta=3'])
  proc = subprocess.run(['bash', '-c', command], cwd=clone, capture_output=True, text=True,
                        env=dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2'),
                        timeout=600)
  trainer_runs.one_line_error(proc, 'the robust stage', 'train.beta: 6.0 -> 3.0', '--redo=robust')
  assert {p: p.stat().st_mtime_ns for p in workdir.rglob('*.json')} == before

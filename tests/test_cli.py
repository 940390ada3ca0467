"""Every command from a temporary working directory with a relative workdir, and the errors a
newcomer meets: one line on the console (the traceback in the log), nothing saved lost."""
import os
import subprocess
import sys

import numpy as np
import pytest

import trainer_runs
from data.records import shards
from trainer import cli

pytestmark = pytest.mark.integration  # the integration tier (pytest.ini)

ROOT = trainer_runs.ROOT
CONFIG = os.path.join(ROOT, 'configs', 'demo.py')
TINY = [f'--config.{k}={v}' for k, v in trainer_runs.tiny_overrides(steps=2).items()]


def _run(cwd, module, *args):
  env = trainer_runs.env(2, os.path.join(cwd, 'jax-cache'))
  env['PYTHONPATH'] = ROOT
  return subprocess.run([sys.executable, '-m', module, *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=900)


def _one_line_error(proc, *fragments):
  """The process failed with exactly one console line, `error: …`, naming each fragment."""
  assert proc.returncode != 0
  lines = [l for l in (proc.stdout + proc.stderr).splitlines() if l.strip()]
  errors = [l for l in lines if l.startswith('error: ')]
  assert len(errors) == 1 and 'Traceback' not in proc.stderr, lines[-20:]
  for fragment in fragments:
    assert fragment in errors[0], errors[0]
  return errors[0]


def _snapshot(directory):
  return {p: os.stat(os.path.join(d, p)).st_mtime_ns
          for d, _, files in os.walk(directory) for p in files if 'logs' not in d}


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A two-step run made by `trainer.main` with the relative workdir runs/x."""
  cwd = str(tmp_path_factory.mktemp('cwd'))
  proc = _run(cwd, 'trainer.main', f'--config={CONFIG}', '--workdir=runs/x', *TINY)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return cwd, proc


def test_absolute_leaves_urls_alone():
  assert cli.absolute('runs/x') == os.path.join(os.getcwd(), 'runs', 'x')
  assert cli.absolute('gs://bucket/runs/x') == 'gs://bucket/runs/x'
  assert cli.absolute('') == ''


def test_main_with_a_relative_workdir(trained):
  cwd, proc = trained
  workdir = os.path.join(cwd, 'runs', 'x')
  assert os.path.exists(os.path.join(workdir, 'done.json'))
  assert os.listdir(os.path.join(workdir, 'checkpoints'))
  assert 'finished at step 2' in proc.stdout
  assert not [l for l in proc.stderr.splitlines() if trainer_runs.INFO_RECORD.match(l)]
  assert any(n.endswith('.INFO') for n in os.listdir(os.path.join(workdir, 'logs')))


def test_evaluate_with_a_relative_workdir(trained):
  cwd, _ = trained
  proc = _run(cwd, 'trainer.evaluate', '--workdir=runs/x', '--attacks=pgd-1',
              '--num_examples=16')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert os.path.exists(os.path.join(cwd, 'runs', 'x', 'eval.json'))


def test_import_and_pseudolabel_with_relative_paths(trained):
  cwd, _ = trained
  images = np.random.default_rng(0).integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)
  np.savez(os.path.join(cwd, 'set.npz'), image=images, label=np.zeros(40, np.int64))
  proc = _run(cwd, 'trainer.import_npz', '--npz=set.npz', '--out=gen/imported', '--shards=2')
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = _run(cwd, 'trainer.pseudolabel', '--classifier=runs/x', '--source=gen/imported.json',
              '--out=gen/labelled', '--shards=2', '--batch_size=16')
  assert proc.returncode == 0, proc.stderr[-3000:]
  manifest = shards.load_manifest(os.path.join(cwd, 'gen', 'labelled.json'))
  assert manifest['count'] == 40


def test_unknown_config_key(trained):
  cwd, _ = trained
  before = _snapshot(os.path.join(cwd, 'runs', 'x'))
  proc = _run(cwd, 'trainer.main', f'--config={CONFIG}', '--workdir=runs/x', *TINY,
              '--config.train.nope=1')
  _one_line_error(proc, '--config.train.nope=1', "'nope'", 'configs/base.py')
  assert _snapshot(os.path.join(cwd, 'runs', 'x')) == before


def test_workdir_of_another_config(trained):
  cwd, _ = trained
  before = _snapshot(os.path.join(cwd, 'runs', 'x'))
  proc = _run(cwd, 'trainer.main', f'--config={CONFIG}', '--workdir=runs/x', *TINY,
              '--config.train.beta=3.0')
  _one_line_error(proc, 'holds a run of a different config', 'train.beta: 6.0 -> 3.0',
                  'traceback in')
  assert _snapshot(os.path.join(cwd, 'runs', 'x')) == before


def test_workdir_that_cannot_be_written(tmp_path):
  (tmp_path / 'a-file').write_text('')
  proc = _run(str(tmp_path), 'trainer.main', f'--config={CONFIG}', '--workdir=a-file/run',
              *TINY)
  _one_line_error(proc, 'cannot write to workdir', 'a-file/run')


def test_gs_workdir_without_credentials(tmp_path):
  proc = _run(str(tmp_path), 'trainer.main', f'--config={CONFIG}',
              '--workdir=gs://no-such-bucket/run', *TINY)
  if cli.has_gcs_credentials():
    pytest.skip('this machine has Google Cloud credentials')
  _one_line_error(proc, 'gs://no-such-bucket/run', 'no Google Cloud credentials',
                  'gcloud auth application-default login')


def test_tfds_dataset_not_prepared(tmp_path):
  empty = tmp_path / 'tfds'
  empty.mkdir()
  proc = _run(str(tmp_path), 'trainer.main', f'--config={CONFIG}', '--workdir=runs/c', *TINY,
              '--config.dataset.name=cifar10', f'--config.dataset.data_dir={empty}',
              '--config.dataset.pad=4')
  _one_line_error(proc, "'cifar10' is not prepared", 'download_and_prepare()',
                  '--config.dataset.data_dir=DIR')


def _client_error(name, module):
  return type(name, (Exception,), {'__module__': module})('failed')


@pytest.mark.parametrize('name, module, hint', [
    ('AbortedError', 'tensorflow.python.framework.errors_impl', cli.NETWORK_HINT),
    ('UnavailableError', 'tensorflow.python.framework.errors_impl', cli.NETWORK_HINT),
    ('ServiceUnavailable', 'google.api_core.exceptions', cli.NETWORK_HINT),
    ('ConnectionError', 'requests.exceptions', cli.NETWORK_HINT),
    ('PermissionDeniedError', 'tensorflow.python.framework.errors_impl',
     cli.GCS_CREDENTIALS_HINT),
    ('Forbidden', 'google.api_core.exceptions', cli.GCS_CREDENTIALS_HINT),
    ('AbortedError', 'mypackage', None),  # a name alone is not a storage client's error
    ('KeyError', 'builtins', None)])
def test_storage_errors_get_a_hint(name, module, hint):
  assert cli.storage_hint(_client_error(name, module)) == hint

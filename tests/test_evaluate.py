"""The evaluation command on a tiny digits model saved as the workdir's best checkpoint."""
import glob
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from configs import demo
from models import registry
from trainer import evaluate as evaluate_command
from trainer.evaluation import evaluate
from trainer.harness import checkpoints
from trainer.harness import workdir as workdir_lib
import trainer_runs as runs
from trainer_runs import read_scalars
from trainer.attacks.autoattack import AutoAttackResult
from trainer.attacks.autoattack import zero_gradient_share

pytestmark = pytest.mark.integration  # the integration tier (pytest.ini)


def tiny_config():
  c = demo.get_config()
  c.model.name = 'wrn-10-1'
  c.eval.batch_size = 32
  c.eval.attacks = 'pgd-5'
  return c


def random_variables(model, seed=0):
  """He-initialised kernels, unit BatchNorm, non-zero head; built without compiling `init`."""
  rng = np.random.default_rng(seed)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)),
                                               train=False))
  def fill(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      fan_in = int(np.prod(leaf.shape[:-1]))
      return (rng.normal(size=leaf.shape) * np.sqrt(2.0 / fan_in)).astype(leaf.dtype)
    value = 1.0 if name in ('scale', 'var') else 0.0
    return np.full(leaf.shape, value, leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, abstract)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A workdir holding a random wrn-10-1 as its best checkpoint, saved at step 7."""
  workdir = str(tmp_path_factory.mktemp('eval'))
  config = tiny_config()
  variables = random_variables(registry.from_config(config))
  workdir_lib.save_config(workdir, config)
  ckpt = checkpoints.Checkpoints(workdir, config, with_data=True, keeps_best=True)
  ckpt.maybe_save_best(7, variables, {'holdout/robust_accuracy': 0.5}, 'holdout/robust_accuracy')
  ckpt.close()
  return workdir


def test_evaluate_writes_table_json_and_scalars(workdir, capsys):
  config = tiny_config()
  summary = evaluate.evaluate(config, workdir, num_examples=40, attacks='pgd-5, pgd-5-ce')
  table = capsys.readouterr().out
  assert 'pgd-5-ce' in table and 'worst case over the cascades' in table

  stored = json.loads(open(os.path.join(workdir, 'eval.json')).read())
  assert stored['step'] == 7 and stored['num_examples'] == 40
  assert stored['eps'] == config.threat.eps
  assert list(stored['cascades']) == ['pgd-5', 'pgd-5-ce']
  clean = stored['clean_accuracy']
  for c in stored['cascades'].values():
    (acc,) = c['stage_accuracy'].values()
    assert acc <= clean and c['robust_accuracy'] == acc
    assert sum(c['broken'].values()) == round((clean - acc) * 40)
  assert stored['worst_case_robust_accuracy'] <= min(
      c['robust_accuracy'] for c in stored['cascades'].values())
  assert stored['gradient_masking']['zero_gradient_share'] == {'ce': 0.0, 'dlr': 0.0}
  assert stored['gradient_masking']['flags'] == []
  assert summary == stored

  scalars = read_scalars(workdir)
  assert scalars['eval/clean_accuracy'][7] == pytest.approx(clean)
  assert scalars['eval/pgd-5/pgd-5'][7] == pytest.approx(stored['cascades']['pgd-5']
                                                          ['robust_accuracy'])


def test_config_overrides_from_the_command_line(workdir):
  # trainer.evaluate defines its other flags at import; --config comes from the workdir at parse
  # time. Another command imported into this process may hold a --config: set it aside.
  other = flags.FLAGS['config'] if 'config' in flags.FLAGS else None
  if other is not None:
    delattr(flags.FLAGS, 'config')
  try:
    evaluate_command._parse_flags(['evaluate', f'--workdir={workdir}', '--config.threat.eps=0.05',
                                   '--num_examples=8'])
    assert flags.FLAGS.config.threat.eps == 0.05
    assert flags.FLAGS.config.model.name == 'wrn-10-1'
    assert flags.FLAGS.num_examples == 8
  finally:
    flags.FLAGS.unparse_flags()
    delattr(flags.FLAGS, 'config')
    if other is not None:
      flags.FLAGS['config'] = other
  config = tiny_config()
  config.model.name = 'wrn-16-1'
  with pytest.raises(ValueError, match='cannot be overridden'):
    evaluate.evaluate(config, workdir, num_examples=8)


def test_masking_report_flags_zero_gradients_and_square_only_points():
  n = 1000
  robust = np.ones(n, bool)
  by = np.full(n, '', '<U16')
  by[:5] = 'square'  # Square broke 5 points the white-box stages missed
  robust[:5] = False
  standard = AutoAttackResult(robust, {'apgd-ce': 1.0, 'square': 0.995}, 1.0, None, by, {})
  report = evaluate._masking_report({'standard': standard}, {'ce': 0.0, 'dlr': 0.01}, n)
  assert report['square_only_points'] == 5
  assert len(report['flags']) == 2
  # The same points also broken by APGD in another cascade are no longer suspect.
  by2 = np.where(np.arange(n) < 5, 'apgd-ce', '')
  aamt = AutoAttackResult(~(np.arange(n) < 5), {'apgd-ce': 0.995}, 1.0, None, by2, {})
  report = evaluate._masking_report({'standard': standard, 'aa+mt': aamt}, {'ce': 0.0}, n)
  assert report['square_only_points'] == 0 and report['flags'] == []


def test_zero_gradient_share_of_a_constant_model():
  x = np.random.default_rng(0).uniform(size=(16, 2, 2, 1)).astype(np.float32)
  y = np.zeros(16, np.int32)
  constant = lambda z: jnp.zeros((z.shape[0], 3)).at[:, 0].set(1.0) + 0.0 * jnp.sum(z)
  assert zero_gradient_share(constant, x, y, batch_size=8) == 1.0


# --- Resume and hosts ----------------------------------------------------------------------------

EVAL_ARGS = ('--num_examples=40', '--attacks=pgd-5,apgd-ce', '--config.eval.chunk_size=8')


def _points(workdir):
  with np.load(os.path.join(workdir, 'eval_points.npz')) as data:
    return {k: data[k] for k in data.files}


@pytest.fixture(scope='module')
def uninterrupted(workdir, tmp_path_factory):
  """eval_points.npz of the evaluation of EVAL_ARGS, run whole in one process."""
  copy = str(tmp_path_factory.mktemp('whole') / 'w')
  shutil.copytree(workdir, copy)
  proc = runs.run_command(os.path.dirname(copy), 'trainer.evaluate', '--workdir=w', *EVAL_ARGS)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return _points(copy), json.loads(open(os.path.join(copy, 'eval.json')).read())


def test_a_killed_evaluation_resumes_to_the_same_points(workdir, uninterrupted, tmp_path):
  copy = str(tmp_path / 'w')
  shutil.copytree(workdir, copy)
  command = [sys.executable, '-m', 'trainer.evaluate', '--workdir=w', *EVAL_ARGS]
  environ = runs.env(2, tmp_path / 'cache')
  with open(tmp_path / 'log', 'wb') as log:
    proc = subprocess.Popen(command, cwd=str(tmp_path), env=dict(environ, PYTHONPATH=runs.ROOT),
                            stdout=log, stderr=subprocess.STDOUT)
  proc.log_path = str(tmp_path / 'log')
  done = lambda: glob.glob(os.path.join(copy, 'eval_chunks', 'apgd-ce', '0000[0-9].npz'))  # noqa: E731
  runs.wait_until(lambda: len(done()) >= 2, proc, timeout=600, poll=0.01)
  runs.signal_and_wait(proc, runs.SIGKILL)          # mid-cascade: some chunks done, not all
  assert len(done()) < 5
  rerun = runs.run_command(str(tmp_path), 'trainer.evaluate', '--workdir=w', *EVAL_ARGS)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  want, summary = uninterrupted
  got = _points(copy)
  assert sorted(got) == sorted(want)
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  stored = json.loads(open(os.path.join(copy, 'eval.json')).read())
  assert stored['cascades'].keys() == summary['cascades'].keys()
  for name, cascade in summary['cascades'].items():
    assert stored['cascades'][name]['stage_accuracy'] == cascade['stage_accuracy']


def test_two_processes_evaluate_like_one(workdir, uninterrupted, tmp_path):
  """Two processes (4 CPU devices each) split the 5 chunks of each cascade: the same points."""
  copy = str(tmp_path / 'w')
  shutil.copytree(workdir, copy)
  port = runs.free_port()
  environ = dict(runs.env(4, tmp_path / 'cache'), PYTHONPATH=runs.ROOT)
  procs = []
  for i in range(2):
    log = open(tmp_path / f'log{i}', 'wb')
    procs.append(subprocess.Popen(
        [sys.executable, '-m', 'trainer.evaluate', '--workdir=w', *EVAL_ARGS, '--distributed',
         f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}'],
        cwd=str(tmp_path), env=environ, stdout=log, stderr=subprocess.STDOUT))
    procs[-1].log_path = str(tmp_path / f'log{i}')
    log.close()
  for proc in procs:
    assert runs.finish(proc) == 0, runs.log_tail(proc)
  want, _ = uninterrupted
  got = _points(copy)
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)

"""The evaluation command on a tiny digits model saved as the workdir's best checkpoint."""
import json
import os

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
  names = ('config', 'workdir', 'checkpoint', 'num_examples', 'attacks', 'batch_size')
  # Entry points that other test modules import (trainer.sample) define some of these names at
  # import: set them aside so that evaluate's own flags are the ones defined and parsed.
  others = {name: flags.FLAGS[name] for name in names if name in flags.FLAGS}
  for name in others:
    delattr(flags.FLAGS, name)
  try:
    evaluate_command._parse_flags(['evaluate', f'--workdir={workdir}', '--config.threat.eps=0.05',
                           '--num_examples=8'])
    assert flags.FLAGS.config.threat.eps == 0.05
    assert flags.FLAGS.config.model.name == 'wrn-10-1'
    assert flags.FLAGS.num_examples == 8
  finally:
    flags.FLAGS.unparse_flags()
    for name in names:
      delattr(flags.FLAGS, name)
    for name, flag in others.items():
      flags.FLAGS[name] = flag
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

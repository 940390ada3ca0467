"""The method refuses a rerun whose config would change a finished stage, names the stage and the
keys, and redoes exactly the stages asked for (trainer/pipeline/stage_records.py)."""
import json

import pytest

from configs import demo
from trainer.pipeline import stage_records
from trainer.pipeline import stages
from trainer.pipeline.console import STAGES


def _finished_workdir(tmp_path, config, upto):
  """A workdir whose stages up to `upto` are finished (marker files) and recorded."""
  for name, relative in (('classifier', 'classifier/done.json'),
                         ('generator', 'generator/gaussian_fit.npz'),
                         ('samples', 'generated/gaussian.json'),
                         ('data metrics', 'generated/data_metrics.json'),
                         ('robust', 'robust/done.json'), ('evaluation', 'robust/eval.json')):
    path = tmp_path / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{}')
    stage_records.record(str(tmp_path), name,
                         stage_records.settings(config, stages.classifier_config))
    if name == upto:
      return


def _check(tmp_path, config):
  stage_records.check(str(tmp_path), stage_records.settings(config, stages.classifier_config),
                      lambda stage: stages.finished(config, str(tmp_path), stage))


@pytest.mark.parametrize('key,value,stage', [
    ('train.beta', 3.0, 'robust'),                    # the classifier never reads β
    ('generated.alpha', 0.5, 'robust'),
    ('pipeline.num_generated', 3000, 'samples'),
    ('pipeline.classifier_epochs', 5, 'classifier'),  # the first stage it changes is named
    ('pipeline.eval_examples', 50, 'evaluation'),
])
def test_a_changed_key_stops_the_first_finished_stage_it_changes(tmp_path, key, value, stage):
  config = demo.get_config()
  _finished_workdir(tmp_path, config, upto='evaluation')
  _check(tmp_path, config)                          # the same config: nothing to say
  section, leaf = key.split('.')
  config[section][leaf] = value
  with pytest.raises(stage_records.StaleStageError,
                     match=rf'the {stage} stage .* ran with other settings \({key}: .* -> '
                           rf'{value!r}\); pass --redo={stage_records.slug(stage)}'):
    _check(tmp_path, config)


def test_unfinished_stages_and_places_are_not_settings(tmp_path):
  config = demo.get_config()
  _finished_workdir(tmp_path, config, upto='classifier')
  config.train.beta = 1.0                  # robust has not run: nothing to refuse
  config.dataset.data_dir = '/elsewhere'   # where the data lives changes no result
  config.mesh.data = 4
  _check(tmp_path, config)


def test_redo_deletes_the_stage_and_those_after_it(tmp_path):
  config = demo.get_config()
  _finished_workdir(tmp_path, config, upto='evaluation')
  stage_records.redo(str(tmp_path), stage_records.stage_named('data_metrics'))
  assert (tmp_path / 'generated' / 'gaussian.json').exists()   # samples are kept
  assert not (tmp_path / 'generated' / 'data_metrics.json').exists()
  assert not (tmp_path / 'robust').exists()
  recorded = json.loads((tmp_path / 'stages.json').read_text())
  assert sorted(recorded) == sorted(STAGES[:3])
  config.train.beta = 3.0                  # a changed β is fine once robust is redone
  _check(tmp_path, config)


def test_a_workdir_without_records_is_checked_against_its_training_configs(tmp_path):
  config = demo.get_config()
  (tmp_path / 'robust').mkdir()
  (tmp_path / 'robust' / 'done.json').write_text('{}')
  ran = demo.get_config()
  ran.generated.path = 'generated/gaussian.json'      # filled in by the method: not a setting
  (tmp_path / 'robust' / 'config.json').write_text(ran.to_json_best_effort())
  _check(tmp_path, config)
  ran.train.beta = 3.0
  (tmp_path / 'robust' / 'config.json').write_text(ran.to_json_best_effort())
  with pytest.raises(stage_records.StaleStageError, match=r'the robust stage .*train.beta: 3.0'):
    _check(tmp_path, config)


def test_an_unknown_stage_to_redo_is_named():
  with pytest.raises(ValueError, match="--redo='robustness': not a stage; use one of "
                                       'classifier, generator, samples, data_metrics'):
    stage_records.stage_named('robustness')

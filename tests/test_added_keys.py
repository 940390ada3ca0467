"""Keys added after runs were made (dataset.train_fraction, pipeline.class_balanced): a workdir
written before them resumes where its old meaning is the config's value, and is refused, naming
the key, where it is not (trainer/harness/workdir.py ADDED)."""
import json

import pytest

from configs import demo
from trainer.harness import workdir as workdir_lib
from trainer.pipeline import stage_records
from trainer.pipeline import stages


def _old_record(tmp_path, config):
  """stages.json and markers of a finished classifier and samples stage, written without the
  added keys, as a workdir from before them has."""
  current = stage_records.settings(config, stages.classifier_config)
  for stage in current:
    for key in workdir_lib.ADDED:
      current[stage].pop(key, None)
  (tmp_path / 'stages.json').write_text(json.dumps(
      {'classifier': current['classifier'], 'samples': current['samples']}))
  for marker in ('classifier/done.json', 'generated/gaussian.json'):
    (tmp_path / marker).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / marker).write_text('{}')


def _check(tmp_path, config):
  stage_records.check(str(tmp_path), stage_records.settings(config, stages.classifier_config),
                      lambda stage: stages.finished(config, str(tmp_path), stage))


def test_a_stage_recorded_before_the_keys_keeps_its_old_meaning(tmp_path):
  config = demo.get_config()
  config.pipeline.class_balanced = False
  _old_record(tmp_path, config)
  _check(tmp_path, config)                       # whole split, every sample: what it ran
  config.pipeline.class_balanced = True          # the new default is another set
  with pytest.raises(stage_records.StaleStageError,
                     match=r'the samples stage .*pipeline.class_balanced: False -> True'):
    _check(tmp_path, config)
  config.dataset.train_fraction = 0.5
  with pytest.raises(stage_records.StaleStageError,
                     match=r'the classifier stage .*dataset.train_fraction: 1.0 -> 0.5'):
    _check(tmp_path, config)


def test_a_training_run_from_before_the_fraction_resumes_on_the_whole_split(tmp_path):
  config = demo.get_config()
  old = json.loads(config.to_json_best_effort())
  del old['dataset']['train_fraction']
  (tmp_path / 'config.json').write_text(json.dumps(old))
  workdir_lib.check_same_run(str(tmp_path), config)
  config.dataset.train_fraction = 0.25
  with pytest.raises(workdir_lib.ConfigMismatchError,
                     match=r'dataset.train_fraction: 1.0 -> 0.25'):
    workdir_lib.check_same_run(str(tmp_path), config)

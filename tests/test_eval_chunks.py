"""The evaluation's chunks (trainer/evaluation/chunks.py): computed once, resumed, discarded when
their plan changes, merged into one cascade result."""
import numpy as np
import pytest

from trainer.attacks.autoattack import AutoAttackResult
from trainer.evaluation import chunks

PLAN = {'checkpoint': 'best', 'step': 7, 'eps': 0.1, 'seed': 3}


def _fake_attack(calls):
  """A cascade whose result depends on the chunk's points and seed alone."""
  def compute(a, b, seed):
    calls.append((a, b))
    rng = np.random.default_rng(seed)
    robust = rng.random(b - a) < 0.5
    result = AutoAttackResult(
        robust=robust, stage_accuracy={'apgd-ce': float(np.mean(robust))}, clean_accuracy=1.0,
        x_adv=None, broken_by=np.where(robust, '', 'apgd-ce').astype('<U32'),
        stage_seconds={'apgd-ce': 0.5})
    return chunks.result_arrays(result)
  return compute


def test_chunks_are_computed_once_and_merge_into_one_result(tmp_path):
  calls = []
  parts = chunks.run(str(tmp_path), 'aa+mt', PLAN, 10, 4, _fake_attack(calls))
  assert calls == [(0, 4), (4, 8), (8, 10)]
  merged = chunks.merge(parts)
  assert merged.robust.shape == (10,) and merged.clean_accuracy == 1.0
  assert merged.stage_accuracy['apgd-ce'] == pytest.approx(np.mean(merged.robust))
  assert merged.stage_seconds['apgd-ce'] == pytest.approx(1.5)
  assert set(merged.broken_by[~merged.robust]) == {'apgd-ce'}

  again = []
  (tmp_path / 'eval_chunks' / 'aa+mt' / '00001.npz').unlink()   # as a kill during chunk 1
  resumed = chunks.merge(chunks.run(str(tmp_path), 'aa+mt', PLAN, 10, 4, _fake_attack(again)))
  assert again == [(4, 8)]
  np.testing.assert_array_equal(resumed.robust, merged.robust)


def test_chunks_of_another_plan_are_discarded(tmp_path):
  calls = []
  chunks.run(str(tmp_path), 'standard', PLAN, 8, 4, _fake_attack(calls))
  chunks.run(str(tmp_path), 'standard', dict(PLAN, eps=0.2), 8, 4, _fake_attack(calls))
  chunks.run(str(tmp_path), 'standard', PLAN, 8, 2, _fake_attack(calls))   # other chunk size
  assert calls == [(0, 4), (4, 8)] * 2 + [(0, 2), (2, 4), (4, 6), (6, 8)]


def test_a_chunks_seed_depends_on_its_index_alone():
  assert chunks.chunk_seed(0, 3) == chunks.chunk_seed(0, 3)
  assert len({chunks.chunk_seed(0, i) for i in range(100)}) == 100
  assert chunks.bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]

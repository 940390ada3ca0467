"""The prepared accelerator run (benchmarks/accelerator.py): what it measures, and that an
overrun or a missing accelerator is reported rather than lost. Its --quick run on a CPU takes
about two minutes, so it is not run here (BENCHMARKS.md, "Train step", has its figures)."""
import os
import subprocess
import sys

import pytest

import trainer_runs
from benchmarks import accelerator

ROOT = trainer_runs.ROOT


def test_the_measurements_are_the_issue_sizes_and_share_the_budget():
  steps = dict((name, args) for name, _, args in accelerator.measurements(989, quick=False))
  assert set(steps) == {'step', 'autoattack', 'sampling', 'edm_sampling', 'sampling_adm64'}
  assert '--models=wrn-28-10,wrn-70-16' in steps['step']
  assert {'--per_device_batch=128', '--dtype=bfloat16', '--peak_tflops=989'} <= set(steps['step'])
  assert {'--accelerator_only', '--model=wrn-28-10', '--n=1000'} <= set(steps['autoattack'])
  assert {'--models=cifar10', '--dtype=bfloat16'} <= set(steps['sampling'])
  assert {'--models=', '--edm_models=cifar10', '--dtype=bfloat16'} <= set(steps['edm_sampling'])
  assert {'--adm_models=adm64', '--dtype=bfloat16', '--adm_evals=5'} <= set(steps['sampling_adm64'])
  for quick in (False, True):
    assert abs(sum(s for _, s, _ in accelerator.measurements(None, quick)) - 1.0) < 1e-9


def test_an_overrun_is_cut_at_its_timeout_and_its_log_kept(tmp_path):
  rc, seconds = accelerator.run('slow', ['timeit', '-n1', '-r1', 'import time; time.sleep(60)'],
                                timeout=3, out=str(tmp_path))
  assert rc == 'timed out' and seconds < 30
  assert (tmp_path / 'slow.log').exists()


@pytest.mark.integration
def test_the_accelerator_only_attack_run_refuses_a_cpu():
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, '-m', 'benchmarks.attacks', '--accelerator_only'],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert 'JAX sees no accelerator' in proc.stderr

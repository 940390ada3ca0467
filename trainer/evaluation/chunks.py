"""The evaluation in chunks: each chunk of test points is attacked on its own, with a seed of its
own, and its per-point result is saved in the workdir as it finishes.

    WORKDIR/eval_chunks/<cascade>/plan.json      what the chunks were computed for
    WORKDIR/eval_chunks/<cascade>/<i>.npz        chunk i: robust, broken_by, stage counts, seconds

Because a chunk's result depends on its points and its index alone, a killed evaluation resumes
at the first unfinished chunk and ends with the per-point result of an uninterrupted one, and
several hosts can split the chunks (host p takes chunks p, p + P, …) with the result of one
process. A plan of other settings (another checkpoint, ε, seed, …) is discarded, not mixed in.
"""
import io
import json

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from data import files
from trainer.attacks.autoattack import AutoAttackResult

DIRECTORY = 'eval_chunks'


def bounds(n, chunk_size):
  """[(start, stop)] of the chunks of n points."""
  return [(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]


def chunk_seed(seed, index):
  """Chunk i's seed: a stream of its own, whatever the others."""
  return int(np.random.SeedSequence([seed, index]).generate_state(1)[0] >> 1)


def _directory(workdir, name, plan):
  """The chunk folder of `name`, emptied when it holds chunks of another plan."""
  directory = epath.Path(workdir, DIRECTORY, name.replace('/', '_'))
  plan_path = directory / 'plan.json'
  if jax.process_index() == 0:
    if plan_path.exists() and json.loads(plan_path.read_text()) != plan:
      logging.info('Discarding the chunks in %s: computed for %s', directory,
                   plan_path.read_text())
      directory.rmtree()
    if not plan_path.exists():
      directory.mkdir(parents=True, exist_ok=True)
      plan_path.write_text(json.dumps(plan))
  _barrier(f'plan {name}')
  return directory


def _barrier(name):
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'trainer.evaluation.chunks {name}')


def _save(path, arrays):
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  files.write_atomic(path, buffer.getvalue())  # a kill mid-write leaves no chunk


def _load(path):
  with path.open('rb') as f:
    with np.load(io.BytesIO(f.read()), allow_pickle=False) as data:
      return {k: data[k] for k in data.files}


def run(workdir, name, plan, n, chunk_size, compute):
  """`compute(start, stop, seed) -> {name: array}` for every chunk not yet on disk, this host's
  share of them; returns every chunk's arrays, in order, once all hosts are done."""
  directory = _directory(workdir, name, dict(plan, chunk_size=chunk_size, num_examples=n))
  chunks = bounds(n, chunk_size)
  for index in range(jax.process_index(), len(chunks), jax.process_count()):
    path = directory / f'{index:05d}.npz'
    if not path.exists():
      _save(path, compute(*chunks[index], chunk_seed(plan['seed'], index)))
  _barrier(f'done {name}')
  return [_load(directory / f'{index:05d}.npz') for index in range(len(chunks))]


def result_arrays(result: AutoAttackResult):
  """What a chunk keeps of a cascade's result (not the adversarial images)."""
  names = list(result.stage_accuracy)
  n = len(result.robust)
  return {'robust': result.robust, 'broken_by': result.broken_by.astype('U32'),
          'stages': np.asarray(names, 'U64'),
          'stage_robust': np.asarray([round(result.stage_accuracy[s] * n) for s in names]),
          'stage_seconds': np.asarray([result.stage_seconds[s] for s in names]),
          'clean': np.asarray(round(result.clean_accuracy * n))}


def merge(parts) -> AutoAttackResult:
  """One cascade's result over all chunks (no adversarial images: x_adv is None)."""
  n = sum(len(p['robust']) for p in parts)
  names = [str(s) for s in parts[0]['stages']]
  counts = np.sum([p['stage_robust'] for p in parts], axis=0)
  seconds = np.sum([p['stage_seconds'] for p in parts], axis=0)
  return AutoAttackResult(
      robust=np.concatenate([p['robust'] for p in parts]),
      stage_accuracy={s: float(c) / n for s, c in zip(names, counts)},
      clean_accuracy=float(sum(int(p['clean']) for p in parts)) / n, x_adv=None,
      broken_by=np.concatenate([p['broken_by'] for p in parts]),
      stage_seconds={s: float(t) for s, t in zip(names, seconds)})

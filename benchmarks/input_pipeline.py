"""Input pipeline benchmark: our Grain pipeline, tf.data, an in-RAM npz loader.

  python -m benchmarks.input_pipeline [--sizes 100000,1000000]
      [--workdir /tmp/input_pipeline_bench] [--batches 150]
  python -m benchmarks.input_pipeline --stream_only \
      --sizes 100000,1000000,10000000 --workdir workdirs/input_pipeline_bench

All three loaders do the same work per global batch of 1024 CIFAR-sized images:
307 real images (alpha = 0.3, from a 50K in-RAM set) and 717 generated ones,
pad-4 random crop + flip, conversion to float32 in [0, 1]:

  grain    data.input.pipeline.make_train_iterator: TFRecord shards read with CRC
           checks, 16 files interleaved, window shuffle of 10K, in-process
           (worker_count=0, one prefetch thread); and with 2 worker processes
  tf.data  the same shards: interleave(TFRecordDataset) + shuffle(10K) +
           parse_example + batched crop/flip gathers, AUTOTUNE parallelism
  npz      what the PyTorch peers do: np.load the whole npz, concatenate with
           the real set, then per batch gather + the same numpy augmentation

Throughput is reported as wall-clock images/s and as images per CPU-second
(user + system time of the process and its workers), i.e. per fully used core;
the second is the fair number on a shared machine. Peak RSS is measured in a
fresh process per case: ours streams all N generated samples once (start-up =
first batch, run = the rest); the npz loader loads N samples (start-up) and
runs 20 batches (run); the importer converts the npz to shards (run). Each case
runs in its own subprocess so imports (TensorFlow: ~0.7 GB) do not leak.

`--stream_only` skips the loader comparison and the npz copies (10M images as
an npz would be another 31 GB, and would not fit in RAM): for each size it
writes the shards directly with `ShardWriter` (images cycle through a pool of
50K random ones; ids are unique) and streams all N generated records once
through the training pipeline on its uint8 host-to-device path: batches leave
the pipeline as uint8, go to the device with `jax.device_put` and become float32
in [0, 1] there (a jitted convert, waited for). It reports peak RSS against N
and images per CPU-second of that path. The sizes are run one after the other
and each set is deleted before the next is written, so the disk holds one set
(10M: about 31 GB) at a time.

Benchmark data (random pixels) is written under --workdir and deleted at the
end unless --keep is given.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import zipfile

import numpy as np

SHAPE = (32, 32, 3)
BATCH = 1024
ALPHA = 0.3
REAL_N = 50_000
SHARD_RECORDS = 10_000     # ~31 MB per shard, as a real set would be cut


# ------------------------------------------------------------------------------
# Data.
# ------------------------------------------------------------------------------


def write_npz(path: str, n: int, seed: int = 0, chunk: int = 50_000) -> None:
  """An uncompressed npz of n random images, written in chunks (low memory)."""
  rng = np.random.default_rng(seed)
  with zipfile.ZipFile(path, 'w', allowZip64=True) as zf:
    with zf.open('image.npy', 'w', force_zip64=True) as f:
      np.lib.format.write_array_header_2_0(f, {
          'descr': '|u1', 'fortran_order': False, 'shape': (n, *SHAPE)})
      for start in range(0, n, chunk):
        f.write(rng.integers(0, 256, (min(chunk, n - start), *SHAPE),
                             dtype=np.uint8).tobytes())
    with zf.open('label.npy', 'w', force_zip64=True) as f:
      np.lib.format.write_array(f, rng.integers(0, 10, n).astype(np.int64))


def real_set():
  rng = np.random.default_rng(1)
  return (rng.integers(0, 256, (REAL_N, *SHAPE), dtype=np.uint8),
          rng.integers(0, 10, REAL_N), np.arange(REAL_N))


def _config(manifest: str, workers: int = 0):
  from configs import base  # pylint: disable=g-import-not-at-top
  c = base.get_config()
  c.generated.path = manifest
  c.generated.alpha = ALPHA
  c.train.batch_size = BATCH
  c.loader.worker_count = workers
  c.loader.prefetch = 2
  return c


# ------------------------------------------------------------------------------
# Loaders (each run inside a child process).
# ------------------------------------------------------------------------------


def grain_batches(manifest: str, workers: int):
  from data.input import pipeline  # pylint: disable=g-import-not-at-top
  images, labels, ids = real_set()
  it = pipeline.make_train_iterator(_config(manifest, workers), images, labels,
                                    ids, process_index=0, process_count=1)
  while True:
    batch = next(it)
    yield batch, int(batch['is_generated'].sum())


def grain_device_batches(manifest: str):
  """The pipeline's uint8 batches, moved to the device and converted there."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from data.input import pipeline  # pylint: disable=g-import-not-at-top
  images, labels, ids = real_set()
  it = pipeline.make_train_iterator(_config(manifest), images, labels, ids,
                                    process_index=0, process_count=1)
  device = jax.devices()[0]
  to_float = jax.jit(lambda x: x.astype(jnp.float32) / 255.0)
  while True:
    batch = next(it)
    if batch['image'].dtype != np.uint8:
      raise TypeError(f'expected uint8 batches, got {batch["image"].dtype}')
    to_float(jax.device_put(batch['image'], device)).block_until_ready()
    yield batch, int(batch['is_generated'].sum())


def tfdata_batches(manifest: str):
  """The same work with tf.data; batches as numpy dicts."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from data.records import shards  # pylint: disable=g-import-not-at-top
  files = shards.shard_paths(manifest)
  real_images, real_labels, _ = real_set()
  num_real = int(np.floor(ALPHA * BATCH + 0.5))
  num_gen = BATCH - num_real
  spec = {'image': tf.io.FixedLenFeature([], tf.string),
          'label': tf.io.FixedLenFeature([], tf.int64),
          'id': tf.io.FixedLenFeature([], tf.int64)}

  def parse(serialized):
    f = tf.io.parse_example(serialized, spec)
    image = tf.reshape(tf.io.decode_raw(f['image'], tf.uint8), (-1, *SHAPE))
    return image, tf.cast(f['label'], tf.int32), f['id']

  autotune = tf.data.AUTOTUNE
  gen = (tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=0)
         .repeat()
         .interleave(tf.data.TFRecordDataset, cycle_length=16,
                     num_parallel_calls=autotune)
         .shuffle(10_000, seed=0).batch(num_gen, drop_remainder=True)
         .map(parse, num_parallel_calls=autotune))
  real_x = tf.constant(real_images)
  real_y = tf.constant(real_labels.astype(np.int32))
  real = (tf.data.Dataset.range(REAL_N).shuffle(REAL_N, seed=0).repeat()
          .batch(num_real, drop_remainder=True)
          .map(lambda i: (tf.gather(real_x, i), tf.gather(real_y, i), i)))

  def mix(r, g):
    images = tf.concat([r[0], g[0]], 0)
    n, h, w, pad = BATCH, SHAPE[0], SHAPE[1], 4
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    dy = tf.random.uniform([n, 1], 0, 2 * pad + 1, tf.int32)
    dx = tf.random.uniform([n, 1], 0, 2 * pad + 1, tf.int32)
    flip = tf.random.uniform([n, 1]) < 0.5
    cols = tf.where(flip, tf.range(w - 1, -1, -1), tf.range(w)) + dx
    rows = tf.range(h) + dy
    crops = tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), cols,
                      axis=2, batch_dims=1)
    return {'image': tf.cast(crops, tf.float32) / 255.0,
            'label': tf.concat([r[1], g[1]], 0),
            'is_generated': tf.range(n) >= num_real,
            'id': tf.concat([r[2], g[2]], 0)}

  ds = (tf.data.Dataset.zip((real, gen)).map(mix, num_parallel_calls=autotune)
        .prefetch(2))
  for batch in ds.as_numpy_iterator():
    yield batch, num_gen


def npz_batches(npz: str, n: int | None = None):
  """The peers' loader: everything in RAM, real and generated concatenated."""
  from data.input import augment  # pylint: disable=g-import-not-at-top
  real_images, real_labels, _ = real_set()
  with np.load(npz) as data:
    gen_images, gen_labels = data['image'], data['label']
  if n is not None:
    gen_images, gen_labels = gen_images[:n], gen_labels[:n]
  images = np.concatenate([real_images, gen_images])
  labels = np.concatenate([real_labels, gen_labels])
  del gen_images, gen_labels
  num_real = int(np.floor(ALPHA * BATCH + 0.5))
  rng = np.random.default_rng(0)
  while True:
    index = np.concatenate([
        rng.integers(0, REAL_N, num_real),
        REAL_N + rng.integers(0, len(images) - REAL_N, BATCH - num_real)])
    batch_images = augment.pad_crop_flip(images[index], rng)
    yield {'image': np.divide(batch_images, np.float32(255),
                              dtype=np.float32),
           'label': labels[index].astype(np.int32),
           'is_generated': np.arange(BATCH) >= num_real,
           'id': index}, BATCH - num_real


def _cpu_seconds() -> float:
  import psutil  # pylint: disable=g-import-not-at-top
  me = psutil.Process()
  total = sum(me.cpu_times()[:2])
  for child in me.children(recursive=True):
    try:
      total += sum(child.cpu_times()[:2])
    except psutil.Error:
      pass
  return total


def child(args) -> dict:
  """Runs one case; returns throughput over the measured batches and RSS."""
  if args.loader == 'grain':
    batches = grain_batches(args.manifest, args.workers)
  elif args.loader == 'grain_device':
    batches = grain_device_batches(args.manifest)
  elif args.loader == 'tfdata':
    batches = tfdata_batches(args.manifest)
  else:
    batches = npz_batches(args.npz, args.samples or None)
  generated, begin = 0, time.perf_counter()
  for _ in range(args.warmup):
    generated += next(batches)[1]
  startup = time.perf_counter() - begin
  if not args.stream:
    generated = 0
  start, cpu0 = time.perf_counter(), _cpu_seconds()
  images = count = 0
  while (count < args.batches if not args.stream
         else generated < args.samples):
    _, gen = next(batches)
    count += 1
    images += BATCH
    generated += gen
  wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu0
  return {'images': images, 'generated': generated, 'wall': wall, 'cpu': cpu,
          'startup': startup,
          'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def write_child(args) -> dict:
  """Writes N records straight into shards (no npz) from a 50K-image pool."""
  from data.records import shard_writer  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  pool = rng.integers(0, 256, (REAL_N, *SHAPE), dtype=np.uint8)
  pool_labels = rng.integers(0, 10, REAL_N)
  n, chunk, start = args.samples, 10_000, time.perf_counter()
  with shard_writer.ShardWriter(args.manifest, num_shards=args.workers,
                                total=n, image_shape=SHAPE, num_classes=10,
                                source='benchmark', seed=0) as writer:
    for lo in range(0, n, chunk):
      k = min(chunk, n - lo)
      off = (lo // chunk * 7919) % (REAL_N - chunk + 1)
      writer.write_batch(pool[off:off + k], pool_labels[off:off + k])
  return {'wall': time.perf_counter() - start, 'images': n, 'startup': 0.0,
          'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def import_child(args) -> dict:
  from data.generation import import_npz  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  import_npz.import_npz(args.npz, args.manifest, num_shards=args.workers,
                        progress=False)
  return {'wall': time.perf_counter() - start, 'images': args.samples,
          'startup': 0.0,
          'rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# ------------------------------------------------------------------------------
# Orchestration.
# ------------------------------------------------------------------------------


def run_child(*flags: str) -> dict:
  cmd = [sys.executable, '-m', 'benchmarks.input_pipeline', '--child', *flags]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                        env=env, cwd=os.path.dirname(os.path.dirname(
                            os.path.abspath(__file__))))
  if proc.returncode != 0:
    raise RuntimeError(f'{" ".join(flags)} failed:\n{proc.stderr[-4000:]}')
  return json.loads(proc.stdout.strip().splitlines()[-1])


def make_set(workdir: str, n: int) -> tuple[str, str, dict]:
  """npz + shards (via the importer, which is measured too)."""
  npz = os.path.join(workdir, f'gen{n}.npz')
  write_npz(npz, n)
  prefix = os.path.join(workdir, f'shards{n}', 'gen')
  imported = run_child('--mode', 'import', '--npz', npz, '--manifest', prefix,
                       '--workers', str(max(16, n // SHARD_RECORDS)),
                       '--samples', str(n))
  return npz, prefix + '.json', imported


def main(argv=None) -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--sizes', default='100000,1000000')
  parser.add_argument('--workdir', default='/tmp/input_pipeline_bench')
  parser.add_argument('--batches', type=int, default=150)
  parser.add_argument('--keep', action='store_true')
  parser.add_argument('--stream_only', action='store_true',
                      help='shards written directly; RSS and rate of the '
                      'uint8 host-to-device path per size (see docstring)')
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--mode', default='run', help=argparse.SUPPRESS)
  parser.add_argument('--loader', default='grain', help=argparse.SUPPRESS)
  parser.add_argument('--manifest', default='', help=argparse.SUPPRESS)
  parser.add_argument('--npz', default='', help=argparse.SUPPRESS)
  parser.add_argument('--workers', type=int, default=0,
                      help=argparse.SUPPRESS)
  parser.add_argument('--samples', type=int, default=0,
                      help=argparse.SUPPRESS)
  parser.add_argument('--stream', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--warmup', type=int, default=5, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    modes = {'import': import_child, 'write': write_child, 'run': child}
    result = modes[args.mode](args)
    print(json.dumps(result))
    return
  sizes = [int(s) for s in args.sizes.split(',')]
  os.makedirs(args.workdir, exist_ok=True)
  try:
    (stream_report if args.stream_only else report)(args, sizes)
  finally:
    if not args.keep:
      shutil.rmtree(args.workdir, ignore_errors=True)


def report(args, sizes) -> None:
  t0 = time.time()
  rows, rss_rows = [], []
  npz, manifest, imported = make_set(args.workdir, sizes[0])
  rss_rows.append(('import_npz (bounded memory)', sizes[0], imported))
  cases = [('grain, in-process', ['--loader', 'grain']),
           ('grain, 2 worker processes', ['--loader', 'grain', '--workers',
                                          '2']),
           ('tf.data, AUTOTUNE', ['--loader', 'tfdata']),
           ('npz in RAM (peers)', ['--loader', 'npz'])]
  for name, flags in cases:
    result = run_child('--manifest', manifest, '--npz', npz, '--batches',
                       str(args.batches), *flags)
    rows.append((name, result))
  for n in sizes:
    if n != sizes[0]:
      shutil.rmtree(os.path.dirname(manifest), ignore_errors=True)
      os.remove(npz)
      npz, manifest, imported = make_set(args.workdir, n)
      rss_rows.append(('import_npz (bounded memory)', n, imported))
    stream = run_child('--loader', 'grain', '--manifest', manifest, '--stream',
                       '--samples', str(n), '--warmup', '1')
    rss_rows.append(('grain, streams all N once', n, stream))
    held = run_child('--loader', 'npz', '--npz', npz, '--samples', str(n),
                     '--batches', '20')
    rss_rows.append(('npz in RAM (peers)', n, held))
  print_tables(rows, rss_rows, time.time() - t0)


def stream_report(args, sizes) -> None:
  """Per size: write the shards, stream them once on the uint8 device path."""
  t0, rows = time.time(), []
  for n in sizes:
    prefix = os.path.join(args.workdir, f'shards{n}', 'gen')
    written = run_child('--mode', 'write', '--manifest', prefix, '--samples',
                        str(n), '--workers', str(max(16, n // SHARD_RECORDS)))
    stream = run_child('--loader', 'grain_device', '--manifest',
                       prefix + '.json', '--stream', '--samples', str(n),
                       '--warmup', '1')
    rows.append((n, written, stream))
    print(f'N={n:,}: written in {written["wall"]:.0f} s, streamed: '
          f'{json.dumps(stream)}', flush=True)
    shutil.rmtree(os.path.dirname(prefix), ignore_errors=True)
  print(f'\nStreaming every generated record once (global batch {BATCH}, '
        f'alpha {ALPHA}, 32x32x3) on the uint8 host-to-device path, '
        f'{os.cpu_count()} CPU cores (shared)\n')
  print('| N generated | shard write (s) | peak RSS (MB) | start-up (s) | '
        'stream (s) | img/s (wall) | img per CPU-second |')
  print('|---:|---:|---:|---:|---:|---:|---:|')
  for n, w, r in rows:
    print(f'| {n:,} | {w["wall"]:.0f} | {r["rss_mb"]:,.0f} | '
          f'{r["startup"]:.1f} | {r["wall"]:.0f} | '
          f'{r["images"] / r["wall"]:,.0f} | {r["images"] / r["cpu"]:,.0f} |')
  print(f'\ntotal benchmark time {time.time() - t0:.0f} s')


def print_tables(rows, rss_rows, elapsed) -> None:
  tf_rate = next(r['images'] / r['cpu'] for n, r in rows if 'tf.data' in n)
  print(f'\nThroughput: global batch {BATCH}, alpha {ALPHA}, 32x32x3, '
        f'{os.cpu_count()} CPU cores (shared), measured over '
        f'{rows[0][1]["images"]} images\n')
  print('| loader | img/s (wall) | img per CPU-second | vs tf.data (CPU) |')
  print('|---|---:|---:|---:|')
  for name, r in rows:
    rate, per_cpu = r['images'] / r['wall'], r['images'] / r['cpu']
    print(f'| {name} | {rate:,.0f} | {per_cpu:,.0f} | '
          f'{per_cpu / tf_rate:.2f}x |')
  print('\nPeak RSS (fresh process each; the loaders hold the 50K real set, '
        '150 MB)\n')
  print('| case | N generated | peak RSS (MB) | start-up (s) | run (s) |')
  print('|---|---:|---:|---:|---:|')
  for name, n, r in rss_rows:
    print(f'| {name} | {n:,} | {r["rss_mb"]:,.0f} | {r["startup"]:.1f} | '
          f'{r["wall"]:.1f} |')
  print(f'\ntotal benchmark time {elapsed:.0f} s')


if __name__ == '__main__':
  main()

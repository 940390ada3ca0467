"""Streamed real data: input rate at 64x64 and 224x224, and peak RSS against the set's size.

  python -m benchmarks.real_input [--sizes 10000,100000,1000000] [--workdir DIR] [--keep]

Real training images streamed by `data.input.pipeline` from encoded shards, as a path dataset's
packed copy (`data.datasets.packed`) or tfds's prepared ImageNet files are, in-process (one
prefetch thread), alpha = 1 (every row real), CRC checks, 16 files interleaved, window shuffle of
10K. Images are crops of scikit-learn's two sample photographs (427x640), so JPEG and PNG decode
photographs, not noise.

- RSS against N: N images of 64x64x3 (PNG, 10K distinct ones cycled, unique ids, 2,000 per shard)
  streamed once each (global batch 1024, pad-4 crop + flip), and, apart, 100K images of each
  set (the same stream length whatever N). A fresh process per case reports its peak RSS; held in
  RAM instead, the pixels alone would take N x 12,288 bytes.
- Rate at 64x64: the same path (PNG decode + pad-crop-flip) over 40 batches; and with JPEGs
  (quality 90), as TinyImageNet's packed copy holds them.
- Rate at 224x224: JPEGs (quality 90) of 300-500 x 300-500 pixels, ImageNet's typical sizes, each
  decoded and cropped Inception-style to 224x224 + flip (`dataset.crop = 'inception'`), global
  batch 256, over 20 batches; in-process and with 2 loader worker processes.

Throughput is images per CPU-second (user + system time of the process and its workers: the
per-core figure on a shared machine) and wall-clock images/s. The data (random crops, random
labels) is written under --workdir and deleted at the end unless --keep is given.
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

import numpy as np

POOL = 10_000          # distinct 64x64 images
JPEG_POOL = 500        # distinct 224-scale JPEGs
PER_SHARD = 2_000


def _photos():
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  return load_sample_images().images


def write_set(prefix: str, n: int, kind: str) -> str:
  """n records of `kind` ('png64', 'jpeg64' or 'jpeg224') cycling through a pool; returns the
  manifest."""
  from data import image_codec  # pylint: disable=g-import-not-at-top
  from data.records import shard_writer  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  photos = _photos()
  pool = []
  small = kind.endswith('64')
  for i in range(POOL if small else JPEG_POOL):
    photo = photos[i % 2]
    if small:
      y, x = rng.integers(0, photo.shape[0] - 64), rng.integers(0, photo.shape[1] - 64)
      crop = np.ascontiguousarray(photo[y:y + 64, x:x + 64])
      pool.append(image_codec.encode(crop, kind[:-2], quality=90))
    else:
      h, w = rng.integers(300, min(427, 500) + 1), rng.integers(300, 501)
      y, x = rng.integers(0, photo.shape[0] - h + 1), rng.integers(0, photo.shape[1] - w + 1)
      crop = np.ascontiguousarray(photo[y:y + h, x:x + w])
      pool.append(image_codec.encode(crop, 'jpeg', quality=90))
  shape = (64, 64, 3) if small else (0, 0, 3)
  num_shards = max(16, -(-n // PER_SHARD))
  with shard_writer.ShardWriter(prefix, num_shards=num_shards, total=n, image_shape=shape,
                                num_classes=200, source=kind, encoding='png') as writer:
    for begin in range(0, n, 10_000):
      ids = np.arange(begin, min(n, begin + 10_000))
      writer.write_encoded([pool[i % len(pool)] for i in ids], ids % 200, ids=ids)
  return writer.manifest_path


def _split(manifest: str, size: int):
  from data.datasets import packed  # pylint: disable=g-import-not-at-top
  from data.datasets import streamed  # pylint: disable=g-import-not-at-top
  from data.records import shards  # pylint: disable=g-import-not-at-top
  m = shards.load_manifest(manifest)
  stored = tuple(m['image_shape'])
  return streamed.StreamedSplit(
      name='benchmark', files=tuple(shards.shard_paths(manifest, m)),
      parser=packed.PackedParser(stored, m['num_classes'], m['image_encoding'], 0),
      size=m['count'], shape=(size, size, 3), stored_shape=stored,
      encoding=m['image_encoding'], num_classes=m['num_classes'])


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
  """Streams batches of one case; returns its throughput and peak RSS."""
  from configs import base  # pylint: disable=g-import-not-at-top
  from data.input import pipeline  # pylint: disable=g-import-not-at-top
  size = 64 if args.kind.endswith('64') else 224
  c = base.get_config()
  c.generated.alpha = 1.0
  c.train.batch_size = args.batch
  c.dataset.crop = 'pad' if size == 64 else 'inception'
  c.dataset.pad = 4 if size == 64 else 0
  c.loader.worker_count, c.loader.prefetch = args.workers, 2
  it = pipeline.make_train_iterator(c, _split(args.manifest, size), process_index=0,
                                    process_count=1)
  begin = time.perf_counter()
  first = next(it)
  assert first['image'].shape == (args.batch, size, size, 3), first['image'].shape
  startup = time.perf_counter() - begin
  start, cpu0 = time.perf_counter(), _cpu_seconds()
  batches = args.batches or -(-args.samples // args.batch) - 1
  for _ in range(batches):
    next(it)
  wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu0
  images = batches * args.batch
  it.close()
  own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
  return {'images': images, 'wall': wall, 'cpu': cpu, 'startup': startup, 'rss_mb': own,
          'worker_rss_mb': kids}


def run_child(*flags: str) -> dict:
  cmd = [sys.executable, '-m', 'benchmarks.real_input', '--child', *flags]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  if proc.returncode != 0:
    raise RuntimeError(f'{" ".join(flags)} failed:\n{proc.stderr[-4000:]}')
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--sizes', default='10000,100000,1000000')
  parser.add_argument('--workdir', default='workdirs/real_input_bench')
  parser.add_argument('--keep', action='store_true')
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--kind', default='png64', help=argparse.SUPPRESS)
  parser.add_argument('--manifest', default='', help=argparse.SUPPRESS)
  parser.add_argument('--batch', type=int, default=1024, help=argparse.SUPPRESS)
  parser.add_argument('--batches', type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument('--samples', type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument('--workers', type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    print(json.dumps(child(args)))
    return
  os.makedirs(args.workdir, exist_ok=True)
  try:
    report(args, [int(s) for s in args.sizes.split(',')])
  finally:
    if not args.keep:
      shutil.rmtree(args.workdir, ignore_errors=True)


def report(args, sizes) -> None:
  t0, rss_rows, rate_rows = time.time(), [], []
  for n in sizes:
    start = time.time()
    manifest = write_set(os.path.join(args.workdir, f'png64_{n}', 'real'), n, 'png64')
    written = time.time() - start
    r = run_child('--kind', 'png64', '--manifest', manifest, '--samples', str(n))
    same = run_child('--kind', 'png64', '--manifest', manifest, '--samples', '100000')
    rss_rows.append((n, written, r, same))
    print(f'N={n:,}: written in {written:.0f} s, streamed: {json.dumps(r)}, 100K images: '
          f'{json.dumps(same)}', flush=True)
    if n == sizes[0]:
      rate_rows.append(('64x64 PNG, pad-crop-flip, batch 1024, in-process',
                        run_child('--kind', 'png64', '--manifest', manifest, '--batches', '40')))
    shutil.rmtree(os.path.dirname(manifest), ignore_errors=True)
  manifest = write_set(os.path.join(args.workdir, 'jpeg64', 'real'), 20_000, 'jpeg64')
  rate_rows.append(('64x64 JPEG, pad-crop-flip, batch 1024, in-process',
                    run_child('--kind', 'jpeg64', '--manifest', manifest, '--batches', '40')))
  manifest = write_set(os.path.join(args.workdir, 'jpeg224', 'real'), 20_000, 'jpeg224')
  for workers in (0, 2):
    where = 'in-process' if not workers else f'{workers} worker processes'
    r = run_child('--kind', 'jpeg224', '--manifest', manifest, '--batch', '256',
                  '--batches', '20', '--workers', str(workers))
    rate_rows.append((f'224x224 from 300-500 px JPEGs, Inception crop + flip, batch 256, {where}',
                      r))
    print(f'jpeg224, {where}: {json.dumps(r)}', flush=True)
  print(f'\nStreamed real images, {os.cpu_count()} CPU cores (shared)\n')
  print('| N (64x64x3) | shard write (s) | peak RSS (MB), all N once | peak RSS (MB), 100K '
        'images | in RAM, pixels alone (MB) | start-up (s) | stream (s) | img per CPU-second |')
  print('|---:|---:|---:|---:|---:|---:|---:|---:|')
  for n, written, r, same in rss_rows:
    print(f'| {n:,} | {written:.0f} | {r["rss_mb"]:,.0f} | {same["rss_mb"]:,.0f} | '
          f'{n * 12288 / 2**20:,.0f} | {r["startup"]:.1f} | {r["wall"]:.0f} | '
          f'{r["images"] / r["cpu"]:,.0f} |')
  print('\n| case | img per CPU-second | img/s (wall) | peak RSS (MB), workers |')
  print('|---|---:|---:|---:|')
  for name, r in rate_rows:
    print(f'| {name} | {r["images"] / r["cpu"]:,.0f} | {r["images"] / r["wall"]:,.0f} | '
          f'{r["rss_mb"]:,.0f}, {r["worker_rss_mb"]:,.0f} |')
  print(f'\ntotal benchmark time {time.time() - t0:.0f} s')


if __name__ == '__main__':
  main()

"""Bytes that cross from the host to the devices per train step, measured on a real run.

  python benchmarks/host_to_device.py [--config=configs/demo.py] [--steps=3]

Runs `train_and_evaluate` for a few steps on the config (real data only) and records the bytes
of every array handed to `sharding.global_batch`, i.e. the per-step host-to-device transfer of
the batch; prints the table, with the same batch at CIFAR-10 size by arithmetic on the dtypes.
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import demo  # noqa: E402
from trainer import sharding  # noqa: E402
from trainer.robust import train  # noqa: E402


def measure(config, steps):
  seen = []
  original = sharding.global_batch

  def recording(mesh, local_batch):
    seen.append({k: (v.dtype.str, v.shape, v.nbytes) for k, v in local_batch.items()})
    return original(mesh, local_batch)

  sharding.global_batch = recording
  try:
    with tempfile.TemporaryDirectory() as workdir:
      train.train_and_evaluate(config, workdir)
  finally:
    sharding.global_batch = original
  return seen[-1], len(seen)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--steps', type=int, default=3)
  args = parser.parse_args()
  c = demo.get_config()
  c.generated.alpha, c.model.name, c.train.attack_steps = 1.0, 'wrn-10-1', 1
  c.train.epoch_size = c.train.batch_size * args.steps
  c.train.num_epochs, c.eval.every_steps, c.dataset.test_size = 1, 10 ** 9, 64
  fields, n = measure(c, args.steps)
  batch = c.train.batch_size
  print(f'{n} steps of {c.model.name} on digits, batch {batch}; per step, host to devices:')
  print(f"{'field':<14}{'dtype':<8}{'shape':<20}{'bytes':>10}{'bytes/image':>13}"
        f"{'CIFAR-10 @1024':>16}")
  total = total_cifar = 0
  for name, (dtype, shape, nbytes) in fields.items():
    per_image = nbytes // batch
    # The same field for a 32x32x3 image at batch 1024: images scale with the pixels.
    per_cifar = per_image * (32 * 32 * 3) // (8 * 8 * 1) if name == 'image' else per_image
    total, total_cifar = total + nbytes, total_cifar + per_cifar * 1024
    print(f'{name:<14}{dtype:<8}{str(shape):<20}{nbytes:>10,}{per_image:>13,}'
          f'{per_cifar * 1024:>16,}')
  print(f"{'total':<42}{total:>10,}{total // batch:>13,}{total_cifar:>16,}")


if __name__ == '__main__':
  main()

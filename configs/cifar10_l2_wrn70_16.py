"""CIFAR-10, L2 ε = 128/255, WRN-70-16, 1M generated images at α = 0.3, 400 epochs.

Pass the shard set: --config.generated.path=gs://BUCKET/cifar10_ddpm_1m/manifest.json
"""
from configs import base


def get_config():
  c = base.reference_training(base.get_config())
  c.model.name = 'wrn-70-16'
  c.model.dtype = 'bfloat16'
  c.threat.norm = 'l2'
  c.threat.eps = 128 / 255
  # DeepMind's code has only L∞ attacks: its Adam selection attack (0.1 per pixel per step) would
  # land on the L2 ball's boundary at every step, so selection keeps the L2 PGD-40.
  c.eval.selection_attack = 'pgd'
  c.train.num_epochs = 400
  c.distributed = True
  return c

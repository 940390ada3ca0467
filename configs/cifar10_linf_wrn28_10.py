"""CIFAR-10, L∞ ε = 8/255, WRN-28-10, 1M generated (DDPM) images at α = 0.3, 400 epochs.

Pass the shard set: --config.generated.path=gs://BUCKET/cifar10_ddpm_1m/manifest.json
"""
from configs import base


def get_config():
  c = base.reference_training(base.get_config())
  c.model.name = 'wrn-28-10'
  c.train.num_epochs = 400
  return c

"""CIFAR-100, L∞ ε = 8/255, WRN-70-16, 1M generated images at α = 0.3, 400 epochs.

Pass the shard set: --config.generated.path=gs://BUCKET/cifar100_ddpm_1m/manifest.json
"""
from configs import base


def get_config():
  c = base.reference_training(base.get_config())
  c.dataset.name = 'cifar100'
  c.model.name = 'wrn-70-16'
  c.model.dtype = 'bfloat16'
  c.train.num_epochs = 400
  c.distributed = True
  return c

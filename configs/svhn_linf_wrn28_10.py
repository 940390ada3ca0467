"""SVHN, L∞ ε = 8/255, WRN-28-10, 1M generated images at α = 0.3, 400 epochs, no flips.

SVHN's training split has 73,257 images; epochs stay CIFAR-10-equivalent (50,000 images) so the
step count matches the CIFAR presets. Digits are not mirror-symmetric: flips are off.
Pass the shard set: --config.generated.path=gs://BUCKET/svhn_ddpm_1m/manifest.json
"""
from configs import base


def get_config():
  c = base.reference_training(base.get_config())
  c.dataset.name = 'svhn'
  c.dataset.flip = False
  c.model.name = 'wrn-28-10'
  c.train.num_epochs = 400
  return c

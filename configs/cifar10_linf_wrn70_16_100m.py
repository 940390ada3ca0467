"""The headline run: CIFAR-10, L∞ 8/255, WRN-70-16, 100M generated images, 2,000 epochs
(~98K steps).

Pass the shard set: --config.generated.path=gs://BUCKET/cifar10_ddpm_100m/manifest.json
On a pod slice the parameters fit replicated in bfloat16 compute; set --config.mesh.fsdp=N to
shard parameters, optimiser and EMA state when memory per chip is short.
"""
from configs import base


def get_config():
  c = base.reference_training(base.get_config())
  c.model.name = 'wrn-70-16'
  c.model.dtype = 'bfloat16'
  c.train.num_epochs = 2000
  c.eval.every_steps = 5000
  c.checkpoint.every_steps = 1000
  c.distributed = True
  c.generated.cycle_length = 64
  c.generated.shuffle_window = 50_000
  return c

"""The embedded default: TRADES on scikit-learn's 8×8 digits, offline, minutes on a laptop CPU.

ε = 0.1 of the pixel range suits 8×8 grey digits (8/255 would be far too weak to matter).
"""
from configs import base


def get_config():
  c = base.get_config()
  c.dataset.name = 'digits'
  c.dataset.holdout = 128
  c.dataset.pad = 1
  c.dataset.flip = False       # a mirrored digit is a different (or no) digit
  c.generated.alpha = 1.0      # the one-command pipeline (trainer.pipeline) adds Gaussian-fit data
  c.model.name = 'wrn-10-2'
  c.threat.eps = 0.1
  c.train.batch_size = 128
  c.train.epoch_size = 1169    # the digits training split without the held-out images
  c.train.num_epochs = 30
  c.train.log_every_steps = 20
  c.optim.warmup_epochs = 2.0
  c.eval.every_steps = 100
  c.eval.pgd_steps = 20
  c.eval.batch_size = 128
  c.checkpoint.every_steps = 100
  return c

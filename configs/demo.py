"""The embedded default: the whole method on scikit-learn's 8×8 digits, offline, on a laptop CPU.

Run it with `python -m trainer.method --config=configs/demo.py --workdir=DIR`; for TRADES on
the real digits alone: `python -m trainer.main --config=configs/demo.py
--config.generated.alpha=1.0 --workdir=DIR`.

ε = 0.15 of the pixel range (between two and three of the digits' 17 grey levels) suits 8×8 grey
digits: a model trained without attack keeps under 5% against it (PGD-20), TRADES most of its
accuracy (BENCHMARKS.md). 8/255 would be far too weak to matter.

Generated data as the paper makes it (class-balanced, the first 1,000 of each pseudo-label
class), except the sampler: a DDPM (`pipeline.generator='ddpm'`, configs/demo_ddpm.py) is sampled
with DPM-Solver++(2M) in 20 steps, not the paper's 1,000 ancestral steps (configs/base.py), to
keep the demo minutes on a CPU; BENCHMARKS.md, "What the fast sampler costs", measures the
difference on digits.
"""
from configs import base


def get_config():
  c = base.get_config()
  c.dataset.name = 'digits'
  c.dataset.holdout = 128
  c.dataset.pad = 1
  c.dataset.flip = False       # a mirrored digit is a different (or no) digit
  c.generated.alpha = 0.8      # Gaussian-fit data: the paper's α for it (trainer.method adds it)
  c.model.name = 'wrn-10-2'
  # A few hundred steps only: with the paper's 0.99 the BatchNorm running averages would still
  # carry 0.99^183 ≈ 16% of their initial values at the end and the evaluated model lag behind.
  c.model.bn_momentum = 0.9
  c.threat.eps = 0.15
  c.train.batch_size = 128
  c.train.epoch_size = 1169    # the digits training split without the held-out images
  c.train.num_epochs = 20
  c.train.log_every_steps = 20
  c.optim.warmup_epochs = 2.0
  c.eval.every_steps = 100
  c.eval.pgd_steps = 20
  c.eval.batch_size = 128
  c.checkpoint.every_steps = 100
  c.pipeline.classifier_model = 'wrn-10-2'
  c.pipeline.classifier_epochs = 12
  c.pipeline.gaussian_components = 64  # all of an 8×8 image's dimensions
  c.pipeline.num_generated = 10_000    # class-balanced, 1,000 per class, as the paper's sets
  c.pipeline.sampler = 'dpm++2m'       # 20 steps, 50x fewer network evaluations than the paper's
  c.pipeline.sampler_steps = 20        # 1,000 (module docstring)
  c.pipeline.num_shards = 4
  c.pipeline.metrics_samples = 500
  c.pipeline.eval_examples = 100   # AA+MT on 100 test images: ~2 of the demo's 6 minutes
  c.eval.attacks = 'aa+mt'         # `python -m trainer.evaluate` runs AutoAttack too
  return c

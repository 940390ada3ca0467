"""CIFAR-10, L∞ ε = 8/255, WRN-70-16 (Swish) on 50M class-conditional EDM images, 80% of every
batch generated, 2,000 epochs at batch 1024: Wang et al. (2023), "Better Diffusion Models Further
Improve Adversarial Training" (ICML), code wzekai99/DM-Improves-AT.

Published: 93.25% clean, 70.69% robust under AutoAttack (standard, L∞ 8/255, the 10,000 test
images): the repository's README table and RobustBench's `Wang2023Better_WRN-70-16` entry ("It
uses additional 50M synthetic images in training"); the paper's abstract states the 70.69%.

Checked against the repository's code as for configs/cifar10_linf_wrn28_10_edm_20m.py: TRADES
β = 5, label smoothing 0.1 on every row, lr 0.2 (absolute), 2.5% warm-up then cosine, EMA
τ = 0.995, weight decay 5e-4, an epoch of ceil(50,000 / 1024) = 49 batches (50,176 images:
98,000 steps), 80% generated (205 real rows of 1024, as `--unsup-fraction 0.8` gives). Not
checked: the run's own arguments (argtxt/cifar10_linf_wrn70-16.txt is hosted on Hugging Face,
outside the repository): batch 1024 and 2,000 epochs are the paper's Table 2 row. Differences:
docs/fidelity.md, "The EDM recipes".

The data: DM-Improves-AT's published 50M set (50m_part1-4.npz merged by its merge-data.py,
~154 GB of raw pixels), imported once with `python -m trainer.import_npz --npz=50m.npz
--out=gs://BUCKET/cifar10_edm_50m --shards=2048 --shuffle`, then

  python -m trainer.main --config=configs/cifar10_linf_wrn70_16_edm_50m.py \\
      --config.generated.path=gs://BUCKET/cifar10_edm_50m.json --workdir=…

bfloat16 compute on the accelerators (the reference trains in float32); set --config.mesh.fsdp=N
to shard parameters, optimiser and EMA state when memory per chip is short.
"""
from configs import base


def get_config():
  c = base.dm_improves_at_training(base.get_config(), batch_size=1024, num_epochs=2000, lr=0.2)
  c.model.name = 'wrn-70-16'
  c.model.dtype = 'bfloat16'
  c.generated.alpha = 0.2
  c.generated.cycle_length = 64
  c.generated.shuffle_window = 50_000
  c.pipeline.num_generated = 50_000_000
  c.eval.every_steps = 5000
  c.distributed = True
  return c

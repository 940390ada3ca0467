"""CIFAR-10, L∞ ε = 8/255, WRN-28-10 (Swish) on 20M class-conditional EDM images, 80% of every
batch generated, 2,400 epochs at batch 2048: Wang et al. (2023), "Better Diffusion Models Further
Improve Adversarial Training" (ICML), code wzekai99/DM-Improves-AT.

Published: 92.44% clean, 67.31% robust under AutoAttack (standard, L∞ 8/255, the 10,000 test
images): the repository's README table and RobustBench's `Wang2023Better_WRN-28-10` entry
("It uses additional 20M synthetic images in training").

Checked against the repository's code (train-wa.py, gowal21uncovering/utils/, core/): TRADES
β = 5 (its README command), label smoothing 0.1 on every row, SGD Nesterov 0.9 with weight decay
5e-4 off BatchNorm, lr 0.2 (absolute, not scaled by the batch), 2.5% warm-up then cosine
(OneCycleLR, stepped once per epoch), EMA τ = 0.995, an epoch of ceil(50,000 / 2048) = 25
batches (51,200 images: 60,000 steps), 1,024 held-out training images, pad-4 crop and flip on
every row, 80% generated (`--unsup-fraction 0.8`: 410 real rows of 2048, as here). Not checked:
the run's own arguments (the README's argtxt link, cifar10_linf_wrn28-10.txt, is hosted on
Hugging Face, outside the repository): batch 2048 and 2,400 epochs are the paper's Table 2 row.
What the system does differently (the inner maximisation, the LR and momentum shape, the EMA
start, the selection attack's step) is in docs/fidelity.md, "The EDM recipes".

The data: DM-Improves-AT's published 20M set (20m_part1.npz, 20m_part2.npz, merged by its
merge-data.py; labels are the EDM's conditioning classes, no selection), imported once with
`python -m trainer.import_npz --npz=20m.npz --out=gs://BUCKET/cifar10_edm_20m --shards=1024
--shuffle`, then

  python -m trainer.main --config=configs/cifar10_linf_wrn28_10_edm_20m.py \\
      --config.generated.path=gs://BUCKET/cifar10_edm_20m.json --workdir=…
"""
from configs import base


def get_config():
  c = base.dm_improves_at_training(base.get_config(), batch_size=2048, num_epochs=2400, lr=0.2)
  c.model.name = 'wrn-28-10'
  c.generated.alpha = 0.2
  c.generated.cycle_length = 64
  c.generated.shuffle_window = 50_000
  c.pipeline.num_generated = 20_000_000
  c.eval.every_steps = 2500
  c.distributed = True
  return c

"""CIFAR-10, L∞ ε = 8/255, WRN-94-16 (Swish), 10,000 epochs at batch 2048 on generated images
only for the first 6,000 epochs, then 87.5% generated (α = 0.125): Bartoldson et al. (2024),
"Adversarial Robustness Limits via Scaling-Law and Human-Alignment Studies" (ICML), code
bbartoldson/Adversarial-Robustness-Limits.

Published: 93.68% clean, 73.71% robust under AutoAttack (standard, L∞ 8/255, the 10,000 test
images): RobustBench's `Bartoldson2024Adversarial_WRN-94-16` entry and the repository's
configs/README.md ("SOTA training (73.71% AA)").

Checked against the repository's released run, configs/SOTA.json over configs/defaults.json:
wrn-94-16-swish, batch 2048, lr 0.1 (absolute), TRADES β = 5, 10,000 epochs,
`unsup_fraction` 0.875 (256 real rows of 2048, as here), label smoothing 0.1 on every row, EMA
τ = 0.995, weight decay 5e-4, `pct_start` 0.025 (250 warm-up epochs), 10 attack steps of 2/255,
and configs/README.md: "The first 6000 epochs use the same config except `unsup_fraction=1` to
avoid overfitting to the non-synthetic CIFAR-10 data" — here `generated.alpha = 0` with
`generated.alpha_schedule = ((6000, 0.125),)`. An epoch is ceil(50,000 / 2048) = 25 batches
(its sampler's count: 51,200 images), so the mix changes at step 150,000 of 250,000. Batch
statistics over the whole batch (its SyncBatchNorm, 128 V100s). Differences, the generated data
included (three 100M sets, EDM, EDM with discriminator guidance and PFGM++, switched every
2,000 epochs in the released run; RobustBench's entry counts "500M synthetic images", the
images drawn over the run): docs/fidelity.md, "The EDM recipes".

  python -m trainer.main --config=configs/cifar10_linf_wrn94_16_edm_300m.py \\
      --config.generated.path=gs://BUCKET/cifar10_edm_300m.json --workdir=…

bfloat16 compute on the accelerators (the reference trains in float32); set --config.mesh.fsdp=N
to shard parameters, optimiser and EMA state when memory per chip is short.
"""
from configs import base


def get_config():
  c = base.dm_improves_at_training(base.get_config(), batch_size=2048, num_epochs=10_000, lr=0.1)
  c.model.name = 'wrn-94-16'
  c.model.dtype = 'bfloat16'
  c.generated.alpha = 0.0                        # generated only ...
  c.generated.alpha_schedule = ((6000, 0.125),)  # ... then 12.5% CIFAR-10 from epoch 6,000
  c.generated.cycle_length = 64
  c.generated.shuffle_window = 50_000
  c.pipeline.num_generated = 300_000_000
  c.eval.every_steps = 5000
  c.distributed = True
  return c

"""TinyImageNet, L∞ ε = 8/255, WRN-28-10 on 64×64 images, TRADES, generated images at α = 0.3,
400 CIFAR-10-equivalent epochs: the paper's Table 2 row.

Table 2 (TinyImageNet, L∞ 8/255, WRN-28-10): 51.56% clean / 21.56% robust without generated
data, 60.95% / 26.66% with DDPM samples (+5.10 pp robust); App. C, Fig. 9 sweeps α. The
generator is OpenAI's class-conditional ImageNet-64 DDPM (guided-diffusion), "restricted to the
valid set of 200 classes" (Sec. 6): its class for TinyImageNet class i is
`real.info(config.dataset).class_map[i]`, and the generator's own class labels are the labels
(no pseudo-labeller). The paper states no sample count for TinyImageNet; 1M is its default.

The whole method (trainer.method) takes that checkpoint imported (trainer.import_generator
--format=guided-diffusion --source=64x64_diffusion.pt --flags=configs/adm/imagenet64.py) and
samples it with its learned-variance ancestral sampler at guided-diffusion's 250 respaced steps
into PNG shards, 5,000 per class:

  python -m trainer.method --config=configs/tinyimagenet_linf_wrn28_10.py \\
      --config.dataset.path=gs://BUCKET/tiny-imagenet-200 \\
      --config.pipeline.generator_checkpoint=gs://BUCKET/adm_imagenet64 --workdir=…

The training details the paper does not state follow DeepMind's code as the CIFAR presets do
(`base.reference_training`); the 64×64 images keep the CIFAR crop (pad 4) and flips.

  python -m trainer.main --config=configs/tinyimagenet_linf_wrn28_10.py \\
      --config.dataset.path=gs://BUCKET/tiny-imagenet-200 \\
      --config.generated.path=gs://BUCKET/tinyimagenet_ddpm_1m.json --workdir=…

The 100K training images (1.2 GB decoded) are held in RAM (`dataset.storage = 'auto'`).
"""
from configs import base


def get_config():
  c = base.reference_training(base.get_config())
  c.dataset.name = 'tiny_imagenet'
  c.model.name = 'wrn-28-10'
  c.threat.eps = 8 / 255
  c.generated.alpha = 0.3
  c.train.num_epochs = 400
  c.train.epoch_size = 50_000   # CIFAR-10-equivalent epochs: 19.5K steps at batch 1024
  p = c.pipeline
  p.generator, p.labels, p.classes = 'ddpm', 'generator', 'dataset'   # footnotes 9 and 12
  p.sampler, p.sampler_steps, p.sampler_spacing = 'ddpm', 250, 'guided'
  p.shard_encoding = 'png'
  return c

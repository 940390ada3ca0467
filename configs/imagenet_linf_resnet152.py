"""ImageNet, L∞ ε = 4/255, ResNet-152 with Swish, standard (Madry) adversarial training,
5M generated images at α = 0.8, 200 epochs: App. B's run.

App. B: "we train a ResNet-152 with SiLU/Swish activations, with and without 5M additional DDPM
samples against ε∞ = 4/255. We use standard adversarial training for 200 epochs with cosine
learning rate schedule and weight averaging (τ = .995) and set the proportion α of real data to
80%. We use a batch size of 1024 split over 128 Google Cloud TPUv3 cores." Robust accuracy
(AA+MT, targeted attacks limited to the top-10 classes): 44.44% without and 45.30% with the
DDPM samples (Table 2; clean 68.74% / 68.78%); 40.04% / 42.31% after 100 epochs.

The generator is OpenAI's ImageNet-256 DDPM: its 256×256 samples are cropped Inception-style to
224 like the real images (`dataset.crop = 'inception'`). Epochs are ImageNet epochs
(1,281,167 images: 250K steps). BatchNorm statistics per 8 images, as per TPU core at 1024 over
128 cores (DeepMind's code computes them per device). App. B does not give the learning rate,
weight decay or warm-up: the paper's defaults stay (0.4 at batch 1024, 5e-4, 10 epochs).

  python -m trainer.main --config=configs/imagenet_linf_resnet152.py \\
      --config.dataset.data_dir=gs://BUCKET/tfds \\
      --config.generated.path=gs://BUCKET/imagenet_ddpm_5m.json --workdir=…

The training split streams from tfds's prepared files; evaluation during training uses the
first 5,000 validation images, resized to 256 and centre-cropped to 224 (RobustBench's
protocol).
"""
from configs import base


def get_config():
  c = base.get_config()
  c.dataset.name = 'imagenet2012'
  c.dataset.image_size = 224
  c.dataset.crop = 'inception'
  c.dataset.pad = 0
  c.dataset.test_size = 5000
  c.dataset.shuffle_window = 2_000   # ~220 MB of JPEG bytes per host (and loader worker)
  c.model.name = 'resnet-152'
  c.model.dtype = 'bfloat16'
  c.model.bn_group_size = 8
  c.threat.eps = 4 / 255
  c.train.loss = 'madry'
  c.generated.alpha = 0.8
  c.train.num_epochs = 200
  c.train.epoch_size = 1_281_167
  c.eval.every_steps = 10_000
  c.checkpoint.every_steps = 2_000
  c.loader.worker_count = 8          # JPEG decoding and crops in the input workers
  c.distributed = True
  return c

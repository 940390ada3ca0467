"""Every configuration key, documented, with the paper's defaults (Gowal, Rebuffi et al. 2021,
App. A).

Presets import `get_config()` from here and change only what differs. Any key can be overridden on
the command line: `--config.train.beta=3.0`. Unknown keys are rejected by ml_collections.
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.seed = 0

  # --- Real data ---------------------------------------------------------------------------------
  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = 'cifar10'         # cifar10 | cifar100 | svhn | digits (built in) |
                                     # tiny_imagenet | imagenet2012 | image_folder | npz
                                     # (data/datasets/, one module each)
  c.dataset.data_dir = ''            # tfds data_dir of cifar*, svhn, imagenet2012 ('' = tfds
                                     # default); may be gs://
  c.dataset.path = ''                # tiny_imagenet: the tiny-imagenet-200 folder; image_folder: a
                                     # folder of class sub-folders (or of train/ and test/ ones);
                                     # npz: the file. Local or gs:// (npz: local)
  c.dataset.image_size = 0           # side of the square images the model sees (0: the dataset's
                                     # own; imagenet2012: 224, the crop)
  c.dataset.resize = False           # path datasets: resize images of another size (shorter side,
                                     # then the centre square); False refuses them, file named
  c.dataset.test_fraction = 0.1      # image_folder, npz without a test split of their own: this
                                     # share, drawn with split_seed, is the test split
  c.dataset.split_seed = 0           # path datasets: the fixed order of each split (so the first
                                     # `holdout` / `test_size` images span the classes), the draw
  c.dataset.storage = 'auto'         # training split: ram | stream (encoded shards, decoded in the
                                     # input workers: tfds's prepared files, or a path dataset's
                                     # packed copy, python -m trainer.pack_dataset) | auto (stream
                                     # above ram_limit_gb, and imagenet2012 always)
  c.dataset.ram_limit_gb = 4.0       # auto: the largest training split held in RAM, decoded
  c.dataset.shuffle_window = 10_000  # streamed training split: window shuffle (records)
  c.dataset.cycle_length = 16        # streamed training split: shard files read in parallel
  c.dataset.on_corrupt = 'raise'     # streamed training split: raise | skip (counted, logged)
  c.dataset.holdout = 1024           # first N training images: never trained on, used for selection
  c.dataset.crop = 'pad'             # pad: pad-and-random-crop (pad) + flip | inception: random-
                                     # resized crop (8-100% of the area, aspect 3/4-4/3) to
                                     # image_size + flip, generated images too (ImageNet)
  c.dataset.pad = 4                  # pad-and-random-crop augmentation (0 = off)
  c.dataset.flip = True              # random horizontal flip (wrong for digits/SVHN)
  c.dataset.real_repeats = 1         # each real image r times per batch, copies augmented apart;
                                     # generated data never repeated (DeepMind's code: 4 emulated
                                     # workers on one host; data/input/batch_mix.py)
  c.dataset.test_size = 0            # evaluate on the first N test images (0 = all)
  c.dataset.train_fraction = 1.0     # keep a class-balanced subset of the train split (after the
                                     # held-out head; one fixed subset per fraction): the
                                     # data-scarce regime (data/real.py train_subset)

  # --- Generated data ----------------------------------------------------------------------------
  c.generated = ml_collections.ConfigDict()
  c.generated.path = ''              # manifest JSON of the shards ('' = real data only)
  c.generated.alpha = 0.3            # share of REAL images in every batch (exact: round(alpha*B))
  c.generated.alpha_schedule = ()    # ((epoch, alpha), ...): from each CIFAR-10-equivalent epoch
                                     # on, that real share instead (piecewise constant, epochs
                                     # increasing; () = alpha throughout). Bartoldson et al.:
                                     # alpha 0, ((6000, 0.125),). Exact and resumable per step
                                     # (data/input/alpha_schedule.py)
  c.generated.label_smoothing = 0.1  # applied to generated examples only
  c.generated.smooth_real_labels = False  # True: to the real ones too (DM-Improves-AT's and
                                     # Bartoldson et al.'s code smooth every row)
  c.generated.cycle_length = 16      # shards read in parallel (interleave)
  c.generated.shuffle_window = 10_000
  c.generated.on_corrupt = 'raise'   # raise | skip (skipped records are counted and logged)

  # --- Input pipeline ----------------------------------------------------------------------------
  c.loader = ml_collections.ConfigDict()
  c.loader.worker_count = 0          # Grain multiprocessing workers (0 = in-process)
  c.loader.prefetch = 2              # batches prefetched by a background thread

  # --- Model -------------------------------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.name = 'wrn-28-10'         # see models/registry.py
  c.model.dtype = 'float32'          # compute dtype: float32 | bfloat16 (parameters stay float32)
  c.model.bn_momentum = 0.99
  c.model.bn_epsilon = 1e-5
  c.model.bn_group_size = 0          # BN stats per G consecutive examples (0 = batch; DeepMind: 32)
  c.model.remat = 'none'             # none | block: recompute each residual block in backward

  # --- Threat model ------------------------------------------------------------------------------
  c.threat = ml_collections.ConfigDict()
  c.threat.norm = 'linf'             # linf | l2
  c.threat.eps = 8 / 255             # l2 preset: 128/255

  # --- Training objective ------------------------------------------------------------------------
  c.train = ml_collections.ConfigDict()
  c.train.loss = 'trades'            # trades | madry | standard (no attack: the pseudo-labeller)
  c.train.beta = 6.0                 # TRADES robustness weight
  c.train.attack_steps = 10          # inner maximisation: Adam steps
  c.train.attack_lr = 0.1            # Adam learning rate, x0.1 after half the steps
  c.train.attack_adam_eps = 1e-8     # Adam's eps in the inner maximisation (optax default; the
                                     # paper does not say; DeepMind's reference code uses 1e-9)
  c.train.attack_unroll = 'auto'     # auto: steps written out on CPU (XLA:CPU's loop-body
                                     # convolutions are slow), a loop elsewhere | loop | unroll
  c.train.batch_size = 1024          # global batch
  c.train.num_epochs = 400           # CIFAR-10-equivalent epochs: steps = epochs*epoch_size/batch
  c.train.epoch_size = 50_000
  c.train.log_every_steps = 100

  # --- Outer optimiser ---------------------------------------------------------------------------
  c.optim = ml_collections.ConfigDict()
  c.optim.lr_per_256 = 0.1           # peak lr = lr_per_256 * batch_size / 256
  c.optim.momentum = 0.9             # Nesterov
  c.optim.warmup_epochs = 10.0
  c.optim.weight_decay = 5e-4        # L2 on conv/dense kernels and biases, not on BatchNorm
  c.optim.ema_decay = 0.995          # EMA decay min(ema_decay, (1+t)/(10+t))

  # --- Evaluation and checkpoint selection -------------------------------------------------------
  c.eval = ml_collections.ConfigDict()
  c.eval.every_steps = 2000          # clean + PGD on the test set, PGD on the held-out set
  c.eval.pgd_steps = 40              # selection attack: PGD-40 on the margin loss
  c.eval.selection_attack = 'pgd'    # pgd: sign (L2: unit-gradient) steps of 2.5*eps/steps from a
                                     # uniform start, best iterate kept | reference: DeepMind's
                                     # code, Adam (eps 1e-9) lr 0.1, x0.1 at half, x0.01 more at
                                     # 3/4 of pgd_steps (40: steps 20, 30), last iterate
  c.eval.batch_size = 512
  c.eval.chunk_size = 2048           # trainer.evaluate attacks the test points in chunks of this
                                     # many, each saved as it ends: a killed evaluation resumes at
                                     # the first unfinished chunk, hosts split the chunks
  c.eval.dtype = 'float32'           # compute dtype of evaluation attacks: float32 | bfloat16
  c.eval.attacks = 'aa+mt,standard'  # cascades run by trainer.evaluate after training

  # --- Checkpoints -------------------------------------------------------------------------------
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 1000
  c.checkpoint.keep = 3              # periodic checkpoints kept (the best one is kept apart)

  # --- The whole method in one command (trainer.method) ----------------------------------------
  c.pipeline = ml_collections.ConfigDict()
  c.pipeline.classifier_model = 'wrn-28-10'  # the non-robust pseudo-labeller (paper: 95.68%)
  c.pipeline.classifier_epochs = 200
  c.pipeline.generator = 'gaussian'        # gaussian (App. D's fit) | ddpm | edm (a diffusion
                                           # model: Ho et al.'s or ADM, or Karras et al.'s)
  c.pipeline.generator_checkpoint = ''     # ddpm/edm: a generator checkpoint directory ('' =
                                           # train one here, in WORKDIR/generator)
  c.pipeline.generator_preset = 'ddpm_digits'  # ddpm/edm, trained here: configs/<name>.py of
                                           # that objective (ddpm_*, edm_*), run on this config's
                                           # dataset, held-out size and seed
  c.pipeline.generator_steps = 0           # ddpm/edm, trained here: steps (0 = the preset's)
  c.pipeline.sampler = 'ddpm'              # ddpm generator: ddpm (the paper: the checkpoint's own
                                           # ancestral sampler, Ho et al.'s) | ddim | dpm++2m
                                           # (fewer steps; what they cost: BENCHMARKS.md); edm
                                           # generator: heun | euler
  c.pipeline.sampler_steps = 0             # network evaluations per sample, or noise levels for
                                           # heun/euler (0: the sampler's default: ddpm the
                                           # generator's T, 1,000; ddim 100; dpm++2m 20; heun 18)
  c.pipeline.sampler_spacing = ''          # the sampler's timesteps ('': its own; 'guided' is
                                           # guided-diffusion's --timestep_respacing S)
  c.pipeline.sample_batch_size = 256       # ddpm: images per sampling batch on each host
  c.pipeline.labels = 'classifier'         # classifier: pseudo-labels from the non-robust
                                           # classifier (the paper's CIFAR sets) | generator: a
                                           # class-conditional generator's own classes, with no
                                           # classifier (footnote 12; no data metrics either)
  c.pipeline.classes = ''                  # labels='generator': the generator's classes to
                                           # sample ('': all, in order; 'dataset': the dataset's
                                           # class map, e.g. TinyImageNet's 200 of ImageNet's
                                           # 1,000; or ids '3,7,12'); label i is the i-th
  c.pipeline.shard_encoding = 'raw'        # how the shards store images: raw | png | jpeg
  c.pipeline.gaussian_components = 200     # PCA components per class (App. D)
  c.pipeline.num_generated = 1_000_000     # samples in the set (with top_k: candidates drawn)
  c.pipeline.class_balanced = True         # num_generated / classes of each pseudo-label class:
                                           # sample until every class has its share, keep the
                                           # first (the paper's "100K per class"; CIFAR-100 10K);
                                           # False: every sample, classes as they come
  c.pipeline.top_k = 0                     # keep the K best-scoring per class of num_generated
                                           # candidates instead (Carmon et al.; the paper's BigGAN
                                           # and VDVAE sets; 0: off)
  c.pipeline.num_shards = 64
  c.pipeline.metrics_samples = 10_000      # per set, for complementarity/coverage
  c.pipeline.eval_examples = 0             # final evaluation on the first N test images (0: all)

  # --- Device mesh -------------------------------------------------------------------------------
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1                   # -1: all remaining devices
  c.mesh.fsdp = 1                    # >1 shards parameters, optimiser and EMA state (ZeRO-3 style)
  c.distributed = False              # call jax.distributed.initialize() (set on TPU pods)
  return c


def reference_training(c):
  """The training details of DeepMind's released code (adversarial_robustness/jax), which the
  paper's text does not state and which produced its published numbers; the CIFAR and SVHN
  presets use them (docs/fidelity.md). base.get_config() alone keeps the paper's text."""
  c.model.bn_group_size = 32           # BN statistics per TPU core: 32 images at 1024 on 32 cores
  c.dataset.real_repeats = 4           # 4 emulated workers: each real image 4x, augmented apart
  c.train.attack_adam_eps = 1e-9       # the inner maximisation's Adam
  c.eval.selection_attack = 'reference'  # Adam PGD-40 on the margin loss, last iterate
  return c


def dm_improves_at_training(c, *, batch_size, num_epochs, lr):
  """The training of DM-Improves-AT's train-wa.py (Wang et al. 2023; Bartoldson et al. 2024 train
  with a fork of it), where this system can say it: TRADES β = 5 with label smoothing 0.1 on
  every row, SGD (Nesterov 0.9, weight decay 5e-4 off BatchNorm) at peak `lr` whatever the
  batch, warm-up over the first 2.5% of the epochs, EMA 0.995, an epoch of ceil(50,000 / B)
  batches, BatchNorm over the whole batch (Bartoldson et al.'s SyncBatchNorm), each real image
  once per batch, the first 1,024 training images held out for selection by PGD-40 on the
  margin (C&W) loss. What it does otherwise is listed in docs/fidelity.md ("The EDM recipes")."""
  c.train.beta = 5.0
  c.train.batch_size = batch_size
  c.train.num_epochs = num_epochs
  c.train.epoch_size = -(-50_000 // batch_size) * batch_size   # its sampler's num_batches
  c.optim.lr_per_256 = lr * 256 / batch_size
  c.optim.warmup_epochs = 0.025 * num_epochs                   # OneCycleLR's pct_start
  c.optim.ema_decay = 0.995
  c.optim.weight_decay = 5e-4
  c.generated.label_smoothing = 0.1
  c.generated.smooth_real_labels = True
  c.model.bn_group_size = 0
  c.dataset.real_repeats = 1
  c.dataset.holdout = 1024
  c.eval.selection_attack = 'pgd'
  c.pipeline.generator = 'edm'             # the whole method: Karras et al.'s generator,
  c.pipeline.generator_preset = 'edm_cifar10'   # sampled with Heun's 2nd-order method on
  c.pipeline.sampler = 'heun'              # 20 noise levels (39 network evaluations), as
  c.pipeline.sampler_steps = 20            # DM-Improves-AT's edm/README.md samples CIFAR-10
  return c

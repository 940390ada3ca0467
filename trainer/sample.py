"""Samples a diffusion generator into a pseudo-labelled shard set (trainer/generation/sample.py):

  python -m trainer.sample --generator=CKPT --num=N --out=DIR/NAME --shards=K \\
      --sampler=ddpm|ddim|dpm++2m|heun|euler --steps=S --seed=0 [--classifier=WORKDIR] \\
      [--class_balanced [--max_candidates=M] | --top_k=K] [--batch_size=B] \\
      [--classes=3,7,12|DATASET:PATH] [--spacing=guided] [--encoding=raw|png|jpeg]

The paper's DDPM sets: --sampler=ddpm (the checkpoint's ancestral sampler, its 1,000 steps) and
--class_balanced (N / classes of each class, no confidence filtering); --top_k is the filter it
used for BigGAN and VDVAE samples. An EDM generator samples with --sampler=heun (or euler).
TinyImageNet from OpenAI's ImageNet-64 ADM (the paper's Sec. 6): --classes=tiny_imagenet:DIR (its
200 classes' ImageNet indices; labels are TinyImageNet's own), --sampler=ddpm --steps=250
--spacing=guided (guided-diffusion's --timestep_respacing 250), --encoding=png.

Killed and run again with the same command, it finishes with exactly N samples, each once.
Multi-host: pass --distributed on every process (coordinator flags as in trainer.main); OUT.json
lists the shards of every host.
"""
import jax
from absl import flags

from models.diffusion import generators
from trainer import cli
from trainer.generation import sample

_GENERATOR = flags.DEFINE_string('generator', None, 'Generator checkpoint directory.')
_NUM = flags.DEFINE_integer('num', None, 'Samples to draw (with --top_k: candidates).')
_OUT = flags.DEFINE_string('out', None, 'Output prefix DIR/NAME (local or gs://).')
_SHARDS = flags.DEFINE_integer('shards', None, 'Shard files of the whole set.')
_SAMPLER = flags.DEFINE_enum('sampler', 'ddpm', list(generators.SAMPLERS),
                             "Sampler: ddpm (the paper's, ancestral), ddim, dpm++2m for a DDPM or "
                             'ADM generator; heun, euler for an EDM generator.')
_STEPS = flags.DEFINE_integer('steps', None, 'Network evaluations per sample, or noise levels for '
                              "heun/euler (default: ddpm the generator's T, 1000 as Ho et al.; "
                              'ddim 100; dpm++2m 20; heun 18, 35 evaluations; euler 35).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the noise (and of the top-K shuffle).')
_CLASSIFIER = flags.DEFINE_string('classifier', None, 'Training workdir of the pseudo-labeller.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'best', "Classifier: 'best', 'latest' or a step.")
_TOP_K = flags.DEFINE_integer('top_k', 0, 'Keep the K best-scoring samples per class (0: all).')
_CLASS_BALANCED = flags.DEFINE_bool('class_balanced', False, 'N / classes of each class: the first '
                                    'of each (pseudo-)label class in the sample stream.')
_MAX_CANDIDATES = flags.DEFINE_integer('max_candidates', 0, 'With --class_balanced and a '
                                       'classifier: samples drawn at most (0: 10 x num).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 256, 'Images per batch on each host (a '
                                   'multiple of its device count; same on every host).')
_CLASSES = flags.DEFINE_string('classes', '', 'Sample a class-conditional generator for these of '
                               "its classes only: ids '3,7,12', or DATASET:PATH for that "
                               "dataset's class map (tiny_imagenet:DIR); label i is the i-th.")
_SPACING = flags.DEFINE_string('spacing', '', "Timestep spacing of ddpm/ddim ('leading', "
                               "'trailing', 'guided', 'guided_ddim') or dpm++2m ('logsnr', "
                               "'uniform', 'linspace'); default: the sampler's own.")
_ENCODING = flags.DEFINE_enum('encoding', 'raw', ['raw', 'png', 'jpeg'], 'How shards store '
                              'images: raw pixels, PNG (lossless, ~2x smaller) or JPEG.')
_JPEG_QUALITY = flags.DEFINE_integer('jpeg_quality', 95, 'JPEG quality (--encoding=jpeg).')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'UNet compute dtype.')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize().')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar (images/s, ETA).')
flags.mark_flags_as_required(['generator', 'num', 'out', 'shards'])


def main():
  cli.initialize_distributed(_DISTRIBUTED.value, '--distributed')
  out = cli.absolute(_OUT.value)
  cli.check_gcs_readable(_GENERATOR.value, '--generator')
  cli.check_gcs_readable(_CLASSIFIER.value or '', '--classifier')
  cli.start(out.rsplit('/', 1)[0] if '/' in out else '.')
  result = sample.sample_to_shards(
      cli.absolute(_GENERATOR.value), out, num=_NUM.value,
      num_shards=_SHARDS.value, sampler=_SAMPLER.value, steps=_STEPS.value, seed=_SEED.value,
      classifier=cli.absolute(_CLASSIFIER.value), checkpoint=_CHECKPOINT.value, top_k=_TOP_K.value,
      class_balanced=_CLASS_BALANCED.value, max_candidates=_MAX_CANDIDATES.value,
      batch_size=_BATCH_SIZE.value, dtype=_DTYPE.value,
      classes=sample.parse_classes(_CLASSES.value), encoding=_ENCODING.value,
      jpeg_quality=_JPEG_QUALITY.value,
      sampler_options={'spacing': _SPACING.value} if _SPACING.value else None,
      progress=_PROGRESS.value)
  if jax.process_index() == 0:
    print(result.manifest, flush=True)


if __name__ == '__main__':
  cli.run(main)

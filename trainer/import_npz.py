"""Converts a generated-image `.npz` into a shard set, with bounded memory
(data/generation/import_npz.py):

  python -m trainer.import_npz --npz=SET.npz --out=DIR/NAME --shards=N [--shuffle --seed=S]
      [--generator=NAME] [--num_classes=K] [--image_key=image] [--label_key=label]
      [--score_key=KEY] [--encoding=raw|png|jpeg --jpeg_quality=Q]

Reads the published sets (DeepMind's `cifar10_ddpm.npz`, DM-Improves-AT's 1M-50M parts) without
loading them whole. Each sample keeps its index in the file as its `id`.
"""
from absl import flags

from data.generation import import_npz
from trainer import cli

_NPZ = flags.DEFINE_string('npz', None, 'The .npz file (local or gs://).')
_OUT = flags.DEFINE_string('out', None, 'Output prefix DIR/NAME (local or gs://).')
_SHARDS = flags.DEFINE_integer('shards', None, 'Shard files.')
_SHUFFLE = flags.DEFINE_bool('shuffle', False, 'Write the samples in a random order across '
                             'shards.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the shuffle.')
_GENERATOR = flags.DEFINE_string('generator', None, 'Generator name (default: the file name).')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', None, 'Classes (default: largest label + 1).')
_IMAGE_KEY = flags.DEFINE_string('image_key', 'image', 'Array of uint8 NHWC images.')
_LABEL_KEY = flags.DEFINE_string('label_key', 'label', 'Array of integer labels.')
_SCORE_KEY = flags.DEFINE_string('score_key', None, 'Array of scores (default: none, NaN).')
_ENCODING = flags.DEFINE_enum('encoding', 'raw', ['raw', 'png', 'jpeg'],
                              'How images are stored: raw pixels, PNG (lossless) or JPEG.')
_JPEG_QUALITY = flags.DEFINE_integer('jpeg_quality', 95,
                                     'With --encoding=jpeg (recorded in the manifest).')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar.')
flags.mark_flags_as_required(['npz', 'out', 'shards'])


def main():
  out = cli.absolute(_OUT.value)
  cli.check_gcs_readable(_NPZ.value, '--npz')
  # A file that is not a usable npz is refused before any folder is made.
  npz = import_npz.open_npz(cli.absolute(_NPZ.value), num_classes=_NUM_CLASSES.value,
                            image_key=_IMAGE_KEY.value, label_key=_LABEL_KEY.value,
                            score_key=_SCORE_KEY.value)
  cli.start(out.rsplit('/', 1)[0] if '/' in out else '.')
  path = import_npz.write_shards(
      npz, out, num_shards=_SHARDS.value, shuffle=_SHUFFLE.value, seed=_SEED.value,
      source=_GENERATOR.value, progress=_PROGRESS.value, encoding=_ENCODING.value,
      jpeg_quality=_JPEG_QUALITY.value)
  print(path, flush=True)


if __name__ == '__main__':
  cli.run(main)

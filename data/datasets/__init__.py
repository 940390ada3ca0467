"""Real datasets: one module per source, one entry point that takes the config's dataset section.

  ds = datasets.get(config.dataset)     # or a built-in name: datasets.get('cifar10')
  ds.info, ds.size('train'), ds.load('test', stop=1000), ds.stream('train', skip=1024)

| name           | source                                               | module        |
|----------------|------------------------------------------------------|---------------|
| cifar10, cifar100, svhn | tensorflow-datasets, prepared in `data_dir`  | tfds_sets     |
| digits         | scikit-learn's 8x8 digits (offline)                  | digits        |
| tiny_imagenet  | the `tiny-imagenet-200` folder at `path`             | tiny_imagenet |
| imagenet2012   | tensorflow-datasets' prepared imagenet2012, `data_dir` | imagenet    |
| image_folder   | a folder of class sub-folders at `path`              | image_folder  |
| npz            | an .npz of uint8 images and labels at `path`         | npz           |

`dataset.Dataset` is the interface; `streamed.StreamedSplit` what a streamed training split
gives the input pipeline; `data.real` keeps the older entry points (`info`, `load`,
`training_splits`) and decides what is held in RAM.
"""
from __future__ import annotations

from data.datasets import dataset


def _sources():
  # Imported here so that `import data.datasets` stays light (no tfds, PIL or sklearn).
  from data.datasets import digits  # pylint: disable=g-import-not-at-top
  from data.datasets import image_folder  # pylint: disable=g-import-not-at-top
  from data.datasets import imagenet  # pylint: disable=g-import-not-at-top
  from data.datasets import npz  # pylint: disable=g-import-not-at-top
  from data.datasets import tfds_sets  # pylint: disable=g-import-not-at-top
  from data.datasets import tiny_imagenet  # pylint: disable=g-import-not-at-top
  return {'cifar10': tfds_sets.TfdsSet, 'cifar100': tfds_sets.TfdsSet,
          'svhn': tfds_sets.TfdsSet, 'digits': digits.Digits,
          'tiny_imagenet': tiny_imagenet.TinyImageNet, 'imagenet2012': imagenet.ImageNet,
          'image_folder': image_folder.ImageFolder, 'npz': npz.Npz}


NAMES = ('cifar10', 'cifar100', 'svhn', 'digits', 'tiny_imagenet', 'imagenet2012',
         'image_folder', 'npz')
PATH_NAMES = ('tiny_imagenet', 'image_folder', 'npz')   # read from `dataset.path`
_cache: dict = {}


def check_options(options: dataset.Options) -> None:
  """Rejects a dataset section that cannot work, without reading any data."""
  def fail(key, why):
    raise ValueError(f'config.dataset.{key}={getattr(options, key)!r}: {why}')
  if options.name not in NAMES:
    raise ValueError(f'Unknown dataset {options.name!r}; expected one of {sorted(NAMES)}.')
  if options.name in PATH_NAMES and not options.path:
    fail('path', f'the {options.name} dataset is read from a path (folder or file); set it')
  if options.storage not in dataset.STORAGE:
    fail('storage', f'must be one of {dataset.STORAGE}')
  if options.on_corrupt not in ('raise', 'skip'):
    fail('on_corrupt', "must be 'raise' or 'skip'")
  if options.crop not in dataset.CROPS:
    fail('crop', f'must be one of {dataset.CROPS}')
  if options.name == 'imagenet2012' and options.crop != 'inception':
    fail('crop', "imagenet2012's training images keep their sizes: they are cropped Inception-"
         "style ('inception')")
  if options.name == 'imagenet2012' and options.storage == 'ram':
    fail('storage', "imagenet2012's training split always streams ('auto' or 'stream')")
  if options.name == 'digits' and options.storage == 'stream':
    fail('storage', 'digits ships inside scikit-learn and is held in RAM')
  if options.image_size < 0:
    fail('image_size', 'must be >= 0 (0: the dataset\'s own size)')
  if options.ram_limit_gb < 0:
    fail('ram_limit_gb', 'must be >= 0')


def get(dataset_section) -> dataset.Dataset:
  """The dataset a name or a config's dataset section describes (one instance per options)."""
  options = dataset.Options.of(dataset_section)
  check_options(options)
  if options not in _cache:
    _cache[options] = _sources()[options.name](options)
  return _cache[options]

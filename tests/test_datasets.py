"""Datasets given by a path: TinyImageNet's folder, an image folder, an npz; what they refuse, and
the facts measured once and stored beside them."""
import json
import os

import numpy as np
import pytest
from PIL import Image

import fake_datasets as fake
from configs import base
from data import datasets
from data import real
from data.datasets import dataset as dataset_lib
from data.datasets import statistics


def _options(name, path, **more):
  c = base.get_config().dataset
  c.name, c.path = name, str(path)
  for key, value in more.items():
    c[key] = value
  return dataset_lib.Options.of(c)


def _fresh(options):
  datasets._cache.pop(options, None)   # a new process: nothing measured in memory
  return datasets.get(options)


def _decoded(path, channels=3):
  return np.asarray(Image.open(path).convert('RGB' if channels == 3 else 'L'))


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  return fake.tiny_imagenet(str(tmp_path_factory.mktemp('tiny')))


def test_tiny_imagenet_reads_the_distributed_layout(tiny):
  ds = _fresh(_options('tiny_imagenet', tiny))
  wnids = sorted(open(os.path.join(tiny, 'wnids.txt')).read().split())
  info = ds.info
  assert info.num_classes == 4 and info.shape == (64, 64, 3)
  assert info.class_names == tuple(wnids)
  from data.datasets import imagenet  # pylint: disable=g-import-not-at-top
  assert info.class_map == tuple(imagenet.wnids().index(w) for w in wnids)
  train = ds.load('train')
  assert train['image'].shape == (24, 64, 64, 3) and ds.size('train') == 24
  assert np.bincount(train['label']).tolist() == [6, 6, 6, 6]
  paths = ds.source('train').paths
  assert sorted(paths) != paths   # a seeded order, so the first images span the classes
  for i in (0, 5, 23):
    np.testing.assert_array_equal(train['image'][i], _decoded(paths[i]))
    assert wnids[train['label'][i]] in paths[i]
  grey = [i for i, p in enumerate(paths) if p.endswith('_0.JPEG')]
  assert all((train['image'][i] == train['image'][i][..., :1]).all() for i in grey)  # grey->RGB
  test = ds.load('test')
  rows = [line.split('\t') for line in open(os.path.join(tiny, 'val', 'val_annotations.txt'))]
  assert [wnids[y] for y in test['label']] == [r[1] for r in rows]   # the annotations' order
  np.testing.assert_array_equal(test['image'][3],
                                _decoded(os.path.join(tiny, 'val', 'images', rows[3][0])))
  all_pixels = train['image'].reshape(-1, 3) / 255.0
  np.testing.assert_allclose(info.mean, all_pixels.mean(0), rtol=1e-9)
  np.testing.assert_allclose(info.std, all_pixels.std(0), rtol=1e-9)


def test_facts_are_stored_beside_the_dataset_and_read_back(tiny):
  options = _options('tiny_imagenet', tiny)
  _fresh(options).info
  sidecar = statistics.sidecar_path(tiny)
  facts = json.load(open(sidecar))
  assert facts['words'][0].startswith('thing ') and len(facts['class_map']) == 4
  facts['mean'] = [0.25, 0.5, 0.75]   # as if measured by an earlier run
  with open(sidecar, 'w') as f:
    json.dump(facts, f)
  assert _fresh(options).info.mean == (0.25, 0.5, 0.75)   # read, not measured again
  reordered = _options('tiny_imagenet', tiny, split_seed=1)
  assert _fresh(reordered).info.mean != (0.25, 0.5, 0.75)   # other options: measured again
  assert json.load(open(sidecar))['depends_on']['split_seed'] == 1


def test_images_of_another_size_are_refused_by_name_or_resized(tmp_path):
  root = fake.tiny_imagenet(str(tmp_path), grey=False)
  wnid = sorted(open(os.path.join(root, 'wnids.txt')).read().split())[1]
  odd = os.path.join(root, 'train', wnid, 'images', f'{wnid}_3.JPEG')
  Image.fromarray(fake.image(1, 48, 80, np.random.default_rng(0))).save(odd)
  with pytest.raises(ValueError, match=f'{odd}: image is 48x80, the dataset\'s images are '
                     '64x64; set --config.dataset.resize=True'):
    _fresh(_options('tiny_imagenet', root)).load('train')
  ds = _fresh(_options('tiny_imagenet', root, resize=True))
  row = ds.source('train').paths.index(odd)
  image = ds.load('train')['image'][row]
  want = np.asarray(Image.open(odd).resize((106, 64), Image.BILINEAR))[:, 21:85]
  np.testing.assert_array_equal(image, want)   # shorter side to 64, centre 64 x 64


@pytest.mark.parametrize('split', [False, True])
def test_image_folder_with_its_own_or_a_drawn_split(tmp_path, split):
  root = fake.image_folder(str(tmp_path), split=split)
  ds = _fresh(_options('image_folder', root, test_fraction=0.2))
  assert ds.info.class_names == ('cat', 'dog', 'emu') and ds.info.shape == (16, 16, 3)
  train, test = ds.load('train'), ds.load('test')
  if split:
    assert (len(train['label']), len(test['label'])) == (15, 6)
  else:
    assert (len(train['label']), len(test['label'])) == (12, 3)   # 20% of 15 drawn
    train_files, test_files = ds.source('train').paths, ds.source('test').paths
    assert not set(train_files) & set(test_files) and len(set(train_files + test_files)) == 15
  for i, path in enumerate(ds.source('test').paths):
    np.testing.assert_array_equal(test['image'][i], _decoded(path))
    assert ds.info.class_names[test['label'][i]] == os.path.basename(os.path.dirname(path))


def test_image_folder_refusals(tmp_path):
  root = fake.image_folder(str(tmp_path), split=True)
  os.makedirs(os.path.join(root, 'test', 'fox'))
  with pytest.raises(ValueError, match='test/fox: a class folder that the training split does '
                     'not have'):
    _fresh(_options('image_folder', root)).info
  with pytest.raises(ValueError, match='no class sub-folders'):
    _fresh(_options('image_folder', str(tmp_path / 'folder' / 'train' / 'cat'))).info
  ds = _fresh(_options('image_folder', fake.image_folder(str(tmp_path / 'b')), image_size=24))
  with pytest.raises(ValueError, match=r'folder/[a-z]{3}/[a-z]{3}\d\d.png: image is 16x16, '
                     r'the dataset\'s images are 24x24'):
    ds.load('train')
  resized = _fresh(_options('image_folder', str(tmp_path / 'b' / 'folder'), image_size=24,
                            resize=True))
  assert resized.load('test')['image'].shape[1:] == (24, 24, 3)


@pytest.mark.parametrize('compressed', [False, True])
def test_npz_with_a_drawn_split(tmp_path, compressed):
  images, labels = fake.arrays(40, channels=1)
  path = str(tmp_path / 'set.npz')
  (np.savez_compressed if compressed else np.savez)(path, image=images, label=labels)
  ds = _fresh(_options('npz', path, test_fraction=0.25, split_seed=3))
  assert ds.info.shape == (8, 8, 1) and ds.info.num_classes == 3
  train, test = ds.load('train'), ds.load('test')
  assert (len(train['label']), len(test['label'])) == (30, 10)
  rows = {im.tobytes(): y for im, y in zip(images, labels)}
  seen = [im.tobytes() for im in np.concatenate([train['image'], test['image']])[..., 0]]
  assert sorted(seen) == sorted(rows)   # every image once, in one split
  assert all(rows[im[..., 0].tobytes()] == y for im, y in zip(train['image'], train['label']))
  np.testing.assert_allclose(ds.info.mean, [train['image'].mean() / 255], rtol=1e-9)


def test_npz_with_its_own_split_and_class_names(tmp_path):
  x, y = fake.arrays(20)
  path = str(tmp_path / 'own.npz')
  np.savez(path, train_image=x[:15], train_label=y[:15], test_image=x[15:], test_label=y[15:],
           class_names=np.array(['a', 'b', 'c']))
  ds = _fresh(_options('npz', path))
  assert ds.info.class_names == ('a', 'b', 'c') and ds.size('test') == 5
  test = ds.load('test')
  order = [next(i for i in range(15, 20) if (x[i] == im).all()) for im in test['image']]
  assert sorted(order) == list(range(15, 20)) and (y[order] == test['label']).all()
  np.savez(str(tmp_path / 'bad.npz'), pixels=x, label=y)
  with pytest.raises(ValueError, match=r"bad.npz: expected the arrays image and label .* it has "
                     r"\['label', 'pixels'\]"):
    _fresh(_options('npz', str(tmp_path / 'bad.npz'))).info
  with pytest.raises(ValueError, match=r'row \d+ is 8x8, the dataset\'s images are 12x12'):
    _fresh(_options('npz', path, image_size=12)).load('train')


def test_the_config_is_checked_before_any_data_is_read():
  with pytest.raises(ValueError, match="config.dataset.path='': the tiny_imagenet dataset is "
                     'read from a path'):
    real.check_config(_options('tiny_imagenet', ''))
  with pytest.raises(ValueError, match="config.dataset.storage='disk'"):
    real.check_config(_options('npz', 'x.npz', storage='disk'))
  with pytest.raises(ValueError, match="config.dataset.crop='pad': imagenet2012's training "
                     'images keep their sizes'):
    real.check_config(dataset_lib.Options('imagenet2012'))
  with pytest.raises(ValueError, match="Unknown dataset 'imagenet'"):
    real.check_config('imagenet')


def test_training_splits_hold_out_the_head_and_keep_ids(tiny):
  config = base.get_config()
  config.dataset.name, config.dataset.path = 'tiny_imagenet', tiny
  config.dataset.holdout, config.dataset.test_size = 5, 6
  train, holdout, test = real.training_splits(config)
  full = real.load(config.dataset, 'train')
  np.testing.assert_array_equal(holdout['image'], full['image'][:5])
  np.testing.assert_array_equal(train['image'], full['image'][5:])
  np.testing.assert_array_equal(train['id'], np.arange(5, 24))
  assert len(test['label']) == 6


def test_stored_facts_are_measured_again_when_images_are_added(tmp_path):
  root = fake.image_folder(str(tmp_path), split=True)
  options = _options('image_folder', root)
  before = _fresh(options).info.mean
  Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(
      os.path.join(root, 'train', 'cat', 'cat99.png'))
  ds = _fresh(options)
  assert ds.size('train') == 16 and all(a < b for a, b in zip(ds.info.mean, before))
  assert json.load(open(statistics.sidecar_path(root)))['sizes'] == {'train': 16, 'test': 6}

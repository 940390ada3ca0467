"""ImageNet through a prepared tfds `imagenet2012` (tfds's own builder, run on fake ILSVRC2012
tars): the records we read are tfds's, evaluation images get RobustBench's transform, and the
training split streams with Inception-style crops, mixed exactly with generated images."""
import numpy as np
import pytest

import fake_datasets as fake
from configs import base
from data import datasets
from data import image_codec
from data import real
from data.datasets import imagenet
from data.input import crops
from data.input import pipeline
from data.records import shard_writer

pytestmark = pytest.mark.integration   # tfds prepares the copy: ~10 s with TensorFlow


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  return fake.imagenet2012(str(tmp_path_factory.mktemp('imagenet')), classes=3, per_class=6)


def _config(data_dir, **more):
  c = base.get_config()
  c.dataset.name, c.dataset.data_dir = 'imagenet2012', data_dir
  c.dataset.crop, c.dataset.image_size = 'inception', 32
  c.dataset.holdout, c.dataset.test_size = 3, 4
  c.dataset.shuffle_window = 4
  for key, value in more.items():
    section, leaf = key.split('.')
    c[section][leaf] = value
  return c


def _tfds_examples(data_dir, split):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds = tfds.load('imagenet2012', split=split, data_dir=data_dir, shuffle_files=False,
                 decoders={'image': tfds.decode.SkipDecoding()}, download=False)
  return [(e['image'], int(e['label'])) for e in tfds.as_numpy(ds)]


def test_info_and_evaluation_images(prepared):
  data_dir, wnids = prepared
  ds = datasets.get(_config(data_dir).dataset)
  info = ds.info
  assert info.num_classes == 1000 and info.shape == (32, 32, 3)
  assert info.mean == imagenet.MEAN and info.class_names[:2] == ('n01440764', 'n01443537')
  assert datasets.get(_config(data_dir, **{'dataset.image_size': 0}).dataset).info.shape == (
      224, 224, 3)
  assert ds.size('train') == 18 and ds.size('test') == 5
  test = ds.load('test')
  want = _tfds_examples(data_dir, 'validation')   # tfds's order and labels
  assert test['label'].tolist() == [y for _, y in want]
  for image, (data, _) in zip(test['image'], want):
    np.testing.assert_array_equal(image, crops.resize_center_crop(image_codec.open_image(data),
                                                                  32))
  _, holdout, _ = real.training_splits(_config(data_dir))
  train = _tfds_examples(data_dir, 'train')
  assert holdout['label'].tolist() == [y for _, y in train[:3]]
  assert {wnids.index(info.class_names[y]) for _, y in train} == {0, 1, 2}


def test_the_training_split_streams_with_inception_crops(prepared, tmp_path):
  data_dir, _ = prepared
  rng = np.random.default_rng(0)
  with shard_writer.ShardWriter(str(tmp_path / 'gen'), num_shards=2, total=20,
                                image_shape=(48, 48, 3), num_classes=1000, source='adm',
                                encoding='png') as writer:   # another size: cropped as well
    writer.write_batch(np.stack([fake.image(i, 48, 48, rng) for i in range(20)]),
                       np.arange(20) * 7)
  config = _config(data_dir, **{'generated.path': writer.manifest_path,
                                'generated.alpha': 0.6, 'train.batch_size': 10})
  assert real.streams(config.dataset)   # always, for ImageNet
  train, _, _ = real.training_splits(config)
  assert train.size == 15 and train.stored_shape == (0, 0, 3)
  labels = [y for _, y in _tfds_examples(data_dir, 'train')]
  it = pipeline.make_train_iterator(config, train, process_index=0, process_count=1)
  seen = []
  for _ in range(5):   # 30 real rows: two epochs of the 15 streamed images
    batch = next(it)
    assert batch['image'].shape == (10, 32, 32, 3) and batch['image'].dtype == np.uint8
    real_rows = ~batch['is_generated']
    assert real_rows.sum() == 6
    assert all(labels[i] == y for i, y in zip(batch['id'][real_rows], batch['label'][real_rows]))
    assert (batch['label'][~real_rows] == batch['id'][~real_rows] * 7).all()
    seen += batch['id'][real_rows].tolist()
  assert set(seen) == set(range(3, 18))   # the held-out head is never trained on
  state = it.get_state()
  more = [next(it) for _ in range(2)]
  it.close()
  resumed = pipeline.make_train_iterator(config, train, process_index=0, process_count=1)
  resumed.set_state(state)
  for batch, want in zip([next(resumed) for _ in range(2)], more):
    np.testing.assert_array_equal(batch['image'], want['image'])
    np.testing.assert_array_equal(batch['id'], want['id'])
  resumed.close()


def test_an_unprepared_copy_is_named_with_how_to_prepare_it(tmp_path):
  config = _config(str(tmp_path / 'empty'))
  with pytest.raises(real.DatasetNotPreparedError, match="'imagenet2012' is not prepared in "
                     ".*empty.*ILSVRC2012_img_train.tar.*manual_dir"):
    real.training_splits(config)

"""A class-conditional generator sampled for a subset of its classes (TinyImageNet's 200 inside
ImageNet's 1,000): the generator is asked for class_map[label], the set keeps the dataset's own
label, and the method's keys that choose this are checked before any work."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fake_datasets as fake
from configs import demo
from data import real
from data.datasets import imagenet
from trainer.generation import sample
from trainer.pipeline import stages
from trainer.robust import config_validation


def _class_painter(params, keys, shape, y):
  """A 'generator' whose image is its asked class, as a pixel value in [-1, 1] (1000 classes)."""
  del params, keys
  return jnp.broadcast_to((y / 999.0 * 2 - 1)[:, None, None, None], shape)


def test_the_generator_is_asked_for_the_mapped_class_and_the_label_is_the_datasets():
  class_map = [3, 250, 517, 999]
  fn = sample.make_sample_batch(_class_painter, {}, sample.local_mesh(), batch_size=8,
                                image_shape=(2, 2, 1), num_classes=4, class_map=class_map)
  images, labels = jax.device_get(fn(jax.random.PRNGKey(0), jnp.uint32(1)))
  np.testing.assert_array_equal(labels, np.arange(8, 16) % 4)
  asked = np.asarray(class_map)[labels]
  expected = np.round((asked / 999.0 * 2 - 1 + 1) * 127.5).clip(0, 255)
  np.testing.assert_allclose(images[:, 0, 0, 0], expected, atol=1)
  assert len(set(images[:, 0, 0, 0].tolist())) == 4


def test_classes_come_as_ids_or_as_a_datasets_class_map(tmp_path):
  assert sample.parse_classes('') is None
  assert sample.parse_classes('3,7,12') == [3, 7, 12]
  root = fake.tiny_imagenet(str(tmp_path), classes=3, per_class=2, val=3)
  wanted = list(real.info({'name': 'tiny_imagenet', 'path': root}).class_map)
  assert sample.parse_classes(f'tiny_imagenet:{root}') == wanted
  imagenet_ids = list(imagenet.wnids())   # label i is the i-th WNID in sorted order
  assert wanted == [imagenet_ids.index(w) for w in sorted(fake.imagenet_wnids(3))] == [10, 17, 24]
  with pytest.raises(ValueError, match=r'--classes=3,x: expected class ids'):
    sample.parse_classes('3,x')
  with pytest.raises(ValueError, match='digits has no class map'):
    sample.parse_classes('digits:')


class _Generator:
  num_classes = 10


@pytest.mark.parametrize('classes, classifier, message', [
    ([1, 12], None, r'2 distinct ids in \[0, 10\)'),
    ([1, 1], None, r'2 distinct ids in \[0, 10\)'),
    ([], None, r'0 distinct ids'),
    ([1, 2], 'runs/c', 'drop --classifier'),
])
def test_a_bad_class_list_is_named(classes, classifier, message):
  with pytest.raises(ValueError, match=message):
    sample._check_classes(classes, _Generator(), 'gen', classifier)


def test_an_unconditional_generator_has_no_classes_to_choose():
  generator = _Generator()
  generator.num_classes = None
  with pytest.raises(ValueError, match='gen: --classes needs a class-conditional generator'):
    sample._check_classes([0], generator, 'gen', None)


@pytest.mark.parametrize('key, value, message', [
    ('labels', 'oracle', "must be 'classifier' or 'generator'"),
    ('classes', '1,2', "set pipeline.labels to 'generator'"),
    ('shard_encoding', 'webp', "must be 'raw', 'png' or 'jpeg'"),
])
def test_the_methods_label_keys_are_checked(key, value, message):
  c = demo.get_config()
  c.pipeline.generator, c.pipeline.generator_checkpoint = 'ddpm', 'gen'
  c.pipeline[key] = value
  with pytest.raises(ValueError, match=f'pipeline.{key}.*{message}'):
    config_validation.validate_pipeline(c)


def test_the_gaussian_fit_keeps_the_classifier_and_raw_shards():
  c = demo.get_config()
  c.pipeline.labels = 'generator'
  with pytest.raises(ValueError, match="set pipeline.generator to 'ddpm' or 'edm'"):
    config_validation.validate_pipeline(c)
  c = demo.get_config()
  c.pipeline.shard_encoding = 'png'
  with pytest.raises(ValueError, match="the Gaussian fit's are raw"):
    config_validation.validate_pipeline(c)


def test_the_generators_classes_must_be_the_datasets(tmp_path, monkeypatch):
  c = demo.get_config()   # digits: 10 classes
  c.pipeline.generator, c.pipeline.labels = 'ddpm', 'generator'
  monkeypatch.setattr(stages.generators, 'load', lambda path: _Generator())
  assert stages.generator_classes(c, 'gen') is None   # all 10, in order
  c.pipeline.classes = '0,1,2'
  with pytest.raises(ValueError, match=r"pipeline.classes='0,1,2': 3 generator classes for the "
                                       r'10 classes of digits'):
    stages.generator_classes(c, 'gen')
  c.pipeline.classes = ','.join(map(str, range(10, 0, -1)))
  assert stages.generator_classes(c, 'gen') == list(range(10, 0, -1))

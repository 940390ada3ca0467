"""npz import: the samples of the file, from stored and deflated members."""
import os
import subprocess
import sys

import numpy as np
import pytest

import trainer_runs
from data.generation import import_npz
from data.records import shard_writer
from data.records import shards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 300


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  d = tmp_path_factory.mktemp('npz')
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (N, 6, 6, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, N).astype(np.int64)
  np.savez(d / 'plain.npz', image=images, label=labels)
  np.savez_compressed(d / 'packed.npz', image=images, label=labels)
  return d, images, labels


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
  # Many chunks even on a tiny file, so chunk boundaries are exercised.
  monkeypatch.setattr(import_npz, '_CHUNK_BYTES', 6 * 6 * 3 * 37)


def _check_same_samples(manifest, images, labels):
  examples = list(shards.read_examples(manifest))
  ids = np.array([e['id'] for e in examples])
  assert sorted(ids) == list(range(N))
  for e in examples:
    np.testing.assert_array_equal(e['image'], images[e['id']])
    assert e['label'] == labels[e['id']]
  return ids


@pytest.mark.parametrize('name,mapped', [('plain', True), ('packed', False)])
@pytest.mark.parametrize('shuffle', [False, True])
def test_import_gives_the_samples_of_the_file(source, tmp_path, name, mapped,
                                              shuffle):
  d, images, labels = source
  src = str(d / f'{name}.npz')
  assert import_npz.NpzMember(src, 'image').mapped == mapped
  manifest = import_npz.import_npz(src, str(tmp_path / 'out' / 'gen'),
                                   num_shards=4, shuffle=shuffle, seed=3,
                                   progress=False)
  ids = _check_same_samples(manifest, images, labels)
  meta = shards.load_manifest(manifest)
  assert meta['count'] == N and meta['num_classes'] == 10
  assert meta['image_shape'] == [6, 6, 3] and len(meta['shards']) == 4
  assert meta['generator'] == name
  if shuffle:
    assert (ids != np.arange(N)).any()
  else:
    np.testing.assert_array_equal(ids, np.arange(N))
  # Temporary files (decompressed copies, unfinished shards) are gone.
  assert sorted(os.listdir(tmp_path / 'out')) == sorted(
      [f'gen-0000{i}-of-00004.tfrecord' for i in range(4)] + ['gen.json'])


def test_memory_map_points_inside_the_zip(source):
  d, images, _ = source
  member = import_npz.NpzMember(str(d / 'plain.npz'), 'image')
  np.testing.assert_array_equal(member.rows(10, 20), images[10:20])
  index = np.array([250, 3, 77, 3])
  np.testing.assert_array_equal(member.take(index), images[index])
  stream = import_npz.NpzMember(str(d / 'packed.npz'), 'image')
  np.testing.assert_array_equal(stream.rows(0, 5), images[:5])
  np.testing.assert_array_equal(stream.rows(120, 130), images[120:130])
  np.testing.assert_array_equal(stream.rows(2, 4), images[2:4])   # rewinds
  with pytest.raises(ValueError, match='random access'):
    stream.take(index)


def test_command_line(source, tmp_path):
  d, images, labels = source
  out = str(tmp_path / 'cli' / 'ddpm')
  proc = subprocess.run(
      [sys.executable, '-m', 'trainer.import_npz', f'--npz={d / "packed.npz"}', '--out',
       out, '--shards', '3', '--shuffle', '--seed', '1', '--generator', 'ddpm',
       '--noprogress'],
      capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == out + '.json'
  _check_same_samples(out + '.json', images, labels)
  assert shards.load_manifest(out + '.json')['generator'] == 'ddpm'


def test_bad_inputs_are_rejected_clearly(tmp_path):
  """Every malformed npz is a ValueError naming the file and what is wrong (one console line)."""
  images = np.zeros((8, 4, 4, 3), np.uint8)
  nan = images.astype(np.float32)
  nan[0, 0, 0, 0] = np.nan
  np.savez(tmp_path / 'floats.npz', image=images.astype(np.float64), label=np.zeros(8, int))
  np.savez(tmp_path / 'nan.npz', image=nan, label=np.zeros(8, int))
  np.savez(tmp_path / 'rank.npz', image=images[..., 0], label=np.zeros(8, int))
  np.savez(tmp_path / 'short.npz', image=images, label=np.zeros(7, int))
  np.savez(tmp_path / 'nokey.npz', images=images, label=np.zeros(8, int))
  np.savez(tmp_path / 'range.npz', image=images, label=np.full(8, 12))
  np.savez(tmp_path / 'negative.npz', image=images, label=np.full(8, -1))
  np.savez(tmp_path / 'float_labels.npz', image=images, label=np.full(8, 0.5))
  np.savez(tmp_path / 'empty.npz', image=images[:0], label=np.zeros(0, int))
  np.savez(tmp_path / 'objects.npz', image=images,
           label=np.array([None] * 8, dtype=object))
  (tmp_path / 'text.npz').write_text('not a zip')
  out = str(tmp_path / 'out' / 'x')
  cases = [('floats', 'must be uint8 NHWC, got float64'),
           ('nan', 'must be uint8 NHWC, got float32'),
           ('rank', r'must be uint8 NHWC, got uint8 \(8, 4, 4\)'),
           ('short', '8 images but 7 labels'),
           ('nokey', r"no array 'image'; it has \['images', 'label'\] \(name the arrays with "
                     '--image_key'),
           ('range', r'labels span \[12, 12\], outside \[0, 10\)'),
           ('negative', r'labels span \[-1, -1\], outside \[0, 10\)'),
           ('float_labels', "'label' must be a 1-D integer array, got float64"),
           ('empty', "'image' holds no images"),
           ('objects', 'holds Python objects; refusing to unpickle'),
           ('text', 'is not an .npz file')]
  for name, message in cases:
    with pytest.raises(ValueError, match=f'{name}.npz.*{message}'):
      import_npz.import_npz(str(tmp_path / f'{name}.npz'), out, num_shards=2,
                            num_classes=10, progress=False)
  assert not os.path.exists(tmp_path / 'out')


@pytest.mark.integration
def test_a_bad_npz_is_one_console_line(tmp_path):
  (tmp_path / 'text.npz').write_text('not a zip')
  proc = trainer_runs.run_command(str(tmp_path), 'trainer.import_npz', '--npz=text.npz',
                                  '--out=gen/x', '--shards=2')
  trainer_runs.one_line_error(proc, 'text.npz is not an .npz file')
  assert not (tmp_path / 'gen').exists()


def test_crash_mid_import_leaves_no_valid_looking_set(source, tmp_path,
                                                      monkeypatch):
  d, _, _ = source
  calls = []
  original = shard_writer.ShardWriter.write_batch

  def failing(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 4:
      raise OSError('disk full')
    return original(self, *args, **kwargs)

  monkeypatch.setattr(shard_writer.ShardWriter, 'write_batch', failing)
  with pytest.raises(OSError, match='disk full'):
    import_npz.import_npz(str(d / 'plain.npz'), str(tmp_path / 'gen'),
                          num_shards=4, progress=False)
  assert os.listdir(tmp_path) == []


def test_import_writes_png_shards(source, tmp_path):
  d, images, labels = source
  path = import_npz.import_npz(str(d / 'plain.npz'), str(tmp_path / 'gen'), num_shards=2,
                               encoding='png', progress=False)
  assert path == str(tmp_path / 'gen.json')
  assert shards.load_manifest(path)['image_encoding'] == 'png'
  _check_same_samples(path, images, labels)   # lossless

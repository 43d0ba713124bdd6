"""atomic: a reader sees the old file or the new one, never a part, and no temporary is left."""

import os

import pytest

from prompt_tuning import storage


def test_atomic_write_replaces_whole(tmp_path):
  path = str(tmp_path / 'a.json')
  storage.write_atomic(path, 'old')
  storage.write_atomic(path, b'new')
  assert open(path).read() == 'new' and os.listdir(tmp_path) == ['a.json']


def test_atomic_save_keeps_the_old_file_when_the_writer_fails(tmp_path):
  path = str(tmp_path / 'sub' / 'p.bin')
  storage.save_atomic(path, lambda tmp: open(tmp, 'wb').write(b'first'))

  def broken(tmp):
    with open(tmp, 'wb') as f:
      f.write(b'half')
    raise OSError('disk full')
  with pytest.raises(OSError, match='disk full'):
    storage.save_atomic(path, broken)
  assert open(path, 'rb').read() == b'first'
  # What is left is recognisably a temporary, which model_dir.repair removes.
  assert [n for n in os.listdir(tmp_path / 'sub') if n != 'p.bin'] == [
      os.path.basename(storage.tmp_name(path))]
  assert storage.TMP_MARK in storage.tmp_name(path)

"""Where the tasks' data comes from: settings, errors, TFDS and local-file sources, row checks.

Settings (module state, set by the CLI, runs and tests): the vocabulary of the GLUE/SuperGLUE
tasks or its file, the local data folder of the `*_local` tasks ($PROMPT_TUNING_DATA_DIR) and
TFDS's data folder; `get_settings`/`restore_settings` save and put them back. The sources build
a split's tf.data.Dataset from TFDS or from a release file read eagerly in Python; `Row` checks
one row of such a file so that a bad row is a one-line DataFileError naming its file and line.
The benchmark modules (super_glue.py, glue.py, mrqa.py) hold the readers of their release files.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning import storage
from prompt_tuning.data import vocabularies

LOCAL_DATA_ENV = 'PROMPT_TUNING_DATA_DIR'
VOCAB_ENV = vocabularies.VOCAB_ENV  # 'PROMPT_TUNING_VOCAB'
TFDS_DOWNLOAD_ENV = 'PROMPT_TUNING_TFDS_DOWNLOAD'

_MAX_SHUFFLE_BUFFER = 100_000
_GZIP_MAGIC = b'\x1f\x8b'

_settings: dict[str, Any] = {'vocabulary': None, 'vocabulary_path': None,
                             'local_data_dir': None, 'tfds_data_dir': None}


class TfdsDataMissingError(FileNotFoundError):
  """A TFDS-sourced task was built but TFDS has no prepared copy of its data."""


class DataFileError(ValueError):
  """A local task file is malformed: one line, `<path>:<line>: <what is wrong> (<what to do>)`.

  Files are read eagerly in Python when a dataset is built (not inside tf.data), so this
  reaches the caller as itself; pipeline.py also unwraps it should tf.data tracing wrap it.
  """

  def __init__(self, message: str):
    super().__init__(message.replace('\n', ' '))  # a quoted value must not break the line


class DataFileMissingError(DataFileError, FileNotFoundError):
  """A local task file (or the local data folder) is not there."""


# Re-exported: the error a missing or unreadable SentencePiece model file raises.
VocabularyError = vocabularies.VocabularyError


# ================================== settings ==================================

def set_vocabulary(vocab: Optional[seqio.Vocabulary]) -> None:
  """Vocabulary of the GLUE/SuperGLUE tasks (None: back to T5's SentencePiece)."""
  _settings['vocabulary'] = vocab


def set_vocabulary_path(path: Optional[str | os.PathLike]) -> None:
  """T5 SentencePiece model file to use (None: $PROMPT_TUNING_VOCAB, else T5's gs:// file)."""
  _settings['vocabulary_path'] = os.fspath(path) if path else None


def text_vocabulary() -> seqio.Vocabulary:
  """The vocabulary the GLUE/SuperGLUE tasks use right now."""
  if _settings['vocabulary'] is not None:
    return _settings['vocabulary']
  return vocabularies.t5_vocabulary(_settings['vocabulary_path'] or os.environ.get(VOCAB_ENV))


def set_local_data_dir(path: Optional[str | os.PathLike]) -> None:
  """Folder holding `superglue/` and `glue/` release files for the `*_local` tasks."""
  _settings['local_data_dir'] = os.fspath(path) if path else None


def local_data_dir() -> Optional[str]:
  return _settings['local_data_dir'] or os.environ.get(LOCAL_DATA_ENV) or None


def set_tfds_data_dir(path: Optional[str | os.PathLike]) -> None:
  """TFDS data_dir for the TFDS-sourced tasks (None: $TFDS_DATA_DIR, else TFDS's default)."""
  _settings['tfds_data_dir'] = os.fspath(path) if path else None


def tfds_data_dir() -> Optional[str]:
  return _settings['tfds_data_dir'] or os.environ.get('TFDS_DATA_DIR') or None


def get_settings() -> dict[str, Any]:
  """A copy of the settings above (vocabulary, its path, local and TFDS data folders), e.g. to
  put them back with `restore_settings` after a test or tool changed them."""
  return dict(_settings)


def restore_settings(saved: dict[str, Any]) -> None:
  """Puts back settings that `get_settings` returned."""
  unknown = set(saved) - set(_settings)
  if unknown:
    raise ValueError(f'not settings of the tasks: {sorted(unknown)} (expected '
                     f'{sorted(_settings)}, as get_settings returns them).')
  _settings.update(saved)


# =================================== sources ==================================

class Source(seqio.FunctionDataSource):
  """FunctionDataSource without its per-call "uncached dataset" warning.

  Our sources shuffle the whole split (seeded, reshuffled each epoch), which is what that
  warning asks for.
  """

  def get_dataset(self, split='train', shuffle=True, seed=None, shard_info=None, **unused):
    if shard_info and shard_info.num_shards > 1:
      raise ValueError('shard at the example level (seqio does this for this source).')
    return self._dataset_fn(split=split, shuffle_files=shuffle, seed=seed)


def shuffled(ds: tf.data.Dataset, size: int, shuffle: bool, seed: Optional[int]):
  return ds.shuffle(size, seed=seed, reshuffle_each_iteration=True) if shuffle else ds


def _columns(examples: Sequence[dict]) -> dict:
  """Rows (TFDS schema) -> columns for from_tensor_slices; nested dicts stay nested."""
  columns: dict[str, Any] = {}
  for key, first in examples[0].items():
    values = [ex[key] for ex in examples]
    if isinstance(first, dict):
      columns[key] = _columns(values)
    elif isinstance(first, (list, tuple)):
      columns[key] = tf.ragged.constant(values, dtype=tf.string, ragged_rank=1)
    elif isinstance(first, str):
      columns[key] = np.array(values, dtype=object)
    elif key == 'label' and isinstance(first, float):
      columns[key] = np.array(values, np.float32)
    elif key == 'label':
      columns[key] = np.array(values, np.int64)
    else:
      columns[key] = np.array(values, np.int32)
  return columns


def tfds_dataset(tfds_name: str, tfds_splits: dict[str, str], local_name: str,
                  train_filter: Optional[Callable], split: str, shuffle_files: bool,
                  seed: Optional[int] = None) -> tf.data.Dataset:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  data_dir = tfds_data_dir()
  hint = (f'Offline, use the task {local_name!r}, which reads the official release files '
          f'from ${LOCAL_DATA_ENV}; or prepare it with `tfds build {tfds_name}`, or set '
          f'{TFDS_DOWNLOAD_ENV}=1 to let TFDS download it.')
  try:
    builder = tfds.builder(tfds_name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except  # TFDS raises several kinds
    raise TfdsDataMissingError(f'TFDS cannot load {tfds_name}: {e}. {hint}') from e
  if not builder.is_prepared():
    if os.environ.get(TFDS_DOWNLOAD_ENV, '') in ('1', 'true', 'True'):
      builder.download_and_prepare()
    else:
      raise TfdsDataMissingError(
          f'TFDS has no prepared copy of {tfds_name} under {builder.data_dir_root} '
          f'(TFDS_DATA_DIR / set_tfds_data_dir). {hint}')
  tfds_split = tfds_splits[split]
  ds = builder.as_dataset(split=tfds_split, shuffle_files=shuffle_files,
                          read_config=tfds.ReadConfig(shuffle_seed=seed))
  if train_filter is not None and split == 'train':
    ds = ds.filter(train_filter)
  # TFDS only shuffles files; shuffle examples too (bounded buffer for MNLI/QQP's ~400k).
  size = builder.info.splits[tfds_split].num_examples
  return shuffled(ds, min(size, _MAX_SHUFFLE_BUFFER), shuffle_files, seed)


def _local_path(*parts: str) -> str:
  root = local_data_dir()
  if root is None:
    raise DataFileMissingError(
        f'No local data folder is set: expected {os.path.join("<DIR>", *parts)}. Set '
        f'${LOCAL_DATA_ENV} or call prompt_tuning.data.tasks.set_local_data_dir(DIR).')
  path = storage.join(root, *parts)
  try:
    found = storage.isfile(path)  # a URL (gs://...): read through storage
    if not found:  # a URL's missing bucket is named (nothing is written)
      storage.check_writable(root, f'local data folder (${LOCAL_DATA_ENV})')
  except storage.StorageError as e:
    raise DataFileMissingError(str(e)) from None
  if not found:
    raise DataFileMissingError(
        f'{path}: file not found (local data folder {root!r} from ${LOCAL_DATA_ENV} / '
        f'set_local_data_dir; expected the official release file there).')
  return path


def read_local(relative_paths: dict[str, tuple[str, ...]], reader: Callable[[str, bool], list],
                train_filter: Optional[Callable[[dict], bool]], split: str) -> list[dict]:
  path = _local_path(*relative_paths[split])
  # Train/validation rows must have labels (else T5 trains/scores on '<unk>'); test rows may not.
  examples = reader(path, not split.startswith('test'))
  if train_filter is not None and split == 'train':
    examples = [ex for ex in examples if train_filter(ex)]
  if not examples:
    raise DataFileError(f'{path}: no examples for the {split!r} split (expected the official '
                        f'release file, one example per line).')
  return examples


def local_dataset(relative_paths: dict[str, tuple[str, ...]],
                   reader: Callable[[str, bool], list],
                   train_filter: Optional[Callable[[dict], bool]], split: str,
                   shuffle_files: bool, seed: Optional[int] = None) -> tf.data.Dataset:
  examples = read_local(relative_paths, reader, train_filter, split)
  ds = tf.data.Dataset.from_tensor_slices(_columns(examples))
  return shuffled(ds, len(examples), shuffle_files, seed)


# ============================ local readers (TFDS schema) ============================

def text_lines(path: str, first_encoding: str = 'utf-8'):
  """Yields (1-based line number, decoded line); a line that is not UTF-8 is a DataFileError.

  A gzipped file (MRQA's `.jsonl.gz`) is decompressed as it is read; corrupt or truncated gzip
  data is a DataFileError naming the line where it broke."""
  try:
    # A URL's object is read whole (task files are small) and parsed as a local file is.
    f = io.BytesIO(storage.read_bytes(path)) if storage.is_remote(path) else open(path, 'rb')
  except storage.StorageError as e:
    raise DataFileError(str(e)) from e
  except OSError as e:
    raise DataFileError(f'{path}: cannot read it: {e.strerror or e} (check the file and its '
                        f'permissions).') from e
  with f:
    gzipped = f.read(2) == _GZIP_MAGIC  # by content: a gunzipped copy keeps working too
    f.seek(0)
    lines = gzip.GzipFile(fileobj=f) if gzipped else f
    n = 0
    try:
      for n, raw in enumerate(lines, 1):
        try:
          yield n, raw.decode(first_encoding if n == 1 else 'utf-8')
        except UnicodeDecodeError as e:
          raise DataFileError(f'{path}:{n}: not UTF-8 text (byte {e.start + 1} of the line); '
                              f'fix or remove this line (the release files are UTF-8).') from e
    except (OSError, EOFError, zlib.error) as e:
      if not gzipped:
        raise
      raise DataFileError(f'{path}:{n + 1}: the gzip data is corrupt or cut short ({e}); '
                          f'download the file again.') from e


def iter_jsonl(path: str) -> Iterator[tuple[int, Any]]:
  """(line number, parsed value) of each non-blank line, one at a time (a gzipped file is read
  through gzip); bad JSON names the file's line."""
  # utf-8-sig on line 1: a BOM there is an editor's artefact, not a JSON error.
  for n, line in text_lines(path, 'utf-8-sig'):
    if not line.strip():
      continue
    try:
      # Without the newline, a line cut short reads 'Unterminated string', not a control char.
      value = json.loads(line.rstrip('\r\n'))
    except json.JSONDecodeError as e:
      msg = e.msg[:-3] if e.msg.endswith(' at') else e.msg
      raise DataFileError(f'{path}:{n}: invalid JSON: {msg} at column {e.colno} (each line '
                          f'must hold one complete JSON object; fix or remove this line, e.g. '
                          f'one cut short by an interrupted copy).') from e
    yield n, value


def read_jsonl(path: str) -> list[tuple[int, Any]]:
  """iter_jsonl's (line number, parsed value) pairs, as a list."""
  return list(iter_jsonl(path))


_KINDS = {str: 'a string', int: 'an integer', list: 'a list', dict: 'an object'}


def _kind_of(value: Any) -> str:
  if value is None:
    return 'null'
  if isinstance(value, bool):
    return 'a boolean'
  for kind, name in _KINDS.items():
    if isinstance(value, kind):
      return name
  return type(value).__name__


def short_repr(value: Any) -> str:
  text = repr(value)
  return text if len(text) <= 60 else text[:57] + '...'


class Row:
  """Checks one row of a local file; errors name the file, the line and what the task needs."""

  def __init__(self, path: str, line: int, needs: str):
    self.path, self.line, self.needs = path, line, needs

  def error(self, what: str, todo: Optional[str] = None) -> DataFileError:
    return DataFileError(f'{self.path}:{self.line}: {what} ({todo or self.needs}; fix or '
                         f'remove this line).')

  def object(self, value: Any, name: str = 'the row') -> dict:
    if not isinstance(value, dict):
      raise self.error(f'{name} is {_kind_of(value)}, not a JSON object')
    return value

  def get(self, obj: dict, key: str, kind: type, prefix: str = '') -> Any:
    if key not in obj:
      raise self.error(f'missing field {prefix + key!r}')
    return self.value(obj[key], kind, f'field {prefix + key!r}')

  def value(self, value: Any, kind: type, name: str) -> Any:
    """`value` if it is a `kind` (str, int, list, dict), else an error calling it `name`."""
    # bool is an int in Python, but a JSON true is no index or text.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
      raise self.error(f'{name} is {_kind_of(value)} {short_repr(value)}, not {_KINDS[kind]}')
    return value

  def label(self, obj: dict, labeled: bool, classes: Sequence[Any], prefix: str = '') -> int:
    """Class id of obj['label'] among `classes` (True/False: also 1/0); -1 when unlabeled."""
    value = obj.get('label')
    if value is None:
      if labeled:
        raise self.error(f'missing field {prefix + "label"!r}',
                         f'train/validation rows need a label; {self.needs}')
      return -1
    for i, cls in enumerate(classes):
      # Exact type match: the string 'False' is no boolean, and True is not the COPA choice 1.
      if value == cls and (type(value) is type(cls) or (
          isinstance(cls, bool) and type(value) is int)):
        return i
    allowed = ', '.join(json.dumps(c) for c in classes)
    raise self.error(f'{prefix}label {short_repr(value)} is not one of the classes {allowed}',
                     'use one of the task\'s classes')

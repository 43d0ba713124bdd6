"""SeqIO tasks: GLUE, SuperGLUE (TFDS or local release files) and the offline quickstart.

Importing this module registers (idempotently):

  super_glue_{boolq,cb,copa,multirc,record,rte,wic,wsc}          TFDS super_glue/<task>:1.0.2
  glue_{cola,sst2,mrpc,qqp,stsb,mnli,qnli,rte}                   TFDS glue/<task>:2.0.0
  glue_mnli_matched, glue_mnli_mismatched                        validation only (as T5's)
  <each of the above>_local                                      the official files in a folder
  taskless_<each of the above>                                   without the leading task name
  quickstart_{first,last,max,min}, quickstart_<op>_taskless, quickstart_mixture,
  quickstart_taskless_mixture (first + max without prefixes: multi-task prompt tuning)

Splits are 'train' and 'validation'. `glue_mnli` also has 'validation_matched' and
'validation_mismatched' ('validation' is the matched one).

`super_glue_wsc` is T5's "simple" WSC: the model names the pronoun's referent. Its 'train' split
is T5's `super_glue_wsc_v102_simple_train` (only examples whose candidate is the true referent),
its 'validation' split T5's `super_glue_wsc_v102_simple_eval` (every example, scored by
whether the named referent is the candidate, compared with the label).

Local files (folder from `set_local_data_dir` or $PROMPT_TUNING_DATA_DIR, read when a dataset
is built): `superglue/<Task>/{train,val}.jsonl` with SuperGLUE's folder names and
`glue/<Task>/{train,dev}.tsv` (MNLI: dev_matched.tsv / dev_mismatched.tsv) as GLUE ships them.
The folder may be a URL (gs://bucket/prefix): the files are read through prompt_tuning.storage.
They are converted to the TFDS schema, so both sources give the same text
(`set_local_file` points a split at another file, e.g. MRPC's tokenized copy). Every field a
task reads is checked as the file is read: a bad row raises a one-line DataFileError
`<path>:<line>: <what is wrong> (<what to do>)` (TFDS would drop a GLUE row with a missing
column; here it is an error too). `validate_task_data` and `check_vocabulary` raise these
errors (and VocabularyError) up front, before a run writes anything.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import functools
import io
import json
import logging
import os
import zlib
from typing import Any, Callable, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning import storage
from prompt_tuning.data import metrics, postprocessors, preprocessors, vocabularies

log = logging.getLogger('prompt_tuning')

LOCAL_DATA_ENV = 'PROMPT_TUNING_DATA_DIR'
VOCAB_ENV = vocabularies.VOCAB_ENV  # 'PROMPT_TUNING_VOCAB'
TFDS_DOWNLOAD_ENV = 'PROMPT_TUNING_TFDS_DOWNLOAD'

_MAX_SHUFFLE_BUFFER = 100_000

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


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  labels: Optional[tuple[str, ...]]  # verbalizers in class-id order; None for free text
  main_metric: str  # the metric key used to pick the best checkpoint
  benchmark: str  # 'super_glue' | 'glue' | 'quickstart'


TASK_INFO: dict[str, TaskInfo] = {}

# name -> pure-Python formatter (TFDS-schema example -> formatted examples), for tests and tools.
_FORMATTERS: dict[str, Callable[[dict], list[dict]]] = {}  # pure-Python `format_example`s
# name -> ({split: path parts}, reader, train filter) of every `*_local` task.
_LOCAL: dict[str, tuple] = {}


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


def set_local_file(name: str, split: str, relative_path: str) -> None:
  """Reads `split` of the local task `name` (and its taskless variant) from another file.

  E.g. MRPC: TFDS's glue/mrpc has the tokenized MSR text; to get T5's exact inputs offline use
  `set_local_file('glue_mrpc_local', 'validation', 'glue/MRPC/dev_tokenized_lmbff.tsv')`.
  """
  if name not in _LOCAL:
    raise ValueError(f'{name!r} is not a `*_local` task.')
  files = _LOCAL[name][0]
  if split not in files:
    raise ValueError(f'{name!r} has no split {split!r} (splits: {sorted(files)}).')
  files[split] = tuple(relative_path.replace('\\', '/').split('/'))


def set_tfds_data_dir(path: Optional[str | os.PathLike]) -> None:
  """TFDS data_dir for the TFDS-sourced tasks (None: $TFDS_DATA_DIR, else TFDS's default)."""
  _settings['tfds_data_dir'] = os.fspath(path) if path else None


def tfds_data_dir() -> Optional[str]:
  return _settings['tfds_data_dir'] or os.environ.get('TFDS_DATA_DIR') or None


_TEXT_VOCAB = vocabularies.DeferredVocabulary(text_vocabulary)
_BYTE_VOCAB = vocabularies.byte_vocabulary()


def _features(vocab: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  return {'inputs': seqio.Feature(vocab, add_eos=True),
          'targets': seqio.Feature(vocab, add_eos=True)}


# =================================== sources ==================================

class _Source(seqio.FunctionDataSource):
  """FunctionDataSource without its per-call "uncached dataset" warning.

  Our sources shuffle the whole split (seeded, reshuffled each epoch), which is what that
  warning asks for.
  """

  def get_dataset(self, split='train', shuffle=True, seed=None, shard_info=None, **unused):
    if shard_info and shard_info.num_shards > 1:
      raise ValueError('shard at the example level (seqio does this for this source).')
    return self._dataset_fn(split=split, shuffle_files=shuffle, seed=seed)


def _shuffled(ds: tf.data.Dataset, size: int, shuffle: bool, seed: Optional[int]):
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


def _tfds_dataset(tfds_name: str, tfds_splits: dict[str, str], local_name: str,
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
  return _shuffled(ds, min(size, _MAX_SHUFFLE_BUFFER), shuffle_files, seed)


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


def _read_local(relative_paths: dict[str, tuple[str, ...]], reader: Callable[[str, bool], list],
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


def _local_dataset(relative_paths: dict[str, tuple[str, ...]],
                   reader: Callable[[str, bool], list],
                   train_filter: Optional[Callable[[dict], bool]], split: str,
                   shuffle_files: bool, seed: Optional[int] = None) -> tf.data.Dataset:
  examples = _read_local(relative_paths, reader, train_filter, split)
  ds = tf.data.Dataset.from_tensor_slices(_columns(examples))
  return _shuffled(ds, len(examples), shuffle_files, seed)


# ============================ local readers (TFDS schema) ============================

def _text_lines(path: str, first_encoding: str = 'utf-8'):
  """Yields (1-based line number, decoded line); a line that is not UTF-8 is a DataFileError."""
  try:
    # A URL's object is read whole (task files are small) and parsed as a local file is.
    f = io.BytesIO(storage.read_bytes(path)) if storage.is_remote(path) else open(path, 'rb')
  except storage.StorageError as e:
    raise DataFileError(str(e)) from e
  except OSError as e:
    raise DataFileError(f'{path}: cannot read it: {e.strerror or e} (check the file and its '
                        f'permissions).') from e
  with f:
    for n, raw in enumerate(f, 1):
      try:
        yield n, raw.decode(first_encoding if n == 1 else 'utf-8')
      except UnicodeDecodeError as e:
        raise DataFileError(f'{path}:{n}: not UTF-8 text (byte {e.start + 1} of the line); '
                            f'fix or remove this line (the release files are UTF-8).') from e


def _read_jsonl(path: str) -> list[tuple[int, Any]]:
  """(line number, parsed value) of each non-blank line; bad JSON names the file's line."""
  out = []
  # utf-8-sig on line 1: a BOM there is an editor's artefact, not a JSON error.
  for n, line in _text_lines(path, 'utf-8-sig'):
    if not line.strip():
      continue
    try:
      # Without the newline, a line cut short reads 'Unterminated string', not a control char.
      out.append((n, json.loads(line.rstrip('\r\n'))))
    except json.JSONDecodeError as e:
      msg = e.msg[:-3] if e.msg.endswith(' at') else e.msg
      raise DataFileError(f'{path}:{n}: invalid JSON: {msg} at column {e.colno} (each line '
                          f'must hold one complete JSON object; fix or remove this line, e.g. '
                          f'one cut short by an interrupted copy).') from e
  return out


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


def _short(value: Any) -> str:
  text = repr(value)
  return text if len(text) <= 60 else text[:57] + '...'


class _Row:
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
    value = obj[key]
    # bool is an int in Python, but a JSON true is no index or text.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
      raise self.error(f'field {prefix + key!r} is {_kind_of(value)} {_short(value)}, not '
                       f'{_KINDS[kind]}')
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
    raise self.error(f'{prefix}label {_short(value)} is not one of the classes {allowed}',
                     'use one of the task\'s classes')


_JSON_BOOL = (False, True)  # SuperGLUE writes booleans (MultiRC: 0/1); TFDS class ids 0/1
_COPA_CHOICES = (0, 1)


def _superglue_needs(task: str) -> str:
  fields = {
      'multirc': 'idx, passage: {text, questions: [{idx, question, answers: [{idx, text, '
                 'label}]}]}',
      'record': 'idx, passage: {text, entities: [{start, end}]}, qas: [{idx, query, answers: '
                '[{text}]}]',
      'wsc': 'idx, text, target: {span1_index, span1_text, span2_index, span2_text}, label',
  }.get(task) or ', '.join(('idx',) + _SUPERGLUE_FEATURES[task] + ('label',))
  return f'SuperGLUE {_SUPERGLUE_FOLDERS[task]} rows need {fields}'


def _fix_wsc_spans(ex: dict) -> dict:
  """TFDS `wsc.fixed`: make span texts substrings of the text (case, trailing '.', newlines)."""
  ex = dict(ex)
  for span in ('span1', 'span2'):
    text, index = ex[f'{span}_text'], ex[f'{span}_index']
    if text in ex['text'] or text in ('Kamenev and Zinoviev', 'Kamenev, Zinoviev, and Stalin'):
      continue
    if 'theyscold' in text:
      ex['span2_index'] = 10  # TFDS sets this and (by a no-op) leaves the text as it is
    first_word = ex['text'].split()[index]
    text = (text[0].lower() if first_word[0].islower() else text[0].upper()) + text[1:]
    text = text.rstrip('.').replace('\n', ' ')
    if text not in ex['text']:
      raise ValueError(f'WSC span {text!r} is not in the text {ex["text"]!r}')
    ex[f'{span}_text'] = text
  return ex


def _superglue_reader(task: str, label_classes: Sequence[str]) -> Callable[[str, bool], list]:
  """Reader of SuperGLUE's official JSONL giving TFDS's super_glue examples.

  Every field the task reads is checked as the row is read, so a bad row is reported with its
  file and line here rather than as a KeyError or a tf.data error later.
  """

  def multirc(row: dict, check: _Row, labeled: bool) -> list[dict]:
    idx = check.get(row, 'idx', int)
    passage = check.get(row, 'passage', dict)
    text = check.get(passage, 'text', str, 'passage.')
    out = []
    for i, question in enumerate(check.get(passage, 'questions', list, 'passage.')):
      where = f'passage.questions[{i}].'
      question = check.object(question, where[:-1])
      q_text = check.get(question, 'question', str, where)
      q_idx = check.get(question, 'idx', int, where)
      for j, answer in enumerate(check.get(question, 'answers', list, where)):
        at = f'{where}answers[{j}].'
        answer = check.object(answer, at[:-1])
        out.append({'paragraph': text, 'question': q_text,
                    'answer': check.get(answer, 'text', str, at),
                    'label': check.label(answer, labeled, _JSON_BOOL, at),
                    'idx': {'paragraph': idx, 'question': q_idx,
                            'answer': check.get(answer, 'idx', int, at)}})
    return out

  def record(row: dict, check: _Row, labeled: bool) -> list[dict]:
    idx = check.get(row, 'idx', int)
    passage = check.get(row, 'passage', dict)
    text = check.get(passage, 'text', str, 'passage.')
    entities = set()
    for i, entity in enumerate(check.get(passage, 'entities', list, 'passage.')):
      at = f'passage.entities[{i}].'
      entity = check.object(entity, at[:-1])
      entities.add(text[check.get(entity, 'start', int, at):check.get(entity, 'end', int, at) + 1])
    out = []
    for i, qa in enumerate(check.get(row, 'qas', list)):
      at = f'qas[{i}].'
      qa = check.object(qa, at[:-1])
      if 'answers' in qa or labeled:  # the answers are ReCoRD's labels
        answers = check.get(qa, 'answers', list, at)
      else:
        answers = []
      texts = {check.get(check.object(a, f'{at}answers[{j}]'), 'text', str, f'{at}answers[{j}].')
               for j, a in enumerate(answers)}
      out.append({'passage': text, 'query': check.get(qa, 'query', str, at),
                  'entities': sorted(entities), 'answers': sorted(texts),
                  'idx': {'passage': idx, 'query': check.get(qa, 'idx', int, at)}})
    return out

  def wsc(row: dict, check: _Row, labeled: bool) -> list[dict]:
    target = check.get(row, 'target', dict)
    ex = {'text': check.get(row, 'text', str)}
    for key in ('span1_index', 'span2_index'):
      ex[key] = check.get(target, key, int, 'target.')
    for key in ('span1_text', 'span2_text'):
      ex[key] = check.get(target, key, str, 'target.')
    try:
      ex = _fix_wsc_spans(ex)
      preprocessors.wsc_blanked_text(ex)  # what the tf.data preprocessor asserts, said earlier
    except (ValueError, IndexError) as e:
      raise check.error(f'bad WSC spans: {e}', 'span2_index must be the word index of '
                        'span2_text in text, split on spaces') from e
    return [{**ex, 'idx': check.get(row, 'idx', int),
             'label': check.label(row, labeled, _JSON_BOOL)}]

  def simple(row: dict, check: _Row, labeled: bool) -> list[dict]:
    ex = {k: check.get(row, k, int if k[:-1] in ('start', 'end') else str)
          for k in _SUPERGLUE_FEATURES[task]}
    ex['idx'] = check.get(row, 'idx', int)
    classes = {'copa': _COPA_CHOICES, 'cb': tuple(label_classes),
               'rte': tuple(label_classes)}.get(task, _JSON_BOOL)
    ex['label'] = check.label(row, labeled, classes)
    return [ex]

  examples_of = {'multirc': multirc, 'record': record, 'wsc': wsc}.get(task, simple)

  def read(path: str, labeled: bool = True) -> list[dict]:
    needs = _superglue_needs(task)
    out = []
    for line, row in _read_jsonl(path):
      check = _Row(path, line, needs)
      out.extend(examples_of(check.object(row), check, labeled))
    return out

  return read


def _glue_reader(task: str, text_features: dict[str, str], label_column: str,
                 label_classes: Optional[Sequence[str]]) -> Callable[[str, bool], list]:
  """Reader of a GLUE release TSV giving TFDS's glue examples (idx = row).

  TFDS silently drops rows with a missing column; here they are errors naming the line, as are
  labels that are not the task's classes (train/validation need labels; test rows may lack
  them as in TFDS). QQP is the exception: its official files hold malformed rows, which TFDS
  and this reader drop (with a warning giving their count).
  """

  def read(path: str, labeled: bool = True) -> list[dict]:
    folder = _GLUE[task][1]
    # utf-8-sig: MRPC's header starts with a BOM that would otherwise rename 'Quality'.
    lines = _text_lines(path, 'utf-8-sig')
    rows = csv.reader((line for _, line in lines), delimiter='\t', quoting=csv.QUOTE_NONE)
    if task == 'cola':  # no header: source, label, original label, sentence
      columns = {'is_acceptable': 1, 'sentence': 3}
      needs = f'GLUE {folder} rows need 4 tab-separated columns: source, label, note, sentence'
    else:
      header = next((r for r in rows if r), None)
      if header is None:
        raise DataFileError(f'{path}: empty file (expected the official GLUE release file '
                            f'with a header line).')
      columns = {name: i for i, name in enumerate(header)}  # as DictReader: the last one wins
      wanted = list(text_features.values()) + [label_column]
      needs = f'GLUE {folder} rows need the tab-separated columns {", ".join(wanted)}'
      for column in wanted:
        if column not in columns and (column != label_column or labeled):
          raise DataFileError(
              f'{path}:{rows.line_num}: the header has no column {column!r} ({needs}; use the '
              f'official GLUE release file).')
    out, n, dropped = [], -1, 0
    try:
      for row in rows:
        if not row:
          continue  # blank line (DictReader skips them too)
        n += 1  # TFDS's idx: the row's position, counting rows it drops
        if task == 'qqp' and len(row) < len(columns):
          dropped += 1
          continue
        check = _Row(path, rows.line_num, needs)
        ex: dict[str, Any] = {feature: _cell(row, columns, column, check)
                              for feature, column in text_features.items()}
        ex['idx'] = n
        if label_column not in columns:
          ex['label'] = -1  # a test file: no label column
        else:
          label = _glue_label(_cell(row, columns, label_column, check), label_classes, check,
                              labeled)
          if label is None:
            continue  # unlabeled (test) row with an empty label: TFDS drops it
          ex['label'] = label
        out.append(ex)
    except csv.Error as e:
      raise DataFileError(f'{path}:{rows.line_num}: {e} (fix or remove this line).') from e
    if dropped:
      log.warning('%s: dropped %d malformed row(s) with missing columns, as TFDS does.', path,
                  dropped)
    return out

  return read


def _cell(row: list[str], columns: dict[str, int], column: str, check: _Row) -> str:
  i = columns[column]
  if i >= len(row):
    raise check.error(f'the row has {len(row)} tab-separated columns, so no {column!r} '
                      f'(column {i + 1})')
  return row[i]


def _glue_label(text: str, label_classes: Optional[Sequence[str]], check: _Row,
                labeled: bool) -> Optional[float | int]:
  """TFDS's label of a GLUE cell: class name or id (STS-B: a float score); None if empty."""
  if not text:
    if labeled:
      raise check.error('empty label', f'train/validation rows need a label; {check.needs}')
    return None
  if label_classes is None:  # STS-B: a float score
    try:
      return float(np.float32(text))
    except ValueError:
      raise check.error(f'score {_short(text)} is not a number',
                        'STS-B scores are numbers from 0 to 5') from None
  if text in label_classes:
    return list(label_classes).index(text)
  if text.strip().isdigit() and int(text) < len(label_classes):
    return int(text)
  raise check.error(f'label {_short(text)} is not one of the classes '
                    f'{", ".join(label_classes)} or their ids 0-{len(label_classes) - 1}',
                    'use one of the task\'s classes')


# ================================ task specs ================================

_SUPERGLUE_FEATURES = {
    'boolq': ('question', 'passage'),
    'cb': ('premise', 'hypothesis'),
    'copa': ('premise', 'choice1', 'choice2', 'question'),
    'rte': ('premise', 'hypothesis'),
    'wic': ('word', 'sentence1', 'sentence2', 'start1', 'start2', 'end1', 'end2'),
}
_SUPERGLUE_FOLDERS = {'boolq': 'BoolQ', 'cb': 'CB', 'copa': 'COPA', 'multirc': 'MultiRC',
                      'record': 'ReCoRD', 'rte': 'RTE', 'wic': 'WiC', 'wsc': 'WSC'}
_BOOL = ('False', 'True')
_SUPERGLUE_LABELS = {'boolq': _BOOL, 'cb': ('entailment', 'contradiction', 'neutral'),
                     'copa': ('choice1', 'choice2'), 'multirc': _BOOL, 'record': None,
                     'rte': ('entailment', 'not_entailment'), 'wic': _BOOL, 'wsc': None}

# name -> (TFDS config, folder, {split: file}, text features {feature: column}, label column,
#          label classes (None: float score), benchmark prefix)
_GLUE = {
    'cola': ('cola', 'CoLA', None, {'sentence': 'sentence'}, 'is_acceptable',
             ('unacceptable', 'acceptable')),
    'sst2': ('sst2', 'SST-2', None, {'sentence': 'sentence'}, 'label', ('negative', 'positive')),
    'mrpc': ('mrpc', 'MRPC', None, {'sentence1': '#1 String', 'sentence2': '#2 String'},
             'Quality', ('not_equivalent', 'equivalent')),
    'qqp': ('qqp', 'QQP', None, {'question1': 'question1', 'question2': 'question2'},
            'is_duplicate', ('not_duplicate', 'duplicate')),
    'stsb': ('stsb', 'STS-B', None, {'sentence1': 'sentence1', 'sentence2': 'sentence2'},
             'score', None),
    'mnli': ('mnli', 'MNLI',
             {'train': 'train.tsv', 'validation': 'dev_matched.tsv',
              'validation_matched': 'dev_matched.tsv',
              'validation_mismatched': 'dev_mismatched.tsv'},
             {'premise': 'sentence1', 'hypothesis': 'sentence2'}, 'gold_label',
             ('entailment', 'neutral', 'contradiction')),
    'mnli_matched': ('mnli_matched', 'MNLI', {'validation': 'dev_matched.tsv'},
                     {'premise': 'sentence1', 'hypothesis': 'sentence2'}, 'gold_label',
                     ('entailment', 'neutral', 'contradiction')),
    'mnli_mismatched': ('mnli_mismatched', 'MNLI', {'validation': 'dev_mismatched.tsv'},
                        {'premise': 'sentence1', 'hypothesis': 'sentence2'}, 'gold_label',
                        ('entailment', 'neutral', 'contradiction')),
    'qnli': ('qnli', 'QNLI', None, {'question': 'question', 'sentence': 'sentence'}, 'label',
             ('entailment', 'not_entailment')),
    'rte': ('rte', 'RTE', None, {'sentence1': 'sentence1', 'sentence2': 'sentence2'}, 'label',
            ('entailment', 'not_entailment')),
}
_GLUE_TFDS_SPLITS = {'mnli': {'train': 'train', 'validation': 'validation_matched',
                              'validation_matched': 'validation_matched',
                              'validation_mismatched': 'validation_mismatched'},
                     'mnli_matched': {'validation': 'validation'},
                     'mnli_mismatched': {'validation': 'validation'}}


def _superglue_classes(task: str) -> tuple[str, ...]:
  """The label words of a SuperGLUE classification task (ReCoRD and WSC have none)."""
  labels = _SUPERGLUE_LABELS[task]
  if labels is None:
    raise ValueError(f'super_glue_{task} has no label classes.')
  return labels


def _classification(labels: Sequence[str]):
  return functools.partial(postprocessors.string_label_to_class_id, label_classes=tuple(labels))


def _superglue_eval(task: str):
  """(postprocess_fn, metric_fns, main metric) as T5's glue_utils for SuperGLUE."""
  if task == 'cb':
    return (_classification(_superglue_classes(task)),
            [metrics.mean_multiclass_f1(3), metrics.accuracy], 'mean_3class_f1')
  if task == 'multirc':
    return (postprocessors.multirc,
            [metrics.multirc_f1_over_all_answers, metrics.multirc_exact_match], 'f1')
  if task == 'record':
    return postprocessors.record, [metrics.record], 'em'
  if task == 'wsc':
    return postprocessors.wsc_simple, [metrics.accuracy], 'accuracy'
  return _classification(_superglue_classes(task)), [metrics.accuracy], 'accuracy'


def _glue_eval(task: str, labels):
  base = 'mnli' if task.startswith('mnli') else task
  if base == 'stsb':
    return (postprocessors.string_to_float,
            [metrics.pearson_corrcoef, metrics.spearman_corrcoef], 'pearson_corrcoef')
  if base == 'cola':
    return _classification(labels), [metrics.matthews_corrcoef], 'matthews_corrcoef'
  if base in ('mrpc', 'qqp'):
    return _classification(labels), [metrics.f1_score_with_invalid, metrics.accuracy], 'f1'
  return _classification(labels), [metrics.accuracy], 'accuracy'


def _superglue_text_preprocessor(task: str):
  if task == 'record':
    return preprocessors.record
  if task == 'wsc':
    return preprocessors.wsc_simple
  feature_names = {'multirc': ('question', 'answer', 'paragraph'),
                   'wic': ('sentence1', 'sentence2', 'word')}.get(task)  # T5's orders
  return functools.partial(preprocessors.glue, benchmark_name=task,
                           label_names=_superglue_classes(task), feature_names=feature_names)


def _superglue_formatter(task: str) -> Callable[[dict], list[dict]]:
  if task == 'record':
    return preprocessors.record_text
  if task == 'wsc':
    return lambda ex: [preprocessors.wsc_simple_text(ex)]
  feature_names = {'multirc': ('question', 'answer', 'paragraph'),
                   'wic': ('sentence1', 'sentence2', 'word')}.get(task)
  labels = _superglue_classes(task)
  return lambda ex: [preprocessors.glue_text(ex, task, labels, feature_names)]


def _glue_formatter(task: str, labels) -> Callable[[dict], list[dict]]:
  if task == 'stsb':
    return lambda ex: [preprocessors.stsb_text(ex)]
  benchmark = 'mnli' if task.startswith('mnli') else task
  return lambda ex: [preprocessors.glue_text(ex, benchmark, labels)]


def _glue_text_preprocessor(task: str, labels):
  if task == 'stsb':
    return preprocessors.stsb
  benchmark = 'mnli' if task.startswith('mnli') else task
  return functools.partial(preprocessors.glue, benchmark_name=benchmark, label_names=labels)


def _wsc_train_filter_tf(x):
  # T5 trains WSC only on examples whose candidate is the true referent.
  return tf.cast(x['label'], tf.bool)


def _add_task(name: str, source: seqio.DataSource, text_preprocessors: list, vocab,
              postprocess_fn, metric_fns, info: TaskInfo) -> None:
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)  # idempotent re-import (e.g. importlib.reload)
  seqio.TaskRegistry.add(
      name, source=source,
      preprocessors=text_preprocessors + [seqio.preprocessors.tokenize,
                                          seqio.CacheDatasetPlaceholder(),
                                          seqio.preprocessors.append_eos_after_trim],
      output_features=_features(vocab), postprocess_fn=postprocess_fn, metric_fns=metric_fns)
  TASK_INFO[name] = info


def _taskless_formatter(formatter: Callable[[dict], list[dict]]) -> Callable[[dict], list[dict]]:
  def fn(example):
    return [{**ex, 'inputs': preprocessors.remove_first_token_text(ex['inputs'])}
            for ex in formatter(example)]
  return fn


def _add_variants(name: str, tfds: tuple, local: tuple, text_preprocessor, formatter,
                  postprocess_fn, metric_fns, info: TaskInfo) -> None:
  """name, name_local, taskless_name, taskless_name_local."""
  tfds_name, tfds_splits, tfds_train_filter = tfds
  files, reader, train_filter = local
  local_source = _Source(functools.partial(_local_dataset, files, reader, train_filter),
                         splits=tuple(files))
  for prefix, extra in (('', []), ('taskless_', [preprocessors.remove_first_text_token])):
    # Each TFDS variant's offline error names its own local variant.
    tfds_source = _Source(functools.partial(_tfds_dataset, tfds_name, tfds_splits,
                                            f'{prefix}{name}_local', tfds_train_filter),
                          splits=tuple(tfds_splits))
    for suffix, source in (('', tfds_source), ('_local', local_source)):
      full = f'{prefix}{name}{suffix}'
      _add_task(full, source, [text_preprocessor] + extra, _TEXT_VOCAB, postprocess_fn,
                metric_fns, info)
      _FORMATTERS[full] = _taskless_formatter(formatter) if prefix else formatter
      if suffix:
        _LOCAL[full] = local


def _register_super_glue() -> None:
  for task, folder in _SUPERGLUE_FOLDERS.items():
    name = f'super_glue_{task}'
    tfds_name = f'super_glue/{"wsc.fixed" if task == "wsc" else task}:1.0.2'
    splits = {'train': 'train', 'validation': 'validation'}
    files = {'train': ('superglue', folder, 'train.jsonl'),
             'validation': ('superglue', folder, 'val.jsonl')}
    is_wsc = task == 'wsc'
    tfds = (tfds_name, splits, _wsc_train_filter_tf if is_wsc else None)
    local = (files, _superglue_reader(task, _SUPERGLUE_LABELS[task] or ()),
             (lambda ex: ex['label'] == 1) if is_wsc else None)
    postprocess_fn, metric_fns, main_metric = _superglue_eval(task)
    _add_variants(name, tfds, local, _superglue_text_preprocessor(task),
                  _superglue_formatter(task), postprocess_fn, metric_fns,
                  TaskInfo(_SUPERGLUE_LABELS[task], main_metric, 'super_glue'))


def _register_glue() -> None:
  for task, (config, folder, files, text_features, label_column, labels) in _GLUE.items():
    name = f'glue_{task}'
    files = files or {'train': 'train.tsv', 'validation': 'dev.tsv'}
    tfds_splits = _GLUE_TFDS_SPLITS.get(task, {'train': 'train', 'validation': 'validation'})
    tfds = (f'glue/{config}:2.0.0', tfds_splits, None)
    local = ({s: ('glue', folder, f) for s, f in files.items()},
             _glue_reader(task, text_features, label_column, labels), None)
    postprocess_fn, metric_fns, main_metric = _glue_eval(task, labels)
    _add_variants(name, tfds, local, _glue_text_preprocessor(task, labels),
                  _glue_formatter(task, labels), postprocess_fn, metric_fns,
                  TaskInfo(labels, main_metric, 'glue'))


# ================================ quickstart ================================

QUICKSTART_OPS: dict[str, Callable[[str], str]] = {
    'first': lambda digits: digits[0],
    'last': lambda digits: digits[-1],
    'max': max,
    'min': min,
}
QUICKSTART_SIZES = {'train': 20_000, 'validation': 200}
QUICKSTART_LABELS = tuple('0123456789')
QUICKSTART_TASKLESS_MIXTURE = 'quickstart_taskless_mixture'


def quickstart_examples(op: str, split: str, num_examples: Optional[int] = None,
                        seed: int = 0) -> list[tuple[str, str]]:
  """(digits, answer) pairs: 5-8 random digits; fixed by (op, split, seed), not by shuffling."""
  n = QUICKSTART_SIZES[split] if num_examples is None else num_examples
  return list(_quickstart_examples(op, split, n, seed))


@functools.lru_cache(maxsize=32)
def _quickstart_examples(op: str, split: str, n: int, seed: int) -> tuple[tuple[str, str], ...]:
  rng = np.random.default_rng([seed, zlib.crc32(f'{op}/{split}'.encode())])
  # One row per example (length, then 8 digits), drawn in order: the first k examples do not
  # depend on how many are asked for.
  rows = rng.integers([5] + [0] * 8, [9] + [10] * 8, size=(n, 9)).tolist()
  strings = [''.join(map(str, row[1:1 + row[0]])) for row in rows]
  fn = QUICKSTART_OPS[op]
  return tuple((s, fn(s)) for s in strings)


def _quickstart_dataset(op: str, split: str, shuffle_files: bool,
                        seed: Optional[int] = None) -> tf.data.Dataset:
  pairs = quickstart_examples(op, split)
  ds = tf.data.Dataset.from_tensor_slices({
      'inputs': np.array([f'{op}: {digits}' for digits, _ in pairs], dtype=object),
      'targets': np.array([answer for _, answer in pairs], dtype=object)})
  return _shuffled(ds, len(pairs), shuffle_files, seed)


def _register_quickstart() -> None:
  info = TaskInfo(QUICKSTART_LABELS, 'accuracy', 'quickstart')
  names = []
  for op in QUICKSTART_OPS:
    source = _Source(functools.partial(_quickstart_dataset, op), splits=tuple(QUICKSTART_SIZES))
    for suffix, extra in (('', []), ('_taskless', [preprocessors.remove_first_text_token])):
      _add_task(f'quickstart_{op}{suffix}', source, extra, _BYTE_VOCAB,
                _classification(QUICKSTART_LABELS), [metrics.accuracy], info)
    names.append(f'quickstart_{op}')
  if 'quickstart_mixture' in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove('quickstart_mixture')
  seqio.MixtureRegistry.add('quickstart_mixture', names, default_rate=1.0)
  TASK_INFO['quickstart_mixture'] = info
  # Two tasks whose inputs look alike ("38251"): only a prompt per task tells them apart.
  if QUICKSTART_TASKLESS_MIXTURE in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(QUICKSTART_TASKLESS_MIXTURE)
  seqio.MixtureRegistry.add(QUICKSTART_TASKLESS_MIXTURE,
                            ['quickstart_first_taskless', 'quickstart_max_taskless'],
                            default_rate=1.0)
  TASK_INFO[QUICKSTART_TASKLESS_MIXTURE] = info


# ================================ lookups ================================

def get_task_or_mixture(name: str) -> seqio.Task | seqio.Mixture:
  """The registered task or mixture; unknown names raise a ValueError with close matches."""
  if name in seqio.TaskRegistry.names():
    return seqio.TaskRegistry.get(name)
  if name in seqio.MixtureRegistry.names():
    return seqio.MixtureRegistry.get(name)
  known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
  close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
  hint = f' Did you mean: {", ".join(close)}?' if close else ''
  raise ValueError(f'Unknown task or mixture {name!r}.{hint} ({len(TASK_INFO)} registered '
                   f'here; see prompt_tuning.data.tasks.TASK_INFO.)')


def read_local_examples(name: str, split: str) -> list[dict]:
  """The raw examples (TFDS schema) a `*_local` task reads for `split`, in file order."""
  if name not in _LOCAL:
    get_task_or_mixture(name)  # unknown names get the suggestions
    raise ValueError(f'{name!r} does not read local files (the `*_local` tasks do).')
  files, reader, train_filter = _LOCAL[name]
  if split not in files:
    raise ValueError(f'{name!r} has no split {split!r} (splits: {sorted(files)}).')
  return _read_local(files, reader, train_filter, split)


def release_file_reader(name: str) -> Optional[tuple[Callable[[str, bool], list], str]]:
  """(reader, relative path) of the official release files task `name` (or `name`_local)
  reads: `reader(path, labeled)` gives TFDS-schema examples; the path (its first split's, e.g.
  'glue/CoLA/dev.tsv') shows the format. None when the task reads no release files."""
  entry = _LOCAL.get(name) or _LOCAL.get(f'{name}_local')
  if entry is None:
    return None
  files, reader, _ = entry
  return reader, '/'.join(next(iter(files.values())))


def _tasks_of(name: str) -> list[seqio.Task]:
  provider = get_task_or_mixture(name)
  return list(provider.tasks) if isinstance(provider, seqio.Mixture) else [provider]


def validate_task_data(name: str, splits: Sequence[str]) -> None:
  """Reads and checks every local file `name` would read for `splits`, now.

  For a `*_local` task (or a mixture: each of its tasks) each split's file is read completely
  as training would read it; the first bad row raises a one-line DataFileError
  (`<path>:<line>: ...`), a missing file a DataFileMissingError. Call it before writing
  anything. TFDS-sourced and built-in (quickstart) tasks read nothing here (no network).
  Unknown names raise get_task_or_mixture's ValueError; a split the task lacks, a ValueError
  (in a mixture, tasks without that split are skipped: evaluation skips them too).
  """
  provider = get_task_or_mixture(name)
  is_mixture = isinstance(provider, seqio.Mixture)
  for split in splits:
    if not is_mixture and split not in provider.splits:
      raise ValueError(f'{name!r} has no split {split!r} (splits: {sorted(provider.splits)}).')
  for task in _tasks_of(name):
    if task.name not in _LOCAL:
      continue  # TFDS / generated data: checked by their own loaders
    files, reader, train_filter = _LOCAL[task.name]
    for split in splits:
      if split in files:
        _read_local(files, reader, train_filter, split)


def check_vocabulary(name: str) -> None:
  """Loads the vocabulary file(s) of a task or mixture now.

  A missing or unreadable SentencePiece model raises a one-line VocabularyError naming the file
  and $PROMPT_TUNING_VOCAB, before training writes anything (instead of a TensorFlow error from
  inside the data pipeline). The default gs:// vocabulary is fetched from the network here.
  """
  seen = set()
  for task in _tasks_of(name):
    for feature in task.output_features.values():
      if id(feature.vocabulary) not in seen:
        seen.add(id(feature.vocabulary))
        vocabularies.load_vocabulary(feature.vocabulary)


def format_example(name: str, example: dict) -> list[dict]:
  """Pure-Python version of `name`'s text preprocessing: TFDS-schema example -> its formatted
  example(s) (ReCoRD gives one per answer), with `inputs`, `targets` and the metadata."""
  if name not in _FORMATTERS:
    get_task_or_mixture(name)
    raise ValueError(f'{name!r} has no Python formatter (GLUE/SuperGLUE tasks do).')
  return _FORMATTERS[name](example)


def get_vocabulary(name: str) -> seqio.Vocabulary:
  """The (resolved) vocabulary of a task or mixture's targets."""
  provider = get_task_or_mixture(name)
  task = provider.tasks[0] if isinstance(provider, seqio.Mixture) else provider
  vocab = task.output_features['targets'].vocabulary
  return vocab.resolved if isinstance(vocab, vocabularies.DeferredVocabulary) else vocab


_register_super_glue()
_register_glue()
_register_quickstart()

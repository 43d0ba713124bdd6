"""SeqIO tasks: GLUE, SuperGLUE (TFDS or local release files) and the offline quickstart.

Importing this module registers (idempotently):

  super_glue_{boolq,cb,copa,multirc,record,rte,wic,wsc}          TFDS super_glue/<task>:1.0.2
  glue_{cola,sst2,mrpc,qqp,stsb,mnli,qnli,rte}                   TFDS glue/<task>:2.0.0
  glue_mnli_matched, glue_mnli_mismatched                        validation only (as T5's)
  <each of the above>_local                                      the official files in a folder
  taskless_<each of the above>                                   without the leading task name
  quickstart_{first,last,max,min}, quickstart_<op>_taskless, quickstart_mixture

Splits are 'train' and 'validation'. `glue_mnli` also has 'validation_matched' and
'validation_mismatched' ('validation' is the matched one).

`super_glue_wsc` is T5's "simple" WSC: the model names the pronoun's referent. Its 'train' split
is T5's `super_glue_wsc_v102_simple_train` (only examples whose candidate is the true referent),
its 'validation' split T5's `super_glue_wsc_v102_simple_eval` (every example, scored by
whether the named referent is the candidate, compared with the label).

Local files (folder from `set_local_data_dir` or $PROMPT_TUNING_DATA_DIR, read when a dataset
is built): `superglue/<Task>/{train,val}.jsonl` with SuperGLUE's folder names and
`glue/<Task>/{train,dev}.tsv` (MNLI: dev_matched.tsv / dev_mismatched.tsv) as GLUE ships them.
They are converted to the TFDS schema, so both sources give the same text
(`set_local_file` points a split at another file, e.g. MRPC's tokenized copy).
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import functools
import json
import os
import zlib
from typing import Any, Callable, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning.data import metrics, postprocessors, preprocessors, vocabularies

LOCAL_DATA_ENV = 'PROMPT_TUNING_DATA_DIR'
VOCAB_ENV = 'PROMPT_TUNING_VOCAB'
TFDS_DOWNLOAD_ENV = 'PROMPT_TUNING_TFDS_DOWNLOAD'

_MAX_SHUFFLE_BUFFER = 100_000

_settings: dict[str, Any] = {'vocabulary': None, 'vocabulary_path': None,
                             'local_data_dir': None, 'tfds_data_dir': None}


class TfdsDataMissingError(FileNotFoundError):
  """A TFDS-sourced task was built but TFDS has no prepared copy of its data."""


@dataclasses.dataclass(frozen=True)
class TaskInfo:
  labels: Optional[tuple[str, ...]]  # verbalizers in class-id order; None for free text
  main_metric: str  # the metric key used to pick the best checkpoint
  benchmark: str  # 'super_glue' | 'glue' | 'quickstart'


TASK_INFO: dict[str, TaskInfo] = {}

# name -> pure-Python formatter (TFDS-schema example -> formatted examples), for tests and tools.
_TWINS: dict[str, Callable[[dict], list[dict]]] = {}
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
  """Reads `split` of the local task `name` (and its taskless twin) from another file.

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
  columns = {}
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
    raise FileNotFoundError(
        f'No local data folder is set: expected {os.path.join("<DIR>", *parts)}. Set '
        f'${LOCAL_DATA_ENV} or call prompt_tuning.data.tasks.set_local_data_dir(DIR).')
  path = os.path.join(root, *parts)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'{path}: file not found (local data folder {root!r} from ${LOCAL_DATA_ENV} / '
        f'set_local_data_dir; expected the official release file there).')
  return path


def _read_local(relative_paths: dict[str, tuple[str, ...]], reader: Callable[[str], list],
                train_filter: Optional[Callable[[dict], bool]], split: str) -> list[dict]:
  path = _local_path(*relative_paths[split])
  examples = reader(path)
  if train_filter is not None and split == 'train':
    examples = [ex for ex in examples if train_filter(ex)]
  if not examples:
    raise ValueError(f'{path}: no examples.')
  return examples


def _local_dataset(relative_paths: dict[str, tuple[str, ...]], reader: Callable[[str], list],
                   train_filter: Optional[Callable[[dict], bool]], split: str,
                   shuffle_files: bool, seed: Optional[int] = None) -> tf.data.Dataset:
  examples = _read_local(relative_paths, reader, train_filter, split)
  ds = tf.data.Dataset.from_tensor_slices(_columns(examples))
  return _shuffled(ds, len(examples), shuffle_files, seed)


# ============================ local readers (TFDS schema) ============================

def _read_jsonl(path: str) -> list[dict]:
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def _bool_label(row: dict) -> int:
  # TFDS casts booleans to 'False'/'True', i.e. class ids 0/1; no label (test) is -1.
  return -1 if row.get('label') is None else int(bool(row['label']))


def _string_label(row: dict, label_classes: Sequence[str]) -> int:
  return -1 if row.get('label') is None else list(label_classes).index(row['label'])


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


def _superglue_reader(task: str, label_classes: Sequence[str]) -> Callable[[str], list]:
  """Reader of SuperGLUE's official JSONL giving TFDS's super_glue examples."""

  def read(path: str) -> list[dict]:
    out = []
    for row in _read_jsonl(path):
      if task == 'multirc':
        passage = row['passage']
        for question in passage['questions']:
          for answer in question['answers']:
            out.append({'paragraph': passage['text'], 'question': question['question'],
                        'answer': answer['text'], 'label': _bool_label(answer),
                        'idx': {'paragraph': row['idx'], 'question': question['idx'],
                                'answer': answer['idx']}})
      elif task == 'record':
        passage = row['passage']
        text = passage['text']
        entities = sorted({text[e['start']:e['end'] + 1] for e in passage['entities']})
        for qa in row['qas']:
          out.append({'passage': text, 'query': qa['query'], 'entities': entities,
                      'answers': sorted({a['text'] for a in qa.get('answers', [])}),
                      'idx': {'passage': row['idx'], 'query': qa['idx']}})
      elif task == 'wsc':
        ex = {'text': row['text'], **{k: row['target'][k] for k in (
            'span1_index', 'span2_index', 'span1_text', 'span2_text')}}
        ex = _fix_wsc_spans(ex)
        out.append({**ex, 'idx': row['idx'], 'label': _bool_label(row)})
      else:
        keys = _SUPERGLUE_FEATURES[task]
        ex = {k: row[k] for k in keys}
        ex['idx'] = row['idx']
        if task == 'copa':
          ex['label'] = -1 if row.get('label') is None else int(row['label'])
        elif task in ('cb', 'rte'):
          ex['label'] = _string_label(row, label_classes)
        else:
          ex['label'] = _bool_label(row)
        out.append(ex)
    return out

  return read


def _glue_reader(task: str, text_features: dict[str, str], label_column: str,
                 label_classes: Optional[Sequence[str]]) -> Callable[[str], list]:
  """Reader of a GLUE release TSV giving TFDS's glue examples (same row filtering, idx = row)."""

  def read(path: str) -> list[dict]:
    out = []
    # utf-8-sig: MRPC's header starts with a BOM that would otherwise rename 'Quality'.
    with open(path, encoding='utf-8-sig', newline='') as f:
      if task == 'cola':  # no header: source, label, original label, sentence
        rows = ({'sentence': r[3], 'is_acceptable': r[1]} if len(r) > 3 else {'sentence': None}
                for r in csv.reader(f, delimiter='\t', quoting=csv.QUOTE_NONE))
      else:
        rows = csv.DictReader(f, delimiter='\t', quoting=csv.QUOTE_NONE)
      for n, row in enumerate(rows):
        ex = {feature: row.get(column) for feature, column in text_features.items()}
        ex['idx'] = n
        label = row.get(label_column, -1)
        if label_classes is None:  # STS-B: a float score
          label = None if label in (None, '') else float(np.float32(label))
        elif label in label_classes:
          label = list(label_classes).index(label)
        elif label != -1:
          label = int(label) if label else None
        ex['label'] = label
        if all(v is not None for v in ex.values()):  # TFDS drops corrupted rows
          out.append(ex)
    return out

  return read


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


def _classification(labels: Sequence[str]):
  return functools.partial(postprocessors.string_label_to_class_id, label_classes=tuple(labels))


def _superglue_eval(task: str):
  """(postprocess_fn, metric_fns, main metric) as T5's glue_utils for SuperGLUE."""
  if task == 'cb':
    return (_classification(_SUPERGLUE_LABELS[task]),
            [metrics.mean_multiclass_f1(3), metrics.accuracy], 'mean_3class_f1')
  if task == 'multirc':
    return (postprocessors.multirc,
            [metrics.multirc_f1_over_all_answers, metrics.multirc_exact_match], 'f1')
  if task == 'record':
    return postprocessors.record, [metrics.record], 'em'
  if task == 'wsc':
    return postprocessors.wsc_simple, [metrics.accuracy], 'accuracy'
  return _classification(_SUPERGLUE_LABELS[task]), [metrics.accuracy], 'accuracy'


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
                           label_names=_SUPERGLUE_LABELS[task], feature_names=feature_names)


def _superglue_twin(task: str) -> Callable[[dict], list[dict]]:
  if task == 'record':
    return preprocessors.record_text
  if task == 'wsc':
    return lambda ex: [preprocessors.wsc_simple_text(ex)]
  feature_names = {'multirc': ('question', 'answer', 'paragraph'),
                   'wic': ('sentence1', 'sentence2', 'word')}.get(task)
  return lambda ex: [preprocessors.glue_text(ex, task, _SUPERGLUE_LABELS[task], feature_names)]


def _glue_twin(task: str, labels) -> Callable[[dict], list[dict]]:
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


def _taskless_twin(twin: Callable[[dict], list[dict]]) -> Callable[[dict], list[dict]]:
  def fn(example):
    return [{**ex, 'inputs': preprocessors.remove_first_token_text(ex['inputs'])}
            for ex in twin(example)]
  return fn


def _add_variants(name: str, tfds: tuple, local: tuple, text_preprocessor, twin,
                  postprocess_fn, metric_fns, info: TaskInfo) -> None:
  """name, name_local, taskless_name, taskless_name_local."""
  tfds_name, tfds_splits, tfds_train_filter = tfds
  files, reader, train_filter = local
  local_source = _Source(functools.partial(_local_dataset, files, reader, train_filter),
                         splits=tuple(files))
  for prefix, extra in (('', []), ('taskless_', [preprocessors.remove_first_text_token])):
    # Each TFDS variant's offline error names its own local twin.
    tfds_source = _Source(functools.partial(_tfds_dataset, tfds_name, tfds_splits,
                                            f'{prefix}{name}_local', tfds_train_filter),
                          splits=tuple(tfds_splits))
    for suffix, source in (('', tfds_source), ('_local', local_source)):
      full = f'{prefix}{name}{suffix}'
      _add_task(full, source, [text_preprocessor] + extra, _TEXT_VOCAB, postprocess_fn,
                metric_fns, info)
      _TWINS[full] = _taskless_twin(twin) if prefix else twin
      if suffix:
        _LOCAL[full] = local


def _register_super_glue() -> None:
  for task, folder in _SUPERGLUE_FOLDERS.items():
    name = f'super_glue_{task}'
    tfds_name = f'super_glue/{"wsc.fixed" if task == "wsc" else task}:1.0.2'
    splits = {'train': 'train', 'validation': 'validation'}
    files = {'train': (folder, 'train.jsonl'), 'validation': (folder, 'val.jsonl')}
    files = {s: ('superglue',) + f for s, f in files.items()}
    is_wsc = task == 'wsc'
    tfds = (tfds_name, splits, _wsc_train_filter_tf if is_wsc else None)
    local = (files, _superglue_reader(task, _SUPERGLUE_LABELS[task] or ()),
             (lambda ex: ex['label'] == 1) if is_wsc else None)
    postprocess_fn, metric_fns, main_metric = _superglue_eval(task)
    _add_variants(name, tfds, local, _superglue_text_preprocessor(task),
                  _superglue_twin(task), postprocess_fn, metric_fns,
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
                  _glue_twin(task, labels), postprocess_fn, metric_fns,
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


def format_example(name: str, example: dict) -> list[dict]:
  """Pure-Python twin of `name`'s text preprocessing: TFDS-schema example -> its formatted
  example(s) (ReCoRD gives one per answer), with `inputs`, `targets` and the metadata."""
  if name not in _TWINS:
    get_task_or_mixture(name)
    raise ValueError(f'{name!r} has no Python formatter (GLUE/SuperGLUE tasks do).')
  return _TWINS[name](example)


def get_vocabulary(name: str) -> seqio.Vocabulary:
  """The (resolved) vocabulary of a task or mixture's targets."""
  provider = get_task_or_mixture(name)
  task = provider.tasks[0] if isinstance(provider, seqio.Mixture) else provider
  vocab = task.output_features['targets'].vocabulary
  return vocab.resolved if isinstance(vocab, vocabularies.DeferredVocabulary) else vocab


_register_super_glue()
_register_glue()
_register_quickstart()

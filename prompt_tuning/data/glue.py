"""GLUE: glue_<task> from TFDS or GLUE's release TSV files, as T5 formats them.

Registers, on import, glue_{cola,sst2,mrpc,qqp,stsb,mnli,qnli,rte} (TFDS glue/<task>:2.0.0) and
glue_mnli_matched / glue_mnli_mismatched (validation only, as T5's), each with its `_local`
variant (the release file `glue/<Task>/{train,dev}.tsv`, checked row by row) and `taskless_`
variants; with T5's postprocessors and metrics.
"""

from __future__ import annotations

import csv
import functools
import logging
from typing import Any, Callable, Optional, Sequence

import numpy as np

from prompt_tuning.data import metrics, postprocessors, preprocessors, registry, sources

log = logging.getLogger('prompt_tuning')

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
    lines = sources.text_lines(path, 'utf-8-sig')
    rows = csv.reader((line for _, line in lines), delimiter='\t', quoting=csv.QUOTE_NONE)
    if task == 'cola':  # no header: source, label, original label, sentence
      columns = {'is_acceptable': 1, 'sentence': 3}
      needs = f'GLUE {folder} rows need 4 tab-separated columns: source, label, note, sentence'
    else:
      header = next((r for r in rows if r), None)
      if header is None:
        raise sources.DataFileError(f'{path}: empty file (expected the official GLUE release '
                                    f'file with a header line).')
      columns = {name: i for i, name in enumerate(header)}  # as DictReader: the last one wins
      wanted = list(text_features.values()) + [label_column]
      needs = f'GLUE {folder} rows need the tab-separated columns {", ".join(wanted)}'
      for column in wanted:
        if column not in columns and (column != label_column or labeled):
          raise sources.DataFileError(
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
        check = sources.Row(path, rows.line_num, needs)
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
      raise sources.DataFileError(
          f'{path}:{rows.line_num}: {e} (fix or remove this line).') from e
    if dropped:
      log.warning('%s: dropped %d malformed row(s) with missing columns, as TFDS does.', path,
                  dropped)
    return out

  return read


def _cell(row: list[str], columns: dict[str, int], column: str, check: sources.Row) -> str:
  i = columns[column]
  if i >= len(row):
    raise check.error(f'the row has {len(row)} tab-separated columns, so no {column!r} '
                      f'(column {i + 1})')
  return row[i]


def _glue_label(text: str, label_classes: Optional[Sequence[str]], check: sources.Row,
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
      raise check.error(f'score {sources.short_repr(text)} is not a number',
                        'STS-B scores are numbers from 0 to 5') from None
  if text in label_classes:
    return list(label_classes).index(text)
  if text.strip().isdigit() and int(text) < len(label_classes):
    return int(text)
  raise check.error(f'label {sources.short_repr(text)} is not one of the classes '
                    f'{", ".join(label_classes)} or their ids 0-{len(label_classes) - 1}',
                    'use one of the task\'s classes')


def _glue_eval(task: str, labels):
  base = 'mnli' if task.startswith('mnli') else task
  if base == 'stsb':
    return (postprocessors.string_to_float,
            [metrics.pearson_corrcoef, metrics.spearman_corrcoef], 'pearson_corrcoef')
  if base == 'cola':
    return registry.classification(labels), [metrics.matthews_corrcoef], 'matthews_corrcoef'
  if base in ('mrpc', 'qqp'):
    return (registry.classification(labels), [metrics.f1_score_with_invalid, metrics.accuracy],
            'f1')
  return registry.classification(labels), [metrics.accuracy], 'accuracy'


def _glue_text_preprocessor(task: str, labels):
  if task == 'stsb':
    return preprocessors.stsb
  benchmark = 'mnli' if task.startswith('mnli') else task
  return functools.partial(preprocessors.glue, benchmark_name=benchmark, label_names=labels)


def _glue_formatter(task: str, labels) -> Callable[[dict], list[dict]]:
  if task == 'stsb':
    return lambda ex: [preprocessors.stsb_text(ex)]
  benchmark = 'mnli' if task.startswith('mnli') else task
  return lambda ex: [preprocessors.glue_text(ex, benchmark, labels)]


def _register_glue() -> None:
  for task, (config, folder, files, text_features, label_column, labels) in _GLUE.items():
    name = f'glue_{task}'
    files = files or {'train': 'train.tsv', 'validation': 'dev.tsv'}
    tfds_splits = _GLUE_TFDS_SPLITS.get(task, {'train': 'train', 'validation': 'validation'})
    tfds = (f'glue/{config}:2.0.0', tfds_splits, None)
    local = ({s: ('glue', folder, f) for s, f in files.items()},
             _glue_reader(task, text_features, label_column, labels), None)
    postprocess_fn, metric_fns, main_metric = _glue_eval(task, labels)
    registry.add_variants(name, tfds, local, _glue_text_preprocessor(task, labels),
                          _glue_formatter(task, labels), postprocess_fn, metric_fns,
                          registry.TaskInfo(labels, main_metric, 'glue'))


_register_glue()

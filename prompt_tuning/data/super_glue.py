"""SuperGLUE: super_glue_<task> from TFDS or SuperGLUE's release JSONL, as T5 formats them.

Registers, on import, super_glue_{boolq,cb,copa,multirc,record,rte,wic,wsc} (TFDS
super_glue/<task>:1.0.2; WSC is T5's "simple" WSC), each with its `_local` variant (the release
file `superglue/<Task>/{train,val}.jsonl`, checked row by row) and `taskless_` variants; with
T5's postprocessors and metrics.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import tensorflow as tf

from prompt_tuning.data import metrics, postprocessors, preprocessors, registry, sources

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


def _superglue_classes(task: str) -> tuple[str, ...]:
  """The label words of a SuperGLUE classification task (ReCoRD and WSC have none)."""
  labels = _SUPERGLUE_LABELS[task]
  if labels is None:
    raise ValueError(f'super_glue_{task} has no label classes.')
  return labels


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

  def multirc(row: dict, check: sources.Row, labeled: bool) -> list[dict]:
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

  def record(row: dict, check: sources.Row, labeled: bool) -> list[dict]:
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

  def wsc(row: dict, check: sources.Row, labeled: bool) -> list[dict]:
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

  def simple(row: dict, check: sources.Row, labeled: bool) -> list[dict]:
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
    for line, row in sources.read_jsonl(path):
      check = sources.Row(path, line, needs)
      out.extend(examples_of(check.object(row), check, labeled))
    return out

  return read


def _superglue_eval(task: str):
  """(postprocess_fn, metric_fns, main metric) as T5's glue_utils for SuperGLUE."""
  if task == 'cb':
    return (registry.classification(_superglue_classes(task)),
            [metrics.mean_multiclass_f1(3), metrics.accuracy], 'mean_3class_f1')
  if task == 'multirc':
    return (postprocessors.multirc,
            [metrics.multirc_f1_over_all_answers, metrics.multirc_exact_match], 'f1')
  if task == 'record':
    return postprocessors.record, [metrics.record], 'em'
  if task == 'wsc':
    return postprocessors.wsc_simple, [metrics.accuracy], 'accuracy'
  return registry.classification(_superglue_classes(task)), [metrics.accuracy], 'accuracy'


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


def _wsc_train_filter_tf(x):
  # T5 trains WSC only on examples whose candidate is the true referent.
  return tf.cast(x['label'], tf.bool)


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
    registry.add_variants(name, tfds, local, _superglue_text_preprocessor(task),
                          _superglue_formatter(task), postprocess_fn, metric_fns,
                          registry.TaskInfo(_SUPERGLUE_LABELS[task], main_metric, 'super_glue'))


_register_super_glue()

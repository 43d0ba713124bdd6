"""T5's text-to-text formats for GLUE, SuperGLUE and MRQA, as tf.data preprocessors and in Python.

Every format reproduces T5's (google-research/text-to-text-transfer-transformer,
t5/data/preprocessors.py and t5/data/glue_utils.py) character for character; MRQA gets T5's
SQuAD format (`question: ... context: ...`) as google-research/prompt-tuning gives it. The input
examples use TFDS's schema (`glue/*:2.0.0`, `super_glue/*:1.0.2`, `mrqa/*:1.0.0`): class labels
are integer ids, MultiRC and ReCoRD carry nested `idx` dicts. Local files are converted to that
schema first (the readers in super_glue.py, glue.py and mrqa.py), so one preprocessor serves both
sources.

The `*_text` functions are pure-Python versions of the tf.data ones, for tests and for callers
without TensorFlow; tests check that both agree on the real data.
"""

from __future__ import annotations

import re
import string
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
UNK_LABEL = '<unk>'  # T5's target for unlabeled (test) examples, label == -1

# ReCoRD passages separate their highlights with '\n@highlight\n'; T5 turns them into sentences.
_HIGHLIGHT_AFTER_PUNCT = r'(\.|\?|\!|\"|\')\n@highlight\n'
_HIGHLIGHT = r'\n@highlight\n'
_FIRST_TOKEN = r'^[^ ]* '
# T5's `_pad_punctuation` in RE2 terms: [[:punct:]] and \s are ASCII-only there.
_PUNCTUATION = '([' + re.escape(string.punctuation) + '])'
_SPACES = '[\t\n\f\r ]+'

# The two WSC texts where T5 writes the blanked input by hand (a pronoun glued to punctuation,
# and a span2_index that points at the wrong word).
_WSC_SPECIAL_CASES = {
    'The boy continued to whip the pony , and eventually the pony threw him over. John laughed '
    'out quite loud. "Good for him," he said. ':
        'The boy continued to whip the pony , and eventually the pony threw him over. John '
        'laughed out quite loud. "Good for X ," he said.',
    'When they had eventually calmed down a bit , and had gotten home, Mr. Farley put the magic '
    'pebble in an iron safe . Some day they might want to use it , but really for now, what '
    'more could they wish for?':
        'When they had eventually calmed down a bit , and had gotten home, Mr. Farley put the '
        'magic pebble in an iron safe . Some day they might want to use X , but really for now, '
        'what more could they wish for?',
}


def _text(value: Any) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def _label_name(label: int, label_names: Sequence[str]) -> str:
  return UNK_LABEL if int(label) == -1 else label_names[int(label)]


def _feature_keys(example: Mapping[str, Any], feature_names: Optional[Sequence[str]]):
  # T5: an explicit order, else every feature but label/idx sorted by name.
  return list(feature_names or sorted(set(example) - {'label', 'idx'}))


# ========================= Pure-Python versions (`*_text`) =========================

def glue_text(example: Mapping[str, Any], benchmark_name: str, label_names: Sequence[str],
              feature_names: Optional[Sequence[str]] = None) -> dict[str, Any]:
  """`'<benchmark> key1: v1 key2: v2'` -> label name; T5's `preprocessors.glue`."""
  parts = [benchmark_name]
  for key in _feature_keys(example, feature_names):
    parts += [f'{key}:', _text(example[key])]
  inputs = ' '.join(parts)
  out: dict[str, Any] = {}
  if benchmark_name == 'multirc':
    # MultiRC paragraphs carry HTML; T5 strips it from the whole joined string.
    inputs = re.sub('<br>', ' ', inputs)
    inputs = re.sub('<(/)?b>', '', inputs)
    for part in ('paragraph', 'question', 'answer'):
      out[f'idx/{part}'] = int(example['idx'][part])
  else:
    out['idx'] = example['idx']
  out['inputs'] = inputs
  out['targets'] = _label_name(example['label'], label_names)
  return out


def stsb_label_string(score: float) -> str:
  """Rounds to the nearest 0.2 as T5 does: float32, round-half-to-even, one decimal."""
  five = np.float32(5)
  return '%.1f' % (np.round(np.float32(score) * five) / five)


def stsb_text(example: Mapping[str, Any]) -> dict[str, Any]:
  inputs = ' '.join(['stsb sentence1:', _text(example['sentence1']), 'sentence2:',
                     _text(example['sentence2'])])
  return {'inputs': inputs, 'targets': stsb_label_string(example['label']),
          'idx': example['idx']}


def wsc_blanked_text(example: Mapping[str, Any]) -> str:
  """The WSC text with the pronoun (word `span2_index`, split on ' ') replaced by 'X'."""
  text = _text(example['text'])
  words = text.split(' ')
  index = int(example['span2_index'])
  if not 0 < index < len(words):
    raise ValueError(f'WSC span2_index {index} out of range (0, {len(words)}): {text!r}')
  if text in _WSC_SPECIAL_CASES:
    return _WSC_SPECIAL_CASES[text]
  if words[index] != _text(example['span2_text']):
    raise ValueError(f'WSC word {index} is {words[index]!r}, not the span2_text '
                     f'{_text(example["span2_text"])!r}: {text!r}')
  return ' '.join([' '.join(words[:index]), 'X', ' '.join(words[index + 1:])])


def wsc_simple_text(example: Mapping[str, Any], label: str = 'wsc:') -> dict[str, Any]:
  """T5's `wsc_simple`: `'wsc: ... *pronoun* ...'` -> the candidate referent (span1_text)."""
  pronoun = _text(example['span2_text'])
  marked = re.sub(' X ', lambda _: f' *{pronoun}* ', wsc_blanked_text(example))
  return {'inputs': f'{label} {marked}', 'targets': _text(example['span1_text']),
          'label': int(example.get('label', 0)), 'idx': example['idx']}


def record_passage_text(passage: str) -> str:
  passage = re.sub(_HIGHLIGHT_AFTER_PUNCT, r'\1 ', passage)
  return re.sub(_HIGHLIGHT, '. ', passage)


def record_text(example: Mapping[str, Any]) -> list[dict[str, Any]]:
  """T5's `record`: one example per answer (or one with target '<unk>' when there is none)."""
  inputs = ' '.join(['record query:', _text(example['query']), 'entities:',
                     ', '.join(_text(e) for e in example['entities']), 'passage:',
                     record_passage_text(_text(example['passage']))])
  answers = [_text(a) for a in example['answers']]
  return [{'idx/passage': int(example['idx']['passage']),
           'idx/query': int(example['idx']['query']),
           'inputs': inputs, 'targets': target, 'answers': answers}
          for target in (answers or [UNK_LABEL])]


def pad_punctuation_text(text: str) -> str:
  """T5's `_pad_punctuation`: spaces around each ASCII punctuation mark, then each run of
  whitespace (tab, newline, form feed, carriage return, space) as one space."""
  return re.sub(_SPACES, ' ', re.sub(_PUNCTUATION, r' \1 ', text))


def mrqa_text(example: Mapping[str, Any]) -> dict[str, Any]:
  """`'question: <question> context: <context>'` -> the first answer, all punctuation-padded;
  `answers`: every answer padded alike (the metrics' references). T5's `squad` format, as
  google-research/prompt-tuning's `mrqa` preprocessor (prompt_tuning/data/preprocessors.py)
  applies it to TFDS's mrqa examples; '<unk>' when an (unlabeled) question has no answer."""
  answers = [pad_punctuation_text(_text(a)) for a in example['answers']]
  inputs = ' '.join(['question:', pad_punctuation_text(_text(example['question'])), 'context:',
                     pad_punctuation_text(_text(example['context']))])
  return {'qid': _text(example['qid']), 'inputs': re.sub(_SPACES, ' ', inputs),
          'targets': answers[0] if answers else UNK_LABEL, 'answers': answers}


def remove_first_token_text(text: str) -> str:
  """The paper's "taskless" inputs: drop the leading task-name token."""
  return re.sub(_FIRST_TOKEN, '', text, count=1)


# ============================ tf.data preprocessors ============================

@seqio.map_over_dataset
def glue(x, benchmark_name: str, label_names: Sequence[str],
         feature_names: Optional[Sequence[str]] = None):
  parts = [benchmark_name]
  for key in _feature_keys(x, feature_names):
    parts += [f'{key}:', x[key]]
  inputs = tf.strings.join(parts, separator=' ')
  targets = tf.cond(tf.equal(x['label'], -1), lambda: tf.constant(UNK_LABEL),
                    lambda: tf.gather(tf.constant(list(label_names)), x['label']))
  out = {}
  if benchmark_name == 'multirc':
    inputs = tf.strings.regex_replace(inputs, '<br>', ' ')
    inputs = tf.strings.regex_replace(inputs, '<(/)?b>', '')
    for part in ('paragraph', 'question', 'answer'):
      out[f'idx/{part}'] = x['idx'][part]
  else:
    out['idx'] = x['idx']
  out['inputs'] = inputs
  out['targets'] = targets
  return out


@seqio.map_over_dataset
def stsb(x):
  inputs = tf.strings.join(['stsb sentence1:', x['sentence1'], 'sentence2:', x['sentence2']],
                           separator=' ')
  label = tf.cast(x['label'], tf.float32)
  targets = tf.as_string(tf.round(label * 5) / 5, precision=1)
  return {'inputs': inputs, 'targets': targets, 'idx': x['idx']}


def _wsc_blanked(x):
  text = x['text']
  words = tf.strings.split(text, sep=' ')
  index = tf.cast(x['span2_index'], tf.int32)
  with tf.control_dependencies([tf.debugging.assert_greater(index, 0),
                                tf.debugging.assert_less(index, tf.size(words))]):
    index = tf.identity(index)

  def blank():
    with tf.control_dependencies([tf.debugging.assert_equal(words[index], x['span2_text'])]):
      return tf.strings.join([tf.strings.reduce_join(words[:index], separator=' '), 'X',
                              tf.strings.reduce_join(words[index + 1:], separator=' ')],
                             separator=' ')

  result = blank
  for special, blanked in _WSC_SPECIAL_CASES.items():
    result = (lambda s=special, b=blanked, rest=result:
              tf.cond(tf.equal(text, s), lambda: tf.constant(b), rest))
  return result()


@seqio.map_over_dataset
def wsc_simple(x, label: str = 'wsc:'):
  marked = tf.strings.regex_replace(_wsc_blanked(x), ' X ',
                                    tf.strings.join([' *', x['span2_text'], '* ']))
  return {'inputs': tf.strings.join([label, marked], separator=' '),
          'targets': tf.reshape(x['span1_text'], []),
          'label': tf.cast(x.get('label', 0), tf.int64), 'idx': x['idx']}


def record(dataset: tf.data.Dataset) -> tf.data.Dataset:
  def one_row_per_answer(x):
    passage = tf.strings.regex_replace(x['passage'], _HIGHLIGHT_AFTER_PUNCT, r'\1 ')
    passage = tf.strings.regex_replace(passage, _HIGHLIGHT, '. ')
    inputs = tf.strings.join(['record query:', x['query'], 'entities:',
                              tf.strings.reduce_join(x['entities'], separator=', '),
                              'passage:', passage], separator=' ')
    num_answers = tf.size(x['answers'])
    copies = tf.maximum(num_answers, 1)

    def repeat(t):
      return tf.broadcast_to(t, tf.concat([[copies], tf.shape(t)], axis=0))

    targets = tf.cond(num_answers > 0, lambda: x['answers'], lambda: tf.constant([UNK_LABEL]))
    return {'idx/passage': repeat(x['idx']['passage']), 'idx/query': repeat(x['idx']['query']),
            'inputs': repeat(inputs), 'targets': targets, 'answers': repeat(x['answers'])}

  return dataset.map(one_row_per_answer, num_parallel_calls=AUTOTUNE).unbatch()


def _pad_punctuation(text):
  text = tf.strings.regex_replace(text, r'([[:punct:]])', r' \1 ')
  return tf.strings.regex_replace(text, r'\s+', ' ')


@seqio.map_over_dataset
def mrqa(x):
  answers = _pad_punctuation(x['answers'])
  inputs = tf.strings.join(['question:', _pad_punctuation(x['question']), 'context:',
                            _pad_punctuation(x['context'])], separator=' ')
  targets = tf.cond(tf.size(answers) > 0, lambda: answers[0], lambda: tf.constant(UNK_LABEL))
  return {'qid': x['qid'], 'inputs': tf.strings.regex_replace(inputs, r'\s+', ' '),
          'targets': targets, 'answers': answers}


@seqio.map_over_dataset
def remove_first_text_token(x, key: str = 'inputs'):
  x = dict(x)
  x[key] = tf.strings.regex_replace(x[key], _FIRST_TOKEN, '', replace_global=False)
  return x

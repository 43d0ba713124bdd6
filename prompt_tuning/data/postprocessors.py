"""Model text -> metric inputs, with T5's conventions (t5/data/postprocessors.py).

Signature as SeqIO calls them: `fn(text, example=None, is_target=False)`; `example` holds the
eval example's features (bytes or str). Strings that name no label map to -1, which the metrics
count as wrong.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

INVALID = -1

# Words T5 ignores when comparing a WSC referent with the model's answer.
_WSC_DETERMINERS = frozenset({
    'a', 'an', 'few', 'her', 'his', 'each', 'every', 'many', 'much', 'my', 'our', 'some', 'that',
    'the', 'their', 'these', 'this', 'those', 'which', 'whose', 'your'})


def _text(value: Any) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def _features(example: Optional[Mapping[str, Any]]) -> Mapping[str, Any]:
  """The eval example's features, which targets (and WSC predictions) are scored against."""
  if example is None:  # a TypeError, as indexing None was; SeqIO always passes the example
    raise TypeError('this postprocessor needs the eval example\'s features (example=...).')
  return example


def string_label_to_class_id(text, label_classes: Sequence[str], default: int = INVALID,
                             **unused_kwargs) -> int:
  """Index of the exact string in `label_classes` (no stripping, like T5), else `default`."""
  text = _text(text)
  return list(label_classes).index(text) if text in label_classes else default


def translate_label(text, translation: Mapping[str, str], **unused_kwargs) -> str:
  """Another task's label word as this task's (`translation`: word -> word); else unchanged.

  Zero-shot transfer (glue_transfer.py): a prompt tuned on QQP answers an MRPC example with
  QQP's words, read as MRPC's class of the same id before T5's postprocessor.
  """
  text = _text(text)
  return translation.get(text, text)


def remove_sentinel(text, sentinel: str = '<extra_id_0>', **unused_kwargs) -> str:
  """Drops a leading `sentinel`, then leading whitespace, as google-research/prompt-tuning's
  `remove_extra_id_0` (prompt_tuning/data/postprocessors.py) does for sentinel targets."""
  text = _text(text)
  if text.startswith(sentinel):
    text = text[len(sentinel):]
  return text.lstrip()


def string_to_float(text, default: float = -1., **unused_kwargs) -> float:
  try:
    return float(_text(text))
  except ValueError:
    return default


def multirc(text, example: Optional[Mapping[str, Any]] = None, is_target: bool = False):
  """{'value': 0/1/-1} and, for targets, the question id that groups the answers."""
  result = {'value': string_label_to_class_id(text, ('False', 'True'))}
  if is_target:
    result['group'] = int(_features(example)['idx/question'])
  return result


def record(text, example: Optional[Mapping[str, Any]] = None, is_target: bool = False):
  """Prediction: {'value': text}; target: every gold answer + the (passage, query) group."""
  if is_target:
    features = _features(example)
    return {'value': [_text(a) for a in features['answers']],
            'group': (int(features['idx/passage']), int(features['idx/query']))}
  return {'value': _text(text)}


def qa(text, example: Optional[Mapping[str, Any]] = None, is_target: bool = False):
  """T5's `qa`: a prediction is its text; a target is every reference answer of the example."""
  if is_target:
    return [_text(a) for a in _features(example)['answers']]
  return _text(text)


def _wsc_clean(text: str) -> str:
  return ' '.join(w for w in text.strip().lower().split(' ') if w not in _WSC_DETERMINERS)


def wsc_simple(text, example: Optional[Mapping[str, Any]] = None, is_target: bool = False):
  """1 if the prediction names the candidate referent (the target text), else 0; empty -> -1.

  The target is the example's label: whether the candidate is the pronoun's true referent.
  """
  if is_target:
    return int(_features(example)['label'])
  prediction = _wsc_clean(_text(text))
  if not prediction:  # an empty answer must not spuriously match label 0
    return INVALID
  referent = _wsc_clean(_text(_features(example)['targets_pretokenized']))
  if ("'" in prediction) != ("'" in referent):
    # "Bob" does not name "Bob's hat".
    return 0
  predicted, gold = set(prediction.split(' ')), set(referent.split(' '))
  return int(predicted <= gold or gold <= predicted)

"""Prompt ensembles (the paper's §7 "Prompt Ensembling"): the rules that turn N members'
answers into the ensemble's, and the report of members beside the ensemble.

Pure Python/numpy; running the N prompts over one batch is evaluation's business.

  majority_vote         generated answers: the answer most members gave (the paper's rule)
  mean_log_likelihood   rank classification: the class with the highest mean log-likelihood
  ensemble_scores       each member's metric, the members' mean and the ensemble's

Ties are broken deterministically:
  majority_vote         among the answers with the most votes, the one the earliest member (lowest
                        member index) gave; e.g. members ['a', 'b', 'b', 'a'] -> 'a'.
  mean_log_likelihood   among the classes with the highest mean, the lowest class index.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np

Score = Union[float, Mapping[str, float]]


def _key(answer: Any) -> Any:
  """A hashable stand-in that compares answers by value (lists and arrays as tuples)."""
  if isinstance(answer, np.ndarray):
    return _key(answer.tolist())  # nested lists keep the shape
  if isinstance(answer, (list, tuple)):
    return tuple(_key(a) for a in answer)
  if isinstance(answer, np.generic):
    return answer.item()
  return answer


def _members(predictions_NxB: Sequence[Sequence[Any]]) -> list[list[Any]]:
  members = [list(m) for m in predictions_NxB]
  if not members:
    raise ValueError('an ensemble needs at least one member; got 0.')
  counts = [len(m) for m in members]
  if len(set(counts)) > 1:
    raise ValueError(f'every member must predict the same examples; members have '
                     f'{counts} predictions (member {counts.index(min(counts))} has '
                     f'{min(counts)}, member {counts.index(max(counts))} has {max(counts)}).')
  return members


def majority_vote(predictions_NxB: Sequence[Sequence[Any]]) -> list[Any]:
  """The ensemble's prediction per example: the answer most of the N members gave.

  `predictions_NxB[n][b]` is member n's answer to example b (a generated string, a label, a list
  of tokens, ...); answers are compared by value. Ties: of the answers with the most votes, the
  one that the earliest member (lowest n) gave wins; it is returned as that member gave it.
  One member is its own ensemble.
  """
  members = _members(predictions_NxB)
  out = []
  for answers in zip(*members):
    votes: dict[Any, int] = {}
    first: dict[Any, Any] = {}
    for answer in answers:  # dicts keep insertion order: earliest member first
      key = _key(answer)
      votes[key] = votes.get(key, 0) + 1
      first.setdefault(key, answer)
    # max() returns the first of equal maxima, i.e. the earliest member's answer.
    out.append(first[max(votes, key=votes.__getitem__)])
  return out


def mean_log_likelihood(scores_NxBxC: Any) -> np.ndarray:
  """Rank classification by the ensemble: per example, the class whose log-likelihood, averaged
  over the N members, is highest. `scores_NxBxC[n, b, c]` is member n's log-likelihood of class
  c's target for example b. Returns int [B] class indices; ties go to the lowest class index.
  -inf (a class a member rules out) is allowed; NaN and +inf are refused.
  """
  scores = np.asarray(scores_NxBxC, np.float64)
  if scores.ndim != 3 or 0 in scores.shape:
    raise ValueError(f'scores are [members N, examples B, classes C], each at least 1; got shape '
                     f'{scores.shape}.')
  bad = np.isnan(scores) | (scores == np.inf)
  if bad.any():
    n, b, c = np.argwhere(bad)[0]
    raise ValueError(f'the log-likelihood of member {n}, example {b}, class {c} is '
                     f'{scores[n, b, c]}.')
  # The first of equal maxima: the lowest class index.
  return np.argmax(scores.mean(axis=0), axis=-1)


def ensemble_scores(member_predictions_NxB: Sequence[Sequence[Any]], targets_B: Sequence[Any],
                    metric_fn: Callable[[Sequence[Any], Sequence[Any]], Score],
                    ensemble_predictions: Optional[Sequence[Any]] = None) -> dict[str, Any]:
  """Each member's score, the members' mean and the ensemble's, by `metric_fn(targets,
  predictions)` (a float, or a dict of floats as the task metrics return).

  `ensemble_predictions` defaults to `majority_vote(member_predictions_NxB)`; pass the
  `mean_log_likelihood` classes (mapped to the members' answer space) for rank classification.
  Returns {'members': [score per member], 'member_mean': score, 'ensemble': score}; with dict
  scores the mean is taken per key.
  """
  members = _members(member_predictions_NxB)
  targets = list(targets_B)
  if len(members[0]) != len(targets):
    raise ValueError(f'the members predict {len(members[0])} examples but there are '
                     f'{len(targets)} targets.')
  if ensemble_predictions is None:
    ensemble_predictions = majority_vote(members)
  elif len(ensemble_predictions) != len(targets):
    raise ValueError(f'the ensemble predicts {len(ensemble_predictions)} examples but there are '
                     f'{len(targets)} targets.')
  scores = [metric_fn(targets, m) for m in members]
  return {'members': scores, 'member_mean': _mean(scores),
          'ensemble': metric_fn(targets, list(ensemble_predictions))}


def _mean(scores: Sequence[Score]) -> Score:
  dicts = [s for s in scores if isinstance(s, Mapping)]
  if not dicts:
    return float(np.mean([float(s) for s in scores]))  # type: ignore[arg-type]
  if len(dicts) != len(scores):
    raise ValueError('metric_fn returned a dict for some members and a number for others.')
  keys = list(dicts[0])
  if any(set(d) != set(keys) for d in dicts):
    raise ValueError(f"the members' metrics name different keys: {[sorted(d) for d in dicts]}.")
  return {k: float(np.mean([d[k] for d in dicts])) for k in keys}

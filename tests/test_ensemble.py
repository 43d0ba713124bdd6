"""ensemble: majority vote and mean log-likelihood on hand-made cases, ties as documented, and
members' scores beside the ensemble's."""

import numpy as np
import pytest

from prompt_tuning.prompts import ensembles as ensemble


def accuracy(targets, predictions):
  return {'accuracy': 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions)]))}


def test_majority_vote_clear_majority():
  members = [['yes', 'no', 'maybe'],
             ['yes', 'yes', 'no'],
             ['no', 'yes', 'no']]
  assert ensemble.majority_vote(members) == ['yes', 'yes', 'no']


def test_majority_vote_two_two_tie_goes_to_the_earliest_member():
  # 4 members, 2-2: the answer member 0 gave wins, whichever it is.
  assert ensemble.majority_vote([['a'], ['b'], ['b'], ['a']]) == ['a']
  assert ensemble.majority_vote([['b'], ['a'], ['a'], ['b']]) == ['b']
  # Member 0's answer is not among the tied ones: the tied answer given first (member 1) wins.
  assert ensemble.majority_vote([['z'], ['x'], ['y'], ['y'], ['x']]) == ['x']
  assert ensemble.majority_vote([['z'], ['y'], ['x'], ['y'], ['x']]) == ['y']


def test_majority_vote_odd_members_and_all_different():
  members = [['p', 1, 'same'], ['q', 2, 'same'], ['r', 2, 'other']]
  # All different -> member 0's answer; 2 of 3 -> the majority even when member 0 disagrees.
  assert ensemble.majority_vote(members) == ['p', 2, 'same']


def test_majority_vote_single_member_is_itself():
  answers = ['entailment', 'not_entailment', '']
  assert ensemble.majority_vote([answers]) == answers


def test_majority_vote_compares_by_value_and_returns_a_members_answer():
  first = np.array([3, 4])
  members = [[first], [np.array([5])], [np.array([3, 4])], [[5]]]
  # [3, 4] (two equal arrays) and [5] (an array and a list) have 2 votes each: member 0's.
  assert ensemble.majority_vote(members)[0] is first
  # Equal values of different types are one answer; the winner is returned as first given.
  winner = [3]
  assert ensemble.majority_vote([['x'], [winner], [np.array([3])]])[0] is winner
  assert ensemble.majority_vote([[[2, 1]], [[1, 2]], [(1, 2)]]) == [[1, 2]]
  assert ensemble.majority_vote([[8], [np.int64(7)], [7]]) == [7]
  # Shapes count: [1, 2] is not [[1, 2]].
  nested = [[1, 2]]
  assert ensemble.majority_vote([[np.array([1, 2])], [nested], [np.array([[1, 2]])]])[0] is nested


def test_majority_vote_refuses_ragged_members_and_no_members():
  with pytest.raises(ValueError, match=r'member 1 has 1, member 0 has 2'):
    ensemble.majority_vote([['a', 'b'], ['a']])
  with pytest.raises(ValueError, match='at least one member'):
    ensemble.majority_vote([])


def test_mean_log_likelihood_and_majority_disagree():
  # Two members slightly prefer class 0; the third is sure of class 1.
  scores = np.array([[[-0.6, -0.8]],
                     [[-0.6, -0.8]],
                     [[-5.0, -0.01]]])
  per_member = [int(np.argmax(s[0])) for s in scores]
  assert per_member == [0, 0, 1]
  assert ensemble.majority_vote([[p] for p in per_member]) == [0]
  np.testing.assert_array_equal(ensemble.mean_log_likelihood(scores), [1])


def test_mean_log_likelihood_per_example_and_ties_to_the_lowest_class():
  scores = np.array([[[-1.0, -1.0, -3.0], [-2.0, -0.5, -0.5], [-4.0, -1.0, -2.0]],
                     [[-1.0, -1.0, -3.0], [-2.0, -0.5, -0.5], [-0.5, -3.0, -2.0]]])
  # Means: [-1, -1, -3] tie -> 0; [-2, -.5, -.5] tie -> 1; [-2.25, -2, -2] tie -> 1.
  np.testing.assert_array_equal(ensemble.mean_log_likelihood(scores), [0, 1, 1])
  assert ensemble.mean_log_likelihood(scores).shape == (3,)
  # One member: its own argmax.
  np.testing.assert_array_equal(ensemble.mean_log_likelihood(scores[1:]), [0, 1, 0])


def test_mean_log_likelihood_allows_minus_inf_and_refuses_nan():
  scores = np.array([[[-np.inf, -9.0]], [[-0.1, -9.0]]])  # member 0 rules class 0 out
  np.testing.assert_array_equal(ensemble.mean_log_likelihood(scores), [1])
  with pytest.raises(ValueError, match='member 1, example 0, class 1 is nan'):
    ensemble.mean_log_likelihood([[[-1.0, -2.0]], [[-1.0, np.nan]]])
  with pytest.raises(ValueError, match=r'\[members N, examples B, classes C\]'):
    ensemble.mean_log_likelihood([[-1.0, -2.0]])


def test_ensemble_scores_reports_members_mean_and_ensemble():
  targets = ['a', 'b', 'c', 'd']
  members = [['a', 'b', 'x', 'x'],   # 50
             ['a', 'x', 'c', 'y'],   # 50
             ['a', 'b', 'c', 'z']]   # 75
  report = ensemble.ensemble_scores(members, targets, accuracy)
  assert report['members'] == [{'accuracy': 50.0}, {'accuracy': 50.0}, {'accuracy': 75.0}]
  assert report['member_mean'] == pytest.approx({'accuracy': 175.0 / 3})
  # Vote: a, b, c, x (all different on the last -> member 0's 'x'): 75.
  assert report['ensemble'] == {'accuracy': 75.0}
  # A float metric, and given ensemble predictions (e.g. rank classification's).
  plain = lambda t, p: float(np.mean([a == b for a, b in zip(t, p)]))
  report = ensemble.ensemble_scores(members, targets, plain, ensemble_predictions=targets)
  assert report['members'] == [0.5, 0.5, 0.75] and report['ensemble'] == 1.0
  assert report['member_mean'] == pytest.approx(1.75 / 3)


def test_ensemble_scores_refuses_mismatched_lengths():
  with pytest.raises(ValueError, match='predict 2 examples but there are 3 targets'):
    ensemble.ensemble_scores([['a', 'b']], ['a', 'b', 'c'], accuracy)
  with pytest.raises(ValueError, match='ensemble predicts 1 examples'):
    ensemble.ensemble_scores([['a', 'b']], ['a', 'b'], accuracy, ensemble_predictions=['a'])

"""Metrics and postprocessors of the data layer against hand-computed values (NumPy only)."""

import math

import numpy as np
import pytest

from prompt_tuning.data import metrics, postprocessors


def test_accuracy_counts_invalid_as_wrong():
  assert metrics.accuracy([0, 1, 1, 0], [0, 1, 0, -1]) == {'accuracy': 50.0}


def test_f1_with_invalid_flips_invalid_predictions():
  # Invalid predictions become the wrong class: [1, 0, 0, 1, 0] -> tp 1, fp 1, fn 2.
  result = metrics.f1_score_with_invalid([1, 1, 0, 0, 1], [1, 0, 0, -1, -1])
  assert result == {'f1': pytest.approx(40.0)}
  # Nothing positive anywhere: sklearn (and T5) report 0.
  assert metrics.f1_score_with_invalid([0, 0], [0, 0]) == {'f1': 0.0}


def test_matthews_binary_and_with_invalid_class():
  # tp 2, tn 2, fp 1, fn 1: (4 - 1) / sqrt(3^4) = 1/3.
  assert metrics.matthews_corrcoef([1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 1]) == {
      'matthews_corrcoef': pytest.approx(100 / 3)}
  # -1 is an extra predicted class (sklearn's multiclass form): 6 / sqrt(8 * 10).
  assert metrics.matthews_corrcoef([0, 0, 1, 1], [0, -1, 1, 1]) == {
      'matthews_corrcoef': pytest.approx(100 * 6 / math.sqrt(80))}
  assert metrics.matthews_corrcoef([1, 1], [1, 1]) == {'matthews_corrcoef': 0.0}


def test_pearson_and_spearman_with_ties():
  # Sum dx*dy = 11, sum dx^2 = 5, sum dy^2 = 26.
  assert metrics.pearson_corrcoef([1, 2, 3, 4], [2, 4, 5, 9]) == {
      'pearson_corrcoef': pytest.approx(100 * 11 / math.sqrt(130))}
  # Ranks [1, 2.5, 2.5, 4] vs [1, 3, 2, 4]: 4.5 / sqrt(4.5 * 5).
  assert metrics.spearman_corrcoef([1, 2, 2, 3], [1, 3, 2, 4]) == {
      'spearman_corrcoef': pytest.approx(100 * 4.5 / math.sqrt(22.5))}
  np.testing.assert_array_equal(metrics.rankdata([10, 20, 20, 5, 20]), [2, 4, 4, 1, 4])


def test_mean_3class_f1_is_macro_over_classes():
  targets, predictions = [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, -1]
  # Per class F1: 2/3, 4/5, 2/3.
  assert metrics.mean_multiclass_f1(3)(targets, predictions) == {
      'mean_3class_f1': pytest.approx(100 * (2 / 3 + 4 / 5 + 2 / 3) / 3)}


def test_multirc_f1a_and_exact_match_per_question():
  targets = [{'value': 1, 'group': 0}, {'value': 0, 'group': 0}, {'value': 1, 'group': 1}]
  predictions = [{'value': 1}, {'value': 0}, {'value': 0}]
  assert metrics.multirc_f1_over_all_answers(targets, predictions) == {
      'f1': pytest.approx(200 / 3)}
  # Question 0 fully right, question 1 wrong.
  assert metrics.multirc_exact_match(targets, predictions) == {'exact_match': 50.0}


def test_squad_normalisation_and_max_over_answers():
  assert metrics.normalize_squad('The  Eiffel Tower!') == 'eiffel tower'
  result = metrics.squad([['Eiffel Tower', 'the tower'], ['Paris']],
                         ['eiffel tower.', 'Paris France'])
  # EM 1, 0; F1 1 and 2/3 ('paris france' vs 'paris').
  assert result == {'em': 50.0, 'f1': pytest.approx(100 * (1 + 2 / 3) / 2)}


def test_record_scores_each_query_once():
  group = (0, 7)
  targets = [{'value': ['Rover', 'Rover the dog'], 'group': group}] * 2 + [
      {'value': ['Paris'], 'group': (0, 8)}]
  predictions = [{'value': 'Rover'}, {'value': 'wrong'}, {'value': 'London'}]
  assert metrics.record(targets, predictions) == {'em': 50.0, 'f1': 50.0}


def test_classification_postprocessor_is_exact_like_t5():
  labels = ('entailment', 'not_entailment')
  assert postprocessors.string_label_to_class_id('not_entailment', labels) == 1
  assert postprocessors.string_label_to_class_id(b'entailment', labels) == 0
  assert postprocessors.string_label_to_class_id(' entailment', labels) == -1
  assert postprocessors.string_label_to_class_id('yes', labels) == -1


def test_float_and_multirc_postprocessors():
  assert postprocessors.string_to_float('3.4') == 3.4
  assert postprocessors.string_to_float('high') == -1.0
  example = {'idx/question': np.int32(12)}
  assert postprocessors.multirc('True', example=example, is_target=True) == {
      'value': 1, 'group': 12}
  assert postprocessors.multirc('maybe', example=example) == {'value': -1}
  target = postprocessors.record('x', example={'answers': [b'Rover'], 'idx/passage': 3,
                                               'idx/query': 4}, is_target=True)
  assert target == {'value': ['Rover'], 'group': (3, 4)}


def test_wsc_postprocessor_compares_with_the_referent():
  example = {'targets_pretokenized': b'the lemon trees', 'label': 0}
  assert postprocessors.wsc_simple('Lemon trees', example=example) == 1
  assert postprocessors.wsc_simple('trees', example=example) == 1  # a subset names it too
  assert postprocessors.wsc_simple('light bulbs', example=example) == 0
  assert postprocessors.wsc_simple("lemon's", example=example) == 0  # possessive mismatch
  assert postprocessors.wsc_simple('the', example=example) == -1  # nothing left: invalid
  assert postprocessors.wsc_simple('', example=example, is_target=True) == 0

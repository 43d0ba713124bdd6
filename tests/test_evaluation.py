"""Evaluation (prompt_tuning/evaluation.py): the EVAL_METHODS check, and an Evaluator run on three
local RTE examples with the tiny real T5X fixture: metrics agree with the prediction files, the
files are named by task/method/tag/step and written atomically, and padding the last batch
changes nothing."""

import json
import os

import numpy as np
import pytest

from prompt_tuning.inference import evaluation, runner
from prompt_tuning.inference.runner import PromptedModel
from prompt_tuning.models import prompt as prompt_lib
from prompt_tuning.testing import FIXTURE, FIXTURE_CONFIG, VOCAB

TASK = 'super_glue_rte_local'
LENGTHS = {'inputs': 32, 'targets': 8}
LABELS = ('entailment', 'not_entailment')


# ----------------------------------------------------------------------------------------------
# Settings (no TensorFlow needed)


@pytest.mark.parametrize('methods', [['generate'], ['rank'], ('generate', 'rank'),
                                     ['rank', 'generate']])
def test_check_methods_accepts_lists_of_known_methods(methods):
  evaluation.check_methods(methods)


@pytest.mark.parametrize('methods,shown', [
    (['beam'], "['beam']"), (['generate', 'ranking'], "['generate', 'ranking']"),
    ('generate', "'generate'"),  # a string, not a list of methods
    ([], '[]'), (None, 'None')])
def test_check_methods_names_the_bad_setting(methods, shown):
  with pytest.raises(ValueError) as info:
    evaluation.check_methods(methods)
  assert str(info.value) == f"EVAL_METHODS = {shown}: choose a list from ['generate', 'rank']."


# ----------------------------------------------------------------------------------------------
# An Evaluator on real data and the real T5X fixture


@pytest.fixture(scope='module')
def rte(shared):
  """Points the local tasks at shared/'s RTE files and T5 vocabulary; skips without them."""
  pytest.importorskip('tensorflow', reason='the SeqIO tasks need TensorFlow')
  pytest.importorskip('seqio', reason='the evaluation tasks are SeqIO tasks')
  data, vocab = shared('data'), shared(*VOCAB)
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv('PROMPT_TUNING_DATA_DIR', data)
    mp.setenv('PROMPT_TUNING_VOCAB', vocab)
    yield


@pytest.fixture(scope='module')
def model(rte, shared):
  """The tiny T5X fixture with a 5-token prefix prompt."""
  from prompt_tuning import checkpoints
  config, params = checkpoints.load_params(shared(*FIXTURE),
                                           FIXTURE_CONFIG.replace(dtype='float32'))
  frozen, _ = prompt_lib.split_params(params)
  prompt = np.random.RandomState(0).uniform(-0.5, 0.5, (5, config.d_model)).astype(np.float32)
  return PromptedModel(config, frozen, prompt)


@pytest.fixture(scope='module')
def evaluated(model, tmp_path_factory):
  """Both methods on 3 examples in batches of 2 (the last one padded), at step 7."""
  out = str(tmp_path_factory.mktemp('inference_eval'))
  evaluator = evaluation.Evaluator(TASK, 'validation', LENGTHS, methods=('generate', 'rank'),
                                   batch_size=2, max_examples=3, output_dir=out)
  results = evaluator.evaluate(model, step=7)
  return evaluator, results, out


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_evaluator_holds_the_tokenized_examples(evaluated):
  evaluator, _, _ = evaluated
  assert len(evaluator.examples) == 3 and evaluator.main_metric == 'accuracy'
  assert evaluator.inputs.shape == (3, LENGTHS['inputs']) and evaluator.inputs.dtype == np.int32
  for row, example in zip(evaluator.inputs, evaluator.examples):
    ids = list(example['inputs'])
    assert 0 < len(ids) <= LENGTHS['inputs'] and ids[-1] == 1  # truncated with its EOS kept
    assert list(row[:len(ids)]) == ids and not row[len(ids):].any()
    assert example['targets_pretokenized'] in LABELS
  # The verbalizers, each with its EOS, padded to the target length.
  for label, row in zip(LABELS, evaluator.label_targets):
    ids = list(evaluator.vocab.encode(label)) + [1]
    assert list(row[:len(ids)]) == ids and not row[len(ids):].any()


def test_metrics_agree_with_the_prediction_files(evaluated):
  evaluator, results, out = evaluated
  assert set(results) == {'generate/accuracy', 'generate/invalid', 'rank/accuracy',
                          'rank/invalid'}
  for method in ('generate', 'rank'):
    rows = read_jsonl(os.path.join(out, f'{TASK}-{method}-step7.jsonl'))
    assert [r['input'] for r in rows] == [e['inputs_pretokenized'] for e in evaluator.examples]
    assert [r['target'] for r in rows] == [e['targets_pretokenized'] for e in evaluator.examples]
    correct = [r['prediction'] == r['target'] for r in rows]
    assert results[f'{method}/accuracy'] == pytest.approx(100 * np.mean(correct))
    invalid = sum(r['prediction'] not in LABELS for r in rows)
    assert results[f'{method}/invalid'] == invalid
  # Rank classification always answers with a label.
  assert results['rank/invalid'] == 0
  records = read_jsonl(os.path.join(out, f'{TASK}-metrics.jsonl'))
  assert [(r['step'], r['method'], r['tag']) for r in records] == [(7, 'generate', ''),
                                                                   (7, 'rank', '')]
  for r in records:
    assert r['accuracy'] == results[f"{r['method']}/accuracy"]
  assert sorted(os.listdir(out)) == sorted([f'{TASK}-generate-step7.jsonl',
                                            f'{TASK}-rank-step7.jsonl', f'{TASK}-metrics.jsonl'])


def test_padding_the_last_batch_changes_nothing_and_tags_name_the_files(evaluated, model,
                                                                       tmp_path):
  _, _, out = evaluated
  # Example 3 in a full batch beside example 4, against alone in a padded one (same shapes).
  evaluator = evaluation.Evaluator(TASK, 'validation', LENGTHS, methods=('rank',), batch_size=2,
                                   max_examples=4, output_dir=str(tmp_path))
  padded = [r['prediction'] for r in read_jsonl(os.path.join(out, f'{TASK}-rank-step7.jsonl'))]
  assert evaluator.rank(model)[:3] == padded
  results = evaluator.evaluate(model, step=9, tag='eval')
  assert sorted(os.listdir(tmp_path)) == [f'{TASK}-metrics.jsonl', f'{TASK}-rank-eval-step9.jsonl']
  assert len(read_jsonl(tmp_path / f'{TASK}-rank-eval-step9.jsonl')) == 4
  assert [(r['step'], r['tag'], r['accuracy']) for r in read_jsonl(
      tmp_path / f'{TASK}-metrics.jsonl')] == [(9, 'eval', results['rank/accuracy'])]


def test_prediction_files_are_replaced_whole_or_not_at_all(model, tmp_path, monkeypatch):
  evaluator = evaluation.Evaluator(TASK, 'validation', LENGTHS, methods=('rank',), batch_size=2,
                                   max_examples=3, output_dir=str(tmp_path))
  predictions = tmp_path / f'{TASK}-rank-step4.jsonl'
  predictions.write_text('{"prediction": "from an earlier evaluation"}\n')
  rename = os.replace

  def killed_before_rename(src, dst):  # what a kill between the write and the rename leaves
    if os.path.dirname(os.path.abspath(dst)) == str(tmp_path):
      raise OSError('killed')
    return rename(src, dst)

  monkeypatch.setattr(os, 'replace', killed_before_rename)
  with pytest.raises(OSError, match='killed'):
    evaluator.evaluate(model, step=4)
  assert predictions.read_text() == '{"prediction": "from an earlier evaluation"}\n'
  assert not (tmp_path / f'{TASK}-metrics.jsonl').exists()  # no record for unwritten predictions
  monkeypatch.setattr(os, 'replace', rename)
  evaluator.evaluate(model, step=4)
  rows = read_jsonl(predictions)
  assert len(rows) == 3 and all(r['prediction'] in LABELS for r in rows)


def test_an_evaluation_without_examples_is_refused(rte):
  with pytest.raises(ValueError, match=f"Task '{TASK}' has no 'validation' examples to evaluate"):
    evaluation.Evaluator(TASK, 'validation', LENGTHS, methods=('rank',), max_examples=0)


def test_bad_methods_are_refused_before_the_data_is_read(rte, monkeypatch):
  monkeypatch.setenv('PROMPT_TUNING_DATA_DIR', '/nonexistent')
  with pytest.raises(ValueError, match=r"EVAL_METHODS = \['beam'\]"):
    evaluation.Evaluator(TASK, 'validation', LENGTHS, methods=['beam'])


def test_length_buckets_give_the_same_predictions(model):
  """Examples sorted by length, each batch padded to its bucket, results back in order: the
  same predictions as every batch padded to TASK_FEATURE_LENGTHS."""
  from prompt_tuning.data import batching
  lengths = {'inputs': 512, 'targets': 8}
  kw = dict(methods=('generate', 'rank'), batch_size=8, max_examples=24)
  fixed = evaluation.Evaluator(TASK, 'validation', lengths, **kw)
  bucketed = evaluation.Evaluator(TASK, 'validation', lengths,
                                  buckets=batching.resolve('auto', lengths), **kw)
  widths = [rows.shape[1] for _, rows, _ in runner.batches(bucketed.inputs, 8,
                                                           buckets=bucketed.buckets['inputs'])]
  assert max(widths) < 512 and len(set(widths)) > 1, widths
  assert bucketed.label_targets.shape[1] <= 8
  assert fixed.generate(model) == bucketed.generate(model)
  assert fixed.rank(model) == bucketed.rank(model)

"""Batches, eval examples, evaluation, registry and error paths of the SeqIO data layer."""

import importlib
import json
import logging
import os

import numpy as np
import pytest

seqio = pytest.importorskip('seqio')

from prompt_tuning.data import pipeline, tasks, vocabularies  # noqa: E402
from prompt_tuning.data.vocab import SentencePieceVocab  # noqa: E402
from prompt_tuning.testing import VOCAB  # noqa: E402

QUICK = {'inputs': 16, 'targets': 4}


@pytest.fixture(scope='module')
def real(shared):
  """Points the text tasks at shared/'s T5 vocabulary and data for this module."""
  vocab, data = shared(*VOCAB), shared('data')
  saved = tasks.get_settings()
  tasks.set_vocabulary_path(vocab)
  tasks.set_local_data_dir(data)
  yield SentencePieceVocab(vocab)
  tasks.restore_settings(saved)


@pytest.fixture(scope='module')
def handwritten_files(tmp_path_factory, real):
  """A folder with tiny official-schema MultiRC, ReCoRD and STS-B files (plus shared's data)."""
  root = tmp_path_factory.mktemp('official')
  os.makedirs(root / 'superglue' / 'MultiRC')
  multirc = {'idx': 0, 'passage': {'text': 'P.', 'questions': [
      {'idx': 0, 'question': 'Q0?', 'answers': [{'idx': 0, 'text': 'a', 'label': 1},
                                                 {'idx': 1, 'text': 'b', 'label': 0}]},
      {'idx': 1, 'question': 'Q1?', 'answers': [{'idx': 2, 'text': 'c', 'label': 1}]}]}}
  (root / 'superglue' / 'MultiRC' / 'val.jsonl').write_text(json.dumps(multirc) + '\n')
  os.makedirs(root / 'superglue' / 'ReCoRD')
  text = 'Rover chased a cat in Paris.'
  record = {'idx': 5, 'passage': {'text': text, 'entities': [
      {'start': 0, 'end': 4}, {'start': 22, 'end': 26}]}, 'qas': [
          {'idx': 9, 'query': '@placeholder is a dog.', 'answers': [
              {'start': 0, 'end': 4, 'text': 'Rover'},
              {'start': 0, 'end': 11, 'text': 'Rover chased'}]},
          {'idx': 10, 'query': 'The cat is in @placeholder.', 'answers': [
              {'start': 22, 'end': 26, 'text': 'Paris'}]}]}
  (root / 'superglue' / 'ReCoRD' / 'val.jsonl').write_text(json.dumps(record) + '\n')
  os.makedirs(root / 'glue' / 'STS-B')
  rows = ['index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore']
  rows += [f'{i}\tg\tf\ty\t{i}\tnone\tnone\tA{i}.\tB{i}.\t{s}' for i, s in
           enumerate(['5.000', '1.600', '0.400', '4.400'])]
  (root / 'glue' / 'STS-B' / 'dev.tsv').write_text('\n'.join(rows) + '\n')
  return root


@pytest.fixture
def handwritten(handwritten_files):
  saved = tasks.get_settings()
  tasks.set_local_data_dir(handwritten_files)
  yield handwritten_files
  tasks.restore_settings(saved)


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


# ================================== batches ==================================

def test_batches_shapes_padding_and_labels():
  batch = next(pipeline.get_batches('quickstart_max', 'train', QUICK, 8, seed=0))
  assert sorted(batch) == sorted(pipeline.BATCH_FEATURES)
  for key, value in batch.items():
    assert value.dtype == np.int32
    assert value.shape == (8, 16 if key == 'encoder_input_tokens' else 4)
  byte = vocabularies.byte_vocabulary()
  for inputs, targets, decoder_inputs, weights in zip(
      batch['encoder_input_tokens'], batch['decoder_target_tokens'],
      batch['decoder_input_tokens'], batch['decoder_loss_weights']):
    text = byte.decode([t for t in inputs.tolist() if t > 1])
    assert text.startswith('max: ')
    n = len(text)
    assert inputs[n] == 1 and not inputs[n + 1:].any()  # EOS, then padding
    assert targets.tolist() == [ord(max(text[5:])) + 3, 1, 0, 0]  # bytes are shifted by 3
    assert decoder_inputs.tolist() == [0] + targets[:-1].tolist()
    assert weights.tolist() == [1, 1, 0, 0]


def test_batches_are_deterministic_and_resume_exactly():
  first = take(pipeline.get_batches('quickstart_mixture', 'train', QUICK, 4, seed=7), 5)
  again = take(pipeline.get_batches('quickstart_mixture', 'train', QUICK, 4, seed=7), 5)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a['encoder_input_tokens'], b['encoder_input_tokens'])
  other = next(pipeline.get_batches('quickstart_mixture', 'train', QUICK, 4, seed=8))
  assert not np.array_equal(other['encoder_input_tokens'], first[0]['encoder_input_tokens'])
  resumed = take(pipeline.get_batches('quickstart_mixture', 'train', QUICK, 4, seed=7,
                                      start_position=3), 2)
  for a, b in zip(resumed, first[3:]):
    for key in pipeline.BATCH_FEATURES:
      np.testing.assert_array_equal(a[key], b[key])
  prefixes = {bytes((r[r > 1] - 3).astype(np.uint8)).split(b':')[0]
              for b in first for r in b['encoder_input_tokens']}
  assert prefixes <= {b'first', b'last', b'max', b'min'} and len(prefixes) > 1


def test_grouped_batches_are_deterministic_resume_exactly_and_hold_the_same_examples(real):
  from prompt_tuning.data import batching
  lengths = {'inputs': 512, 'targets': 8}
  kw = dict(seed=5, group_window=4)
  grouped = take(pipeline.get_batches('super_glue_rte_local', 'train', lengths, 4, **kw), 10)
  plain = take(pipeline.get_batches('super_glue_rte_local', 'train', lengths, 4, seed=5), 8)
  # Windows 0 and 1 (8 batches) hold exactly the plain stream's first 8 batches' examples.
  assert _rows(grouped[:8]) == _rows(plain)
  spread = lambda bs: np.mean([np.ptp(batching.row_lengths(b['encoder_input_tokens'])) for b in bs])
  assert spread(grouped) < spread(plain) / 2
  for start in (5, 8):  # mid-window and at a window's start
    resumed = take(pipeline.get_batches('super_glue_rte_local', 'train', lengths, 4,
                                        start_position=start, **kw), 2)
    for a, b in zip(resumed, grouped[start:]):
      for key in pipeline.BATCH_FEATURES:
        np.testing.assert_array_equal(a[key], b[key])


def _rows(batches):
  return sorted(tuple(r) for b in batches for r in b['encoder_input_tokens'].tolist())


def test_batches_shard_the_examples_and_stop_without_repeat():
  kwargs = dict(shuffle=False, repeat=False)
  everything = list(pipeline.get_batches('quickstart_min', 'validation', QUICK, 10, **kwargs))
  assert len(everything) == 20  # 200 examples, no repeat
  shards = [list(pipeline.get_batches('quickstart_min', 'validation', QUICK, 10, shard_index=i,
                                      num_shards=2, **kwargs)) for i in range(2)]
  assert [len(s) for s in shards] == [10, 10]
  assert _rows(shards[0] + shards[1]) == _rows(everything)
  assert not set(_rows(shards[0])) & set(_rows(shards[1])) or len(set(_rows(everything))) < 200
  # drop_remainder: 200 // 64 batches.
  assert len(list(pipeline.get_batches('quickstart_min', 'validation', QUICK, 64, **kwargs))) == 3
  with pytest.raises(ValueError, match='shard_index'):
    pipeline.get_batches('quickstart_min', 'train', QUICK, 4, shard_index=2, num_shards=2)


def test_batches_of_a_real_task(real):
  sp = real
  batch = next(pipeline.get_batches('super_glue_rte_local', 'train', {'inputs': 32, 'targets': 8},
                                    4, seed=0))
  labels = {sp.decode(row) for row in batch['decoder_target_tokens'].tolist()}
  assert labels <= {'entailment', 'not_entailment'}
  for row in batch['encoder_input_tokens'].tolist():
    assert row[-1] == 1  # every RTE input is longer than 32 tokens: cut to 31 + EOS
    assert sp.decode(row).startswith('rte hypothesis: ')


# =============================== eval examples ===============================

def test_eval_examples_tokens_metadata_and_truncation(real, caplog):
  sp = real
  expected = [tasks.format_example('super_glue_rte_local', raw)[0]
              for raw in tasks.read_local_examples('super_glue_rte_local', 'validation')[:20]]
  token_counts = [len(sp.encode(e['inputs'])) + 1 for e in expected]
  num_long = sum(n > 64 for n in token_counts)
  assert 0 < num_long < 20  # the check below can fail both ways
  with caplog.at_level(logging.WARNING, logger='prompt_tuning'):
    examples, truncated = pipeline.get_eval_examples(
        'super_glue_rte_local', 'validation', {'inputs': 64, 'targets': 8}, max_examples=20)
  assert len(examples) == 20 and truncated == num_long
  assert f'{num_long} of 20 examples' in caplog.text and 'TASK_FEATURE_LENGTHS' in caplog.text
  for i, (example, want, count) in enumerate(zip(examples, expected, token_counts)):
    assert example['idx'] == i and example['task'] == 'super_glue_rte_local'
    assert example['inputs_pretokenized'] == want['inputs']
    assert example['targets_pretokenized'] == want['targets']
    assert example['targets'] == sp.encode(want['targets']) + [1]
    full = sp.encode(want['inputs']) + [1]
    assert example['inputs'] == (full if count <= 64 else full[:63] + [1])


def test_evaluate_classification_counts_invalid(real):
  examples, _ = pipeline.get_eval_examples('super_glue_rte_local', 'validation',
                                           {'inputs': 512, 'targets': 8}, max_examples=4)
  assert [e['targets_pretokenized'] for e in examples] == [
      'not_entailment', 'entailment', 'not_entailment', 'not_entailment']
  result = pipeline.evaluate_predictions(
      'super_glue_rte_local', examples, ['not_entailment', 'entailment', 'yes', 'entailment'])
  assert result == {'accuracy': 50.0, 'invalid': 1}
  mrpc, _ = pipeline.get_eval_examples('glue_mrpc_local', 'validation',
                                       {'inputs': 128, 'targets': 8}, max_examples=3)
  # Targets [1, 0, 0]; the invalid third becomes 1: tp 1, fp 2 -> F1 1/2; accuracy 1/3.
  result = pipeline.evaluate_predictions('glue_mrpc_local', mrpc,
                                         ['equivalent', 'equivalent', 'bogus'])
  assert result == {'f1': 50.0, 'accuracy': pytest.approx(100 / 3), 'invalid': 1}
  with pytest.raises(ValueError, match='predictions'):
    pipeline.evaluate_predictions('glue_mrpc_local', mrpc, ['equivalent'])


def test_evaluate_wsc_by_referent(real):
  examples, _ = pipeline.get_eval_examples('super_glue_wsc_local', 'validation',
                                           {'inputs': 128, 'targets': 8}, max_examples=3)
  # Labels 0, 1, 0 for the candidates 'anyone', 'Mr. Moncrieff', 'lemon trees'.
  assert [e['label'] for e in examples] == [0, 1, 0]
  result = pipeline.evaluate_predictions('super_glue_wsc_local', examples,
                                         ['anyone', 'mr. moncrieff', 'the lemons'])
  assert result == {'accuracy': pytest.approx(200 / 3), 'invalid': 0}
  result = pipeline.evaluate_predictions('super_glue_wsc_local', examples, ['', '', ''])
  assert result['invalid'] == 3 and result['accuracy'] == 0.0


def test_evaluate_multirc_record_and_stsb(handwritten):
  lengths = {'inputs': 64, 'targets': 8}
  multirc, _ = pipeline.get_eval_examples('super_glue_multirc_local', 'validation', lengths)
  assert [e['idx/question'] for e in multirc] == [0, 0, 1]
  # Answers [1, 0 | 1] vs [1, 0 | 0]: F1a 2/3; question 0 exact, question 1 not.
  result = pipeline.evaluate_predictions('super_glue_multirc_local', multirc,
                                         ['True', 'False', 'False'])
  assert result == {'f1': pytest.approx(200 / 3), 'exact_match': 50.0, 'invalid': 0}
  record, _ = pipeline.get_eval_examples('super_glue_record_local', 'validation', lengths)
  assert [(e['targets_pretokenized'], e['answers']) for e in record] == [
      ('Rover', ['Rover', 'Rover chased']), ('Rover chased', ['Rover', 'Rover chased']),
      ('Paris', ['Paris'])]
  # Query 9 is scored once (its first copy: 'rover' is right); query 10 is wrong.
  result = pipeline.evaluate_predictions('super_glue_record_local', record,
                                         ['rover', 'nothing', 'London'])
  assert result == {'em': 50.0, 'f1': 50.0, 'invalid': 0}
  stsb, _ = pipeline.get_eval_examples('glue_stsb_local', 'validation', lengths)
  assert [e['targets_pretokenized'] for e in stsb] == ['5.0', '1.6', '0.4', '4.4']
  result = pipeline.evaluate_predictions('glue_stsb_local', stsb, ['5.0', '1.0', '0.5', 'high'])
  gold, predicted = [5.0, 1.6, 0.4, 4.4], [5.0, 1.0, 0.5, -1.0]
  assert result['pearson_corrcoef'] == pytest.approx(100 * np.corrcoef(gold, predicted)[0, 1])
  assert result['spearman_corrcoef'] == pytest.approx(100 * np.corrcoef([4, 2, 1, 3],
                                                                        [4, 3, 2, 1])[0, 1])
  assert result['invalid'] == 1


def test_evaluate_a_mixture_per_task_and_mean():
  examples, truncated = pipeline.get_eval_examples('quickstart_mixture', 'validation', QUICK,
                                                   max_examples=5)
  assert truncated == 0 and len(examples) == 20
  assert sorted({e['task'] for e in examples}) == [
      'quickstart_first', 'quickstart_last', 'quickstart_max', 'quickstart_min']
  predictions = [e['targets_pretokenized'] if e['task'] in ('quickstart_max', 'quickstart_min')
                 else 'x' for e in examples]
  result = pipeline.evaluate_predictions('quickstart_mixture', examples, predictions)
  assert result['quickstart_max/accuracy'] == 100.0
  assert result['quickstart_first/accuracy'] == 0.0
  assert result['accuracy'] == 50.0 and result['invalid'] == 10


# ================================ registry ================================

def test_registered_names_and_task_info():
  for task in ('boolq', 'cb', 'copa', 'multirc', 'record', 'rte', 'wic', 'wsc'):
    for name in (f'super_glue_{task}', f'super_glue_{task}_local',
                 f'taskless_super_glue_{task}', f'taskless_super_glue_{task}_local'):
      assert tasks.TASK_INFO[name].benchmark == 'super_glue'
      assert isinstance(tasks.get_task_or_mixture(name), seqio.Task)
  for task in ('cola', 'sst2', 'mrpc', 'qqp', 'stsb', 'mnli', 'mnli_matched', 'mnli_mismatched',
               'qnli', 'rte'):
    for name in (f'glue_{task}', f'glue_{task}_local', f'taskless_glue_{task}_local'):
      assert tasks.TASK_INFO[name].benchmark == 'glue'
  main = {name: tasks.TASK_INFO[name].main_metric for name in (
      'glue_cola', 'glue_stsb', 'glue_mrpc', 'glue_qqp', 'glue_sst2', 'super_glue_cb',
      'super_glue_multirc', 'super_glue_record', 'super_glue_wsc')}
  assert main == {'glue_cola': 'matthews_corrcoef', 'glue_stsb': 'pearson_corrcoef',
                  'glue_mrpc': 'f1', 'glue_qqp': 'f1', 'glue_sst2': 'accuracy',
                  'super_glue_cb': 'mean_3class_f1', 'super_glue_multirc': 'f1',
                  'super_glue_record': 'em', 'super_glue_wsc': 'accuracy'}
  assert tasks.TASK_INFO['super_glue_rte'].labels == ('entailment', 'not_entailment')
  assert tasks.TASK_INFO['glue_mnli'].labels == ('entailment', 'neutral', 'contradiction')
  assert tasks.TASK_INFO['super_glue_cb'].labels == ('entailment', 'contradiction', 'neutral')
  assert tasks.TASK_INFO['super_glue_copa'].labels == ('choice1', 'choice2')
  assert tasks.TASK_INFO['glue_stsb'].labels is None
  assert tasks.TASK_INFO['super_glue_record'].labels is None
  assert set(tasks.get_task_or_mixture('glue_mnli').splits) == {
      'train', 'validation', 'validation_matched', 'validation_mismatched'}
  assert set(tasks.get_task_or_mixture('glue_mnli_mismatched').splits) == {'validation'}
  assert set(tasks.get_task_or_mixture('super_glue_rte_local').splits) == {'train', 'validation'}
  features = tasks.get_task_or_mixture('glue_sst2').output_features
  assert features['inputs'].add_eos and features['targets'].add_eos


def test_reimport_is_idempotent():
  from prompt_tuning.data import glue, glue_transfer, mrqa, quickstart_tasks, super_glue
  names, registered = list(tasks.TASK_INFO), list(seqio.TaskRegistry.names())
  saved = tasks.get_settings()
  try:
    for _ in range(2):
      # each registers on import
      for module in (super_glue, glue, quickstart_tasks, mrqa, glue_transfer, tasks):
        importlib.reload(module)
  finally:
    tasks.restore_settings(saved)
  # 82 (+ quickstart_taskless_mixture), then MRQA's 14 tasks and 2 mixtures, then
  # glue_transfer's 8 tasks and 8 mixtures, then the decoder-only quickstart's 9 (quickstart_lm_*).
  assert list(tasks.TASK_INFO) == names and len(names) == 123
  assert list(seqio.TaskRegistry.names()) == registered


def test_vocabularies(real, shared):
  assert vocabularies.DEFAULT_T5_VOCAB == (
      'gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model')
  path = shared(*VOCAB)
  assert vocabularies.t5_vocabulary(path).vocab_size == 32100
  assert vocabularies.byte_vocabulary().vocab_size == 259
  assert tasks.get_vocabulary('glue_sst2').vocab_size == 32100
  assert tasks.get_vocabulary('quickstart_mixture').vocab_size == 259
  tasks.set_vocabulary(vocabularies.byte_vocabulary())
  try:
    assert tasks.get_vocabulary('super_glue_rte_local').vocab_size == 259
    examples, _ = pipeline.get_eval_examples('super_glue_rte_local', 'validation',
                                             {'inputs': 8, 'targets': 20}, max_examples=1)
    assert examples[0]['targets'] == [b + 3 for b in b'not_entailment'] + [1]
  finally:
    tasks.set_vocabulary(None)
  assert tasks.get_vocabulary('super_glue_rte_local').vocab_size == 32100


# ================================ errors ================================

def test_unknown_name_lists_close_names():
  with pytest.raises(ValueError, match='super_glue_rte_local') as error:
    tasks.get_task_or_mixture('super_glue_rte_locl')
  assert 'Did you mean' in str(error.value)
  with pytest.raises(ValueError, match='glue_sst2'):
    pipeline.get_batches('glue_sst', 'train', QUICK, 2)


def test_local_missing_file_names_path_and_variable(tmp_path, monkeypatch):
  saved = tasks.get_settings()
  try:
    tasks.set_local_data_dir(tmp_path)
    expected = os.path.join(str(tmp_path), 'glue', 'QQP', 'train.tsv')
    with pytest.raises(FileNotFoundError, match='PROMPT_TUNING_DATA_DIR') as error:
      pipeline.get_batches('glue_qqp_local', 'train', QUICK, 2)
    assert expected in str(error.value)
    tasks.set_local_data_dir(None)
    monkeypatch.setenv(tasks.LOCAL_DATA_ENV, str(tmp_path / 'env'))
    with pytest.raises(FileNotFoundError, match='env') as error:
      pipeline.get_eval_examples('super_glue_cb_local', 'validation', QUICK)
    assert os.path.join('superglue', 'CB', 'val.jsonl') in str(error.value)
    monkeypatch.delenv(tasks.LOCAL_DATA_ENV)
    with pytest.raises(FileNotFoundError, match='PROMPT_TUNING_DATA_DIR'):
      tasks.read_local_examples('glue_rte_local', 'validation')
  finally:
    tasks.restore_settings(saved)


def test_tfds_offline_error_names_the_local_variant(offline_tfds):
  tmp_path = offline_tfds
  for name in ('super_glue_rte', 'glue_sst2', 'taskless_super_glue_wsc'):
    with pytest.raises(tasks.TfdsDataMissingError, match=f"'{name}_local'") as error:
      pipeline.get_batches(name, 'train', QUICK, 2)
    assert str(tmp_path) in str(error.value)
  assert issubclass(tasks.TfdsDataMissingError, FileNotFoundError)

"""Zero-shot QQP <-> MRPC transfer tasks (data/glue_transfer.py): the real MRPC dev file and a
hand-written QQP dev file in the GLUE release's shape; answers in the other task's label words
are scored with the target task's F1 and accuracy."""

import logging
import os
import shutil

import pytest

seqio = pytest.importorskip('seqio')

from prompt_tuning.data import pipeline, tasks  # noqa: E402
from prompt_tuning.testing import VOCAB  # noqa: E402

LENGTHS = {'inputs': 256, 'targets': 8}
QQP_WORDS = {'not_equivalent': 'not_duplicate', 'equivalent': 'duplicate'}
MRPC_WORDS = {v: k for k, v in QQP_WORDS.items()}

# GLUE's QQP/dev.tsv columns; the third row lacks columns (dropped, as TFDS drops such rows).
QQP_DEV = '\n'.join([
    'id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate',
    '10\t1\t2\tHow do I learn Python?\tWhat is the best way to learn Python?\t1',
    '11\t3\t4\tWhy is the sky blue?\tHow tall is Mount Everest?\t0',
    '12\t5\t6\tA row cut short',
    '13\t7\t8\tWhat is AI?\tWhat is artificial intelligence?\t1',
    '14\t9\t10\tIs coffee bad for you?\tIs tea good for you?\t0',
]) + '\n'


@pytest.fixture(scope='module')
def data_dir(shared, tmp_path_factory):
  """shared/'s MRPC dev file and the hand-written QQP one in one folder, with T5's vocabulary."""
  root = tmp_path_factory.mktemp('glue')
  os.makedirs(root / 'glue' / 'MRPC')
  shutil.copy(shared('data', 'glue', 'MRPC', 'dev.tsv'), root / 'glue' / 'MRPC' / 'dev.tsv')
  os.makedirs(root / 'glue' / 'QQP')
  (root / 'glue' / 'QQP' / 'dev.tsv').write_text(QQP_DEV)
  saved = tasks.get_settings()
  tasks.set_vocabulary_path(shared(*VOCAB))
  tasks.set_local_data_dir(root)
  yield root
  tasks.restore_settings(saved)


def test_registered_after_every_other_task_with_the_source_words():
  names = list(tasks.TASK_INFO)
  assert names.index('glue_mrpc_from_qqp') > names.index('quickstart_taskless_mixture')
  for source, target in (('qqp', 'mrpc'), ('mrpc', 'qqp')):
    for prefix in ('', 'taskless_'):
      for suffix in ('', '_local'):
        name = f'{prefix}glue_{target}_from_{source}{suffix}'
        task = tasks.get_task_or_mixture(name)
        assert isinstance(task, seqio.Task) and list(task.splits) == ['validation']
        info = tasks.TASK_INFO[name]
        assert info.labels == tasks.TASK_INFO[f'glue_{source}'].labels  # what the model says
        assert (info.main_metric, info.benchmark) == ('f1', 'glue')
        mixture = tasks.get_task_or_mixture(f'{prefix}glue_{target}_from_{source}_zeroshot{suffix}')
        trained = f'{prefix}glue_{source}{suffix}'
        assert sorted(t.name for t in mixture.tasks) == sorted([trained, name])
        # Training reads the source only; the best prompt is picked by the source's F1.
        assert [t.name for t in mixture.tasks if 'train' in t.splits] == [trained]
        assert tasks.TASK_INFO[mixture.name].main_metric == f'{trained}/f1'


def test_mrpc_keeps_its_own_format_and_scores_qqp_words(data_dir):
  examples, _ = pipeline.get_eval_examples('glue_mrpc_from_qqp_local', 'validation', LENGTHS)
  own, _ = pipeline.get_eval_examples('glue_mrpc_local', 'validation', LENGTHS)
  assert len(examples) == len(own) == 408
  for ex, base in zip(examples, own):
    for key in ('inputs_pretokenized', 'targets_pretokenized', 'inputs', 'targets', 'idx'):
      assert ex[key] == base[key]
  assert examples[0]['inputs_pretokenized'].startswith('mrpc sentence1: He said the foodservice')
  targets = [ex['targets_pretokenized'] for ex in examples]
  perfect = [QQP_WORDS[t] for t in targets]
  assert pipeline.evaluate_predictions('glue_mrpc_from_qqp_local', examples, perfect) == {
      'f1': 100.0, 'accuracy': 100.0, 'invalid': 0}
  # The same answers in MRPC's own task mean nothing (its words are MRPC's).
  assert pipeline.evaluate_predictions('glue_mrpc_local', own, perfect)['invalid'] == 408
  # Always "duplicate": MRPC dev's majority class, GLUE's well-known 68.4 accuracy / 81.2 F1.
  positives = targets.count('equivalent')
  assert positives == 279
  result = pipeline.evaluate_predictions('glue_mrpc_from_qqp_local', examples,
                                         ['duplicate'] * 408)
  assert result['accuracy'] == pytest.approx(100 * 279 / 408)
  assert result['f1'] == pytest.approx(100 * 2 * 279 / (2 * 279 + 129))


def test_qqp_release_file_and_mrpc_words(data_dir, caplog):
  with caplog.at_level(logging.WARNING, logger='prompt_tuning'):
    examples, _ = pipeline.get_eval_examples('glue_qqp_from_mrpc_local', 'validation', LENGTHS)
  assert [(ex['inputs_pretokenized'], ex['targets_pretokenized'], ex['idx'])
          for ex in examples] == [
      ('qqp question1: How do I learn Python? question2: What is the best way to learn Python?',
       'duplicate', 0),
      ('qqp question1: Why is the sky blue? question2: How tall is Mount Everest?',
       'not_duplicate', 1),
      ('qqp question1: What is AI? question2: What is artificial intelligence?', 'duplicate', 3),
      ('qqp question1: Is coffee bad for you? question2: Is tea good for you?', 'not_duplicate',
       4)]
  assert 'dropped 1 malformed row' in caplog.text
  taskless, _ = pipeline.get_eval_examples('taskless_glue_qqp_from_mrpc_local', 'validation',
                                           LENGTHS)
  assert taskless[0]['inputs_pretokenized'] == (
      'question1: How do I learn Python? question2: What is the best way to learn Python?')
  perfect = [MRPC_WORDS[ex['targets_pretokenized']] for ex in examples]
  assert pipeline.evaluate_predictions('glue_qqp_from_mrpc_local', examples, perfect) == {
      'f1': 100.0, 'accuracy': 100.0, 'invalid': 0}
  # Targets 1, 0, 1, 0 read as 1, 1, 1, invalid (-> the wrong class, 1): 2 of 4 right;
  # tp 2, fp 2, fn 0 -> F1 2/3.
  result = pipeline.evaluate_predictions('glue_qqp_from_mrpc_local', examples,
                                         ['equivalent', 'equivalent', 'equivalent', 'maybe'])
  assert result == {'f1': pytest.approx(200 / 3), 'accuracy': 50.0, 'invalid': 1}


def test_zeroshot_mixture_reports_both_tasks(data_dir):
  name = 'glue_mrpc_from_qqp_zeroshot_local'
  examples, _ = pipeline.get_eval_examples(name, 'validation', LENGTHS)
  by_task = {}
  for ex in examples:
    by_task.setdefault(ex['task'], []).append(ex)
  assert {k: len(v) for k, v in by_task.items()} == {'glue_mrpc_from_qqp_local': 408,
                                                     'glue_qqp_local': 4}
  # A QQP-trained model answers both in QQP's words.
  predictions = [ex['targets_pretokenized'] if ex['task'] == 'glue_qqp_local'
                 else QQP_WORDS[ex['targets_pretokenized']] for ex in examples]
  result = pipeline.evaluate_predictions(name, examples, predictions)
  assert result['glue_qqp_local/f1'] == result['glue_mrpc_from_qqp_local/f1'] == 100.0
  assert result['glue_mrpc_from_qqp_local/accuracy'] == 100.0 and result['invalid'] == 0

"""Bad task data and a bad vocabulary give ONE line naming the file (and line) and what to do.

Each test writes a damaged copy of a real shared/ file to tmp_path and points the `*_local`
tasks (or the vocabulary) at it. Readers are called directly where that suffices (fast); one
test goes through the training pipeline to check the error is not wrapped on the way out.
"""

import json
import os
import shutil
import socket

import pytest

seqio = pytest.importorskip('seqio')

from prompt_tuning.data import pipeline, tasks, vocabularies  # noqa: E402
from prompt_tuning.testing import VOCAB  # noqa: E402

QUICK = {'inputs': 16, 'targets': 4}


@pytest.fixture
def settings():
  """Restores the data folder and vocabulary settings after the test."""
  saved = tasks.get_settings()
  yield tasks
  tasks.restore_settings(saved)


@pytest.fixture
def real_vocab(shared, settings):
  tasks.set_vocabulary_path(shared(*VOCAB))


def bad_copy(shared, root, relative, edit, keep=40):
  """Copies the first `keep` lines of shared/data/<relative> to root/<relative>, then edit(lines)
  changes them in place; returns the copy's path."""
  with open(shared('data', *relative.split('/')), encoding='utf-8') as f:
    lines = f.read().splitlines()[:keep]
  edit(lines)
  path = os.path.join(str(root), *relative.split('/'))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')
  return path


def edit_json(index, fn):
  """An edit that applies fn to the JSON object of line index+1 (fn returns the new value)."""
  def edit(lines):
    lines[index] = json.dumps(fn(json.loads(lines[index])))
  return edit


def without(key):
  def fn(row):
    del row[key]
    return row
  return fn


def one_line_error(error_type, fn):
  with pytest.raises(error_type) as error:
    fn()
  message = str(error.value)
  assert '\n' not in message and message.strip() == message, message
  return message


# ================================= JSONL rows =================================

def test_row_missing_a_field_names_file_line_and_field(shared, settings, tmp_path):
  path = bad_copy(shared, tmp_path, 'superglue/RTE/train.jsonl',
                  edit_json(6, without('hypothesis')))
  tasks.set_local_data_dir(tmp_path)
  message = one_line_error(tasks.DataFileError,
                           lambda: tasks.read_local_examples('super_glue_rte_local', 'train'))
  assert message.startswith(f'{path}:7: ')
  assert "missing field 'hypothesis'" in message
  assert 'idx, premise, hypothesis, label' in message  # the fields the task needs
  assert issubclass(tasks.DataFileError, ValueError)
  # The up-front check reports the same row.
  assert one_line_error(tasks.DataFileError, lambda: tasks.validate_task_data(
      'super_glue_rte_local', ['train'])) == message


def test_line_cut_mid_json_names_the_file_line(shared, settings, tmp_path):
  def cut(lines):
    lines[11] = lines[11][:len(lines[11]) // 2]  # e.g. an interrupted copy
  path = bad_copy(shared, tmp_path, 'superglue/RTE/val.jsonl', cut)
  tasks.set_local_data_dir(tmp_path)
  message = one_line_error(tasks.DataFileError,
                           lambda: tasks.read_local_examples('super_glue_rte_local', 'validation'))
  assert message.startswith(f'{path}:12: invalid JSON')
  assert 'line 1 column' not in message  # json's own position within the line is not the file's


BAD_ROWS = [
    # (task, split, file, line index, edit, expected text after '<path>:<line>: ')
    ('super_glue_rte_local', 'validation', 'superglue/RTE/val.jsonl', 3,
     edit_json(3, lambda row: [row]), 'the row is a list, not a JSON object'),
    ('super_glue_rte_local', 'validation', 'superglue/RTE/val.jsonl', 4,
     edit_json(4, lambda row: {**row, 'label': 'maybe'}),
     "label 'maybe' is not one of the classes \"entailment\", \"not_entailment\""),
    ('super_glue_rte_local', 'train', 'superglue/RTE/train.jsonl', 0,
     edit_json(0, without('label')), "missing field 'label'"),
    ('super_glue_rte_local', 'validation', 'superglue/RTE/val.jsonl', 2,
     edit_json(2, lambda row: {**row, 'premise': None}), "field 'premise' is null"),
    ('super_glue_boolq_local', 'validation', 'superglue/BoolQ/val.jsonl', 5,
     edit_json(5, lambda row: {**row, 'label': 'False'}),  # a string: would read as True
     "label 'False' is not one of the classes false, true"),
    ('super_glue_copa_local', 'train', 'superglue/COPA/train.jsonl', 9,
     edit_json(9, lambda row: {**row, 'label': 2}), 'label 2 is not one of the classes 0, 1'),
    ('super_glue_wsc_local', 'validation', 'superglue/WSC/val.jsonl', 1,
     edit_json(1, lambda row: {**row, 'target': {**row['target'], 'span2_index': 999}}),
     'bad WSC spans'),
]


@pytest.mark.parametrize('name,split,relative,index,edit,expected', BAD_ROWS,
                         ids=[f'{r[0]}-{r[5][:20]}' for r in BAD_ROWS])
def test_bad_rows(shared, settings, tmp_path, name, split, relative, index, edit, expected):
  path = bad_copy(shared, tmp_path, relative, edit)
  tasks.set_local_data_dir(tmp_path)
  message = one_line_error(tasks.DataFileError, lambda: tasks.read_local_examples(name, split))
  assert message.startswith(f'{path}:{index + 1}: {expected}'), message
  assert message.endswith('remove this line).')


def test_nested_field_is_named_by_its_path(shared, settings, tmp_path):
  def drop_label(row):
    del row['passage']['questions'][1]['answers'][2]['label']
    return row
  path = bad_copy(shared, tmp_path, 'superglue/MultiRC/val.jsonl', edit_json(0, drop_label),
                  keep=3)
  tasks.set_local_data_dir(tmp_path)
  message = one_line_error(tasks.DataFileError, lambda: tasks.read_local_examples(
      'super_glue_multirc_local', 'validation'))
  assert message.startswith(f"{path}:1: missing field 'passage.questions[1].answers[2].label'")


# ================================= TSV rows =================================

def test_tsv_row_with_a_missing_column(shared, settings, tmp_path):
  def cut(lines):
    lines[4] = lines[4].split('\t')[0]  # the sentence without its label column
  path = bad_copy(shared, tmp_path, 'glue/SST-2/dev.tsv', cut)
  tasks.set_local_data_dir(tmp_path)
  message = one_line_error(tasks.DataFileError,
                           lambda: tasks.read_local_examples('glue_sst2_local', 'validation'))
  assert message.startswith(f"{path}:5: the row has 1 tab-separated columns, so no 'label'")
  assert 'sentence, label' in message  # the columns the task needs


def test_tsv_bad_label_and_header(shared, settings, tmp_path):
  def relabel(lines):
    lines[2] = lines[2].rsplit('\t', 1)[0] + '\tpositiv'
  path = bad_copy(shared, tmp_path, 'glue/SST-2/dev.tsv', relabel)
  tasks.set_local_data_dir(tmp_path)
  message = one_line_error(tasks.DataFileError,
                           lambda: tasks.read_local_examples('glue_sst2_local', 'validation'))
  assert message.startswith(f"{path}:3: label 'positiv' is not one of the classes negative, "
                            'positive or their ids 0-1')

  def rename(lines):
    lines[0] = lines[0].replace('#2 String', 'String 2')
  path = bad_copy(shared, tmp_path, 'glue/MRPC/dev.tsv', rename)
  message = one_line_error(tasks.DataFileError,
                           lambda: tasks.read_local_examples('glue_mrpc_local', 'validation'))
  assert message.startswith(f"{path}:1: the header has no column '#2 String'")


# ================================ missing files ================================

def test_missing_file_names_path_and_variable(settings, tmp_path, monkeypatch):
  tasks.set_local_data_dir(tmp_path)
  expected = os.path.join(str(tmp_path), 'superglue', 'RTE', 'train.jsonl')
  for check in (lambda: tasks.read_local_examples('super_glue_rte_local', 'train'),
                lambda: tasks.validate_task_data('super_glue_rte_local', ['train'])):
    message = one_line_error(tasks.DataFileMissingError, check)
    assert message.startswith(f'{expected}: file not found') and 'PROMPT_TUNING_DATA_DIR' in message
  assert issubclass(tasks.DataFileMissingError, tasks.DataFileError)
  assert issubclass(tasks.DataFileMissingError, FileNotFoundError)
  tasks.set_local_data_dir(None)
  monkeypatch.delenv(tasks.LOCAL_DATA_ENV, raising=False)
  message = one_line_error(tasks.DataFileMissingError,
                           lambda: tasks.validate_task_data('glue_sst2_local', ['validation']))
  assert 'No local data folder' in message and 'PROMPT_TUNING_DATA_DIR' in message


# ================================ vocabulary ================================

def test_missing_or_bad_vocabulary_file(shared, settings, tmp_path, monkeypatch):
  missing = str(tmp_path / 'nowhere' / 'sentencepiece.model')
  tasks.set_vocabulary_path(missing)
  message = one_line_error(vocabularies.VocabularyError,
                           lambda: tasks.check_vocabulary('super_glue_rte_local'))
  assert message.startswith(f'{missing}: SentencePiece model file not found')
  assert 'PROMPT_TUNING_VOCAB' in message and 'sentencepiece.model' in message
  assert tasks.VocabularyError is vocabularies.VocabularyError
  assert issubclass(tasks.VocabularyError, ValueError)
  # From the environment variable too; a file that is no SentencePiece model is named as well.
  not_a_model = str(tmp_path / 'dev.tsv')
  shutil.copy(shared('data', 'glue', 'SST-2', 'dev.tsv'), not_a_model)
  tasks.set_vocabulary_path(None)
  monkeypatch.setenv(tasks.VOCAB_ENV, not_a_model)
  message = one_line_error(vocabularies.VocabularyError,
                           lambda: tasks.check_vocabulary('taskless_glue_sst2_local'))
  assert message.startswith(f'{not_a_model}: cannot load this SentencePiece model')
  assert 'PROMPT_TUNING_VOCAB' in message
  tasks.check_vocabulary('quickstart_mixture')  # bytes: no file to load


def test_default_vocabulary_stays_lazy(settings, monkeypatch):
  def no_network(*args, **kwargs):
    raise AssertionError('the test tried to reach the network')
  monkeypatch.setattr(socket.socket, 'connect', no_network)
  monkeypatch.setattr(socket, 'create_connection', no_network)
  tasks.set_vocabulary_path(None)
  monkeypatch.delenv(tasks.VOCAB_ENV, raising=False)
  vocab = tasks.text_vocabulary()  # gs://: not opened until used
  assert vocab.sentencepiece_model_file == vocabularies.DEFAULT_T5_VOCAB


# ============================ validate_task_data ============================

def test_validate_task_data_passes_on_real_files(shared, settings, monkeypatch):
  tasks.set_local_data_dir(shared('data'))
  tasks.validate_task_data('super_glue_rte_local', ['train', 'validation'])
  tasks.validate_task_data('glue_sst2_local', ['validation'])
  # TFDS-sourced and generated tasks read nothing here (and never reach the network).
  import tensorflow_datasets as tfds

  def no_network(*args, **kwargs):
    raise AssertionError('validate_task_data tried to load data it should leave alone')
  monkeypatch.setattr(tfds, 'builder', no_network)
  monkeypatch.setattr(socket.socket, 'connect', no_network)
  tasks.validate_task_data('glue_sst2', ['train', 'validation'])
  tasks.validate_task_data('quickstart_mixture', ['train', 'validation'])
  with pytest.raises(ValueError, match='Did you mean: super_glue_rte_local'):
    tasks.validate_task_data('super_glue_rte_locl', ['train'])
  with pytest.raises(ValueError, match="no split 'test'"):
    tasks.validate_task_data('super_glue_rte_local', ['test'])


# ============================ through the pipeline ============================

def test_bad_row_in_the_training_pipeline(shared, real_vocab, tmp_path):
  path = bad_copy(shared, tmp_path, 'superglue/RTE/train.jsonl', edit_json(2, without('premise')))
  tasks.set_local_data_dir(tmp_path)
  message = one_line_error(tasks.DataFileError, lambda: next(
      pipeline.get_batches('super_glue_rte_local', 'train', QUICK, 2)))
  assert message.startswith(f"{path}:3: missing field 'premise'")


def test_missing_vocabulary_in_the_pipeline_is_not_wrapped(shared, settings, tmp_path):
  # The vocabulary is first loaded while tf.data traces the tokenizer; autograph would wrap
  # the error in a multi-line StagingError.
  tasks.set_local_data_dir(shared('data'))
  missing = str(tmp_path / 'sentencepiece.model')
  tasks.set_vocabulary_path(missing)
  for build in (lambda: pipeline.get_batches('super_glue_cb_local', 'validation', QUICK, 2),
                lambda: pipeline.get_eval_examples('super_glue_cb_local', 'validation', QUICK)):
    assert one_line_error(vocabularies.VocabularyError, build).startswith(missing)

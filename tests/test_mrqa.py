"""MRQA (the paper's Table 1 domain shift): the tasks, MRQA's release files, T5's SQuAD format and
the MRQA evaluation's EM / F1.

The release files are written here, small, in MRQA's format (a gzipped header line, then one JSON
object per context); every expected string and score is worked out by hand: T5's
`_pad_punctuation` puts spaces around each ASCII punctuation mark and squashes whitespace, and
`mrqa_official_eval.py` normalises answers (lowercase, no punctuation, no a/an/the, single spaces)
before EM and token F1, taking the best over a question's answers.
"""

import gzip
import json
import os

import pytest

seqio = pytest.importorskip('seqio')

# tasks first: it registers the benchmarks in its order (importing mrqa alone registers it first).
from prompt_tuning.data import tasks  # noqa: E402
from prompt_tuning.data import metrics, mrqa, pipeline, postprocessors  # noqa: E402
from prompt_tuning.data import vocabularies  # noqa: E402
from prompt_tuning import testing  # noqa: E402

OOD_FILES = {'textbook_qa': 'TextbookQA', 'bio_asq': 'BioASQ',
             'relation_extraction': 'RelationExtraction', 'duo_rc': 'DuoRC.ParaphraseRC',
             'race': 'RACE', 'drop': 'DROP'}
NEEDS = ('MRQA lines after the header need {"context": text, "qas": [{"qid": text, "question": '
         'text, "answers": [text, ...]}, ...]}')


def qa(qid, question, *answers):
  # detected_answers and the token fields are in the release files; the tasks do not read them.
  return {'qid': qid, 'question': question, 'answers': list(answers), 'question_tokens': [],
          'detected_answers': [{'text': answers[0], 'char_spans': [[0, 1]],
                                'token_spans': [[0, 0]]}] if answers else []}


SQUAD_TRAIN = [
    {'context': 'The Normans (Norman: Nourmands; French: Normands) gave their name to Normandy, '
                'a region in France.', 'context_tokens': [],
     'qas': [qa('n1', 'In what country is Normandy located?', 'France', 'France.', 'France'),
             qa('n2', 'Who gave their name to Normandy?', 'The Normans', 'Normans')]},
    {'context': "  Tesla's AC motor (1888) cost\u00a0$2.50!\n", 'context_tokens': [],
     'qas': [qa('t1', 'What did it cost? ', '$2.50')]},
]
SQUAD_DEV = [
    {'context': 'Warsaw is the capital of Poland.', 'context_tokens': [],
     'qas': [qa('w1', 'What is the\tcapital of Poland?', 'Warsaw', 'warsaw')]},
]
OOD = [
    {'context': 'An atom has a nucleus. The nucleus holds protons and neutrons.',
     'context_tokens': [],
     'qas': [qa('a1', 'What does an atom have?', 'a nucleus', 'nucleus'),
             qa('a2', 'What does the nucleus hold?', 'protons and neutrons', 'protons')]},
    {'context': 'Rain falls on the U.S. coast.', 'context_tokens': [],
     'qas': [qa('r1', 'Where does rain fall?', 'the U.S. coast')]},
]


def release_file(root, folder, name, contexts, header=True, gz=True):
  path = os.path.join(str(root), 'mrqa', folder, f'{name}.jsonl.gz')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  lines = ([json.dumps({'header': {'dataset': name, 'split': folder}})] if header else [])
  text = ''.join(line + '\n' for line in lines + [json.dumps(c) for c in contexts])
  with open(path, 'wb') as f:
    f.write(gzip.compress(text.encode()) if gz else text.encode())
  return path


@pytest.fixture
def data_dir(tmp_path):
  """MRQA release files in tmp_path (the six out-of-domain sets alike), as the local data folder
  for one test; the settings are restored after it."""
  release_file(tmp_path, 'train', 'SQuAD', SQUAD_TRAIN)
  release_file(tmp_path, 'dev', 'SQuAD', SQUAD_DEV)
  for name in OOD_FILES.values():
    release_file(tmp_path, 'dev', name, OOD)
  saved = tasks.get_settings()
  tasks.set_local_data_dir(tmp_path)
  tasks.set_vocabulary(vocabularies.byte_vocabulary())  # no SentencePiece file needed
  yield tmp_path
  tasks.restore_settings(saved)


def formatted(name, split):
  return [f for raw in tasks.read_local_examples(name, split)
          for f in tasks.format_example(name, raw)]


def tf_text(name, split):
  """The task's text preprocessing in tf.data (up to tokenization), in file order."""
  ds = testing.text_dataset(name, split)
  return [{'qid': ex['qid'].decode(), 'inputs': ex['inputs'].decode(),
           'targets': ex['targets'].decode(), 'answers': [a.decode() for a in ex['answers']]}
          for ex in ds.as_numpy_iterator()]


# ================================ tasks ================================

def test_registered_names_splits_and_task_info():
  sets = ('squad',) + mrqa.OUT_OF_DOMAIN
  assert mrqa.OUT_OF_DOMAIN == tuple(OOD_FILES)
  for name in sets:
    for full in (f'mrqa_{name}', f'mrqa_{name}_local'):
      task = tasks.get_task_or_mixture(full)
      assert isinstance(task, seqio.Task)
      assert set(task.splits) == ({'train', 'validation'} if name == 'squad' else {'validation'})
      assert tasks.TASK_INFO[full] == tasks.TaskInfo(None, 'f1', 'mrqa')
      assert task.metric_fns == [metrics.mrqa]
      assert task.postprocess_fn('x', example={'answers': [b'a', b'b']}, is_target=True) == [
          'a', 'b']
    with pytest.raises(ValueError, match='Unknown task'):
      tasks.get_task_or_mixture(f'taskless_mrqa_{name}')  # the inputs carry no task name
  for suffix in ('', '_local'):
    mixture = tasks.get_task_or_mixture(f'mrqa_out_of_domain{suffix}')
    assert sorted(t.name for t in mixture.tasks) == sorted(
        f'mrqa_{name}{suffix}' for name in mrqa.OUT_OF_DOMAIN)
    assert tasks.TASK_INFO[f'mrqa_out_of_domain{suffix}'].main_metric == 'f1'
  assert tasks.release_file_reader('mrqa_race')[1] == 'mrqa/dev/RACE.jsonl.gz'
  assert tasks.release_file_reader('mrqa_squad')[1] == 'mrqa/train/SQuAD.jsonl.gz'


def test_release_files_give_one_example_per_question(data_dir):
  assert tasks.read_local_examples('mrqa_squad_local', 'train') == [
      {'qid': 'n1', 'question': 'In what country is Normandy located?',
       'context': SQUAD_TRAIN[0]['context'], 'answers': ['France', 'France.', 'France']},
      {'qid': 'n2', 'question': 'Who gave their name to Normandy?',
       'context': SQUAD_TRAIN[0]['context'], 'answers': ['The Normans', 'Normans']},
      # TFDS strips the context and the question; answers stay as they are.
      {'qid': 't1', 'question': 'What did it cost?', 'context': "Tesla's AC motor (1888) "
       "cost\u00a0$2.50!", 'answers': ['$2.50']}]
  assert [ex['qid'] for ex in tasks.read_local_examples('mrqa_squad_local', 'validation')] == [
      'w1']
  for name in mrqa.OUT_OF_DOMAIN:
    assert [ex['qid'] for ex in tasks.read_local_examples(f'mrqa_{name}_local',
                                                          'validation')] == ['a1', 'a2', 'r1']


def test_squad_format_inputs_and_targets(data_dir):
  want = [
      {'qid': 'n1',
       'inputs': 'question: In what country is Normandy located ? context: The Normans ( Norman '
                 ': Nourmands ; French : Normands ) gave their name to Normandy , a region in '
                 'France . ',
       'targets': 'France', 'answers': ['France', 'France . ', 'France']},
      {'qid': 'n2',
       'inputs': 'question: Who gave their name to Normandy ? context: The Normans ( Norman : '
                 'Nourmands ; French : Normands ) gave their name to Normandy , a region in '
                 'France . ',
       'targets': 'The Normans', 'answers': ['The Normans', 'Normans']},
      # RE2's \s is ASCII: the no-break space stays (unpadded, as it is no ASCII punctuation).
      {'qid': 't1',
       'inputs': "question: What did it cost ? context: Tesla ' s AC motor ( 1888 ) "
                 "cost\u00a0 $ 2 . 50 ! ",
       'targets': ' $ 2 . 50', 'answers': [' $ 2 . 50']},
  ]
  assert formatted('mrqa_squad_local', 'train') == want
  assert tf_text('mrqa_squad_local', 'train') == want
  dev = [{'qid': 'w1', 'inputs': 'question: What is the capital of Poland ? context: Warsaw is '
                                 'the capital of Poland . ',
          'targets': 'Warsaw', 'answers': ['Warsaw', 'warsaw']}]
  assert formatted('mrqa_squad_local', 'validation') == tf_text('mrqa_squad_local',
                                                                'validation') == dev
  drop = formatted('mrqa_drop_local', 'validation')
  assert drop == tf_text('mrqa_drop_local', 'validation')
  assert [(ex['targets'], ex['answers']) for ex in drop] == [
      ('a nucleus', ['a nucleus', 'nucleus']), ('protons and neutrons',
                                                ['protons and neutrons', 'protons']),
      ('the U . S . coast', ['the U . S . coast'])]


def test_a_file_without_header_or_gzip_reads_the_same(tmp_path):
  saved = tasks.get_settings()
  try:
    tasks.set_local_data_dir(tmp_path)
    release_file(tmp_path, 'dev', 'RACE', OOD, header=False, gz=False)
    assert [ex['qid'] for ex in tasks.read_local_examples('mrqa_race_local', 'validation')] == [
        'a1', 'a2', 'r1']
  finally:
    tasks.restore_settings(saved)


def test_eval_examples_and_scores_through_the_pipeline(data_dir):
  examples, truncated = pipeline.get_eval_examples('mrqa_textbook_qa_local', 'validation',
                                                   {'inputs': 512, 'targets': 64})
  assert truncated == 0
  assert [(e['qid'], e['targets_pretokenized'], e['answers']) for e in examples] == [
      ('a1', 'a nucleus', ['a nucleus', 'nucleus']),
      ('a2', 'protons and neutrons', ['protons and neutrons', 'protons']),
      ('r1', 'the U . S . coast', ['the U . S . coast'])]
  # a1: 'the nucleus' is 'nucleus' normalised; a2: 'protons' is a reference; r1: 'u s' vs the
  # padded reference's 'u s coast': EM 0, P 1, R 2/3, F1 0.8.
  result = pipeline.evaluate_predictions('mrqa_textbook_qa_local', examples,
                                         ['the nucleus', 'Protons', 'U . S .'])
  assert result['em'] == pytest.approx(200 / 3)
  assert result['f1'] == pytest.approx(100 * (1 + 1 + 0.8) / 3)
  assert result['invalid'] == 0


def test_out_of_domain_mixture_scores_each_set(data_dir):
  examples, _ = pipeline.get_eval_examples('mrqa_out_of_domain_local', 'validation',
                                           {'inputs': 512, 'targets': 64})
  assert len(examples) == 18
  predictions = [e['targets_pretokenized'] if e['task'] != 'mrqa_race_local' else ''
                 for e in examples]
  result = pipeline.evaluate_predictions('mrqa_out_of_domain_local', examples, predictions)
  assert result['mrqa_drop_local/f1'] == result['mrqa_bio_asq_local/em'] == 100.0
  assert result['mrqa_race_local/f1'] == result['mrqa_race_local/em'] == 0.0
  assert result['f1'] == result['average'] == pytest.approx(500 / 6)
  assert result['invalid'] == 3  # RACE's empty answers


def test_tfds_names_and_splits(offline_tfds):
  import tensorflow_datasets as tfds
  tmp_path = offline_tfds
  configs = {'squad': 'squad', **{name: name for name in mrqa.OUT_OF_DOMAIN}}
  for name, config in configs.items():
    task = seqio.get_mixture_or_task(f'mrqa_{name}')
    # The builder config exists (an unknown one reads "TFDS cannot load"); it is not prepared.
    with pytest.raises(tasks.TfdsDataMissingError,
                       match=rf"no prepared copy of mrqa/{config}:1.0.0 .*'mrqa_{name}_local'"):
      task.source.get_dataset(split='validation', shuffle=False)
    # MRQA's out-of-domain dev sets are TFDS's 'test' split.
    urls = tfds.builder(f'mrqa/{config}:1.0.0', data_dir=str(tmp_path)).builder_config.data_urls
    assert set(urls) == ({'train', 'validation'} if name == 'squad' else {'test'})


# ================================ metrics ================================

@pytest.mark.parametrize('prediction, reference, em, f1', [
    ('The Eiffel Tower!', 'eiffel tower', 1, 1),  # case, article, punctuation
    ('an Apple', 'apple.', 1, 1),
    ('U.S.', 'US', 1, 1),  # punctuation is removed, not spaced
    ('U . S .', 'U.S.', 0, 0),  # 'u s' vs 'us'
    ('Paris France', 'France', 0, 2 / 3),  # P 1/2, R 1
    ('the big red dog', 'red dog barked', 0, 2 / 3),  # P 2/3, R 2/3
    ('dog dog', 'dog', 0, 2 / 3),  # a token counts as often as both have it
    ('', 'an apple', 0, 0),  # an empty prediction
    ('a', 'the', 1, 0),  # both normalise to nothing: equal, but no token in common
    ('theater', 'the ater', 0, 0),  # articles are whole words only: 'theater' vs 'ater'
])
def test_exact_match_and_f1_of_one_answer(prediction, reference, em, f1):
  assert metrics.exact_match_score(prediction, reference) == em
  assert metrics.f1_score(prediction, reference) == pytest.approx(f1)


def test_mrqa_takes_the_best_reference_and_averages_questions():
  targets = [['eiffel tower'], ['France', 'Paris'], ['an apple'], ['the'],
             ['red dog barked', 'a cat'], ['dog', 'cat dog dog']]
  predictions = ['The Eiffel Tower!', 'Paris France', '', 'a', 'the big red dog', 'dog dog']
  # EM: questions 1 and 4; F1: 1, 2/3, 0, 0, 2/3, 1 ('dog dog' vs 'cat dog dog': P 1, R 2/3 ->
  # 0.8; vs 'dog' 2/3: the best is 0.8).
  result = metrics.mrqa(targets, predictions)
  assert result['em'] == pytest.approx(100 * 2 / 6)
  assert result['f1'] == pytest.approx(100 * (1 + 2 / 3 + 0 + 0 + 2 / 3 + 0.8) / 6)
  assert metrics.mrqa([['x'], ['y']], ['x', 'x']) == {'em': 50.0, 'f1': 50.0}
  with pytest.raises(ValueError, match='2 targets but 1 predictions'):
    metrics.mrqa([['x'], ['y']], ['x'])
  with pytest.raises(ValueError, match='without reference answers'):
    metrics.mrqa([[]], ['x'])


def test_qa_postprocessor():
  example = {'answers': [b'France', b'France . ']}
  assert postprocessors.qa(b'Paris', example=example) == 'Paris'
  assert postprocessors.qa(b'France', example=example, is_target=True) == ['France',
                                                                          'France . ']


# ================================ bad files ================================

def one_line_error(tmp_path, contexts, name='DROP', text=None, raw=None):
  """The DataFileError of reading mrqa_drop_local from these contexts (or raw file bytes)."""
  path = release_file(tmp_path, 'dev', name, contexts)
  if text is not None:
    with open(path, 'wb') as f:
      f.write(gzip.compress(text.encode()))
  if raw is not None:
    with open(path, 'wb') as f:
      f.write(raw)
  saved = tasks.get_settings()
  try:
    tasks.set_local_data_dir(tmp_path)
    with pytest.raises(tasks.DataFileError) as error:
      tasks.validate_task_data('mrqa_drop_local', ['validation'])
  finally:
    tasks.restore_settings(saved)
  message = str(error.value)
  assert '\n' not in message
  return path, message


def test_bad_lines_are_one_line_errors_naming_file_and_line(tmp_path):
  def broken(**changes):
    return [OOD[0], {**OOD[1], 'qas': [{**OOD[1]['qas'][0], **changes}]}]

  path, message = one_line_error(tmp_path, broken(answers=[]))
  assert message == (f'{path}:3: qas[0].answers is empty (train/validation questions need an '
                     f'answer; {NEEDS}; fix or remove this line).')
  path, message = one_line_error(tmp_path, broken(answers=['ok', 7]))
  assert message == (f'{path}:3: qas[0].answers[1] is an integer 7, not a string ({NEEDS}; fix '
                     f'or remove this line).')
  qas = [{k: v for k, v in OOD[0]['qas'][1].items() if k != 'question'}]
  path, message = one_line_error(tmp_path, [{**OOD[0], 'qas': qas}])
  assert message == (f"{path}:2: missing field 'qas[0].question' ({NEEDS}; fix or remove this "
                     f"line).")
  path, message = one_line_error(tmp_path, [{'qas': []}])
  assert message.startswith(f"{path}:2: missing field 'context' (")
  path, message = one_line_error(tmp_path, [], text='{"header": {}}\n{"context": "x", "qas": [\n')
  assert message.startswith(f'{path}:2: invalid JSON: ')
  path, message = one_line_error(tmp_path, [], text='{"header": {}}\n')
  assert message == (f"{path}: no examples for the 'validation' split (expected the official "
                     f"release file, one example per line).")


def test_a_cut_short_gzip_file_is_one_line(tmp_path):
  whole = gzip.compress(''.join(json.dumps(c) + '\n' for c in OOD * 50).encode())
  path, message = one_line_error(tmp_path, [], raw=whole[:len(whole) // 2])
  assert message.startswith(f'{path}:')
  assert message.endswith('download the file again.')
  assert 'gzip data is corrupt or cut short' in message


def test_a_missing_file_names_the_release_path(tmp_path):
  saved = tasks.get_settings()
  try:
    tasks.set_local_data_dir(tmp_path)
    with pytest.raises(tasks.DataFileMissingError,
                       match=r'mrqa/dev/TextbookQA\.jsonl\.gz: file not found'):
      tasks.read_local_examples('mrqa_textbook_qa_local', 'validation')
  finally:
    tasks.restore_settings(saved)

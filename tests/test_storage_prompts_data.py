"""gs:// URLs for prompts, prompt libraries, the vocabulary and task data, through the storage
layer (a GCS API server on 127.0.0.1: the `gcs` fixture): each read from or written to a URL
equals its local twin, and a bad URL is one line naming it, with nothing written."""

import os
import types
import uuid

import numpy as np
import pytest

from prompt_tuning.prompts import files as prompt_files
from prompt_tuning import storage
from prompt_tuning.prompts import library as library_lib
from prompt_tuning.testing import FIXTURE, VOCAB

RTE = ('fixtures', 'released_prompts', 't5_1_1_lm100k_base', 'rte.npy')


@pytest.fixture
def prefix(gcs):
  """A fresh gs:// prefix in the emulator's bucket."""
  return f'gs://bkt/{uuid.uuid4().hex[:12]}'


@pytest.fixture(autouse=True)
def cache_and_cwd(tmp_path, monkeypatch):
  """Local copies of URLs go to a temporary cache; the test runs in an empty folder so a
  URL mistaken for a local path (a folder named 'gs:') would show."""
  monkeypatch.setenv('PROMPT_TUNING_CACHE', str(tmp_path / 'cache'))
  work = tmp_path / 'cwd'
  work.mkdir()
  monkeypatch.chdir(work)
  yield
  assert not os.path.exists(work / 'gs:') and not os.path.exists(work / 'foo:')


def upload(local: str, url: str) -> str:
  with open(local, 'rb') as f:
    storage.write_atomic(url, f.read())
  return url


def one_line(exc_type, fn) -> str:
  with pytest.raises(exc_type) as info:
    fn()
  message = str(info.value)
  assert '\n' not in message and message, message
  return message


def objects_under(url: str) -> list[str]:
  return sorted(storage.join(root, f) for root, _, files in storage.walk(url) for f in files)


# ================================ prompt files ================================

def test_prompt_file_from_gs_equals_local(shared, prefix):
  local = shared(*RTE)
  url = upload(local, f'{prefix}/rte.npy')
  want = prompt_files.load_prompt_file(local)
  got = prompt_files.load_prompt_file(url)
  assert got.dtype == np.float32 and got.shape == (100, 768)
  np.testing.assert_array_equal(got, want)
  # The extension-less files of a T5X numpy_checkpoints/ folder, as the paper's prompts ship.
  bare = upload(local, f'{prefix}/numpy_checkpoints/checkpoint_1/encoder.prompt.prompt.prompt')
  np.testing.assert_array_equal(prompt_files.load_prompt_file(bare), want)


def test_t5x_checkpoint_variable_from_gs_equals_local(shared, prefix):
  local = shared(*FIXTURE)
  storage.copy_tree(local, f'{prefix}/t5x/checkpoint_3')
  variable = 'target/token_embedder/embedding'
  want = prompt_files.load_prompt_file(local, variable)
  for url in (f'{prefix}/t5x', f'{prefix}/t5x/checkpoint_3/',
              f'{prefix}/t5x/checkpoint_3/checkpoint'):
    np.testing.assert_array_equal(prompt_files.load_prompt_file(url, variable), want)


def test_write_npy_to_gs_gives_the_local_bytes(shared, prefix, tmp_path):
  value = prompt_files.load_prompt_file(shared(*RTE))[:7]
  local = prompt_files.write_npy(str(tmp_path / 'p.npy'), value)
  url = prompt_files.write_npy(f'{prefix}/out/p.npy', value)
  assert url == f'{prefix}/out/p.npy'
  with open(local, 'rb') as f:
    local_bytes = f.read()
  assert storage.read_bytes(url) == local_bytes == prompt_files.npy_bytes(value)
  np.testing.assert_array_equal(prompt_files.load_prompt_file(url), value)


def test_peft_adapter_on_gs_equals_local(prefix, tmp_path):
  config = types.SimpleNamespace(d_model=4, num_heads=2, num_encoder_layers=2)
  value = np.arange(20, dtype=np.float32).reshape(5, 4) / 7
  local = prompt_files.write_peft(str(tmp_path / 'adapter'), value, config)
  url = prompt_files.write_peft(f'{prefix}/adapter', value, config)
  for name in (prompt_files.PEFT_CONFIG, prompt_files.PEFT_WEIGHTS):
    assert storage.read_bytes(storage.join(url, name)) == storage.read_bytes(
        os.path.join(local, name))
  for path in (url, storage.join(url, prompt_files.PEFT_WEIGHTS)):
    np.testing.assert_array_equal(prompt_files.load_prompt_file(path), value)


# ================================ prompt library ================================

def _local_library(root) -> str:
  library = root / 'library'
  for seed, name in enumerate(('rte', 'sst2', 'mrpc')):
    value = np.random.RandomState(seed).normal(size=(5, 4)).astype(np.float32)
    prompt_files.write_npy(str(library / f'{name}.npy'), value)
  prompt_files.write_npy(str(library / 'bare'), np.ones((5, 4), np.float32))
  config = types.SimpleNamespace(d_model=4, num_heads=2, num_encoder_layers=2)
  prompt_files.write_peft(str(library / 'adapter'), np.full((5, 4), 0.5, np.float32), config)
  (library / '.hidden.npy').write_bytes(b'not read')
  (library / 'notes.txt').write_text('not a prompt')
  return str(library)


def test_library_from_gs_folder_equals_local(prefix, tmp_path):
  local = _local_library(tmp_path)
  url = f'{prefix}/library'
  storage.copy_tree(local, url)
  want = library_lib.load_library(local, 4)
  for spec in (url, url + '/'):
    got = library_lib.load_library(spec, 4)
    assert list(got) == list(want) == ['adapter', 'bare', 'mrpc', 'rte', 'sst2']
    for name, prompt in got.items():
      np.testing.assert_array_equal(prompt.value, want[name].value)
      assert prompt.kind == want[name].kind
      assert prompt.source == storage.join(url, name if name in ('adapter', 'bare')
                                           else f'{name}.npy')
  # A mapping and a list of URLs (ENSEMBLE_PROMPTS) too.
  mapping = library_lib.load_library({'a': f'{url}/rte.npy', 'b': f'{url}/adapter'}, 4)
  np.testing.assert_array_equal(mapping['a'].value, want['rte'].value)
  np.testing.assert_array_equal(mapping['b'].value, want['adapter'].value)
  members = [f'{url}/sst2.npy', f'{url}/mrpc.npy']
  assert list(library_lib.load_library(members, 4)) == members


# ================================ serve's prompt store ================================

def test_serve_prompt_store_loads_a_gs_folder(prefix, tmp_path):
  from prompt_tuning import serve
  local = _local_library(tmp_path)
  prompt_files.write_npy(os.path.join(local, 'extra', 'ok.npy'), np.ones((5, 4), np.float32))
  url = f'{prefix}/library'
  storage.copy_tree(local, url)
  store = serve.PromptStore(library_lib.load_library(url, 4), 4, url + '/')
  assert [p['name'] for p in store.describe()] == ['adapter', 'bare', 'mrpc', 'rte', 'sst2']
  added = store.add('ok', path='extra/ok.npy')
  assert added == {'name': 'ok', 'length': 5, 'source': 'extra/ok.npy', 'kind': 'npy'}
  assert store.has('ok')
  np.testing.assert_array_equal(store.snapshot().table[store.snapshot().index['ok']],
                                np.ones((5, 4), np.float32))
  for path, words in (('../library/rte.npy', 'leads out of'), ('extra/../../x.npy', 'leads out'),
                      (f'{url}/rte.npy', 'must be relative'), ('/abs.npy', 'must be relative')):
    with pytest.raises(serve.RequestError, match=words) as info:
      store.add('x', path=path)
    assert info.value.status == 400
  with pytest.raises(serve.RequestError, match='nope.npy') as info:
    store.add('x', path='nope.npy')
  assert info.value.status == 400 and url not in str(info.value)


# ================================ vocabulary ================================

def test_vocabulary_from_gs_encodes_and_decodes_as_local(shared, prefix):
  from prompt_tuning.data.vocab import SentencePieceVocab
  local = shared(*VOCAB)
  url = upload(local, f'{prefix}/vocab/sentencepiece.model')
  text = 'rte hypothesis: The cat sat on the mat. premise: Überall <extra_id_0> ∑ 42!'
  want, got = SentencePieceVocab(local), SentencePieceVocab(url)
  assert got.path == url and got.vocab_size == want.vocab_size == 32100
  assert got.encode(text) == want.encode(text)
  assert got.decode(want.encode(text) + [1, 5]) == want.decode(want.encode(text))

  # SeqIO's vocabulary (the tasks'): lazy, read through storage, never by TF's GCS client.
  from prompt_tuning.data import vocabularies
  seqio_url = vocabularies.t5_vocabulary(url)
  assert seqio_url.sentencepiece_model_file == url
  seqio_local = vocabularies.t5_vocabulary(local)
  vocabularies.load_vocabulary(seqio_url)
  ids = seqio_local.encode(text)
  assert seqio_url.encode(text) == ids and seqio_url.decode(ids) == seqio_local.decode(ids)
  assert seqio_url.vocab_size == seqio_local.vocab_size == 32100
  np.testing.assert_array_equal(seqio_url.encode_tf(text).numpy(), ids)
  assert seqio_url.sentencepiece_model_file == url


# ================================ task data ================================

@pytest.fixture
def data_settings(monkeypatch):
  """The text tasks read $PROMPT_TUNING_DATA_DIR / $PROMPT_TUNING_VOCAB (set per test)."""
  from prompt_tuning.data import tasks
  tasks.set_local_data_dir(None)
  tasks.set_vocabulary_path(None)
  yield tasks
  tasks.set_local_data_dir(None)
  tasks.set_vocabulary_path(None)


def test_task_examples_from_a_gs_data_dir_equal_local(shared, prefix, data_settings,
                                                      monkeypatch):
  tasks = data_settings
  from prompt_tuning.data import pipeline
  data, vocab = shared('data'), shared(*VOCAB)
  storage.write_atomic(f'{prefix}/data/superglue/RTE/val.jsonl',
                       storage.read_bytes(os.path.join(data, 'superglue', 'RTE', 'val.jsonl')))
  lengths = {'inputs': 64, 'targets': 8}

  def read():
    examples = tasks.read_local_examples('super_glue_rte_local', 'validation')
    tasks.validate_task_data('super_glue_rte_local', ['validation'])
    tasks.check_vocabulary('super_glue_rte_local')
    eval_examples, _ = pipeline.get_eval_examples('super_glue_rte_local', 'validation', lengths,
                                                  max_examples=6)
    return examples, eval_examples

  monkeypatch.setenv(tasks.LOCAL_DATA_ENV, data)
  monkeypatch.setenv(tasks.VOCAB_ENV, vocab)
  want = read()
  monkeypatch.setenv(tasks.LOCAL_DATA_ENV, f'{prefix}/data')
  monkeypatch.setenv(tasks.VOCAB_ENV, upload(vocab, f'{prefix}/sentencepiece.model'))
  got = read()
  assert len(got[0]) == 277
  assert got[0] == want[0]
  assert [e['inputs'] for e in got[1]] == [e['inputs'] for e in want[1]]
  assert got[1] == want[1]
  # The task files' own errors name the URL and its line, as for a local file.
  storage.write_atomic(f'{prefix}/bad/superglue/RTE/val.jsonl',
                       b'{"idx": 0, "premise": "P"}\n{"cut\n')
  monkeypatch.setenv(tasks.LOCAL_DATA_ENV, f'{prefix}/bad')
  message = one_line(tasks.DataFileError,
                     lambda: tasks.read_local_examples('super_glue_rte_local', 'validation'))
  assert message.startswith(f'{prefix}/bad/superglue/RTE/val.jsonl:2: invalid JSON')


# ================================ bad URLs ================================

BAD = {
    'bucket': ('gs://no-such-bucket-{u}/x/{name}', "bucket 'no-such-bucket-"),
    'object': ('gs://bkt/{u}/missing/{name}', ''),
    'scheme': ('foo://bkt/{u}/{name}', 'no storage backend handles foo://'),
}


@pytest.mark.parametrize('case', sorted(BAD))
def test_bad_urls_are_one_line_errors_and_write_nothing(case, gcs, data_settings, monkeypatch):
  tasks = data_settings
  from prompt_tuning.data import vocabularies
  from prompt_tuning.data.vocab import SentencePieceVocab
  u = uuid.uuid4().hex[:12]
  template, words = BAD[case]

  def url(name):
    return template.format(u=u, name=name)

  def check(exc_type, fn, target):
    message = one_line(exc_type, fn)
    assert target in message and words in message, message
    return message

  check((FileNotFoundError, ValueError),
        lambda: prompt_files.load_prompt_file(url('rte.npy')), url('rte.npy'))
  check(library_lib.LibraryError, lambda: library_lib.load_library(url('lib'), 4), url('lib'))
  check(library_lib.LibraryError,
        lambda: library_lib.load_library({'a': url('a.npy')}, 4), url('a.npy'))
  check((FileNotFoundError, ValueError), lambda: SentencePieceVocab(url('spm.model')),
        url('spm.model'))
  vocab_error = check(
      vocabularies.VocabularyError,
      lambda: vocabularies.load_vocabulary(vocabularies.t5_vocabulary(url('spm.model'))),
      url('spm.model'))
  assert 'PROMPT_TUNING_VOCAB' in vocab_error
  monkeypatch.setenv(tasks.LOCAL_DATA_ENV, url('data'))
  check(tasks.DataFileMissingError,
        lambda: tasks.read_local_examples('super_glue_rte_local', 'validation'), url('data'))
  check(tasks.DataFileMissingError,
        lambda: tasks.validate_task_data('super_glue_rte_local', ['validation']), url('data'))
  if case == 'object':
    assert objects_under(f'gs://bkt/{u}') == []
  # A URL is never a local path: nothing named after it appears here (cache_and_cwd checks).
  assert os.listdir('.') == []

"""`prompt-tuning serve` through real HTTP on 127.0.0.1 (#13): the T5X fixture, the real
vocabulary and real RTE/CB/BoolQ inputs; answers equal offline `infer`; prompts added and
removed at run time; bad requests get a 4xx naming the problem and the server keeps serving;
SIGTERM under load lets in-flight requests finish and exits 0."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from prompt_tuning import prompt_files

from cli_helpers import FIXTURE_MODEL
from test_t5x_checkpoint import FIXTURE, FIXTURE_CONFIG

TASKS = ('super_glue_rte_local', 'super_glue_cb_local', 'super_glue_boolq_local')
KEY = 'test-token-123'
MODEL = FIXTURE_CONFIG.replace(dtype='float32')  # as FIXTURE_MODEL binds the server's


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def call(port, method, path, body=None, token=KEY, raw=None, timeout=120):
  """(status, JSON answer, headers) of one request to the local server."""
  data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
  request = urllib.request.Request(f'http://127.0.0.1:{port}{path}', data=data, method=method,
                                   headers={'Content-Type': 'application/json'})
  if token:
    request.add_header('Authorization', f'Bearer {token}')
  try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
      return response.status, json.loads(response.read()), dict(response.headers)
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read()), dict(e.headers)


def start_server(shared, tmp, library, extra=()):
  port = _free_port()
  key_file = tmp / 'key'
  key_file.write_text(KEY + '\n')
  bindings = FIXTURE_MODEL + [
      f"INITIAL_CHECKPOINT_PATH = '{shared(*FIXTURE)}'"]
  args = [sys.executable, '-m', 'prompt_tuning', 'serve', '--gin_file=models/t5_1_1_prompt.gin',
          '--gin_file=models/sizes/small.gin', f'--prompts={library}', f'--port={port}',
          f'--api_key_file={key_file}', '--max_inputs_per_request=16',
          f"--vocab={shared('fixtures', 't5_vocab', 'sentencepiece.model')}", *extra]
  args += [f'--gin_bindings={b}' for b in bindings]
  env = {**os.environ, 'PROMPT_TUNING_DATA_DIR': shared('data')}
  proc = subprocess.Popen(args, env=env, cwd=str(tmp), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 180
  while time.time() < deadline:
    if proc.poll() is not None:
      raise AssertionError(f'server exited {proc.returncode}: {proc.stderr.read()[-3000:]}')
    try:
      if call(port, 'GET', '/healthz', timeout=2)[0] == 200:
        return proc, port
    except (urllib.error.URLError, ConnectionError, OSError):
      pass
    time.sleep(0.3)
  proc.kill()
  raise AssertionError('server did not start in 180 s')


def _library(tmp):
  library = tmp / 'library'
  for seed, name in enumerate(TASKS):
    value = np.random.RandomState(seed).normal(scale=2.0, size=(5, 4)).astype(np.float32)
    prompt_files.write_npy(str(library / f'{name}.npy'), value)
  prompt_files.write_npy(str(library / 'extra' / 'wide.npy'), np.zeros((5, 8), np.float32))
  prompt_files.write_npy(str(library / 'extra' / 'ok.npy'), np.ones((5, 4), np.float32))
  return library


@pytest.fixture(scope='module')
def server(shared, tmp_path_factory):
  tmp = tmp_path_factory.mktemp('serve')
  library = _library(tmp)
  proc, port = start_server(shared, tmp, library)
  yield port, tmp, library
  proc.terminate()
  proc.wait(60)


@pytest.fixture(scope='module')
def examples(shared):
  os.environ.setdefault('PROMPT_TUNING_DATA_DIR', shared('data'))
  from prompt_tuning.data import tasks
  tasks.set_local_data_dir(shared('data'))
  return {t: tasks.read_local_examples(t, 'validation')[:6] for t in TASKS}


def _formatted(task, raw):
  from prompt_tuning.data import tasks
  return tasks.format_example(task, raw)[0]['inputs']


def test_answers_equal_offline_infer(server, examples, shared, tmp_path, monkeypatch):
  from prompt_tuning import runs
  monkeypatch.setenv('PROMPT_TUNING_VOCAB', shared('fixtures', 't5_vocab', 'sentencepiece.model'))
  from prompt_tuning.decoding import DecodingConfig
  from prompt_tuning.models.prompt import PromptConfig
  port, _, library = server
  served = {}
  for task in TASKS:
    status, answer, _ = call(port, 'POST', '/v1/predict', {'task': task,
                                                            'inputs': examples[task]})
    assert status == 200, answer
    served[task] = answer['predictions']
    # Raw examples are formatted as the task formats them: the same as sending the text.
    texts = [_formatted(task, raw) for raw in examples[task]]
    assert call(port, 'POST', '/v1/predict', {'task': task, 'inputs': texts})[1][
        'predictions'] == served[task]
  rows = [{'prompt': t, 'inputs': _formatted(t, raw)} for t in TASKS for raw in examples[t]]
  inputs = tmp_path / 'mixed.jsonl'
  inputs.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  path = runs.infer(model_dir=None, mixture_or_task_name='super_glue_rte_local',
                    task_feature_lengths={'inputs': 512, 'targets': 64},
                    initial_checkpoint_path=shared(*FIXTURE),
                    model=MODEL, prompt=PromptConfig(5), decoding=DecodingConfig(),
                    prompt_library={t: str(library / f'{t}.npy') for t in TASKS},
                    input_file=str(inputs), output_dir=str(tmp_path / 'out'))
  offline = [json.loads(line)['prediction'] for line in open(path)]
  assert offline == [p for t in TASKS for p in served[t]]


def test_rank_scores_each_label(server, examples):
  port = server[0]
  status, answer, _ = call(port, 'POST', '/v1/predict', {
      'task': 'super_glue_cb_local', 'inputs': examples['super_glue_cb_local'][:3],
      'method': 'rank'})
  assert status == 200, answer
  assert answer['labels'] == ['entailment', 'contradiction', 'neutral']
  for prediction, scores in zip(answer['predictions'], answer['scores']):
    assert len(scores) == 3 and prediction == answer['labels'][int(np.argmax(scores))]


def _good(port):
  status, answer, _ = call(port, 'POST', '/v1/predict',
                           {'task': 'super_glue_rte_local', 'inputs': ['rte hypothesis: a']})
  assert status == 200 and len(answer['predictions']) == 1, answer


@pytest.mark.parametrize('request_kw, status, message', [
    (dict(raw=b'{"task": "super_glue_rte_local", "inputs": ['), 400, 'malformed JSON'),
    (dict(body={'task': 'super_glue_rte_local', 'inputs': 'one string'}), 400,
     '"inputs" must be a list'),
    (dict(body={'task': 7, 'inputs': ['x']}), 400, '"task" must be a non-empty string'),
    (dict(body={'task': 'super_glue_rte_local', 'inputs': [3]}), 400, 'inputs[0] must be'),
    (dict(body={'task': 'glue_sst2', 'inputs': ['x']}), 404, "no prompt named 'glue_sst2'"),
    (dict(body={'task': 'super_glue_rte_local', 'inputs': []}), 400, '"inputs" is empty'),
    (dict(body={'task': 'super_glue_rte_local', 'inputs': ['x'] * 17}), 413, '17 inputs'),
    (dict(body={'task': 'super_glue_rte_local', 'inputs': ['x' * 9000]}), 413, '9000 characters'),
    (dict(body={'task': 'super_glue_rte_local', 'inputs': ['x'], 'method': 'vote'}), 400,
     '"method" must be'),
    (dict(body={'task': 'super_glue_rte_local', 'inputs': ['x'], 'decoding': {'beams': 2}}), 400,
     "unknown field(s) ['beams']"),
    (dict(body={'task': 'super_glue_rte_local', 'inputs': ['x']}, token=None), 401,
     'bearer token'),
])
def test_bad_requests_get_4xx_and_the_server_keeps_serving(server, request_kw, status, message):
  port = server[0]
  got, answer, _ = call(port, 'POST', '/v1/predict', **request_kw)
  assert got == status and message in answer['error'], answer
  _good(port)


@pytest.mark.parametrize('body, status, message', [
    ({'name': '../escape', 'values': [[0.0] * 4] * 5}, 400, "'../escape' is not allowed"),
    ({'name': 'wide', 'path': 'extra/wide.npy'}, 400, 'width 8 but the model'),
    ({'name': 'out', 'path': '../key'}, 400,
     'leads out of the prompt library folder'),
    ({'name': 'short', 'values': [[0.0] * 4] * 3}, 400, 'length 3 but the served prompts'),
    ({'name': 'super_glue_rte_local', 'values': [[0.0] * 4] * 5}, 409, 'exists'),
])
def test_bad_prompts_are_refused(server, body, status, message):
  port = server[0]
  got, answer, _ = call(port, 'POST', '/v1/prompts', body)
  assert got == status and message in answer['error'], answer
  _good(port)


def test_prompts_added_and_removed_at_run_time(server):
  port = server[0]
  names = [p['name'] for p in call(port, 'GET', '/v1/prompts')[1]['prompts']]
  assert names == sorted(TASKS)
  status, added, _ = call(port, 'POST', '/v1/prompts', {'name': 'fresh', 'path': 'extra/ok.npy'})
  assert status == 201 and added['length'] == 5, added
  status, answer, _ = call(port, 'POST', '/v1/predict', {'task': 'fresh', 'inputs': ['a', 'b']})
  assert status == 200 and len(answer['predictions']) == 2
  assert call(port, 'DELETE', '/v1/prompts/fresh')[0] == 200
  status, answer, _ = call(port, 'POST', '/v1/predict', {'task': 'fresh', 'inputs': ['a']})
  assert status == 404 and "no prompt named 'fresh'" in answer['error']
  assert call(port, 'DELETE', '/v1/prompts/fresh')[0] == 404
  _good(port)
  metrics = call(port, 'GET', '/metrics')[1]
  assert metrics['requests']['200'] >= 1 and metrics['compiled_shapes'] >= 1
  assert metrics['latency_ms']['p50'] > 0 and metrics['batch_size_max'] >= 1
  assert metrics['batches'] >= 1 and metrics['batch_ms']['p50'] > 0
  # After loading and compiling, the heap is frozen: full collections do not walk it.
  assert metrics['gc']['frozen_objects'] > 10000


def test_sigterm_under_load_finishes_in_flight_requests(shared, tmp_path, examples):
  # Batches wait 300 ms to fill: the first requests are still in flight when SIGTERM comes.
  proc, port = start_server(shared, tmp_path, _library(tmp_path), ['--max_wait_ms=300'])
  results, errors = [], []

  def client(i):
    task = TASKS[i % 3]
    try:
      results.append(call(port, 'POST', '/v1/predict',
                          {'task': task, 'inputs': [_formatted(task, examples[task][i % 6])]},
                          timeout=60)[0])
    except (urllib.error.URLError, ConnectionError, OSError) as e:
      errors.append(e)  # sent after the server stopped accepting: refused, never half-answered

  threads = [threading.Thread(target=client, args=(i,)) for i in range(24)]
  for t in threads[:12]:
    t.start()
  time.sleep(0.1)
  proc.send_signal(signal.SIGTERM)
  for t in threads[12:]:
    t.start()
  for t in threads:
    t.join(90)
  assert proc.wait(90) == 0, proc.stderr.read()[-3000:]
  assert len(results) >= 12 and all(status == 200 for status in results), (results, errors)
  assert len(results) + len(errors) == 24


def test_a_full_queue_answers_503_with_retry_after():
  """The batcher's queue is bounded: rows beyond max_queue are refused (503 + Retry-After),
  never held; queued rows are still answered, in batches of one key."""
  import concurrent.futures

  from prompt_tuning import serve
  release = threading.Event()
  batches = []

  def run(key, rows):
    release.wait(10)
    batches.append((key, len(rows)))
    return [{'prediction': r.prompt} for r in rows]

  batcher = serve.Batcher(run, serve.ServeConfig(max_queue=3, max_batch_size=8, max_wait_ms=0))
  try:
    def rows(n, key=('generate',)):
      return [serve.Row(key, [5, 1], f'p{i}', concurrent.futures.Future()) for i in range(n)]
    first = rows(1)
    batcher.submit(first)  # taken by the worker, which then blocks in run()
    time.sleep(0.2)
    waiting = rows(2) + rows(1, ('rank', ('a', 'b')))
    batcher.submit(waiting)
    with pytest.raises(serve.RequestError) as info:
      batcher.submit(rows(1))
    assert info.value.status == 503 and info.value.headers == {'Retry-After': '1'}
    assert 'queue is full (3 rows waiting, at most 3)' in str(info.value)
    release.set()
    assert [r.future.result(10)['prediction'] for r in first + waiting] == [
        'p0', 'p0', 'p1', 'p0']
    assert batches == [(('generate',), 1), (('generate',), 2), (('rank', ('a', 'b')), 1)]
  finally:
    release.set()
    batcher.stop()


def _engine(shared, store, config):
  """An in-process serving engine over the T5X fixture and the real vocabulary."""
  import jax

  from prompt_tuning import checkpoints, serve
  from prompt_tuning.vocab import SentencePieceVocab
  model_config, frozen = checkpoints.load_base(shared(*FIXTURE), MODEL)
  return serve.Engine(model_config, jax.device_put(frozen), store,
                      SentencePieceVocab(shared('fixtures', 't5_vocab', 'sentencepiece.model')),
                      config)


def test_fine_and_coarse_batch_shapes_answer_alike(shared, examples, tmp_path):
  """The engine's two shape policies: one call per width bucket with rows padded to powers of
  two (CPU's default), or one call per batch with rows 1/4/16/max; the answers are the same
  and a removed prompt's row gets 404 in both."""
  import concurrent.futures

  from prompt_tuning import decoding, serve
  from prompt_tuning import prompt_library as library_lib
  from prompt_tuning.vocab import EOS_ID
  library = _library(tmp_path)
  texts = [(t, _formatted(t, raw)) for t in TASKS for raw in examples[t]]
  results, calls = {}, {}
  for fine in (True, False):
    store = serve.PromptStore(library_lib.load_library(str(library), 4), 4, str(library))
    store.add('gone', values=np.ones((5, 4)).tolist())
    engine = _engine(shared, store, serve.ServeConfig(fine_shapes=fine))
    vocab = engine.vocab
    widths = set()
    real_run = engine._run
    engine._run = lambda key, rows, width, snap: widths.add(width) or real_run(  # noqa: B023
        key, rows, width, snap)
    rows = [serve.Row(None, list(vocab.encode(x)) + [EOS_ID], t, concurrent.futures.Future())
            for t, x in texts]
    rows.append(serve.Row(None, [5, EOS_ID], 'gone', concurrent.futures.Future()))
    store.remove('gone')
    generate = engine.run(('generate', decoding.DecodingConfig(), 8), rows)
    rank = engine.run(('rank', ('entailment', 'not_entailment')), rows)
    assert all(isinstance(a[-1], serve.RequestError) and a[-1].status == 404
               for a in (generate, rank))
    results[fine] = ([a['prediction'] for a in generate[:-1]],
                     [a['prediction'] for a in rank[:-1]],
                     np.array([a['scores'] for a in rank[:-1]]))
    calls[fine] = widths
  assert results[True][:2] == results[False][:2]
  np.testing.assert_allclose(results[True][2], results[False][2], atol=1e-5)
  # The inputs span several width buckets: fine runs one call per bucket, coarse one in all.
  assert len(calls[True]) >= 2 and calls[False] == {max(calls[True])}


def test_warm_up_compiles_every_batch_shape_before_serving(shared):
  """--warmup_decode_lengths: each (rows, width) shape of greedy decoding is compiled at start,
  so a later batch of any rows and widths compiles nothing; a length beyond
  --max_decode_length is refused naming the flag."""
  import concurrent.futures

  from prompt_tuning import decoding, serve
  from prompt_tuning.vocab import EOS_ID
  with pytest.raises(ValueError, match='--warmup_decode_lengths: 65 is outside'):
    serve.ServeConfig(warmup_decode_lengths=(65,))
  store = serve.PromptStore({}, 4, None, 5)
  store.add('a', values=np.ones((5, 4)).tolist())
  config = serve.ServeConfig(max_batch_size=4, max_input_length=16, warmup_decode_lengths=(3,),
                             fine_shapes=True)
  engine = _engine(shared, store, config)
  assert engine.warm_up() == 3 * 2  # rows 1, 2, 4 x widths 8, 16
  key = ('generate', decoding.DecodingConfig(), 3)
  for n, length in ((3, 12), (1, 5), (2, 16)):
    answers = engine.run(key, [serve.Row(key, [7] * (length - 1) + [EOS_ID], 'a',
                                         concurrent.futures.Future()) for _ in range(n)])
    assert len(answers) == n and all('prediction' in a for a in answers)
  assert len(engine.shapes) == 6

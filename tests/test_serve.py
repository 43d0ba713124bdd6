"""`prompt-tuning serve` through real HTTP on 127.0.0.1 (#13, #22): the T5X fixture, the real
vocabulary and real RTE/CB/BoolQ inputs, one server for the module. Answers equal offline
`infer`; raw rows of the release files answer as their formatted text; /healthz stays fast while
they are served; every bad request of a table gets a 4xx in one error shape naming the field
and the server goes on answering correctly; the `openai` client's completions equal
/v1/predict's; prompts are added and removed at run time. In-process: the engine's shapes, the
queue, the request models and the token-to-text rule. (Shutdown: test_serve_shutdown.py.)"""

import http.client
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from prompt_tuning import testing
from prompt_tuning.testing import FIXTURE, FIXTURE_CONFIG, VOCAB

from serve_helpers import GOOD, KEY, PLAIN, TASKS, call, start_server, write_library

RELEASE_FILES = {'super_glue_rte_local': ('data', 'superglue', 'RTE', 'val.jsonl'),
                 'super_glue_cb_local': ('data', 'superglue', 'CB', 'val.jsonl'),
                 'super_glue_boolq_local': ('data', 'superglue', 'BoolQ', 'val.jsonl')}
MODEL = FIXTURE_CONFIG.replace(dtype='float32')  # as FIXTURE_BINDINGS bind the server's


@pytest.fixture(scope='module')
def server(shared, tmp_path_factory):
  tmp = tmp_path_factory.mktemp('serve')
  library = write_library(tmp)
  # One call per batch at rows 1/4/16 (the accelerator policy): the fewest shapes to compile.
  proc, port, log = start_server(shared, tmp, library, ['--fine_shapes=false'])
  testing.wait_until_up(proc, port, log=log)
  yield port, tmp, library
  proc.terminate()
  assert proc.wait(60) == 0, log.read_text()[-3000:]
  assert 'answered every request received' in log.read_text()


@pytest.fixture(scope='module')
def rows(shared):
  """Six rows of each task's release file, verbatim (official field names and labels)."""
  out = {}
  for task in TASKS:
    with open(shared(*RELEASE_FILES[task])) as f:
      out[task] = [json.loads(next(f)) for _ in range(6)]
  return out


@pytest.fixture(scope='module')
def formatted(shared):
  """The model input text of those rows, as the data layer formats them for eval and train."""
  os.environ.setdefault('PROMPT_TUNING_DATA_DIR', shared('data'))
  from prompt_tuning.data import tasks
  tasks.set_local_data_dir(shared('data'))
  return {t: [tasks.format_example(t, ex)[0]['inputs']
              for ex in tasks.read_local_examples(t, 'validation')[:6]] for t in TASKS}


# ----------------------------------------------------------------------------------------------
# Raw examples and the data layer (first: the first requests needing it).


def _healthz_while(port, send):
  """/healthz latencies (s), polled on one connection while `send()` runs in a thread, and what
  `send` returned."""
  health = http.client.HTTPConnection('127.0.0.1', port, timeout=10)
  latencies, out, done = [], [], threading.Event()
  thread = threading.Thread(target=lambda: (out.append(send()), done.set()))
  thread.start()
  while not done.is_set():
    start = time.perf_counter()
    health.request('GET', '/healthz')
    response = health.getresponse()
    assert response.status == 200 and json.loads(response.read())['status'] == 'ok'
    latencies.append(time.perf_counter() - start)
    time.sleep(0.002)
  thread.join()
  health.close()
  return latencies, out[0]


def test_healthz_stays_fast_while_the_first_raw_examples_are_served(server, rows, formatted):
  """#22: the data layer is imported at start and raw examples are formatted off the event
  loop, so /healthz stays under 50 ms while the first raw-example and rank-without-labels
  requests run (it took 3.2 s when the first one imported SeqIO inside the handler)."""
  port = server[0]
  for task in TASKS:  # the batch shapes these inputs need: compiled before, not measured
    for method in ('generate', 'rank'):
      body = {'task': task, 'inputs': formatted[task], 'method': method}
      assert call(port, 'POST', '/v1/predict', body)[0] == 200

  def send():
    return [call(port, 'POST', '/v1/predict', {'task': task, 'inputs': rows[task],
                                               'method': method})[0]
            for _ in range(2) for task in TASKS for method in ('generate', 'rank')]

  # The 99th percentile of ~300 samples and the slowest. A stall of the event loop shows in
  # both: a 0.1 s block per raw request read 106 ms at the 99th; a quiet box reads ~10 ms and
  # 12 ms. On 2 cores shared with other work (a whole test suite beside it) a few samples can
  # wait longer for a CPU, so a window that fails is measured once more (the same requests;
  # the data layer was loaded at start, so they are as new to the server as the first).
  windows = []
  for _ in range(2):
    latencies, statuses = _healthz_while(port, send)
    assert statuses == [200] * 12 and len(latencies) >= 50, (statuses, latencies)
    windows.append((float(np.percentile(latencies, 99)), max(latencies), len(latencies)))
    if windows[-1][0] < 0.05 and windows[-1][1] < 1.0:
      break
  assert windows[-1][0] < 0.05 and windows[-1][1] < 1.0, f'(p99 s, max s, samples): {windows}'


def test_raw_release_rows_answer_as_their_formatted_text(server, rows, formatted):
  """Rows copied verbatim from the release files (labels as the files write them: strings for
  RTE/CB, booleans for BoolQ), with or without idx and label, answer as the task-formatted
  text; rank without labels uses the task's label words."""
  port = server[0]
  for task in TASKS:
    want = {}
    for method in ('generate', 'rank'):
      want[method] = call(port, 'POST', '/v1/predict', {'task': task, 'inputs': formatted[task],
                                                         'method': method})[1]
      status, got, _ = call(port, 'POST', '/v1/predict', {'task': task, 'inputs': rows[task],
                                                           'method': method})
      assert status == 200 and got['predictions'] == want[method]['predictions'], (task, got)
      if method == 'rank':
        np.testing.assert_allclose(got['scores'], want[method]['scores'], rtol=1e-6)
    bare = [{k: v for k, v in row.items() if k not in ('idx', 'label')} for row in rows[task]]
    got = call(port, 'POST', '/v1/predict', {'task': task, 'inputs': bare})[1]
    assert got['predictions'] == want['generate']['predictions'], (task, got)
  status, answer, _ = call(port, 'POST', '/v1/predict', {
      'task': 'super_glue_cb_local', 'inputs': rows['super_glue_cb_local'][:3], 'method': 'rank'})
  assert status == 200, answer
  assert answer['labels'] == ['entailment', 'contradiction', 'neutral']
  for prediction, scores in zip(answer['predictions'], answer['scores']):
    assert len(scores) == 3 and prediction == answer['labels'][int(np.argmax(scores))]


def test_answers_equal_offline_infer(server, formatted, shared, tmp_path, monkeypatch):
  from prompt_tuning import runs
  monkeypatch.setenv('PROMPT_TUNING_VOCAB', shared(*VOCAB))
  from prompt_tuning.inference.decoding import DecodingConfig
  from prompt_tuning.models.prompt import PromptConfig
  port, _, library = server
  served = {}
  for task in TASKS:
    status, answer, _ = call(port, 'POST', '/v1/predict', {'task': task,
                                                            'inputs': formatted[task]})
    assert status == 200, answer
    served[task] = answer['predictions']
  lines = [{'prompt': t, 'inputs': x} for t in TASKS for x in formatted[t]]
  inputs = tmp_path / 'mixed.jsonl'
  inputs.write_text(''.join(json.dumps(r) + '\n' for r in lines))
  path = runs.infer(model_dir=None, mixture_or_task_name='super_glue_rte_local',
                    task_feature_lengths={'inputs': 512, 'targets': 64},
                    initial_checkpoint_path=shared(*FIXTURE),
                    model=MODEL, prompt=PromptConfig(5), decoding=DecodingConfig(),
                    prompt_library={t: str(library / f'{t}.npy') for t in TASKS},
                    input_file=str(inputs), output_dir=str(tmp_path / 'out'))
  offline = [json.loads(line)['prediction'] for line in open(path)]
  assert offline == [p for t in TASKS for p in served[t]]


# ----------------------------------------------------------------------------------------------
# The OpenAI API.


def test_openai_client_completions_equal_predict(server, formatted):
  """The `openai` client against 127.0.0.1: models.list() is the prompt library; completions
  of three prompts equal /v1/predict's answers (greedy, the same default length); errors
  arrive as its typed exceptions naming the field."""
  openai = pytest.importorskip('openai', reason='the test extra (openai) is not installed')
  port = server[0]
  client = openai.OpenAI(base_url=f'http://127.0.0.1:{port}/v1', api_key=KEY, max_retries=0,
                         timeout=120)
  assert sorted(m.id for m in client.models.list()) == sorted(TASKS + (PLAIN,))
  assert client.models.retrieve(TASKS[0]).id == TASKS[0]
  for task in TASKS:
    texts = formatted[task]
    want = call(port, 'POST', '/v1/predict', {'task': task, 'inputs': texts})[1]['predictions']
    out = client.completions.create(model=task, prompt=texts)
    assert out.object == 'text_completion' and out.model == task
    assert [c.index for c in out.choices] == list(range(len(texts)))
    assert [c.text for c in out.choices] == want
    # The fixture never emits EOS: each choice ran to --max_decode_length (64).
    assert [c.finish_reason for c in out.choices] == ['length'] * len(texts)
    assert out.usage.completion_tokens == len(texts) * 64
    assert out.usage.prompt_tokens > len(texts) * 10
  # A stop string cuts the text before it (here the answer's second word) and ends the choice.
  stop = want[0].split()[1]
  out = client.completions.create(model=task, prompt=texts, stop=[stop], temperature=0)
  assert out.choices[0].text == want[0][:want[0].index(stop)] and out.choices[0].text
  assert out.choices[0].finish_reason == 'stop'
  with pytest.raises(openai.BadRequestError) as info:
    client.completions.create(model=TASKS[0], prompt='x', temperature=-1)
  assert info.value.param == 'temperature' and info.value.status_code == 400
  with pytest.raises(openai.BadRequestError) as info:
    client.completions.create(model=TASKS[0], prompt='x', logprobs=1)
  assert info.value.param == 'logprobs'
  with pytest.raises(openai.NotFoundError) as info:
    client.completions.create(model='no_such_prompt', prompt='x')
  assert info.value.param == 'model' and "no prompt named 'no_such_prompt'" in str(info.value)
  with pytest.raises(openai.NotFoundError):
    client.models.retrieve('no_such_prompt')
  stranger = openai.OpenAI(base_url=f'http://127.0.0.1:{port}/v1', api_key='wrong',
                           max_retries=0)
  with pytest.raises(openai.AuthenticationError):
    stranger.models.list()


def test_completion_options_map_onto_the_engine():
  """In-process: temperature 0 (the default) is greedy, best_of > 1 beam search, temperature
  > 0 sampling with top_p and seed; stop strings cut the text."""
  from prompt_tuning import serve
  from prompt_tuning.serve import requests
  config = serve.ServeConfig(max_inputs_per_request=8, max_decode_length=32)

  def plan(**body):
    return requests.completion_plan(requests.parse(requests.CompletionRequest,
                                                   {'model': 'm', **body}), config, 100)
  greedy = plan(prompt='x')
  assert greedy.key[1].method == 'greedy' and greedy.key[2] == 32 and greedy.n == 1
  beam = plan(prompt=['a', 'b'], best_of=3, max_tokens=5)
  assert (beam.key[1].method, beam.key[1].num_beams, beam.key[2]) == ('beam_search', 3, 5)
  sample = plan(prompt=[[5, 6], [7]], temperature=0.5, top_p=0.9, seed=7, n=4, stop='.')
  dc = sample.key[1]
  assert (dc.method, dc.temperature, dc.top_p, dc.seed) == ('sample', 0.5, 0.9, 7)
  assert sample.prompts == [[5, 6], [7]] and sample.n == 4 and sample.stop == ('.',)
  with pytest.raises(serve.RequestError, match='3 prompt') as info:
    plan(prompt=['a', 'b', 'c'], temperature=1.0, n=3)
  assert info.value.status == 413
  assert requests.cut_at_stop('yes. no', ('.', ' ')) == ('yes', True)
  assert requests.cut_at_stop('yes', ('.',)) == ('yes', False)


# ----------------------------------------------------------------------------------------------
# Bad requests.


_GOOD_ANSWERS: dict = {}


def _expected_good(port):
  """The server's answer to GOOD, asked once: every later answer must equal it."""
  if port not in _GOOD_ANSWERS:
    status, answer, _ = call(port, 'POST', '/v1/predict', GOOD)
    assert status == 200 and len(answer['predictions']) == 1, answer
    _GOOD_ANSWERS[port] = answer['predictions']
  return _GOOD_ANSWERS[port]


RTE = 'super_glue_rte_local'
P = '/v1/predict'
C = '/v1/completions'


def _predict(**fields):
  return {'task': RTE, 'inputs': ['x'], **fields}


def _decoding(**fields):
  return _predict(decoding=fields)


def _complete(**fields):
  return {'model': RTE, 'prompt': 'x', **fields}


# (method, path, request, status, the field named (None: the body as a whole), words)
BAD = [
    # The five of #22 (each a 500 before).
    ('POST', P, _decoding(method='beam_search', num_beams=0), 400, 'decoding.num_beams',
     'greater than or equal to 1'),
    ('POST', P, _decoding(method='sample', top_p=0), 400, 'decoding.top_p', 'greater than 0'),
    ('POST', P, _decoding(method='sample', temperature='hot'), 400, 'decoding.temperature',
     'valid number'),
    ('POST', P, b'[' * 100_000 + b']' * 100_000, 400, None, 'nests deeper than 10'),
    ('GET', P, None, 405, None, 'GET is not allowed on /v1/predict'),
    # The body.
    ('POST', P, b'{"task": "super_glue_rte_local", "inputs": [', 400, None, 'malformed JSON'),
    ('POST', P, b'{"task": "super_glue_rte_local", "inputs": ["x"], "decoding": {"alpha": NaN}}',
     400, None, 'NaN is not a JSON number'),
    ('POST', P, b'[1, 2]', 400, None, 'must be a JSON object'),
    ('POST', P, b'', 400, None, 'no body'),
    ('POST', P, b'\xff\xfe\xfd', 400, None, 'not UTF-8'),
    ('POST', P, b'{"task": "' + b'x' * 800_000 + b'"}', 413, None, 'at most'),
    ('POST', P, {'task': RTE, 'inputs': [[[[[[[[[['x']]]]]]]]]]}, 400, None, 'nests deeper'),
    # Predict's fields.
    ('POST', P, {'task': RTE, 'inputs': 'one string'}, 400, 'inputs', 'valid list'),
    ('POST', P, {'task': 7, 'inputs': ['x']}, 400, 'task', 'valid string'),
    ('POST', P, {'inputs': ['x']}, 400, 'task', 'required field missing'),
    ('POST', P, {'task': '', 'inputs': ['x']}, 400, 'task', 'at least 1 character'),
    ('POST', P, {'task': RTE}, 400, 'inputs', 'required field missing'),
    ('POST', P, {'task': RTE, 'inputs': []}, 400, 'inputs', 'at least 1 item'),
    ('POST', P, {'task': RTE, 'inputs': [3]}, 400, 'inputs[0]', 'must be a string'),
    ('POST', P, {'task': RTE, 'inputs': ['x', None]}, 400, 'inputs[1]', 'got null'),
    ('POST', P, {'task': RTE, 'inputs': [['x']]}, 400, 'inputs[0]', 'got a list'),
    ('POST', P, {'task': 'glue_sst2', 'inputs': ['x']}, 404, 'task', "no prompt named 'glue_sst2'"),
    ('POST', P, {'task': RTE, 'inputs': ['x'] * 17}, 413, 'inputs', '17 in one request'),
    ('POST', P, {'task': RTE, 'inputs': ['x', 'y' * 9000]}, 413, 'inputs[1]', '9000 characters'),
    ('POST', P, _predict(method='vote'), 400, 'method', "'generate' or 'rank'"),
    ('POST', P, _predict(temperature=0.5), 400, 'temperature', 'unknown field'),
    # Decoding.
    ('POST', P, _predict(decoding='greedy'), 400, 'decoding', 'valid dictionary'),
    ('POST', P, _decoding(beams=2), 400, 'decoding.beams', 'unknown field (known here: alpha'),
    ('POST', P, _decoding(method='nucleus'), 400, 'decoding.method', "'greedy', 'beam_search'"),
    ('POST', P, _decoding(method='beam_search', num_beams=17), 400, 'decoding.num_beams',
     'less than or equal to 16'),
    ('POST', P, _decoding(num_beams=True), 400, 'decoding.num_beams', 'valid integer'),
    ('POST', P, _decoding(num_beams=2.5), 400, 'decoding.num_beams', 'valid integer'),
    ('POST', P, _decoding(top_p=1.5), 400, 'decoding.top_p', 'less than or equal to 1'),
    ('POST', P, _decoding(temperature=-1), 400, 'decoding.temperature', 'greater than or equal'),
    ('POST', P, _decoding(top_k=-1), 400, 'decoding.top_k', 'greater than or equal to 0'),
    ('POST', P, _decoding(top_k=10 ** 6), 400, 'decoding.top_k', 'vocabulary size, 32100'),
    ('POST', P, _decoding(max_decode_length=0), 400, 'decoding.max_decode_length',
     'greater than or equal to 1'),
    ('POST', P, _decoding(max_decode_length=65), 400, 'decoding.max_decode_length',
     'at most 64 (--max_decode_length)'),
    ('POST', P, _decoding(seed=-1), 400, 'decoding.seed', 'greater than or equal to 0'),
    ('POST', P, _decoding(seed=2 ** 40), 400, 'decoding.seed', 'less than or equal to'),
    ('POST', P, _decoding(alpha='x'), 400, 'decoding.alpha', 'valid number'),
    # Rank.
    ('POST', P, _predict(method='rank', decoding={}), 400, 'decoding', 'applies to method'),
    ('POST', P, _predict(labels=['a']), 400, 'labels', 'apply to method "rank"'),
    ('POST', P, _predict(method='rank', labels=[]), 400, 'labels', 'at least 1 item'),
    ('POST', P, _predict(method='rank', labels=['a', 3]), 400, 'labels[1]', 'valid string'),
    ('POST', P, _predict(method='rank', labels='a'), 400, 'labels', 'valid list'),
    ('POST', P, {'task': PLAIN, 'inputs': ['x'], 'method': 'rank'}, 400, 'labels',
     "rank needs the candidate answers for 'plain'"),
    # Raw examples (rows of the release files).
    ('POST', P, _predict(inputs=[{'premise': 'a'}]), 400, 'inputs[0].hypothesis',
     "missing field 'hypothesis'"),
    ('POST', P, _predict(inputs=[{'premise': 'a', 'hypothesis': 3}]), 400,
     'inputs[0].hypothesis', 'is an integer 3, not a string'),
    ('POST', P, _predict(inputs=['x', {'premise': 'a', 'hypothesis': 'b', 'label': 0}]), 400,
     'inputs[1].label', 'label 0 is not one of the classes "entailment", "not_entailment"'),
    ('POST', P, _predict(inputs=[{'premise': 'a', 'hypothesis': 'b', 'idx': 'x'}]), 400,
     'inputs[0].idx', "field 'idx' is a string"),
    ('POST', P, {'task': PLAIN, 'inputs': [{'premise': 'a'}]}, 400, 'inputs',
     "'plain' is no registered task"),
    # The bearer token.
    ('POST', P, dict(body=GOOD, token=None), 401, None, 'bearer token'),
    ('POST', P, dict(body=GOOD, token='wrong'), 401, None, 'bearer token'),
    # Completions.
    ('POST', C, {'prompt': 'x'}, 400, 'model', 'required field missing'),
    ('POST', C, _complete(model='nope'), 404, 'model', "no prompt named 'nope'"),
    ('POST', C, {'model': RTE}, 400, 'prompt', 'required field missing'),
    ('POST', C, _complete(prompt=3), 400, 'prompt', 'must be a string, a list of strings'),
    ('POST', C, _complete(prompt=[1, 99999]), 400, 'prompt[0]', 'token id 99999 is outside'),
    ('POST', C, _complete(prompt=['x'] * 17), 413, 'prompt', 'at most 16'),
    ('POST', C, _complete(max_tokens=0), 400, 'max_tokens', 'greater than or equal to 1'),
    ('POST', C, _complete(max_tokens=65), 400, 'max_tokens', 'at most 64'),
    ('POST', C, _complete(temperature=3), 400, 'temperature', 'less than or equal to 2'),
    ('POST', C, _complete(top_p=0), 400, 'top_p', 'greater than 0'),
    ('POST', C, _complete(n=2), 400, 'n', 'need temperature > 0'),
    ('POST', C, _complete(n=3, best_of=2, temperature=1), 400, 'best_of', 'at least n (3)'),
    ('POST', C, _complete(stream=True), 400, 'stream', 'streaming is not supported'),
    ('POST', C, _complete(logprobs=1), 400, 'logprobs', '"method": "rank"'),
    ('POST', C, _complete(suffix='x'), 400, 'suffix', 'no suffix'),
    ('POST', C, _complete(presence_penalty=1), 400, 'presence_penalty', 'not supported'),
    ('POST', C, _complete(logit_bias={'5': 1}), 400, 'logit_bias', 'not supported'),
    ('POST', C, _complete(stop=['a'] * 5), 400, 'stop', 'at most 4'),
    ('POST', C, _complete(foo=1), 400, 'foo', 'unknown field'),
    # Paths, methods, prompts and models.
    ('POST', '/v2/nothing', GOOD, 404, None, 'no endpoint /v2/nothing'),
    ('DELETE', '/v1/models', None, 405, None, 'DELETE is not allowed on /v1/models'),
    ('GET', '/v1/models/nope', None, 404, 'model', "no prompt named 'nope'"),
    ('POST', '/v1/prompts', {'name': 'x'}, 400, 'path', 'not both or neither'),
    ('POST', '/v1/prompts', {'name': 'x', 'values': [[1.0, 'a']]}, 400, 'values[0][1]',
     'valid number'),
    ('DELETE', '/v1/prompts/nope', None, 404, 'name', "no prompt named 'nope'"),
]


@pytest.mark.parametrize('method, path, request_, status, param, words', BAD,
                         ids=[f'{i}-{c[0]}{c[1]}-{c[3]}-{c[4]}' for i, c in enumerate(BAD)])
def test_bad_requests_get_a_4xx_naming_the_field_then_a_good_one_is_answered(
    server, method, path, request_, status, param, words):
  port = server[0]
  want = _expected_good(port)
  if isinstance(request_, bytes):
    kw = {'raw': request_}
  elif isinstance(request_, dict) and 'token' in request_:
    kw = request_
  else:
    kw = {'body': request_}
  got, answer, _ = call(port, method, path, **kw)
  assert got == status, answer
  assert set(answer) == {'error'}, answer  # one shape for every status
  error = answer['error']
  assert error['code'] == status and error['param'] == param, error
  assert words in error['message'] and error['type'], error
  if param is not None:  # the message names the field first
    assert error['message'].startswith(f'"{param}": '), error
  assert call(port, 'POST', '/v1/predict', GOOD)[1]['predictions'] == want


def _asgi(app, method, path, body=b''):
  """(status, JSON body) of one request handed to an ASGI app in-process, and whatever the app
  raised after answering."""
  import asyncio
  inbox = [{'type': 'http.request', 'body': body, 'more_body': False}]
  sent = []

  async def receive():
    return inbox.pop(0) if inbox else {'type': 'http.disconnect'}

  async def send(message):
    sent.append(message)

  scope = {'type': 'http', 'method': method, 'path': path, 'raw_path': path.encode(),
           'query_string': b'', 'root_path': '', 'scheme': 'http', 'http_version': '1.1',
           'server': ('127.0.0.1', 80), 'client': ('127.0.0.1', 1),
           'headers': [(b'content-type', b'application/json'),
                       (b'content-length', str(len(body)).encode())]}
  raised = None
  try:
    asyncio.run(app(scope, receive, send))
  except Exception as e:
    raised = e
  return sent[0]['status'], json.loads(b''.join(m.get('body', b'') for m in sent[1:])), raised


def test_a_server_fault_is_a_500_in_the_same_shape():
  """A bug, not the client's: 500 in the one error shape; the exception goes on up to uvicorn,
  which logs its traceback; the next request is served."""
  from prompt_tuning import serve
  from prompt_tuning.serve import app as serve_api
  from prompt_tuning.serve import backends
  store = serve.PromptStore({}, 4, None, 5)
  store.add('a', values=np.ones((5, 4)).tolist())

  class Vocab:
    vocab_size, eos_id = 100, 1

    def encode(self, text):
      raise RuntimeError('a bug')

  class Engine:  # what the HTTP layer reads of serve.Engine
    vocab, shapes = Vocab(), set()

    def __init__(self, store):
      self.store = store
      self.backend = backends.Seq2SeqBackend(None, {}, self.vocab)

    def run(self, key, rows):
      raise AssertionError('no batch should run')

  server = serve.Server(Engine(store), serve.ServeConfig())
  try:
    app = serve_api.create_app(server)
    body = json.dumps({'task': 'a', 'inputs': ['x']}).encode()
    status, answer, raised = _asgi(app, 'POST', '/v1/predict', body)
    assert status == 500 and isinstance(raised, RuntimeError)
    assert answer == {'error': {'message': 'internal error (RuntimeError); the server logged it.',
                                'type': 'server_error', 'param': None, 'code': 500}}
    assert _asgi(app, 'GET', '/healthz')[:2] == (200, {'status': 'ok', 'prompts': 1})
    assert (server.received, server.answered) == (2, 2)
  finally:
    server.batcher.stop()


def test_serve_runs_without_tensorflow():
  """The serving modules import without TensorFlow and SeqIO (the GPU machines lack them);
  the data layer is then left out rather than failing the start."""
  code = ('import sys\n'
          'sys.modules.update(tensorflow=None, seqio=None)\n'
          'from prompt_tuning.serve import app, requests\n'
          'from prompt_tuning.serve import command\n'
          'assert command.load_data_layer(None) is None\n'
          'try:\n'
          '  command.load_data_layer(True)\n'
          'except ValueError as e:\n'
          '  print(e)\n')
  proc = _python(code)
  assert 'data_layer=True but the data layer is not installed' in proc.stdout, proc.stdout


def test_serve_package_names_and_a_light_config():
  """The serve flags' ServeConfig imports without JAX (the CLI builds its parser from it); every
  name the package re-exports is its part's own object."""
  code = ('import sys\n'
          'from prompt_tuning.serve import config\n'
          'assert "jax" not in sys.modules\n'
          'from prompt_tuning import serve\n'
          'from prompt_tuning.serve import command, engine, errors, store\n'
          'assert [n for n in serve.__all__ if getattr(serve, n) is None] == []\n'
          'assert serve.serve is command.serve and serve.Engine is engine.Engine\n'
          'assert serve.RequestError is errors.RequestError\n'
          'assert serve.PromptStore is store.PromptStore\n'
          'assert serve.ServeConfig is config.ServeConfig\n')
  _python(code)


def _python(code: str) -> subprocess.CompletedProcess:
  """`code` run in a fresh interpreter (what it imports is its own); it must exit 0."""
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def test_decoding_fields_are_decoding_configs():
  """The request model checks every field DecodingConfig has (a new one cannot slip through
  unchecked) and builds the same config."""
  import dataclasses

  from prompt_tuning.inference import decoding
  from prompt_tuning.serve import requests
  assert set(requests.Decoding.model_fields) == {
      f.name for f in dataclasses.fields(decoding.DecodingConfig)}
  assert requests.GREEDY.config() == decoding.DecodingConfig()
  assert requests.Decoding.model_validate(
      {'method': 'sample', 'temperature': 2, 'top_p': 0.5}).config() == decoding.DecodingConfig(
          'sample', temperature=2.0, top_p=0.5)


# ----------------------------------------------------------------------------------------------
# Prompts at run time.


@pytest.mark.parametrize('body, status, message', [
    ({'name': '../escape', 'values': [[0.0] * 4] * 5}, 400, "'../escape' is not allowed"),
    ({'name': 'wide', 'path': 'extra/wide.npy'}, 400, 'width 8 but the model'),
    ({'name': 'out', 'path': '../key'}, 400, 'leads out of the prompt library folder'),
    ({'name': 'short', 'values': [[0.0] * 4] * 3}, 400, 'length 3 but the served prompts'),
    ({'name': 'super_glue_rte_local', 'values': [[0.0] * 4] * 5}, 409, 'exists'),
])
def test_bad_prompts_are_refused(server, body, status, message):
  port = server[0]
  got, answer, _ = call(port, 'POST', '/v1/prompts', body)
  assert got == status and message in answer['error']['message'], answer
  assert call(port, 'POST', '/v1/predict', GOOD)[1]['predictions'] == _expected_good(port)


def test_prompts_added_and_removed_at_run_time(server):
  port = server[0]
  names = [p['name'] for p in call(port, 'GET', '/v1/prompts')[1]['prompts']]
  assert names == sorted(TASKS + (PLAIN,))
  status, added, _ = call(port, 'POST', '/v1/prompts', {'name': 'fresh', 'path': 'extra/ok.npy'})
  assert status == 201 and added['length'] == 5, added
  assert 'fresh' in [m['id'] for m in call(port, 'GET', '/v1/models')[1]['data']]
  status, answer, _ = call(port, 'POST', '/v1/predict', {'task': 'fresh', 'inputs': ['a', 'b']})
  assert status == 200 and len(answer['predictions']) == 2
  assert call(port, 'DELETE', '/v1/prompts/fresh')[0] == 200
  status, answer, _ = call(port, 'POST', '/v1/predict', {'task': 'fresh', 'inputs': ['a']})
  assert status == 404 and "no prompt named 'fresh'" in answer['error']['message']
  assert call(port, 'DELETE', '/v1/prompts/fresh')[0] == 404
  assert call(port, 'POST', '/v1/predict', GOOD)[1]['predictions'] == _expected_good(port)
  metrics = call(port, 'GET', '/metrics')[1]
  assert metrics['requests']['200'] >= 1 and metrics['compiled_shapes'] >= 1
  assert metrics['latency_ms']['p50'] > 0 and metrics['batch_size_max'] >= 1
  assert metrics['batches'] >= 1 and metrics['batch_ms']['p50'] > 0
  assert metrics['requests']['400'] >= 50  # the table's
  # After loading and compiling, the heap is frozen: full collections do not walk it.
  assert metrics['gc']['frozen_objects'] > 10000


# ----------------------------------------------------------------------------------------------
# In-process: the token-to-text rule, the queue, the engine's shapes.


def test_served_text_follows_the_rule_eval_and_infer_use(shared, formatted):
  """Generated ids become text by one rule: the SeqIO vocabulary's (eval and infer decode with
  it) and SentencePieceVocab.text (serve's) agree on sentinels (<extra_id_k>), ids past the
  vocabulary and the unknown id (' ⁇ '), pad and EOS; the engine's answers use it."""
  from prompt_tuning.data import tasks
  from prompt_tuning.data.vocab import SentencePieceVocab
  from prompt_tuning.serve import engine
  path = shared(*VOCAB)
  tasks.set_vocabulary_path(path)
  seqio_vocab = tasks.get_vocabulary('super_glue_rte_local')
  ours = SentencePieceVocab(path)
  rng = np.random.default_rng(0)
  cases = [[32045, 8, 2, 32127, 100], [0, 8, 0, 32099], [8, 1, 9], [2], [32127], [40000, 8],
           [8, 32045, 9], [32000, 32099, 5, 6], [3, 0, 0, 1, 0]]
  cases += [list(rng.integers(0, 32128, size=12)) for _ in range(100)]
  cases += [list(ours.encode(text))[:20] + [1, 7] for text in formatted['super_glue_rte_local']]
  for ids in cases:
    eval_text = seqio_vocab.decode([int(t) for t in ids if t > 0])  # evaluation.py's call
    assert ours.text(np.asarray(ids)) == eval_text, ids
  assert ours.text([32045, 8]) == '<extra_id_54> the' and ours.text([2]) == ' ⁇ '
  answer = engine.generated_answer(ours, np.array([32099, 8, 1, 0], np.int32))
  assert answer == {'prediction': '<extra_id_0> the', 'tokens': 3, 'finished': True}
  assert engine.generated_answer(ours, np.array([8, 8], np.int32))['finished'] is False


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
  from prompt_tuning.data.vocab import SentencePieceVocab
  model_config, frozen = checkpoints.load_base(shared(*FIXTURE), MODEL)
  return serve.Engine(model_config, jax.device_put(frozen), store,
                      SentencePieceVocab(shared(*VOCAB)),
                      config)


def test_fine_and_coarse_batch_shapes_answer_alike(shared, formatted, tmp_path):
  """The engine's two shape policies: one call per width bucket with rows padded to powers of
  two (CPU's default), or one call per batch with rows 1/4/16/max; the answers are the same
  and a removed prompt's row gets 404 in both."""
  import concurrent.futures

  from prompt_tuning.inference import decoding
  from prompt_tuning import serve
  from prompt_tuning.prompts import library as library_lib
  from prompt_tuning.data.vocab import EOS_ID
  library = write_library(tmp_path)
  texts = [(t, x) for t in TASKS for x in formatted[t]]
  results, calls = {}, {}
  for fine in (True, False):
    store = serve.PromptStore(library_lib.load_library(str(library), 4), 4, str(library))
    store.add('gone', values=np.ones((5, 4)).tolist())
    engine = _engine(shared, store, serve.ServeConfig(fine_shapes=fine))
    vocab = engine.vocab
    widths = set()
    real_run = engine.run_batch
    engine.run_batch = lambda key, rows, width, snap: widths.add(width) or real_run(  # noqa: B023
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

  from prompt_tuning.inference import decoding
  from prompt_tuning import serve
  from prompt_tuning.data.vocab import EOS_ID
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

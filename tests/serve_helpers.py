"""`prompt-tuning serve` on the real T5X fixture for the serving tests (test_serve.py,
test_serve_shutdown.py): a library of random prompts, a server behind an API key, requests."""

import http.client
import json
import os
import subprocess
import threading
import urllib.error
import urllib.request

import numpy as np

from prompt_tuning import testing
from prompt_tuning.prompts import files as prompt_files

TASKS = ('super_glue_rte_local', 'super_glue_cb_local', 'super_glue_boolq_local')
PLAIN = 'plain'  # a prompt named as no task: no raw examples, no label words
KEY = 'test-token-123'
GOOD = {'task': 'super_glue_rte_local', 'inputs': ['rte hypothesis: a']}


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


def start_server(shared, tmp, library, extra=(), bindings=(), name='server'):
  """`prompt-tuning serve` on a free port, its stderr to tmp/<name>.log; (process, port, log)."""
  port = testing.free_port()
  key_file = tmp / 'key'
  key_file.write_text(KEY + '\n')
  args = testing.serve_command(
      str(library), port, shared(*testing.VOCAB), shared(*testing.FIXTURE),
      testing.FIXTURE_BINDINGS + list(bindings),
      [f'--api_key_file={key_file}', '--max_inputs_per_request=16', *extra])
  env = {**os.environ, 'PROMPT_TUNING_DATA_DIR': shared('data')}
  log = tmp / f'{name}.log'
  with open(log, 'w') as err:
    proc = subprocess.Popen(args, env=env, cwd=str(tmp), stdout=subprocess.DEVNULL, stderr=err,
                            text=True)
  return proc, port, log


def write_library(tmp):
  """tmp/library: a prompt of 5 x 4 per task and PLAIN, and two under extra/ (one too wide)."""
  library = tmp / 'library'
  for name, value in testing.random_prompts(TASKS + (PLAIN,), 5, 4, scale=2.0).items():
    prompt_files.write_npy(str(library / f'{name}.npy'), value)
  prompt_files.write_npy(str(library / 'extra' / 'wide.npy'), np.zeros((5, 8), np.float32))
  prompt_files.write_npy(str(library / 'extra' / 'ok.npy'), np.ones((5, 4), np.float32))
  return library


def post_in_flight(port, bodies, token=KEY, timeout=150):
  """Each body POSTed to /v1/predict on its own connection, every one fully sent before this
  returns (requests in flight, e.g. for a SIGTERM); then a function that waits for their
  (status, answer) or the exception, in order."""
  results, sent = [None] * len(bodies), [threading.Event() for _ in bodies]
  headers = {'Authorization': f'Bearer {token}', 'Content-Type': 'application/json'}

  def one(i):
    connection = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    try:
      connection.request('POST', '/v1/predict', json.dumps(bodies[i]), headers)
      sent[i].set()
      response = connection.getresponse()
      results[i] = (response.status, json.loads(response.read()))
    except (OSError, http.client.HTTPException) as e:
      results[i] = e
    finally:
      sent[i].set()
      connection.close()

  threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
  for t in threads:
    t.start()
  for e in sent:
    assert e.wait(60), 'a request could not be sent in 60 s'

  def answers():
    for t in threads:
      t.join(timeout + 10)
    return results
  return answers

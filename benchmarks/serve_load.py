"""Load test of `prompt-tuning serve`: mixed-task traffic from concurrent clients against the
same requests sent one at a time. Loopback only (127.0.0.1), bounded in count and in time.

Starts a server with a prompt per task (RTE, CB, BoolQ) on `--model`: 'fixture' (the real T5X
fixture: d_model 4, but the real 32k vocabulary, whose logits are most of a decode step's work)
or 'mini' (a random-weight T5 1.1 of d_model 256, 4 + 4 layers, the real 32k vocabulary).
Greedy decoding stops at `--decode_length` tokens (random prompts rarely emit EOS). Sends
`--requests` requests (each one real validation input of a task, round robin over the tasks)
first one at a time, then from `--clients` concurrent clients (`--repeats` rounds of the two,
the round of median speedup reported first), after an untimed warm-up pass of each, by a server
that compiled its batch shapes at start. Reports throughput, latency percentiles, errors and the
server's /metrics (batch sizes and times, compiled shapes).

  PROMPT_TUNING_SHARED=../shared python -m benchmarks.serve_load [--requests 2000]
      [--clients 32] [--time_limit_s 600] [--json benchmarks/results/cpu_serve_load.json]
"""

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Optional

import numpy as np

from benchmarks import common
from prompt_tuning import testing

# T5Config fields of the 'mini' model (the fixture's: prompt_tuning.testing.FIXTURE_CONFIG).
MINI = dict(vocab_size=32128, d_model=256, d_ff=1024, num_heads=4, head_dim=64,
            num_encoder_layers=4, num_decoder_layers=4, dtype='float32')
TASKS = ('super_glue_rte_local', 'super_glue_cb_local', 'super_glue_boolq_local')
PROMPT_LENGTH = 20
VOCAB = FIXTURE = ''  # set by main


def model_config(name: str):
  """The t5.T5Config of `--model` `name` ('mini' or 'fixture'), with float32 activations."""
  from prompt_tuning.models import t5
  return t5.T5Config(**MINI) if name == 'mini' else testing.FIXTURE_CONFIG.replace(dtype='float32')


def task_inputs() -> dict[str, list[str]]:
  """{task: its first 50 validation inputs, formatted as the task formats them}."""
  from prompt_tuning.data import tasks
  tasks.set_local_data_dir(testing.shared_path('data'))
  return {t: [tasks.format_example(t, raw)[0]['inputs']
              for raw in tasks.read_local_examples(t, 'validation')[:50]] for t in TASKS}


def task_prompts(d_model: int) -> dict[str, np.ndarray]:
  """A random prompt per task (seeded): what the server's library holds."""
  return testing.random_prompts(TASKS, PROMPT_LENGTH, d_model)


class Client:
  """One client's keep-alive HTTP/1.1 connection (as load generators such as wrk keep them)."""

  def __init__(self, port: int, timeout: float = 120):
    self.port, self.timeout = port, timeout
    self.conn: Optional[http.client.HTTPConnection] = None

  def post(self, body: dict) -> tuple[int, float]:
    data = json.dumps(body).encode()
    start = time.perf_counter()
    for attempt in range(2):  # a connection the server closed meanwhile is reopened once
      try:
        if self.conn is None:
          self.conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=self.timeout)
        self.conn.request('POST', '/v1/predict', body=data,
                          headers={'Content-Type': 'application/json'})
        response = self.conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - start
      except (http.client.HTTPException, OSError):
        if self.conn is not None:
          self.conn.close()
        self.conn = None
        if attempt:
          return -1, time.perf_counter() - start
    return -1, time.perf_counter() - start

  def close(self) -> None:
    if self.conn is not None:
      self.conn.close()


def requests_for(n: int, tasks: tuple[str, ...], inputs: dict, length: int) -> list[dict]:
  return [{'task': tasks[i % len(tasks)],
           'inputs': [inputs[tasks[i % len(tasks)]][(i // len(tasks)) %
                                                    len(inputs[tasks[i % len(tasks)]])]],
           'decoding': {'max_decode_length': length}} for i in range(n)]


def run_phase(port: int, bodies: list[dict], clients: int, deadline: float) -> dict:
  """Sends `bodies` from `clients` threads (1: one at a time); stops at `deadline`."""
  lock = threading.Lock()
  position = [0]
  results: list[tuple[int, float]] = []

  def worker():
    client = Client(port)
    try:
      while time.time() < deadline:
        with lock:
          if position[0] >= len(bodies):
            return
          body = bodies[position[0]]
          position[0] += 1
        result = client.post(body)
        with lock:
          results.append(result)
    finally:
      client.close()

  start = time.perf_counter()
  threads = [threading.Thread(target=worker) for _ in range(clients)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  seconds = time.perf_counter() - start
  latencies = np.array([s for status, s in results if status == 200]) * 1000
  return {'clients': clients, 'sent': len(results), 'seconds': seconds,
          'errors': sum(status != 200 for status, _ in results),
          'requests_per_s': len(results) / seconds,
          'latency_ms': {f'p{q}': float(np.percentile(latencies, q)) if len(latencies) else None
                         for q in (50, 90, 99)},
          'complete': len(results) == len(bodies)}


def mini_checkpoint(directory: str) -> str:
  """A random-weight T5 1.1 of MINI's shape as a T5X checkpoint."""
  import jax

  from prompt_tuning import checkpoints
  from prompt_tuning.models import t5
  checkpoints.save_t5x(directory, t5.init_params(model_config('mini'), jax.random.PRNGKey(0)), 0)
  return os.path.join(directory, 'checkpoint_0')


def server_metrics(port: int) -> dict:
  with urllib.request.urlopen(f'http://127.0.0.1:{port}/metrics', timeout=10) as r:
    return json.loads(r.read())


def start_server(port: int, library: str, extra: list[str], checkpoint: str,
                 model_bindings: list[str]) -> subprocess.Popen:
  args = testing.serve_command(library, port, VOCAB, checkpoint, model_bindings, extra)
  proc = subprocess.Popen(args, env={**os.environ,
                                     'PROMPT_TUNING_DATA_DIR': testing.shared_path('data')},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  testing.wait_until_up(proc, port, 400)  # it compiles every batch shape before it listens
  return proc


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--requests', type=int, default=2000)
  parser.add_argument('--clients', type=int, default=32)
  parser.add_argument('--time_limit_s', type=float, default=600,
                      help='each phase stops sending after this long')
  parser.add_argument('--repeats', type=int, default=3,
                      help='timed rounds (one at a time, then concurrent); the median is reported')
  parser.add_argument('--max_batch_size', type=int, default=32)
  parser.add_argument('--max_wait_ms', type=float, default=0.0)
  parser.add_argument('--model', choices=('mini', 'fixture'), default='fixture')
  # 8: the targets length of the paper's presets for these tasks (configs/paper/*).
  parser.add_argument('--decode_length', type=int, default=8)
  parser.add_argument('--json', default=None)
  # Where the shared files are not (a GPU machine: no TensorFlow/SeqIO): the tasks' inputs
  # formatted beforehand ({task: [text, ...]}), the fixture checkpoint and the vocabulary.
  parser.add_argument('--inputs_json', default=None)
  parser.add_argument('--fixture', default=None, help='the t5x_tiny checkpoint folder')
  parser.add_argument('--vocab', default=None)
  args = parser.parse_args(argv)
  global VOCAB, FIXTURE
  VOCAB = args.vocab or testing.shared_path(*testing.VOCAB)
  FIXTURE = args.fixture or testing.shared_path(*testing.FIXTURE)

  from prompt_tuning.prompts import files as prompt_files
  if args.inputs_json:
    with open(args.inputs_json) as f:
      inputs = json.load(f)
  else:
    inputs = task_inputs()
  config = model_config(args.model)
  with tempfile.TemporaryDirectory() as library, tempfile.TemporaryDirectory() as base:
    checkpoint = mini_checkpoint(base) if args.model == 'mini' else FIXTURE
    for name, value in task_prompts(config.d_model).items():
      prompt_files.write_npy(os.path.join(library, f'{name}.npy'), value)
    port = testing.free_port()
    proc = start_server(port, library, [f'--max_batch_size={args.max_batch_size}',
                                        f'--max_wait_ms={args.max_wait_ms}',
                                        f'--warmup_decode_lengths={args.decode_length}'],
                        checkpoint, testing.model_bindings(config))
    try:
      bodies = requests_for(args.requests, TASKS, inputs, args.decode_length)
      # Untimed warm-up, a pass of each: the shapes each phase meets compile here.
      run_phase(port, bodies, 1, time.time() + args.time_limit_s)
      run_phase(port, bodies, args.clients, time.time() + args.time_limit_s)
      shapes_before = server_metrics(port)['compiled_shapes']
      rounds = []  # one at a time, then concurrent, alternating: drift hits both alike
      for _ in range(args.repeats):
        sequential = run_phase(port, bodies, 1, time.time() + args.time_limit_s)
        concurrent = run_phase(port, bodies, args.clients, time.time() + args.time_limit_s)
        rounds.append({'one_at_a_time': sequential, 'concurrent': concurrent,
                       'speedup': concurrent['requests_per_s'] / sequential['requests_per_s']})
      metrics = server_metrics(port)
    finally:
      proc.send_signal(signal.SIGTERM)
      exit_status = proc.wait(120)
  model = ('random-weight T5 1.1, d_model 256, 4+4 layers, 32k vocab' if args.model == 'mini'
           else 'T5X fixture t5x_tiny (d_model 4)')
  import importlib.util
  report = {'machine': common.machine_info(), 'model': model, 'prompt_length': PROMPT_LENGTH,
            'http_parser': 'httptools' if importlib.util.find_spec('httptools') else 'h11',
            'decode_length': args.decode_length,
            'tasks': list(TASKS), 'requests': args.requests,
            'max_batch_size': args.max_batch_size, 'max_wait_ms': args.max_wait_ms,
            # The round of median speedup; every round below.
            **sorted(rounds, key=lambda r: r['speedup'])[len(rounds) // 2],
            'speedups': [r['speedup'] for r in rounds], 'rounds': rounds,
            'compiled_in_timed_phases': metrics['compiled_shapes'] - shapes_before,
            'server_metrics': metrics, 'server_exit_status': exit_status}
  common.write_json(report, args.json)
  return 0


if __name__ == '__main__':
  sys.exit(main())

"""Byte-identical outputs across a refactor: sha256 of every file the CLI writes (issue #23).

Runs, through `python -m prompt_tuning` in fresh processes, in a fresh temporary folder:
  1. the quickstart (no arguments; writes ./runs/quickstart);
  2. `train` of the paper's RTE preset on the tiny T5X fixture (3 steps, eval generate + rank);
  3. `eval` and `infer` of that MODEL_DIR (runs/prompt_eval.gin, runs/prompt_infer.gin);
  4. `export --format=npy|peft|t5x` of it;
  5. a multi-task train, its `export --prompt_name`, mixed-task `infer` over its prompt library,
     and an ensemble `eval` of three seeded prompts plus one member alone;
  6. `serve` on 127.0.0.1 answering a fixed set of /v1/predict requests (RTE/CB/BoolQ text,
     generate and rank): the answers' predictions/labels/scores go to serve/answers.json.
Then it hashes every file under the folder, keyed by its relative path. Text files have the
temporary folder and the shared folder replaced by <WORK> and <SHARED>; JSON keys naming times
are dropped; config.gin files keep only their macros (their imports name modules); files that
embed times, process ids or random names are listed under "excluded" with the reason.

  PROMPT_TUNING_SHARED=../shared python -m benchmarks.output_hashes \
      --out benchmarks/results/output_hashes.json [--compare OLD.json]

`--compare` prints the paths whose hashes differ, are missing or are extra against OLD.json and
exits 1 if any. Compare runs of the same machine and library versions (recorded in the JSON):
float outputs may differ across CPUs and jax releases. The modules of prompt_tuning are not
imported here, so the script runs unchanged across the package's restructuring; its gin files
and bindings (runs/prompt_eval.gin, runs.infer.max_examples, t5.T5Config.*) are the CLI's user
interface, and a change that renames them must update this recipe as it updates the tests'.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The tiny T5X fixture's architecture, bound over the paper preset's size (as tests/cli_helpers).
FIXTURE_MODEL = [
    't5.T5Config.d_model = 4', 't5.T5Config.d_ff = 8', 't5.T5Config.num_heads = 2',
    't5.T5Config.head_dim = 2', 't5.T5Config.num_encoder_layers = 2',
    't5.T5Config.num_decoder_layers = 2', 't5.T5Config.relpos_buckets = 4',
    't5.T5Config.relpos_max_distance = 8', "ACTIVATION_DTYPE = 'float32'",
]
RTE = 'super_glue_rte_local'
RTE_LENGTHS = "TASK_FEATURE_LENGTHS = {'inputs': 64, 'targets': 8}"
SMALL = ['--gin_file=models/t5_1_1_prompt.gin', '--gin_file=models/sizes/small.gin']

EXCLUDED = [  # (fnmatch patterns over relative paths, why the bytes differ run to run)
    (['*/events.out.tfevents.*'], 'TensorBoard event files: the name holds the start time, host '
     'and process id, and every record a wall time'),
    (['*/checkpoints/*/state/manifest.ocdbt', '*/checkpoints/*/state/d/*',
      '*/checkpoints/*/state/ocdbt.process_*'], 'Orbax OCDBT files: data files get random '
     'names, which the manifest and b-tree nodes reference (the state is hashed restored, '
     'under <dir>/state#arrays)'),
    (['logs/*'], "stdout/stderr of each CLI process: times, durations, ports, process ids "
     "(eval's result JSON is taken from its stdout into results/)"),
]
TIME_KEY = re.compile(r'(^|_)(seconds|secs|nsecs|time|timestamp|elapsed|duration)($|_)')
MACRO = re.compile(r'^[A-Z][A-Z0-9_]* = ')

SERVE_REQUESTS = [  # fixed /v1/predict bodies: RTE/CB/BoolQ-style text, generate and rank
    {'task': RTE, 'inputs': [
        'rte hypothesis: Christopher Reeve had an accident. premise: Dana Reeve, the widow of '
        'the actor Christopher Reeve, has died of lung cancer at age 44.',
        'rte hypothesis: Bacteria is winning the war against antibiotics. premise: We now are '
        'discovering that antibiotics are losing their effectiveness against illness.',
        'rte hypothesis: Paris is in France. premise: Paris is the capital of France.']},
    {'task': RTE, 'method': 'rank', 'inputs': [
        'rte hypothesis: Christopher Reeve had an accident. premise: Dana Reeve, the widow of '
        'the actor Christopher Reeve, has died of lung cancer at age 44.',
        'rte hypothesis: Paris is in France. premise: Paris is the capital of France.']},
    {'task': RTE, 'method': 'rank', 'labels': ['entailment', 'not_entailment'],
     'inputs': ['rte hypothesis: The cat slept. premise: The cat was asleep on the mat.']},
    {'task': RTE, 'inputs': ['rte hypothesis: It rained. premise: The streets were dry.'],
     'decoding': {'max_decode_length': 4}},
    {'task': RTE, 'inputs': ['rte hypothesis: It rained. premise: The streets were wet.'],
     'decoding': {'method': 'beam_search', 'num_beams': 2, 'max_decode_length': 4}},
    {'task': 'super_glue_cb_local', 'inputs': [
        'cb hypothesis: Valence was helping premise: Valence the void-brain, Valence the '
        'virtuous valet. Did he think he was helping?',
        'cb hypothesis: there is a shipment premise: Do we assume there is a shipment?']},
    {'task': 'super_glue_cb_local', 'method': 'rank',
     'labels': ['entailment', 'contradiction', 'neutral'], 'inputs': [
         'cb hypothesis: there is a shipment premise: Do we assume there is a shipment?']},
    {'task': 'super_glue_boolq_local', 'inputs': [
        'boolq question: does ethanol take more energy make that produces passage: Ethanol '
        'fuel -- All biomass goes through at least some of these steps.',
        'boolq question: is the sky blue passage: The sky appears blue by day.']},
    {'task': 'super_glue_boolq_local', 'method': 'rank', 'labels': ['False', 'True'],
     'inputs': ['boolq question: is the sky blue passage: The sky appears blue by day.']},
    {'task': 'super_glue_boolq_local', 'method': 'rank', 'inputs': [
        'boolq question: is water wet passage: Water makes things wet.',
        'boolq question: can fish fly passage: Most fish swim; a few glide.']},
]


def sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


class Runner:
  """Runs CLI commands in `work` (the folder hashed), each one's output logged to logs/."""

  def __init__(self, work: str, shared: str, cache: str):
    self.work, self.shared = work, shared
    self.env = {**os.environ, 'PROMPT_TUNING_DATA_DIR': os.path.join(shared, 'data'),
                'PROMPT_TUNING_VOCAB': self.vocab, 'JAX_COMPILATION_CACHE_DIR': cache,
                'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
                'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}
    self.env.setdefault('NO_GCE_CHECK', 'true')
    self.times: dict[str, float] = {}
    os.makedirs(self.path('logs'), exist_ok=True)

  @property
  def vocab(self) -> str:
    return os.path.join(self.shared, 'fixtures', 't5_vocab', 'sentencepiece.model')

  @property
  def fixture(self) -> str:
    return os.path.join(self.shared, 'fixtures', 't5x_tiny', 'checkpoint_3')

  def path(self, *parts: str) -> str:
    return os.path.join(self.work, *parts)

  def cli(self, name: str, args: list[str], bindings=(), timeout=1200) -> str:
    """`python -m prompt_tuning <args>`; returns its stdout, raising if it fails."""
    args = list(args) + [f'--gin_bindings={b}' for b in bindings]
    start = time.time()
    proc = subprocess.run([sys.executable, '-m', 'prompt_tuning', *args], env=self.env,
                          cwd=self.work, capture_output=True, text=True, timeout=timeout)
    self.times[name] = round(time.time() - start, 1)
    with open(self.path('logs', f'{name}.log'), 'w') as f:
      f.write(f'$ {" ".join(args)}\n{proc.stdout}\n--- stderr\n{proc.stderr}')
    print(f'  {name}: exit {proc.returncode}, {self.times[name]} s', flush=True)
    if proc.returncode:
      raise SystemExit(f'{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}')
    return proc.stdout

  def result_json(self, name: str, stdout: str) -> None:
    """Keeps the JSON a command printed last (eval's result) as results/<name>.json."""
    os.makedirs(self.path('results'), exist_ok=True)
    with open(self.path('results', f'{name}.json'), 'w') as f:
      json.dump(json.loads(stdout[stdout.index('{'):]), f, indent=1, sort_keys=True)


def run_all(r: Runner) -> None:
  r.cli('quickstart', [])

  # RTE: the paper preset on the fixture (tests/cli_helpers.rte_train_args), then eval and
  # infer (as tests/test_remote_runs.py), then the three exports.
  model = r.path('rte', 'model')
  train = FIXTURE_MODEL + [
      f"MODEL_DIR = '{model}'", f"INITIAL_CHECKPOINT_PATH = '{r.fixture}'",
      f"MIXTURE_OR_TASK_NAME = '{RTE}'", 'TRAIN_STEPS = 3', 'BATCH_SIZE = 4', RTE_LENGTHS,
      'PROMPT_LENGTH = 5', 'EVAL_PERIOD = 3', 'EVAL_MAX_EXAMPLES = 8']
  r.cli('rte_train', ['train', '--gin_file=configs/paper/t5_1_1_base_rte.gin'], train)
  saved = FIXTURE_MODEL + [
      f"MODEL_DIR = '{model}'", 'PROMPT_LENGTH = 5', f"INITIAL_CHECKPOINT_PATH = '{r.fixture}'",
      f"MIXTURE_OR_TASK_NAME = '{RTE}'", RTE_LENGTHS]
  out = r.cli('rte_eval', ['eval', '--gin_file=runs/prompt_eval.gin', *SMALL], saved + [
      'EVAL_MAX_EXAMPLES = 8', f"EVAL_OUTPUT_DIR = '{r.path('rte', 'eval')}'"])
  r.result_json('rte_eval', out)
  r.cli('rte_infer', ['infer', '--gin_file=runs/prompt_infer.gin', *SMALL], saved + [
      'runs.infer.max_examples = 8', f"INFER_OUTPUT_DIR = '{r.path('rte', 'infer')}'"])
  for fmt, dest in (('npy', 'prompt.npy'), ('peft', 'peft'), ('t5x', 't5x')):
    r.cli(f'rte_export_{fmt}', ['export', f'--model_dir={model}', f'--format={fmt}',
                                f"--output={r.path('rte', 'export', dest)}"])

  # Many prompts, one model (tests/test_many_prompts_cli.py): multi-task train, export of one
  # prompt, mixed-task infer over the library; an ensemble eval and one member alone.
  multi = r.path('multi', 'model')
  r.cli('multi_train', ['train', '--gin_file=configs/paper/t5_1_1_base_rte.gin',
                        '--gin_file=runs/multi_task_prompt_tuning.gin'], FIXTURE_MODEL + [
      f"MODEL_DIR = '{multi}'", f"INITIAL_CHECKPOINT_PATH = '{r.fixture}'",
      "MIXTURE_OR_TASK_NAME = 'quickstart_mixture'", 'TRAIN_STEPS = 2', 'BATCH_SIZE = 8',
      "TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 4}", 'PROMPT_LENGTH = 3',
      'EVAL_PERIOD = 2', 'EVAL_MAX_EXAMPLES = 4', "EVAL_METHODS = ('generate',)",
      "PROMPT_SHARED = 'add'", "CLASS_LABELS = ['1', '2']"])
  r.cli('multi_export_peft', ['export', f'--model_dir={multi}', '--format=peft',
                              '--prompt_name=quickstart_min',
                              f"--output={r.path('multi', 'min_peft')}"])
  with open(r.path('multi', 'mixed.jsonl'), 'w') as f:
    f.write('{"prompt": "quickstart_max", "inputs": "3825"}\n'
            '{"prompt": "quickstart_first", "inputs": "907"}\n')
  r.cli('multi_infer', ['infer', *SMALL, '--gin_file=runs/mixed_task_infer.gin'],
        FIXTURE_MODEL + [
            f"INITIAL_CHECKPOINT_PATH = '{r.fixture}'", f"PROMPT_LIBRARY = '{multi}'",
            f"INFER_INPUT_FILE = '{r.path('multi', 'mixed.jsonl')}'",
            f"INFER_OUTPUT_DIR = '{r.path('multi', 'out')}'",
            "MIXTURE_OR_TASK_NAME = 'quickstart_max'",
            "TASK_FEATURE_LENGTHS = {'inputs': 16, 'targets': 4}"])
  # Members by paths relative to the working folder: evaluation names each member's output
  # files after its path (the last 60 characters), which must not hold the temporary folder.
  members = [os.path.relpath(save_prompt(r.path('ensemble', f'member{s}.npy'), s), r.work)
             for s in range(3)]
  ensemble = FIXTURE_MODEL + [
      f"INITIAL_CHECKPOINT_PATH = '{r.fixture}'", f"MIXTURE_OR_TASK_NAME = '{RTE}'",
      'EVAL_MAX_EXAMPLES = 24', RTE_LENGTHS, f"EVAL_OUTPUT_DIR = '{r.path('ensemble', 'out')}'"]
  rte_gin = '--gin_file=configs/paper/t5_1_1_base_rte.gin'
  out = r.cli('ensemble_eval', ['eval', rte_gin, '--gin_file=runs/prompt_ensemble_eval.gin'],
              ensemble + [f'ENSEMBLE_PROMPTS = {members!r}'])
  r.result_json('ensemble_eval', out)
  out = r.cli('member_eval', ['eval', rte_gin, '--gin_file=runs/prompt_eval.gin'], ensemble + [
      f"PROMPT_FILE = '{members[1]}'", 'PROMPT_LENGTH = 5', "EVAL_METHODS = ('rank',)"])
  r.result_json('member_eval', out)

  serve(r, model)


def save_prompt(path: str, seed: int, shape=(5, 4)) -> str:
  """A seeded [P, D] float32 prompt as .npy (as the tests write their prompt libraries)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.save(path, np.random.RandomState(seed).normal(scale=2.0, size=shape).astype(np.float32))
  return path


def serve(r: Runner, rte_model: str) -> None:
  """`serve` of the trained RTE prompt and seeded CB/BoolQ prompts; the fixed requests'
  answers (predictions, labels, scores) to serve/answers.json."""
  library = r.path('serve', 'library')
  os.makedirs(library)
  shutil.copyfile(os.path.join(rte_model, 'export', 'prompt.npy'),
                  os.path.join(library, f'{RTE}.npy'))
  save_prompt(os.path.join(library, 'super_glue_cb_local.npy'), 1)
  save_prompt(os.path.join(library, 'super_glue_boolq_local.npy'), 2)
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  args = ['serve', *SMALL, f'--prompts={library}', '--host=127.0.0.1', f'--port={port}',
          '--fine_shapes=false', f'--vocab={r.vocab}']
  args += [f'--gin_bindings={b}' for b in FIXTURE_MODEL +
           [f"INITIAL_CHECKPOINT_PATH = '{r.fixture}'"]]
  start = time.time()
  with open(r.path('logs', 'serve.log'), 'w') as log:
    proc = subprocess.Popen([sys.executable, '-m', 'prompt_tuning', *args], env=r.env,
                            cwd=r.work, stdout=log, stderr=subprocess.STDOUT)
  try:
    deadline = time.time() + 300
    while not _get(f'http://127.0.0.1:{port}/healthz'):
      if proc.poll() is not None or time.time() > deadline:
        raise SystemExit(f'serve did not start (exit {proc.poll()}); see logs/serve.log')
      time.sleep(0.3)
    answers = []
    for body in SERVE_REQUESTS:
      request = urllib.request.Request(
          f'http://127.0.0.1:{port}/v1/predict', json.dumps(body).encode(),
          {'Content-Type': 'application/json'}, method='POST')
      with urllib.request.urlopen(request, timeout=300) as response:
        answer = json.loads(response.read())
      answers.append({k: answer[k] for k in ('predictions', 'labels', 'scores') if k in answer})
  finally:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(120)
  r.times['serve'] = round(time.time() - start, 1)
  print(f'  serve: exit {code}, {r.times["serve"]} s', flush=True)
  if code:
    raise SystemExit(f'serve exited {code} after SIGTERM; see logs/serve.log')
  with open(r.path('serve', 'answers.json'), 'w') as f:
    json.dump([{'request': b, 'answer': a} for b, a in zip(SERVE_REQUESTS, answers)], f,
              indent=1)


def _get(url: str) -> bool:
  try:
    with urllib.request.urlopen(url, timeout=2) as response:
      return response.status == 200
  except (urllib.error.URLError, OSError):
    return False


# ----------------------------------------------------------------------------------------------
# Hashing.


def drop_time_keys(value):
  if isinstance(value, dict):
    return {k: drop_time_keys(v) for k, v in value.items() if not TIME_KEY.search(k.lower())}
  if isinstance(value, list):
    return [drop_time_keys(v) for v in value]
  return value


def normalize(rel: str, data: bytes, paths: list[tuple[str, str]]) -> tuple[bytes, list[str]]:
  """The bytes hashed for a file and how they were made from its content."""
  try:
    text = data.decode('utf-8')
  except UnicodeDecodeError:
    return data, []
  how = []
  for path, name in paths:
    if path in text:
      text, how = text.replace(path, name), how + [f'{name} for its absolute path']
  if os.path.basename(rel) in ('config.gin', 'operative_config.gin'):
    text = ''.join(line for line in text.splitlines(True)
                   if MACRO.match(line) and '@' not in line and 'prompt_tuning' not in line)
    how.append('macros only (imports and configurable names are module paths)')
  elif rel.endswith(('.json', '_METADATA')):
    try:
      value = json.loads(text)
    except ValueError:
      value = None
    dropped = drop_time_keys(value)
    if dropped != value:
      text = json.dumps(dropped, sort_keys=True)
      how.append('JSON without time keys')
  return text.encode('utf-8'), how


def restored_digest(state_dir: str) -> str:
  """sha256 of an Orbax checkpoint's restored arrays (tree paths, dtypes, shapes, bytes)."""
  import jax
  import orbax.checkpoint as ocp
  tree = ocp.StandardCheckpointer().restore(state_dir)
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    value = np.asarray(leaf)
    h.update(f'{jax.tree_util.keystr(path)} {value.dtype} {value.shape}\n'.encode())
    h.update(np.ascontiguousarray(value).tobytes())
  return h.hexdigest()


def hash_tree(work: str, paths: list[tuple[str, str]]) -> dict:
  """Hashes, how files were normalized, what was excluded; and the hashed files whose name or
  normalized bytes still hold the temporary folder's (random) name: they would differ run to
  run."""
  marker = os.path.basename(os.path.dirname(work))
  unnormalized = []
  hashes, normalized, excluded = {}, {}, {pattern: [] for patterns, _ in EXCLUDED
                                          for pattern in patterns}
  for root, dirs, files in os.walk(work):
    dirs.sort()
    for name in sorted(files):
      full = os.path.join(root, name)
      rel = os.path.relpath(full, work)
      pattern = next((p for p in excluded if fnmatch.fnmatch(rel, p)), None)
      if pattern:
        excluded[pattern].append(rel)
        continue
      with open(full, 'rb') as f:
        data, how = normalize(rel, f.read(), paths)
      hashes[rel] = sha256(data)
      if marker in rel or marker.encode() in data:
        unnormalized.append(rel)
      if how:
        normalized[rel] = how
    if os.path.basename(root) == 'state' and 'manifest.ocdbt' in files:
      hashes[os.path.relpath(root, work) + '#arrays'] = restored_digest(root)
  return {'hashes': hashes, 'normalized': normalized, 'excluded': [
      {'patterns': patterns, 'reason': reason,
       'files': sorted(f for p in patterns for f in excluded[p])}
      for patterns, reason in EXCLUDED], 'unnormalized': unnormalized}


def git(*args: str) -> str:
  return subprocess.run(['git', *args], cwd=REPO, capture_output=True, text=True).stdout.strip()


def compare(old: dict, new: dict) -> int:
  a, b = old['hashes'], new['hashes']
  differ = sorted(k for k in a.keys() & b.keys() if a[k] != b[k])
  missing, extra = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
  for title, names in (('differ', differ), ('missing', missing), ('extra', extra)):
    for name in names:
      print(f'{title}: {name}')
  print(f'compared {len(a)} hashes of {old.get("git_head", "?")[:12]} with {len(b)}: '
        f'{len(differ)} differ, {len(missing)} missing, {len(extra)} extra')
  return 1 if differ or missing or extra else 0


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True, help='where to write the hashes (JSON)')
  parser.add_argument('--compare', help='an earlier output JSON to compare against')
  parser.add_argument('--keep', action='store_true', help='keep the temporary folder')
  args = parser.parse_args()
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # the CLI processes' default too (as tests)
  shared = os.path.abspath(os.environ.get('PROMPT_TUNING_SHARED',
                                          os.path.join(REPO, '..', 'shared')))
  tmp = tempfile.mkdtemp(prefix='output-hashes-')
  work = os.path.join(tmp, 'work')
  os.makedirs(work)
  start, head = time.time(), git('rev-parse', 'HEAD')
  dirty = git('status', '--porcelain', '--', 'prompt_tuning', 'configs', 'gin').splitlines()
  try:
    r = Runner(work, shared, os.path.join(tmp, 'xla_cache'))
    run_all(r)
    paths = sorted({(p, name) for root, name in ((work, '<WORK>'), (shared, '<SHARED>'))
                    for p in (root, os.path.realpath(root))}, key=lambda x: -len(x[0]))
    tree = hash_tree(work, paths)
    import jax
    result = {
        'git_head': head, 'git_head_at_end': git('rev-parse', 'HEAD'), 'git_dirty': dirty,
        'wall_s': round(time.time() - start, 1), 'times_s': r.times,
        'machine': {'python': platform.python_version(), 'platform': platform.platform(),
                    'processor': platform.machine(), 'jax': jax.__version__,
                    'numpy': np.__version__, 'JAX_PLATFORMS': r.env['JAX_PLATFORMS']},
        'files_hashed': len(tree['hashes']),
        'files_excluded': sum(len(e['files']) for e in tree['excluded']), **tree}
  except BaseException:
    print(f'failed; kept {tmp} (logs/ holds each command\'s output)')
    raise
  if args.keep:
    print(f'kept {tmp}')
  else:
    shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=1, sort_keys=True)
    f.write('\n')
  print(f"wrote {args.out}: {result['files_hashed']} files hashed, "
        f"{result['files_excluded']} excluded, {result['wall_s']} s")
  for rel in result['unnormalized']:
    print(f'warning: {rel} holds the temporary folder in its name or bytes')
  if args.compare:
    with open(args.compare) as f:
      return compare(json.load(f), result)
  return 0


if __name__ == '__main__':
  sys.exit(main())

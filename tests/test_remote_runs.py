"""The CLI with every path on gs:// (a GCS API server on 127.0.0.1): train, kills at four moments,
restart through transient failures, export, eval, infer and serve, each giving the bytes (or
answers) of the same run on local paths.

The base checkpoint, vocabulary and task files are read from the emulator too; no local `gs:`
folder may appear.
"""

import json
import os
import uuid

import numpy as np
import pytest

from cli_helpers import rte_env, rte_train_args, run_cli
from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning import storage
from prompt_tuning import testing
from prompt_tuning.testing import FIXTURE, FIXTURE_BINDINGS, FIXTURE_CONFIG, VOCAB

STEPS = dict(TRAIN_STEPS=6, SAVE_PERIOD=2, EVAL_PERIOD=4)
# (fault, what the kill cuts): a save on gs:// cut before orbax's commit file, the moment object
# storage commits differently from a local rename (test_crash_consistency cuts every moment on
# local paths).
CUTS = [
    ('orbax_commit@2', "mid-save: step 2's objects written, orbax's commit file not"),
]
COMPARED = ('numpy_checkpoints', 'export', 'best', 'metrics.jsonl', 'inference_eval')


def _files(root, names=COMPARED):
  """{relative path: bytes} under `root` (local or gs://) for the compared names."""
  out = {}
  for name in names:
    path = storage.join(str(root), name)
    if storage.isfile(path):
      out[name] = storage.read_bytes(path)
      continue
    for dirpath, _, files in storage.walk(path):
      for f in files:
        out[storage.relpath(storage.join(dirpath, f), str(root))] = storage.read_bytes(
            storage.join(dirpath, f))
  return out


def _train_scalars(root, tmp):
  """{step: loss} of the train events under `root` (downloaded when remote), later files'
  values of a step replacing earlier ones' (a restart redoes steps)."""
  import tensorflow as tf
  local = tmp / f'events-{uuid.uuid4().hex[:6]}'
  local.mkdir()
  directory = storage.join(str(root), 'train')
  for name in storage.listdir(directory):
    (local / name).write_bytes(storage.read_bytes(storage.join(directory, name)))
  values = {}
  order = lambda n: (int(n.split('.')[3]), int(n.split('.')[-1]))  # process time, writer count
  for name in sorted(os.listdir(local), key=order):
    try:
      for event in tf.compat.v1.train.summary_iterator(str(local / name)):
        for v in event.summary.value:
          if v.tag == 'loss':
            values[event.step] = float(tf.make_ndarray(v.tensor)) if v.HasField('tensor') \
                else v.simple_value
    except tf.errors.DataLossError:
      pass
  return values


@pytest.fixture(scope='module')
def remote(gcs, shared, tmp_path_factory):
  """The inputs on gs:// (checkpoint, vocabulary, RTE files); the env of local and remote runs."""
  root = f'gs://bkt/{uuid.uuid4().hex[:8]}'
  checkpoint = shared(*FIXTURE)
  vocab = shared(*VOCAB)
  storage.copy_tree(checkpoint, f'{root}/base/checkpoint_3')
  storage.write_atomic(f'{root}/vocab/sentencepiece.model', storage.read_bytes(vocab))
  for name in ('train.jsonl', 'val.jsonl'):
    storage.write_atomic(f'{root}/data/superglue/RTE/{name}',
                         storage.read_bytes(shared('data', 'superglue', 'RTE', name)))
  # The runs share the session's compilation cache (conftest); URLs get a cache of their own.
  local_env = rte_env(shared, PROMPT_TUNING_CACHE=str(tmp_path_factory.mktemp('remote_cache')))
  remote_env = {**local_env, 'PROMPT_TUNING_DATA_DIR': f'{root}/data',
                'PROMPT_TUNING_VOCAB': f'{root}/vocab/sentencepiece.model'}
  return {'root': root, 'checkpoint': f'{root}/base/checkpoint_3', 'local_env': local_env,
          'remote_env': remote_env}


def _remote_train_args(shared, remote, model_dir):
  args = rte_train_args(shared, model_dir, **STEPS)
  local = shared(*FIXTURE)
  return [a.replace(local, remote['checkpoint']) for a in args]


@pytest.fixture(scope='module')
def runs(shared, remote, gcs, tmp_path_factory):
  """An uninterrupted local run, and the same run on gs:// cut at every moment of CUTS, whose
  last restart meets five transient failures (three HTTP 503s, two dropped connections) spread
  over its reads and writes."""
  tmp = tmp_path_factory.mktemp('remote_runs')
  straight = tmp / 'straight'
  cut = f"{remote['root']}/runs/cut"
  run_cli(rte_train_args(shared, straight, **STEPS), remote['local_env'], str(tmp))
  kills = []
  for fault, moment in CUTS:
    proc = run_cli(_remote_train_args(shared, remote, cut),
                   {**remote['remote_env'], 'PROMPT_TUNING_FAULT': fault}, str(tmp), check=False)
    assert proc.returncode == -9, (moment, proc.returncode, proc.stderr[-3000:])
    # Readable after every kill, and exactly the committed step it names.
    committed = model_dir_lib.latest_step(cut)
    value, step = model_dir_lib.load_prompt(cut)
    expected = np.load(model_dir_lib.numpy_prompt_path(str(straight), step))
    kills.append((fault, committed, step, value.tobytes() == expected.tobytes()))
  before = sum(f['served'] for f in gcs.faults())
  gcs.inject(3, status=503, every=40)
  gcs.inject(2, status=0, every=53)
  run_cli(_remote_train_args(shared, remote, cut), remote['remote_env'], str(tmp))
  faults = sum(f['served'] for f in gcs.faults()) - before
  return {'tmp': tmp, 'straight': straight, 'cut': cut, 'kills': kills, 'faults': faults}


def test_kills_and_transient_failures_on_gs_then_the_uninterrupted_files(runs, tmp_path):
  # After each kill the latest committed step is what readers return, with the local bytes.
  assert [(f, c) for f, c, _, _ in runs['kills']] == [('orbax_commit@2', 0)]
  assert all(c == s and same for _, c, s, same in runs['kills']), runs['kills']
  assert runs['faults'] == 5  # the clients retried them all; the run went on
  local, remote = _files(runs['straight']), _files(runs['cut'])
  assert sorted(local) == sorted(remote)
  assert [name for name in local if local[name] != remote[name]] == []
  assert model_dir_lib.committed_steps(runs['cut']) == [6]  # KEEP_CHECKPOINTS = 1
  assert model_dir_lib.uncommitted_steps(runs['cut']) == []
  assert remote['metrics.jsonl'].count(b'"kind": "eval"') == 3  # steps 0, 4, 6, each once
  # Every step's TensorBoard train scalars survive, with the local run's values.
  scalars = _train_scalars(runs['cut'], tmp_path)
  assert sorted(scalars) == list(range(1, 7))
  assert scalars == _train_scalars(runs['straight'], tmp_path)
  # Nothing local was made of a URL.
  assert not any(p.name.startswith('gs:') for p in runs['tmp'].rglob('*'))
  assert not os.path.exists(os.path.join(os.path.dirname(os.path.dirname(__file__)), 'gs:'))


def test_export_eval_infer_from_gs_equal_local(shared, remote, runs):
  tmp, straight, cut = runs['tmp'], runs['straight'], runs['cut']
  out = f"{remote['root']}/out"
  from prompt_tuning.prompts import export
  for source, env, dest in ((str(straight), remote['local_env'], str(tmp / 'local-out')),
                            (cut, remote['remote_env'], out)):
    if source == cut:  # through the CLI; the local side (the reference) in this process
      run_cli(['export', f'--model_dir={source}', '--format=npy', f'--output={dest}/p.npy'], env,
              str(tmp))
      run_cli(['export', f'--model_dir={source}', '--format=peft', f'--output={dest}/peft'],
              env, str(tmp))
    else:
      export.export(source, 'npy', f'{dest}/p.npy')
      export.export(source, 'peft', f'{dest}/peft')
    checkpoint = shared(*FIXTURE) if source == str(straight) else remote['checkpoint']
    bindings = FIXTURE_BINDINGS + [
        f"MODEL_DIR = '{source}'", 'PROMPT_LENGTH = 5', f"INITIAL_CHECKPOINT_PATH = '{checkpoint}'",
        "MIXTURE_OR_TASK_NAME = 'super_glue_rte_local'", "TASK_FEATURE_LENGTHS = {'inputs': 64, "
        "'targets': 8}"]
    proc = run_cli(['eval', '--gin_file=runs/prompt_eval.gin',
                    '--gin_file=models/t5_1_1_prompt.gin', '--gin_file=models/sizes/small.gin',
                    '--gin_bindings=EVAL_MAX_EXAMPLES = 8', f"--gin_bindings=EVAL_OUTPUT_DIR = "
                    f"'{dest}/eval'"] + [f'--gin_bindings={b}' for b in bindings], env, str(tmp))
    assert json.loads(proc.stdout[proc.stdout.index('{'):])['step'] == 6
    run_cli(['infer', '--gin_file=runs/prompt_infer.gin', '--gin_file=models/t5_1_1_prompt.gin',
             '--gin_file=models/sizes/small.gin', '--gin_bindings=runs.infer.max_examples = 8',
             f"--gin_bindings=INFER_OUTPUT_DIR = '{dest}/infer'"] +
            [f'--gin_bindings={b}' for b in bindings], env, str(tmp))
  local = _files(tmp / 'local-out', ('p.npy', 'peft', 'eval', 'infer'))
  remote_files = _files(out, ('p.npy', 'peft', 'eval', 'infer'))
  assert sorted(local) == sorted(remote_files) and len(local) >= 5, sorted(remote_files)
  # The PEFT config names the base checkpoint where each run read it; all else is equal.
  configs = [json.loads(files.pop('peft/adapter_config.json')) for files in (local, remote_files)]
  assert configs[0].pop('base_model_name_or_path') == shared(*FIXTURE)
  assert configs[1].pop('base_model_name_or_path') == remote['checkpoint']
  assert configs[0] == configs[1]
  assert [n for n in local if local[n] != remote_files[n]] == []
  assert not any(p.name.startswith('gs:') for p in tmp.rglob('*'))


def _post(port, path, body):
  import urllib.error
  import urllib.request
  request = urllib.request.Request(f'http://127.0.0.1:{port}{path}', json.dumps(body).encode(),
                                   {'Content-Type': 'application/json'}, method='POST')
  try:
    with urllib.request.urlopen(request, timeout=120) as response:
      return response.status, json.loads(response.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def test_serve_from_a_gs_library_answers_as_offline_infer(shared, remote, runs, tmp_path,
                                                          monkeypatch):
  """`serve` with the base checkpoint, the prompt library and the vocabulary all on gs://."""
  monkeypatch.setenv('PROMPT_TUNING_VOCAB', shared(*VOCAB))
  import subprocess

  from prompt_tuning import runs as runs_lib
  from prompt_tuning.inference.decoding import DecodingConfig
  from prompt_tuning.models.prompt import PromptConfig
  task = 'super_glue_rte_local'
  library = f"{remote['root']}/library"
  final = storage.read_bytes(model_dir_lib.numpy_prompt_path(runs['cut'], 6))
  storage.write_atomic(f'{library}/{task}.npy', final)
  port = testing.free_port()
  args = testing.serve_command(library, port, remote['remote_env']['PROMPT_TUNING_VOCAB'],
                               remote['checkpoint'], FIXTURE_BINDINGS)
  proc = subprocess.Popen(args, env={**os.environ, **remote['remote_env']}, cwd=str(tmp_path),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    testing.wait_until_up(proc, port)
    from prompt_tuning.data import tasks
    tasks.set_local_data_dir(shared('data'))
    texts = [tasks.format_example(task, raw)[0]['inputs']
             for raw in tasks.read_local_examples(task, 'validation')[:6]]
    status, answer = _post(port, '/v1/predict', {'task': task, 'inputs': texts})
    assert status == 200, answer
  finally:
    proc.terminate()
    proc.wait(60)
  local_prompt = tmp_path / f'{task}.npy'
  local_prompt.write_bytes(final)
  rows = tmp_path / 'rows.jsonl'
  rows.write_text(''.join(json.dumps({'prompt': task, 'inputs': t}) + '\n' for t in texts))
  model = FIXTURE_CONFIG.replace(dtype='float32')
  path = runs_lib.infer(model_dir=None, mixture_or_task_name=task,
                        task_feature_lengths={'inputs': 512, 'targets': 64},
                        initial_checkpoint_path=shared(*FIXTURE),
                        model=model, prompt=PromptConfig(5), decoding=DecodingConfig(),
                        prompt_library={task: str(local_prompt)}, input_file=str(rows),
                        output_dir=str(tmp_path / 'out'))
  offline = [json.loads(line)['prediction'] for line in open(path)]
  assert answer['predictions'] == offline
  assert not any(p.name.startswith('gs:') for p in tmp_path.rglob('*'))


@pytest.mark.parametrize('case', ['unknown_bucket', 'missing_checkpoint', 'unknown_scheme',
                                  'unreachable'])
def test_bad_remote_paths_are_one_line_errors_and_write_nothing(shared, remote, case, tmp_path,
                                                                capsys, monkeypatch):
  """In this process for speed (cli.main), except an unreachable endpoint: its address is read
  when a process first opens storage."""
  model_dir = f"{remote['root']}/runs/bad-{case}"
  args = _remote_train_args(shared, remote, model_dir)
  env = dict(remote['remote_env'])
  named = model_dir
  if case == 'unknown_bucket':
    named = model_dir.replace('gs://bkt/', 'gs://no-such-bucket/')
    args = [a.replace(model_dir, named) for a in args]
  elif case == 'missing_checkpoint':
    named = f"{remote['root']}/base/no_checkpoint"
    args = [a.replace(remote['checkpoint'], named) for a in args]
  elif case == 'unknown_scheme':
    named = model_dir.replace('gs://', 'foo://')
    args = [a.replace(model_dir, named) for a in args]
  else:  # the storage endpoint does not answer (a port nothing listens on)
    env['STORAGE_EMULATOR_HOST'] = env['TENSORSTORE_GCS_HTTP_URL'] = f'http://127.0.0.1:{testing.free_port()}'
    named = '127.0.0.1'
  if case == 'unreachable':
    proc = run_cli(args, env, str(tmp_path), check=False, timeout=300)
    code, stderr = proc.returncode, proc.stderr
  else:
    import gin

    from prompt_tuning import cli
    for key, value in env.items():
      monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    gin.clear_config()
    try:
      code = cli.main(args)
    finally:
      gin.clear_config()
    stderr = capsys.readouterr().err
  assert code == 2, stderr[-3000:]
  # (tensorstore says once that it uses the emulator's test token: the only other line allowed)
  lines = [line for line in stderr.strip().splitlines()
           if 'Using GOOGLE_AUTH_TOKEN_FOR_TESTING' not in line]
  assert len(lines) == 1 and named in lines[0] and 'Traceback' not in stderr, stderr
  assert not storage.exists(model_dir)  # nothing written
  assert list(tmp_path.iterdir()) == []  # no local folder made of a URL

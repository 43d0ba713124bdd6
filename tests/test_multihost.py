"""Multi-host SPMD training: 2 localhost processes x 4 CPU devices agree with 1 process x 8.

Each of the two processes feeds only its own half of every global batch; the mesh spans all 8
global devices, so every step's reductions cross the process boundary (Gloo CPU collectives).
`loop.train` then checkpoints from both processes into one MODEL_DIR on gs:// (a GCS API server
on 127.0.0.1), and resumes from it; the 1-process reference writes a local MODEL_DIR. Both read
the frozen parameters from the same gs:// object.
"""

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import flax
import numpy as np

from prompt_tuning.models import prompt as prompt_lib
from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning import storage, testing
from prompt_tuning.train import state as state_lib
from train_fixtures import make_trainer

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, 'multihost_worker.py')
DEADLINE_S = 240  # all three workers together; a healthy run takes well under half of it


def launch(args: list, device_count: int, log_path: str) -> subprocess.Popen:
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': f'--xla_force_host_platform_device_count={device_count}',
         'PYTHONPATH': HERE + os.pathsep + os.environ.get('PYTHONPATH', '')}
  with open(log_path, 'wb') as log:
    # A session of its own, so a timeout can kill the worker and anything it started.
    return subprocess.Popen([sys.executable, WORKER, *args], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def wait_all(procs: dict, logs: dict, deadline: float) -> None:
  """Waits for every worker; stops at the first failure (its peer would hang in a collective)."""
  while True:
    codes = {name: p.poll() for name, p in procs.items()}
    failed = [name for name, rc in codes.items() if rc not in (None, 0)]
    if failed or time.monotonic() > deadline:
      name = failed[0] if failed else next(n for n, rc in codes.items() if rc is None)
      with open(logs[name], 'rb') as f:
        tail = f.read()[-4000:].decode(errors='replace')
      reason = f'exited with {codes[name]}' if failed else f'still running after {DEADLINE_S}s'
      raise AssertionError(f'worker {name} {reason}:\n{tail}')
    if all(rc == 0 for rc in codes.values()):
      return
    time.sleep(0.2)


def kill(procs: dict) -> None:
  for p in procs.values():
    if p.poll() is None:
      try:
        os.killpg(p.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    p.wait(timeout=30)


def run_workers(tmp: str, params_path: str, model_dir: str) -> tuple[dict, dict, str]:
  """(process 0's output, process 1's, the 1-process reference's) and the shared MODEL_DIR."""
  # The coordinator's port; the tiny race until it binds the port is fine.
  port = testing.free_port()
  jobs = {'process0': ([model_dir, params_path, str(port), '0'], 4),
          'process1': ([model_dir, params_path, str(port), '1'], 4),
          'reference': ([os.path.join(tmp, 'reference_dir'), params_path], 8)}
  procs, logs = {}, {}
  try:
    for name, (args, devices) in jobs.items():
      logs[name] = os.path.join(tmp, f'{name}.log')
      procs[name] = launch([os.path.join(tmp, f'{name}.json'), *args], devices, logs[name])
    wait_all(procs, logs, time.monotonic() + DEADLINE_S)
  finally:
    kill(procs)
  outs = []
  for name in jobs:
    with open(os.path.join(tmp, f'{name}.json')) as f:
      outs.append(json.load(f))
  return (*outs, model_dir)


def test_two_processes_match_one(tiny, gcs):
  config, frozen = tiny
  root = f'gs://bkt/multihost-{uuid.uuid4().hex[:8]}'
  with tempfile.TemporaryDirectory(prefix='multihost-') as tmp:
    local_params = os.path.join(tmp, 'frozen.npz')
    np.savez(local_params, **flax.traverse_util.flatten_dict(frozen, sep='/'))
    params_path = f'{root}/frozen.npz'
    storage.write_atomic(params_path, storage.read_bytes(local_params))
    p0, p1, ref, model_dir = run_workers(tmp, params_path, f'{root}/model_dir')
    check_topology(p0, p1, ref)
    check_meshes(p0, p1, ref)
    check_loop(p0, p1, ref, model_dir, config, frozen)


def check_topology(p0, p1, ref):
  assert (p0['process_index'], p1['process_index']) == (0, 1)
  assert p0['process_count'] == p1['process_count'] == 2
  assert p0['local_devices'] == p1['local_devices'] == 4
  assert (ref['process_count'], ref['local_devices']) == (1, 8)
  # One compiled step per mesh, on every process, however the batch arrived.
  for out in (p0, p1, ref):
    assert out['traces'] == {'8x1': 1, '4x2': 1}, out['traces']
  # Both processes pad a step to the longest row of either (one shape for the SPMD step).
  assert p0['agreed'] == p1['agreed'] == {'inputs': 40, 'targets': 5}
  assert ref['agreed'] == {'inputs': 10, 'targets': 5}


def check_meshes(p0, p1, ref):
  initial = np.asarray(ref['initial_prompt'])
  for name, expected in ref['meshes'].items():
    # Training moved the prompt, so agreeing below means agreeing on real updates.
    assert np.abs(np.asarray(expected['prompt']) - initial).max() > 1e-4, name
    for out in (p0, p1):
      got = out['meshes'][name]
      np.testing.assert_allclose(got['losses'], expected['losses'], rtol=1e-5, err_msg=name)
      np.testing.assert_allclose(got['prompt'], expected['prompt'], atol=1e-5, rtol=1e-5,
                                 err_msg=name)
    # The two processes ran one SPMD program: bit-identical results (JSON floats round-trip).
    for key in ('losses', 'prompt'):
      assert p0['meshes'][name][key] == p1['meshes'][name][key], (name, key)


def check_loop(p0, p1, ref, model_dir, config, frozen):
  assert p0['loop']['step'] == p1['loop']['step'] == 3
  final = np.asarray(p0['loop']['prompt'], np.float32)
  assert final.tobytes() == np.asarray(p1['loop']['prompt'], np.float32).tobytes()
  np.testing.assert_allclose(final, ref['loop']['prompt'], atol=1e-5, rtol=1e-5)
  # One numpy prompt per saved step and one run_info.json, no temporary leftovers (process 0
  # is their only writer; the others take part in the orbax save alone).
  numpy_dir = storage.join(model_dir, 'numpy_checkpoints')
  assert storage.listdir(numpy_dir) == ['checkpoint_0', 'checkpoint_2', 'checkpoint_3']
  for step in storage.listdir(numpy_dir):
    assert storage.listdir(storage.join(numpy_dir, step)) == [model_dir_lib.NUMPY_NAME]
  assert sorted(f for f in storage.listdir(model_dir) if storage.isfile(
      storage.join(model_dir, f))) == [model_dir_lib.RUN_INFO]
  assert model_dir_lib.committed_steps(model_dir) == [3]
  assert model_dir_lib.uncommitted_steps(model_dir) == []
  saved = np.load(io.BytesIO(storage.read_bytes(model_dir_lib.numpy_prompt_path(model_dir, 3))))
  assert saved.dtype == np.float32 and saved.tobytes() == final.tobytes()
  # The orbax step both processes committed restores here, on this process's own devices.
  ckpt = state_lib.PromptCheckpointer(model_dir)
  try:
    assert ckpt.all_steps() == [3]
    restored, meta = ckpt.restore(make_trainer(config, frozen).abstract_state())
  finally:
    ckpt.close()
  assert meta == {'step': 3, 'data_position': 3}
  assert int(restored.step) == 3
  assert np.asarray(prompt_lib.get_prompt(restored.params)).tobytes() == final.tobytes()

"""Test fixtures: paths under ../shared (PROMPT_TUNING_SHARED; prompt_tuning.testing), skipping
when absent, and small reference models."""

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from prompt_tuning import testing

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# One XLA compilation cache for the session, this process and every CLI process a test starts:
# they compile the same programs of the same fixture model (a 3-step CLI run spent 21 of its
# CPU seconds compiling). A fresh folder per session, so the first compile of each program
# is still a real one.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix='prompt-tuning-tests-xla-')
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ.update({'JAX_COMPILATION_CACHE_DIR': _CACHE,
                     'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
                     'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'})
# Google's auth library must never probe the GCE metadata server (an address off this machine)
# when a test's GCS client looks for credentials; read when google.auth is first imported.
os.environ.setdefault('NO_GCE_CHECK', 'true')


@pytest.fixture(scope='session')
def shared():
  """Returns a function mapping relative parts to a path under shared/, skipping if absent."""
  def get(*parts):
    path = testing.shared_path(*parts)
    if not os.path.exists(path):
      pytest.skip(f'shared fixture {path} not present (set PROMPT_TUNING_SHARED)')
    return path
  return get


@pytest.fixture
def fixture_copy(shared, tmp_path):
  """A writable copy (shared/ may be read-only) of the T5X fixture checkpoint, at
  tmp_path/checkpoint_3."""
  src, dst = shared(*testing.FIXTURE), str(tmp_path / 'checkpoint_3')
  for root, _, files in os.walk(src):
    out = os.path.join(dst, os.path.relpath(root, src))
    os.makedirs(out, exist_ok=True)
    for name in files:
      with open(os.path.join(root, name), 'rb') as f, open(os.path.join(out, name), 'wb') as g:
        g.write(f.read())
  return dst


@pytest.fixture(scope='session')
def eight_devices():
  """`run(worker)`: runs tests/<worker> in a process with 8 CPU devices (meshes up to 8) and
  returns the JSON it prints."""
  here = os.path.dirname(os.path.abspath(__file__))

  def run(worker: str):
    env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
           'JAX_PLATFORMS': 'cpu',
           'PYTHONPATH': here + os.pathsep + os.environ.get('PYTHONPATH', '')}
    proc = subprocess.run([sys.executable, os.path.join(here, worker)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)
  return run


@pytest.fixture(scope='session')
def tiny():
  """(config, params) of the tiny T5 1.1 in float32; initialised once per session."""
  from prompt_tuning.models import t5
  config = t5.T5Config.preset('tiny', dtype='float32')
  return config, t5.init_params(config)


@pytest.fixture(scope='session')
def gcs():
  """A GCS API server on 127.0.0.1 (prompt_tuning.testing.gcs_emulator) with bucket 'bkt', its
  variables set in this process for the whole session (and so passed to the CLI runs of
  tests); `gcs.inject(count, status)` makes requests fail."""
  pytest.importorskip('gcp_storage_emulator', reason='the cloud extra is not installed')
  from prompt_tuning.testing.gcs_emulator import Emulator
  with Emulator() as emulator:
    saved = {k: os.environ.get(k) for k in emulator.env}
    os.environ.update(emulator.env)
    try:
      yield emulator
    finally:
      for key, value in saved.items():
        if value is None:
          os.environ.pop(key, None)
        else:
          os.environ[key] = value


@pytest.fixture(scope='session')
def assert_identical():
  """Asserts two parameter trees have the same keys, and each leaf the same dtype, shape and
  bytes."""
  import numpy as np

  from prompt_tuning.checkpoints.common import flatten

  def check(a, b):
    fa, fb = flatten(a), flatten(b)
    assert fa.keys() == fb.keys()
    for key in fa:
      x, y = np.asarray(fa[key]), np.asarray(fb[key])
      assert x.dtype == y.dtype and x.shape == y.shape, key
      assert x.tobytes() == y.tobytes(), key
  return check


@pytest.fixture
def offline_tfds(tmp_path, monkeypatch):
  """TFDS with no network and an empty data folder (returned): a task whose data is not
  prepared must fail, naming its _local variant, rather than download."""
  import socket

  import tensorflow_datasets as tfds

  from prompt_tuning.data import tasks

  def no_network(*args, **kwargs):
    raise AssertionError('the test tried to reach the network')

  monkeypatch.setattr(socket.socket, 'connect', no_network)
  monkeypatch.setattr(socket, 'create_connection', no_network)
  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', no_network)
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path))
  monkeypatch.delenv(tasks.TFDS_DOWNLOAD_ENV, raising=False)
  return tmp_path

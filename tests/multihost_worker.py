"""One process of the multi-host test (tests/test_multihost.py), or its 1-process reference.

  multihost_worker.py OUT_JSON MODEL_DIR PARAMS_NPZ                     1 process x 8 devices
  multihost_worker.py OUT_JSON MODEL_DIR PARAMS_NPZ PORT PROCESS_ID     process PROCESS_ID of 2

Trains 3 steps on each mesh from the same initial prompt, then runs `loop.train` into MODEL_DIR
(2 steps, then resumed to 3), and writes losses, final prompts and timings to OUT_JSON (stderr
carries Gloo's chatter). With 2 processes each one feeds only its own half of every global batch.
"""

import argparse
import io
import json
import os
import sys
import time
import traceback

import flax
import jax
import numpy as np
from jax.experimental import multihost_utils

from prompt_tuning import cli, storage
from prompt_tuning.prompts import init as prompt_init
from prompt_tuning.models import prompt as prompt_lib
from prompt_tuning.models import t5
from prompt_tuning.train import loop, partitioning
from prompt_tuning.testing import synthetic_batch
from train_fixtures import make_trainer

MESHES = {'8x1': (8, 1), '4x2': (4, 2)}
GLOBAL_BATCH = 8
STEPS = 3


def init_distributed(port: int, process_id: int) -> None:
  # Gloo is jax 0.10's default for CPU; named so a changed default cannot slip in unnoticed.
  # It must be set before the backend starts (init_distributed's log line starts it).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  # The CLI's own path, so the test covers what `--coordinator_address` runs.
  cli.init_distributed(argparse.Namespace(
      multiprocess_gpu=False, coordinator_address=f'127.0.0.1:{port}', process_count=2,
      process_index=process_id))


def load_frozen(path: str) -> dict:
  # Every process reads the same file (a gs:// object), as real hosts read one base checkpoint.
  with np.load(io.BytesIO(storage.read_bytes(path))) as f:
    return flax.traverse_util.unflatten_dict({k: f[k] for k in f.files}, sep='/')


def local_rows(batch: dict) -> dict:
  """This process's contiguous share of a global batch: the rows its devices hold."""
  share = GLOBAL_BATCH // jax.process_count()
  start = jax.process_index() * share
  return {k: v[start:start + share] for k, v in batch.items()}


def local_batches(start: int):
  position = start
  while True:
    yield local_rows(synthetic_batch(position, batch=GLOBAL_BATCH))
    position += 1


def host_prompt(state) -> np.ndarray:
  """The replicated prompt as numpy; every local replica must hold the same bytes."""
  prompt = prompt_lib.get_prompt(state.params)
  copies = [np.asarray(shard.data) for shard in prompt.addressable_shards]
  assert len(copies) == jax.local_device_count(), len(copies)
  for copy in copies[1:]:
    assert copy.tobytes() == copies[0].tobytes(), 'local replicas of the prompt differ'
  return copies[0]


def check_processes_agree(state, final: np.ndarray) -> None:
  # The global array, gathered, is this process's copy; and every process holds the same.
  gathered = multihost_utils.process_allgather(prompt_lib.get_prompt(state.params), tiled=True)
  np.testing.assert_array_equal(gathered, final)
  for other in multihost_utils.process_allgather(final):  # [processes, P, D]
    np.testing.assert_array_equal(other, final)


def uniform_init(rng, shape):
  return prompt_init.random_uniform(0.5)(rng, shape)


def train_mesh(trainer, prompt: np.ndarray) -> dict:
  start = time.time()
  state = trainer.init_state(prompt, seed=0)
  losses = []
  for step in range(STEPS):
    batch = local_rows(synthetic_batch(step, batch=GLOBAL_BATCH))
    state, metrics = trainer.train_step(state, batch)
    losses.append(float(metrics['loss']))
  final = host_prompt(state)
  check_processes_agree(state, final)
  return {'losses': losses, 'prompt': final.tolist(), 'seconds': time.time() - start}


def train_loop(trainer, model_dir: str) -> dict:
  """Trains to step 2, then resumes from the shared checkpoint to step 3."""
  start = time.time()
  for num_steps in (STEPS - 1, STEPS):
    state = loop.train(trainer, local_batches, model_dir, num_steps, prompt_init=uniform_init,
                       seed=3, save_every=STEPS, keep=1)
  final = host_prompt(state)
  check_processes_agree(state, final)
  return {'prompt': final.tolist(), 'step': int(jax.device_get(state.step)),
          'seconds': time.time() - start}


def main(argv):
  start = time.time()
  out_path, model_dir, params_path = argv[:3]
  if len(argv) > 3:
    init_distributed(int(argv[3]), int(argv[4]))
  assert jax.device_count() == 8, jax.devices()
  config = t5.T5Config.preset('tiny', dtype='float32')
  frozen = load_frozen(params_path)
  prompt = np.random.RandomState(0).uniform(-0.5, 0.5, (5, config.d_model)).astype(np.float32)
  out = {'process_index': jax.process_index(), 'process_count': jax.process_count(),
         'local_devices': jax.local_device_count(), 'initial_prompt': prompt.tolist(),
         'meshes': {}}
  trainers = {name: make_trainer(config, frozen, mesh=partitioning.make_mesh(shape))
              for name, shape in MESHES.items()}
  for name, trainer in trainers.items():
    out['meshes'][name] = train_mesh(trainer, prompt)
  # The 8x1 step is compiled already; the loop adds restore/save logic, not a new program.
  out['loop'] = train_loop(trainers['8x1'], model_dir)
  out['traces'] = {name: trainer.trace_count for name, trainer in trainers.items()}
  # Length buckets: every process pads a step to the longest row over all of them.
  out['agreed'] = partitioning.process_max({'inputs': 10 + 30 * jax.process_index(),
                                            'targets': 5 - jax.process_index()})
  out['seconds'] = time.time() - start
  with open(out_path, 'w') as f:
    json.dump(out, f)
  if jax.process_count() > 1:
    jax.distributed.shutdown()


if __name__ == '__main__':
  try:
    main(sys.argv[1:])
  except BaseException:
    # Exit at once: the atexit shutdown would wait in a barrier for peers that may never come.
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(1)

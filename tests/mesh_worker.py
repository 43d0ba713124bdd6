"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8: trains 3 steps on several meshes.

Prints one JSON line: for each mesh, the per-step losses, the final prompt and the trace count.
"""

import json
import sys

import jax
import numpy as np

from prompt_tuning.models import t5
from prompt_tuning.train import partitioning
from train_fixtures import make_batch, make_trainer

MESHES = {'1x1': (1, 1), '8x1': (8, 1), '4x2': (4, 2), '2x4': (2, 4)}


def main():
  assert jax.device_count() == 8, jax.devices()
  config = t5.T5Config.preset('tiny', dtype='float32')
  frozen = t5.init_params(config)
  prompt = np.random.RandomState(0).uniform(-0.5, 0.5, (5, config.d_model)).astype(np.float32)
  out = {}
  for name, shape in MESHES.items():
    devices = jax.devices()[:shape[0] * shape[1]]
    mesh = partitioning.make_mesh(shape, devices)
    trainer = make_trainer(config, frozen, mesh=mesh)
    state = trainer.init_state(prompt)
    losses = []
    for i in range(3):
      state, metrics = trainer.train_step(state, make_batch(i))
      losses.append(float(metrics['loss']))
    final = np.asarray(jax.device_get(state.params['encoder']['prompt']['prompt']['prompt']))
    embedding = trainer.frozen['token_embedder']['embedding']
    out[name] = {'losses': losses, 'prompt': final.tolist(), 'traces': trainer.trace_count,
                 'embedding_shard': list(embedding.addressable_shards[0].data.shape)}
  json.dump(out, sys.stdout)


if __name__ == '__main__':
  main()

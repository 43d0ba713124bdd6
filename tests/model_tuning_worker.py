"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8: model-tunes 3 steps on several
meshes (d_model 128 and 512 ids, so Adafactor factors the second moments of the larger weights).

Prints one JSON line: for each mesh, the per-step losses, a few trained weights, and the shapes
of the first shard of the token embedding and of its Adafactor statistic over the vocabulary.
"""

import json
import sys

import jax
import numpy as np

from prompt_tuning.models import t5
from prompt_tuning.testing import synthetic_batch
from prompt_tuning.train import model_tuning, optim, partitioning

MESHES = {'1x1': (1, 1), '4x2': (4, 2)}
WEIGHTS = ('encoder/layers_0/attention/query/kernel', 'decoder/logits_dense/kernel',
           'decoder/layers_0/mlp/wo/kernel')


def main():
  assert jax.device_count() == 8, jax.devices()
  config = t5.T5Config.preset('tiny', dtype='float32').replace(
      d_model=128, d_ff=256, vocab_size=512, num_encoder_layers=1, num_decoder_layers=1)
  params = t5.init_params(config)
  out = {}
  for name, shape in MESHES.items():
    mesh = partitioning.make_mesh(shape, jax.devices()[:shape[0] * shape[1]])
    tx = optim.make_optimizer('adafactor', 1e-2, factored=True,
                              multiply_by_parameter_scale=True, weight_decay=0.0)
    trainer = model_tuning.ModelTrainer(config, params, tx, mesh=mesh)
    state, losses = trainer.init_state(), []
    for i in range(3):
      state, metrics = trainer.train_step(state, synthetic_batch(i))
      losses.append(float(metrics['loss']))
    flat = {'/'.join(str(k.key) for k in path): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(state.params)}
    vocab_stats = [leaf for leaf in jax.tree_util.tree_leaves(state.opt_state)
                   if leaf.shape == (config.vocab_size,)]
    out[name] = {'losses': losses,
                 'weights': {k: np.asarray(jax.device_get(flat[k])).tolist() for k in WEIGHTS},
                 'embedding_shard': list(
                     flat['token_embedder/embedding'].addressable_shards[0].data.shape),
                 'vocab_statistic_shard': list(vocab_stats[0].addressable_shards[0].data.shape)}
  json.dump(out, sys.stdout)


if __name__ == '__main__':
  main()

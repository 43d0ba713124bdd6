"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8: two decoder-only prompt-tuning
steps (a tiny grouped-query Llama, Adafactor) on a (4, 2) ('data', 'model') mesh, frozen weights
sharded by the logical axis rules, against the same steps on one device.

Prints one JSON line: the largest prompt gap (relative to the largest prompt value), the largest
loss gap (relative), and the shape of one device's shard of the frozen embedding.
"""

import json
import sys

import jax
import numpy as np

from prompt_tuning.models import decoder_config, decoder_only
from prompt_tuning.models import prompt as prompt_lib
from prompt_tuning.train import optim, partitioning
from prompt_tuning.train.decoder_trainer import DecoderPromptTrainer


def batch(seed):
  rng = np.random.RandomState(seed)
  targets = rng.randint(3, 256, (8, 12)).astype(np.int32)
  targets[:, 0] = 1
  weights = np.zeros_like(targets)
  weights[:, 4:] = 1
  weights[1::2, 9:] = 0  # odd rows end early
  targets[1::2, 9:] = 0
  return {'decoder_target_tokens': targets, 'decoder_loss_weights': weights}


def run(mesh, config, params, prompt):
  trainer = DecoderPromptTrainer(config, prompt_lib.PromptConfig(4), params, optim.adafactor(),
                                 mesh=mesh)
  state, losses = trainer.init_state(prompt), []
  for i in range(2):
    state, metrics = trainer.train_step(state, batch(i))
    losses.append(float(metrics['loss']))
  return trainer, trainer.prompt(state), np.array(losses)


def main():
  assert jax.device_count() == 8, jax.devices()
  config = decoder_config.DecoderConfig(dtype='float32')  # 4 heads, 2 key/value heads
  params = decoder_only.init_params(config, jax.random.PRNGKey(1))
  prompt = np.random.RandomState(0).normal(0, 0.5, (4, config.d_model)).astype(np.float32)
  _, one, one_losses = run(partitioning.make_mesh((1, 1), jax.devices()[:1]), config, params,
                           prompt)
  trainer, meshed, meshed_losses = run(partitioning.make_mesh((4, 2)), config, params, prompt)
  shard = trainer.frozen['token_embedder']['embedding'].addressable_shards[0].data.shape
  json.dump({'prompt_gap': float(np.abs(meshed - one).max() / np.abs(one).max()),
             'loss_gap': float(np.abs(meshed_losses - one_losses).max() / one_losses.max()),
             'embedding_shard': list(shard)}, sys.stdout)


if __name__ == '__main__':
  main()

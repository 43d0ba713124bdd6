"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8: a decoder-only Llama (grouped-
query attention) on a (4, 2) ('data', 'model') mesh, weights sharded by the logical axis rules,
against one device: the forward with a prefix prompt, and greedy decoding through the cache.

Prints one JSON line: the largest logit gap (relative to the largest logit), whether greedy tokens
agree, and the shapes of one device's shards of the embedding and of layer 0's MLP output kernel.
"""

import json
import sys

import jax
import numpy as np

from prompt_tuning.inference import causal_lm
from prompt_tuning.models import decoder_config, decoder_only
from prompt_tuning.train import partitioning


def main():
  assert jax.device_count() == 8, jax.devices()
  config = decoder_config.DecoderConfig(dtype='float32')  # 4 heads, 2 key/value heads
  params = decoder_only.init_params(config, jax.random.PRNGKey(1))
  rng = np.random.RandomState(0)
  tokens = rng.randint(0, config.vocab_size, (8, 12)).astype(np.int32)
  lengths = np.array([12, 3, 7, 12, 1, 9, 5, 10], np.int32)
  prompt = rng.normal(0, 0.5, (4, config.d_model)).astype(np.float32)
  model = decoder_only.DecoderOnly(config)
  forward = jax.jit(model.apply)
  single = np.asarray(forward({'params': params}, tokens, prompt))
  single_tokens = causal_lm.greedy(model, params, tokens, lengths, 6, prompt)

  mesh = partitioning.make_mesh((4, 2))
  rules = partitioning.standard_logical_axis_rules()
  shardings = partitioning.logical_to_sharding(decoder_only.logical_axes(config), mesh, rules)
  partitioning.check_divisible(decoder_only.param_shapes(config), shardings)
  sharded = jax.device_put(params, shardings)
  batch = partitioning.batch_sharding(mesh)
  tokens_d, lengths_d = jax.device_put(tokens, batch), jax.device_put(lengths, batch)
  meshed = np.asarray(forward({'params': sharded}, tokens_d, prompt))
  meshed_tokens = causal_lm.greedy(model, sharded, tokens_d, lengths_d, 6, prompt)
  shard = lambda x: list(x.addressable_shards[0].data.shape)
  json.dump({'logit_gap': float(np.abs(meshed - single).max() / np.abs(single).max()),
             'greedy_same': bool(np.array_equal(meshed_tokens, single_tokens)),
             'embedding_shard': shard(sharded['token_embedder']['embedding']),
             'wo_shard': shard(sharded['layers_0']['mlp']['wo']['kernel'])}, sys.stdout)


if __name__ == '__main__':
  main()

"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8: trains 3 steps on several meshes.

Prints one JSON line: for each mesh, the per-step losses, the final prompt and the trace count;
under 'table_<mesh>', the same for a table of 3 prompts trained on batches mixing them (1x1 and
4x2 only), with the shape of the table's first shard, and how far that mesh's logits and greedy
outputs of a batch mixing the prompts are from each prompt's rows run alone (prefix and suffix).
"""

import json
import sys

import jax
import numpy as np

from prompt_tuning.inference import decoding
from prompt_tuning.models import prompt as prompt_lib
from prompt_tuning.models import t5
from prompt_tuning.train import partitioning
from prompt_tuning.testing import synthetic_batch
from train_fixtures import make_trainer

MESHES = {'1x1': (1, 1), '8x1': (8, 1), '4x2': (4, 2)}
TABLE_MESHES = ('1x1', '4x2')
PROMPT_IDS = np.array([2, 0, 1, 1, 0, 2, 2, 1], np.int32)  # one per row of synthetic_batch's 8


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
      state, metrics = trainer.train_step(state, synthetic_batch(i))
      losses.append(float(metrics['loss']))
    final = np.asarray(jax.device_get(state.params['encoder']['prompt']['prompt']['prompt']))
    embedding = trainer.frozen['token_embedder']['embedding']
    out[name] = {'losses': losses, 'prompt': final.tolist(), 'traces': trainer.trace_count,
                 'embedding_shard': list(embedding.addressable_shards[0].data.shape)}
    if name in TABLE_MESHES:
      out['table_' + name] = train_table(config, frozen, mesh)
  json.dump(out, sys.stdout)


def train_table(config, frozen, mesh):
  """Two steps of a 3-prompt table on batches whose rows mix the prompts."""
  trainer = make_trainer(config, frozen, mesh=mesh, num_prompts=3)
  table = np.random.RandomState(1).uniform(-0.5, 0.5, trainer.prompt_shape).astype(np.float32)
  state, losses = trainer.init_state(table), []
  for i in range(2):
    state, metrics = trainer.train_step(state, {**synthetic_batch(i), 'prompt_ids': PROMPT_IDS})
    losses.append(float(metrics['loss']))
  shard = state.params['encoder']['prompt']['prompt']['prompt'].addressable_shards[0].data
  out = {'losses': losses, 'table': trainer.prompt(state).tolist(),
         'traces': trainer.trace_count, 'table_shard': list(shard.shape)}
  for placement in ('prefix', 'suffix'):
    out['mixed_' + placement] = mixed_vs_alone(config, trainer.frozen, trainer.prompt(state),
                                               placement)
  return out


def mixed_vs_alone(config, frozen, table, placement):
  """Largest logit gap and whether greedy tokens agree, mixed batch vs each prompt's rows alone
  (frozen weights sharded on the mesh the caller trained on)."""
  batch = synthetic_batch(7)
  enc, dec = batch['encoder_input_tokens'], batch['decoder_input_tokens']
  mixed = t5.EncoderDecoder(config, prompt_lib.PromptConfig(5, placement, 3))
  single = t5.EncoderDecoder(config, prompt_lib.PromptConfig(5, placement))
  logits = jax.jit(mixed.apply)({'params': prompt_lib.merge_params(
      frozen, prompt_lib.prompt_tree(table))}, enc, dec, prompt_ids=PROMPT_IDS)
  tokens = decoding.greedy(mixed, prompt_lib.merge_params(frozen, prompt_lib.prompt_tree(table)),
                           enc, 4, prompt_ids=PROMPT_IDS)
  gap, same = 0.0, True
  for k in range(3):
    rows = PROMPT_IDS == k
    params = prompt_lib.merge_params(frozen, prompt_lib.prompt_tree(table[k]))
    alone = jax.jit(single.apply)({'params': params}, enc[rows], dec[rows])
    gap = max(gap, float(np.abs(np.asarray(logits)[rows] - np.asarray(alone)).max()))
    same &= bool(np.array_equal(np.asarray(tokens)[rows],
                                decoding.greedy(single, params, enc[rows], 4)))
  return {'logit_gap': gap, 'greedy_same': same}


if __name__ == '__main__':
  main()

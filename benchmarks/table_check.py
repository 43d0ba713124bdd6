"""A mixed batch of a prompt table against each prompt's rows alone, on whatever backend runs it
(for the GPU pass: benchmarks/gpu_check.sh table). Random T5 1.1 weights of --size; reports the
largest logit difference and whether greedy outputs match, per activation dtype.

  python -m benchmarks.table_check [--size base] [--prompts 4] [--batch 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from benchmarks import common
from prompt_tuning.testing import synthetic_batch


def check(size: str, dtype: str, k: int, batch: int, inputs: int, prompt: int,
          precision: str = 'default') -> dict:
  """`same_shape`: the one-prompt model on the whole batch (every row with prompt j) against
  the mixed batch's rows of j: the selection itself, no shape change. `alone`: prompt j's rows
  as a batch of their own (another shape: kernels may sum in another order)."""
  import jax
  with jax.default_matmul_precision(precision):
    return _check(size, dtype, k, batch, inputs, prompt) | {'matmul_precision': precision}


def _check(size: str, dtype: str, k: int, batch: int, inputs: int, prompt: int) -> dict:
  import jax
  from prompt_tuning.inference import decoding
  from prompt_tuning.models import t5
  from prompt_tuning.models.prompt import PromptConfig, merge_params, prompt_tree
  config = t5.T5Config.preset(size, dtype=dtype, dropout_rate=0.0)
  frozen = common.random_frozen_params(config, PromptConfig(prompt), 'float32', 0)
  table = np.stack([common.random_prompt(prompt, config.d_model, i) for i in range(k)])
  arrays = synthetic_batch(1, batch, inputs, 8, config.vocab_size, padding=False)
  ids = (np.arange(batch) % k).astype(np.int32)
  mixed_model = t5.EncoderDecoder(config, PromptConfig(prompt, num_prompts=k))
  args = (arrays['encoder_input_tokens'], arrays['decoder_input_tokens'],
          arrays['decoder_target_tokens'])
  apply = jax.jit(lambda m, p, *a, **kw: m.apply({'params': p}, *a, **kw), static_argnums=0)
  mixed = np.asarray(apply(mixed_model, merge_params(frozen, prompt_tree(table)), *args,
                           prompt_ids=ids), np.float32)
  greedy_mixed = np.asarray(decoding.greedy(mixed_model, merge_params(frozen, prompt_tree(table)),
                                            arrays['encoder_input_tokens'], 8, prompt_ids=ids))
  one = t5.EncoderDecoder(config, PromptConfig(prompt))
  worst, same, worst_shape, same_shape = 0.0, True, 0.0, True
  for j in range(k):
    rows = ids == j
    params = merge_params(frozen, prompt_tree(table[j]))
    whole = np.asarray(apply(one, params, *args), np.float32)
    worst_shape = max(worst_shape, float(np.abs(whole[rows] - mixed[rows]).max()))
    greedy = np.asarray(decoding.greedy(one, params, arrays['encoder_input_tokens'], 8))
    same_shape &= bool(np.array_equal(greedy[rows], greedy_mixed[rows]))
    alone = np.asarray(apply(one, params, *(a[rows] for a in args)), np.float32)
    worst = max(worst, float(np.abs(alone - mixed[rows]).max()))
    greedy = np.asarray(decoding.greedy(one, params, arrays['encoder_input_tokens'][rows], 8))
    same &= bool(np.array_equal(greedy, greedy_mixed[rows]))
  return {'dtype': dtype, 'logit_scale': float(np.abs(mixed).max()),
          'same_shape': {'max_abs_logit_diff': worst_shape, 'greedy_identical': same_shape},
          'alone': {'max_abs_logit_diff': worst, 'greedy_identical': same}}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--size', default='base')
  parser.add_argument('--prompts', type=int, default=4)
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--inputs', type=int, default=128)
  parser.add_argument('--prompt', type=int, default=100)
  parser.add_argument('--json', default=None)
  args = parser.parse_args(argv)
  result = {'benchmark': 'table_check', 'machine': common.machine_info(), 'size': args.size,
            'prompts': args.prompts, 'batch': args.batch, 'inputs': args.inputs,
            'prompt': args.prompt,
            'checks': [check(args.size, dtype, args.prompts, args.batch, args.inputs, args.prompt,
                             precision)
                       for dtype, precision in (('float32', 'highest'), ('float32', 'default'),
                                                ('bfloat16', 'default'))]}
  common.write_json(result, args.json)
  return 0


if __name__ == '__main__':
  sys.exit(main())

"""Smoke test of benchmarks/: the tiny model through both benchmarks (JAX side only) and the
analytic FLOPs formula against XLA's own count."""

import jax
import jax.numpy as jnp

from benchmarks import common
from benchmarks import inference
from benchmarks import train_step
from prompt_tuning.models import prompt as prompt_lib
from prompt_tuning.models import t5

TINY = ['--size', 'tiny', '--batch', '2', '--inputs', '8', '--prompt', '4', '--targets', '4',
        '--warmup', '1', '--steps', '1', '--peak_n', '128']


def test_train_step_tiny():
  result = train_step.run(train_step.parse_args(TINY))
  ours = result['ours']
  assert ours['examples_per_s'] > 0 and ours['mfu'] > 0
  assert ours['memory']['compiled_total_bytes'] > 0
  assert 'peft' not in result
  assert train_step.table_row(result).startswith('| ')


def test_inference_greedy_tiny():
  result = inference.run(inference.parse_args(TINY + ['--tasks', 'greedy']))
  greedy = result['ours']['greedy']
  # EOS's logit is pinned to 0, so every row decodes its full length.
  assert greedy['rows_with_eos'] == 0 and greedy['generated_tokens'] == 2 * 4


def test_forward_flops_match_xla():
  """The analytic forward matmul FLOPs agree with XLA's count (which adds elementwise work)."""
  config = t5.T5Config.preset('tiny', dtype='float32', d_model=128, d_ff=256, vocab_size=512)
  prompt = prompt_lib.PromptConfig(4)
  model = t5.EncoderDecoder(config, prompt)
  enc = jax.ShapeDtypeStruct((2, 60), jnp.int32)
  dec = jax.ShapeDtypeStruct((2, 8), jnp.int32)
  forward = jax.jit(lambda p, e, d: model.apply({'params': p}, e, d, d))
  xla = forward.lower(t5.param_shapes(config, prompt), enc, dec).compile().cost_analysis()
  analytic = common.train_step_flops(config, 2, 64, 8)['forward']
  assert analytic <= xla['flops'] <= 1.1 * analytic

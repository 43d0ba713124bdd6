"""Inference throughput: rank-classification scoring and greedy generation, ours beside HF PEFT.

  python -m benchmarks.inference --size small --batch 8 --inputs 128 --prompt 20 --targets 8 \
      --peft --json out/inference_small.json

Scoring: this project's `decoding.score_candidates` (the input and prompt are encoded once and
shared by the K candidates) vs the PEFT model's forward once per candidate (the usual PEFT way,
which re-encodes the input each time). Generation: `decoding.greedy` vs PEFT `generate` with
`max_new_tokens`, `do_sample=False`. Both models have EOS's logit pinned to 0 (its head column
zeroed) so that random weights never stop a row early: every row decodes exactly
`--decode_length` tokens on both sides. Reported: compile time (ours), steady-state seconds per
batch (warmup excluded, synced), examples/s, and ours / PEFT.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

if __package__ in (None, ''):  # `python benchmarks/inference.py` as well as `-m`.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from prompt_tuning.testing import synthetic_batch  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  common.add_common_args(parser)
  parser.add_argument('--num_candidates', type=int, default=2, help='K scored targets')
  parser.add_argument('--candidate_length', type=int, default=None,
                      help='tokens per candidate (default: --targets)')
  parser.add_argument('--decode_length', type=int, default=None,
                      help='greedy tokens per row (default: --targets)')
  parser.add_argument('--tasks', default='score,greedy',
                      help="comma-separated 'score', 'greedy' (our side; PEFT runs both)")
  return parser.parse_args(argv)


def candidates(num: int, length: int, vocab: int, seed: int) -> np.ndarray:
  rng = np.random.RandomState(seed + 2)
  cands = rng.randint(2, vocab, size=(num, length)).astype(np.int32)
  cands[:, -1] = common.EOS_ID
  return cands


def our_params(args: argparse.Namespace, config, prompt_config):
  """Frozen weights + prompt in one tree, with the EOS column of the head zeroed."""
  from prompt_tuning.models import prompt as prompt_lib
  frozen = common.random_frozen_params(config, prompt_config, args.frozen_dtype, args.seed)
  kernel = frozen['decoder']['logits_dense']['kernel']
  frozen['decoder']['logits_dense']['kernel'] = kernel.at[:, common.EOS_ID].set(0)
  prompt = common.random_prompt(args.prompt, config.d_model, args.seed)
  return prompt_lib.merge_params(frozen, prompt_lib.prompt_tree(prompt))


def compile_and_time(lower, dynamic: tuple, args: argparse.Namespace) -> dict:
  """lower() + compile once, then time the compiled call on `dynamic` (the traced arguments)."""
  import jax
  start = time.perf_counter()
  compiled = lower().compile()
  compile_s = time.perf_counter() - start
  timing = common.time_calls(lambda: compiled(*dynamic), jax.block_until_ready, args.warmup,
                             args.steps)
  return {'compile_s': compile_s, 'timing': timing, 'output': compiled(*dynamic),
          'memory': common.jax_memory(compiled)}


def run_ours(args: argparse.Namespace, config, arrays: dict) -> dict:
  import jax.numpy as jnp
  from prompt_tuning.inference import decoding
  from prompt_tuning.models import prompt as prompt_lib
  from prompt_tuning.models import t5

  prompt_config = prompt_lib.PromptConfig(args.prompt)
  model = t5.EncoderDecoder(config, prompt_config)
  params = our_params(args, config, prompt_config)
  enc = jnp.asarray(arrays['encoder_input_tokens'])
  cands = jnp.asarray(arrays['candidates'])

  tasks, out = args.tasks.split(','), {}
  # The model (and the decode length) are static: the compiled calls take the arrays alone.
  if 'score' in tasks:
    out['score'] = compile_and_time(
        lambda: decoding.score_candidates.lower(model, params, enc, cands), (params, enc, cands),
        args)
    out['score']['scores_shape'] = list(out['score'].pop('output').shape)
  if 'greedy' in tasks:
    greedy = out['greedy'] = compile_and_time(
        lambda: decoding.greedy.lower(model, params, enc, max_decode_length=args.decode_length),
        (params, enc), args)
    tokens = np.asarray(greedy.pop('output'))
    # Every row should run to the end (EOS cannot win); anything else would be unfair to PEFT.
    greedy['generated_tokens'] = int(tokens.size)
    greedy['rows_with_eos'] = int(np.any(tokens == common.EOS_ID, axis=1).sum())
  return out


def derive(part: dict, batch: int, tokens_per_example: int) -> None:
  step = part['timing']['step_s_median']
  part['examples_per_s'] = batch / step
  part['tokens_per_s'] = batch * tokens_per_example / step


def peft_spec(args: argparse.Namespace, config, dtype: str) -> dict:
  return {'dims': common.hf_dims(config), 'prompt': args.prompt, 'dtype': dtype,
          'frozen_dtype': args.frozen_dtype, 'torch_compile': args.torch_compile,
          'device': args.peft_device, 'warmup': args.warmup, 'steps': args.steps,
          'seed': args.seed, 'decode_length': args.decode_length,
          'peak_n': args.peak_n, 'peak_dtype': dtype}


def run(args: argparse.Namespace) -> dict:
  started = common.cpu_snapshot()
  args.candidate_length = args.candidate_length or args.targets
  args.decode_length = args.decode_length or args.targets
  dtype = common.setup_backend(args)
  config = common.model_config(args, dtype)
  arrays = synthetic_batch(args.seed, args.batch, args.inputs, args.targets, config.vocab_size,
                           padding=False)
  arrays['candidates'] = candidates(args.num_candidates, args.candidate_length,
                                    config.vocab_size, args.seed)
  args.peak_n = args.peak_n or common.default_peak_n()
  result = {'benchmark': 'inference', 'machine': common.machine_info(),
            'config': {'size': args.size, 'batch': args.batch, 'inputs': args.inputs,
                       'prompt': args.prompt, 'num_candidates': args.num_candidates,
                       'candidate_length': args.candidate_length,
                       'decode_length': args.decode_length, 'dtype': dtype,
                       'frozen_dtype': args.frozen_dtype, 'torch_compile': args.torch_compile}}
  sides = {}
  if args.peft:  # First: JAX has allocated nothing on the device yet.
    sides['peft'] = common.run_peft_child('inference', peft_spec(args, config, dtype), arrays)
  result['matmul_peak'] = common.measure_matmul_peak(dtype, args.peak_n)
  sides['ours'] = run_ours(args, config, arrays)
  per_example = {'score': args.num_candidates * args.candidate_length,
                 'greedy': args.decode_length}
  for name, side in sides.items():
    for task, tokens in per_example.items():
      if task in side:
        derive(side[task], args.batch, tokens)
    result[name] = side
  both = [t for t in per_example if t in sides['ours'] and t in sides.get('peft', {})]
  if both:
    result['ratio_ours_over_peft'] = {
        t: sides['ours'][t]['examples_per_s'] / sides['peft'][t]['examples_per_s'] for t in both}
  result['machine']['cpu_contention'] = common.other_cpu_use(started)
  return result


TABLE_HEADER = ('| machine | size | B | L+P | K x len / decode | dtype / frozen '
                '| ours score ex/s | PEFT score ex/s | ours/PEFT '
                '| ours greedy ex/s | PEFT greedy ex/s | ours/PEFT |\n'
                '|---|---|---|---|---|---|---|---|---|---|---|---|')


def table_row(result: dict) -> str:
  c, ours, peft = result['config'], result['ours'], result.get('peft', {})
  ratio = result.get('ratio_ours_over_peft', {})
  cell = lambda side, task: common.fmt(side.get(task, {}).get('examples_per_s'))
  return (f"| {common.describe(result['machine'])} | {c['size']} | {c['batch']} "
          f"| {c['inputs']}+{c['prompt']} | {c['num_candidates']}x{c['candidate_length']} / "
          f"{c['decode_length']} | {c['dtype']} / {c['frozen_dtype']} "
          f"| {cell(ours, 'score')} | {cell(peft, 'score')} | {common.fmt(ratio.get('score'))} "
          f"| {cell(ours, 'greedy')} | {cell(peft, 'greedy')} "
          f"| {common.fmt(ratio.get('greedy'))} |")


def main(argv=None) -> None:
  common.main(argv, parse_args, run, TABLE_HEADER, table_row)


if __name__ == '__main__':
  main()

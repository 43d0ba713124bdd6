"""Prompt-tuning train-step throughput: this project's PromptTrainer, optionally beside HF PEFT.

  python -m benchmarks.train_step --size small --batch 8 --inputs 128 --prompt 20 --targets 8 \
      --peft --json out/train_small.json

Measures, for a randomly initialised T5 1.1 of the given size: compile time (lower + compile of
the jitted step), steady-state step time (warmup excluded, every step block_until_ready),
examples/s, tokens/s (encoder L + P plus decoder T positions per example), model FLOPs per step
(`common.train_step_flops`), model TFLOP/s and MFU against a matmul peak measured in the same run,
and peak memory. With --peft the same token batch goes through HF PEFT prompt tuning (torch, in a
child process that runs first) and the result carries the ratio ours / PEFT in examples/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

if __package__ in (None, ''):  # `python benchmarks/train_step.py` as well as `-m`.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from prompt_tuning.testing import synthetic_batch  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  common.add_common_args(parser)
  parser.add_argument('--remat', choices=('none', 'full', 'dots'), default='none',
                      help="our model's remat_policy")
  parser.add_argument('--optimizer', choices=('adafactor', 'adamw'), default='adafactor',
                      help="both sides: the paper's Adafactor, or AdamW")
  parser.add_argument('--learning_rate', type=float, default=0.3)
  parser.add_argument('--gradient_checkpointing', action='store_true',
                      help="PEFT side: transformers' gradient checkpointing")
  parser.add_argument('--num_prompts', type=int, default=1,
                      help='ours: a table of K prompts, rows mixed (row b asks prompt b %% K)')
  return parser.parse_args(argv)


def make_optimizer(args: argparse.Namespace):
  from prompt_tuning.train import optim
  if args.optimizer == 'adamw':
    return optim.make_optimizer('adamw', args.learning_rate)
  return optim.adafactor(args.learning_rate)


def derive(timing: dict, flops: int, peak: float, batch: int, tokens_per_example: int) -> dict:
  """examples/s, tokens/s, model TFLOP/s and MFU from the median step time."""
  step = timing['step_s_median']
  return {'examples_per_s': batch / step, 'tokens_per_s': batch * tokens_per_example / step,
          'model_tflops_per_s': flops / step / 1e12, 'mfu': flops / step / peak}


def build_ours(args: argparse.Namespace, config, arrays: dict) -> dict:
  """Trainer, initial state, the compiled step (with its lower/compile seconds) and the batch."""
  from prompt_tuning.models import prompt as prompt_lib
  from prompt_tuning.train.trainer import PromptTrainer

  k = args.num_prompts
  prompt_config = prompt_lib.PromptConfig(args.prompt, num_prompts=k)
  frozen = common.random_frozen_params(config, prompt_config, args.frozen_dtype, args.seed)
  trainer = PromptTrainer(config, prompt_config, frozen, make_optimizer(args),
                          frozen_dtype=args.frozen_dtype)
  del frozen  # The trainer holds its own (device) copy.
  prompt = common.random_prompt(args.prompt, config.d_model, args.seed)
  if k > 1:  # a mixed batch: row b asks prompt b % K
    prompt = np.stack([common.random_prompt(args.prompt, config.d_model, args.seed + i)
                       for i in range(k)])
    batch_rows = len(arrays['encoder_input_tokens'])
    arrays = {**arrays, 'prompt_ids': (np.arange(batch_rows) % k).astype(np.int32)}
  return compile_step(trainer, trainer.init_state(prompt), arrays)


def compile_step(trainer, state, arrays: dict) -> dict:
  """A trainer's step (PromptTrainer or ModelTrainer) lowered and compiled for the arrays'
  shapes, timed, with its state and the batch on the trainer's mesh: what `stepper` takes."""
  from prompt_tuning.train import partitioning

  start = time.perf_counter()
  lowered = trainer.lower_train_step({k: v.shape for k, v in arrays.items()})
  lowered_at = time.perf_counter()
  compiled = lowered.compile()
  compiled_at = time.perf_counter()
  return {'trainer': trainer, 'state': state, 'compiled': compiled,
          'batch': partitioning.global_batch(arrays, trainer.mesh),
          'lower_s': lowered_at - start, 'compile_s': compiled_at - lowered_at}


def stepper(built: dict):
  """A no-argument train step over the built pieces; the (donated) state is carried inside."""
  holder = {'state': built['state']}
  frozen, batch, compiled = built['trainer'].frozen, built['batch'], built['compiled']

  def step():
    holder['state'], metrics = compiled(holder['state'], frozen, batch)
    return metrics
  return step


def measure(built: dict, warmup: int, steps: int) -> dict:
  """Compile seconds, step timing, the loss after them, memory and XLA's FLOPs of a built step
  (`compile_step`); one more step runs after the timed ones."""
  import jax
  step = stepper(built)
  timing = common.time_calls(step, jax.block_until_ready, warmup, steps)
  flops = common.executed_flops(built['compiled'])
  return {'lower_s': built['lower_s'], 'compile_s': built['compile_s'], 'timing': timing,
          'final_loss': float(step()['loss']), 'memory': common.jax_memory(built['compiled']),
          'executed_flops_per_step': flops,
          'executed_tflops_per_s': flops / timing['step_s_median'] / 1e12 if flops else None}


def run_ours(args: argparse.Namespace, config, arrays: dict) -> dict:
  return measure(build_ours(args, config, arrays), args.warmup, args.steps)


def peft_spec(args: argparse.Namespace, config, dtype: str) -> dict:
  return {'dims': common.hf_dims(config), 'prompt': args.prompt, 'dtype': dtype,
          'frozen_dtype': args.frozen_dtype, 'optimizer': args.optimizer,
          'learning_rate': args.learning_rate, 'torch_compile': args.torch_compile,
          'gradient_checkpointing': args.gradient_checkpointing, 'device': args.peft_device,
          'warmup': args.warmup, 'steps': args.steps, 'seed': args.seed,
          'peak_n': args.peak_n, 'peak_dtype': dtype}


def run(args: argparse.Namespace) -> dict:
  started = common.cpu_snapshot()
  dtype = common.setup_backend(args)
  config = common.model_config(args, dtype, args.remat)
  arrays = synthetic_batch(args.seed, args.batch, args.inputs, args.targets, config.vocab_size,
                           padding=False)
  enc_len, tokens = args.inputs + args.prompt, args.inputs + args.prompt + args.targets
  flops = common.train_step_flops(config, args.batch, enc_len, args.targets)
  args.peak_n = args.peak_n or common.default_peak_n()

  result = {'benchmark': 'train_step', 'machine': common.machine_info(),
            'config': {'size': args.size, 'batch': args.batch, 'inputs': args.inputs,
                       'prompt': args.prompt, 'targets': args.targets, 'dtype': dtype,
                       'frozen_dtype': args.frozen_dtype, 'remat': args.remat,
                       'optimizer': args.optimizer, 'torch_compile': args.torch_compile,
                       'cross_attention_fold': args.cross_attention_fold,
                       'attention_impl': args.attention_impl, 'num_prompts': args.num_prompts,
                       'gradient_checkpointing': args.gradient_checkpointing},
            'model_flops_per_step': flops}
  # PEFT first: JAX has allocated nothing on the device yet.
  peft = common.run_peft_child('train', peft_spec(args, config, dtype), arrays) if args.peft else {}
  peak = result['matmul_peak'] = common.measure_matmul_peak(dtype, args.peak_n)
  if 'timing' in peft:
    peft.update(derive(peft['timing'], flops['train'], peak['flops_per_s'], args.batch, tokens))
  if args.peft:
    result['peft'] = peft
  ours = run_ours(args, config, arrays)
  ours.update(derive(ours['timing'], flops['train'], peak['flops_per_s'], args.batch, tokens))
  result['ours'] = ours
  if 'examples_per_s' in result.get('peft', {}):
    result['ratio_ours_over_peft'] = ours['examples_per_s'] / result['peft']['examples_per_s']
  result['machine']['cpu_contention'] = common.other_cpu_use(started)
  return result


TABLE_HEADER = ('| machine | size | B | L+P | T | dtype / frozen | remat '
                '| ours ex/s | ours ms/step | ours MFU | PEFT ex/s | PEFT ms/step | ours/PEFT |\n'
                '|---|---|---|---|---|---|---|---|---|---|---|---|---|')


def table_row(result: dict) -> str:
  c, ours, peft = result['config'], result['ours'], result.get('peft', {})
  peft_ms = peft['timing']['step_s_median'] * 1e3 if 'timing' in peft else None
  return (f"| {common.describe(result['machine'])} | {c['size']} | {c['batch']} "
          f"| {c['inputs']}+{c['prompt']} | {c['targets']} | {c['dtype']} / {c['frozen_dtype']} "
          f"| {c['remat']} | {common.fmt(ours['examples_per_s'])} "
          f"| {common.fmt(ours['timing']['step_s_median'] * 1e3, 1)} "
          f"| {common.fmt(100 * ours['mfu'], 1)}% | {common.fmt(peft.get('examples_per_s'))} "
          f"| {common.fmt(peft_ms, 1)} | {common.fmt(result.get('ratio_ours_over_peft'))} |")


def main(argv=None) -> None:
  common.main(argv, parse_args, run, TABLE_HEADER, table_row)


if __name__ == '__main__':
  main()

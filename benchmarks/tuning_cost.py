"""Model tuning vs prompt tuning, side by side: what one train step and one kept checkpoint cost.

  python -m benchmarks.tuning_cost --sizes tiny small --batch 8 --inputs 128 --prompt 100 \
      --targets 8 --json benchmarks/results/tuning_cost_cpu.json

For each T5 1.1 size (random float32 weights made in this process) and each method, in one
process and on the same batch:

  prompt  PromptTrainer on a prompt of --prompt tokens, the paper's Adafactor (`optim.adafactor()`:
          learning rate 0.3, unfactored, weight decay 1e-5); the encoder reads L + P tokens.
  model   ModelTrainer(trainable='all'), gin/runs/model_tuning.gin's Adafactor (learning rate
          0.001, factored, scaled by each weight's RMS, no weight decay); no prompt: L tokens.

Measured: trainable parameters; optimizer state bytes (the opt_state leaves' nbytes); the step's
compile time, steady step time (median of --steps block_until_ready steps after --warmup) and
examples/s; the compiled step's planned memory (`common.jax_memory`: arguments + outputs - aliased
+ temporaries; the device's peak where it reports one); model FLOPs per step (`common`'s formula,
with weight gradients for model tuning) and XLA's count; and the bytes on disk of one kept step
after the real training loop (`loop.train`, --checkpoint_steps steps, save_every=1, keep=1) into
a temporary MODEL_DIR: its orbax state (checkpoints/<step>/) and its readable copy (the numpy
prompt, or the whole model as a T5X checkpoint_<step>/). Each size adds the ratio model / prompt.

Process peak RSS is recorded as the growth of this process's high-water mark during each method's
part (weights excluded: they are made once per size, before both): a lower bound of that part's
host memory, 0 when an earlier part went higher. It is not in the table, nor is the device's
peak on a GPU (the process's peak so far: it includes the parts before).

Imports nothing that needs TensorFlow, SeqIO or gin (the GPU machine has none of them).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import sys
import tempfile
from typing import Optional

if __package__ in (None, ''):  # `python benchmarks/tuning_cost.py` as well as `-m`.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from benchmarks import train_step  # noqa: E402
from prompt_tuning.testing import synthetic_batch  # noqa: E402

METHODS = ('prompt', 'model')
# gin/runs/model_tuning.gin's optimizer (optim.make_optimizer's arguments); the smoke test checks
# the gin file still says so.
MODEL_TUNING_ADAFACTOR = {'learning_rate': 0.001, 'factored': True,
                          'multiply_by_parameter_scale': True, 'weight_decay': 0.0}
OPTIMIZERS = {
    'prompt': "optim.adafactor(): learning rate 0.3, decay 0.8, unfactored, update clipping 1.0, "
              "weight decay 1e-5, no parameter scaling",
    'model': "optim.make_optimizer('adafactor', 0.001, factored=True, "
             "multiply_by_parameter_scale=True, weight_decay=0.0) (gin/runs/model_tuning.gin)",
}
# Metrics the ratio model / prompt is taken of: (name, where it is in a method's result).
RATIO_METRICS = {
    'trainable_params': ('trainable_params',),
    'optimizer_state_bytes': ('optimizer_state_bytes',),
    'step_s_median': ('timing', 'step_s_median'),
    'examples_per_s': ('examples_per_s',),
    'compiled_total_bytes': ('memory', 'compiled_total_bytes'),
    'model_flops_per_step': ('model_flops_per_step',),
    'executed_flops_per_step': ('executed_flops_per_step',),
    'checkpoint_orbax_bytes': ('checkpoint', 'orbax_bytes'),
    'checkpoint_copy_bytes': ('checkpoint', 'copy_bytes'),
    'checkpoint_total_bytes': ('checkpoint', 'total_bytes'),
}


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--sizes', nargs='+', choices=common.SIZES, default=['tiny', 'small'],
                      help='T5 1.1 sizes (random float32 weights)')
  parser.add_argument('--methods', nargs='+', choices=METHODS, default=list(METHODS))
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--inputs', type=int, default=128, help='encoder input tokens L')
  parser.add_argument('--prompt', type=int, default=100, help="prompt tuning's prompt length P")
  parser.add_argument('--targets', type=int, default=8, help='decoder target tokens T')
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default=None,
                      help='activation dtype; default float32 on CPU, bfloat16 on accelerators')
  parser.add_argument('--dropout', type=float, default=0.1,
                      help="dropout rate (0.1: both the paper's prompt and model tuning runs)")
  parser.add_argument('--warmup', type=int, default=1, help='untimed steps after compilation')
  parser.add_argument('--steps', type=int, default=5, help='timed steps')
  parser.add_argument('--model_steps', type=int, default=None,
                      help="model tuning's timed steps (default --steps; fewer where its step is "
                           "slow, e.g. small on a 2-core CPU)")
  parser.add_argument('--checkpoint_steps', type=int, default=1,
                      help='steps of the real training loop whose kept checkpoint is measured')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--xla_flags', default='',
                      help='appended to XLA_FLAGS before JAX starts')
  parser.add_argument('--no_library_xla_flags', action='store_true',
                      help="without the CLI's XLA:CPU flags (prompt_tuning/xla_cpu.py)")
  parser.add_argument('--json', default=None, help='also write the result JSON here')
  return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# The two methods.


def model_tuning_optimizer():
  from prompt_tuning.train import optim
  kwargs = dict(MODEL_TUNING_ADAFACTOR)
  return optim.make_optimizer('adafactor', kwargs.pop('learning_rate'), **kwargs)


def make_trainer(method: str, config, params: dict, args: argparse.Namespace):
  """(trainer, its initial state, the loop's prompt initializer) for `method`."""
  from prompt_tuning.models import prompt as prompt_lib
  from prompt_tuning.train import optim
  from prompt_tuning.train.model_tuning import ModelTrainer
  from prompt_tuning.train.trainer import PromptTrainer

  if method == 'model':
    trainer = ModelTrainer(config, params, model_tuning_optimizer(), trainable='all')
    return trainer, trainer.init_state(args.seed), None
  trainer = PromptTrainer(config, prompt_lib.PromptConfig(args.prompt), params, optim.adafactor())
  prompt_init = lambda rng, shape: common.random_prompt(shape[0], shape[1], args.seed)
  prompt = prompt_init(None, trainer.prompt_shape)
  return trainer, trainer.init_state(prompt, seed=args.seed), prompt_init


def tree_size(tree) -> tuple[int, int]:
  """(elements, bytes) of a tree's array leaves."""
  import jax
  leaves = jax.tree_util.tree_leaves(tree)
  return sum(int(x.size) for x in leaves), sum(int(x.nbytes) for x in leaves)


def dir_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)


def checkpoint_bytes(trainer, prompt_init, arrays: dict, steps: int, seed: int) -> dict:
  """The real training loop for `steps` steps (save_every=1, keep=1) into a temporary MODEL_DIR;
  the bytes of what its kept step holds: the orbax state and the readable copy."""
  from prompt_tuning.train import loop
  from prompt_tuning.train import model_dir as model_dir_lib

  with tempfile.TemporaryDirectory() as tmp:
    model_dir = os.path.join(tmp, 'run')
    loop.train(trainer, lambda _: itertools.repeat(arrays), model_dir, steps,
               prompt_init=prompt_init, seed=seed, save_every=1, keep=1)
    step = model_dir_lib.latest_step(model_dir)
    assert step is not None
    orbax = os.path.join(model_dir_lib.checkpoints_dir(model_dir), str(step))
    if model_dir_lib.is_model_tuning(model_dir):
      copy = model_dir_lib.model_checkpoint_path(model_dir, step)
    else:
      copy = os.path.dirname(model_dir_lib.numpy_prompt_path(model_dir, step))
    orbax_bytes, copy_bytes = dir_bytes(orbax), dir_bytes(copy)
    return {'step': step, 'orbax_dir': os.path.relpath(orbax, model_dir),
            'copy_dir': os.path.relpath(copy, model_dir), 'orbax_bytes': orbax_bytes,
            'copy_bytes': copy_bytes, 'total_bytes': orbax_bytes + copy_bytes,
            'model_dir_bytes': dir_bytes(model_dir),
            'committed_steps': model_dir_lib.committed_steps(model_dir)}


def run_method(method: str, args: argparse.Namespace, config, params: dict,
               arrays: dict) -> dict:
  rss_before = common.peak_rss_bytes()
  trainer, state, prompt_init = make_trainer(method, config, params, args)
  trainable_params, _ = tree_size(state.params)
  _, opt_bytes = tree_size(state.opt_state)
  steps = args.model_steps if method == 'model' and args.model_steps else args.steps
  out = train_step.measure(train_step.compile_step(trainer, state, arrays), args.warmup, steps)
  del state  # donated to the timed steps
  enc_len = args.inputs + (args.prompt if method == 'prompt' else 0)
  flops = common.train_step_flops(config, args.batch, enc_len, args.targets,
                                  weight_grads=method == 'model')
  out.update(trainable_params=trainable_params, optimizer_state_bytes=opt_bytes,
             encoder_tokens=enc_len, examples_per_s=args.batch / out['timing']['step_s_median'],
             model_flops_per_step=flops['train'])
  out['checkpoint'] = checkpoint_bytes(trainer, prompt_init, arrays, args.checkpoint_steps,
                                       args.seed)
  out['memory']['peak_rss_growth_bytes'] = common.peak_rss_bytes() - rss_before
  return out


def _get(result: dict, path: tuple) -> Optional[float]:
  for key in path:
    if not isinstance(result, dict) or result.get(key) is None:
      return None
    result = result[key]
  return result  # type: ignore[return-value]


def ratios(prompt: dict, model: dict) -> dict:
  """model / prompt for each metric both have."""
  out = {}
  for name, path in RATIO_METRICS.items():
    a, b = _get(model, path), _get(prompt, path)
    if a is not None and b:
      out[name] = a / b
  return out


def run_size(size: str, args: argparse.Namespace, dtype: str) -> dict:
  import jax
  from prompt_tuning.models import prompt as prompt_lib

  config = common.model_config(argparse.Namespace(size=size), dtype).replace(
      dropout_rate=args.dropout)
  arrays = synthetic_batch(args.seed, args.batch, args.inputs, args.targets, config.vocab_size,
                           padding=False)
  # The model's weights without a prompt: prompt tuning's frozen tree, model tuning's whole model.
  params = common.random_frozen_params(config, prompt_lib.PromptConfig(args.prompt), 'float32',
                                       args.seed)
  out: dict = {'d_model': config.d_model, 'model_params': tree_size(params)[0]}
  for method in args.methods:
    print(f'== {size}: {method} tuning', file=sys.stderr, flush=True)
    out[method] = run_method(method, args, config, params, arrays)
    gc.collect()
  del params
  jax.clear_caches()
  if 'prompt' in out and 'model' in out:
    out['ratio_model_over_prompt'] = ratios(out['prompt'], out['model'])
  return out


def run(args: argparse.Namespace) -> dict:
  started = common.cpu_snapshot()
  load_before = os.getloadavg()
  dtype = common.setup_backend(args)
  result: dict = {
      'benchmark': 'tuning_cost', 'machine': common.machine_info(),
      'config': {'sizes': args.sizes, 'methods': args.methods, 'batch': args.batch,
                 'inputs': args.inputs, 'prompt': args.prompt, 'targets': args.targets,
                 'dtype': dtype, 'weights_dtype': 'float32', 'dropout': args.dropout,
                 'warmup': args.warmup, 'steps': args.steps,
                 'model_steps': args.model_steps or args.steps,
                 'checkpoint_steps': args.checkpoint_steps, 'optimizers': OPTIMIZERS},
      'notes': {
          'memory': 'compiled_total_bytes: the compiled step\'s planned bytes (arguments + '
                    'outputs - aliased + temporaries) from memory_analysis; '
                    'peak_rss_growth_bytes: growth of the process high-water RSS during the '
                    'method\'s part (a lower bound; 0 when an earlier part went higher); '
                    'device_peak_bytes_in_use (GPU/TPU): the process\'s peak so far, earlier '
                    'parts included.',
          'checkpoint': 'one kept step after loop.train(save_every=1, keep=1): orbax '
                        'checkpoints/<step>/ plus the readable copy (numpy_checkpoints/'
                        'checkpoint_<step>/ for a prompt, the T5X checkpoint_<step>/ for a model)',
          'shape': 'prompt tuning encodes inputs + prompt tokens, model tuning inputs only'},
      'sizes': {}}
  for size in args.sizes:
    result['sizes'][size] = run_size(size, args, dtype)
  result['machine'].update(cpu_contention=common.other_cpu_use(started),
                           load_average_before=list(load_before),
                           load_average_after=list(os.getloadavg()))
  return result


# ----------------------------------------------------------------------------------------------
# Reporting.


def _scaled(n: Optional[float], units: tuple[str, str, str], sep: str, small: str) -> str:
  if n is None:
    return '—'
  for unit, scale in zip(units, (1e9, 1e6, 1e3)):
    if n >= scale:
      return f'{n / scale:.3g}{sep}{unit}'
  return f'{int(n)}{small}'


def human_bytes(n: Optional[float]) -> str:
  return _scaled(n, ('GB', 'MB', 'KB'), ' ', ' B')


def human_count(n: Optional[float]) -> str:
  return _scaled(n, ('B', 'M', 'K'), '', '')


TABLE_HEADER = ('| machine | size | method | trainable params | ms/step | ex/s '
                '| step memory (plan) | optimizer state | checkpoint: orbax + copy = total |\n'
                '|---|---|---|---|---|---|---|---|---|')


def _method_row(machine: str, size: str, method: str, m: dict) -> str:
  c = m['checkpoint']
  return (f"| {machine} | {size} | {method} | {human_count(m['trainable_params'])} "
          f"| {common.fmt(m['timing']['step_s_median'] * 1e3, 1)} "
          f"| {common.fmt(m['examples_per_s'])} "
          f"| {human_bytes(m['memory'].get('compiled_total_bytes'))} "
          f"| {human_bytes(m['optimizer_state_bytes'])} "
          f"| {human_bytes(c['orbax_bytes'])} + {human_bytes(c['copy_bytes'])} "
          f"= {human_bytes(c['total_bytes'])} |")


def _ratio_row(machine: str, size: str, r: dict) -> str:
  x = lambda name: ('—' if name not in r else f'{r[name]:,.0f}×' if r[name] >= 100
                    else f'{r[name]:.3g}×')
  return (f"| {machine} | {size} | **model / prompt** | {x('trainable_params')} "
          f"| {x('step_s_median')} | {x('examples_per_s')} | {x('compiled_total_bytes')} "
          f"| {x('optimizer_state_bytes')} | {x('checkpoint_orbax_bytes')} + "
          f"{x('checkpoint_copy_bytes')} = {x('checkpoint_total_bytes')} |")


def table_row(result: dict) -> str:
  """The table's rows for every size: each method, then the ratio (one string, lines)."""
  machine = common.describe(result['machine'])
  rows = []
  for size, s in result['sizes'].items():
    rows += [_method_row(machine, size, method, s[method]) for method in METHODS if method in s]
    if 'ratio_model_over_prompt' in s:
      rows.append(_ratio_row(machine, size, s['ratio_model_over_prompt']))
  return '\n'.join(rows)


def main(argv=None) -> None:
  common.main(argv, parse_args, run, TABLE_HEADER, table_row)


if __name__ == '__main__':
  main()

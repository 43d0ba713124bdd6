"""FLOPs of the compiled train step with a prompt table of K prompts beside K = 1 (#12: a mixed
batch must cost no more than one prompt at the same batch; budget <= 1.02x).

XLA's cost analysis of the lowered step, shapes only (no weights allocated), T5 1.1 small by
default: batch 32, inputs 128 (+ P = 100 prompt positions), targets 8.

  python -m benchmarks.table_flops [--size small] [--ks 1 2 8 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys

from benchmarks import common
from prompt_tuning.models import t5
from prompt_tuning.models.prompt import PromptConfig
from prompt_tuning.train import optim
from prompt_tuning.train.trainer import PromptTrainer


def step_flops(config: t5.T5Config, prompt: PromptConfig, batch: int, inputs: int,
               targets: int) -> float:
  trainer = PromptTrainer(config, prompt, t5.param_shapes(config), optim.make_optimizer())
  shapes = {'encoder_input_tokens': (batch, inputs), 'decoder_input_tokens': (batch, targets),
            'decoder_target_tokens': (batch, targets), 'decoder_loss_weights': (batch, targets)}
  if prompt.is_table:
    shapes['prompt_ids'] = (batch,)
  cost = trainer.lower_train_step(shapes).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost['flops'])


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--size', default='small')
  parser.add_argument('--ks', type=int, nargs='+', default=[1, 2, 8, 32])
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--inputs', type=int, default=128)
  parser.add_argument('--targets', type=int, default=8)
  parser.add_argument('--prompt_length', type=int, default=100)
  parser.add_argument('--json', default=None)
  args = parser.parse_args(argv)
  config = t5.T5Config.preset(args.size, dropout_rate=0.0)
  flops = {k: step_flops(config, PromptConfig(args.prompt_length, num_prompts=k), args.batch,
                         args.inputs, args.targets) for k in args.ks}
  base = flops[args.ks[0]]
  rows = [{'K': k, 'flops': f, 'ratio_to_first': f / base} for k, f in flops.items()]
  for row in rows:
    print(f"K={row['K']:>3}  {row['flops']:.4e} FLOPs  {row['ratio_to_first']:.5f}x")
  if args.json:
    common.write_json({'size': args.size, 'batch': args.batch, 'inputs': args.inputs,
                       'targets': args.targets, 'prompt_length': args.prompt_length,
                       'rows': rows}, args.json)
  return 0


if __name__ == '__main__':
  sys.exit(main())

"""`python -m prompt_tuning` / `prompt-tuning`: the command-line entry point.

With no arguments it runs the embedded default job (no network, no downloads).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def model_check(out_dir: str) -> int:
  """Builds a tiny T5 1.1, writes it as T5X and HF checkpoints, reads both back, runs it."""
  import numpy as np

  from prompt_tuning import checkpoints
  from prompt_tuning.models import t5

  start = time.time()
  config = t5.T5Config.preset('tiny', dtype='float32')
  params = t5.init_params(config)
  t5x_path = checkpoints.save_t5x(os.path.join(out_dir, 't5x'), params, step=0, overwrite=True)
  hf_path = checkpoints.save_hf(os.path.join(out_dir, 'hf'), config, params)
  model = t5.EncoderDecoder(config)
  enc = np.array([[37, 423, 9, 1, 0]])
  logits = {}
  for name, path in (('t5x', t5x_path), ('hf', hf_path)):
    loaded_config, loaded = checkpoints.load_params(path, config)
    logits[name] = np.asarray(model.apply({'params': loaded}, enc, np.array([[0, 5]]),
                                          np.array([[5, 1]])))
  same = np.array_equal(logits['t5x'], logits['hf'])
  print(f'T5 1.1 tiny: {t5.count_params(config):,} parameters')
  print(f'  T5X checkpoint: {t5x_path}')
  print(f'  HF checkpoint:  {hf_path}')
  print(f'  logits from both reloads identical: {same}  ({time.time() - start:.1f}s)')
  return 0 if same else 1


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='prompt-tuning', description=__doc__)
  sub = parser.add_subparsers(dest='command')
  check = sub.add_parser('check', help='build, save, reload and run a tiny T5 1.1 (default)')
  check.add_argument('--out_dir', default=os.path.join('runs', 'model_check'))
  args = parser.parse_args(argv)
  if args.command in (None, 'check'):
    return model_check(getattr(args, 'out_dir', os.path.join('runs', 'model_check')))
  parser.error(f'unknown command {args.command}')
  return 2


if __name__ == '__main__':
  sys.exit(main())

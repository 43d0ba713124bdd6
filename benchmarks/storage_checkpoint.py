"""Saving and restoring the prompt checkpoint on object storage beside local disk (report only).

One `PromptCheckpointer.save` (numpy prompt + orbax TrainState, with its commit) and one restore,
into a local MODEL_DIR and into a gs:// MODEL_DIR on the GCS API server of
prompt_tuning.testing.gcs_emulator (127.0.0.1, in memory). The emulator is a local Python server,
so its times show the cost of the protocol (requests, commit file, listing), not of a real bucket.

    python -m benchmarks.storage_checkpoint --prompt 100 --d_model 768 --rounds 5 --json out.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid

from benchmarks import common


def _time_rounds(model_dir_for, trainer, state, rounds: int) -> dict:
  from prompt_tuning.train import state as state_lib
  saves, restores = [], []
  for r in range(rounds):
    model_dir = model_dir_for(r)
    ckpt = state_lib.PromptCheckpointer(model_dir, keep=1)
    try:
      start = time.perf_counter()
      ckpt.save(state, data_position=0)
      saves.append(time.perf_counter() - start)
      start = time.perf_counter()
      restored, _ = ckpt.restore(trainer.abstract_state())
      import jax
      jax.block_until_ready(restored)
      restores.append(time.perf_counter() - start)
    finally:
      ckpt.close()
  return {'save_s': saves, 'restore_s': restores,
          'save_median_s': statistics.median(saves),
          'restore_median_s': statistics.median(restores)}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--prompt', type=int, default=100, help='prompt length P')
  parser.add_argument('--d_model', type=int, default=768, help='width D (768: T5 1.1 base)')
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--json', default=None)
  args = parser.parse_args(argv)
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  import numpy as np

  from prompt_tuning.testing.gcs_emulator import Emulator
  from prompt_tuning.models import t5
  from prompt_tuning.models.prompt import PromptConfig
  from prompt_tuning.train import optim
  from prompt_tuning.train.trainer import PromptTrainer

  # A 1-layer model of the asked width: the checkpoint holds the prompt and its optimizer state
  # only (the frozen model is never written), so depth does not change what is saved.
  config = t5.T5Config(vocab_size=128, d_model=args.d_model, d_ff=64, num_heads=2, head_dim=8,
                       num_encoder_layers=1, num_decoder_layers=1, dtype='float32')
  frozen = t5.init_params(config)
  trainer = PromptTrainer(config, PromptConfig(args.prompt), frozen,
                          optim.make_optimizer(learning_rate=0.3))
  prompt = np.random.RandomState(0).uniform(-0.5, 0.5, (args.prompt, args.d_model))
  state = trainer.init_state(prompt.astype(np.float32), seed=0)
  result = {'benchmark': 'storage_checkpoint', 'prompt_shape': [args.prompt, args.d_model],
            'rounds': args.rounds, 'machine': common.machine_info()}
  with tempfile.TemporaryDirectory(prefix='storage-bench-') as tmp:
    result['local'] = _time_rounds(lambda r: os.path.join(tmp, f'run{r}'), trainer, state,
                                   args.rounds)
  with Emulator() as emulator:
    os.environ.update(emulator.env)
    prefix = f'gs://bkt/{uuid.uuid4().hex[:8]}'
    result['gcs_emulator'] = _time_rounds(lambda r: f'{prefix}/run{r}', trainer, state,
                                          args.rounds)
  common.write_json(result, args.json)
  print('| where | save (median s) | restore (median s) |')
  print('|---|---|---|')
  for where in ('local', 'gcs_emulator'):
    print(f"| {where} | {result[where]['save_median_s']:.3f} | "
          f"{result[where]['restore_median_s']:.3f} |")


if __name__ == '__main__':
  main()

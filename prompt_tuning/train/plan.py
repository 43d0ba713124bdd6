"""`prompt-tuning plan`: the train step's per-device memory, from shapes alone, before renting
hardware. Gin-configured with the same files as `train` (gin/runs/prompt_finetune.gin)."""

from __future__ import annotations

import time
from typing import Optional, Sequence

import jax

from prompt_tuning.models import t5
from prompt_tuning.models.prompt import PromptConfig
from prompt_tuning.train import optim, partitioning
from prompt_tuning.train.trainer import PromptTrainer


def plan(*, model: t5.T5Config, prompt: PromptConfig, batch_size: int,
         task_feature_lengths: dict, mesh_shape: Optional[Sequence[int]] = None,
         frozen_dtype: Optional[str] = None,
         remat_policies: Sequence[t5.RematPolicy] = ('none', 'dots', 'full'),
         device_memory_gib: Optional[float] = None) -> list[dict]:
  """`prompt-tuning plan`: per-device memory of the compiled train step, before renting hardware.

  Lowers and compiles the step ahead of time from shapes alone (nothing is allocated) for each
  rematerialisation policy, on this machine's backend: on a GPU the numbers are that GPU's; on a
  CPU they are XLA:CPU's buffer assignment, a close guide for arguments/outputs and a rougher one
  for temporaries (the CLI asks XLA:CPU for its memory-optimised schedule first, without which
  remat would not show in them at all).
  """
  mesh = partitioning.make_mesh(mesh_shape)
  batch = {'encoder_input_tokens': (batch_size, task_feature_lengths['inputs']),
           'decoder_input_tokens': (batch_size, task_feature_lengths['targets']),
           'decoder_target_tokens': (batch_size, task_feature_lengths['targets'])}
  limit = device_memory_gib * 2**30 if device_memory_gib else _device_bytes_limit()
  rows = []
  for policy in remat_policies:
    config = model.replace(remat_policy=policy)
    shapes = t5.param_shapes(config)
    trainer = PromptTrainer(config, prompt, shapes, optim.make_optimizer(), mesh=mesh,
                            frozen_dtype=frozen_dtype)
    start = time.time()
    compiled = trainer.lower_train_step(batch).compile()
    seconds = time.time() - start
    memory = compiled.memory_analysis()
    args, out = memory.argument_size_in_bytes, memory.output_size_in_bytes
    temp, alias = memory.temp_size_in_bytes, memory.alias_size_in_bytes
    total = args + out + temp - alias
    rows.append({'remat_policy': policy, 'arguments_bytes': args, 'outputs_bytes': out,
                 'temporaries_bytes': temp, 'aliased_bytes': alias, 'total_bytes': total,
                 'compile_seconds': round(seconds, 1),
                 'fits': None if limit is None else total <= limit})
  _print_plan(model, prompt, batch_size, task_feature_lengths, mesh, frozen_dtype, rows, limit)
  return rows


def _device_bytes_limit() -> Optional[int]:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get('bytes_limit')


def _print_plan(model, prompt, batch_size, lengths, mesh, frozen_dtype, rows, limit) -> None:
  gib = lambda b: f'{b / 2**30:8.2f}'
  print(f'Train-step memory per device: T5 1.1 d_model={model.d_model} '
        f'({t5.count_params(model) / 1e9:.2f}B params, frozen {frozen_dtype or model.param_dtype}),'
        f' prompt {prompt.length}, batch {batch_size}, inputs {lengths["inputs"]} + prompt, '
        f'targets {lengths["targets"]}, mesh {dict(mesh.shape)}, backend '
        f'{jax.devices()[0].platform} ({jax.devices()[0].device_kind}).')
  print(f'  {"remat":6} {"args GiB":>8} {"outs GiB":>8} {"temp GiB":>8} {"total GiB":>9}  '
        f'{"compile s":>9}  fits')
  for r in rows:
    fits = '?' if r['fits'] is None else ('yes' if r['fits'] else 'NO')
    print(f'  {r["remat_policy"]:6} {gib(r["arguments_bytes"])} {gib(r["outputs_bytes"])} '
          f'{gib(r["temporaries_bytes"])} {gib(r["total_bytes"])}   {r["compile_seconds"]:9.1f}  '
          f'{fits}')
  if limit:
    print(f'  device memory: {limit / 2**30:.1f} GiB')

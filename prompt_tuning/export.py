"""Exporting a run's prompt: `prompt-tuning export` and the final exports of a training run.

Reads MODEL_DIR through model_dir.py and writes through prompt_files.py:
  npy    the prompt as float32 .npy
  peft   a PEFT prompt-tuning adapter for the same base model
  t5x    the base checkpoint with the prompt inserted, in T5X's format
"""

from __future__ import annotations

import os
from typing import Any, Literal, Optional, Sequence, get_args

from prompt_tuning import checkpoints, prompt_files
from prompt_tuning import model_dir as model_dir_lib
from prompt_tuning.models import t5

ExportFormat = Literal['npy', 'peft', 't5x']
FORMATS: tuple[str, ...] = get_args(ExportFormat)
FINAL_FORMATS = ('npy', 'peft')  # what a run exports at its end (T5X: `export --format=t5x`)
FINAL_NPY = 'prompt.npy'
FINAL_PEFT = 'peft'


def check_final_formats(formats: Sequence[str]) -> None:
  if isinstance(formats, str) or any(f not in FINAL_FORMATS for f in formats):
    raise ValueError(f'export_formats = {formats!r}: choose a list from {list(FINAL_FORMATS)}.')


def export(model_dir: str, fmt: ExportFormat, output: str, step: Optional[int] = None) -> str:
  """MODEL_DIR's prompt of `step` (default: the latest committed) in format `fmt` at `output`."""
  if fmt not in FORMATS:
    raise ValueError(f"Unknown export format {fmt!r}; choose 'npy', 'peft' or 't5x'.")
  prompt_PxD, step = model_dir_lib.load_prompt(model_dir, step)
  if fmt == 'npy':
    return prompt_files.write_npy(os.path.abspath(output), prompt_PxD)
  info = model_dir_lib.read_run_info(model_dir)
  if info is None or 'model_config' not in info:
    raise model_dir_lib.ModelDirError(f'{model_dir}: no {model_dir_lib.RUN_INFO} with the model '
                                      f'config; export --format=npy needs none.')
  base = info.get('initial_checkpoint')
  if fmt == 'peft':
    config = t5.T5Config(**info['model_config'])
    return prompt_files.write_peft(output, prompt_PxD, config, base_model_name_or_path=base)
  _, frozen = checkpoints.load_base(base)
  return prompt_files.write_t5x(output, frozen, prompt_PxD, step)


def export_final(model_dir: str, prompt_PxD: Any, model_config: t5.T5Config,
                 formats: Sequence[str] = ('npy', 'peft')) -> dict[str, str]:
  """The end of a training run: MODEL_DIR/export/{prompt.npy, peft/}; {format: path}."""
  export_dir = os.path.join(model_dir, model_dir_lib.EXPORT)
  written = {}
  if 'npy' in formats:
    written['npy'] = prompt_files.write_npy(
        os.path.abspath(os.path.join(export_dir, FINAL_NPY)), prompt_PxD)
  if 'peft' in formats:
    written['peft'] = prompt_files.write_peft(os.path.join(export_dir, FINAL_PEFT), prompt_PxD,
                                              model_config)
  return written

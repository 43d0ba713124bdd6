"""Exporting a run's prompt: `prompt-tuning export` and the final exports of a training run.

Reads MODEL_DIR through model_dir.py and writes through prompt_files.py:
  npy    the prompt as float32 .npy
  peft   a PEFT prompt-tuning adapter for the same base model
  t5x    the base checkpoint with the prompt inserted, in T5X's format

A multi-task run (a table of K named prompts) exports each prompt on its own (`prompt_name`;
at the end of training: export/prompts/<name>.npy and export/peft/<name>/) and the whole table
[K, P, D] (export/table.npy, names in export/prompt_names.json, table order).

A deep run's per-layer prompts [L-1, P, D] go beside its input prompt as .npy
(export/deep_prompt.npy; `export --format=npy` writes <output>.deep.npy too); PEFT's prompt
tuning and T5X's prompt variable have no place for them, so those formats refuse a deep run.
"""

from __future__ import annotations

import json
from typing import Any, Literal, Optional, Sequence, get_args

from prompt_tuning import checkpoints, storage
from prompt_tuning.prompts import files as prompt_files
from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning.models import t5

ExportFormat = Literal['npy', 'peft', 't5x']
FORMATS: tuple[str, ...] = get_args(ExportFormat)
FINAL_FORMATS = ('npy', 'peft')  # what a run exports at its end (T5X: `export --format=t5x`)
FINAL_NPY = 'prompt.npy'
FINAL_PEFT = 'peft'
FINAL_TABLE = 'table.npy'
FINAL_PROMPTS = 'prompts'  # a table's prompts, one .npy per name
FINAL_NAMES = 'prompt_names.json'
FINAL_DEEP = 'deep_prompt.npy'


def check_final_formats(formats: Sequence[str]) -> None:
  if isinstance(formats, str) or any(f not in FINAL_FORMATS for f in formats):
    raise ValueError(f'export_formats = {formats!r}: choose a list from {list(FINAL_FORMATS)}.')


def select(model_dir: str, value: Any, prompt_name: Optional[str]) -> Any:
  """The named prompt [P, D] of a table run's `value` [K, P, D]; a single prompt as it is.
  npy exports of a table without a name give the whole table."""
  names = model_dir_lib.prompt_names(model_dir)
  if names is None:
    if prompt_name is not None:
      raise ValueError(f'--prompt_name={prompt_name}: {model_dir} holds a single prompt, not a '
                       f'table of named prompts; drop --prompt_name.')
    return value
  if prompt_name is None:
    return value
  if prompt_name not in names:
    raise ValueError(f'--prompt_name={prompt_name}: {model_dir} has no prompt of that name; its '
                     f'prompts are {names}.')
  return value[names.index(prompt_name)]


def export(model_dir: str, fmt: ExportFormat, output: str, step: Optional[int] = None,
           prompt_name: Optional[str] = None) -> str:
  """MODEL_DIR's prompt of `step` (default: the latest committed) in format `fmt` at `output` (a
  local path or a URL); of a multi-task run, the prompt named `prompt_name` (npy without a name:
  the whole table)."""
  if fmt not in FORMATS:
    raise ValueError(f"Unknown export format {fmt!r}; choose 'npy', 'peft' or 't5x'.")
  storage.check_writable(output, 'output')  # a URL's scheme and bucket, before anything is read
  table, step = model_dir_lib.load_prompt(model_dir, step)
  prompt_PxD = select(model_dir, table, prompt_name)
  if prompt_PxD.ndim == 3 and fmt != 'npy':
    raise ValueError(f'{model_dir} holds {prompt_PxD.shape[0]} prompts '
                     f'({model_dir_lib.prompt_names(model_dir)}); --format={fmt} takes one: '
                     f'pass --prompt_name.')
  deep = model_dir_lib.load_deep_prompt(model_dir, step)
  if deep is not None and fmt != 'npy':
    raise ValueError(f'{model_dir} has deep (per-layer) prompts, which --format={fmt} cannot '
                     f'hold; use --format=npy (writes the input prompt and <output>.deep.npy).')
  if fmt == 'npy':
    if deep is not None:
      prompt_files.write_npy(storage.absolute(deep_path(output)), deep)
    return prompt_files.write_npy(storage.absolute(output), prompt_PxD)
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


def deep_path(output: str) -> str:
  """Where `export --format=npy --output=X` puts a deep run's per-layer prompts."""
  return (output[:-4] if output.endswith('.npy') else output) + '.deep.npy'


def export_final(model_dir: str, prompt_PxD: Any, model_config: Any,
                 formats: Sequence[str] = ('npy', 'peft'),
                 prompt_names: Optional[Sequence[str]] = None,
                 deep_LxPxD: Any = None, placement: str = 'prefix') -> dict[str, str]:
  """The end of a training run: MODEL_DIR/export/{prompt.npy, peft/}; {format: path}. A table
  [K, P, D] with `prompt_names`: export/{table.npy, prompt_names.json, prompts/<name>.npy,
  peft/<name>/}. `placement`: a decoder-only prompt's (PEFT takes 'prefix' only)."""
  export_dir = storage.join(model_dir, model_dir_lib.EXPORT)
  if prompt_names is not None:
    return _export_table(export_dir, prompt_PxD, model_config, formats, prompt_names, placement)
  written = {}
  if 'npy' in formats:
    written['npy'] = prompt_files.write_npy(
        storage.absolute(storage.join(export_dir, FINAL_NPY)), prompt_PxD)
    if deep_LxPxD is not None:
      written['npy (deep)'] = prompt_files.write_npy(
          storage.absolute(storage.join(export_dir, FINAL_DEEP)), deep_LxPxD)
  if 'peft' in formats and deep_LxPxD is None:  # PEFT prompt tuning has no per-layer prompts
    written['peft'] = prompt_files.write_peft(storage.join(export_dir, FINAL_PEFT), prompt_PxD,
                                              model_config, placement=placement)
  return written


def _export_table(export_dir: str, table_KxPxD: Any, model_config: t5.T5Config,
                  formats: Sequence[str], names: Sequence[str],
                  placement: str) -> dict[str, str]:
  written = {}
  if 'npy' in formats:
    written['npy'] = prompt_files.write_npy(
        storage.absolute(storage.join(export_dir, FINAL_TABLE)), table_KxPxD)
    storage.write_atomic(storage.join(export_dir, FINAL_NAMES), json.dumps(list(names)))
    for name, prompt_PxD in zip(names, table_KxPxD):
      written[f'npy/{name}'] = prompt_files.write_npy(
          storage.absolute(storage.join(export_dir, FINAL_PROMPTS, f'{name}.npy')), prompt_PxD)
  if 'peft' in formats:
    for name, prompt_PxD in zip(names, table_KxPxD):
      written[f'peft/{name}'] = prompt_files.write_peft(
          storage.join(export_dir, FINAL_PEFT, name), prompt_PxD, model_config,
          placement=placement)
  return written

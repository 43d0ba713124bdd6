"""Mixed-task inference (`prompt-tuning infer` with PROMPT_LIBRARY and INFER_INPUT_FILE): rows
that each name their prompt, decoded in shared batches, each row steered by its own prompt. The
input file's rows and the predictions file are shared with decoder-only models
(causal_runs.infer_mixed)."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional, Sequence

from prompt_tuning import storage
from prompt_tuning.data import batching
from prompt_tuning.inference.runner import PromptedModel, input_row, load_frozen
from prompt_tuning.inference.runner import text as runner_text
from prompt_tuning.prompts import library as library_lib
from prompt_tuning.storage import write_atomic


def read_mixed_inputs(path: str) -> list[tuple[str, str]]:
  """(prompt name, input text) of each row of a mixed input file; bad rows named by line."""
  rows = []
  try:
    lines = storage.read_text(path).splitlines()
  except storage.StorageError as e:
    raise ValueError(f'INFER_INPUT_FILE {e}') from None
  except OSError as e:
    raise ValueError(f'INFER_INPUT_FILE {path}: cannot read it ({e.strerror}).') from e
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except ValueError:
      raise ValueError(f'{path}:{number}: not a JSON object; each line is {{"prompt": name, '
                       f'"inputs": text}}.') from None
    name = row.get('prompt', row.get('task')) if isinstance(row, dict) else None
    text = row.get('inputs') if isinstance(row, dict) else None
    if not isinstance(name, str) or not isinstance(text, str):
      raise ValueError(f'{path}:{number}: each line needs a string "prompt" (or "task") and a '
                       f'string "inputs".')
    rows.append((name, text))
  if not rows:
    raise ValueError(f'INFER_INPUT_FILE {path}: no rows.')
  return rows


def check_inputs(prompt_library, input_file) -> str:
  """INFER_INPUT_FILE, once both it and PROMPT_LIBRARY are set (one line if not)."""
  if prompt_library is None or input_file is None:
    raise ValueError('Mixed-task inference needs both PROMPT_LIBRARY (the named prompts) and '
                     'INFER_INPUT_FILE (JSONL rows {"prompt": name, "inputs": text}).')
  return input_file


def check_rows(rows: Sequence[tuple[str, str]], library: Mapping[str, Any],
               input_file: str) -> None:
  """Every row names a prompt of the library (one line naming the first row that does not)."""
  unknown = sorted({n for n, _ in rows} - set(library))
  if unknown:
    line = next(i for i, (n, _) in enumerate(rows, 1) if n == unknown[0])
    raise ValueError(f'{input_file}: row {line} asks for prompt {unknown[0]!r}, which the '
                     f'library does not have ({sorted(library)}).')


def write_predictions(output_dir: str, input_file: str, rows: Sequence[tuple[str, str]],
                      texts: Sequence[str]) -> str:
  """{"prompt", "inputs", "prediction"} per row, in order, at
  output_dir/<input file's name>-predictions.jsonl; returns the path."""
  path = storage.join(output_dir, os.path.splitext(storage.basename(input_file))[0] +
                      '-predictions.jsonl')
  write_atomic(path, ''.join(
      json.dumps({'prompt': n, 'inputs': text, 'prediction': out}) + '\n'
      for (n, text), out in zip(rows, texts)))
  print(f'wrote {len(rows)} predictions ({len(set(n for n, _ in rows))} prompts, mixed '
        f'batches) to {path}')
  return path


def infer_mixed(*, prompt_library, input_file, task, task_feature_lengths, model, prompt,
                initial_checkpoint_path, batch_size, decoding, output_dir, frozen_dtype) -> str:
  rows = read_mixed_inputs(check_inputs(prompt_library, input_file))
  config, frozen = load_frozen(initial_checkpoint_path, model, frozen_dtype)
  library = library_lib.load_library(prompt_library, config.d_model)
  check_rows(rows, library, input_file)
  vocab = vocabulary(task)
  runner = PromptedModel.with_library(config, frozen, library, placement=prompt.placement)
  length = task_feature_lengths['inputs']
  inputs = batching.pad_rows([input_row(vocab, text, length) for _, text in rows], width=length)
  outputs = runner.generate_rows(inputs, decoding, task_feature_lengths['targets'],
                                 batch_size=batch_size, buckets=batching.auto_buckets(length),
                                 prompt_ids_N=runner.prompt_ids([n for n, _ in rows]))
  return write_predictions(output_dir, input_file, rows,
                           [runner_text(vocab, out) for out in outputs])


def vocabulary(task: Optional[str]):
  from prompt_tuning.data import tasks, vocabularies
  if task:
    return tasks.get_vocabulary(task)
  return vocabularies.t5_vocabulary()

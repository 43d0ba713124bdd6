"""Prompt inspection (the paper's §7 interpretability analysis): `prompt-tuning inspect`.

For each position of a learned prompt, the vocabulary tokens whose input embeddings are nearest
by cosine similarity, and the position's L2 norm beside the embedding table's. The numbers are
pure numpy (`nearest_tokens`, `inspect_prompt`); `load_embedding` reads only the token embedding
of a checkpoint (T5X, an HF T5 or decoder-only directory) or a saved [V, D] .npy table;
`load_vocabulary` picks what decodes the ids (T5's SentencePiece model, or a decoder-only
folder's tokenizer.json); `format_table` is what the command prints; `inspect_command` is the
command.

Ties are broken deterministically: among equally similar rows the lower id comes first. A row or
a prompt position of norm 0 has similarity 0 with everything.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from prompt_tuning import storage

DEFAULT_TOP_K = 5
VOCAB_ENV = 'PROMPT_TUNING_VOCAB'  # as data/vocabularies.py (which needs SeqIO) reads it


def _unit_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(rows scaled to unit L2 norm (zero rows stay zero), the rows' norms)."""
  norms = np.linalg.norm(x, axis=-1)
  return x / np.where(norms > 0, norms, 1.0)[..., None], norms


def nearest_tokens(prompt: Any, embedding_VxD: Any, k: int = DEFAULT_TOP_K,
                   num_tokens: Optional[int] = None) -> dict[str, np.ndarray]:
  """The `k` embedding rows most cosine-similar to each prompt position.

  `prompt` is [P, D] or a table [K, P, D]; `embedding_VxD` is the model's token embedding.
  `num_tokens` limits the search to ids 0..num_tokens-1 (e.g. the vocabulary's size, leaving out
  the rows that only pad the table to 32128); None searches every row.

  Returns {'ids': int [..., P, k], 'similarities': float32 [..., P, k] (descending; ties by lower
  id), 'norms': float32 [..., P] (each position's L2 norm)}.
  """
  prompt = np.asarray(prompt, np.float32)
  embedding = np.asarray(embedding_VxD, np.float32)
  if prompt.ndim not in (2, 3):
    raise ValueError(f'a prompt is [P, D] or a table [K, P, D]; got shape {prompt.shape}.')
  if embedding.ndim != 2:
    raise ValueError(f'the embedding table is [V, D]; got shape {embedding.shape}.')
  if prompt.shape[-1] != embedding.shape[-1]:
    raise ValueError(f'the prompt {list(prompt.shape)} has width {prompt.shape[-1]} but the '
                     f'embedding table {list(embedding.shape)} has width {embedding.shape[-1]}.')
  rows = embedding.shape[0] if num_tokens is None else int(num_tokens)
  if not 0 < rows <= embedding.shape[0]:
    raise ValueError(f'num_tokens={num_tokens}: the embedding table has {embedding.shape[0]} '
                     f'rows.')
  if k < 1:
    raise ValueError(f'k={k}: ask for at least one nearest token.')
  k = min(int(k), rows)
  unit_prompt, norms = _unit_rows(prompt)
  unit_table, _ = _unit_rows(embedding[:rows])
  flat = unit_prompt.reshape(-1, prompt.shape[-1])
  ids = np.empty((flat.shape[0], k), np.int64)
  sims = np.empty((flat.shape[0], k), np.float32)
  for start in range(0, flat.shape[0], 64):  # [64, V] similarities at a time: bounded memory
    block = flat[start:start + 64] @ unit_table.T
    # A stable sort of the negated similarities: equal ones keep id order (lower id first).
    order = np.argsort(-block, axis=-1, kind='stable')[:, :k]
    ids[start:start + 64] = order
    sims[start:start + 64] = np.take_along_axis(block, order, axis=-1)
  lead = prompt.shape[:-1]
  return {'ids': ids.reshape(*lead, k), 'similarities': sims.reshape(*lead, k),
          'norms': norms.astype(np.float32)}


def inspect_prompt(prompt: Any, embedding_VxD: Any, k: int = DEFAULT_TOP_K, vocab: Any = None,
                   num_tokens: Optional[int] = None) -> dict[str, Any]:
  """A JSON-ready report of `nearest_tokens`, with the ids decoded by `vocab` when given.

  `vocab` is anything with `piece(id)` (vocab.SentencePieceVocab, causal_lm.CausalLMTokenizer).
  A [P, D] prompt is reported as a table of one. The report:

    {'prompt_shape': [P, D] or [K, P, D], 'embedding_shape': [V, D], 'searched_ids': N, 'k': k,
     'summary': {'prompt_norm_mean', 'prompt_norm_min', 'prompt_norm_max',
                 'embedding_norm_mean'},          # over every position; rows 0..N-1 of the table
     'prompts': [{'index': i, 'norm_mean', 'norm_min', 'norm_max',
                  'positions': [{'position': p, 'norm': float,
                                 'nearest': [{'id', 'similarity'[, 'token']}, ...]}, ...]}, ...]}
  """
  prompt = np.asarray(prompt, np.float32)
  embedding = np.asarray(embedding_VxD, np.float32)
  found = nearest_tokens(prompt, embedding, k, num_tokens)
  searched = embedding.shape[0] if num_tokens is None else int(num_tokens)
  table = prompt[None] if prompt.ndim == 2 else prompt
  ids = found['ids'].reshape(table.shape[0], table.shape[1], -1)
  sims = found['similarities'].reshape(ids.shape)
  norms = found['norms'].reshape(ids.shape[:2])
  prompts = []
  for i in range(table.shape[0]):
    positions = []
    for p in range(table.shape[1]):
      nearest = []
      for token_id, sim in zip(ids[i, p].tolist(), sims[i, p].tolist()):
        entry: dict[str, Any] = {'id': token_id, 'similarity': sim}
        if vocab is not None:
          entry['token'] = vocab.piece(token_id)
        nearest.append(entry)
      positions.append({'position': p, 'norm': float(norms[i, p]), 'nearest': nearest})
    prompts.append({'index': i, **_norm_stats(norms[i], 'norm_'), 'positions': positions})
  _, table_norms = _unit_rows(embedding[:searched])
  summary = {**_norm_stats(norms, 'prompt_norm_'),
             'embedding_norm_mean': float(table_norms.mean())}
  return {'prompt_shape': list(prompt.shape), 'embedding_shape': list(embedding.shape),
          'searched_ids': searched, 'k': int(ids.shape[-1]), 'summary': summary,
          'prompts': prompts}


def _norm_stats(norms: np.ndarray, prefix: str) -> dict[str, float]:
  return {f'{prefix}mean': float(norms.mean()), f'{prefix}min': float(norms.min()),
          f'{prefix}max': float(norms.max())}


def format_table(report: dict[str, Any], prompt_source: str = '',
                 embedding_source: str = '') -> str:
  """The report as the lines `prompt-tuning inspect` prints."""
  s = report['summary']
  lines = []
  if prompt_source:
    lines.append(f'prompt:    {prompt_source} {report["prompt_shape"]}')
  if embedding_source:
    lines.append(f'embedding: {embedding_source} {report["embedding_shape"]}')
  rows = report['embedding_shape'][0]
  searched = report['searched_ids']
  lines.append(f'searched:  ids 0..{searched - 1} of {rows} rows' +
               (f' (rows {searched}..{rows - 1} only pad the table)' if searched < rows else ''))
  lines.append(f'norms:     prompt mean {s["prompt_norm_mean"]:.4g} (min '
               f'{s["prompt_norm_min"]:.4g}, max {s["prompt_norm_max"]:.4g}); embedding rows '
               f'mean {s["embedding_norm_mean"]:.4g}')
  for entry in report['prompts']:
    lines.append('')
    if len(report['prompts']) > 1:
      lines.append(f'prompt {entry["index"]}: norm mean {entry["norm_mean"]:.4g} (min '
                   f'{entry["norm_min"]:.4g}, max {entry["norm_max"]:.4g})')
    lines.append(f'{"pos":>5} {"norm":>9}  nearest tokens by cosine similarity '
                 f'(top {report["k"]})')
    for position in entry['positions']:
      cells = [f'{_token_label(n)} {n["similarity"]:.3f}' for n in position['nearest']]
      lines.append(f'{position["position"]:>5} {position["norm"]:>9.4g}  ' + ' | '.join(cells))
  return '\n'.join(lines)


def _token_label(nearest: dict[str, Any]) -> str:
  if 'token' in nearest:
    return f'{nearest["token"]}({nearest["id"]})'
  return f'#{nearest["id"]}'


def load_embedding(path: str) -> tuple[np.ndarray, str]:
  """(the token embedding [V, D] as float32, where it was read) from a T5X checkpoint, an HF T5 or
  decoder-only directory (only that array is read) or a [V, D] .npy file; each a local path or a
  URL."""
  path = os.fspath(path)
  if path.endswith('.npy') and storage.isfile(path):
    try:
      with storage.open_file(path, 'rb') as f:
        value = np.load(f, allow_pickle=False)
    except Exception as e:  # truncated data and object arrays both land here
      raise ValueError(f'{path}: cannot read the numpy array ({e}).') from e
    source = path
    if value.ndim != 2:  # checkpoints.load_embedding checks its own tables
      raise ValueError(f'{source}: an embedding table is a 2-D [V, D] array; this one has shape '
                       f'{value.shape}.')
  else:
    from prompt_tuning import checkpoints  # Lazy: pulls in tensorstore.
    value, source = checkpoints.load_embedding(path)
  if not (value.dtype.kind == 'f' or value.dtype.name == 'bfloat16'):
    raise ValueError(f'{source}: an embedding table holds floats; this one is {value.dtype}.')
  return value.astype(np.float32), source


def load_vocabulary(vocab: Optional[str], checkpoint: str) -> tuple[Any, Optional[str]]:
  """(what decodes the ids, its path) or (None, None): `vocab` (a SentencePiece model, or a
  folder holding a tokenizer.json, or that file), else a decoder-only checkpoint folder's own
  tokenizer.json, else $PROMPT_TUNING_VOCAB for any other checkpoint (it is T5's)."""
  from prompt_tuning.checkpoints import hf_decoder
  decoder = hf_decoder.is_decoder_dir(checkpoint)
  if not vocab and decoder:
    vocab = checkpoint if storage.exists(storage.join(checkpoint, 'tokenizer.json')) else None
  elif not vocab:
    vocab = os.environ.get(VOCAB_ENV)
  if not vocab:
    return None, None
  if vocab.endswith('.json') or storage.isdir(vocab):
    from prompt_tuning.data.causal_lm import CausalLMTokenizer
    folder = os.path.dirname(vocab) if vocab.endswith('.json') else vocab
    return CausalLMTokenizer(folder), storage.join(folder, 'tokenizer.json')
  from prompt_tuning.data.vocab import SentencePieceVocab
  return SentencePieceVocab(vocab), vocab


def inspect_command(prompt: Optional[str] = None, variable: Optional[str] = None,
                    model_dir: Optional[str] = None, step: Optional[int] = None,
                    checkpoint: Optional[str] = None, vocab: Optional[str] = None,
                    top_k: int = DEFAULT_TOP_K, json_file: Optional[str] = None) -> None:
  """`prompt-tuning inspect` (its flags by name): prints the table of one prompt, a `prompt` file
  (read at `variable` of a T5X checkpoint) or the prompt of a `model_dir` at `step` (default the
  latest), against the token embedding of `checkpoint` (default: the run's base checkpoint, T5's
  or a decoder-only run's HF folder); `vocab` decodes the ids (default: `load_vocabulary`'s).
  `json_file` also gets the report."""
  import json
  import sys

  from prompt_tuning.prompts import files as prompt_files
  from prompt_tuning.train import model_dir as model_dir_lib
  if bool(prompt) == bool(model_dir):
    raise ValueError('inspect needs one prompt: --prompt=FILE (.npy, PEFT adapter, T5X '
                     'checkpoint) or --model_dir=MODEL_DIR [--step=N]' +
                     (', not both.' if prompt else '.'))
  if step is not None and not model_dir:
    raise ValueError('inspect: --step picks a step of --model_dir; a --prompt file has one prompt.')
  if json_file and storage.isdir(json_file):
    raise ValueError(f'--json={json_file} is a directory; name the file to write.')
  if model_dir:
    value, step = model_dir_lib.load_prompt(model_dir, step)
    prompt_source = f'{model_dir} (step {step})'
  else:
    value, prompt_source = prompt_files.load_prompt_file(prompt, variable), str(prompt)
  if not checkpoint and model_dir:
    checkpoint = (model_dir_lib.read_run_info(model_dir) or {}).get('initial_checkpoint')
  if not checkpoint:
    raise ValueError('inspect needs --checkpoint=PATH: the model whose token embedding the prompt '
                     'is compared with (a T5X checkpoint, an HF T5 or decoder-only directory or '
                     'a [V, D] .npy).')
  embedding, embedding_source = load_embedding(checkpoint)
  if value.shape[-1] != embedding.shape[-1]:
    raise ValueError(f'the prompt {prompt_source} has shape {list(value.shape)} (width '
                     f'{value.shape[-1]}) but the embedding {embedding_source} has shape '
                     f'{list(embedding.shape)} (width {embedding.shape[-1]}): the prompt was '
                     f'trained for another model.')
  pieces, vocab_path = load_vocabulary(vocab, checkpoint)
  if pieces is not None and pieces.vocab_size > embedding.shape[0]:
    raise ValueError(f'the vocabulary {vocab_path} has {pieces.vocab_size} ids but the embedding '
                     f'{embedding_source} has {embedding.shape[0]} rows: they belong to different '
                     f'models.')
  if pieces is None:
    print(f'prompt-tuning inspect: no vocabulary (--vocab, a decoder-only checkpoint\'s '
          f'tokenizer.json or ${VOCAB_ENV}); tokens are shown as ids.', file=sys.stderr)
  report = inspect_prompt(value, embedding, top_k, pieces,
                          num_tokens=pieces.vocab_size if pieces else None)
  report = {'prompt_source': prompt_source, 'embedding_source': embedding_source,
            'vocab': vocab_path, **report}
  if json_file:
    storage.write_atomic(storage.absolute(json_file),
                         json.dumps(report, indent=1, ensure_ascii=False))
  print(format_table(report, prompt_source, embedding_source))
  if json_file:
    print(f'wrote {storage.absolute(json_file)}')

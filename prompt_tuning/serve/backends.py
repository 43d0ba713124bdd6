"""The model kinds the engine serves, each a small backend owning its row convention, so that
serve/engine.py runs either without asking which:

  Seq2SeqBackend  T5 (inference/runner.PromptedModel): a row is the input ids + EOS
                  (runner.input_row), generated ids become text by runner.text
  CausalBackend   decoder-only HF models (inference/causal_runner.CausalPromptedModel): a row is
                  [BOS]? + the input ids cut from the left (data/causal_lm.prefix_ids) and its
                  length travels with it (id 0 may be a real token); generated text is
                  tokenizer.target_text up to EOS; rank candidates are label ids + EOS
  backend_for     the backend of a model config; is_decoder_only, load_causal, placement: how
                  `serve` tells an HF decoder-only folder, loads it and picks the placement

A backend also has `eos_id` and `text(ids)`, so engine.generated_answer reads it as a vocabulary.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from prompt_tuning.data import batching
from prompt_tuning.data import causal_lm as causal_data
from prompt_tuning.inference import decoding, runner
from prompt_tuning.models.decoder_config import ARCHITECTURES, DecoderConfig
from prompt_tuning.prompts import library as library_lib
from prompt_tuning.serve.errors import RequestError
from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning.train.decoder_trainer import ARCHITECTURE


class Seq2SeqBackend:
  """T5 rows: input ids + EOS, right padded (lengths unused: id 0 is padding)."""

  def __init__(self, model_config: Any, frozen: Mapping, vocab: Any, placement: str = 'prefix'):
    self.model_config, self.frozen, self.vocab, self.placement = (model_config, frozen, vocab,
                                                                  placement)
    self.eos_id: int = vocab.eos_id

  @property
  def vocab_size(self) -> int:
    return self.vocab.vocab_size

  def check_limits(self, prompt_length: int, config: Any) -> None:
    """T5's encoder has relative positions: any length fits."""

  def model(self, table: Any) -> runner.PromptedModel:
    return runner.PromptedModel(self.model_config, self.frozen, table,
                                placement=self.placement)  # type: ignore[arg-type]

  def input_row(self, text_or_ids: str | Sequence[int], max_length: int) -> list[int]:
    return runner.input_row(self.vocab, text_or_ids, max_length)

  def text(self, ids: Any) -> str:
    return runner.text(self.vocab, ids)

  def prompt_text(self, ids: Sequence[int]) -> str:
    return self.vocab.text(ids)

  def candidates(self, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    candidates_CxT = runner.label_targets(self.vocab, labels)
    return candidates_CxT, batching.row_lengths(candidates_CxT)

  def generate(self, model: Any, tokens_BxL: np.ndarray, lengths_B: np.ndarray,
               config: decoding.DecodingConfig, length: int, ids_B: np.ndarray) -> np.ndarray:
    return model.generate(tokens_BxL, config, length, ids_B)

  def score(self, model: Any, tokens_BxL: np.ndarray, lengths_B: np.ndarray,
            candidates_CxT: np.ndarray, candidate_lengths_C: np.ndarray,
            ids_B: np.ndarray) -> np.ndarray:
    return model.score(tokens_BxL, candidates_CxT, ids_B)


class CausalBackend:
  """Decoder-only rows: [BOS]? + input ids, right padded, each with its length."""

  def __init__(self, model_config: DecoderConfig, frozen: Mapping,
               tokenizer: causal_data.CausalLMTokenizer, placement: str = 'prefix'):
    from prompt_tuning.models.decoder_only import PLACEMENTS
    if placement not in PLACEMENTS:
      raise ValueError(f'--placement={placement}: a decoder-only model takes '
                       f'{" or ".join(PLACEMENTS)}.')
    self.model_config, self.frozen, self.vocab, self.placement = (model_config, frozen, tokenizer,
                                                                  placement)
    self.eos_id: int = tokenizer.eos_id

  @property
  def vocab_size(self) -> int:
    return self.vocab.vocab_size

  def positions(self) -> Optional[int]:
    """How many positions the model has (a learned table, GPT-2); None: any (RoPE)."""
    config = self.model_config
    return config.max_position_embeddings if config.position == 'learned' else None

  def check_limits(self, prompt_length: int, config: Any) -> None:
    """The longest row, its prompt and a generation fit the model's learned positions."""
    most = self.positions()
    need = prompt_length + config.max_input_length + config.max_decode_length
    if most is not None and need > most:
      raise ValueError(f'--max_input_length={config.max_input_length} + --max_decode_length='
                       f'{config.max_decode_length} + the prompts\' {prompt_length} positions '
                       f'exceed the {most} learned positions of this '
                       f'{self.model_config.architecture}; lower --max_input_length.')

  def model(self, table: Any) -> Any:
    from prompt_tuning.inference.causal_runner import CausalPromptedModel
    return CausalPromptedModel(self.model_config, self.frozen, table,
                               placement=self.placement)  # type: ignore[arg-type]

  def input_row(self, text_or_ids: str | Sequence[int], max_length: int) -> list[int]:
    """[BOS]? + the text's ids (or the ids as given), cut from the left to `max_length`."""
    ids = self.vocab.encode(text_or_ids) if isinstance(text_or_ids, str) else list(text_or_ids)
    row = causal_data.prefix_ids(self.vocab, ids, max_length)
    if not row:
      raise ValueError('is empty; this model adds no BOS, so an input needs at least one token')
    return row

  def text(self, ids: Any) -> str:
    return self.vocab.target_text([int(t) for t in ids])

  def prompt_text(self, ids: Sequence[int]) -> str:
    return self.vocab.decode(ids)

  def candidates(self, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    rows = causal_data.candidate_ids(self.vocab, labels)
    return batching.pad_rows(rows), np.array([len(r) for r in rows], np.int32)

  def generate(self, model: Any, tokens_BxL: np.ndarray, lengths_B: np.ndarray,
               config: decoding.DecodingConfig, length: int, ids_B: np.ndarray) -> np.ndarray:
    return model.generate(tokens_BxL, config, length, ids_B, lengths_B)

  def score(self, model: Any, tokens_BxL: np.ndarray, lengths_B: np.ndarray,
            candidates_CxT: np.ndarray, candidate_lengths_C: np.ndarray,
            ids_B: np.ndarray) -> np.ndarray:
    most, prompt = self.positions(), np.shape(model.prompts)[-2]
    if most is not None and prompt + tokens_BxL.shape[1] + candidates_CxT.shape[1] > most:
      raise RequestError(400, f'"labels": the longest label has {candidates_CxT.shape[1]} tokens '
                              f'(with EOS); after the input it exceeds the {most} positions of '
                              f'this model.', param='labels')
    return model.score(tokens_BxL, candidates_CxT, ids_B, lengths_B, candidate_lengths_C)


def backend_for(model_config: Any, frozen: Mapping, vocab: Any,
                placement: str = 'prefix') -> Seq2SeqBackend | CausalBackend:
  """The backend of the model the config describes: a DecoderConfig is a decoder-only one."""
  if isinstance(model_config, DecoderConfig):
    return CausalBackend(model_config, frozen, vocab, placement)
  return Seq2SeqBackend(model_config, frozen, vocab, placement)


def is_decoder_only(path: Optional[str]) -> bool:
  """Whether `path` is an HF folder of a decoder-only family (config.json names one)."""
  from prompt_tuning.checkpoints import hf_files
  if not path or not hf_files.is_hf_dir(path):
    return False
  config = hf_files.read_config(path)
  architectures = config.get('architectures') or [None]
  return (config.get('model_type') in ARCHITECTURES
          or architectures[0] in ARCHITECTURES.values())


def load_causal(path: str, frozen_dtype: Optional[str], model: Any = None, vocab: Any = None
                ) -> tuple[DecoderConfig, Any, causal_data.CausalLMTokenizer]:
  """(config, frozen params, tokenizer) of an HF decoder-only folder: its config.json, weights
  and tokenizer.json. A T5 MODEL or a SentencePiece vocabulary is refused (they are T5's)."""
  from prompt_tuning.inference import causal_runner
  if model is not None:
    raise ValueError(f'{path} is a decoder-only checkpoint, whose architecture comes from its '
                     f'config.json; drop the T5 model gin files (MODEL).')
  if vocab:
    raise ValueError(f'--vocab is T5\'s SentencePiece model; {path} is a decoder-only '
                     f'checkpoint, read with its own tokenizer.json: drop --vocab.')
  tokenizer = causal_data.CausalLMTokenizer(path)  # first: a missing one fails fast
  config, frozen = causal_runner.load_frozen(path, frozen_dtype)
  return config, frozen, tokenizer


def placement(flag: Optional[str], library: Mapping[str, library_lib.LibraryPrompt],
              default: str = 'prefix') -> str:
  """The prompts' placement: the flag, else what the library's decoder-only MODEL_DIRs were
  trained with (they must agree, and with the flag), else `default`."""
  trained: dict[str, str] = {}
  for prompt in library.values():
    info = (model_dir_lib.read_run_info(prompt.source) or {}) if prompt.kind == 'model_dir' else {}
    if info.get('architecture') == ARCHITECTURE:
      trained.setdefault(info.get('placement', 'prefix'), prompt.source)
  if len(trained) > 1:
    (a, first), (b, second) = list(trained.items())[:2]
    raise ValueError(f'the prompt library mixes placements: {first} was trained with {a!r}, '
                     f'{second} with {b!r}; serve one placement per server.')
  if flag and trained and flag not in trained:
    [(chosen, source)] = trained.items()
    raise ValueError(f'--placement={flag}, but {source} was trained with {chosen!r}; drop the '
                     f'flag or serve prompts of that placement.')
  return flag or next(iter(trained), default)

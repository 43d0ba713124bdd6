"""`DecoderModel`: gin's MODEL for a decoder-only model (gin/models/decoder_only.gin, llama.gin,
qwen2.gin, mistral.gin, gpt2.gin): which family INITIAL_CHECKPOINT_PATH must hold, and that
family's defaults (BOS, the frozen weights' dtype). The architecture and sizes themselves come from
the folder's config.json (models/decoder_config.py).

With MODEL a DecoderModel, `prompt-tuning eval|infer` (runs.py) run the decoder-only model
(causal_runs.py); `train` runs it with runs/causal_lm_prompt_tuning.gin.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from prompt_tuning import storage
from prompt_tuning.models import decoder_config


@dataclasses.dataclass(frozen=True)
class DecoderModel:
  """A decoder-only family and its defaults.

  family        config.json's family ('llama', 'qwen2', 'mistral', 'gpt2'); None: any of them
  add_bos       whether rows start with BOS; None: the family's habit (data/causal_lm.ADD_BOS)
  frozen_dtype  the frozen weights' dtype when FROZEN_DTYPE is None ('auto': bfloat16 on GPU/TPU,
                as stored on CPU; None: as stored)
  """
  family: Optional[str] = None
  add_bos: Optional[bool] = None
  frozen_dtype: Optional[str] = None

  def __post_init__(self):
    if self.family is not None and self.family not in decoder_config.FAMILIES:
      raise ValueError(f'DecoderModel.family = {self.family!r}: choose one of '
                       f'{list(decoder_config.FAMILIES)} (or None for any).')

  @property
  def gin_file(self) -> str:
    return f'models/{self.family or "decoder_only"}.gin'

  def check(self, checkpoint_dir: str) -> str:
    """The family of the HF folder `checkpoint_dir` (INITIAL_CHECKPOINT_PATH); one line when it
    is not a decoder-only folder, or not this block's family."""
    family = folder_family(checkpoint_dir)
    if family is None:
      raise ValueError(f'INITIAL_CHECKPOINT_PATH {checkpoint_dir}: not a decoder-only Hugging Face '
                       f'folder (no config.json naming {decoder_config.supported()}); '
                       f'{self.gin_file} needs the model\'s folder (config.json, '
                       f'model.safetensors, tokenizer.json).')
    if self.family is not None and family != self.family:
      raise ValueError(f'INITIAL_CHECKPOINT_PATH {checkpoint_dir} holds a {family} model, but the '
                       f'gin files give {self.gin_file} ({self.family}): use '
                       f'models/{family}.gin.')
    return family


def folder_family(path: Optional[str]) -> Optional[str]:
  """The decoder-only family of an HF folder's config.json; None when `path` has no config.json
  (a T5X checkpoint) or it names a model that is not decoder-only (T5). An unsupported
  decoder-only architecture is one line (decoder_config.family_of)."""
  if not path:
    return None
  from prompt_tuning.checkpoints import hf_files
  if not storage.isfile(storage.join(path, hf_files.CONFIG_FILE)):
    return None
  config = hf_files.read_config(path)
  if config.get('model_type') == 't5' or config.get('is_encoder_decoder'):
    return None
  try:
    return decoder_config.family_of(config)
  except ValueError as e:
    raise ValueError(f'INITIAL_CHECKPOINT_PATH {path}: {e}') from None

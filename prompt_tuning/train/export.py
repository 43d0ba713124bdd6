"""Exports of a trained prompt: .npy, a PEFT adapter, and a full T5X checkpoint for T5X users."""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import numpy as np
from safetensors.numpy import save_file

from prompt_tuning import checkpoints, prompts
from prompt_tuning import model_dir as model_dir_lib
from prompt_tuning.models import t5

# The file names PEFT reads; shared with the prompt loader.
PEFT_WEIGHTS = prompts.PEFT_WEIGHTS
PEFT_CONFIG = prompts.PEFT_CONFIG


def export_numpy(path: str, prompt_PxD: Any) -> str:
  """float32 .npy, written whole or not at all."""
  return model_dir_lib.save_npy(os.path.abspath(path), prompt_PxD)


def export_peft(directory: str, prompt_PxD: Any, config: t5.T5Config,
                base_model_name_or_path: Optional[str] = None) -> str:
  """A PEFT prompt-tuning adapter: `PeftModel.from_pretrained(t5, directory)` loads it.

  num_transformer_submodules is 1: the prompt is prepended to the encoder only, as here.
  """
  prompt_PxD = np.ascontiguousarray(np.asarray(prompt_PxD, np.float32))
  length, width = prompt_PxD.shape
  if width != config.d_model:
    raise ValueError(f'Prompt width {width} does not match the model d_model {config.d_model}.')
  os.makedirs(directory, exist_ok=True)
  model_dir_lib.atomic_save(os.path.join(directory, PEFT_WEIGHTS), lambda tmp: save_file(
      {prompts.PEFT_TENSOR: prompt_PxD}, tmp, metadata={'format': 'pt'}))
  adapter_config = {
      'peft_type': 'PROMPT_TUNING', 'task_type': 'SEQ_2_SEQ_LM',
      'num_virtual_tokens': length, 'token_dim': width, 'num_transformer_submodules': 1,
      'num_attention_heads': config.num_heads, 'num_layers': config.num_encoder_layers,
      'prompt_tuning_init': 'RANDOM', 'prompt_tuning_init_text': None,
      'tokenizer_name_or_path': None, 'base_model_name_or_path': base_model_name_or_path,
      'inference_mode': True, 'revision': None,
  }
  model_dir_lib.atomic_write(os.path.join(directory, PEFT_CONFIG),
                             json.dumps(adapter_config, indent=2))
  return directory


def export_t5x(directory: str, frozen_params: dict, prompt_PxD: Any, step: int,
               overwrite: bool = False) -> str:
  """The base model with the prompt at encoder/prompt/prompt/prompt, in T5X's format."""
  params = prompts.merge_params(frozen_params, prompts.prompt_tree(np.asarray(prompt_PxD,
                                                                              np.float32)))
  return checkpoints.save_t5x(directory, params, step, overwrite=overwrite)

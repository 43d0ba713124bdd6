"""Shared builders for the training tests: a tiny frozen model and deterministic batches."""

import numpy as np

from prompt_tuning.models import prompt as prompt_lib
from prompt_tuning.train import optim
from prompt_tuning.train.trainer import PromptTrainer


def make_batch(position: int, batch: int = 8, enc_len: int = 12, dec_len: int = 4,
               vocab: int = 200) -> dict:
  """Batch number `position` of a fixed synthetic stream (padding included)."""
  rng = np.random.RandomState(position)
  enc = rng.randint(2, vocab, size=(batch, enc_len))
  enc[:, -1] = 1
  enc[0, enc_len // 2:] = 0
  tgt = rng.randint(2, vocab, size=(batch, dec_len))
  tgt[1, dec_len // 2:] = 0
  dec_in = np.concatenate([np.zeros((batch, 1), int), tgt[:, :-1]], axis=1) * (tgt > 0)
  return {'encoder_input_tokens': enc.astype(np.int32), 'decoder_input_tokens':
          dec_in.astype(np.int32), 'decoder_target_tokens': tgt.astype(np.int32)}


def batches(start: int = 0, **kw):
  position = start
  while True:
    yield make_batch(position, **kw)
    position += 1


def make_trainer(config, frozen, prompt_length=5, optimizer=None, num_prompts=1,
                 **kw) -> PromptTrainer:
  return PromptTrainer(config, prompt_lib.PromptConfig(prompt_length, num_prompts=num_prompts),
                       frozen, optimizer or optim.adafactor(), **kw)

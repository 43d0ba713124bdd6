"""Tiny decoder-only tokenizers built offline: a Llama-like WordLevel `tokenizer.json` over a
corpus's words (digits optionally one token each), with a `config.json` beside it, in the folder
that `data.causal_lm.CausalLMTokenizer` reads. The causal-LM quickstart's tokenizer and the
tests' tiny ones.

Ids: <pad> 0, <s> 1, </s> 2, <unk> 3, then the corpus's tokens by frequency. Decoding joins
tokens with spaces (WordLevel has no decoder): '8', not '38251' back, for a multi-token text.
"""

from __future__ import annotations

import json
import os
from typing import Iterable

SPECIAL_TOKENS = ('<pad>', '<s>', '</s>', '<unk>')  # ids 0, 1, 2, 3
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


def word_level_tokenizer(corpus: Iterable[str], folder: str, config: dict,
                         split_digits: bool = False) -> str:
  """Writes `tokenizer.json` (words and punctuation runs of `corpus`; with `split_digits` each
  digit its own token, so '38251' is 5 tokens) and `config` as `config.json` into `folder`
  (made; an existing one is refused). Returns the folder."""
  import tokenizers
  from tokenizers import pre_tokenizers
  if os.path.exists(folder):
    raise FileExistsError(f'{folder}: already exists; choose a new folder for the tokenizer.')
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token='<unk>'))
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]) if (
          split_digits) else pre_tokenizers.Whitespace()
  tok.train_from_iterator(corpus, tokenizers.trainers.WordLevelTrainer(
      special_tokens=list(SPECIAL_TOKENS)))
  os.makedirs(folder)
  tok.save(os.path.join(folder, 'tokenizer.json'))
  with open(os.path.join(folder, 'config.json'), 'w') as f:
    json.dump(config, f)
  return folder

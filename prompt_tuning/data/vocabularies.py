"""SeqIO vocabularies: T5's SentencePiece model (+100 sentinels) and raw bytes."""

from __future__ import annotations

import functools
import os
from typing import Callable, Optional

import seqio

DEFAULT_T5_VOCAB = 'gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model'
T5_EXTRA_IDS = 100


@functools.lru_cache(maxsize=None)
def _sentencepiece(path: str, extra_ids: int) -> seqio.SentencePieceVocabulary:
  # One object per file: seqio loads the model lazily and then keeps it.
  return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


def t5_vocabulary(path: Optional[str | os.PathLike] = None) -> seqio.SentencePieceVocabulary:
  """T5's `cc_all.32000` SentencePiece vocabulary: 32000 pieces + 100 extra ids = 32100."""
  return _sentencepiece(os.fspath(path) if path else DEFAULT_T5_VOCAB, T5_EXTRA_IDS)


def byte_vocabulary() -> seqio.ByteVocabulary:
  """UTF-8 bytes shifted by 3 (pad 0, eos 1, unk 2): 259 ids; needs no model file."""
  return seqio.ByteVocabulary()


class DeferredVocabulary(seqio.Vocabulary):
  """A vocabulary that forwards every call to `resolve()`, evaluated at use time.

  Tasks are registered at import, but the vocabulary file (or a user's override) is only known
  later; this stand-in lets `set_vocabulary(...)` take effect for already-registered tasks.
  """

  def __init__(self, resolve: Callable[[], seqio.Vocabulary]):
    super().__init__(extra_ids=0)
    self._resolve = resolve

  @property
  def resolved(self) -> seqio.Vocabulary:
    return self._resolve()

  # Public API: forwarded whole so the target's own extra-id handling applies.
  @property
  def vocab_size(self) -> int:
    return self.resolved.vocab_size

  @property
  def extra_ids(self) -> int:
    return self.resolved.extra_ids

  @property
  def eos_id(self):
    return self.resolved.eos_id

  @property
  def unk_id(self):
    return self.resolved.unk_id

  @property
  def pad_id(self) -> int:
    return self.resolved.pad_id

  @property
  def bos_id(self):
    return self.resolved.bos_id

  def encode(self, s):
    return self.resolved.encode(s)

  def decode(self, ids):
    return self.resolved.decode(ids)

  def encode_tf(self, s):
    return self.resolved.encode_tf(s)

  def decode_tf(self, ids):
    return self.resolved.decode_tf(ids)

  # Abstract hooks of seqio.Vocabulary; unused because the public methods are forwarded.
  @property
  def _base_vocab_size(self) -> int:
    return self.resolved.vocab_size - self.resolved.extra_ids

  def _encode(self, s):
    return self.resolved.encode(s)

  def _decode(self, ids):
    return self.resolved.decode(ids)

  def _encode_tf(self, s):
    return self.resolved.encode_tf(s)

  def _decode_tf(self, ids):
    return self.resolved.decode_tf(ids)

  def __repr__(self) -> str:
    try:
      return f'DeferredVocabulary(-> {self.resolved!r})'
    except Exception:  # pylint: disable=broad-except  # repr must not fail on a bad setting
      return 'DeferredVocabulary(<unresolved>)'

"""T5's vocabulary conventions and its SentencePiece tokenizer without TensorFlow.

Owns the special ids every layer agrees on (`PAD_ID`, `EOS_ID`, and `token_mask`: which positions
of a token array are real). `SentencePieceVocab` is the TF-free tokenizer for where SeqIO is
absent (the GPU machines, prompt initialisation from text, benchmarks); the SeqIO tasks wrap the
same model file (data/vocabularies.py).

T5 appends `extra_ids` sentinel ids (<extra_id_0> ..) after the SentencePiece pieces, so the
model's vocabulary (32100 for T5; the embedding is padded to 32128) is larger than the model file's.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Optional

from prompt_tuning import storage

PAD_ID = 0  # also the decoder's start token
EOS_ID = 1


def token_mask(tokens: Any) -> Any:
  """True where `tokens` (numpy or jax, any shape) holds a real token rather than padding."""
  return tokens > PAD_ID


class SentencePieceVocab:
  """encode/decode with T5's conventions: no EOS appended, decoding stops at EOS."""

  pad_id = PAD_ID
  eos_id = EOS_ID

  def __init__(self, path: str | os.PathLike, extra_ids: int = 100):
    path = os.fspath(path)
    if storage.is_remote(path):  # gs://...: read through storage (a missing bucket is named)
      storage.check_writable(path, 'SentencePiece model')  # writes nothing
    if not storage.exists(path):
      raise FileNotFoundError(f'{path}: SentencePiece model file not found.')
    if not storage.isfile(path):
      raise ValueError(f'{path}: is not a file; expected a SentencePiece model '
                       f'(e.g. sentencepiece.model).')
    if extra_ids < 0:
      raise ValueError(f'extra_ids must be >= 0, got {extra_ids}.')
    import sentencepiece as spm  # only tokenizing needs it
    proto = storage.read_bytes(path)
    try:
      # From bytes, so that the error names our path rather than sentencepiece's wording of it.
      self._sp = spm.SentencePieceProcessor(model_proto=proto)
    except Exception as e:  # sentencepiece raises RuntimeError/OSError depending on version.
      raise ValueError(f'{path}: not a valid SentencePiece model ({e}).') from e
    self.path = path
    self.extra_ids = extra_ids
    self._proto = proto
    self._t5: Optional[Any] = None  # the model with its sentinels, built for `text`
    self.sp_size = self._sp.get_piece_size()
    # T5 relies on pad=0 and eos=1; a model with other ids would silently shift every target.
    if self._sp.pad_id() not in (PAD_ID, -1) or self._sp.eos_id() != EOS_ID:
      raise ValueError(f'{path}: expected pad id {PAD_ID} and EOS id {EOS_ID} (T5 convention), '
                       f'got pad {self._sp.pad_id()} and EOS {self._sp.eos_id()}.')

  @property
  def vocab_size(self) -> int:
    return self.sp_size + self.extra_ids

  def encode(self, text: str) -> list[int]:
    return list(self._sp.encode(text, out_type=int))

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids` up to the first EOS; pad and extra (sentinel) ids are dropped."""
    kept = []
    for i in ids:
      i = int(i)
      if i == EOS_ID:
        break
      if i == PAD_ID or i < 0 or i >= self.sp_size:
        continue
      kept.append(i)
    return self._sp.decode(kept)

  def text(self, ids: Iterable[int]) -> str:
    """The text of generated ids as eval, infer and serve show it: T5's rule, which SeqIO's
    vocabulary (the tasks' own, data/vocabularies.py) applies. Text up to the first EOS; pad
    shows as nothing, sentinel k as '<extra_id_k>', an id past the vocabulary as the unknown
    piece ' ⁇ '. (`decode` drops sentinels and unknown ids, for readers of label words.)"""
    t5 = self._t5
    if t5 is None:
      t5 = self._t5 = _with_sentinels(self._proto, self.extra_ids)
    size, unk = t5.get_piece_size(), t5.unk_id()
    kept = []
    for i in ids:
      i = int(i)
      if i == EOS_ID:
        break
      if i > PAD_ID:
        kept.append(i if i < size else unk)
    return t5.decode(kept)

  def piece(self, token_id: int) -> str:
    """One id as its vocabulary entry: the SentencePiece piece ('▁the', '</s>', '<pad>'), or
    '<extra_id_N>' for a sentinel (T5 counts them down from the last id: 32099 is
    <extra_id_0>). Ids past the vocabulary raise ValueError."""
    token_id = int(token_id)
    if 0 <= token_id < self.sp_size:
      return self._sp.id_to_piece(token_id)
    if self.sp_size <= token_id < self.vocab_size:
      return f'<extra_id_{self.vocab_size - 1 - token_id}>'
    raise ValueError(f'{self.path}: id {token_id} is outside the vocabulary (0..'
                     f'{self.vocab_size - 1}).')

  def __repr__(self) -> str:
    return f'SentencePieceVocab({self.path!r}, extra_ids={self.extra_ids})'


def _with_sentinels(proto: bytes, extra_ids: int) -> Any:
  """The SentencePiece model with T5's sentinels appended as user-defined pieces
  '▁<extra_id_k>', k counting down (id sp_size is <extra_id_{extra_ids - 1}>): the model SeqIO's
  vocabulary builds from the same file, so both render ids alike."""
  import sentencepiece as spm
  from sentencepiece import sentencepiece_model_pb2 as model_pb2  # protobuf: a core dependency's
  # ModelProto is made at import by protobuf's builder (globals()), which mypy cannot see.
  model_proto = model_pb2.ModelProto  # type: ignore[attr-defined]
  model = model_proto.FromString(proto)
  for k in reversed(range(extra_ids)):
    model.pieces.add(piece=f'\u2581<extra_id_{k}>', score=0.0,
                     type=model_proto.SentencePiece.USER_DEFINED)
  return spm.SentencePieceProcessor(model_proto=model.SerializeToString())

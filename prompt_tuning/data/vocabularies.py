"""SeqIO vocabularies: T5's SentencePiece model (+100 sentinels) and raw bytes."""

from __future__ import annotations

import functools
import os
import threading
from typing import Callable, Optional

import seqio

from prompt_tuning import storage

DEFAULT_T5_VOCAB = 'gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model'
T5_EXTRA_IDS = 100
VOCAB_ENV = 'PROMPT_TUNING_VOCAB'

_VOCAB_HINT = (f'set ${VOCAB_ENV} or prompt_tuning.data.tasks.set_vocabulary_path to T5\'s '
               f'SentencePiece model "sentencepiece.model" (cc_all.32000), e.g. a local copy '
               f'of {DEFAULT_T5_VOCAB}')


class VocabularyError(ValueError):
  """The SentencePiece model file is missing or unreadable; the message is one line.

  First raised inside tf.data's tokenize map, autograph wraps it in a multi-line StagingError;
  prompt_tuning.data.pipeline re-raises the original, and tasks.check_vocabulary raises it
  before any dataset is built.
  """

  def __init__(self, message: str):
    super().__init__(message.replace('\n', ' '))


def _is_local(path: str) -> bool:
  return not storage.is_remote(path)


_URL_LOCK = threading.Lock()


class UrlSentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """A SentencePiece vocabulary whose model file is a URL (gs://...), read through
  prompt_tuning.storage on first use: SeqIO would open it with TensorFlow's GCS client, which
  ignores the emulator variables and is a second client. SentencePiece is handed a local copy
  (storage.local_copy); `sentencepiece_model_file` stays the URL."""

  def _model_context(self):
    if self._model:
      return self._model
    url = self._sentencepiece_model_file
    with _URL_LOCK:
      if self._model:
        return self._model
      try:
        storage.check_writable(url, 'SentencePiece model')  # names a missing bucket
        if not storage.isfile(url):
          raise VocabularyError(f'{url}: SentencePiece model file not found ({_VOCAB_HINT}).')
        local = storage.local_copy(url)
      except storage.StorageError as e:  # one line, also when raised inside tf.data
        raise VocabularyError(f'{str(e).rstrip(".")} ({_VOCAB_HINT}).') from None
      self._sentencepiece_model_file = local
      try:
        return super()._model_context()
      finally:
        self._sentencepiece_model_file = url


@functools.lru_cache(maxsize=None)
def _sentencepiece(path: str, extra_ids: int) -> seqio.SentencePieceVocabulary:
  # One object per file: seqio loads the model lazily and then keeps it.
  if not _is_local(path):
    return UrlSentencePieceVocabulary(path, extra_ids=extra_ids)  # lazy: network on first use
  vocab = seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)
  load_vocabulary(vocab)  # a local file is cheap to check now
  return vocab


def t5_vocabulary(path: Optional[str | os.PathLike] = None) -> seqio.SentencePieceVocabulary:
  """T5's `cc_all.32000` SentencePiece vocabulary: 32000 pieces + 100 extra ids = 32100.

  A local `path` that is missing or not a SentencePiece model raises VocabularyError here,
  before any dataset is built; URLs (gs://, the default) are read through
  prompt_tuning.storage on first use (a scheme no backend handles is an error here).
  """
  path = os.fspath(path) if path else DEFAULT_T5_VOCAB
  if not _is_local(path):
    try:
      storage.epath(path)  # checks the scheme has a backend; no network
    except storage.StorageError as e:
      raise VocabularyError(f'{str(e).rstrip(".")} ({_VOCAB_HINT}).') from None
  elif not os.path.isfile(path):
    what = ('is a directory, not a SentencePiece model file' if os.path.isdir(path)
            else 'SentencePiece model file not found')
    raise VocabularyError(f'{path}: {what} ({_VOCAB_HINT}).')
  return _sentencepiece(path, T5_EXTRA_IDS)


def load_vocabulary(vocab: seqio.Vocabulary) -> seqio.Vocabulary:
  """Loads `vocab`'s model file now (a DeferredVocabulary is resolved first) and returns it.

  SentencePiece files are otherwise read on first use, deep inside a tf.data pipeline; any
  failure to read or parse the file becomes a one-line VocabularyError naming it.
  """
  if isinstance(vocab, DeferredVocabulary):
    vocab = vocab.resolved
  if isinstance(vocab, seqio.SentencePieceVocabulary):
    path = vocab.sentencepiece_model_file
    try:
      vocab.load_model()
    except VocabularyError:  # a URL that cannot be read: the message names it
      raise
    except Exception as e:  # pylint: disable=broad-except  # TF, protobuf and SP raise many
      reason = ' '.join(str(e).split())[:200] or type(e).__name__
      raise VocabularyError(f'{path}: cannot load this SentencePiece model: {reason} '
                            f'({_VOCAB_HINT}).') from e
  return vocab


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

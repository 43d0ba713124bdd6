"""vocab: T5's special ids, the token mask and the TF-free SentencePiece tokenizer."""

import numpy as np
import pytest

from prompt_tuning.data import vocab as vocab_lib
from prompt_tuning.data.vocab import SentencePieceVocab
from prompt_tuning.testing import VOCAB



def test_token_mask_marks_real_tokens():
  tokens = np.array([[5, 1, 0, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(vocab_lib.token_mask(tokens),
                                [[True, True, False, False], [False] * 4])
  assert (vocab_lib.PAD_ID, vocab_lib.EOS_ID) == (0, 1)


@pytest.fixture
def vocab(shared):
  return SentencePieceVocab(shared(*VOCAB))


def test_vocab_sizes_and_round_trip(vocab):
  assert vocab.vocab_size == 32100 and vocab.sp_size == 32000
  assert (vocab.pad_id, vocab.eos_id) == (0, 1)
  for text in ('entailment', 'not_entailment', 'The movie was great!'):
    ids = vocab.encode(text)
    assert ids and vocab.eos_id not in ids
    assert vocab.decode(ids) == text


def test_vocab_decode_stops_at_eos_and_skips_pad_and_sentinels(vocab):
  ids = vocab.encode('positive')
  # A sentinel (32000 + k) and pads in between are dropped; everything after EOS is ignored.
  noisy = [0] + ids[:1] + [32005, 0] + ids[1:] + [1] + vocab.encode('negative')
  assert vocab.decode(noisy) == 'positive'
  assert vocab.decode(np.asarray(ids + [1, 0, 0])) == 'positive'


def test_vocab_missing_and_corrupt_files_name_the_path(tmp_path):
  missing = str(tmp_path / 'nope.model')
  with pytest.raises(FileNotFoundError, match='nope.model'):
    SentencePieceVocab(missing)
  bad = tmp_path / 'bad.model'
  bad.write_bytes(b'not a sentencepiece model')
  with pytest.raises(ValueError, match='bad.model'):
    SentencePieceVocab(str(bad))


# ----------------------------------------------------------------------------------------------
# Initializers.

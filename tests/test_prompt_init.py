"""prompt_init: the initializers (random uniform, sampled vocab, class labels, string, array)."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.prompts import init as prompt_init
from prompt_tuning.data.vocab import SentencePieceVocab
from prompt_tuning.testing import VOCAB

RNG = jax.random.PRNGKey(0)
RELEASED = ('fixtures', 'released_prompts', 't5_1_1_lm100k_base')


def table(v=50, d=6, seed=0):
  """An embedding table whose rows are all distinct."""
  return np.random.RandomState(seed).randn(v, d).astype(np.float32)


def row_indices(rows_PxD, table_VxD):
  """For each row, the index of the identical table row (asserting there is one)."""
  rows_PxD = np.asarray(rows_PxD)
  dist_PxV = np.abs(rows_PxD[:, None, :] - table_VxD[None, :, :]).max(-1)
  idx = dist_PxV.argmin(-1)
  np.testing.assert_array_equal(rows_PxD, table_VxD[idx])
  return idx


def marker(value):
  """A fallback whose rows are recognisable."""
  def init(rng, shape, dtype=jnp.float32):
    del rng
    return jnp.full(shape, value, dtype)
  return init


# ----------------------------------------------------------------------------------------------
# Vocabulary-backed initializers use the real SentencePiece model.


@pytest.fixture
def vocab(shared):
  return SentencePieceVocab(shared(*VOCAB))


def test_random_uniform_bounds_and_determinism():
  init = prompt_init.random_uniform()
  x = np.asarray(init(RNG, (64, 32)))
  assert x.shape == (64, 32) and x.dtype == np.float32
  # Symmetric around 0, not flax's U[0, scale).
  assert x.min() >= -0.5 and x.max() <= 0.5 and x.min() < -0.45 and x.max() > 0.45
  np.testing.assert_array_equal(x, init(RNG, (64, 32)))
  assert not np.array_equal(x, init(jax.random.PRNGKey(1), (64, 32)))
  small = np.asarray(prompt_init.random_uniform(0.1)(RNG, (64, 32)))
  assert np.abs(small).max() <= 0.1


def test_sampled_vocab_without_replacement_from_first_rows():
  emb = table(50)
  init = prompt_init.sampled_vocab(emb, population=20)
  idx = row_indices(init(RNG, (12, 6)), emb)
  assert len(set(idx)) == 12 and idx.max() < 20
  # P == population: every one of the first rows exactly once.
  assert sorted(row_indices(init(RNG, (20, 6)), emb)) == list(range(20))
  np.testing.assert_array_equal(init(RNG, (12, 6)), init(RNG, (12, 6)))
  assert not np.array_equal(init(RNG, (12, 6)), init(jax.random.PRNGKey(3), (12, 6)))


def test_sampled_vocab_with_replacement_and_clamped_population():
  emb = table(50)
  idx = row_indices(prompt_init.sampled_vocab(emb, population=5)(RNG, (30, 6)), emb)
  assert idx.max() < 5 and len(set(idx)) <= 5  # 30 rows from 5: repeats
  # population > V is clamped to V: a permutation of all rows.
  idx = row_indices(prompt_init.sampled_vocab(emb, population=1000)(RNG, (50, 6)), emb)
  assert sorted(idx) == list(range(50))


def test_initializers_check_the_width():
  with pytest.raises(ValueError, match=r'\[V, 6\].*\(4, 7\)'):
    prompt_init.sampled_vocab(table())(RNG, (4, 7))
  with pytest.raises(ValueError, match=r'\(4, 6, 1\)'):
    prompt_init.random_uniform()(RNG, (4, 6, 1))


def test_class_labels_from_token_ids_with_fallback():
  emb = table()
  labels = [[3, 4], [7], [10, 11, 12]]
  out = np.asarray(prompt_init.class_labels(emb, labels, fallback=marker(9.0))(RNG, (5, 6)))
  for i, ids in enumerate(labels):
    np.testing.assert_allclose(out[i], emb[ids].mean(0), rtol=1e-6)
  np.testing.assert_array_equal(out[3:], 9.0)


def test_class_labels_default_fallback_samples_the_vocabulary():
  emb = table(40)
  out = np.asarray(prompt_init.class_labels(emb, [5, [6, 8]])(RNG, (10, 6)))
  np.testing.assert_allclose(out[0], emb[5])
  np.testing.assert_allclose(out[1], emb[[6, 8]].mean(0), rtol=1e-6)
  idx = row_indices(out[2:], emb)
  assert len(set(idx)) == 8  # sampled without replacement


def test_class_labels_with_real_vocab(vocab):
  emb = table(32128, 8)
  labels = ['entailment', 'not_entailment']
  out = np.asarray(prompt_init.class_labels(emb, labels, vocab, fallback=marker(-3.0))(RNG, (4, 8)))
  for i, label in enumerate(labels):
    ids = vocab.encode(label)
    assert len(ids) > 1  # a real mean, not a single row
    np.testing.assert_allclose(out[i], emb[ids].mean(0), rtol=1e-5)
  assert not np.allclose(out[0], out[1])
  np.testing.assert_array_equal(out[2:], -3.0)
  with pytest.raises(ValueError, match="label ''"):
    prompt_init.class_labels(emb, ['positive', ''], vocab)


def test_class_labels_errors_and_truncation(caplog):
  emb = table()
  with pytest.raises(ValueError, match='vocab'):
    prompt_init.class_labels(emb, ['positive'])
  with pytest.raises(ValueError, match=r'label \[\]'):
    prompt_init.class_labels(emb, [[1], []])
  with pytest.raises(ValueError, match='outside the embedding table'):
    prompt_init.class_labels(emb, [[1, 50]])
  init = prompt_init.class_labels(emb, [[1], [2], [3]], fallback=marker(0.0))
  with caplog.at_level(logging.WARNING):
    out = np.asarray(init(RNG, (2, 6)))
  assert 'first 2 labels' in caplog.text
  np.testing.assert_array_equal(out, emb[[1, 2]])


def test_from_string_ids_and_truncation(caplog):
  emb = table()
  out = np.asarray(prompt_init.from_string(emb, [5, 9, 2], fallback=marker(4.0))(RNG, (5, 6)))
  np.testing.assert_array_equal(out[:3], emb[[5, 9, 2]])
  np.testing.assert_array_equal(out[3:], 4.0)
  with caplog.at_level(logging.WARNING):
    out = np.asarray(prompt_init.from_string(emb, [5, 9, 2])(RNG, (2, 6)))
  assert 'truncating' in caplog.text
  np.testing.assert_array_equal(out, emb[[5, 9]])


def test_from_string_text(vocab):
  emb = table(32128, 8)
  text = 'Classify this sentence'
  ids = vocab.encode(text)
  out = np.asarray(prompt_init.from_string(emb, text, vocab, fallback=marker(2.0))(RNG, (10, 8)))
  np.testing.assert_array_equal(out[:len(ids)], emb[ids])
  np.testing.assert_array_equal(out[len(ids):], 2.0)


def test_from_array_checks_shape():
  arr = table(4)
  np.testing.assert_array_equal(prompt_init.from_array(arr)(RNG, (4, 6)), arr)
  with pytest.raises(ValueError) as e:
    prompt_init.from_array(arr)(RNG, (5, 6))
  assert '(4, 6)' in str(e.value) and '(5, 6)' in str(e.value)


def test_initializers_run_under_jit():
  emb = table()
  for init, expected in ((prompt_init.from_array(emb[:4]), emb[:4]),
                         (prompt_init.class_labels(emb, [[1, 2]], fallback=marker(1.0)),
                          np.concatenate([emb[[1, 2]].mean(0, keepdims=True),
                                          np.ones((3, 6), np.float32)]))):
    got = jax.jit(lambda rng, init=init: init(rng, (4, 6)))(RNG)
    assert got.shape == (4, 6) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6)

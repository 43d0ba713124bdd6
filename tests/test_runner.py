"""The runner (inference/runner.py): batches by length, one batch equals rows run alone, an
ensemble's members in one pass equal each member alone, the one token-to-text rule, and where
eval/infer find a prompt."""

import jax
import numpy as np
import pytest

from prompt_tuning.data import batching
from prompt_tuning.inference import decoding, runner
from prompt_tuning.models import t5
from prompt_tuning.train import model_dir as model_dir_lib

CONFIG = t5.T5Config(vocab_size=384, d_model=16, d_ff=32, num_heads=2, head_dim=8,
                     num_encoder_layers=1, num_decoder_layers=1, dtype='float32')
GREEDY = decoding.DecodingConfig()


@pytest.fixture(scope='module')
def frozen():
  return t5.init_params(CONFIG, jax.random.PRNGKey(0))


def _table(k, length=3):
  return np.random.RandomState(k).normal(size=(k, length, CONFIG.d_model)).astype(np.float32)


def _rows(n, seed=0):
  rng = np.random.RandomState(seed)
  return batching.pad_rows([list(rng.randint(3, 300, size=rng.randint(1, 14))) + [1]
                            for _ in range(n)], width=16)


def test_batches_go_by_length_in_fixed_shapes():
  inputs = _rows(7)
  ids = np.arange(7, dtype=np.int32)
  seen = []
  for indices, tokens, batch_ids in runner.batches(inputs, 3, buckets=(4, 8, 16),
                                                   prompt_ids_N=ids):
    lengths = batching.row_lengths(inputs[indices])
    assert tokens.shape[0] == 3 and tokens.shape[1] == batching.bucket_for(lengths.max(),
                                                                           (4, 8, 16))
    np.testing.assert_array_equal(tokens[:len(indices)], inputs[indices, :tokens.shape[1]])
    assert not tokens[len(indices):].any() and not batch_ids[len(indices):].any()
    np.testing.assert_array_equal(batch_ids[:len(indices)], ids[indices])
    seen.append(lengths)
  flat = np.concatenate(seen)
  assert list(flat) == sorted(flat) and len(flat) == 7
  # Without buckets: in order, at full width.
  order = [i for indices, tokens, _ in runner.batches(inputs, 3) for i in indices]
  assert order == list(range(7))
  assert {t.shape for _, t, _ in runner.batches(inputs, 3)} == {(3, 16)}


def test_mixed_prompts_in_one_batch_equal_each_prompt_alone(frozen):
  table = _table(3)
  mixed = runner.PromptedModel(CONFIG, frozen, table, names=['a', 'b', 'c'])
  inputs, names = _rows(8), ['a', 'b', 'c', 'a', 'c', 'b', 'b', 'a']
  ids = mixed.prompt_ids(names)
  buckets = batching.auto_buckets(16)
  together = mixed.generate_rows(inputs, GREEDY, 4, batch_size=4, buckets=buckets,
                                 prompt_ids_N=ids)
  for k, name in enumerate('abc'):
    alone = runner.PromptedModel(CONFIG, frozen, table[k])
    assert not alone.is_table
    picked = [i for i, n in enumerate(names) if n == name]
    np.testing.assert_array_equal(
        alone.generate_rows(inputs[picked], GREEDY, 4, batch_size=4, buckets=buckets),
        together[picked])
  with pytest.raises(ValueError, match="no prompt named 'd'"):
    mixed.prompt_ids(['d'])


def test_members_in_one_pass_equal_each_member_alone(frozen):
  table = _table(2)
  both = runner.PromptedModel(CONFIG, frozen, table)
  inputs = _rows(5, seed=1)
  candidates = runner.label_targets(_Letters(), ['ab', 'c'], width=4)
  scores = both.score_rows(inputs, candidates, batch_size=2, members=2)
  generated = both.generate_rows(inputs, GREEDY, 3, batch_size=2, members=2)
  assert scores.shape == (2, 5, 2) and generated.shape == (2, 5, 3)
  for m in range(2):
    alone = runner.PromptedModel(CONFIG, frozen, table[m])
    np.testing.assert_allclose(alone.score_rows(inputs, candidates, batch_size=2), scores[m],
                               rtol=0, atol=1e-5)
    np.testing.assert_array_equal(alone.generate_rows(inputs, GREEDY, 3, batch_size=2),
                                  generated[m])


def test_a_model_assembled_elsewhere_runs_the_same(frozen):
  built = runner.PromptedModel(CONFIG, frozen, _table(1)[0])
  wrapped = runner.PromptedModel.of(built.module, built.params)
  inputs = _rows(3)
  np.testing.assert_array_equal(wrapped.generate_rows(inputs, GREEDY, 3, batch_size=4),
                                built.generate_rows(inputs, GREEDY, 3, batch_size=4))
  with pytest.raises(ValueError, match='width 8 but the model'):
    runner.PromptedModel(CONFIG, frozen, np.zeros((3, 8), np.float32))


class _Letters:
  """A stand-in vocabulary: 'a' -> 5, 'b' -> 6, ...; decode as letters."""
  eos_id = 1

  def encode(self, text):
    return [ord(c) - ord('a') + 5 for c in text]

  def decode(self, ids):
    ids = list(ids)
    ids = ids[:ids.index(1)] if 1 in ids else ids
    return ''.join(chr(i - 5 + ord('a')) for i in ids)


def test_text_and_inputs_follow_t5s_rules():
  vocab = _Letters()
  assert runner.input_row(vocab, 'abcdef', 4) == [5, 6, 7, 1]  # cut to leave room for EOS
  np.testing.assert_array_equal(runner.label_targets(vocab, ['ab', 'c']), [[5, 6, 1], [7, 1, 0]])
  assert runner.text(vocab, np.array([5, 0, 6, 1, 7, 0])) == 'ab'  # pad dropped, cut at EOS


def test_text_is_one_rule_for_seqio_and_the_tf_free_vocabulary(shared):
  seqio = pytest.importorskip('seqio')
  from prompt_tuning.data.vocab import SentencePieceVocab
  path = shared('fixtures', 't5_vocab', 'sentencepiece.model')
  tf_free = SentencePieceVocab(path)
  with_tf = seqio.SentencePieceVocabulary(path, extra_ids=100)
  for ids in ([363, 19, 3, 9, 1, 5], [32099, 3, 32000, 0, 12, 1], [31999, 32150, 7, 0, 0],
              [0, 0, 1, 4], list(range(2, 40))):
    assert runner.text(tf_free, ids) == runner.text(with_tf, ids), ids


def test_prompt_for_eval_from_a_file_or_model_dir(tmp_path):
  value = np.arange(12, dtype=np.float32).reshape(3, 4)
  path = tmp_path / 'prompt.npy'
  np.save(path, value)
  prompt, step, names = runner.find_prompt(None, str(path), None)
  assert step == 0 and np.array_equal(prompt, value) and names is None
  assert runner.find_prompt(None, str(path), 7)[1] == 7
  # MODEL_DIR: the latest committed step's numpy prompt.
  model_dir = str(tmp_path / 'run')
  for step in (2, 4):
    model_dir_lib.write_numpy_prompt(model_dir, step, value + step)
  (tmp_path / 'run' / 'checkpoints' / '2').mkdir(parents=True)
  prompt, step, _ = runner.find_prompt(model_dir, None, None)
  assert step == 2 and np.array_equal(prompt, value + 2)  # step 4 was never committed
  with pytest.raises(ValueError, match='Nothing to evaluate: set PROMPT_FILE or MODEL_DIR'):
    runner.find_prompt(None, None, None)

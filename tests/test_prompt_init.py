"""Prompt initializers, prompt-file loading (numpy, T5X, PEFT) and the SentencePiece vocabulary."""

import json
import logging
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from prompt_tuning import checkpoints, prompts
from prompt_tuning.checkpoints import t5x
from prompt_tuning.models import t5
from prompt_tuning.vocab import SentencePieceVocab

RNG = jax.random.PRNGKey(0)
VOCAB = ('fixtures', 't5_vocab', 'sentencepiece.model')
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
# Vocabulary.


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


def test_random_uniform_bounds_and_determinism():
  init = prompts.random_uniform()
  x = np.asarray(init(RNG, (64, 32)))
  assert x.shape == (64, 32) and x.dtype == np.float32
  # Symmetric around 0, not flax's U[0, scale).
  assert x.min() >= -0.5 and x.max() <= 0.5 and x.min() < -0.45 and x.max() > 0.45
  np.testing.assert_array_equal(x, init(RNG, (64, 32)))
  assert not np.array_equal(x, init(jax.random.PRNGKey(1), (64, 32)))
  small = np.asarray(prompts.random_uniform(0.1)(RNG, (64, 32)))
  assert np.abs(small).max() <= 0.1


def test_sampled_vocab_without_replacement_from_first_rows():
  emb = table(50)
  init = prompts.sampled_vocab(emb, population=20)
  idx = row_indices(init(RNG, (12, 6)), emb)
  assert len(set(idx)) == 12 and idx.max() < 20
  # P == population: every one of the first rows exactly once.
  assert sorted(row_indices(init(RNG, (20, 6)), emb)) == list(range(20))
  np.testing.assert_array_equal(init(RNG, (12, 6)), init(RNG, (12, 6)))
  assert not np.array_equal(init(RNG, (12, 6)), init(jax.random.PRNGKey(3), (12, 6)))


def test_sampled_vocab_with_replacement_and_clamped_population():
  emb = table(50)
  idx = row_indices(prompts.sampled_vocab(emb, population=5)(RNG, (30, 6)), emb)
  assert idx.max() < 5 and len(set(idx)) <= 5  # 30 rows from 5: repeats
  # population > V is clamped to V: a permutation of all rows.
  idx = row_indices(prompts.sampled_vocab(emb, population=1000)(RNG, (50, 6)), emb)
  assert sorted(idx) == list(range(50))


def test_initializers_check_the_width():
  with pytest.raises(ValueError, match=r'\[V, 6\].*\(4, 7\)'):
    prompts.sampled_vocab(table())(RNG, (4, 7))
  with pytest.raises(ValueError, match=r'\(4, 6, 1\)'):
    prompts.random_uniform()(RNG, (4, 6, 1))


def test_class_labels_from_token_ids_with_fallback():
  emb = table()
  labels = [[3, 4], [7], [10, 11, 12]]
  out = np.asarray(prompts.class_labels(emb, labels, fallback=marker(9.0))(RNG, (5, 6)))
  for i, ids in enumerate(labels):
    np.testing.assert_allclose(out[i], emb[ids].mean(0), rtol=1e-6)
  np.testing.assert_array_equal(out[3:], 9.0)


def test_class_labels_default_fallback_samples_the_vocabulary():
  emb = table(40)
  out = np.asarray(prompts.class_labels(emb, [5, [6, 8]])(RNG, (10, 6)))
  np.testing.assert_allclose(out[0], emb[5])
  np.testing.assert_allclose(out[1], emb[[6, 8]].mean(0), rtol=1e-6)
  idx = row_indices(out[2:], emb)
  assert len(set(idx)) == 8  # sampled without replacement


def test_class_labels_with_real_vocab(vocab):
  emb = table(32128, 8)
  labels = ['entailment', 'not_entailment']
  out = np.asarray(prompts.class_labels(emb, labels, vocab, fallback=marker(-3.0))(RNG, (4, 8)))
  for i, label in enumerate(labels):
    ids = vocab.encode(label)
    assert len(ids) > 1  # a real mean, not a single row
    np.testing.assert_allclose(out[i], emb[ids].mean(0), rtol=1e-5)
  assert not np.allclose(out[0], out[1])
  np.testing.assert_array_equal(out[2:], -3.0)
  with pytest.raises(ValueError, match="label ''"):
    prompts.class_labels(emb, ['positive', ''], vocab)


def test_class_labels_errors_and_truncation(caplog):
  emb = table()
  with pytest.raises(ValueError, match='vocab'):
    prompts.class_labels(emb, ['positive'])
  with pytest.raises(ValueError, match=r'label \[\]'):
    prompts.class_labels(emb, [[1], []])
  with pytest.raises(ValueError, match='outside the embedding table'):
    prompts.class_labels(emb, [[1, 50]])
  init = prompts.class_labels(emb, [[1], [2], [3]], fallback=marker(0.0))
  with caplog.at_level(logging.WARNING):
    out = np.asarray(init(RNG, (2, 6)))
  assert 'first 2 labels' in caplog.text
  np.testing.assert_array_equal(out, emb[[1, 2]])


def test_from_string_ids_and_truncation(caplog):
  emb = table()
  out = np.asarray(prompts.from_string(emb, [5, 9, 2], fallback=marker(4.0))(RNG, (5, 6)))
  np.testing.assert_array_equal(out[:3], emb[[5, 9, 2]])
  np.testing.assert_array_equal(out[3:], 4.0)
  with caplog.at_level(logging.WARNING):
    out = np.asarray(prompts.from_string(emb, [5, 9, 2])(RNG, (2, 6)))
  assert 'truncating' in caplog.text
  np.testing.assert_array_equal(out, emb[[5, 9]])


def test_from_string_text(vocab):
  emb = table(32128, 8)
  text = 'Classify this sentence'
  ids = vocab.encode(text)
  out = np.asarray(prompts.from_string(emb, text, vocab, fallback=marker(2.0))(RNG, (10, 8)))
  np.testing.assert_array_equal(out[:len(ids)], emb[ids])
  np.testing.assert_array_equal(out[len(ids):], 2.0)


def test_from_array_checks_shape():
  arr = table(4)
  np.testing.assert_array_equal(prompts.from_array(arr)(RNG, (4, 6)), arr)
  with pytest.raises(ValueError) as e:
    prompts.from_array(arr)(RNG, (5, 6))
  assert '(4, 6)' in str(e.value) and '(5, 6)' in str(e.value)


def test_initializers_run_under_jit():
  emb = table()
  for init, expected in ((prompts.from_array(emb[:4]), emb[:4]),
                         (prompts.class_labels(emb, [[1, 2]], fallback=marker(1.0)),
                          np.concatenate([emb[[1, 2]].mean(0, keepdims=True),
                                          np.ones((3, 6), np.float32)]))):
    got = jax.jit(lambda rng: init(rng, (4, 6)))(RNG)
    assert got.shape == (4, 6) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Prompt files: numpy.


def test_load_npy_and_extensionless_numpy_checkpoint(tmp_path):
  arr = np.random.RandomState(1).randn(3, 5)  # float64 on disk
  np.save(tmp_path / 'p.npy', arr)
  got = prompts.load_prompt_file(str(tmp_path / 'p.npy'))
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, arr, rtol=1e-6)
  # T5X prompt tuning's numpy_checkpoints/ writes through a file handle: no extension.
  ckpt = tmp_path / 'numpy_checkpoints' / 'checkpoint_1000'
  ckpt.mkdir(parents=True)
  name = ckpt / 'encoder.prompt.prompt.prompt'
  with open(name, 'wb') as f:
    np.save(f, arr.astype(np.float32))
  assert not os.path.exists(str(name) + '.npy')
  np.testing.assert_allclose(prompts.load_prompt_file(name), arr, rtol=1e-6)
  out = prompts.from_file(name)(RNG, (3, 5))
  np.testing.assert_allclose(out, arr, rtol=1e-6)


def test_shared_prompt_fixture(shared):
  path = shared('fixtures', 'prompt_5x256.npy')
  got = prompts.load_prompt_file(path)
  assert got.shape == (5, 256) and got.dtype == np.float32
  np.testing.assert_allclose(got, np.load(path), rtol=1e-6)


@pytest.mark.parametrize('task', ['sst2', 'mrpc', 'rte'])
def test_released_prompts(shared, task):
  path = shared(*RELEASED, f'{task}.npy')
  got = prompts.load_prompt_file(path)
  assert got.shape == (100, 768) and got.dtype == np.float32
  assert np.all(np.isfinite(got)) and got.std() > 0
  np.testing.assert_array_equal(got, np.load(path))
  np.testing.assert_array_equal(prompts.from_file(path)(RNG, (100, 768)), got)
  with pytest.raises(ValueError, match=f'{task}.npy'):
    prompts.from_file(path)(RNG, (20, 768))


def test_missing_unknown_wrong_rank_and_corrupt(tmp_path):
  missing = str(tmp_path / 'absent.npy')
  with pytest.raises(FileNotFoundError, match='absent.npy'):
    prompts.load_prompt_file(missing)
  text = tmp_path / 'prompt.txt'
  text.write_text('0.1 0.2')
  with pytest.raises(ValueError, match=r'prompt\.txt.*\.npy.*T5X.*PEFT'):
    prompts.load_prompt_file(str(text))
  with pytest.raises(ValueError, match='not a prompt file'):
    prompts.load_prompt_file(str(tmp_path))  # an empty directory
  np.save(tmp_path / 'cube.npy', np.zeros((3, 4, 5), np.float32))
  with pytest.raises(ValueError, match=r'cube\.npy.*\(3, 4, 5\)'):
    prompts.load_prompt_file(str(tmp_path / 'cube.npy'))
  np.save(tmp_path / 'ints.npy', np.zeros((3, 4), np.int32))
  with pytest.raises(ValueError, match=r'ints\.npy.*int32'):
    prompts.load_prompt_file(str(tmp_path / 'ints.npy'))
  (tmp_path / 'fake.npy').write_bytes(b'garbage')
  with pytest.raises(ValueError, match='fake.npy'):
    prompts.load_prompt_file(str(tmp_path / 'fake.npy'))
  with open(tmp_path / 'short.npy', 'wb') as f:
    f.write(open(tmp_path / 'cube.npy', 'rb').read()[:100])  # header intact, data cut
  with pytest.raises(ValueError, match='short.npy'):
    prompts.load_prompt_file(str(tmp_path / 'short.npy'))


# ----------------------------------------------------------------------------------------------
# Prompt files: T5X checkpoints.


@pytest.fixture(scope='module')
def t5x_prompt_ckpt(tmp_path_factory):
  """(model dir, checkpoint dir, prompt) of a tiny model saved with a 4-token prompt."""
  config = t5.T5Config.preset('tiny')
  params = t5.init_params(config, prompt=prompts.PromptConfig(4))
  model_dir = str(tmp_path_factory.mktemp('t5x'))
  ckpt_dir = checkpoints.save_t5x(model_dir, params, step=7)
  return model_dir, ckpt_dir, np.asarray(prompts.get_prompt(params))


def test_t5x_prompt_reads_back_equal(t5x_prompt_ckpt):
  model_dir, ckpt_dir, prompt = t5x_prompt_ckpt
  assert prompt.shape[0] == 4 and prompt.std() > 0
  for path, variable in ((ckpt_dir, None), (model_dir, None),
                         (os.path.join(ckpt_dir, 'checkpoint'), None),
                         (ckpt_dir, 'target/encoder/prompt/prompt/prompt'),
                         (ckpt_dir, 'encoder.prompt.prompt.prompt')):
    got = prompts.load_prompt_file(path, variable)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, prompt)


def test_t5x_read_params_reads_only_requested_keys(t5x_prompt_ckpt):
  _, ckpt_dir, prompt = t5x_prompt_ckpt
  flat, step, _ = t5x.read_params(ckpt_dir, keys=['encoder/prompt/prompt/prompt',
                                                  'token_embedder/embedding'])
  assert sorted(flat) == ['encoder/prompt/prompt/prompt', 'token_embedder/embedding']
  assert step == 7
  np.testing.assert_array_equal(flat['encoder/prompt/prompt/prompt'], prompt)
  full, _, _ = t5x.read_params(ckpt_dir)
  np.testing.assert_array_equal(flat['token_embedder/embedding'], full['token_embedder/embedding'])
  assert len(full) > 10  # the default still reads everything
  sub, _, _ = t5x.read_params(ckpt_dir, keys=['encoder/prompt'])
  assert list(sub) == ['encoder/prompt/prompt/prompt']


def test_t5x_missing_variable_lists_prompt_keys(t5x_prompt_ckpt):
  _, ckpt_dir, _ = t5x_prompt_ckpt
  with pytest.raises(checkpoints.CheckpointError) as e:
    prompts.load_prompt_file(ckpt_dir, 'decoder/prompt/prompt/prompt')
  msg = str(e.value)
  assert ckpt_dir in msg and 'decoder/prompt/prompt/prompt' in msg
  assert 'encoder/prompt/prompt/prompt' in msg
  with pytest.raises(ValueError, match='subtree'):
    prompts.load_prompt_file(ckpt_dir, 'encoder/prompt')


def test_t5x_checkpoint_without_prompt(shared):
  """The real model-only checkpoint: the error says there is no prompt to read."""
  fixture = shared('fixtures', 't5x_tiny', 'checkpoint_3')
  with pytest.raises(checkpoints.CheckpointError, match=r'checkpoint_3.*no parameter'):
    prompts.load_prompt_file(fixture)


# ----------------------------------------------------------------------------------------------
# Prompt files: PEFT adapters.


def write_peft(directory, prompt, **config):
  os.makedirs(directory, exist_ok=True)
  config = {'peft_type': 'PROMPT_TUNING', 'task_type': 'SEQ_2_SEQ_LM',
            'num_virtual_tokens': prompt.shape[0], 'num_transformer_submodules': 1,
            'token_dim': prompt.shape[1], **config}
  with open(os.path.join(directory, 'adapter_config.json'), 'w') as f:
    json.dump(config, f)
  save_file({'prompt_embeddings': prompt}, os.path.join(directory, 'adapter_model.safetensors'))
  return str(directory)


def test_peft_adapter_dir_and_file(tmp_path):
  prompt = table(4, 8)
  adapter = write_peft(tmp_path / 'adapter', prompt)
  np.testing.assert_array_equal(prompts.load_prompt_file(adapter), prompt)
  weights = os.path.join(adapter, 'adapter_model.safetensors')
  np.testing.assert_array_equal(prompts.load_prompt_file(weights), prompt)
  # A lone .safetensors without its config is read as an encoder prompt.
  lone = tmp_path / 'lone'
  lone.mkdir()
  save_file({'prompt_embeddings': prompt}, str(lone / 'prompt.safetensors'))
  np.testing.assert_array_equal(prompts.load_prompt_file(str(lone / 'prompt.safetensors')),
                                prompt)


def test_peft_bfloat16_adapter(tmp_path):
  torch = pytest.importorskip('torch')
  from safetensors.torch import save_file as save_torch
  prompt = torch.randn(3, 8).to(torch.bfloat16)
  path = str(tmp_path / 'bf16.safetensors')
  save_torch({'prompt_embeddings': prompt}, path)
  np.testing.assert_array_equal(prompts.load_prompt_file(path), prompt.float().numpy())


def test_peft_errors_name_the_file(tmp_path):
  prompt = table(4, 8)
  # Two submodules: the first P rows are the encoder prompt (PEFT never applies the rest).
  two = write_peft(tmp_path / 'two', np.concatenate([prompt, -prompt]),
                   num_virtual_tokens=4, num_transformer_submodules=2)
  np.testing.assert_array_equal(prompts.load_prompt_file(two), prompt)
  lora = write_peft(tmp_path / 'lora', prompt, peft_type='LORA')
  with pytest.raises(ValueError, match=r'lora.*LORA'):
    prompts.load_prompt_file(lora)
  wrong = write_peft(tmp_path / 'wrong', prompt, num_virtual_tokens=5)
  with pytest.raises(ValueError, match=r'\(4, 8\).*num_virtual_tokens=5'):
    prompts.load_prompt_file(wrong)
  other = tmp_path / 'other.safetensors'
  save_file({'weight': prompt}, str(other))
  with pytest.raises(ValueError, match=r"other\.safetensors.*'weight'"):
    prompts.load_prompt_file(str(other))
  (tmp_path / 'junk.safetensors').write_bytes(b'\xff' * 20)
  with pytest.raises(ValueError, match='junk.safetensors'):
    prompts.load_prompt_file(str(tmp_path / 'junk.safetensors'))


def test_real_peft_adapter(tmp_path):
  """An adapter saved by PEFT itself from a tiny transformers T5."""
  pytest.importorskip('torch')
  peft = pytest.importorskip('peft')
  transformers = pytest.importorskip('transformers')
  config = transformers.T5Config(vocab_size=64, d_model=8, d_kv=4, d_ff=16, num_layers=1,
                                 num_heads=2, feed_forward_proj='gated-gelu')
  base = transformers.T5ForConditionalGeneration(config)
  model = peft.get_peft_model(base, peft.PromptTuningConfig(
      task_type='SEQ_2_SEQ_LM', num_virtual_tokens=5, num_transformer_submodules=1))
  model.save_pretrained(str(tmp_path / 'enc'))
  expected = model.get_prompt_embedding_to_save('default').detach().float().numpy()
  got = prompts.load_prompt_file(str(tmp_path / 'enc'))
  assert got.shape == (5, 8)
  np.testing.assert_array_equal(got, expected)
  # PEFT's seq2seq default stores 2P rows, but its forward prepends only the first P to the
  # encoder input; that block is the prompt PEFT runs.
  both = peft.get_peft_model(transformers.T5ForConditionalGeneration(config),
                             peft.PromptTuningConfig(task_type='SEQ_2_SEQ_LM',
                                                     num_virtual_tokens=5))
  both.save_pretrained(str(tmp_path / 'both'))
  stored = both.get_prompt_embedding_to_save('default').detach().float().numpy()
  assert stored.shape == (10, 8)
  np.testing.assert_array_equal(prompts.load_prompt_file(str(tmp_path / 'both')), stored[:5])

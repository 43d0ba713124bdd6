"""prompt_files: reading every prompt format, and writing a PEFT adapter that PEFT runs to the
same logits, a T5X checkpoint, .npy."""

import json
import os

import jax
import numpy as np
import peft
import pytest
import torch
from safetensors.numpy import save_file

from hf_reference import hf_forward, make_hf_t5, max_rel_err, padded_batch
from prompt_tuning import checkpoints
from prompt_tuning.prompts import files as prompt_files, init as prompt_init
from prompt_tuning.checkpoints import t5x
from prompt_tuning.checkpoints.common import flatten
from prompt_tuning.models import t5
from prompt_tuning.models.prompt import PromptConfig, get_prompt, merge_params, prompt_tree
from prompt_tuning.testing import FIXTURE, synthetic_batch
from train_fixtures import make_trainer

RNG = jax.random.PRNGKey(0)
RELEASED = ('fixtures', 'released_prompts', 't5_1_1_lm100k_base')


def table(v=50, d=6, seed=0):
  """An embedding table whose rows are all distinct."""
  return np.random.RandomState(seed).randn(v, d).astype(np.float32)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A prompt trained here for 3 steps on a random transformers T5 1.1 loaded from safetensors."""
  hf_model = make_hf_t5()
  hf_dir = tmp_path_factory.mktemp('hf')
  hf_model.save_pretrained(hf_dir)
  config, frozen = checkpoints.load_params(str(hf_dir))
  config = config.replace(dtype='float32')
  trainer = make_trainer(config, frozen, prompt_length=4)
  state = trainer.init_state(np.random.RandomState(0).uniform(-0.5, 0.5, (4, config.d_model)))
  for i in range(3):
    state, _ = trainer.train_step(state, synthetic_batch(i))
  prompt = np.asarray(jax.device_get(get_prompt(state.params)))
  return hf_model, config, frozen, trainer, prompt


def test_peft_adapter_gives_the_same_logits(trained, tmp_path):
  hf_model, config, frozen, trainer, prompt = trained
  adapter = prompt_files.write_peft(str(tmp_path / 'adapter'), prompt, config)
  peft_model = peft.PeftModel.from_pretrained(hf_model, adapter).eval()
  assert peft_model.active_peft_config.num_virtual_tokens == 4
  enc, dec_in, tgt = padded_batch(config.vocab_size, enc_len=30, dec_len=10)
  with torch.no_grad():
    ref = peft_model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0).long(),
                     decoder_input_ids=torch.tensor(dec_in),
                     decoder_attention_mask=torch.tensor(tgt > 0).long()).logits.numpy()
  params = merge_params(frozen, prompt_tree(prompt))
  ours = np.asarray(jax.jit(trainer.model.apply)({'params': params}, enc, dec_in, tgt))
  valid = tgt > 0
  assert max_rel_err(ours[valid], ref[valid]) < 1e-4
  # The prompt matters: without it PEFT's base model gives different logits.
  plain, _ = hf_forward(hf_model, enc, dec_in, tgt)
  assert max_rel_err(plain[valid], ref[valid]) > 1e-3


def test_exported_t5x_checkpoint_keeps_the_base_and_adds_the_prompt(trained, tmp_path):
  _, config, frozen, _, prompt = trained
  path = prompt_files.write_t5x(str(tmp_path), frozen, prompt, step=3)
  _, params = checkpoints.load_params(path, config.replace(param_dtype='float32'))
  loaded = flatten(params)
  base = flatten(frozen)
  assert set(loaded) == set(base) | {'encoder/prompt/prompt/prompt'}
  for key, value in base.items():
    assert np.asarray(loaded[key]).tobytes() == np.asarray(value).tobytes(), key
  np.testing.assert_array_equal(loaded['encoder/prompt/prompt/prompt'], prompt)
  # ... and the prompt loader reads it back from there too.
  np.testing.assert_array_equal(prompt_files.load_prompt_file(path), prompt)


def test_numpy_export(trained, tmp_path):
  prompt = trained[-1]
  path = prompt_files.write_npy(str(tmp_path / 'p.npy'), prompt)
  np.testing.assert_array_equal(np.load(path), prompt)


def test_peft_export_refuses_wrong_width(trained, tmp_path):
  _, config, _, _, prompt = trained
  with pytest.raises(ValueError, match=r'Prompt width 16 does not match the model d_model 32'):
    prompt_files.write_peft(str(tmp_path), prompt[:, :16], config)


# ----------------------------------------------------------------------------------------------
# Prompt files: numpy.


def test_load_npy_and_extensionless_numpy_checkpoint(tmp_path):
  arr = np.random.RandomState(1).randn(3, 5)  # float64 on disk
  np.save(tmp_path / 'p.npy', arr)
  got = prompt_files.load_prompt_file(str(tmp_path / 'p.npy'))
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, arr, rtol=1e-6)
  # T5X prompt tuning's numpy_checkpoints/ writes through a file handle: no extension.
  ckpt = tmp_path / 'numpy_checkpoints' / 'checkpoint_1000'
  ckpt.mkdir(parents=True)
  name = ckpt / 'encoder.prompt.prompt.prompt'
  with open(name, 'wb') as f:
    np.save(f, arr.astype(np.float32))
  assert not os.path.exists(str(name) + '.npy')
  np.testing.assert_allclose(prompt_files.load_prompt_file(name), arr, rtol=1e-6)
  out = prompt_init.from_file(name)(RNG, (3, 5))
  np.testing.assert_allclose(out, arr, rtol=1e-6)


def test_shared_prompt_fixture(shared):
  path = shared('fixtures', 'prompt_5x256.npy')
  got = prompt_files.load_prompt_file(path)
  assert got.shape == (5, 256) and got.dtype == np.float32
  np.testing.assert_allclose(got, np.load(path), rtol=1e-6)


@pytest.mark.parametrize('task', ['sst2', 'mrpc', 'rte'])
def test_released_prompts(shared, task):
  path = shared(*RELEASED, f'{task}.npy')
  got = prompt_files.load_prompt_file(path)
  assert got.shape == (100, 768) and got.dtype == np.float32
  assert np.all(np.isfinite(got)) and got.std() > 0
  np.testing.assert_array_equal(got, np.load(path))
  np.testing.assert_array_equal(prompt_init.from_file(path)(RNG, (100, 768)), got)
  with pytest.raises(ValueError, match=f'{task}.npy'):
    prompt_init.from_file(path)(RNG, (20, 768))


def test_missing_unknown_wrong_rank_and_corrupt(tmp_path):
  missing = str(tmp_path / 'absent.npy')
  with pytest.raises(FileNotFoundError, match='absent.npy'):
    prompt_files.load_prompt_file(missing)
  text = tmp_path / 'prompt.txt'
  text.write_text('0.1 0.2')
  with pytest.raises(ValueError, match=r'prompt\.txt.*\.npy.*T5X.*PEFT'):
    prompt_files.load_prompt_file(str(text))
  with pytest.raises(ValueError, match='not a prompt file'):
    prompt_files.load_prompt_file(str(tmp_path))  # an empty directory
  np.save(tmp_path / 'cube.npy', np.zeros((3, 4, 5), np.float32))
  with pytest.raises(ValueError, match=r'cube\.npy.*\(3, 4, 5\)'):
    prompt_files.load_prompt_file(str(tmp_path / 'cube.npy'))
  np.save(tmp_path / 'ints.npy', np.zeros((3, 4), np.int32))
  with pytest.raises(ValueError, match=r'ints\.npy.*int32'):
    prompt_files.load_prompt_file(str(tmp_path / 'ints.npy'))
  (tmp_path / 'fake.npy').write_bytes(b'garbage')
  with pytest.raises(ValueError, match='fake.npy'):
    prompt_files.load_prompt_file(str(tmp_path / 'fake.npy'))
  with open(tmp_path / 'short.npy', 'wb') as f:
    f.write(open(tmp_path / 'cube.npy', 'rb').read()[:100])  # header intact, data cut
  with pytest.raises(ValueError, match='short.npy'):
    prompt_files.load_prompt_file(str(tmp_path / 'short.npy'))


# ----------------------------------------------------------------------------------------------
# Prompt files: T5X checkpoints.


@pytest.fixture(scope='module')
def t5x_prompt_ckpt(tmp_path_factory):
  """(model dir, checkpoint dir, prompt) of a tiny model saved with a 4-token prompt."""
  config = t5.T5Config.preset('tiny')
  params = t5.init_params(config, prompt=PromptConfig(4))
  model_dir = str(tmp_path_factory.mktemp('t5x'))
  ckpt_dir = checkpoints.save_t5x(model_dir, params, step=7)
  return model_dir, ckpt_dir, np.asarray(get_prompt(params))


def test_t5x_prompt_reads_back_equal(t5x_prompt_ckpt):
  model_dir, ckpt_dir, prompt = t5x_prompt_ckpt
  assert prompt.shape[0] == 4 and prompt.std() > 0
  for path, variable in ((ckpt_dir, None), (model_dir, None),
                         (os.path.join(ckpt_dir, 'checkpoint'), None),
                         (ckpt_dir, 'target/encoder/prompt/prompt/prompt'),
                         (ckpt_dir, 'encoder.prompt.prompt.prompt')):
    got = prompt_files.load_prompt_file(path, variable)
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
    prompt_files.load_prompt_file(ckpt_dir, 'decoder/prompt/prompt/prompt')
  msg = str(e.value)
  assert ckpt_dir in msg and 'decoder/prompt/prompt/prompt' in msg
  assert 'encoder/prompt/prompt/prompt' in msg
  with pytest.raises(ValueError, match='subtree'):
    prompt_files.load_prompt_file(ckpt_dir, 'encoder/prompt')


def test_t5x_checkpoint_without_prompt(shared):
  """The real model-only checkpoint: the error says there is no prompt to read."""
  fixture = shared(*FIXTURE)
  with pytest.raises(checkpoints.CheckpointError, match=r'checkpoint_3.*no parameter'):
    prompt_files.load_prompt_file(fixture)


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
  np.testing.assert_array_equal(prompt_files.load_prompt_file(adapter), prompt)
  weights = os.path.join(adapter, 'adapter_model.safetensors')
  np.testing.assert_array_equal(prompt_files.load_prompt_file(weights), prompt)
  # A lone .safetensors without its config is read as an encoder prompt.
  lone = tmp_path / 'lone'
  lone.mkdir()
  save_file({'prompt_embeddings': prompt}, str(lone / 'prompt.safetensors'))
  np.testing.assert_array_equal(prompt_files.load_prompt_file(str(lone / 'prompt.safetensors')),
                                prompt)


def test_peft_bfloat16_adapter(tmp_path):
  torch = pytest.importorskip('torch')
  from safetensors.torch import save_file as save_torch
  prompt = torch.randn(3, 8).to(torch.bfloat16)
  path = str(tmp_path / 'bf16.safetensors')
  save_torch({'prompt_embeddings': prompt}, path)
  np.testing.assert_array_equal(prompt_files.load_prompt_file(path), prompt.float().numpy())


def test_peft_errors_name_the_file(tmp_path):
  prompt = table(4, 8)
  # Two submodules: the first P rows are the encoder prompt (PEFT never applies the rest).
  two = write_peft(tmp_path / 'two', np.concatenate([prompt, -prompt]),
                   num_virtual_tokens=4, num_transformer_submodules=2)
  np.testing.assert_array_equal(prompt_files.load_prompt_file(two), prompt)
  lora = write_peft(tmp_path / 'lora', prompt, peft_type='LORA')
  with pytest.raises(ValueError, match=r'lora.*LORA'):
    prompt_files.load_prompt_file(lora)
  wrong = write_peft(tmp_path / 'wrong', prompt, num_virtual_tokens=5)
  with pytest.raises(ValueError, match=r'\(4, 8\).*num_virtual_tokens=5'):
    prompt_files.load_prompt_file(wrong)
  other = tmp_path / 'other.safetensors'
  save_file({'weight': prompt}, str(other))
  with pytest.raises(ValueError, match=r"other\.safetensors.*'weight'"):
    prompt_files.load_prompt_file(str(other))
  (tmp_path / 'junk.safetensors').write_bytes(b'\xff' * 20)
  with pytest.raises(ValueError, match='junk.safetensors'):
    prompt_files.load_prompt_file(str(tmp_path / 'junk.safetensors'))


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
  got = prompt_files.load_prompt_file(str(tmp_path / 'enc'))
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
  np.testing.assert_array_equal(prompt_files.load_prompt_file(str(tmp_path / 'both')), stored[:5])


# ---- decoder-only models: PEFT CAUSAL_LM adapters -------------------------------------------

def test_causal_lm_adapter_gives_our_prefix_logits(tmp_path):
  """A prompt of a decoder-only model exported as a PEFT CAUSAL_LM adapter:
  PeftModel.from_pretrained on the same transformers model gives the logits our model gives
  with the prompt placed before BOS; the file reads back as the same prompt."""
  from hf_decoder_reference import make_hf, saved_case
  from hf_decoder_reference import padded_batch as decoder_batch
  from prompt_tuning.models import decoder_only
  _, config, params = saved_case('llama3_tied', str(tmp_path / 'llama'))
  prompt = np.random.RandomState(4).normal(0, 0.5, (5, config.d_model)).astype(np.float32)
  adapter = prompt_files.write_peft(str(tmp_path / 'adapter'), prompt, config)
  assert json.load(open(os.path.join(adapter, 'adapter_config.json')))['task_type'] == 'CAUSAL_LM'
  np.testing.assert_array_equal(prompt_files.load_prompt_file(adapter), prompt)

  tokens, lengths = decoder_batch()
  real = np.arange(tokens.shape[1])[None, :] < lengths[:, None]
  model = peft.PeftModel.from_pretrained(make_hf('llama3_tied'), adapter).eval()
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                attention_mask=torch.tensor(real).long()).logits.numpy()[:, 5:]
  ours = np.asarray(decoder_only.DecoderOnly(config).apply({'params': params}, tokens, prompt))
  assert max_rel_err(ours[real], ref[real]) < 1e-4


def test_after_bos_prompt_is_not_exported_as_a_peft_adapter(tmp_path):
  from prompt_tuning.models.decoder_config import DecoderConfig
  config = DecoderConfig(d_model=8, dtype='float32')
  with pytest.raises(ValueError, match=r"trained at 'after_bos', which PEFT cannot place\. "
                     r"Export it as \.npy instead\."):
    prompt_files.write_peft(str(tmp_path / 'a'), np.zeros((2, 8), np.float32), config,
                            placement='after_bos')
  assert not (tmp_path / 'a').exists()

"""Exports: a PEFT adapter that PEFT runs to the same logits, a T5X checkpoint, .npy."""

import jax
import numpy as np
import peft
import pytest
import torch

from hf_reference import hf_forward, make_hf_t5, max_rel_err, padded_batch
from prompt_tuning import checkpoints, prompts
from prompt_tuning.checkpoints.common import flatten
from prompt_tuning.train import export
from train_fixtures import make_batch, make_trainer


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
    state, _ = trainer.train_step(state, make_batch(i))
  prompt = np.asarray(jax.device_get(prompts.get_prompt(state.params)))
  return hf_model, config, frozen, trainer, prompt


def test_peft_adapter_gives_the_same_logits(trained, tmp_path):
  hf_model, config, frozen, trainer, prompt = trained
  adapter = export.export_peft(str(tmp_path / 'adapter'), prompt, config)
  peft_model = peft.PeftModel.from_pretrained(hf_model, adapter).eval()
  assert peft_model.active_peft_config.num_virtual_tokens == 4
  enc, dec_in, tgt = padded_batch(config.vocab_size, enc_len=30, dec_len=10)
  with torch.no_grad():
    ref = peft_model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0).long(),
                     decoder_input_ids=torch.tensor(dec_in),
                     decoder_attention_mask=torch.tensor(tgt > 0).long()).logits.numpy()
  params = prompts.merge_params(frozen, prompts.prompt_tree(prompt))
  ours = np.asarray(jax.jit(trainer.model.apply)({'params': params}, enc, dec_in, tgt))
  valid = tgt > 0
  assert max_rel_err(ours[valid], ref[valid]) < 1e-4
  # The prompt matters: without it PEFT's base model gives different logits.
  plain, _ = hf_forward(hf_model, enc, dec_in, tgt)
  assert max_rel_err(plain[valid], ref[valid]) > 1e-3


def test_exported_t5x_checkpoint_keeps_the_base_and_adds_the_prompt(trained, tmp_path):
  _, config, frozen, _, prompt = trained
  path = export.export_t5x(str(tmp_path), frozen, prompt, step=3)
  _, params = checkpoints.load_params(path, config.replace(param_dtype='float32'))
  loaded = flatten(params)
  base = flatten(frozen)
  assert set(loaded) == set(base) | {'encoder/prompt/prompt/prompt'}
  for key, value in base.items():
    assert np.asarray(loaded[key]).tobytes() == np.asarray(value).tobytes(), key
  np.testing.assert_array_equal(loaded['encoder/prompt/prompt/prompt'], prompt)
  # ... and the prompt loader reads it back from there too.
  np.testing.assert_array_equal(prompts.load_prompt_file(path), prompt)


def test_numpy_export(trained, tmp_path):
  prompt = trained[-1]
  path = export.export_numpy(str(tmp_path / 'p.npy'), prompt)
  np.testing.assert_array_equal(np.load(path), prompt)


def test_peft_export_refuses_wrong_width(trained, tmp_path):
  _, config, _, _, prompt = trained
  with pytest.raises(ValueError, match=r'Prompt width 16 does not match the model d_model 32'):
    export.export_peft(str(tmp_path), prompt[:, :16], config)

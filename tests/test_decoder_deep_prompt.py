"""Deep (per-layer, P-tuning v2 style; not the paper's method) prompts of decoder-only models:
models/decoder_only.py's `deep` in the forward and in `prefill`, inference/causal_lm.py on the KV
cache, and train/decoder_trainer.py training them at encoder/prompt/deep/prompt.

Three layers (two deep rows), so each layer is seen to take its own row; d_model 32.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.inference import causal_lm
from prompt_tuning.models import decoder_only
from prompt_tuning.models import prompt as prompt_lib
from prompt_tuning.models.decoder_config import DecoderConfig
from prompt_tuning.train import optim
from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning.train.decoder_trainer import DecoderPromptTrainer

P, D = 3, 32
CONFIG = DecoderConfig(vocab_size=64, d_model=D, num_layers=3, num_heads=4, num_kv_heads=2,
                       head_dim=8, d_ff=64, dtype='float32')
# Right-padded rows, BOS (1) first.
TOKENS = np.array([[1, 5, 6, 7, 8, 9], [1, 10, 11, 0, 0, 0], [1, 12, 13, 14, 0, 0]], np.int32)
LENGTHS = np.array([6, 3, 4], np.int32)
REAL = np.arange(TOKENS.shape[1])[None, :] < LENGTHS[:, None]
STEPS = 6
KEY = jax.random.PRNGKey(0)


@pytest.fixture(scope='module')
def params():
  return decoder_only.init_params(CONFIG, jax.random.PRNGKey(0))


def _prompt(shape, seed=0):
  return np.random.RandomState(seed).normal(0, 0.5, shape + (D,)).astype(np.float32)


@functools.partial(jax.jit, static_argnames=('model',))
def _apply(model, params, tokens, prompt, deep=None):
  return model.apply({'params': params}, tokens, prompt, deep=deep)


def _forward(model, params, tokens, prompt, deep=None):
  return np.asarray(_apply(model, params, tokens, prompt, deep))


@functools.partial(jax.jit, static_argnames=('model',))
def _layer_inputs(model, params, prompt):
  """What enters each layer after the first (its predecessor's output) [L-1, B, M, D], with no
  deep prompts."""
  _, state = model.apply({'params': params}, TOKENS, prompt, mutable=['intermediates'],
                         capture_intermediates=lambda m, _: isinstance(m, decoder_only.Block))
  blocks = state['intermediates']
  return jnp.stack([blocks[f'layers_{i}']['__call__'][0] for i in range(CONFIG.num_layers - 1)])


@pytest.mark.parametrize('placement', ['prefix', 'after_bos'])
def test_deep_rows_equal_to_the_plain_hidden_states_give_the_plain_logits(params, placement):
  """Before layer i the prompt's positions get deep[i-1]: filled with what the plain model has
  there, the logits are the plain model's. Changing either row changes the tokens' logits."""
  model = decoder_only.DecoderOnly(CONFIG, placement)
  prompt = _prompt((P,))
  plain = _forward(model, params, TOKENS, prompt)
  start = decoder_only.PROMPT_START[placement]
  hidden = np.asarray(_layer_inputs(model, params, prompt))[:, :, start:start + P]  # [L-1,B,P,D]
  # The prompt's positions see only the prompt (and BOS): the same in every row.
  np.testing.assert_allclose(hidden, np.broadcast_to(hidden[:, :1], hidden.shape), atol=1e-6)
  deep = hidden[:, 0]
  np.testing.assert_allclose(_forward(model, params, TOKENS, prompt, deep)[REAL], plain[REAL],
                             atol=2e-6, rtol=0)
  for row in range(CONFIG.num_layers - 1):
    moved = deep.copy()
    moved[row] += 1.0
    changed = _forward(model, params, TOKENS, prompt, moved)
    # Every later token sees the changed keys/values. (After BOS, logits[:, 0] are the last
    # prompt position's own, which the last deep row overwrites before the last layer.)
    assert np.all(np.abs(changed - plain).max(-1)[:, 1:][REAL[:, 1:]] > 1e-4), row
  # Per-row deep prompts [B, L-1, P, D]: each row gets what its deep prompts give alone.
  if placement == 'after_bos':
    rows = np.stack([deep, moved, deep])
    mixed = _forward(model, params, TOKENS, prompt, rows)
    np.testing.assert_allclose(mixed[1][REAL[1]], changed[1][REAL[1]], atol=1e-6, rtol=0)
    np.testing.assert_allclose(mixed[0][REAL[0]], plain[0][REAL[0]], atol=2e-6, rtol=0)


def test_cached_greedy_equals_the_full_forward_with_deep_prompts(params):
  """prefill writes the deep layers' keys/values into the cache: greedy decoding on it picks
  what the full forward (no cache) ranks first at every step."""
  model = decoder_only.DecoderOnly(CONFIG, 'after_bos')
  prompt, deep = _prompt((P,), 1), _prompt((CONFIG.num_layers - 1, P), 2)
  generated = np.asarray(causal_lm.greedy(model, params, TOKENS, LENGTHS, STEPS, prompt, deep))
  rows = np.zeros((len(TOKENS), TOKENS.shape[1] + STEPS), np.int32)
  for b, n in enumerate(LENGTHS):
    rows[b, :n + STEPS] = np.concatenate([TOKENS[b, :n], generated[b]])
  logits = _forward(model, params, rows, prompt, deep)
  for b, n in enumerate(LENGTHS):
    np.testing.assert_array_equal(np.argmax(logits[b, n - 1:n - 1 + STEPS], -1), generated[b])
  assert len(np.unique(generated)) > 3  # not one token repeated


def _batch(seed, batch=4, length=10):
  """A prefix-LM batch: BOS + inputs, then targets (loss weights), right padded with 0."""
  rng = np.random.RandomState(seed)
  tokens = rng.randint(3, CONFIG.vocab_size, (batch, length)).astype(np.int32)
  tokens[:, 0] = 1
  weights = np.zeros_like(tokens)
  for row in range(batch):
    n = length - row % 3
    weights[row, 3:n] = 1
    tokens[row, n:] = 0
  return {'decoder_target_tokens': tokens, 'decoder_loss_weights': weights}


def test_training_moves_both_prompts_and_nothing_else(params, tmp_path):
  trainer = DecoderPromptTrainer(CONFIG, prompt_lib.PromptConfig(P, 'after_bos', deep=True),
                                 params, optim.adafactor())
  before = jax.tree_util.tree_map(np.array, params)
  state = trainer.init_state(_prompt((P,)))
  deep0 = trainer.deep_prompt(state)
  assert deep0.shape == (2, P, D) and np.array_equal(deep0[1], _prompt((P,)))  # default: repeated
  # The step differentiates the trainable tree: the two prompts, nothing else.
  assert jax.tree_util.tree_structure(state.params) == jax.tree_util.tree_structure(
      prompt_lib.prompt_tree(0, 0))
  prompt0 = trainer.prompt(state)
  state, metrics = trainer.train_step(state, _batch(0))
  assert not np.array_equal(trainer.prompt(state), prompt0)
  assert not np.array_equal(trainer.deep_prompt(state), deep0)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(before),
                          jax.tree_util.tree_leaves(trainer.frozen)):
    assert a.tobytes() == np.asarray(b).tobytes(), path
  # Adafactor's state for [P, D] and [L-1, P, D] only: nothing the size of a frozen weight.
  leaves = jax.tree_util.tree_leaves(state.opt_state)
  assert max(x.size for x in leaves) == 2 * P * D, [x.shape for x in leaves]
  assert np.isfinite(float(metrics['loss'])) and trainer.run_info()['deep'] is True
  # MODEL_DIR: a step's numpy copy holds the deep prompts beside the input prompt.
  trainer.write_copy(str(tmp_path), state, 1)
  np.testing.assert_array_equal(np.load(model_dir_lib.numpy_deep_path(str(tmp_path), 1)),
                                trainer.deep_prompt(state))


def test_bad_deep_settings_are_one_line(params):
  model = decoder_only.DecoderOnly(CONFIG)
  with pytest.raises(ValueError, match=r'Deep prompts have shape \(3, 3, 32\); this 3-layer model '
                                       r'with a prompt of 3 takes .* \(2, 3, 32\)'):
    model.apply({'params': params}, TOKENS, _prompt((P,)), deep=_prompt((3, P)))
  with pytest.raises(ValueError, match=r'with a prompt of 0'):
    model.apply({'params': params}, TOKENS, None, deep=_prompt((2, P)))
  one_layer = DecoderConfig(vocab_size=64, d_model=D, num_layers=1, num_heads=4, num_kv_heads=2,
                            head_dim=8, d_ff=64, dtype='float32')
  frozen = nn.unbox(jax.eval_shape(lambda: decoder_only.init_params(one_layer)))
  with pytest.raises(ValueError, match='need at least 2 layers.*this model has 1'):
    DecoderPromptTrainer(one_layer, prompt_lib.PromptConfig(P, deep=True), frozen,
                         optim.adafactor())

"""Decoder-only models (models/decoder_only.py, inference/causal_lm.py) against transformers on
the same weights: logits on a right-padded batch, greedy decoding through our KV cache, scores,
prompts placed as PEFT places them (inputs_embeds), the dtype policy and a (4, 2) mesh."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hf_decoder_reference import (CASES, hf_embeds_logits, hf_logits, make_hf, max_rel_err,
                                  padded_batch, saved_case)
from prompt_tuning.inference import causal_lm
from prompt_tuning.models import decoder_config, decoder_only

STEPS = 32
PROMPT_LENGTH = 5


@pytest.fixture(scope='module')
def case(tmp_path_factory):
  """case name -> (transformers model, our config, our params), built once per module."""
  @functools.cache
  def get(name):
    return saved_case(name, str(tmp_path_factory.mktemp(name)))
  return get


@functools.partial(jax.jit, static_argnames=('model', 'enable_dropout'))
def _apply(model, params, tokens, prompt=None, enable_dropout=False, rng=None):
  """One compile per model and shape (models of equal configs share it)."""
  rngs = {'dropout': rng} if enable_dropout else None
  return model.apply({'params': params}, tokens, prompt, enable_dropout, rngs=rngs)


def _real(tokens, lengths):
  return np.arange(tokens.shape[1])[None, :] < lengths[:, None]


def _prompt(config, shape, seed=0):
  return np.random.RandomState(seed).normal(0, 0.5, shape + (config.d_model,)).astype(np.float32)


def _embeds(hf, tokens):
  with torch.no_grad():
    return hf.get_input_embeddings()(torch.tensor(tokens, dtype=torch.long)).numpy()


@pytest.mark.parametrize('name', sorted(CASES))
def test_logits_match_transformers_on_a_padded_batch(case, name):
  hf, config, params = case(name)
  tokens, lengths = padded_batch()
  ours = np.asarray(_apply(decoder_only.DecoderOnly(config), params, tokens))
  ref = hf_logits(hf, tokens, lengths)
  real = _real(tokens, lengths)
  # Padded positions mean nothing in either implementation; every real one is compared.
  assert ours.dtype == np.float32 and ours.shape == ref.shape
  assert max_rel_err(ours[real], ref[real]) < 1e-4


def test_logits_at_chosen_positions_are_those_of_the_full_forward(case):
  """logits_at_BxT (what training scores): the full forward's logits at those positions, per
  row, with a prompt in front."""
  _, config, params = case('llama2_untied_bias')
  tokens, _ = padded_batch()
  model, prompt = decoder_only.DecoderOnly(config), _prompt(config, (3,))
  at = np.array([[20, 21, 22, 23], [13, 14, 15, 16], [0, 1, 2, 3]], np.int32)
  full = np.asarray(model.apply({'params': params}, tokens, prompt))
  chosen = np.asarray(model.apply({'params': params}, tokens, prompt, logits_at_BxT=at))
  assert chosen.shape == (3, 4, config.vocab_size)
  np.testing.assert_allclose(chosen, np.take_along_axis(full, at[:, :, None], axis=1),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', sorted(CASES))
def test_greedy_with_the_cache_matches_generate(case, name):
  """Our padded batch decoded together equals transformers' generate on each row alone."""
  hf, config, params = case(name)
  tokens, lengths = padded_batch()
  ours = np.asarray(causal_lm.greedy(decoder_only.DecoderOnly(config), params, tokens, lengths,
                                     STEPS))
  for row, n in enumerate(lengths):
    ref = hf.generate(torch.tensor(tokens[row:row + 1, :n], dtype=torch.long),
                      max_new_tokens=STEPS, do_sample=False)[0, n:].numpy()
    np.testing.assert_array_equal(ours[row], ref)
  assert len(np.unique(ours)) > 3  # not a degenerate repetition of one token


def _concatenated(inputs, lengths, targets, target_lengths):
  """Each row's inputs then its targets, right-padded with 0."""
  rows = [np.concatenate([i[:n], t[:m]]) for i, n, t, m in
          zip(inputs, lengths, targets, target_lengths)]
  out = np.zeros((len(rows), inputs.shape[1] + targets.shape[1]), np.int32)
  for r, row in enumerate(rows):
    out[r, :len(row)] = row
  return out


@pytest.mark.parametrize('name', ['llama3_tied', 'gpt2'])
def test_score_equals_the_full_forward_and_transformers(case, name):
  hf, config, params = case(name)
  model = decoder_only.DecoderOnly(config)
  inputs, lengths = padded_batch(lengths=(9, 4, 6))
  targets, target_lengths = padded_batch(lengths=(5, 2, 3), seed=1)
  prompt = _prompt(config, (PROMPT_LENGTH,))
  ours = np.asarray(causal_lm.score(model, params, inputs, lengths, targets, target_lengths,
                                    prompt))
  # The full forward over [prompt; inputs; targets]: ours, and transformers' on inputs_embeds.
  joined = _concatenated(inputs, lengths, targets, target_lengths)
  logp = jax.nn.log_softmax(_apply(model, params, joined, prompt))
  embeds = np.concatenate([np.broadcast_to(prompt, (3,) + prompt.shape), _embeds(hf, joined)], 1)
  hf_logp = jax.nn.log_softmax(hf_embeds_logits(hf, embeds, np.ones(embeds.shape[:2]))
                               [:, PROMPT_LENGTH:])
  for row, (n, m) in enumerate(zip(lengths, target_lengths)):
    at, tok = np.arange(n - 1, n + m - 1), joined[row, n:n + m]
    np.testing.assert_allclose(ours[row], logp[row, at, tok].sum(), rtol=1e-5)
    np.testing.assert_allclose(ours[row], hf_logp[row, at, tok].sum(), rtol=1e-4)
  # Rank classification: one prefill per row shared by K candidates, the same numbers.
  candidates, candidate_lengths = targets, target_lengths
  table = np.asarray(causal_lm.score_candidates(model, params, inputs, lengths, candidates,
                                                candidate_lengths, prompt))
  for k in range(3):
    alone = causal_lm.score(model, params, inputs, lengths, np.repeat(candidates[k:k + 1], 3, 0),
                            np.repeat(candidate_lengths[k:k + 1], 3), prompt)
    np.testing.assert_allclose(table[:, k], alone, rtol=1e-5)


@pytest.mark.parametrize('name', ['llama3_tied', 'gpt2'])
@pytest.mark.parametrize('placement', ['prefix', 'after_bos'])
def test_prompt_matches_transformers_inputs_embeds(case, name, placement):
  """prefix: transformers on [prompt; embedded tokens] with the mask [1...; mask] (what PEFT
  runs for CAUSAL_LM); after_bos: on [BOS; prompt; the rest]. Ours returns the token-aligned
  logits, the reference's positions P .. P + L - 1."""
  hf, config, params = case(name)
  tokens, lengths = padded_batch()
  prompt = _prompt(config, (3, PROMPT_LENGTH))  # a prompt per row
  embeds, real = _embeds(hf, tokens), _real(tokens, lengths)
  ones = np.ones((3, PROMPT_LENGTH), bool)
  if placement == 'prefix':
    joined, mask = np.concatenate([prompt, embeds], 1), np.concatenate([ones, real], 1)
  else:
    joined = np.concatenate([embeds[:, :1], prompt, embeds[:, 1:]], 1)
    mask = np.concatenate([real[:, :1], ones, real[:, 1:]], 1)
  ref = hf_embeds_logits(hf, joined, mask)[:, PROMPT_LENGTH:]
  model = decoder_only.DecoderOnly(config, prompt_placement=placement)
  ours = np.asarray(_apply(model, params, tokens, prompt))
  assert max_rel_err(ours[real], ref[real]) < 1e-4


@pytest.mark.parametrize('placement', ['prefix', 'after_bos'])
def test_a_batch_mixing_prompts_equals_each_prompt_alone(case, placement):
  """Rows of one batch steered by different prompts ([B, P, D]) give what each row gets from its
  prompt alone ([P, D], the same rows): mixed-prompt batches change nothing."""
  _, config, params = case('llama3_tied')
  tokens, lengths = padded_batch()
  prompts = _prompt(config, (3, PROMPT_LENGTH), seed=7)
  model = decoder_only.DecoderOnly(config, prompt_placement=placement)
  mixed = np.asarray(_apply(model, params, tokens, prompts))
  real = _real(tokens, lengths)
  for row in range(3):
    alone = np.asarray(_apply(model, params, tokens, prompts[row]))[row]
    assert max_rel_err(mixed[row][real[row]], alone[real[row]]) < 1e-6


@pytest.mark.parametrize('placement', ['prefix', 'after_bos'])
def test_greedy_with_a_prompt_matches_generate_on_inputs_embeds(case, placement):
  hf, config, params = case('llama3_tied')
  tokens, lengths = padded_batch()
  prompt = _prompt(config, (PROMPT_LENGTH,), seed=2)  # one prompt for every row
  model = decoder_only.DecoderOnly(config, prompt_placement=placement)
  ours = np.asarray(causal_lm.greedy(model, params, tokens, lengths, STEPS, prompt))
  for row, n in enumerate(lengths):
    embeds = _embeds(hf, tokens[row:row + 1, :n])
    parts = ([prompt[None], embeds] if placement == 'prefix' else
             [embeds[:, :1], prompt[None], embeds[:, 1:]])
    joined = torch.tensor(np.concatenate(parts, 1))
    ref = hf.generate(inputs_embeds=joined, attention_mask=torch.ones(joined.shape[:2]).long(),
                      max_new_tokens=STEPS, do_sample=False)[0].numpy()
    np.testing.assert_array_equal(ours[row], ref[-STEPS:])


def test_beam_search_matches_transformers_without_eos(case):
  """Without an EOS and with no length penalty (alpha 0, length_penalty 0) T5X's beam search and
  transformers' agree: every beam, its order and its summed log-prob. With an EOS they differ by
  design: transformers also returns live beams once its search ends and divides by
  length ** length_penalty; T5X returns only finished beams, over ((5 + length) / 6) ** alpha."""
  hf, config, params = case('llama3_tied')
  tokens, lengths = padded_batch()
  prompt = _prompt(config, (PROMPT_LENGTH,), seed=3)
  beams, steps = 3, 6
  ours, scores = map(np.asarray, causal_lm.beam_search(
      decoder_only.DecoderOnly(config), params, tokens, lengths, steps, num_beams=beams,
      alpha=0.0, prompt=prompt))
  for row, n in enumerate(lengths):
    joined = torch.tensor(np.concatenate([prompt[None], _embeds(hf, tokens[row:row + 1, :n])], 1))
    ref = hf.generate(inputs_embeds=joined, attention_mask=torch.ones(joined.shape[:2]).long(),
                      max_new_tokens=steps, num_beams=beams, num_return_sequences=beams,
                      do_sample=False, length_penalty=0.0, output_scores=True,
                      return_dict_in_generate=True)
    np.testing.assert_array_equal(ours[row], ref.sequences[:, -steps:].numpy())
    np.testing.assert_allclose(scores[row], ref.sequences_scores.numpy(), atol=1e-4)


def test_peft_prompt_tuning_model_gives_our_prefix_logits(case):
  """PEFT's own CAUSAL_LM prompt tuning, its virtual-token table set to our prompt."""
  peft = pytest.importorskip('peft')
  _, config, params = case('qwen2')
  hf = make_hf('qwen2')  # the same weights; PEFT wraps this copy, not the shared one
  tokens, lengths = padded_batch()
  prompt = _prompt(config, (PROMPT_LENGTH,), seed=3)
  peft_model = peft.get_peft_model(hf, peft.PromptTuningConfig(
      task_type='CAUSAL_LM', num_virtual_tokens=PROMPT_LENGTH)).eval()
  with torch.no_grad():
    peft_model.prompt_encoder['default'].embedding.weight.copy_(torch.tensor(prompt))
    ref = peft_model(input_ids=torch.tensor(tokens, dtype=torch.long),
                     attention_mask=torch.tensor(_real(tokens, lengths)).long()).logits.numpy()
  ours = np.asarray(_apply(decoder_only.DecoderOnly(config), params, tokens, prompt))
  real = _real(tokens, lengths)
  assert max_rel_err(ours[real], ref[:, PROMPT_LENGTH:][real]) < 1e-4


def test_bfloat16_activations_follow_the_dtype_policy(case):
  """bfloat16 activations (the default): float32 logits close to the float32 run."""
  _, config, params = case('mistral_window')
  tokens, lengths = padded_batch()
  exact = _apply(decoder_only.DecoderOnly(config), params, tokens)
  model = decoder_only.DecoderOnly(config.replace(dtype='bfloat16'))
  fast = _apply(model, params, tokens)
  assert fast.dtype == jnp.float32
  real = _real(tokens, lengths)
  assert max_rel_err(np.asarray(fast)[real], np.asarray(exact)[real]) < 0.05
  cache = model.init_cache(3, 30)
  assert cache['layers_0']['attention']['cached_key'].dtype == jnp.bfloat16


def test_dropout_applies_only_when_enabled(case):
  _, config, params = case('llama3_tied')
  tokens, _ = padded_batch()
  plain = _apply(decoder_only.DecoderOnly(config), params, tokens)  # compiled above
  model = decoder_only.DecoderOnly(config.replace(dropout_rate=0.5))
  dropped = _apply(model, params, tokens, enable_dropout=True, rng=jax.random.PRNGKey(1))
  assert not np.allclose(plain, dropped)


@pytest.mark.parametrize('hf, named', [
    ({'architectures': ['FalconForCausalLM'], 'model_type': 'falcon'}, 'FalconForCausalLM'),
    ({'model_type': 'gemma2'}, "'(none)' (model_type 'gemma2')"),
    ({'architectures': ['LlamaForCausalLM'], 'model_type': 'llama', 'hidden_size': 64,
      'num_attention_heads': 4, 'num_hidden_layers': 1, 'intermediate_size': 8,
      'vocab_size': 8, 'rope_scaling': {'rope_type': 'yarn', 'factor': 4.0}}, "'yarn'"),
])
def test_unsupported_configs_are_one_line(hf, named):
  with pytest.raises(ValueError) as e:
    decoder_config.config_from_json(hf)
  message = str(e.value)
  assert '\n' not in message and named in message, message
  if 'yarn' not in named:
    for arch in decoder_config.ARCHITECTURES.values():
      assert arch in message


def test_more_tokens_than_learned_positions_is_refused():
  config = decoder_config.config_from_json(
      {'model_type': 'gpt2', 'vocab_size': 16, 'n_embd': 8, 'n_layer': 1, 'n_head': 2,
       'n_positions': 8}, dtype='float32')
  with pytest.raises(ValueError, match='6 tokens \\+ a prompt of 3 exceed the 8 learned'):
    decoder_only.DecoderOnly(config).init(jax.random.PRNGKey(0), jnp.ones((1, 6), jnp.int32),
                                          jnp.zeros((3, 8)))


def test_decoding_without_a_cache_is_refused():
  config = decoder_config.DecoderConfig(dtype='float32')
  params = decoder_only.init_params(config)
  model = decoder_only.DecoderOnly(config)
  with pytest.raises(ValueError, match='init_cache'):
    model.apply({'params': params}, jnp.ones((1, 1), jnp.int32), method=model.decode_step,
                mutable=['cache'])


def test_a_4x2_mesh_agrees_with_one_device(eight_devices):
  result = eight_devices('decoder_mesh_worker.py')
  assert result['logit_gap'] < 1e-5 and result['greedy_same'], result
  # The weights really are split over 'model' (2 ways): the vocabulary and the MLP's width.
  assert result['embedding_shard'] == [128, 64] and result['wo_shard'] == [64, 64], result

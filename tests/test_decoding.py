"""Cached decoding (greedy, sampling, beam search) and scoring against teacher-forced logits.

Every model here has a 3-token prompt, so the cached cross-attention covers L + P positions.
The EOS column of the output layer is scaled up so that random models end rows at varied steps.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.models import prompt as prompt_lib
from prompt_tuning.models import t5
from prompt_tuning.inference import decoding

T = 12  # max decode length


@pytest.fixture(scope='module')
def setup():
  """(config, params, encoder tokens) shared by every model below (prompt shapes agree)."""
  config = t5.T5Config.preset('tiny', dtype='float32', vocab_size=64, num_encoder_layers=1)
  params = _eos_scaled(t5.init_params(config, prompt=prompt_lib.PromptConfig(3)), 6.0)
  rng = np.random.RandomState(0)
  enc = rng.randint(2, 64, (4, 7))
  for row, n in enumerate([6, 4, 2, 5]):
    enc[row, n:] = 0
    enc[row, n - 1] = t5.EOS_ID
  return config, params, jnp.asarray(enc, jnp.int32)


def _eos_scaled(params, factor):
  """Scales the EOS logit (its sign still varies with the decoder state)."""
  kernel = params['decoder']['logits_dense']['kernel']
  decoder = {**params['decoder'],
             'logits_dense': {'kernel': kernel.at[:, t5.EOS_ID].multiply(factor)}}
  return {**params, 'decoder': decoder}


def _model(config, placement='prefix'):
  return t5.EncoderDecoder(config, prompt_lib.PromptConfig(3, placement))


@functools.partial(jax.jit, static_argnames='model')
def _teacher_forced(model, params, enc, dec_in, targets=None):
  return model.apply({'params': params}, enc, dec_in, targets)


@functools.partial(jax.jit, static_argnames='model')
def _cached_logits(model, params, enc, dec_in_BxT):
  """Logits of every position from single-token cached steps, and the final cache."""
  encoded = model.apply({'params': params}, enc, method=model.encode)
  _, variables = model.apply({'params': params}, encoded, enc, dec_in_BxT.shape[1],
                             method=model.init_cache, mutable=['cache'])

  def step(cache, token_B):
    logits, variables = model.apply({'params': params, 'cache': cache}, enc, token_B[:, None],
                                    method=model.decode_step, mutable=['cache'])
    return variables['cache'], logits[:, 0]

  cache, logits_TxBxV = jax.lax.scan(step, variables['cache'], dec_in_BxT.T)
  return jnp.swapaxes(logits_TxBxV, 0, 1), cache


def _ends(tokens_BxT):
  """Index of each row's first EOS, or None."""
  out = []
  for row in np.asarray(tokens_BxT):
    hits = np.flatnonzero(row == t5.EOS_ID)
    out.append(int(hits[0]) if hits.size else None)
  return out


def _check_prefix_decoding(tokens_BxT, logits_BxTxV, choices=1):
  """Each token is among the `choices` best teacher-forced logits on its own prefix, up to
  its row's EOS; PAD follows the EOS."""
  tokens, logits = np.asarray(tokens_BxT), np.asarray(logits_BxTxV)
  best = np.argsort(-logits, axis=-1, kind='stable')[..., :choices]
  for row, end in enumerate(_ends(tokens)):
    stop = T if end is None else end + 1
    for pos in range(stop):
      assert tokens[row, pos] in best[row, pos], (row, pos)
    np.testing.assert_array_equal(tokens[row, stop:], 0)


@pytest.fixture(scope='module')
def greedy_prefix(setup):
  config, params, enc = setup
  return decoding.greedy(_model(config), params, enc, T)


@pytest.mark.parametrize('placement', ['prefix', 'suffix'])
def test_cached_step_logits_equal_teacher_forced(setup, placement):
  config, params, enc = setup
  model = _model(config, placement)
  targets = jax.random.randint(jax.random.PRNGKey(1), (enc.shape[0], T), 2, 64)
  dec_in = decoding.shift_right(targets)
  cached, cache = _cached_logits(model, params, enc, dec_in)
  full = _teacher_forced(model, params, enc, dec_in)
  np.testing.assert_allclose(cached, full, rtol=1e-5, atol=1e-5)
  layer = cache['decoder']['layers_1']
  assert int(layer['self_attention']['cache_index']) == T
  assert layer['self_attention']['cached_key'].shape == (4, T, config.num_heads, config.head_dim)
  # Cross-attention keys cover the inputs and the prompt: L + P.
  assert layer['encoder_decoder_attention']['cached_key'].shape[1] == enc.shape[1] + 3


@pytest.mark.parametrize('placement', ['prefix', 'suffix'])
def test_greedy_is_stepwise_argmax_of_teacher_forced_logits(setup, greedy_prefix, placement):
  config, params, enc = setup
  model = _model(config, placement)
  tokens = greedy_prefix if placement == 'prefix' else decoding.greedy(model, params, enc, T)
  assert tokens.shape == (4, T) and tokens.dtype == jnp.int32
  ends = _ends(tokens)
  finished = [e for e in ends if e is not None]
  assert len(set(finished)) >= 2 and max(finished) >= 2, ends  # rows end at varied steps
  logits = _teacher_forced(model, params, enc, decoding.shift_right(tokens))
  _check_prefix_decoding(tokens, logits)


def test_prompt_reaches_decoding(setup, greedy_prefix):
  config, params, enc = setup
  shifted = jax.tree_util.tree_map(lambda x: x, params)
  prompt = prompt_lib.get_prompt(prompt_lib.split_params(params)[1])
  shifted['encoder']['prompt']['prompt']['prompt'] = prompt + 3.0
  other = decoding.greedy(_model(config), shifted, enc, T)
  assert not np.array_equal(other, greedy_prefix)


def _normalised_score(model, params, enc, tokens_BxT, alpha=0.6):
  log_likelihood = decoding.score(model, params, {'encoder_input_tokens': enc,
                                                  'decoder_target_tokens': tokens_BxT})
  lengths = np.sum(np.asarray(tokens_BxT) > 0, axis=1)
  return np.asarray(log_likelihood) / decoding.brevity_penalty(alpha, lengths)


def _check_beam_scores(model, params, enc, tokens_BxKxT, scores_BxK):
  """Scores are best first, and each is its sequence's (normalised) log-likelihood."""
  tokens, scores = np.asarray(tokens_BxKxT), np.asarray(scores_BxK)
  assert np.all(scores[:, :-1] >= scores[:, 1:])
  for k in range(tokens.shape[1]):
    ends = _ends(tokens[:, k])
    expected = _normalised_score(model, params, enc, tokens[:, k])
    raw = np.asarray(decoding.score(model, params, {'encoder_input_tokens': enc,
                                                    'decoder_target_tokens': tokens[:, k]}))
    for row, end in enumerate(ends):
      if end is not None:
        np.testing.assert_array_equal(tokens[row, k, end + 1:], 0)
        np.testing.assert_allclose(scores[row, k], expected[row], rtol=1e-5, atol=1e-5)
      elif np.isfinite(scores[row, k]):  # a row without finished beams: live, raw log-probs
        assert not any(e is not None for e in _ends(tokens[row]))
        np.testing.assert_allclose(scores[row, k], raw[row], rtol=1e-5, atol=1e-5)
      else:  # an empty slot beside finished ones
        np.testing.assert_array_equal(tokens[row, k], 0)


def test_one_beam_is_greedy(setup, greedy_prefix):
  config, params, enc = setup
  model = _model(config)
  tokens, scores = decoding.beam_search(model, params, enc, T, num_beams=1)
  assert tokens.shape == (4, 1, T) and scores.shape == (4, 1)
  # T5X's rule also finishes an EOS candidate ranked second, so one beam may in general find
  # a better-scoring sequence than greedy; on this model it does not, and the tokens agree.
  np.testing.assert_array_equal(tokens[:, 0], greedy_prefix)
  _check_beam_scores(model, params, enc, tokens, scores)


def test_more_beams_score_at_least_greedy(setup, greedy_prefix):
  config, params, enc = setup
  model = _model(config)
  tokens, scores = decoding.beam_search(model, params, enc, T, num_beams=4)
  assert tokens.shape == (4, 4, T)
  assert np.all(np.isfinite(scores))
  _check_beam_scores(model, params, enc, tokens, scores)
  greedy_scores = _normalised_score(model, params, enc, greedy_prefix)
  ended = [e is not None for e in _ends(greedy_prefix)]
  assert np.all(np.asarray(scores)[ended, 0] >= greedy_scores[ended] - 1e-5)
  assert np.any(np.asarray(scores)[ended, 0] > greedy_scores[ended] + 1e-3)  # search helped
  assert not np.array_equal(tokens[:, 0], greedy_prefix)


def test_beam_rows_with_few_or_no_finished_sequences(setup):
  config, params, enc = setup
  model = _model(config)
  # A weaker EOS: some rows finish fewer than 4 sequences (T5X leaves those slots empty) and
  # some none (their live beams come back with raw log-probs).
  params = _eos_scaled(params, 1.0 / 3.0)
  tokens, scores = decoding.beam_search(model, params, enc, T, num_beams=4)
  _check_beam_scores(model, params, enc, tokens, scores)
  finished = np.any(np.asarray(tokens) == t5.EOS_ID, axis=2)
  assert np.any(~finished.any(axis=1))  # a row of live beams
  assert np.any(finished.any(axis=1) & ~np.all(np.isfinite(scores), axis=1))  # empty slots


def test_score_is_masked_teacher_forced_log_likelihood(setup):
  config, params, enc = setup
  model = _model(config)
  targets = np.array(jax.random.randint(jax.random.PRNGKey(2), (4, 6), 2, 64))
  targets[0, 4:] = 0
  targets[2, 1:] = 0
  dec_in = np.asarray(decoding.shift_right(jnp.asarray(targets)))
  logits = _teacher_forced(model, params, enc, dec_in, targets)
  logp = np.asarray(jax.nn.log_softmax(logits))
  token_logp = np.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  batch = {'encoder_input_tokens': enc, 'decoder_input_tokens': dec_in,
           'decoder_target_tokens': targets}
  got = np.asarray(decoding.score(model, params, batch))
  np.testing.assert_allclose(got, np.sum(token_logp * (targets > 0), axis=1), rtol=1e-5)
  weights = (targets > 0).astype(np.float32)
  weights[:, 0] = 0.0
  got_w = np.asarray(decoding.score(model, params, {**batch, 'decoder_loss_weights': weights}))
  np.testing.assert_allclose(got_w, np.sum(token_logp * weights, axis=1), rtol=1e-5)
  assert np.all(got_w > got)  # dropping a token's log-prob raises the sum


def test_top_k_one_and_zero_temperature_are_greedy(setup, greedy_prefix):
  config, params, enc = setup
  model = _model(config)
  rng = jax.random.PRNGKey(3)
  np.testing.assert_array_equal(decoding.sample(model, params, enc, T, rng, top_k=1),
                                greedy_prefix)
  np.testing.assert_array_equal(decoding.sample(model, params, enc, T, rng, temperature=0.0),
                                greedy_prefix)


def test_sampling_is_deterministic_per_rng_and_respects_top_k(setup):
  config, params, enc = setup
  model = _model(config)
  draw = lambda seed: decoding.sample(model, params, enc, T, jax.random.PRNGKey(seed),
                                      temperature=2.0, top_k=3)
  a, b, c = draw(0), draw(0), draw(1)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  for tokens in (a, c):
    logits = _teacher_forced(model, params, enc, decoding.shift_right(tokens))
    _check_prefix_decoding(tokens, logits, choices=3)


def test_top_p_filter_keeps_smallest_set_reaching_p():
  probs = np.array([[0.1, 0.4, 0.2, 0.3],
                    [0.05, 0.05, 0.6, 0.3]])
  logits = jnp.log(jnp.asarray(probs, jnp.float32))
  kept = lambda p: np.isfinite(np.asarray(decoding.top_p_filter(logits, p)))
  np.testing.assert_array_equal(kept(0.35), [[0, 1, 0, 0], [0, 0, 1, 0]])
  np.testing.assert_array_equal(kept(0.65), [[0, 1, 0, 1], [0, 0, 1, 1]])
  np.testing.assert_array_equal(kept(0.8), [[0, 1, 1, 1], [0, 0, 1, 1]])
  np.testing.assert_array_equal(kept(0.92), [[1, 1, 1, 1], [1, 0, 1, 1]])
  np.testing.assert_array_equal(kept(1.0), np.ones((2, 4)))
  # Kept logits are unchanged.
  np.testing.assert_allclose(decoding.top_p_filter(logits, 0.65)[0, [1, 3]], logits[0, [1, 3]])
  with pytest.raises(ValueError, match='top_p'):
    decoding.top_p_filter(logits, 0.0)


def test_top_k_filter_keeps_k_largest():
  logits = jnp.array([[0.5, 2.0, -1.0, 1.0], [3.0, 3.0, 0.0, 3.0]])
  kept = np.isfinite(np.asarray(decoding.top_k_filter(logits, 2)))
  np.testing.assert_array_equal(kept, [[0, 1, 0, 1], [1, 1, 0, 0]])  # ties: lower id first
  np.testing.assert_array_equal(decoding.top_k_filter(logits, 0), logits)


def test_score_candidates_equals_scoring_each_candidate():
  """Rank classification encodes once; it must equal scoring each (input, candidate) pair."""
  config = t5.T5Config.preset('tiny', dtype='float32', vocab_size=64, num_encoder_layers=1)
  prompt = prompt_lib.PromptConfig(3)
  model = t5.EncoderDecoder(config, prompt)
  params = t5.init_params(config, prompt=prompt)
  rng = np.random.RandomState(0)
  enc = rng.randint(2, 64, (3, 7)).astype(np.int32)
  enc[1, 4:] = 0
  candidates = np.array([[5, 1, 0], [9, 8, 1], [7, 1, 0]], np.int32)
  got = np.asarray(decoding.score_candidates(model, params, enc, candidates))
  assert got.shape == (3, 3)
  for k in range(3):
    targets = np.repeat(candidates[k:k + 1], 3, axis=0)
    want = np.asarray(decoding.score(model, params, {'encoder_input_tokens': enc,
                                                     'decoder_target_tokens': targets}))
    np.testing.assert_allclose(got[:, k], want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# A prompt table: a batch mixing prompts decodes as each prompt's rows alone.

NUM_PROMPTS = 3


@pytest.fixture(scope='module')
def table_setup(setup):
  """(config, frozen params, table [K, 3, D], encoder tokens [6, 7], ids: 2 rows per prompt)."""
  config, params, _ = setup
  frozen, _ = prompt_lib.split_params(params)
  table = np.random.RandomState(7).uniform(-1, 1, (NUM_PROMPTS, 3, config.d_model))
  rng = np.random.RandomState(4)
  enc = rng.randint(2, 64, (6, 7))
  for row, n in enumerate([6, 4, 2, 5, 7, 3]):
    enc[row, n:] = 0
    enc[row, n - 1] = t5.EOS_ID
  ids = np.array([1, 0, 2, 0, 2, 1], np.int32)
  return config, frozen, table.astype(np.float32), jnp.asarray(enc, jnp.int32), ids


def _table_and_alone(table_setup, placement):
  """The table model with its params, and for each prompt: (its rows, K = 1 model, params)."""
  config, frozen, table, _, ids = table_setup
  model = t5.EncoderDecoder(config, prompt_lib.PromptConfig(3, placement, NUM_PROMPTS))
  params = prompt_lib.merge_params(frozen, prompt_lib.prompt_tree(table))
  single = _model(config, placement)
  alone = [(np.flatnonzero(ids == i), single,
            prompt_lib.merge_params(frozen, prompt_lib.prompt_tree(table[i])))
           for i in range(NUM_PROMPTS)]
  return model, params, alone


@pytest.mark.parametrize('placement', ['prefix', 'suffix'])
def test_mixed_prompt_batch_decodes_and_scores_as_each_prompt_alone(table_setup, placement):
  _, _, _, enc, ids = table_setup
  model, params, alone = _table_and_alone(table_setup, placement)
  tokens = decoding.DecodingConfig('greedy').generate(model, params, enc, T, prompt_ids=ids)
  candidates = jnp.array([[5, 1, 0], [9, 8, 1]], jnp.int32)
  scores = np.asarray(decoding.score_candidates(model, params, enc, candidates, prompt_ids=ids))
  targets = jnp.asarray(tokens)  # each row's greedy output, scored teacher-forced
  logp = np.asarray(decoding.score(model, params, {'encoder_input_tokens': enc,
                                                   'decoder_target_tokens': targets,
                                                   'prompt_ids': ids}))
  for rows, single, single_params in alone:
    np.testing.assert_array_equal(tokens[rows],
                                  decoding.greedy(single, single_params, enc[rows], T))
    np.testing.assert_allclose(
        scores[rows], decoding.score_candidates(single, single_params, enc[rows], candidates),
        rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        logp[rows], decoding.score(single, single_params, {'encoder_input_tokens': enc[rows],
                                                           'decoder_target_tokens':
                                                               targets[rows]}),
        rtol=0, atol=1e-5)
  ends = _ends(tokens)
  assert len({e for e in ends if e is not None}) >= 2, ends  # rows end at varied steps


def test_mixed_prompt_beams_equal_each_prompt_alone(table_setup):
  _, _, _, enc, ids = table_setup
  model, params, alone = _table_and_alone(table_setup, 'prefix')
  tokens, scores = decoding.beam_search(model, params, enc, T, num_beams=2, prompt_ids=ids)
  for rows, single, single_params in alone:
    want_tokens, want_scores = decoding.beam_search(single, single_params, enc[rows], T,
                                                    num_beams=2)
    np.testing.assert_array_equal(tokens[rows], want_tokens)
    np.testing.assert_allclose(scores[rows], want_scores, rtol=0, atol=1e-5)
  # The ids reach the beams: all rows on prompt 0 changes some row's scores (-inf: empty slot).
  _, zeros = decoding.beam_search(model, params, enc, T, num_beams=2,
                                  prompt_ids=np.zeros_like(ids))
  same = np.isclose(np.asarray(zeros), np.asarray(scores), rtol=0, atol=1e-3)
  assert not same[ids != 0].all()


def test_bad_prompt_ids_are_refused_before_decoding(table_setup):
  config, frozen, _, enc, ids = table_setup
  model, params, _ = _table_and_alone(table_setup, 'prefix')
  bad = ids.copy()
  bad[4] = NUM_PROMPTS
  out_of_range = r'prompt id 3 \(row 4\) is out of range.*holds 3 prompt\(s\).*\[0, 3\)'
  missing = r'table of 3 prompts .*prompt_ids'
  calls = [lambda i: decoding.greedy(model, params, enc, T, prompt_ids=i),
           lambda i: decoding.sample(model, params, enc, T, jax.random.PRNGKey(0), prompt_ids=i),
           lambda i: decoding.beam_search(model, params, enc, T, num_beams=2, prompt_ids=i),
           lambda i: decoding.score_candidates(model, params, enc, enc[:2, :3], prompt_ids=i),
           lambda i: decoding.score(model, params, {'encoder_input_tokens': enc,
                                                    'decoder_target_tokens': enc,
                                                    **({} if i is None else {'prompt_ids': i})})]
  for call in calls:
    with pytest.raises(ValueError, match=out_of_range):
      call(bad)
    with pytest.raises(ValueError, match=missing):
      call(None)
    with pytest.raises(ValueError, match=r'one per row, \[6\]\); got shape \(5,\)'):
      call(ids[:5])
  with pytest.raises(ValueError, match='prompt_ids were given but the model has no prompt'):
    decoding.greedy(t5.EncoderDecoder(config), frozen, enc, T, prompt_ids=ids)
  assert callable(decoding.greedy.lower)  # benchmarks lower the jitted function


def test_argmax_equals_jnp_argmax_with_ties_and_nan():
  """decoding.argmax (max, then the least index at it) answers as jnp.argmax does: the first
  maximum, the first NaN where there is one, for any leading shape."""
  rng = np.random.RandomState(0)
  x = rng.randint(-3, 4, size=(5, 7, 33)).astype(np.float32)  # small integers: many ties
  x[0, 0, [4, 9]] = np.nan
  x[1, 2, :] = -np.inf
  x[2, 3, 30] = np.inf
  for logits in (x, x[0], rng.normal(size=(4, 32128)).astype(np.float32)):
    np.testing.assert_array_equal(jax.jit(decoding.argmax)(logits), jnp.argmax(logits, -1))

"""models/prompt.py: the placements (prefix_prompt, suffix_prompt), PromptConfig.mask and the
Prompt module, against a NumPy reference on rows of
different lengths: full, partial, a single token, fully padded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.models import prompt as prompt_lib

P, D = 3, 4
# Real tokens first, then pads (0); the last real token of each row is its EOS (1).
TOKENS = np.array([[5, 6, 7, 8, 9, 1],   # full row: n = L
                   [5, 6, 1, 0, 0, 0],   # n = 3
                   [1, 0, 0, 0, 0, 0],   # a single token (EOS alone)
                   [0, 0, 0, 0, 0, 0]],  # fully padded
                  np.int32)
B, L = TOKENS.shape


@pytest.fixture(scope='module')
def data():
  rng = np.random.RandomState(0)
  # Distinct values everywhere, so any misplaced row shows.
  embedded = rng.normal(size=(B, L, D)).astype(np.float32)
  prompt = (100 + np.arange(P * D, dtype=np.float32)).reshape(P, D)
  return prompt, embedded


def reference(prompt, tokens, embedded, placement):
  """(combined [B, L+P, D], mask [B, L+P]) written plainly, one row at a time."""
  combined, mask = [], []
  for row_tokens, row in zip(tokens, embedded):
    n = int(np.sum(row_tokens > 0))
    if placement == 'prefix':
      combined.append(np.concatenate([prompt, row]))
      mask.append(np.concatenate([np.ones(P, bool), row_tokens > 0]))
    else:
      at = max(n - 1, 0)  # before the final real token (EOS); at 0 when there is none
      combined.append(np.concatenate([row[:at], prompt, row[at:]]))
      mask.append(np.arange(L + P) < n + P)
  return np.stack(combined), np.stack(mask)


def test_prefix_puts_the_prompt_first(data):
  prompt, embedded = data
  out = np.asarray(prompt_lib.prefix_prompt(jnp.asarray(prompt), jnp.asarray(embedded)))
  expected, _ = reference(prompt, TOKENS, embedded, 'prefix')
  assert out.shape == (B, L + P, D)
  np.testing.assert_array_equal(out, expected)
  for b in range(B):  # spelled out: positions 0..P-1 are the prompt, then the inputs in order
    np.testing.assert_array_equal(out[b, :P], prompt)
    np.testing.assert_array_equal(out[b, P:], embedded[b])


def test_suffix_puts_the_prompt_before_each_rows_eos(data):
  prompt, embedded = data
  out = np.asarray(prompt_lib.suffix_prompt(jnp.asarray(prompt), jnp.asarray(TOKENS),
                                         jnp.asarray(embedded)))
  expected, _ = reference(prompt, TOKENS, embedded, 'suffix')
  assert out.shape == (B, L + P, D)
  np.testing.assert_array_equal(out, expected)
  # Spelled out for each kind of row.
  np.testing.assert_array_equal(out[0, :L - 1], embedded[0, :L - 1])  # full: x_1..x_{L-1},
  np.testing.assert_array_equal(out[0, L - 1:L - 1 + P], prompt)      # the prompt,
  np.testing.assert_array_equal(out[0, L - 1 + P], embedded[0, L - 1])  # then EOS last
  np.testing.assert_array_equal(out[1, 2:2 + P], prompt)              # n = 3: after x_1, x_2
  np.testing.assert_array_equal(out[1, 2 + P], embedded[1, 2])        # EOS right after it
  np.testing.assert_array_equal(out[1, 3 + P:], embedded[1, 3:])      # the pads after
  np.testing.assert_array_equal(out[2, :P], prompt)                   # EOS alone: prompt, EOS
  np.testing.assert_array_equal(out[2, P], embedded[2, 0])
  np.testing.assert_array_equal(out[3, :P], prompt)                   # no token: prompt, pads
  np.testing.assert_array_equal(out[3, P:], embedded[3])


@pytest.mark.parametrize('placement', prompt_lib.PLACEMENTS)
def test_mask_marks_exactly_the_real_positions(placement):
  config = prompt_lib.PromptConfig(P, placement)
  mask = np.asarray(config.mask(jnp.asarray(TOKENS)))
  _, expected = reference(np.zeros((P, D)), TOKENS, np.zeros((B, L, D)), placement)
  assert mask.shape == (B, L + P) and mask.dtype == bool
  np.testing.assert_array_equal(mask, expected)
  # Every row has P + n real positions: the prompt's and its tokens'.
  np.testing.assert_array_equal(mask.sum(axis=1), P + (TOKENS > 0).sum(axis=1))


@pytest.mark.parametrize('placement', prompt_lib.PLACEMENTS)
def test_prompt_module_combines_as_its_placement_says(data, placement):
  prompt, embedded = data
  config = prompt_lib.PromptConfig(P, placement)
  module = prompt_lib.Prompt(config)
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.asarray(TOKENS),
                                              jnp.asarray(embedded)))
  param = shapes['params']['prompt']['prompt']
  param = getattr(param, 'value', param)  # logically partitioned box
  assert param.shape == (P, D) and param.dtype == jnp.float32
  combined = jax.jit(module.apply)({'params': {'prompt': {'prompt': prompt}}},
                                   jnp.asarray(TOKENS), jnp.asarray(embedded))
  expected, _ = reference(prompt, TOKENS, embedded, placement)
  assert combined.shape == (B, L + P, D)
  np.testing.assert_array_equal(np.asarray(combined), expected)


def test_prompt_module_casts_to_the_activation_dtype(data):
  prompt, embedded = data
  module = prompt_lib.Prompt(prompt_lib.PromptConfig(P, 'suffix'), dtype=jnp.bfloat16)
  combined = module.apply({'params': {'prompt': {'prompt': prompt}}}, jnp.asarray(TOKENS),
                          jnp.asarray(embedded))
  assert combined.dtype == jnp.bfloat16
  expected, _ = reference(prompt, TOKENS, embedded, 'suffix')
  np.testing.assert_allclose(np.asarray(combined, np.float32), expected, rtol=1e-2)


def test_prompt_config_refuses_bad_settings():
  with pytest.raises(ValueError, match=r'PROMPT_LENGTH.*at least 1, got 0'):
    prompt_lib.PromptConfig(0)
  with pytest.raises(ValueError, match=r"Unknown prompt placement 'middle'"):
    prompt_lib.PromptConfig(5, 'middle')


def test_split_merge_and_prompt_path_round_trip():
  prompt_PxD = np.arange(6, dtype=np.float32).reshape(3, 2)
  frozen = {'token_embedder': {'embedding': np.ones((5, 2))},
            'encoder': {'encoder_norm': {'scale': np.ones(2)}}}
  params = prompt_lib.merge_params(frozen, prompt_lib.prompt_tree(prompt_PxD))
  node = params
  for key in prompt_lib.PROMPT_PATH:
    node = node[key]
  assert node is prompt_PxD and prompt_lib.PROMPT_VARIABLE == 'encoder/prompt/prompt/prompt'
  back_frozen, trainable = prompt_lib.split_params(params)
  assert back_frozen == frozen and prompt_lib.get_prompt(trainable) is prompt_PxD
  assert prompt_lib.split_params(frozen) == (frozen, {})
  assert prompt_lib.merge_params(frozen, {}) is frozen


def test_prompt_config_rejects_bad_settings():
  with pytest.raises(ValueError, match='at least 1'):
    prompt_lib.PromptConfig(0)
  with pytest.raises(ValueError, match="'middle'.*prefix"):
    prompt_lib.PromptConfig(3, 'middle')
  assert prompt_lib.PLACEMENTS == ('prefix', 'suffix')


# ----------------------------------------------------------------------------------------------
# A prompt table [K, P, D]: each row picks its prompt by prompt_ids.

K = 3
IDS = np.array([2, 0, 1, 2], np.int32)  # one id per row of TOKENS


def _table():
  return (100 + np.arange(K * P * D, dtype=np.float32)).reshape(K, P, D)


@pytest.mark.parametrize('placement', prompt_lib.PLACEMENTS)
def test_per_row_prompts_give_each_row_its_own(data, placement):
  _, embedded = data
  table = _table()
  per_row = jnp.asarray(table[IDS])  # [B, P, D]
  if placement == 'prefix':
    out = prompt_lib.prefix_prompt(per_row, jnp.asarray(embedded))
  else:
    out = prompt_lib.suffix_prompt(per_row, jnp.asarray(TOKENS), jnp.asarray(embedded))
  assert out.shape == (B, L + P, D)
  for b in range(B):  # row b is what its own prompt gives it alone
    expected, _ = reference(table[IDS[b]], TOKENS[b:b + 1], embedded[b:b + 1], placement)
    np.testing.assert_array_equal(np.asarray(out[b]), expected[0], err_msg=f'row {b}')


@pytest.mark.parametrize('placement', prompt_lib.PLACEMENTS)
def test_prompt_table_module_selects_by_prompt_ids(data, placement):
  _, embedded = data
  table = _table()
  module = prompt_lib.Prompt(prompt_lib.PromptConfig(P, placement, num_prompts=K))
  args = (jnp.asarray(TOKENS), jnp.asarray(embedded), jnp.asarray(IDS))
  boxed = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args))
  param = boxed['params']['prompt']['prompt']
  assert param.value.shape == (K, P, D) and param.value.dtype == jnp.float32
  assert tuple(param.names) == prompt_lib.TABLE_AXES == ('prompts', 'prompt', 'prompt_embed')
  combined = jax.jit(module.apply)({'params': {'prompt': {'prompt': table}}}, *args)
  expected = np.stack([reference(table[i], TOKENS[b:b + 1], embedded[b:b + 1], placement)[0][0]
                       for b, i in enumerate(IDS)])
  np.testing.assert_array_equal(np.asarray(combined), expected)
  with pytest.raises(ValueError, match=r'table of 3 prompts .*prompt_ids \[batch\]'):
    module.apply({'params': {'prompt': {'prompt': table}}}, *args[:2])


def test_one_prompt_ignores_prompt_ids_and_keeps_its_shape(data):
  prompt, embedded = data
  config = prompt_lib.PromptConfig(P, 'suffix')
  assert config.num_prompts == 1 and config.shape(D) == (P, D)
  assert prompt_lib.PromptConfig(P, num_prompts=K).shape(D) == (K, P, D)
  module = prompt_lib.Prompt(config)
  variables = {'params': {'prompt': {'prompt': prompt}}}
  plain = module.apply(variables, jnp.asarray(TOKENS), jnp.asarray(embedded))
  with_ids = module.apply(variables, jnp.asarray(TOKENS), jnp.asarray(embedded),
                          jnp.zeros((B,), jnp.int32))
  assert np.asarray(plain).tobytes() == np.asarray(with_ids).tobytes()


def test_prompt_ids_are_checked_on_the_host():
  check = prompt_lib.check_prompt_ids
  check(None, 1)
  check(np.array([0, 2, 1]), 3, batch=3)
  check([0, 0], 1)
  with pytest.raises(ValueError, match=r'table of 3 prompts \(num_prompts=3\).*prompt_ids'):
    check(None, 3)
  with pytest.raises(ValueError, match=r'prompt id 3 \(row 1\) is out of range: the model holds '
                                       r'3 prompt\(s\) \(num_prompts=3\), so ids must be in '
                                       r'\[0, 3\)'):
    check(np.array([0, 3, 7]), 3)
  with pytest.raises(ValueError, match=r'prompt id -1 \(row 0\).*\[0, 3\)'):
    check(jnp.array([-1, 0]), 3)
  with pytest.raises(ValueError, match=r'prompt id 1 \(row 1\).*holds 1 prompt\(s\)'):
    check(np.array([0, 1]), 1)
  with pytest.raises(ValueError, match=r'one per row, \[4\]\); got shape \(3,\)'):
    check(np.array([0, 1, 2]), 3, batch=4)
  with pytest.raises(ValueError, match=r'got shape \(2, 1\)'):
    check(np.zeros((2, 1), np.int32), 3)
  with pytest.raises(ValueError, match='prompt_ids must be integers; got dtype float32'):
    check(np.zeros((2,), np.float32), 3)


def test_num_prompts_must_be_a_positive_integer():
  for bad in (0, -2, 1.5, True):
    with pytest.raises(ValueError, match=rf'num_prompts .* at least 1, got {bad!r}'):
      prompt_lib.PromptConfig(3, num_prompts=bad)

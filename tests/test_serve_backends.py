"""`prompt-tuning serve` with a decoder-only model (serve/backends.py): a random tiny Llama saved
as an HF folder with a word-level tokenizer.json, a library of two prompts. In-process: a batch
mixing prompts answers each row as CausalPromptedModel with that prompt alone does (generate and
rank), rows are [BOS] + ids cut from the left, bad inputs are refused. One server process
(`--checkpoint` without gin): /v1/predict, OpenAI's /v1/completions and /v1/models, prompts
added and removed, 4xx errors in one line, warm-up, and SIGTERM answering every request sent."""

import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

pytest.importorskip('tokenizers')

from prompt_tuning import serve, testing  # noqa: E402
from prompt_tuning.checkpoints import hf_decoder  # noqa: E402
from prompt_tuning.data import batching  # noqa: E402
from prompt_tuning.data import causal_lm as data  # noqa: E402
from prompt_tuning.inference.causal_runner import CausalPromptedModel  # noqa: E402
from prompt_tuning.inference.decoding import DecodingConfig  # noqa: E402
from prompt_tuning.models import decoder_only  # noqa: E402
from prompt_tuning.models.decoder_config import DecoderConfig  # noqa: E402
from prompt_tuning.prompts import files as prompt_files  # noqa: E402
from prompt_tuning.prompts import library as library_lib  # noqa: E402

from serve_helpers import KEY, call, post_in_flight  # noqa: E402

WORDS = 'the cat sat on a mat dog ran far yes no maybe red blue green big small'.split()
INPUTS = ['the cat sat on a mat', 'dog ran', 'red blue green big small the cat sat on a mat',
          'yes']
LABELS = ('yes', 'no', 'maybe')
P, D, LENGTH, WIDTH = 3, 32, 4, 8
# The server's limits, shared by the in-process engine: one width (8), rows 1 or 4.
LIMITS = dict(max_batch_size=4, max_input_length=WIDTH, max_decode_length=LENGTH,
              fine_shapes=False)
FLAGS = ['--max_batch_size=4', f'--max_input_length={WIDTH}', f'--max_decode_length={LENGTH}',
         '--fine_shapes=false']


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  """(HF folder, library folder, config and params as the server loads them, tokenizer,
  library). The folder's config.json gives activations in bfloat16, the weights are float32."""
  from prompt_tuning.inference import causal_runner
  tmp = tmp_path_factory.mktemp('serve_llama')
  folder = str(tmp / 'llama')
  testing.word_level_tokenizer([' '.join(WORDS)], folder, {})
  vocab = data.CausalLMTokenizer(folder, add_bos=True).vocab_size
  config = DecoderConfig(vocab_size=vocab, d_model=D, num_layers=2, num_heads=4, num_kv_heads=2,
                         head_dim=8, d_ff=64, dtype='float32', bos_token_id=1, eos_token_id=2,
                         pad_token_id=0)
  rng = np.random.RandomState(0)  # numpy draws: no compile of the model's init
  params = jax.tree.map(lambda x: rng.normal(0, 0.5, x.shape).astype(np.float32),
                        decoder_only.param_shapes(config))
  hf_decoder.save(folder, config, params)
  config, params = causal_runner.load_frozen(folder, 'auto')
  tokenizer = data.CausalLMTokenizer(folder)  # as the server reads it: Llama adds BOS
  library_dir = tmp / 'library'
  for name, value in testing.random_prompts(('a', 'b'), P, D, scale=2.0).items():
    prompt_files.write_npy(str(library_dir / f'{name}.npy'), value)
  library = library_lib.load_library(str(library_dir), D)
  return folder, library_dir, config, params, tokenizer, library


@pytest.fixture(scope='module')
def expected(setup):
  """{prompt: (generated texts, rank scores [N, C])} of INPUTS, each prompt alone: a
  CausalPromptedModel holding only it, every row asking it, rows made here by data's rule and
  run in the server's shapes (4 rows of width 8, so the numbers must be equal, not close)."""
  _, _, config, params, tokenizer, library = setup
  candidates = data.candidate_ids(tokenizer, LABELS)
  rows = [data.prefix_ids(tokenizer, tokenizer.encode(text), WIDTH) for text in INPUTS]
  tokens, lengths = batching.pad_rows(rows, width=WIDTH), np.array([len(r) for r in rows])
  out = {}
  for name in ('a', 'b'):
    alone = CausalPromptedModel(config, params, library[name].value[None], names=[name])
    ids = alone.prompt_ids([name] * len(rows))
    generated = alone.generate(tokens, DecodingConfig(), LENGTH, ids, lengths)
    scores = alone.score(tokens, batching.pad_rows(candidates), ids, lengths,
                         np.array([len(c) for c in candidates]))
    out[name] = ([tokenizer.target_text(g) for g in generated], scores)
  return out


def test_a_mixed_prompt_batch_answers_each_row_as_its_prompt_alone(setup, expected):
  folder, _, config, params, tokenizer, library = setup
  store = serve.PromptStore(library, D)
  engine = serve.Engine(config, jax.device_put(params), store, tokenizer,
                        serve.ServeConfig(**LIMITS))
  server = serve.Server(engine, engine.config)
  try:
    names = ['a', 'b', 'b', 'a']
    generate = ('generate', DecodingConfig(), LENGTH)
    rows = [server.rows(n, [x], generate)[0] for n, x in zip(names, INPUTS)]
    # [BOS] + the text's ids, cut from the left to the width (BOS kept): data's rule.
    long = tokenizer.encode(INPUTS[2])
    assert rows[2].tokens == [tokenizer.bos_id] + long[len(long) - WIDTH + 1:]
    assert rows[1].tokens == [tokenizer.bos_id] + tokenizer.encode(INPUTS[1])
    answers = engine.run(generate, rows)
    for i, (name, answer) in enumerate(zip(names, answers)):
      assert answer['prediction'] == expected[name][0][i], (i, name)
    assert len({a['prediction'] for a in answers}) > 1  # the rows differ: the check can fail
    rank = ('rank', LABELS)
    answers = engine.run(rank, [server.rows(n, [x], rank)[0] for n, x in zip(names, INPUTS)])
    for i, (name, answer) in enumerate(zip(names, answers)):
      np.testing.assert_array_equal(answer['scores'], expected[name][1][i])
      assert answer['prediction'] == LABELS[int(np.argmax(expected[name][1][i]))]
    assert not np.allclose(expected['a'][1], expected['b'][1])  # the prompts matter
    assert len(engine.shapes) == 2  # one width, one row size: generate and rank
    # A family without BOS: an empty input is refused naming it, not run.
    bare = serve.Engine(config, params, store, data.CausalLMTokenizer(folder, add_bos=False),
                        serve.ServeConfig(**LIMITS))
    bare_server = serve.Server(bare, bare.config)
    try:
      with pytest.raises(serve.RequestError, match=r'"inputs\[1\]": is empty; this model adds '
                                                   r'no BOS') as info:
        bare_server.rows('a', ['cat', ''], generate)
      assert info.value.status == 400
    finally:
      bare_server.batcher.stop()
    with pytest.raises(ValueError, match='exceed the 8 learned positions of this '
                                         'GPT2LMHeadModel'):
      serve.Engine(DecoderConfig(family='gpt2', position='learned', max_position_embeddings=8,
                                 norm='layer', gated_mlp=False, activation='gelu_new'),
                   {}, store, tokenizer, serve.ServeConfig(**LIMITS))
  finally:
    server.batcher.stop()


def test_placement_comes_from_the_flag_or_the_librarys_runs(setup, tmp_path):
  from prompt_tuning.serve import backends
  from prompt_tuning.train import model_dir as model_dir_lib
  library = dict(setup[5])
  assert backends.placement(None, library) == 'prefix'
  run = tmp_path / 'run'
  run.mkdir()
  model_dir_lib.check_run_info(str(run), {'architecture': 'decoder_only',
                                          'placement': 'after_bos'})
  library['r'] = library_lib.LibraryPrompt('r', library['a'].value, str(run), 'model_dir')
  assert backends.placement(None, library) == 'after_bos'
  with pytest.raises(ValueError, match="--placement=prefix, but .* was trained with "
                                       "'after_bos'"):
    backends.placement('prefix', library)
  assert backends.is_decoder_only(setup[0]) and not backends.is_decoder_only(str(tmp_path))


# ----------------------------------------------------------------------------------------------
# One server process.


def test_serve_a_decoder_only_folder_without_gin(setup, expected, tmp_path):
  folder, library_dir = setup[0], setup[1]
  port = testing.free_port()
  (tmp_path / 'key').write_text(KEY)
  log = tmp_path / 'server.log'
  with open(log, 'w') as err:
    proc = subprocess.Popen(
        [sys.executable, '-m', 'prompt_tuning', 'serve', f'--checkpoint={folder}',
         f'--prompt_library={library_dir}', f'--port={port}',
         f'--api_key_file={tmp_path / "key"}', '--data_layer=false',
         f'--warmup_decode_lengths={LENGTH}', *FLAGS],
        stdout=subprocess.DEVNULL, stderr=err, cwd=str(tmp_path))
  try:
    testing.wait_until_up(proc, port, log=log)
    compiled = call(port, 'GET', '/metrics')[1]['compiled_shapes']
    assert compiled == 2  # warm-up: greedy at rows 1 and 4, width 8
    models = call(port, 'GET', '/v1/models')[1]
    assert models['object'] == 'list' and [m['id'] for m in models['data']] == ['a', 'b']
    # Two prompts at once, each answered as it alone does; no compile after warm-up.
    bodies = [{'task': name, 'inputs': INPUTS} for name in ('a', 'b')]
    for body, (status, answer) in zip(bodies, post_in_flight(port, bodies)()):
      assert status == 200 and answer['predictions'] == expected[body['task']][0], answer
    assert call(port, 'GET', '/metrics')[1]['compiled_shapes'] == compiled
    status, ranked, _ = call(port, 'POST', '/v1/predict', {'task': 'b', 'inputs': INPUTS,
                                                           'method': 'rank',
                                                           'labels': list(LABELS)})
    assert status == 200 and ranked['labels'] == list(LABELS)
    np.testing.assert_allclose(ranked['scores'], expected['b'][1], rtol=1e-6)
    # OpenAI's completions: `model` names a prompt.
    status, done, _ = call(port, 'POST', '/v1/completions',
                           {'model': 'a', 'prompt': INPUTS[:2], 'max_tokens': LENGTH})
    assert status == 200, done
    assert done['object'] == 'text_completion' and done['id'].startswith('cmpl-')
    assert done['model'] == 'a' and [c['index'] for c in done['choices']] == [0, 1]
    assert [c['text'] for c in done['choices']] == expected['a'][0][:2]
    assert all(c['finish_reason'] in ('stop', 'length') and c['logprobs'] is None
               for c in done['choices'])
    usage = done['usage']
    assert usage['prompt_tokens'] == sum(1 + len(t.split()) for t in INPUTS[:2])  # BOS + words
    assert usage['total_tokens'] == usage['prompt_tokens'] + usage['completion_tokens']
    # Bad requests: a 4xx with one line naming the problem; the server goes on.
    for method, path, body, want, words in [
        ('POST', '/v1/prompts', {'name': 'wide', 'values': [[0.0] * 8] * P}, 400, 'width 8'),
        ('POST', '/v1/completions', {'model': 'nope', 'prompt': 'a'}, 404, "no prompt named"),
        ('POST', '/v1/completions', {'model': 'a', 'prompt': [10 ** 6]}, 400, 'outside the voc'),
        ('POST', '/v1/predict', {'task': 'a', 'inputs': ['x'], 'method': 'rank'}, 400,
         '"labels"')]:
      status, answer, _ = call(port, method, path, body)
      message = answer['error']['message']
      assert status == want and words in message and '\n' not in message, (status, answer)
    # Prompts at run time: a prompt of the model's width is added, served, removed.
    added = {'name': 'c', 'values': np.full((P, D), 0.5).tolist()}
    assert call(port, 'POST', '/v1/prompts', added)[0] == 201
    assert call(port, 'POST', '/v1/predict', {'task': 'c', 'inputs': INPUTS[:2]})[0] == 200
    assert call(port, 'DELETE', '/v1/prompts/c')[0] == 200
    assert call(port, 'POST', '/v1/predict', {'task': 'c', 'inputs': INPUTS[:1]})[0] == 404
    # SIGTERM with requests in flight: each answered, exit 0.
    answers = post_in_flight(port, [{'task': 'ab'[i % 2], 'inputs': INPUTS} for i in range(8)])
    proc.send_signal(signal.SIGTERM)
    results = answers()
    assert [r[0] if isinstance(r, tuple) else repr(r) for r in results] == [200] * 8
    assert all(r[1]['predictions'] == expected['ab'[i % 2]][0] for i, r in enumerate(results))
    assert proc.wait(60) == 0, log.read_text()[-3000:]
    assert 'stopped on SIGTERM: answered every request received' in log.read_text()
    assert 'CausalBackend, placement prefix' in log.read_text()
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait(10)

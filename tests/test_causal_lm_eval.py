"""The decoder-only evaluator (inference/causal_lm_eval.py) on the real RTE validation file, a
random tiny Llama and a tokenizer built here, run through CausalPromptedModel: its predictions
against a full-forward reference (no cache), its metrics and files against the task's own, a
prompt table, and a mixture (RTE + CB) whose tasks rank their own label words."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip('seqio')
pytest.importorskip('tokenizers')

from prompt_tuning import testing  # noqa: E402
from prompt_tuning.data import causal_lm as data  # noqa: E402
from prompt_tuning.data import tasks  # noqa: E402
from prompt_tuning.inference.causal_lm_eval import CausalLMEvaluator  # noqa: E402
from prompt_tuning.inference.causal_runner import CausalPromptedModel  # noqa: E402
from prompt_tuning.models import decoder_only  # noqa: E402
from prompt_tuning.models.decoder_config import DecoderConfig  # noqa: E402

TASK = 'super_glue_rte_local'
LENGTHS = {'inputs': 48, 'targets': 4}
P = 3


@pytest.fixture(scope='module')
def setup(shared, tmp_path_factory):
  """(tokenizer, model, params, evaluator of 3 examples, generate and rank)."""
  saved = tasks.get_settings()
  tasks.set_local_data_dir(shared('data'))
  try:
    texts = data.text_examples(TASK, 'validation')
    corpus = [t for ex in texts for t in (ex['inputs'], ex['targets'])]
    folder = testing.word_level_tokenizer(corpus, str(tmp_path_factory.mktemp('t') / 'tok'),
                                          {'model_type': 'llama', 'bos_token_id': 1,
                                           'eos_token_id': 2})
    tokenizer = data.CausalLMTokenizer(folder)
    config = DecoderConfig(vocab_size=tokenizer.vocab_size, d_model=32, num_layers=2,
                           num_heads=4, num_kv_heads=2, head_dim=8, d_ff=64, dtype='float32')
    params = decoder_only.init_params(config, jax.random.PRNGKey(0))
    evaluator = CausalLMEvaluator(TASK, 'validation', tokenizer, LENGTHS,
                                  methods=('generate', 'rank'), batch_size=4, max_examples=3)
    yield tokenizer, config, params, evaluator
  finally:
    tasks.restore_settings(saved)


def _logp(model, params, prefix, continuation, prompt):
  """log p(continuation | prompt, prefix) from one full forward pass (no cache)."""
  row = jnp.asarray([list(prefix) + list(continuation)], jnp.int32)
  logits = model.apply({'params': params}, row, prompt)[0]
  logp = jax.nn.log_softmax(logits, axis=-1)
  start = len(prefix) - 1  # logits[t] predict token t + 1
  return float(sum(logp[start + j, t] for j, t in enumerate(continuation)))


def _greedy(model, params, prefix, steps, prompt):
  row = list(prefix)
  for _ in range(steps):
    logits = model.apply({'params': params}, jnp.asarray([row], jnp.int32), prompt)[0]
    row.append(int(jnp.argmax(logits[-1])))
  return row[len(prefix):]


def test_predictions_equal_a_full_forward_reference_and_metrics_the_tasks(setup, tmp_path):
  tokenizer, config, params, evaluator = setup
  model = decoder_only.DecoderOnly(config)
  prompt = np.random.RandomState(0).normal(0, 0.5, (P, 32)).astype(np.float32)
  runner = CausalPromptedModel(config, params, prompt)
  ranked = evaluator.predictions(runner, 'rank')
  generated = evaluator.predictions(runner, 'generate')
  labels = list(tasks.TASK_INFO[TASK].labels)
  candidates = data.label_candidates(TASK, tokenizer)
  for ex, rank_text, gen_text in zip(evaluator.examples, ranked, generated):
    scores = [_logp(model, params, ex['inputs'], c, prompt) for c in candidates]
    assert rank_text == labels[int(np.argmax(scores))]
    assert gen_text == tokenizer.target_text(
        _greedy(model, params, ex['inputs'], LENGTHS['targets'], prompt))
  evaluator.output_dir = str(tmp_path)  # T5's files: predictions and a metrics record
  metrics = evaluator.evaluate(runner, 7, tag='eval')
  expected = data.evaluate_predictions(TASK, evaluator.examples, ranked)
  assert metrics['rank/accuracy'] == pytest.approx(expected['accuracy'])
  assert {'generate/accuracy', 'generate/invalid', 'rank/invalid'} <= set(metrics)
  rows = [json.loads(line) for line in open(tmp_path / f'{TASK}-rank-eval-step7.jsonl')]
  assert [r['prediction'] for r in rows] == ranked
  assert rows[0]['input'] == evaluator.examples[0]['inputs_pretokenized']
  records = [json.loads(line) for line in open(tmp_path / f'{TASK}-metrics.jsonl')]
  assert [(r['method'], r['step']) for r in records] == [('generate', 7), ('rank', 7)]
  # The labels themselves score 100: the metrics are the task's own.
  perfect = data.evaluate_predictions(TASK, evaluator.examples,
                                      [ex['targets_pretokenized'] for ex in evaluator.examples])
  assert perfect['accuracy'] == 100.0


def test_a_table_answers_each_task_with_its_prompt(setup):
  tokenizer, config, params, _ = setup
  table = np.random.RandomState(1).normal(0, 0.5, (2, P, 32)).astype(np.float32)
  evaluator = CausalLMEvaluator(TASK, 'validation', tokenizer, LENGTHS, methods=('rank',),
                                batch_size=4, max_examples=6, prompt_ids={TASK: 1})
  assert (evaluator.predictions(CausalPromptedModel(config, params, table), 'rank') ==
          evaluator.predictions(CausalPromptedModel(config, params, table[1]), 'rank'))
  with pytest.raises(ValueError, match='EVAL_METHODS'):
    CausalLMEvaluator(TASK, 'validation', tokenizer, LENGTHS, methods=('beam',))


def test_a_mixture_ranks_each_tasks_own_labels_with_its_prompt(setup):
  """RTE (2 labels) + CB (3): each task's examples rank over its own label words with its own
  prompt of the table, as each task alone does; metrics per task."""
  import seqio
  tokenizer, config, params, _ = setup
  mixture, names = 'causal_lm_eval_test_mixture', [TASK, 'super_glue_cb_local']
  seqio.MixtureRegistry.add(mixture, names, default_rate=1.0)
  try:
    table = np.random.RandomState(2).normal(0, 0.5, (2, P, 32)).astype(np.float32)
    ids = {name: k for k, name in enumerate(names)}
    evaluator = CausalLMEvaluator(mixture, 'validation', tokenizer, LENGTHS, methods=('rank',),
                                  batch_size=4, max_examples=3, prompt_ids=ids)
    mixed = evaluator.predictions(CausalPromptedModel(config, params, table), 'rank')
    for name in names:
      alone = CausalLMEvaluator(name, 'validation', tokenizer, LENGTHS, methods=('rank',),
                                batch_size=4, max_examples=3).predictions(
          CausalPromptedModel(config, params, table[ids[name]]), 'rank')
      assert set(alone) <= set(tasks.TASK_INFO[name].labels)
      assert [p for p, ex in zip(mixed, evaluator.examples) if ex['task'] == name] == alone
    metrics = evaluator.evaluate(CausalPromptedModel(config, params, table), 0)
    assert 'rank/super_glue_cb_local/accuracy' in metrics
  finally:
    seqio.MixtureRegistry.remove(mixture)

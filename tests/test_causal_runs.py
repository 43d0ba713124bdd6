"""`prompt-tuning eval` and `infer` of decoder-only models (causal_runs.py through runs.evaluate /
runs.infer) on the real RTE validation file, a random tiny Llama HF folder and a MODEL_DIR from a
2-step train_causal_lm: T5's files and results, the run's own placement and base folder, one-pass
ensembles equal to their members run alone, mixed-task infer equal to each prompt alone, the gin
model blocks, and bad input as one line. Two CLI processes (eval, mixed infer)."""

import json

import jax
import numpy as np
import pytest

pytest.importorskip('seqio')
pytest.importorskip('tokenizers')

from prompt_tuning import runs, testing  # noqa: E402
from prompt_tuning.checkpoints import hf_decoder  # noqa: E402
from prompt_tuning.data import causal_lm as data  # noqa: E402
from prompt_tuning.data import tasks  # noqa: E402
from prompt_tuning.inference.causal_lm_eval import CausalLMEvaluator  # noqa: E402
from prompt_tuning.inference.causal_runner import CausalPromptedModel  # noqa: E402
from prompt_tuning.models import decoder_only  # noqa: E402
from prompt_tuning.models.decoder_config import DecoderConfig  # noqa: E402
from prompt_tuning.models.decoder_model import DecoderModel  # noqa: E402
from prompt_tuning.models.prompt import PromptConfig  # noqa: E402
from prompt_tuning.prompts import ensembles  # noqa: E402
from prompt_tuning.train import model_dir as model_dir_lib  # noqa: E402
from prompt_tuning.train.causal_lm_run import train_causal_lm  # noqa: E402

TASK = 'super_glue_rte_local'
LENGTHS = {'inputs': 48, 'targets': 4}
P, D = 4, 32
LLAMA = DecoderModel('llama', add_bos=True)
AFTER_BOS = PromptConfig(P, 'after_bos')  # the run's placement: its programs compile once


@pytest.fixture(scope='module')
def run(shared, tmp_path_factory):
  """(HF folder, MODEL_DIR of a 2-step after-BOS run, config, params, tokenizer)."""
  saved = tasks.get_settings()
  tasks.set_local_data_dir(shared('data'))
  root = tmp_path_factory.mktemp('causal_runs')
  folder = str(root / 'llama')
  # Validation's words only: a small vocabulary (training's other words are <unk>).
  corpus = [t for ex in data.text_examples(TASK, 'validation') for t in (ex['inputs'],
                                                                       ex['targets'])]
  testing.word_level_tokenizer(corpus, folder, {})
  tokenizer = data.CausalLMTokenizer(folder, add_bos=True)
  config = DecoderConfig(vocab_size=tokenizer.vocab_size, d_model=D, num_layers=2, num_heads=4,
                         num_kv_heads=2, head_dim=8, d_ff=64, dtype='float32', bos_token_id=1,
                         eos_token_id=2, pad_token_id=0)
  hf_decoder.save(folder, config, decoder_only.init_params(config, jax.random.PRNGKey(0)))
  config, params = hf_decoder.load(folder)  # as the commands load it (bfloat16 activations)
  train_causal_lm(model_dir=str(root / 'run'), mixture_or_task_name=TASK,
                  task_feature_lengths=LENGTHS, batch_size=4, train_steps=2,
                  checkpoint_dir=folder, prompt=PromptConfig(P, 'after_bos'), eval_period=0,
                  group_by_length=0, export_formats=('npy',))
  yield folder, str(root / 'run'), config, params, tokenizer
  tasks.restore_settings(saved)


def _eval(**kw):
  settings = dict(model=LLAMA, model_dir=None, mixture_or_task_name=TASK,
                  task_feature_lengths=LENGTHS, initial_checkpoint_path=None,
                  methods=('generate', 'rank'), max_examples=4, batch_size=4, prompt=AFTER_BOS)
  return runs.evaluate(**{**settings, **kw})


def test_eval_of_a_model_dir_takes_its_folder_placement_and_step(run, tmp_path):
  folder, model_dir, config, params, tokenizer = run
  metrics = _eval(model_dir=model_dir, output_dir=str(tmp_path), prompt=PromptConfig(P))
  assert {'generate/accuracy', 'rank/accuracy'} <= set(metrics)
  # The reference: the step-2 prompt after BOS, the run's placement, not PROMPT's ('prefix').
  prompt, _ = model_dir_lib.load_prompt(model_dir, 2)
  alone = CausalPromptedModel(config, params, prompt, placement='after_bos')
  evaluator = CausalLMEvaluator(TASK, 'validation', tokenizer, LENGTHS, methods=('rank',),
                                batch_size=4, max_examples=4)
  rows = [json.loads(line) for line in open(tmp_path / f'{TASK}-rank-eval-step2.jsonl')]
  assert [r['prediction'] for r in rows] == evaluator.predictions(alone, 'rank')
  assert {'input', 'target', 'prediction'} == set(rows[0])
  record = json.loads(open(tmp_path / f'{TASK}-metrics.jsonl').readlines()[-1])
  assert record['step'] == 2 and record['accuracy'] == metrics['rank/accuracy']
  # A given step: 0, the prompt before training.
  assert 'rank/accuracy' in _eval(model_dir=model_dir, output_dir=str(tmp_path), step=0)
  assert (tmp_path / f'{TASK}-generate-eval-step0.jsonl').exists()


def test_an_ensemble_in_one_pass_equals_its_members_alone(run, tmp_path):
  folder, _, config, params, tokenizer = run
  rng = np.random.RandomState(3)
  table = rng.normal(0, 1.0, (3, P, D)).astype(np.float32)
  paths = []
  for k in range(3):
    np.save(tmp_path / f'm{k}.npy', table[k])
    paths.append(str(tmp_path / f'm{k}.npy'))
  results = _eval(initial_checkpoint_path=folder, ensemble_prompts=paths,  # PROMPT's placement
                  output_dir=str(tmp_path / 'out'))
  evaluator = CausalLMEvaluator(TASK, 'validation', tokenizer, LENGTHS, methods=('rank',),
                                batch_size=4, max_examples=4)
  alone = [CausalPromptedModel(config, params, table[k], placement='after_bos')
           for k in range(3)]
  labels, candidates_KxT, lengths_K = evaluator.candidates[TASK]
  scores = np.stack([m.score_rows(evaluator.rows, candidates_KxT, lengths_K, batch_size=4)
                     for m in alone])
  assert labels == tuple(tasks.TASK_INFO[TASK].labels)
  expected = [labels[c] for c in ensembles.mean_log_likelihood(scores)]
  out = tmp_path / 'out'
  rows = [json.loads(line) for line in open(out / f'{TASK}-rank-ensemble-step0.jsonl')]
  assert [r['prediction'] for r in rows] == expected
  files = sorted(out.glob(f'{TASK}-generate-ensemble-member-*-step0.jsonl'))  # m0, m1, m2
  assert len(files) == 3
  members = [[json.loads(line)['prediction'] for line in open(f)] for f in files]
  rows = [json.loads(line) for line in open(out / f'{TASK}-generate-ensemble-step0.jsonl')]
  assert [r['prediction'] for r in rows] == ensembles.majority_vote(members)
  assert len(results['rank/members']) == 3 and 'accuracy' in results['generate/ensemble']


def test_infer_writes_a_splits_predictions(run, tmp_path):
  folder, model_dir, config, params, tokenizer = run
  path = runs.infer(model=LLAMA, model_dir=model_dir, mixture_or_task_name=TASK,
                    task_feature_lengths=LENGTHS, initial_checkpoint_path=folder,
                    max_examples=4, batch_size=4, output_dir=str(tmp_path))
  assert path.endswith(f'{TASK}-validation-step2.jsonl')
  rows = [json.loads(line) for line in open(path)]
  prompt, _ = model_dir_lib.load_prompt(model_dir)
  alone = CausalPromptedModel(config, params, prompt, placement='after_bos')
  evaluator = CausalLMEvaluator(TASK, 'validation', tokenizer, LENGTHS, batch_size=4,
                                max_examples=4)
  assert [r['prediction'] for r in rows] == evaluator.generate(alone)
  assert rows[0]['input'] == evaluator.examples[0]['inputs_pretokenized']


def test_bad_input_is_one_line(run, shared, tmp_path):
  folder, model_dir, *_ = run
  t5x = shared(*testing.FIXTURE)
  with pytest.raises(ValueError, match='not a decoder-only Hugging Face folder'):
    _eval(model_dir=model_dir, initial_checkpoint_path=t5x)
  with pytest.raises(ValueError, match=r'decoder-only run \(llama\).*models/llama.gin'):
    _eval(model=None, model_dir=model_dir)
  with pytest.raises(ValueError, match=r'holds a llama model.*models/qwen2.gin'):
    _eval(model=DecoderModel('qwen2'), model_dir=model_dir)
  np.save(tmp_path / 'p.npy', np.zeros((P, 4), np.float32))
  with pytest.raises(ValueError, match='a decoder-only llama model, not T5 1.1'):
    _eval(model=None, prompt_file=str(tmp_path / 'p.npy'), initial_checkpoint_path=folder)
  (tmp_path / 't5run').mkdir()
  (tmp_path / 't5run' / 'run_info.json').write_text(json.dumps({'prompt_length': P}))
  with pytest.raises(ValueError, match='is a T5 run'):
    _eval(model_dir=str(tmp_path / 't5run'), initial_checkpoint_path=folder)
  with pytest.raises(ValueError, match='runs/causal_lm_prompt_tuning.gin'):
    runs.train(model=LLAMA, model_dir=str(tmp_path / 'x'), mixture_or_task_name=TASK,
               task_feature_lengths=LENGTHS, batch_size=4, train_steps=1,
               initial_checkpoint_path=folder)
  assert not (tmp_path / 'x').exists()


def test_the_family_blocks_parse_to_their_model():
  import gin

  from prompt_tuning import gin_utils
  for family, bos in (('llama', True), ('qwen2', False), ('mistral', True), ('gpt2', False)):
    gin.clear_config()
    try:
      for path in gin_utils.package_gin_dirs():
        gin.add_config_file_search_path(path)
      gin.parse_config_files_and_bindings([f'models/{family}.gin'], [])
      model = gin.query_parameter('%MODEL').scoped_configurable_fn()
      assert (model.family, model.add_bos) == (family, bos)
      assert gin.query_parameter('%PROMPT_PLACEMENT') == 'prefix'
    finally:
      gin.clear_config()


def _mixed_inputs(tmp_path):
  """(library folder of prompts 'a' and 'b', their table, an input file mixing them, names)."""
  table = np.random.RandomState(5).normal(0, 1.0, (2, P, D)).astype(np.float32)
  (tmp_path / 'lib').mkdir()
  np.save(tmp_path / 'lib' / 'a.npy', table[0])
  np.save(tmp_path / 'lib' / 'b.npy', table[1])
  texts = [ex['inputs'] for ex in data.text_examples(TASK, 'validation', 4)]
  names = ['a', 'b', 'b', 'a']
  (tmp_path / 'mixed.jsonl').write_text(''.join(
      json.dumps({'prompt': n, 'inputs': t}) + '\n' for n, t in zip(names, texts)))
  return str(tmp_path / 'lib'), table, str(tmp_path / 'mixed.jsonl'), names, texts


def _infer_mixed(folder, library, inputs, output_dir):
  return runs.infer(model=LLAMA, model_dir=None, mixture_or_task_name=None,
                    task_feature_lengths=LENGTHS, initial_checkpoint_path=folder,
                    prompt=AFTER_BOS, prompt_library=library, input_file=inputs, batch_size=4,
                    output_dir=output_dir)


def test_mixed_infer_answers_each_row_with_its_prompt(run, tmp_path):
  folder, _, config, params, tokenizer = run
  library, table, inputs, names, texts = _mixed_inputs(tmp_path)
  path = _infer_mixed(folder, library, inputs, str(tmp_path / 'out'))
  assert path == str(tmp_path / 'out' / 'mixed-predictions.jsonl')
  rows = [json.loads(line) for line in open(path)]
  assert [(r['prompt'], r['inputs']) for r in rows] == list(zip(names, texts))
  # Row b of the mixed table runs with prompt names[b]: its scores are that prompt's alone.
  prefixes = [data.encode_example(tokenizer, t, '', LENGTHS)[0] for t in texts]
  candidates = np.array([[5, 6, 2], [7, 2, 0]], np.int32)
  config = config.replace(dtype='float32')  # (float32 activations: equal within 1e-5)
  mixed = CausalPromptedModel(config, params, table, names=['a', 'b'], placement='after_bos')
  scores = mixed.score_rows(prefixes, candidates, np.array([3, 2]), batch_size=4,
                            prompt_ids_N=mixed.prompt_ids(names))
  for k in range(2):
    alone = CausalPromptedModel(config, params, table[k], placement='after_bos')
    mine = np.array(names) == 'ab'[k]
    np.testing.assert_allclose(
        alone.score_rows(prefixes, candidates, np.array([3, 2]), batch_size=4)[mine],
        scores[mine], rtol=1e-5, atol=1e-5)


def test_the_commands_eval_and_mixed_infer(run, shared, tmp_path):
  from cli_helpers import run_cli
  folder, model_dir, *_ = run
  env = {'PROMPT_TUNING_DATA_DIR': shared('data')}
  common = ['--gin_file=models/llama.gin', f'--gin.TASK_FEATURE_LENGTHS={LENGTHS}']
  done = run_cli(['eval', '--gin_file=runs/prompt_eval.gin', *common,
                  f'--gin.MODEL_DIR={model_dir}', '--gin.INITIAL_CHECKPOINT_PATH=None',
                  f'--gin.MIXTURE_OR_TASK_NAME={TASK}', '--gin.EVAL_MAX_EXAMPLES=4',
                  f'--gin.EVAL_OUTPUT_DIR={tmp_path / "eval"}'], env, str(tmp_path))
  assert '"rank/accuracy"' in done.stdout
  in_process = tmp_path / 'in_process'
  _eval(model_dir=model_dir, output_dir=str(in_process))
  for method in ('generate', 'rank'):
    name = f'{TASK}-{method}-eval-step2.jsonl'
    assert (tmp_path / 'eval' / name).read_text() == (in_process / name).read_text()

  library, _, inputs, _, _ = _mixed_inputs(tmp_path)
  expected = open(_infer_mixed(folder, library, inputs, str(tmp_path / 'mine'))).read()
  run_cli(['infer', '--gin_file=runs/mixed_task_infer.gin', *common,
           f'--gin.INITIAL_CHECKPOINT_PATH={folder}', f'--gin.PROMPT_LIBRARY={library}',
           f'--gin.INFER_INPUT_FILE={inputs}', "--gin.PROMPT_PLACEMENT='after_bos'",
           f'--gin.INFER_OUTPUT_DIR={tmp_path / "infer"}'], env, str(tmp_path))
  assert (tmp_path / 'infer' / 'mixed-predictions.jsonl').read_text() == expected

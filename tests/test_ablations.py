"""The paper's Figure 3 ablations as switches: prompt-length and initialisation gin blocks, and
the "span corruption + sentinel" targets (data/sentinel.py, gin/runs/sentinel_targets.gin) on
the real MRPC dev file."""

import glob
import json
import os

import numpy as np
import pytest

from prompt_tuning import cli, gin_utils, testing
from prompt_tuning.testing import FIXTURE, VOCAB

T5_EXTRA_ID_0 = 32099
LENGTHS = {'inputs': 256, 'targets': 8}


# What a command line adds to a preset (the macros it leaves %gin.REQUIRED).
REQUIRED = ("MODEL_DIR = '/tmp/run'", "INITIAL_CHECKPOINT_PATH = '/tmp/checkpoint'",
            "MIXTURE_OR_TASK_NAME = 'glue_mrpc'",
            "TASK_FEATURE_LENGTHS = {'inputs': 512, 'targets': 8}")


def parsed(*gin_files):
  """The CLI's gin parsing (search paths, includes, checks) of `train` with these files and the
  REQUIRED macros."""
  import gin
  gin.clear_config()
  args = cli.parse_args(['train', *[f'--gin_file={f}' for f in gin_files],
                         *[f'--gin_bindings={b}' for b in REQUIRED]])
  gin_utils.setup(args)


def resolved(value):
  """A bound value, a macro (%NAME) replaced by its value."""
  import gin
  if isinstance(value, gin.config.ConfigurableReference) and value.selector == 'gin.macro':
    return gin.query_parameter('%' + '/'.join(value.scopes))
  return value


# =================================== gin blocks ===================================

@pytest.mark.parametrize('length', [1, 5, 20, 100, 150])
def test_length_blocks_set_the_prompt_length_over_a_preset(length):
  gin = pytest.importorskip('gin')
  from prompt_tuning.models import prompt
  try:
    parsed('configs/paper/t5_1_1_base_mrpc.gin', f'prompts/length_{length}.gin')
    assert gin.query_parameter('%PROMPT_LENGTH') == length
    config = gin.query_parameter('%PROMPT').scoped_configurable_fn()
    assert isinstance(config, prompt.PromptConfig) and config.length == length
  finally:
    gin.clear_config()


@pytest.mark.parametrize('name, settings', [
    ('random_uniform', {'name': 'random_uniform', 'scale': 0.5}),
    ('sampled_vocab', {'name': 'sampled_vocab', 'population': 5000}),
    ('class_labels', {'name': 'class_labels', 'labels': ['not_equivalent', 'equivalent'],
                      'population': 5000, 'fallback': 'sampled_vocab'})])
def test_the_three_initialisations_of_the_paper(name, settings):
  gin = pytest.importorskip('gin')
  from prompt_tuning.prompts import init
  try:
    # The presets include class_labels.gin themselves; the others go after a preset.
    extra = [] if name == 'class_labels' else [f'prompts/{name}.gin']
    parsed('configs/paper/t5_1_1_base_mrpc.gin', *extra)
    assert gin.query_parameter('%PROMPT_INIT').configurable.wrapped is init.initializer_by_name
    bound = gin.get_bindings(init.initializer_by_name)
    # Over the preset's class_labels.gin: its other settings stay bound but go unread.
    assert {key: resolved(bound[key]) for key in settings} == settings
  finally:
    gin.clear_config()


@pytest.mark.parametrize('order', ['first', 'last'])
def test_sentinel_block_turns_the_variant_on_for_train_and_eval(order):
  gin = pytest.importorskip('gin')
  from prompt_tuning import runs
  files = ['configs/paper/t5_1_1_base_mrpc.gin', 'runs/prompt_eval.gin']
  files.insert(0 if order == 'first' else 2, 'runs/sentinel_targets.gin')
  try:
    parsed(*files)
    assert gin.get_bindings(runs.train)['sentinel_targets'] is True
    assert gin.get_bindings(runs.evaluate)['sentinel_targets'] is True
  finally:
    gin.clear_config()
  try:  # without it, nothing is bound: the functions' default (off) applies
    parsed('configs/paper/t5_1_1_base_mrpc.gin', 'runs/prompt_eval.gin')
    assert 'sentinel_targets' not in gin.get_bindings(runs.train)
    assert 'sentinel_targets' not in gin.get_bindings(runs.evaluate)
  finally:
    gin.clear_config()


@pytest.mark.parametrize('preset', ['configs/paper/t5_1_1_base_mrpc.gin',
                                    'configs/paper/t5_1_1_xxl_squad.gin'])
def test_model_tuning_block_over_a_preset_sets_the_baseline(preset):
  """runs/model_tuning.gin after a preset: every weight trains, with T5X's fine-tuning settings
  over the preset's prompt-tuning ones."""
  gin = pytest.importorskip('gin')
  from prompt_tuning import runs
  from prompt_tuning.train import optim
  try:
    parsed(preset, 'runs/model_tuning.gin')
    assert resolved(gin.get_bindings(runs.train)['trainable']) == 'all'
    assert gin.query_parameter('%LEARNING_RATE') == 0.001
    assert gin.query_parameter('%BATCH_SIZE') == 128
    assert gin.query_parameter('%DROPOUT_RATE') == 0.1
    assert gin.query_parameter('%ADAFACTOR_STEP_OFFSET') == 'checkpoint'
    assert gin.get_bindings(optim.make_optimizer) == {
        'name': 'adafactor', 'factored': True, 'multiply_by_parameter_scale': True,
        'weight_decay': 0.0}
  finally:
    gin.clear_config()


@pytest.mark.parametrize('size, d_model', [('small', 512), ('base', 768), ('large', 1024),
                                           ('xl', 2048), ('xxl', 4096)])
def test_squad_presets_train_on_mrqa_squad(size, d_model):
  gin = pytest.importorskip('gin')
  from prompt_tuning.data import tasks
  try:
    gin.clear_config()
    args = cli.parse_args(['train', f'--gin_file=configs/paper/t5_1_1_{size}_squad.gin',
                           *[f'--gin_bindings={b}' for b in REQUIRED[:2]]])
    gin_utils.setup(args)
    assert gin.query_parameter('%MIXTURE_OR_TASK_NAME') == 'mrqa_squad'
    assert gin.query_parameter('%TASK_FEATURE_LENGTHS') == {'inputs': 512, 'targets': 32}
    assert gin.query_parameter('%MODEL').scoped_configurable_fn().d_model == d_model
    assert resolved(gin.query_parameter('prompt_init.initializer_by_name.name')) == (
        'sampled_vocab')
    assert tasks.get_task_or_mixture('mrqa_out_of_domain')  # what the preset says to evaluate
  finally:
    gin.clear_config()


# ================================ sentinel targets ================================

@pytest.fixture(scope='module')
def data(shared):
  pytest.importorskip('seqio')
  from prompt_tuning.data import tasks
  saved = tasks.get_settings()
  tasks.set_vocabulary_path(shared(*VOCAB))
  tasks.set_local_data_dir(shared('data'))
  yield tasks
  tasks.restore_settings(saved)
  from prompt_tuning.data import sentinel
  sentinel.remove_variants()  # the registry as imported, for the other test modules


def test_variants_are_made_on_first_use_for_tasks_and_mixtures(data):
  import seqio
  tasks = data
  assert tasks.sentinel_task('glue_mrpc_local') == 'glue_mrpc_local_sentinel'
  assert tasks.sentinel_task('glue_mrpc_local_sentinel') == 'glue_mrpc_local_sentinel'
  base, info = tasks.TASK_INFO['glue_mrpc_local'], tasks.TASK_INFO['glue_mrpc_local_sentinel']
  assert info.sentinel_targets and not base.sentinel_targets
  assert (info.labels, info.main_metric, info.benchmark) == (
      base.labels, base.main_metric, base.benchmark)
  # A lookup of the name makes it too (e.g. MIXTURE_OR_TASK_NAME='..._sentinel' for eval).
  rte = tasks.get_task_or_mixture('super_glue_rte_local_sentinel')
  assert isinstance(rte, seqio.Task) and set(rte.splits) == {'train', 'validation'}
  assert tasks.read_local_examples('super_glue_rte_local_sentinel', 'validation')[0] == (
      tasks.read_local_examples('super_glue_rte_local', 'validation')[0])
  mixture = tasks.get_task_or_mixture(tasks.sentinel_task('glue_mrpc_from_qqp_zeroshot_local'))
  assert sorted(t.name for t in mixture.tasks) == ['glue_mrpc_from_qqp_local_sentinel',
                                                   'glue_qqp_local_sentinel']
  assert tasks.TASK_INFO[mixture.name].main_metric == 'glue_qqp_local_sentinel/f1'
  assert tasks.target_prefix(mixture.name) == (T5_EXTRA_ID_0,)
  assert tasks.target_prefix('glue_mrpc_local') == ()
  with pytest.raises(ValueError, match='no sentinel ids'):
    tasks.sentinel_task('quickstart_max')  # bytes: no sentinels
  with pytest.raises(ValueError, match='Unknown task'):
    tasks.get_task_or_mixture('glue_nope_sentinel')


def test_targets_start_with_the_sentinel_and_a_perfect_answer_scores_100(data):
  from prompt_tuning.data import pipeline
  from prompt_tuning.inference import runner
  name = data.sentinel_task('glue_mrpc_local')
  examples, _ = pipeline.get_eval_examples(name, 'validation', LENGTHS)
  own, _ = pipeline.get_eval_examples('glue_mrpc_local', 'validation', LENGTHS)
  assert len(examples) == len(own) == 408
  for ex, base in zip(examples, own):
    assert ex['targets'] == [T5_EXTRA_ID_0] + base['targets']  # then the label's ids and EOS
    for key in ('inputs', 'inputs_pretokenized', 'targets_pretokenized', 'idx'):
      assert ex[key] == base[key]
  # Training batches: the decoder is taught to write the sentinel first.
  batch = next(pipeline.get_batches(name, 'validation', LENGTHS, 4, shuffle=False))
  np.testing.assert_array_equal(batch['decoder_target_tokens'][:, 0], T5_EXTRA_ID_0)
  np.testing.assert_array_equal(batch['decoder_input_tokens'][:, 1], T5_EXTRA_ID_0)
  # What generation decodes for the targets' ids, the way evaluation turns ids into text.
  vocab = data.get_vocabulary(name)
  generated = [runner.text(vocab, ex['targets']) for ex in examples]
  assert generated[0] == '<extra_id_0> equivalent'
  assert pipeline.evaluate_predictions(name, examples, generated) == {
      'f1': 100.0, 'accuracy': 100.0, 'invalid': 0}
  # The task itself is unchanged: the sentinel makes every answer invalid there.
  assert pipeline.evaluate_predictions('glue_mrpc_local', own, generated)['invalid'] == 408
  # Answers without the sentinel still count (it is only stripped when there).
  plain = [ex['targets_pretokenized'] for ex in examples]
  assert pipeline.evaluate_predictions(name, examples, plain)['accuracy'] == 100.0


def test_eval_with_the_block_ranks_and_writes_the_variant(data, shared, tmp_path, capsys):
  """`prompt-tuning eval` with runs/sentinel_targets.gin on the tiny T5X fixture: the variant is
  evaluated (its own prediction files), rank classification scores "<extra_id_0> label"."""
  gin = pytest.importorskip('gin')
  from prompt_tuning.inference import evaluation
  prompt = np.random.RandomState(0).uniform(-0.5, 0.5, (5, 4)).astype(np.float32)
  np.save(tmp_path / 'prompt.npy', prompt)
  settings = {'PROMPT_FILE': f"'{tmp_path / 'prompt.npy'}'",
              'INITIAL_CHECKPOINT_PATH': f"'{shared(*FIXTURE)}'",
              'MIXTURE_OR_TASK_NAME': "'glue_mrpc_local'", 'PROMPT_LENGTH': '5',
              'TASK_FEATURE_LENGTHS': "{'inputs': 64, 'targets': 8}", 'EVAL_MAX_EXAMPLES': '3',
              'EVAL_OUTPUT_DIR': f"'{tmp_path / 'out'}'"}
  bindings = testing.FIXTURE_BINDINGS + [f'{k} = {v}' for k, v in settings.items()]
  try:
    code = cli.main(['eval', '--gin_file=runs/prompt_eval.gin',
                     '--gin_file=models/t5_1_1_prompt.gin', '--gin_file=runs/sentinel_targets.gin',
                     *[f'--gin_bindings={b}' for b in bindings]])
  finally:
    gin.clear_config()
  assert code == 0
  assert '"task": "glue_mrpc_local_sentinel"' in capsys.readouterr().out
  out = str(tmp_path / 'out')
  for method in ('generate', 'rank'):
    written = glob.glob(os.path.join(out, f'glue_mrpc_local_sentinel-{method}-*.jsonl'))
    assert len(written) == 1, os.listdir(out)
    with open(written[0]) as f:
      rows = [json.loads(line) for line in f]
    assert len(rows) == 3 and all(r['target'] in ('equivalent', 'not_equivalent') for r in rows)
  # Rank's candidates: the sentinel, the label, EOS.
  evaluator = evaluation.Evaluator('glue_mrpc_local_sentinel', 'validation', LENGTHS,
                                   methods=('rank',), max_examples=1)
  vocab = evaluator.vocab
  for label, row in zip(('not_equivalent', 'equivalent'), evaluator.label_targets):
    ids = [T5_EXTRA_ID_0] + list(vocab.encode(label)) + [1]
    assert list(row[:len(ids)]) == ids and not row[len(ids):].any()
  plain = evaluation.Evaluator('glue_mrpc_local', 'validation', LENGTHS, methods=('rank',),
                               max_examples=1)
  assert T5_EXTRA_ID_0 not in plain.label_targets

"""`prompt-tuning report` (reports/): tables, plot and published numbers from real tiny runs.

Runs are trained here with runs.train, a few steps each: prompt tuning of two random models
(d_model 16 and 32) at two prompt lengths on quickstart_max; and, on the T5X fixture with T5's
vocabulary, a SQuAD run scored by `eval` on MRQA's out-of-domain sets and a QQP -> MRPC
zero-shot run (both on small release files written here). Model tuning of both models is a
real run too (runs.train with TRAINABLE 'all').
"""

import csv
import functools
import gzip
import json
import os
import shutil

import numpy as np
import pytest

from prompt_tuning import cli, runs, testing
from prompt_tuning.models import t5
from prompt_tuning.models.prompt import PromptConfig
from prompt_tuning.prompts import init as prompt_init
from prompt_tuning.reports import figure, published
from prompt_tuning.reports.runs import read_run

PNG = b'\x89PNG\r\n\x1a\n'
SIZES = (16, 32)
LENGTHS = (2, 4)


def _config(d_model):
  return t5.T5Config(vocab_size=384, d_model=d_model, d_ff=2 * d_model, num_heads=2,
                     head_dim=d_model // 2, num_encoder_layers=1, num_decoder_layers=1,
                     dtype='float32')


def _init():
  return functools.partial(prompt_init.initializer_by_name, 'random_uniform')


@pytest.fixture(scope='module')
def quick(tmp_path_factory):
  """{(d_model, prompt length or 'model'): MODEL_DIR} of six finished runs, four prompt-tuned
  and two model-tuned (rank accuracy at steps 0, 2 and 4)."""
  import gin
  import jax

  from prompt_tuning import checkpoints
  gin.clear_config()  # runs started from Python: no bindings left by an earlier test's launch
  root = tmp_path_factory.mktemp('quick')
  out = {}
  for d_model in SIZES:
    config = _config(d_model)
    # Random weights drawn in numpy from the shapes, kernels scaled by 1/sqrt(fan-in): no
    # compiled init (2-3 s a model), and models whose answers depend on their inputs.
    rng = np.random.RandomState(d_model)

    def draw(shape, rng=rng, vocab=config.vocab_size):
      scale = 1.0 if len(shape) < 2 or shape[0] == vocab else shape[0] ** -0.5
      return (rng.normal(size=shape) * scale).astype(np.float32)
    params = jax.tree_util.tree_map(lambda s: draw(s.shape), t5.param_shapes(config))
    base = checkpoints.save_t5x(str(root / f'base{d_model}'), params, 0)
    for length in LENGTHS:
      model_dir = root / f'd{d_model}_p{length}'
      runs.train(model_dir=str(model_dir), mixture_or_task_name='quickstart_max',
                 task_feature_lengths={'inputs': 16, 'targets': 4}, batch_size=8, train_steps=4,
                 initial_checkpoint_path=base, model=config, prompt=PromptConfig(length),
                 eval_period=2, eval_methods=('rank',), eval_max_examples=48,
                 group_by_length=0, export_formats=(), prompt_init=_init(), random_seed=length)
      out[d_model, length] = str(model_dir)
    model_dir = root / f'model_d{d_model}'
    runs.train(model_dir=str(model_dir), mixture_or_task_name='quickstart_max',
               task_feature_lengths={'inputs': 16, 'targets': 4}, batch_size=8, train_steps=4,
               initial_checkpoint_path=base, model=config, learning_rate=1e-3,
               eval_period=2, eval_methods=('rank',), eval_max_examples=48,
               group_by_length=0, export_formats=(), trainable='all')
    out[d_model, 'model'] = str(model_dir)
  return out


def _release_files(root, mrpc_dev):
  """Small MRQA files (SQuAD train/dev and the six out-of-domain dev sets), QQP train/dev and
  MRPC's real dev file, laid out as the releases are."""
  contexts = [{'context': 'Warsaw is the capital of Poland.',
               'qas': [{'qid': 'w1', 'question': 'What is the capital of Poland?',
                        'answers': ['Warsaw']},
                       {'qid': 'w2', 'question': 'Warsaw is the capital of what?',
                        'answers': ['Poland']}]}]
  files = [('train', 'SQuAD'), ('dev', 'SQuAD')] + [('dev', n) for n in (
      'TextbookQA', 'BioASQ', 'RelationExtraction', 'DuoRC.ParaphraseRC', 'RACE', 'DROP')]
  for folder, name in files:
    path = root / 'mrqa' / folder / f'{name}.jsonl.gz'
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({'header': {'dataset': name}})] + [json.dumps(c) for c in contexts]
    path.write_bytes(gzip.compress(''.join(line + '\n' for line in lines).encode()))
  (root / 'glue' / 'MRPC').mkdir(parents=True)
  shutil.copy(mrpc_dev, root / 'glue' / 'MRPC' / 'dev.tsv')
  (root / 'glue' / 'QQP').mkdir(parents=True)
  qqp = 'id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n' + ''.join(
      f'{i}\t{2 * i}\t{2 * i + 1}\tHow do I learn {w}?\tWhat is the best way to learn {w}?'
      f'\t{i % 2}\n' for i, w in enumerate(['Python', 'Go', 'Rust', 'C', 'Java', 'SQL']))
  for split in ('train', 'dev'):
    (root / 'glue' / 'QQP' / f'{split}.tsv').write_text(qqp)


@pytest.fixture(scope='module')
def transfer(shared, tmp_path_factory):
  """(SQuAD run scored on MRQA's out-of-domain sets by `eval`, QQP -> MRPC zero-shot run)."""
  pytest.importorskip('seqio')
  import gin

  from prompt_tuning.data import tasks
  gin.clear_config()  # runs started from Python: no bindings left by an earlier test's launch
  root = tmp_path_factory.mktemp('transfer')
  _release_files(root / 'data', shared('data', 'glue', 'MRPC', 'dev.tsv'))
  saved = tasks.get_settings()
  tasks.set_vocabulary_path(shared(*testing.VOCAB))
  tasks.set_local_data_dir(root / 'data')
  config = testing.FIXTURE_CONFIG.replace(dtype='float32')
  common = dict(task_feature_lengths={'inputs': 64, 'targets': 8},
                initial_checkpoint_path=shared(*testing.FIXTURE), model=config,
                prompt=PromptConfig(3))
  train = dict(common, batch_size=4, train_steps=2, eval_period=2, eval_max_examples=4,
               eval_at_start=False, group_by_length=0, export_formats=(), prompt_init=_init())
  try:
    squad, qqp = str(root / 'squad'), str(root / 'qqp')
    runs.train(model_dir=squad, mixture_or_task_name='mrqa_squad_local', **train)
    runs.evaluate(model_dir=squad, mixture_or_task_name='mrqa_out_of_domain_local',
                  max_examples=4, **common)
    runs.train(model_dir=qqp, mixture_or_task_name='glue_mrpc_from_qqp_zeroshot_local',
               eval_methods=('rank',), **train)
  finally:
    tasks.restore_settings(saved)
  return squad, qqp


def _report(capsys, out, *paths):
  """cli.main's exit code, stdout and stderr lines of `report` into `out`."""
  code = cli.main(['report', *map(str, paths), f'--output={out}'])
  captured = capsys.readouterr()
  return code, captured.out, [line for line in captured.err.splitlines() if line.strip()]


def _evals(model_dir, metric):
  with open(os.path.join(model_dir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  return [(r['step'], r[metric]) for r in records if r['kind'] == 'eval']


def _csv(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def _copy(src, dst, **run_info):
  shutil.copytree(src, dst)
  path = os.path.join(dst, 'run_info.json')
  with open(path) as f:
    info = json.load(f)
  info.update(run_info)
  for key in [k for k, v in info.items() if v is None]:
    del info[key]
  with open(path, 'w') as f:
    json.dump(info, f)
  return str(dst)


# =================================== per-task tables ===================================

def test_task_table_gives_each_runs_best_and_final_score_as_recorded(quick, tmp_path, capsys):
  code, out, err = _report(capsys, tmp_path / 'r', *quick.values())
  assert code == 0 and err == [], err
  assert 'Reported 6 run(s) of 1 task(s)' in out
  rows = {(int(r['parameters']), r['method'], r['variant']): r
          for r in _csv(tmp_path / 'r' / 'runs.csv')}
  assert len(rows) == 6
  for (d_model, length), model_dir in quick.items():
    method, variant = ('model tuning', '') if length == 'model' else ('prompt tuning',
                                                                      f'P={length}')
    row = rows[t5.count_params(_config(d_model)), method, variant]
    history = _evals(model_dir, 'rank/accuracy')
    best = max(v for _, v in history)
    assert row['task'] == 'quickstart_max'
    assert row['size'] == f'd{d_model}' and row['metric'] == 'rank/accuracy'
    assert float(row['best']) == best
    assert int(row['best step']) == next(s for s, v in history if v == best)
    assert (int(row['final step']), float(row['final'])) == history[-1]
    assert row['run'] == os.path.basename(model_dir)
    with open(os.path.join(model_dir, 'summary.json')) as f:  # the run's own choice agrees
      assert json.load(f)['best']['step'] == int(row['best step'])
  markdown = (tmp_path / 'r' / 'report.md').read_text()
  assert '## Task quickstart_max' in markdown
  assert '| method | size | parameters | variant | metric | best | best step |' in markdown
  for (d_model, length), model_dir in quick.items():
    history = _evals(model_dir, 'rank/accuracy')
    best = max(v for _, v in history)
    step = next(s for s, v in history if v == best)
    method, variant = ('model', '') if length == 'model' else ('prompt', f'P={length}')
    assert (f'| {method} tuning | d{d_model} | ') in markdown
    assert (f'| {variant} | rank/accuracy | {best:.2f} | {step} | {history[-1][1]:.2f} | '
            f'{history[-1][0]} | {os.path.basename(model_dir)} |') in markdown
  assert '![quickstart_max: score vs model parameters](scale_quickstart_max.png)' in markdown


def test_scale_plot_is_a_png_with_a_line_per_variant(quick, tmp_path, capsys):
  _report(capsys, tmp_path / 'r', *quick.values())
  data = (tmp_path / 'r' / 'scale_quickstart_max.png').read_bytes()
  assert data.startswith(PNG) and len(data) > 10_000
  import matplotlib.image
  height, width, _ = matplotlib.image.imread(str(tmp_path / 'r' / 'scale_quickstart_max.png')).shape
  assert (width, height) == (750, 480)
  lines = figure.lines([read_run(p) for p in quick.values()])
  params = sorted(t5.count_params(_config(d)) for d in SIZES)
  assert sorted(lines) == ['model tuning', 'prompt tuning (P=2)', 'prompt tuning (P=4)']
  for label, points in lines.items():
    assert [p[0] for p in points] == params  # one point per model size, in size order
    length = 'model' if label == 'model tuning' else int(label.split('=')[1].rstrip(')'))
    for d_model, point in zip(SIZES, points):
      history = _evals(quick[d_model, length], 'rank/accuracy')
      assert point[1:] == (max(v for _, v in history), 0.0, 1)


def test_runs_of_one_size_and_variant_are_drawn_as_mean_and_stddev(quick, tmp_path):
  seed = _copy(quick[16, 2], tmp_path / 'seed2')
  path = os.path.join(seed, 'metrics.jsonl')
  with open(path) as f:
    records = [json.loads(line) for line in f]
  best = max(r['rank/accuracy'] for r in records if r['kind'] == 'eval')
  with open(path, 'w') as f:  # this seed's every evaluation scores 10 points more
    f.writelines(json.dumps({**r, 'rank/accuracy': r['rank/accuracy'] + 10}
                            if r['kind'] == 'eval' else r) + '\n' for r in records)
  (point,) = figure.lines([read_run(quick[16, 2]), read_run(seed)])['prompt tuning (P=2)']
  assert point[1:] == (pytest.approx(best + 5), pytest.approx(5.0), 2)


def test_t5_sizes_are_named_and_counted_as_the_papers_table_4():
  for name in ('small', 'base', 'xxl'):  # large and xl differ from xxl in widths only
    config = t5.T5Config.preset(name)
    assert config.size_name == name
    assert t5.count_params(config) == published.frozen_params(name, config.d_model).value
  assert t5.T5Config.preset('tiny').size_name is None
  assert t5.T5Config.preset('base', num_heads=8).size_name is None


def test_model_tuning_runs_are_their_own_method(quick, tmp_path, capsys):
  models = (quick[16, 'model'], quick[32, 'model'])
  code, _, err = _report(capsys, tmp_path / 'r', quick[16, 2], quick[32, 2], *models)
  assert code == 0 and err == []
  rows = _csv(tmp_path / 'r' / 'runs.csv')
  for d_model, model_dir in zip(SIZES, models):
    (row,) = [r for r in rows if r['run'] == f'model_d{d_model}']
    assert (row['method'], row['size'], row['variant']) == ('model tuning', f'd{d_model}', '')
    evals = _evals(model_dir, 'rank/accuracy')
    assert float(row['final']) == pytest.approx(evals[-1][1])
  assert {r['method'] for r in rows} == {'prompt tuning', 'model tuning'}
  assert sorted(figure.lines([read_run(p) for p in (quick[16, 2], quick[32, 2], *models)])) == [
      'model tuning', 'prompt tuning (P=2)']
  partial = _copy(quick[16, 'model'], tmp_path / 'model_head', trainable='decoder')
  assert read_run(partial).variant == 'trainable=decoder'


def test_variant_names_the_initialiser_and_the_sentinel_targets(quick, tmp_path):
  # The gin file a CLI launch writes binds the initialiser; summary.json's task of a
  # sentinel run ends with _sentinel (a stand-in here: quickstart's bytes have no sentinel).
  run = _copy(quick[16, 4], tmp_path / 'sentinel', deep=True)
  (tmp_path / 'sentinel' / 'operative_config.gin').write_text(
      "PROMPT_INIT = @prompt_init.initializer_by_name\n"
      "prompt_init.initializer_by_name.name = 'class_labels'\n")
  summary = json.loads((tmp_path / 'sentinel' / 'summary.json').read_text())
  (tmp_path / 'sentinel' / 'summary.json').write_text(
      json.dumps({**summary, 'task': 'quickstart_max_sentinel'}))
  report = read_run(run)
  assert report.task == 'quickstart_max'  # one table with the plain runs
  assert report.variant == 'P=4, init=class_labels, sentinel, deep'


def test_runs_on_gs_report_as_local_ones_into_gs(quick, gcs, tmp_path, capsys):
  from prompt_tuning import storage
  url = 'gs://bkt/report-runs/d16_p2'
  storage.copy_tree(quick[16, 2], url)
  _report(capsys, tmp_path / 'local', quick[16, 2])
  code, _, err = _report(capsys, 'gs://bkt/report-out', url, 'gs://bkt/report-runs/missing')
  assert code == 0
  assert err == ['prompt-tuning report: skipped gs://bkt/report-runs/missing: no such folder']
  local = (tmp_path / 'local' / 'runs.csv').read_text()
  assert storage.read_text('gs://bkt/report-out/runs.csv') == local
  assert storage.read_bytes('gs://bkt/report-out/scale_quickstart_max.png').startswith(PNG)


# =================================== bad folders ===================================

def _bad_folders(quick, root):
  """{folder: what its stderr line must say} for every kind of folder the report leaves out."""
  os.makedirs(root / 'empty')
  (root / 'a_file').write_text('x')
  unreadable = _copy(quick[16, 2], root / 'unreadable_info')
  with open(os.path.join(unreadable, 'run_info.json'), 'w') as f:
    f.write('{"prompt_length": 2,')
  unfinished = _copy(quick[16, 2], root / 'unfinished')
  os.remove(os.path.join(unfinished, 'summary.json'))
  no_evals = _copy(quick[16, 2], root / 'no_evals')
  with open(os.path.join(no_evals, 'metrics.jsonl')) as f:
    kept = [line for line in f if '"kind": "eval"' not in line]
  with open(os.path.join(no_evals, 'metrics.jsonl'), 'w') as f:
    f.writelines(kept)
  bad_summary = _copy(quick[16, 2], root / 'bad_summary')
  with open(os.path.join(bad_summary, 'summary.json'), 'w') as f:
    f.write('{"task": ')
  return {str(root / 'empty'): 'no run_info.json', str(root / 'a_file'): 'not a directory',
          str(root / 'missing'): 'no such folder', unreadable: 'unreadable run_info.json',
          unfinished: 'unfinished: no summary.json', no_evals: 'no evaluation records',
          bad_summary: 'unreadable summary.json'}


def test_bad_folders_are_named_in_a_line_each_and_left_out(quick, tmp_path, capsys):
  bad = _bad_folders(quick, tmp_path)
  code, out, err = _report(capsys, tmp_path / 'r', *bad, quick[32, 4])
  assert code == 0 and 'Reported 1 run(s)' in out, err
  assert len(err) == len(bad), err
  for line, (folder, why) in zip(err, bad.items()):
    assert line.startswith(f'prompt-tuning report: skipped {folder}: {why}'), line
    assert 'Traceback' not in line
  assert [r['run'] for r in _csv(tmp_path / 'r' / 'runs.csv')] == ['d32_p4']
  markdown = (tmp_path / 'r' / 'report.md').read_text()
  assert '## Left out' in markdown and all(f'`{folder}`' in markdown for folder in bad)


def test_nothing_to_report_fails_in_one_line(quick, tmp_path, capsys):
  bad = _bad_folders(quick, tmp_path)
  code, out, err = _report(capsys, tmp_path / 'r', *bad)
  assert code == 2 and out == ''
  assert len(err) == len(bad) + 1
  assert err[-1].startswith('prompt-tuning report: error: no run to report'), err[-1]
  assert not (tmp_path / 'r').exists()


# ============================= MRQA and QQP <-> MRPC =============================

def test_mrqa_table_puts_the_papers_f1_beside_ours(transfer, tmp_path, capsys):
  squad, _ = transfer
  code, _, err = _report(capsys, tmp_path / 'r', squad)
  assert code == 0 and err == []
  with open(os.path.join(squad, 'inference_eval', 'mrqa_out_of_domain_local-metrics.jsonl')) as f:
    (ood,) = [json.loads(line) for line in f]
  (in_domain,) = [r for r in map(json.loads, open(os.path.join(squad, 'metrics.jsonl')))
                  if r['kind'] == 'eval']
  rows = {r['task']: r for r in _csv(tmp_path / 'r' / 'mrqa.csv')}
  assert list(rows) == list(published.MRQA_ROWS)
  ours = 'prompt tuning d4, P=3'
  assert float(rows['mrqa_squad'][f'{ours} F1']) == in_domain['generate/f1']
  assert float(rows['mrqa_squad'][f'{ours} EM']) == in_domain['generate/em']
  for task in published.MRQA_ROWS[1:]:
    assert float(rows[task][f'{ours} F1']) == ood[f'{task}_local/f1']
    assert float(rows[task][f'{ours} EM']) == ood[f'{task}_local/em']
  textbook = rows['mrqa_textbook_qa']
  assert (textbook['dataset'], textbook['domain']) == ('TextbookQA', 'Book')
  assert textbook['Lester et al. 2021 prompt tuning F1'] == '66.8 ±2.9'
  assert textbook['Lester et al. 2021 model tuning F1'] == '54.3 ±3.7'
  assert textbook['Lester et al. 2021 Δ'] == '12.5'
  assert textbook['source'] == 'Lester et al. 2021, Table 1, row TextbookQA: Model, Prompt, Δ'
  markdown = (tmp_path / 'r' / 'report.md').read_text()
  assert '## MRQA: trained on SQuAD, zero-shot out of domain (Table 1 layout)' in markdown
  assert ('| DROP | Wiki | mrqa_drop | 0.00 | 0.00 | 68.9 ±1.7 | 67.1 ±1.9 | -1.8 | '
          'Lester et al. 2021, Table 1, row DROP: Model, Prompt, Δ |').replace(
              '0.00 | 0.00', f"{ood['mrqa_drop_local/f1']:.2f} | {ood['mrqa_drop_local/em']:.2f}"
          ) in markdown
  assert 'the paper reports no EM' in markdown
  seed = shutil.copytree(squad, tmp_path / 'squad_seed2')  # same label: told apart by folder
  _report(capsys, tmp_path / 'r2', squad, seed)
  header = _csv(tmp_path / 'r2' / 'mrqa.csv')[0]
  assert f'{ours} (squad) F1' in header and f'{ours} (squad_seed2) EM' in header


def test_transfer_table_puts_the_papers_row_beside_ours(transfer, tmp_path, capsys):
  _, qqp = transfer
  code, _, err = _report(capsys, tmp_path / 'r', qqp)
  assert code == 0 and err == []
  (record,) = [r for r in map(json.loads, open(os.path.join(qqp, 'metrics.jsonl')))
               if r['kind'] == 'eval']
  rows = _csv(tmp_path / 'r' / 'glue_transfer.csv')
  assert [(r['train'], r['eval'], r['tuning']) for r in rows] == [
      ('QQP', 'MRPC', 'model tuning'), ('QQP', 'MRPC', 'prompt tuning')]
  model, prompt = rows
  assert model['run'] == model['accuracy'] == ''  # no model-tuning run: the paper's row alone
  assert (model['Lester et al. 2021 accuracy'], model['Lester et al. 2021 F1']) == (
      '73.1 ±0.9', '81.2 ±2.1')
  assert prompt['run'] == 'qqp' and int(prompt['step']) == 2
  assert float(prompt['accuracy']) == record['rank/glue_mrpc_from_qqp_local/accuracy']
  assert float(prompt['F1']) == record['rank/glue_mrpc_from_qqp_local/f1']
  assert (prompt['Lester et al. 2021 accuracy'], prompt['Lester et al. 2021 F1']) == (
      '76.3 ±0.1', '84.3 ±0.3')
  assert prompt['source'] == 'Lester et al. 2021, Table 2, row QQP -> MRPC, Prompt: Accuracy, F1'
  markdown = (tmp_path / 'r' / 'report.md').read_text()
  assert ('| 76.3 ±0.1 | 84.3 ±0.3 | Lester et al. 2021, Table 2, row QQP -> MRPC, Prompt: '
          'Accuracy, F1 | qqp |') in markdown
  task_rows = _csv(tmp_path / 'r' / 'runs.csv')  # its own task table too: selected on QQP F1
  assert [(r['task'], r['metric']) for r in task_rows] == [
      ('glue_mrpc_from_qqp_zeroshot', 'rank/glue_qqp_local/f1')]


def test_published_numbers_carry_their_citations():
  delta = published.mrqa_delta('mrqa_textbook_qa')
  assert (delta.value, delta.cite) == (12.5, 'Lester et al. 2021, Table 1, row TextbookQA, Δ')
  for task in published.MRQA_ROWS:  # Δ as printed = prompt - model, to the printed digit
    model, prompt = (published.mrqa_f1(task, m) for m in (published.MODEL_TUNING,
                                                          published.PROMPT_TUNING))
    assert np.isclose(prompt.value - model.value, published.mrqa_delta(task).value)
  acc, f1 = published.transfer('mrpc', 'qqp', published.MODEL_TUNING)
  assert (str(acc), str(f1)) == ('74.9 ±1.3', '70.9 ±1.2')
  assert f1.cite == 'Lester et al. 2021, Table 2, row MRPC -> QQP, Model, F1'
  assert published.transfer('rte', 'mrpc', published.PROMPT_TUNING) == (None, None)
  assert published.cite_row([acc, None]) == acc.cite  # one number: its own citation
  assert published.cite_row([None]) is None
  assert published.mrqa_f1('mrqa_squad', 'deep tuning') is None


def test_report_help_lists_its_flag(capsys):
  with pytest.raises(SystemExit):
    cli.parse_args(['report', '--help'])
  assert 'RUN_DIR' in capsys.readouterr().out
  parsed = cli.parse_args(['report', 'a', 'gs://b/c'])
  assert (parsed.run_dirs, parsed.output) == (['a', 'gs://b/c'], 'report')

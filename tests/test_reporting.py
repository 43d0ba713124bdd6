"""What a run leaves for people (prompt_tuning/reporting.py): metrics.jsonl and TensorBoard
records, their purge on resume, the plot, the best prompt, the summary, and held log lines."""

import json
import logging
import os
import struct

import numpy as np
import pytest

from prompt_tuning.train import records as records_lib
from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning.train import reporting


def read_events(directory):
  """Every event of the TensorBoard files in `directory` (TFRecord framing, read by hand)."""
  from tensorboardX.proto import event_pb2
  events = []
  for name in sorted(os.listdir(directory)):
    if 'tfevents' not in name:
      continue
    with open(os.path.join(directory, name), 'rb') as f:
      data = f.read()
    i = 0
    while i + 12 <= len(data):
      (length,) = struct.unpack('<Q', data[i:i + 8])
      if i + 12 + length + 4 > len(data):
        break
      event = event_pb2.Event()
      event.ParseFromString(data[i + 12:i + 12 + length])
      events.append(event)
      i += 12 + length + 4
  return events


def scalars(directory):
  return {(e.step, v.tag): v.simple_value for e in read_events(directory) for v in e.summary.value}


def purge_steps(directory):
  """Steps of the session starts a SummaryWriter(purge_step=N) writes: TensorBoard drops the
  events of steps >= N written before them."""
  from tensorboardX.proto import event_pb2
  return [e.step for e in read_events(directory)
          if e.HasField('session_log') and e.session_log.status == event_pb2.SessionLog.START]


def train_record(step):
  return {'loss': 3.0 / step, 'loss_per_token': 1.0 / step, 'accuracy': 0.1 * step,
          'prompt_norm': 2.0}


def records(model_dir):
  return records_lib.read_jsonl(os.path.join(model_dir, 'metrics.jsonl'))


# ----------------------------------------------------------------------------------------------
# Reporter


def test_train_records_every_log_every_steps_and_the_last(tmp_path, caplog):
  model_dir = str(tmp_path)
  reporter = reporting.Reporter(model_dir, total_steps=5, log_every=2)
  with caplog.at_level(logging.INFO, logger='prompt_tuning'):
    for step in range(1, 6):
      reporter.train_metrics(step, train_record(step))
  assert records(model_dir) == [{'kind': 'train', 'step': s, **train_record(s)} for s in (2, 4, 5)]
  logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith('step ')]
  assert [m.split()[1] for m in logged] == ['2/5', '4/5', '5/5']
  assert 'loss/token 0.5000' in logged[0]
  reporter.close()
  # TensorBoard gets every step, each metric under its own name.
  values = scalars(os.path.join(model_dir, 'train'))
  assert values == pytest.approx({(step, key): value for step in range(1, 6)
                                  for key, value in train_record(step).items()})


def test_eval_records_are_written_at_once(tmp_path):
  model_dir = str(tmp_path)
  reporter = reporting.Reporter(model_dir, total_steps=10)
  reporter.eval_metrics(4, {'rank/accuracy': 0.75, 'rank/invalid': 2, 'note': 'text'})
  reporter.eval_metrics(4, {'rank/accuracy': 0.5}, tag='eval_test')
  # The record is the evaluation's completion marker: on disk before eval_metrics returns.
  assert records(model_dir) == [
      {'kind': 'eval', 'step': 4, 'rank/accuracy': 0.75, 'rank/invalid': 2, 'note': 'text'},
      {'kind': 'eval_test', 'step': 4, 'rank/accuracy': 0.5}]
  assert model_dir_lib.eval_done(model_dir, 4) and not model_dir_lib.eval_done(model_dir, 8)
  assert reporter.eval_history[0] == (4, {'rank/accuracy': 0.75, 'rank/invalid': 2,
                                          'note': 'text'})
  reporter.close()
  values = scalars(os.path.join(model_dir, 'eval'))
  assert values == {(4, 'rank/accuracy'): 0.75, (4, 'rank/invalid'): 2.0}  # numbers only
  assert scalars(os.path.join(model_dir, 'eval_test')) == {(4, 'rank/accuracy'): 0.5}


def test_flush_makes_the_tensorboard_events_durable(tmp_path):
  """What `flush` and `eval_metrics` promise: a kill right after them loses no event (the
  eval's scalars are on disk before the metrics.jsonl record that marks it complete)."""
  model_dir = str(tmp_path)
  reporter = reporting.Reporter(model_dir, total_steps=5)
  try:
    for step in range(1, 6):
      reporter.train_metrics(step, train_record(step))
    reporter.flush()
    assert (5, 'loss') in scalars(os.path.join(model_dir, 'train'))
    reporter.eval_metrics(5, {'rank/accuracy': 0.75})
    assert model_dir_lib.eval_done(model_dir, 5)
    assert scalars(os.path.join(model_dir, 'eval')) == {(5, 'rank/accuracy'): 0.75}
  finally:
    reporter.close()


def _resumable(model_dir, eval_of_latest):
  """MODEL_DIR as a run stopped after committing step 4 leaves it."""
  os.makedirs(os.path.join(model_dir, 'checkpoints', '4'))
  with open(os.path.join(model_dir, 'metrics.jsonl'), 'w') as f:
    for record in ({'kind': 'train', 'step': 2, **train_record(2)},
                   {'kind': 'eval', 'step': 2, 'rank/accuracy': 0.5},
                   {'kind': 'train', 'step': 4, **train_record(4)}) + (
                       ({'kind': 'eval', 'step': 4, 'rank/accuracy': 0.6},) if eval_of_latest
                       else ()):
      f.write(json.dumps(record) + '\n')


@pytest.mark.parametrize('eval_of_latest,eval_purge', [(True, 5), (False, 4)])
def test_resume_continues_the_history_and_purges_redone_steps(tmp_path, eval_of_latest,
                                                              eval_purge):
  model_dir = str(tmp_path)
  _resumable(model_dir, eval_of_latest)
  before = records(model_dir)
  reporter = reporting.Reporter(model_dir, total_steps=6, log_every=1,
                                main_metric='rank/accuracy')
  reporter.train_metrics(5, train_record(5))
  reporter.eval_metrics(6, {'rank/accuracy': 0.7})
  reporter.close()
  # The history starts with what the stopped run logged, then goes on.
  assert reporter.train_history == [(2, 0.5), (4, 0.25), (5, 0.2)]
  assert [s for s, _ in reporter.eval_history] == [2] + [4] * eval_of_latest + [6]
  assert records(model_dir)[:len(before)] == before
  assert [(r['kind'], r['step']) for r in records(model_dir)[len(before):]] == [
      ('train', 5), ('eval', 6)]
  # TensorBoard drops what was logged for the steps that are redone: training after step 4,
  # and step 4's evaluation too when its record is missing (it is rerun).
  assert purge_steps(os.path.join(model_dir, 'train')) == [5]
  assert purge_steps(os.path.join(model_dir, 'eval')) == [eval_purge]


def test_close_writes_the_plot(tmp_path):
  model_dir = str(tmp_path)
  reporter = reporting.Reporter(model_dir, total_steps=3, main_metric='rank/accuracy')
  for step in (1, 2, 3):
    reporter.train_metrics(step, train_record(step))
  reporter.eval_metrics(3, {'rank/accuracy': 0.5})
  path = reporter.close()
  assert path == os.path.join(model_dir, 'plots', 'training.png')
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert os.listdir(os.path.join(model_dir, 'plots')) == ['training.png']  # no temporary
  assert scalars(os.path.join(model_dir, 'train'))[(3, 'loss')] == pytest.approx(1.0)


def test_close_without_records_writes_nothing(tmp_path):
  reporter = reporting.Reporter(str(tmp_path / 'run'), total_steps=3)
  assert reporter.close() is None
  assert not (tmp_path / 'run').exists()


# ----------------------------------------------------------------------------------------------
# BestPrompt


def _best(model_dir):
  with open(os.path.join(model_dir, 'best', 'metrics.json')) as f:
    record = json.load(f)
  prompt = np.load(os.path.join(model_dir, 'best', model_dir_lib.NUMPY_NAME))
  return record, prompt


def prompt_of(value):
  return np.full((5, 4), value, np.float32)


def test_best_prompt_keeps_the_best_and_ignores_worse_or_equal(tmp_path):
  model_dir = str(tmp_path)
  best = reporting.BestPrompt(model_dir, 'rank/accuracy')
  assert best.record is None
  best.update(2, {'rank/accuracy': 0.5, 'rank/invalid': 1}, prompt_of(2))
  record, prompt = _best(model_dir)
  assert (record['step'], record['metric'], record['value']) == (2, 'rank/accuracy', 0.5)
  assert record['metrics'] == {'rank/accuracy': 0.5, 'rank/invalid': 1}
  assert prompt.dtype == np.float32 and np.array_equal(prompt, prompt_of(2))
  best.update(4, {'rank/accuracy': 0.4}, prompt_of(4))  # worse
  best.update(6, {'rank/accuracy': 0.5}, prompt_of(6))  # equal: the earlier step stays
  best.update(7, {'generate/accuracy': 0.9}, prompt_of(7))  # not the main metric
  record, prompt = _best(model_dir)
  assert record['step'] == 2 and np.array_equal(prompt, prompt_of(2))
  best.update(8, {'rank/accuracy': 0.75}, prompt_of(8))
  record, prompt = _best(model_dir)
  assert (record['step'], record['value']) == (8, 0.75)
  assert np.array_equal(prompt, prompt_of(8)) and best.record == record
  assert sorted(os.listdir(os.path.join(model_dir, 'best'))) == sorted(
      ['metrics.json', model_dir_lib.NUMPY_NAME])


def test_best_prompt_counts_what_other_instances_saved(tmp_path):
  model_dir = str(tmp_path)
  early = reporting.BestPrompt(model_dir, 'rank/accuracy')  # made before anything was saved
  first = reporting.BestPrompt(model_dir, 'rank/accuracy')
  first.update(2, {'rank/accuracy': 0.9}, prompt_of(2))
  early.update(4, {'rank/accuracy': 0.8}, prompt_of(4))  # worse than what `first` saved
  assert _best(model_dir)[0]['step'] == 2
  restarted = reporting.BestPrompt(model_dir, 'rank/accuracy')  # a restarted process
  assert restarted.record['step'] == 2 and restarted.record['value'] == 0.9
  restarted.update(6, {'rank/accuracy': 0.85}, prompt_of(6))
  assert _best(model_dir)[0]['step'] == 2
  restarted.update(8, {'rank/accuracy': 0.95}, prompt_of(8))
  assert _best(model_dir)[0]['step'] == 8


def test_best_prompt_without_a_metric_writes_nothing(tmp_path):
  best = reporting.BestPrompt(str(tmp_path), None)
  best.update(2, {'rank/accuracy': 0.9}, prompt_of(2))
  assert best.record is None and not (tmp_path / 'best').exists()


# ----------------------------------------------------------------------------------------------
# print_summary


def _summary(**extra):
  return {'model_dir': '/runs/rte', 'task': 'super_glue_rte_local', 'steps': 30,
          'checkpoints': '/runs/rte/checkpoints',
          'numpy_checkpoints': '/runs/rte/numpy_checkpoints', 'tensorboard': '/runs/rte', **extra}


def test_print_summary_of_a_full_run(capsys):
  reporting.print_summary(_summary(
      final_eval={'rank/accuracy': 0.6875, 'rank/invalid': 0},
      best={'metric': 'rank/accuracy', 'value': 0.71875, 'step': 20},
      exports={'npy': '/runs/rte/export/prompt.npy', 'peft': '/runs/rte/export/peft'},
      plot='/runs/rte/plots/training.png'))
  lines = capsys.readouterr().out.splitlines()
  assert [' '.join(line.split()) for line in lines] == [' '.join(line.split()) for line in [
      'Prompt tuning of super_glue_rte_local finished (30 steps).',
      '  final eval: rank/accuracy 0.6875, rank/invalid 0',
      '  best rank/accuracy 0.7188 at step 20: /runs/rte/best',
      '  prompt checkpoints (orbax): /runs/rte/checkpoints',
      '  numpy prompts:              /runs/rte/numpy_checkpoints',
      '  export (npy):               /runs/rte/export/prompt.npy',
      '  export (peft):              /runs/rte/export/peft',
      '  plot:                       /runs/rte/plots/training.png',
      '  TensorBoard:                tensorboard --logdir /runs/rte']]


def test_print_summary_aligns_the_paths(capsys):
  reporting.print_summary(_summary(
      exports={'npy': '/runs/rte/export/prompt.npy', 'peft': '/runs/rte/export/peft'},
      plot='/runs/rte/plots/training.png'))
  lines = capsys.readouterr().out.splitlines()[1:]
  # Where each line's value starts, after its label and colon.
  columns = {line: len(line) - len(line.split(':', 1)[1].lstrip()) for line in lines}
  assert len(set(columns.values())) == 1, columns


def test_print_summary_leaves_out_what_the_run_did_not_make(capsys):
  reporting.print_summary(_summary(final_eval=None, best=None, plot=None))
  assert capsys.readouterr().out.splitlines() == [
      'Prompt tuning of super_glue_rte_local finished (30 steps).',
      '  prompt checkpoints (orbax): /runs/rte/checkpoints',
      '  numpy prompts:              /runs/rte/numpy_checkpoints',
      '  TensorBoard:                tensorboard --logdir /runs/rte']


# ----------------------------------------------------------------------------------------------
# HeldLogs


class ListHandler(logging.Handler):
  def __init__(self, level=logging.DEBUG):
    super().__init__(level)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


@pytest.fixture
def handlers():
  """Two handlers on the root logger (where HeldLogs looks) and a logger that reaches them."""
  root = logging.getLogger()
  info, warning = ListHandler(logging.INFO), ListHandler(logging.WARNING)
  root.addHandler(info)
  root.addHandler(warning)
  log = logging.getLogger('test_reporting.held')
  old_level = log.level
  log.setLevel(logging.DEBUG)
  try:
    yield log, info, warning
  finally:
    log.setLevel(old_level)
    root.removeHandler(info)
    root.removeHandler(warning)


def test_held_lines_wait_for_release_then_print_in_order(handlers):
  log, info, warning = handlers
  with reporting.HeldLogs() as held:
    log.info('checking the task')
    log.warning('base checkpoint is old')
    log.debug('below every handler')
    assert info.messages == [] and warning.messages == []
    held.release()
    # Each handler gets each held line once, at its own level.
    assert info.messages == ['checking the task', 'base checkpoint is old']
    assert warning.messages == ['base checkpoint is old']
    log.info('training')  # after release: straight through
  log.info('done')
  assert info.messages == ['checking the task', 'base checkpoint is old', 'training', 'done']
  assert warning.messages == ['base checkpoint is old']


def test_held_lines_are_dropped_when_the_run_stops_before_release(handlers):
  log, info, warning = handlers
  with pytest.raises(ValueError, match='bad input'):
    with reporting.HeldLogs():
      log.warning('checking the task')
      raise ValueError('bad input')
  assert info.messages == [] and warning.messages == []
  log.warning('the one error line')  # nothing is held any more
  assert info.messages == warning.messages == ['the one error line']

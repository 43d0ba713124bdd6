"""The command line: T5X flag handling, gin file lookup and errors, export/convert, packaging."""

import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from prompt_tuning import checkpoints, cli
from prompt_tuning.testing import FIXTURE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_t5x_gin_flags_become_bindings():
  argv = ['train', '--gin.MODEL_DIR=/tmp/run', '--gin.TRAIN_STEPS=10',
          "--gin.MIXTURE_OR_TASK_NAME='super_glue_rte'", '--gin.MODEL=@t5.T5Config()',
          '--gin_file=a.gin', '--gin_file=b.gin']
  args = cli.parse_args(argv)
  assert args.command == 'train'
  assert args.gin_file == ['a.gin', 'b.gin']
  assert args.gin_bindings == ["MODEL_DIR = '/tmp/run'", 'TRAIN_STEPS = 10',
                               "MIXTURE_OR_TASK_NAME = 'super_glue_rte'",
                               'MODEL = @t5.T5Config()']


def test_default_command_is_the_quickstart():
  assert cli.parse_args([]).command == 'quickstart'


def test_installed_gin_files_are_found_without_search_paths():
  dirs = cli.package_gin_dirs()
  found = [d for d in dirs if os.path.exists(os.path.join(d, 'runs', 'prompt_finetune.gin'))]
  assert found, dirs
  assert any(os.path.exists(os.path.join(d, 'quickstart.gin')) for d in dirs)


def _run_cli(*argv, cwd=None):
  return subprocess.run([sys.executable, '-m', 'prompt_tuning', *argv], capture_output=True,
                        text=True, cwd=cwd, timeout=300)


def test_gin_typo_reports_file_and_line(tmp_path):
  bad = tmp_path / 'typo.gin'
  bad.write_text("include 'runs/prompt_finetune.gin'\n\nruns.train.batch_sizee = 8\n")
  proc = _run_cli('train', f'--gin_file={bad}', cwd=str(tmp_path))
  assert proc.returncode != 0
  assert 'typo.gin' in proc.stderr and 'batch_sizee' in proc.stderr
  assert 'line 3' in proc.stderr or ':3' in proc.stderr, proc.stderr[-2000:]


def test_a_runs_folder_in_the_working_directory_does_not_hide_gin_includes(tmp_path):
  """The quickstart leaves ./runs/; under `python -m` the working directory is on sys.path,
  where gin also looks an include up as a package ('runs' is then a namespace package) and
  gin 0.5 failed with a TypeError instead of trying its search paths."""
  (tmp_path / 'runs' / 'quickstart').mkdir(parents=True)
  config = tmp_path / 'typo.gin'
  config.write_text("include 'runs/prompt_finetune.gin'\n\nruns.train.batch_sizee = 8\n")
  proc = _run_cli('train', f'--gin_file={config}', cwd=str(tmp_path))
  assert proc.returncode != 0
  assert 'NoneType' not in proc.stderr, proc.stderr[-2000:]
  assert 'batch_sizee' in proc.stderr, proc.stderr[-2000:]  # the include was read


def test_missing_gin_file_is_named(tmp_path):
  proc = _run_cli('train', '--gin_file=nope/missing.gin', cwd=str(tmp_path))
  assert proc.returncode != 0
  assert "gin file 'nope/missing.gin' not found" in proc.stderr


def test_convert_t5x_to_hf_and_back(shared, tmp_path):
  src = shared(*FIXTURE)
  assert cli.main(['convert', f'--input={src}', f'--output={tmp_path / "hf"}', '--to=hf']) == 0
  assert cli.main(['convert', f'--input={tmp_path / "hf"}', f'--output={tmp_path / "t5x"}',
                   '--to=t5x']) == 0
  _, a = checkpoints.load_params(src)
  _, b = checkpoints.load_params(str(tmp_path / 't5x'))
  np.testing.assert_array_equal(a['decoder']['logits_dense']['kernel'],
                                b['decoder']['logits_dense']['kernel'])


def test_convert_reports_bad_input_without_traceback(tmp_path, capsys):
  assert cli.main(['convert', f'--input={tmp_path / "missing"}', f'--output={tmp_path / "o"}',
                   '--to=hf']) == 2
  err = capsys.readouterr().err
  assert 'prompt-tuning convert: error:' in err and 'no such file or directory' in err
  assert 'Traceback' not in err


def test_export_needs_its_flags(capsys):
  assert cli.main(['export', '--format=npy']) == 2
  assert 'export needs --model_dir, --output' in capsys.readouterr().err


def test_wheel_ships_gin_files(tmp_path):
  proc = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
                         '-q', '-w', str(tmp_path), REPO], capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  wheel = next(p for p in os.listdir(tmp_path) if p.endswith('.whl'))
  names = zipfile.ZipFile(tmp_path / wheel).namelist()
  for expected in ('prompt_tuning/gin/runs/prompt_finetune.gin',
                   'prompt_tuning/gin/models/sizes/xxl.gin',
                   'prompt_tuning/gin/prompts/class_labels.gin',
                   'prompt_tuning/configs/quickstart.gin'):
    assert expected in names, expected


def _plan_rows(stdout):
  rows = {}
  for line in stdout.splitlines():
    parts = line.split()
    if parts and parts[0] in ('none', 'dots', 'full'):
      rows[parts[0]] = dict(zip(('args', 'outs', 'temp', 'total'), map(float, parts[1:5])))
  return rows


def test_plan_prints_memory_per_remat_policy(tmp_path):
  from prompt_tuning.models import t5
  argv = ['plan', '--gin_file=models/t5_1_1_prompt.gin', '--gin_file=models/sizes/small.gin',
          '--gin_file=prompts/random_uniform.gin', '--gin_file=runs/prompt_finetune.gin',
          '--gin.BATCH_SIZE=8', "--gin.TASK_FEATURE_LENGTHS={'inputs': 256, 'targets': 4}",
          '--gin.PROMPT_LENGTH=20', '--gin.t5.T5Config.num_encoder_layers=3',
          '--gin.t5.T5Config.num_decoder_layers=1', '--gin.DROPOUT_RATE=0.0',
          ]  # no MODEL_DIR, task, steps or base checkpoint: planning reads none of them
  proc = subprocess.run([sys.executable, '-m', 'prompt_tuning', *argv], capture_output=True,
                        text=True, cwd=tmp_path, timeout=600,
                        env={k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'})
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = _plan_rows(proc.stdout)
  assert set(rows) == {'none', 'dots', 'full'}, proc.stdout
  # Arguments are the frozen float32 weights (plus the batch): same for every policy.
  config = t5.T5Config.preset('small', num_encoder_layers=3, num_decoder_layers=1)
  weights_gib = t5.count_params(config) * 4 / 2**30
  for row in rows.values():
    assert weights_gib - 0.005 <= row['args'] <= weights_gib * 1.02 + 0.01  # printed to 0.01
  # The memory-aware CPU schedule makes rematerialisation show (default schedule: no change).
  assert rows['full']['temp'] < 0.7 * rows['none']['temp'], proc.stdout
  assert os.listdir(tmp_path) == []  # planning writes nothing


def test_cluster_launch_finds_tpu_slices_and_slurm_steps_of_several_processes():
  assert cli.cluster_launch({}) is None
  assert cli.cluster_launch({'TPU_WORKER_HOSTNAMES': 'localhost'}) is None  # one TPU VM
  assert cli.cluster_launch({'TPU_WORKER_HOSTNAMES': 't1-w-0,t1-w-1'}) == 'Cloud TPU slice'
  assert cli.cluster_launch({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '1'}) is None
  assert cli.cluster_launch({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '4'}) == 'SLURM'
  assert cli.cluster_launch({'SLURM_JOB_ID': '7', 'SLURM_STEP_NUM_TASKS': '2'}) == 'SLURM'


def test_init_distributed_uses_jax_detection_on_a_cluster_and_flags_otherwise(monkeypatch):
  import argparse

  import jax
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax, 'process_index', lambda: 0)
  none = argparse.Namespace(multiprocess_gpu=False, coordinator_address=None,
                            process_count=None, process_index=None)
  for key in ('TPU_WORKER_HOSTNAMES', 'SLURM_JOB_ID', 'SLURM_NTASKS', 'SLURM_STEP_NUM_TASKS'):
    monkeypatch.delenv(key, raising=False)
  cli.init_distributed(none)
  assert calls == []  # one process, no flags: nothing to join
  monkeypatch.setenv('SLURM_JOB_ID', '7')
  monkeypatch.setenv('SLURM_NTASKS', '2')
  cli.init_distributed(none)
  assert calls == [{'coordinator_address': None, 'num_processes': None, 'process_id': None}]
  flags = argparse.Namespace(multiprocess_gpu=False, coordinator_address='h:1234',
                             process_count=2, process_index=1)
  cli.init_distributed(flags)
  assert calls[-1] == {'coordinator_address': 'h:1234', 'num_processes': 2, 'process_id': 1}


# Each command's own flags (besides -h and -v); a flag of no other command may show in its help.
GIN = {'--gin_file', '--gin_bindings', '--gin_search_paths'}
OWN_FLAGS = {
    'quickstart': GIN | {'--tfds_data_dir'},
    'train': GIN | {'--tfds_data_dir', '--multiprocess_gpu', '--coordinator_address',
                    '--process_count', '--process_index'},
    'plan': GIN,
    'export': {'--model_dir', '--format', '--output', '--prompt_name', '--step'},
    'convert': {'--input', '--output', '--to'},
    'inspect': {'--prompt', '--variable', '--model_dir', '--step', '--checkpoint', '--vocab',
                '--top_k', '--json'},
    'serve': GIN | {'--prompt_library', '--prompts', '--checkpoint', '--vocab', '--host', '--port',
                    '--api_key_file', '--placement', '--data_layer',
                    '--max_batch_size', '--max_wait_ms', '--max_queue', '--max_inputs_per_request',
                    '--max_chars_per_input', '--max_input_length', '--max_decode_length',
                    '--fine_shapes', '--warmup_decode_lengths'},
}
OWN_FLAGS['eval'] = OWN_FLAGS['infer'] = OWN_FLAGS['train']
OWN_FLAGS['report'] = {'--output'}


@pytest.mark.parametrize('command', sorted(OWN_FLAGS))
def test_each_command_help_lists_its_own_flags_only(command, capsys):
  with pytest.raises(SystemExit) as e:
    cli.parse_args([command, '--help'])
  assert e.value.code == 0
  shown = set(re.findall(r'(?<![\w-])--[a-z_]+(?![\w.])', capsys.readouterr().out))
  shown -= {'--help', '--verbose'}
  assert shown == OWN_FLAGS[command]


@pytest.mark.parametrize('argv, flag', [
    (['export', '--model_dir=m', '--format=npy', '--output=o', '--port', '9000'], '--port'),
    (['serve', '--top_k=3'], '--top_k'),
    (['convert', '--gin_file=a.gin'], '--gin_file'),
    (['train', '--prompts=lib'], '--prompts'),
    (['report', 'runs/a', '--top_k=3'], '--top_k'),
    (['report', 'runs/a', '--gin_file=a.gin'], '--gin_file'),
])
def test_a_flag_of_another_command_is_refused_in_one_line(argv, flag, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and flag in err and f'prompt-tuning {argv[0]} --help' in err, err


def test_serve_flags_are_the_serve_config_and_its_defaults():
  from prompt_tuning.serve.config import ServeConfig
  assert cli.serve_config(cli.parse_args(['serve'])) == ServeConfig()
  args = cli.parse_args(['serve', '--max_batch_size=4', '--fine_shapes=false',
                         '--warmup_decode_lengths=8,16', '--max_wait_ms=2.5'])
  assert cli.serve_config(args) == ServeConfig(max_batch_size=4, fine_shapes=False,
                                               warmup_decode_lengths=(8, 16), max_wait_ms=2.5)


def test_train_runs_t5_when_the_decoder_only_run_is_imported_but_not_bound(tmp_path, capsys):
  """`train` picks the decoder-only run only when the gin files bind it; its module imported
  by Python (never registered with gin) leaves T5's run in charge."""
  import gin

  from prompt_tuning.train import causal_lm_run  # noqa: F401
  try:
    code = cli.main(['train', '--gin_file=configs/paper/t5_1_1_base_rte.gin',
                     '--gin_bindings=TRAIN_STEPS = 0',
                     f"--gin_bindings=MODEL_DIR = '{tmp_path / 'run'}'",
                     f"--gin_bindings=INITIAL_CHECKPOINT_PATH = '{tmp_path / 'none'}'"])
  finally:
    gin.clear_config()  # the preset's bindings must not reach later tests' runs
  assert code == 0 and 'TRAIN_STEPS = 0: nothing to train' in capsys.readouterr().out

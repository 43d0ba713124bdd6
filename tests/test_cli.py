"""The command line: T5X flag handling, gin file lookup and errors, export/convert, packaging."""

import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from prompt_tuning import checkpoints, cli

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


def test_missing_gin_file_is_named(tmp_path):
  proc = _run_cli('train', '--gin_file=nope/missing.gin', cwd=str(tmp_path))
  assert proc.returncode != 0
  assert "gin file 'nope/missing.gin' not found" in proc.stderr


def test_convert_t5x_to_hf_and_back(shared, tmp_path):
  src = shared('fixtures', 't5x_tiny', 'checkpoint_3')
  assert cli.main(['convert', f'--input={src}', f'--output={tmp_path / "hf"}', '--to=hf']) == 0
  assert cli.main(['convert', f'--input={tmp_path / "hf"}', f'--output={tmp_path / "t5x"}',
                   '--to=t5x']) == 0
  _, a = checkpoints.load_params(src)
  _, b = checkpoints.load_params(str(tmp_path / 't5x'))
  np.testing.assert_array_equal(a['decoder']['logits_dense']['kernel'],
                                b['decoder']['logits_dense']['kernel'])


def test_convert_reports_bad_input_without_traceback(tmp_path, capsys):
  assert cli.main(['convert', f'--input={tmp_path / "missing"}', f'--output={tmp_path / "o"}',
                   '--to=hf']) == 1
  err = capsys.readouterr().err
  assert 'prompt-tuning convert: error:' in err and 'no such file or directory' in err
  assert 'Traceback' not in err


def test_export_needs_its_flags(capsys):
  assert cli.main(['export', '--format=npy']) == 1
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

"""Fixtures shared by tests and benchmarks, each defined once: the shared folder, the tiny T5X
fixture checkpoint and its model, a synthetic batch, and a `prompt-tuning serve` process on
127.0.0.1 with a library of random prompts.

Importing this module loads neither TensorFlow/SeqIO nor JAX (nor pytest: benchmarks run
without it); FIXTURE_CONFIG and FIXTURE_BINDINGS import the model code on first use. Tests skip
on missing shared files through conftest's `shared` fixture, which calls `shared_path`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Iterable, Optional

import numpy as np

from prompt_tuning.data.vocab import EOS_ID
# Tests build their tiny decoder-only tokenizers with the library's builder (its one home).
from prompt_tuning.data.word_level import word_level_tokenizer  # noqa: F401

# The folder of read-only fixtures and data (../shared beside the checkout unless set).
SHARED_ENV = 'PROMPT_TUNING_SHARED'
# Under it: the tiny T5X checkpoint (d_model 4, the real 32k vocabulary) and T5's vocabulary.
FIXTURE = ('fixtures', 't5x_tiny', 'checkpoint_3')
VOCAB = ('fixtures', 't5_vocab', 'sentencepiece.model')
# The T5Config fields the gin presets set (models/t5_1_1_prompt.gin and models/sizes/*.gin).
MODEL_FIELDS = ('vocab_size', 'd_model', 'd_ff', 'num_heads', 'head_dim', 'num_encoder_layers',
                'num_decoder_layers', 'relpos_buckets', 'relpos_max_distance')

_CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def shared_path(*parts: str) -> str:
  """`parts` under $PROMPT_TUNING_SHARED, by default ../shared beside the checkout holding this
  package (installed elsewhere: ../shared from the working directory). Need not exist."""
  default = (os.path.join(_CHECKOUT, '..', 'shared')
             if os.path.isfile(os.path.join(_CHECKOUT, 'pyproject.toml'))
             else os.path.join('..', 'shared'))
  return os.path.join(os.environ.get(SHARED_ENV, default), *parts)


def model_bindings(config: Any) -> list[str]:
  """Gin bindings that give the presets' MODEL the shape and activation dtype of `config` (a
  t5.T5Config)."""
  return ([f't5.T5Config.{name} = {getattr(config, name)!r}' for name in MODEL_FIELDS] +
          [f'ACTIVATION_DTYPE = {config.dtype!r}'])


def __getattr__(name: str) -> Any:
  """FIXTURE_CONFIG: the fixture's t5.T5Config (activations in the default bfloat16).
  FIXTURE_BINDINGS: the gin bindings of that model with float32 activations, over a preset's size.
  Built on first use (they import the model code, hence JAX)."""
  if name not in ('FIXTURE_CONFIG', 'FIXTURE_BINDINGS'):
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  from prompt_tuning.models import t5
  # relpos_max_distance is not in T5X's format: the fixture was built with 8 (loading it without
  # a config gives the default 128).
  config = t5.T5Config(d_model=4, d_ff=8, num_heads=2, head_dim=2, num_encoder_layers=2,
                       num_decoder_layers=2, relpos_buckets=4, relpos_max_distance=8,
                       param_dtype='float32')
  globals().update(FIXTURE_CONFIG=config,
                   FIXTURE_BINDINGS=model_bindings(config.replace(dtype='float32')))
  return globals()[name]


def synthetic_batch(seed: int, batch: int = 8, inputs: int = 12, targets: int = 4,
                    vocab: int = 200, padding: bool = True) -> dict[str, np.ndarray]:
  """A batch of T5X's three features (int32) drawn from `seed`: tokens in [2, vocab), inputs
  ending with EOS, decoder inputs the targets shifted right. `padding`: row 0's inputs and row
  1's targets are padding (0) from their middle on; without it every row is full length and the
  targets end with EOS too (benchmarks: every implementation does the same work)."""
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, vocab, size=(batch, inputs))
  enc[:, -1] = EOS_ID
  tgt = rng.randint(2, vocab, size=(batch, targets))
  if padding:
    enc[0, inputs // 2:] = 0
    tgt[1, targets // 2:] = 0
  else:
    tgt[:, -1] = EOS_ID
  dec_in = np.concatenate([np.zeros((batch, 1), int), tgt[:, :-1]], axis=1) * (tgt > 0)
  return {'encoder_input_tokens': enc.astype(np.int32),
          'decoder_input_tokens': dec_in.astype(np.int32),
          'decoder_target_tokens': tgt.astype(np.int32)}


def text_dataset(name: str, split: str) -> Any:
  """A task's examples after its text preprocessors, before tokenization (tf.data, file order):
  what tests compare with the pure-Python formatters. Imports SeqIO."""
  from prompt_tuning.data import causal_lm  # its one definition (decoder-only data reads it)
  return causal_lm.text_dataset(name, split)


def random_prompts(names: Iterable[str], length: int, d_model: int,
                   scale: float = 1.0) -> dict[str, np.ndarray]:
  """{name: a float32 [length, d_model] prompt drawn from N(0, scale²), seeded by its position}."""
  return {name: np.random.RandomState(seed).normal(scale=scale, size=(length, d_model)).astype(
      np.float32) for seed, name in enumerate(names)}


def free_port() -> int:
  """A TCP port free on 127.0.0.1 now."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def serve_command(library: str, port: int, vocab: str, checkpoint: str, bindings: Iterable[str],
                  flags: Iterable[str] = ()) -> list[str]:
  """`python -m prompt_tuning serve` of the presets' MODEL (T5 1.1 small, reshaped by the gin
  `bindings`) at `checkpoint`, serving the prompt `library` on 127.0.0.1:`port`."""
  args = [sys.executable, '-m', 'prompt_tuning', 'serve', '--gin_file=models/t5_1_1_prompt.gin',
          '--gin_file=models/sizes/small.gin', f'--prompts={library}', f'--port={port}',
          f'--vocab={vocab}', *flags]
  return args + [f'--gin_bindings={b}' for b in
                 [*bindings, f"INITIAL_CHECKPOINT_PATH = '{checkpoint}'"]]


def wait_until_up(proc: subprocess.Popen, port: int, limit_s: float = 180,
                  log: Optional[str | os.PathLike] = None) -> None:
  """Returns once the server `proc` answers /healthz on `port`; raises RuntimeError with the tail
  of its stderr (the file `log`, else its pipe) if it exits first, or kills it after `limit_s`."""
  deadline = time.time() + limit_s
  while time.time() < deadline:
    if proc.poll() is not None:
      if log is not None:
        with open(log) as f:
          err = f.read()
      else:
        err = proc.stderr.read() if proc.stderr else ''
      raise RuntimeError(f'the server exited {proc.returncode}: {err[-3000:]}')
    try:
      with urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2):
        return
    except (urllib.error.URLError, OSError):
      time.sleep(0.2)
  proc.kill()
  raise RuntimeError(f'the server did not start in {limit_s:g} s')

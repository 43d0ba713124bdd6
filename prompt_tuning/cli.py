"""The `prompt-tuning` command line, with T5X's flags.

  prompt-tuning train --gin_file=configs/paper/t5_1_1_base_rte.gin \\
      --gin.MODEL_DIR='"/tmp/rte"' --gin.INITIAL_CHECKPOINT_PATH='"/ckpts/lm100k_base"'

Gin files are looked up in the current directory, the `--gin_search_paths`, and the `gin/` and
`configs/` folders installed with the package (so `--gin_file=runs/prompt_finetune.gin` works from
a wheel). Later `--gin_file`s and bindings win over earlier ones.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import os
import re
import sys
from typing import Callable, Optional, Sequence

from prompt_tuning import xla_cpu

log = logging.getLogger('prompt_tuning')

COMMANDS = ('quickstart', 'train', 'eval', 'infer', 'plan', 'export', 'convert', 'inspect',
            'serve')
VOCAB_ENV = 'PROMPT_TUNING_VOCAB'  # as data/vocabularies.py (which needs SeqIO) reads it


def package_gin_dirs() -> list[str]:
  """The gin/ and configs/ folders: inside the installed package (wheel) or the checkout."""
  package = os.path.dirname(os.path.abspath(__file__))
  dirs = []
  for root in (package, os.path.dirname(package)):
    if os.path.isdir(os.path.join(root, 'gin')):
      # The folders themselves ('runs/prompt_finetune.gin') and their parent
      # ('configs/paper/t5_1_1_base_rte.gin', as written from a checkout).
      dirs += [os.path.join(root, 'gin'), os.path.join(root, 'configs'), root]
  return [d for d in dirs if os.path.isdir(d)]


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
  """T5X's `--gin.NAME=VALUE` -> `--gin_bindings=NAME = VALUE` (bare paths get quoted)."""
  out = []
  for arg in argv:
    m = re.fullmatch(r'--gin\.([^=]+)=(.*)', arg, re.DOTALL)
    if m:
      out.append(f'--gin_bindings={m.group(1)} = {_gin_value(m.group(2))}')
    else:
      out.append(arg)
  return out


def _gin_value(value: str) -> str:
  # Gin values are Python-like literals; a bare word or path would be a syntax error, so quote it.
  if re.fullmatch(r"\s*([@%\[\(\{'\"]|-?\d|True\b|False\b|None\b).*", value, re.DOTALL):
    return value
  return repr(value)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='prompt-tuning', description='Prompt tuning of frozen T5 1.1 models (JAX/Flax).')
  parser.add_argument('command', nargs='?', default='quickstart', choices=COMMANDS,
                      help='what to run (default: the quickstart on the embedded default)')
  gin_group = parser.add_argument_group('gin (T5X flags)')
  gin_group.add_argument('--gin_file', action='append', default=[],
                         help='gin file; repeatable, later files win')
  gin_group.add_argument('--gin_bindings', action='append', default=[],
                         help="a gin binding, e.g. \"MODEL_DIR = '/tmp/x'\"; repeatable")
  gin_group.add_argument('--gin_search_paths', action='append', default=[],
                         help='extra folders (comma-separated or repeated) to find gin files in')
  data = parser.add_argument_group('data')
  data.add_argument('--tfds_data_dir', default=None, help='TFDS data directory')
  hosts = parser.add_argument_group('multi-host (jax.distributed)')
  hosts.add_argument('--multiprocess_gpu', action='store_true',
                     help='initialise jax.distributed for multi-process GPU training (on a '
                     'multi-host TPU slice or a SLURM step of several tasks it starts by itself)')
  hosts.add_argument('--coordinator_address', default=None, help='host:port of process 0')
  hosts.add_argument('--process_count', type=int, default=None)
  hosts.add_argument('--process_index', type=int, default=None)
  io = parser.add_argument_group('export / convert')
  io.add_argument('--model_dir', help='export/inspect: the prompt-tuning MODEL_DIR')
  io.add_argument('--format', choices=('npy', 'peft', 't5x'), help='export format')
  io.add_argument('--output', help='export/convert: where to write')
  io.add_argument('--prompt_name', default=None,
                  help="export: the prompt of a multi-task run's table to export (its task)")
  io.add_argument('--step', type=int, default=None,
                  help='export/inspect: checkpoint step of --model_dir (latest)')
  io.add_argument('--input', help='convert: source checkpoint (T5X or HF directory)')
  io.add_argument('--to', choices=('t5x', 'hf'), help='convert: target format')
  look = parser.add_argument_group('inspect (nearest vocabulary tokens of each prompt position)')
  look.add_argument('--prompt', help='a prompt file: .npy (also extension-less numpy files), a '
                    'PEFT adapter directory, or a T5X checkpoint (read at --variable)')
  look.add_argument('--variable', default=None,
                    help='the T5X variable of --prompt (default encoder/prompt/prompt/prompt)')
  look.add_argument('--checkpoint', help='inspect: the model whose token embedding is compared '
                    '(serve without gin files: the model to serve): a T5X checkpoint, an HF T5 '
                    'directory or a [V, D] .npy (default with --model_dir: its base checkpoint)')
  look.add_argument('--vocab', help=f'SentencePiece model decoding the ids (default ${VOCAB_ENV}; '
                    f'without one, ids only)')
  look.add_argument('--top_k', type=int, default=5, help='nearest tokens per position (5)')
  look.add_argument('--json', help='also write the report as JSON to this file')
  srv = parser.add_argument_group('serve (HTTP; the model from gin: INITIAL_CHECKPOINT_PATH)')
  srv.add_argument('--prompts', help='serve: the prompt library folder (.npy, PEFT adapters, '
                   'MODEL_DIRs)')
  srv.add_argument('--host', default='127.0.0.1', help='serve: address to bind (127.0.0.1)')
  srv.add_argument('--port', type=int, default=8000, help='serve: port (8000)')
  srv.add_argument('--api_key_file', help='serve: a file holding the bearer token to require')
  srv.add_argument('--max_batch_size', type=int, default=32, help='serve: rows per batch (32)')
  srv.add_argument('--max_wait_ms', type=float, default=0.0,
                   help='serve: how long a batch waits to fill (0: runs what is queued when '
                   'the worker is free)')
  srv.add_argument('--fine_shapes', choices=('auto', 'true', 'false'), default='auto',
                   help='serve: rows padded to powers of two and one call per width bucket '
                   '(auto: on CPU only)')
  srv.add_argument('--warmup_decode_lengths', default='',
                   help='serve: compile greedy decoding of every batch shape at start for these '
                   'lengths, e.g. 8,64 (none by default)')
  srv.add_argument('--max_queue', type=int, default=4096,
                   help='serve: rows waiting before 503 (4096)')
  srv.add_argument('--max_inputs_per_request', type=int, default=64)
  srv.add_argument('--max_chars_per_input', type=int, default=8192)
  srv.add_argument('--max_decode_length', type=int, default=64)
  parser.add_argument('-v', '--verbose', action='store_true')
  return parser.parse_args(rewrite_gin_args(argv))


def setup_gin(args: argparse.Namespace, default_files: Sequence[str] = (),
              defaults: Sequence[str] = ()) -> None:
  """Parses the gin files, then `defaults` (bindings a command fills in), then the user's."""
  import gin
  search = [os.getcwd()]
  for entry in args.gin_search_paths:
    search += [p for p in entry.split(',') if p]
  search += package_gin_dirs()
  for path in search:
    gin.add_config_file_search_path(path)
  files = list(args.gin_file) or list(default_files)
  if not files:
    raise UsageError('no --gin_file given (e.g. --gin_file=configs/paper/t5_1_1_base_rte.gin, '
                     'or a file of your own that includes runs/prompt_finetune.gin).')
  resolved = [_find_gin_file(f, search) for f in files]
  _guard_gin_package_lookup()
  # gin logs every search-path probe (and miss, as an error) on the root logger.
  quiet = _DropMessages(('Path not found', 'system_path_file_exists'))
  logging.getLogger().addFilter(quiet)
  try:
    gin.parse_config_files_and_bindings(resolved, list(defaults) + list(args.gin_bindings),
                                        finalize_config=True)
  except (ValueError, SyntaxError, ImportError, IOError) as e:
    raise UsageError(f'gin configuration error: {e}') from None
  finally:
    logging.getLogger().removeFilter(quiet)
  check_macros_used(args.gin_bindings)


def _referenced_macros() -> set[str]:
  """Names used as %NAME anywhere in the parsed configuration."""
  from gin import config as gin_config
  found: set[str] = set()

  def walk(value):
    if isinstance(value, gin_config.ConfigurableReference):
      if value.selector == 'gin.macro':
        found.add('/'.join(value.scopes))
    elif isinstance(value, dict):
      for v in value.values():
        walk(v)
    elif isinstance(value, (list, tuple, set)):
      for v in value:
        walk(v)
  for bindings in gin_config._CONFIG.values():  # pylint: disable=protected-access
    walk(bindings)
  return found


def check_macros_used(bindings: Sequence[str]) -> None:
  """A --gin.NAME macro that no configuration reads is a typo: name it and the close match."""
  names = [m.group(1) for b in bindings
           if (m := re.match(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=', b))]
  if not names:
    return
  used = _referenced_macros()
  for name in names:
    if name not in used:
      close = difflib.get_close_matches(name, sorted(used), n=1)
      hint = f'did you mean {close[0]}?' if close else 'check its spelling'
      raise UsageError(f'--gin.{name}: no gin file reads the macro {name} ({hint}).')


def _guard_gin_package_lookup() -> None:
  """gin also looks an include ('runs/x.gin') up as a file of a Python package ('runs'). A
  plain folder of that name on sys.path (./runs, which the quickstart leaves, under `python -m`)
  is a namespace package without a file, and gin 0.5 then raises TypeError instead of going on
  to its search paths. That lookup now answers 'not found' there."""
  from gin import config as gin_config
  for i, (reader, exists) in enumerate(gin_config._FILE_READERS):  # pylint: disable=protected-access
    if getattr(exists, '__name__', '') == 'system_path_file_exists':
      def guarded(path: str, exists=exists) -> bool:
        try:
          return exists(path)
        except TypeError:
          return False
      gin_config._FILE_READERS[i] = (reader, guarded)  # pylint: disable=protected-access


class _DropMessages(logging.Filter):

  def __init__(self, prefix: tuple[str, ...]):
    super().__init__()
    self.prefix = prefix

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(self.prefix)


def _find_gin_file(name: str, search: Sequence[str]) -> str:
  if os.path.isabs(name):
    if os.path.exists(name):
      return name
  for root in search:
    candidate = os.path.join(root, name)
    if os.path.exists(candidate):
      return candidate
  raise UsageError(f'gin file {name!r} not found in: {", ".join(search)}')


def cluster_launch(env=None) -> Optional[str]:
  """The launcher that started this process as one of several, when jax.distributed can find
  its peers by itself: a multi-host Cloud TPU slice (every worker lists the slice's hosts) or a
  SLURM step of several tasks. None for a single process."""
  env = os.environ if env is None else env
  if len([h for h in env.get('TPU_WORKER_HOSTNAMES', '').split(',') if h.strip()]) > 1:
    return 'Cloud TPU slice'
  if 'SLURM_JOB_ID' in env and int(env.get('SLURM_STEP_NUM_TASKS') or
                                   env.get('SLURM_NTASKS') or 1) > 1:
    return 'SLURM'
  return None


def init_distributed(args: argparse.Namespace) -> None:
  """jax.distributed with T5X's flags; without them, on a multi-host TPU slice or a SLURM step
  of several tasks, with jax.distributed's own detection of the peers (no flags needed)."""
  launch = None if (args.multiprocess_gpu or args.coordinator_address) else cluster_launch()
  if not (args.multiprocess_gpu or args.coordinator_address or launch):
    return
  import jax
  if launch:
    log.info('jax.distributed: %s detected; finding the peers from it.', launch)
  jax.distributed.initialize(coordinator_address=args.coordinator_address,
                             num_processes=args.process_count, process_id=args.process_index)
  log.info('jax.distributed: process %d of %d, %d global devices', jax.process_index(),
           jax.process_count(), jax.device_count())


class UsageError(ValueError):
  """A flag or gin setting that cannot work; the message names it."""


# Bad input (exit 2): what the user can fix from the message. Anything else exits 1.
_BAD_INPUT = (ValueError, LookupError, TypeError, OSError)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  if not args.verbose:
    _quiet_third_party()
  logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                      format='%(asctime)s %(levelname)s %(message)s', datefmt='%H:%M:%S')
  for noisy in ('absl', 'jax._src', 'orbax', 'tensorflow'):
    # Their warnings are about their own internals (e.g. orbax on a read-only restore).
    logging.getLogger(noisy).setLevel(logging.WARNING if args.verbose else logging.ERROR)
  if args.tfds_data_dir:
    os.environ['TFDS_DATA_DIR'] = args.tfds_data_dir
  # Before JAX starts. `plan` also asks for XLA:CPU's memory-aware schedule: the default one
  # ignores memory, so remat would save nothing in the temporaries it reports (T5 1.1 small,
  # batch 32, 512 + 100: 13.2 GiB none vs 12.8 full; memory-optimised 8.2 vs 5.6), while
  # accelerators schedule for memory.
  xla_cpu.apply((xla_cpu.FAST_REDUCE, xla_cpu.MEMORY_SCHEDULE) if args.command == 'plan'
                else (xla_cpu.FAST_REDUCE,))
  handler = _HANDLERS[args.command]
  from prompt_tuning.train import preemption
  if not args.verbose and args.command in _DATA_COMMANDS:
    _import_quietly(('tensorflow', 'tensorflow_text', 'tensorflow_datasets', 'seqio'))
  try:
    return handler(args) or 0
  except preemption.Preempted as e:
    print(f'prompt-tuning {args.command}: {one_line(e)}', file=sys.stderr, flush=True)
    return 0
  except KeyboardInterrupt:
    print(f'prompt-tuning {args.command}: interrupted before training started; nothing was '
          f'written.', file=sys.stderr)
    return 130
  except Exception as e:  # pylint: disable=broad-except
    # One line that names what is wrong; the traceback only on request.
    if args.verbose:
      raise
    print(f'prompt-tuning {args.command}: error: {error_line(e)}', file=sys.stderr)
    return 2 if isinstance(e, _BAD_INPUT) else 1


def one_line(e: BaseException) -> str:
  """The message on one line, without gin's "In call to configurable" trailer."""
  text = str(e).split('\n  In call to configurable')[0]
  parts = [p.strip() for p in text.splitlines() if p.strip() and set(p.strip()) != {'^'}]
  return ' '.join(parts) or type(e).__name__


def error_line(e: BaseException) -> str:
  """What `prompt-tuning <cmd>: error:` says: the message, and for a failure that is not bad
  input, its type and where to find more."""
  text = one_line(e)
  if isinstance(e, KeyError) and len(e.args) == 1:
    text = f'missing key {e.args[0]!r}'
  if not isinstance(e, (_BAD_INPUT, RuntimeError)) or type(e) in (TypeError, OSError):
    text = f'{type(e).__name__}: {text}'
  return text + ('' if isinstance(e, _BAD_INPUT) else ' (run with --verbose for the traceback)')


_DATA_COMMANDS = ('train', 'eval', 'infer', 'quickstart')


def _import_quietly(modules: Sequence[str]) -> None:
  """Imports TensorFlow & co. with the process's stderr closed: their C++ start-up notices
  (oneDNN, "Could not find cuda drivers") are printed before any logging setting applies."""
  saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
  try:
    sys.stderr.flush()
    os.dup2(devnull, 2)
    for name in modules:
      try:
        importlib.import_module(name)
      except Exception:  # pylint: disable=broad-except
        pass  # a missing or broken package speaks for itself at its real import, unsilenced
    if 'tensorflow' in sys.modules:
      # The data pipeline runs on the host: TF must neither probe nor take the accelerators.
      sys.modules['tensorflow'].config.set_visible_devices([], 'GPU')
  finally:
    os.dup2(saved, 2)
    os.close(saved)
    os.close(devnull)


def _quiet_third_party() -> None:
  """Our lines first: TensorFlow's and XLA's start-up notices only with --verbose."""
  default_hook = sys.unraisablehook

  def unraisable(info):
    # After a failed orbax restore (a damaged file, already reported in our one line), its
    # asyncio callbacks find their loop closed; that is noise, not a second error.
    if isinstance(info.exc_value, RuntimeError) and 'Event loop is closed' in str(
        info.exc_value):
      log.debug('ignored after an earlier error: %s', info.exc_value)
      return
    default_hook(info)
  sys.unraisablehook = unraisable
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  os.environ.setdefault('GRPC_VERBOSITY', 'ERROR')
  import warnings
  warnings.filterwarnings('ignore', category=DeprecationWarning)
  warnings.filterwarnings('ignore', category=FutureWarning)


# What `plan` does not read, though the train gin files require it: planning needs only the
# model, prompt, batch size and lengths.
_PLAN_DEFAULTS = ('MODEL_DIR = None', 'MIXTURE_OR_TASK_NAME = None', 'TRAIN_STEPS = None',
                  'INITIAL_CHECKPOINT_PATH = None')


def _gin_run(default_files: Sequence[str], function: str,
             defaults: Sequence[str] = ()) -> Callable:
  module_name, function_name = function.rsplit('.', 1)

  def run(args):
    init_distributed(args)
    setup_gin(args, default_files, defaults)
    import gin
    # Dynamic registration binds the function's registered wrapper, not the module attribute.
    fn = getattr(importlib.import_module(module_name), function_name)
    result = gin.get_configurable(fn)()
    return 0 if result is None or not isinstance(result, int) else result
  return run


def _export(args: argparse.Namespace) -> int:
  from prompt_tuning import export
  missing = [f for f in ('model_dir', 'format', 'output') if not getattr(args, f)]
  if missing:
    raise ValueError('export needs ' + ', '.join(f'--{m}' for m in missing))
  path = export.export(args.model_dir, args.format, args.output, step=args.step,
                       prompt_name=args.prompt_name)
  print(f'wrote {path}')
  return 0


def _convert(args: argparse.Namespace) -> int:
  from prompt_tuning import checkpoints
  missing = [f for f in ('input', 'output', 'to') if not getattr(args, f)]
  if missing:
    raise ValueError('convert needs ' + ', '.join(f'--{m}' for m in missing))
  path = checkpoints.convert(args.input, args.output, args.to)
  print(f'wrote {path}')
  return 0


def _inspect(args: argparse.Namespace) -> int:
  import json

  from prompt_tuning import inspection, prompt_files
  from prompt_tuning import model_dir as model_dir_lib
  from prompt_tuning.atomic import atomic_write
  from prompt_tuning.vocab import SentencePieceVocab
  if bool(args.prompt) == bool(args.model_dir):
    raise ValueError('inspect needs one prompt: --prompt=FILE (.npy, PEFT adapter, T5X '
                     'checkpoint) or --model_dir=MODEL_DIR [--step=N]' +
                     (', not both.' if args.prompt else '.'))
  if args.step is not None and not args.model_dir:
    raise ValueError('inspect: --step picks a step of --model_dir; a --prompt file has one prompt.')
  from prompt_tuning import storage
  if args.json and storage.isdir(args.json):
    raise ValueError(f'--json={args.json} is a directory; name the file to write.')
  if args.prompt:
    prompt = prompt_files.load_prompt_file(args.prompt, args.variable)
    prompt_source = args.prompt
  else:
    prompt, step = model_dir_lib.load_prompt(args.model_dir, args.step)
    prompt_source = f'{args.model_dir} (step {step})'
  checkpoint = args.checkpoint
  if not checkpoint and args.model_dir:
    checkpoint = (model_dir_lib.read_run_info(args.model_dir) or {}).get('initial_checkpoint')
  if not checkpoint:
    raise ValueError('inspect needs --checkpoint=PATH: the model whose token embedding the prompt '
                     'is compared with (a T5X checkpoint, an HF T5 directory or a [V, D] .npy).')
  embedding, embedding_source = inspection.load_embedding(checkpoint)
  if prompt.shape[-1] != embedding.shape[-1]:
    raise ValueError(f'the prompt {prompt_source} has shape {list(prompt.shape)} (width '
                     f'{prompt.shape[-1]}) but the embedding {embedding_source} has shape '
                     f'{list(embedding.shape)} (width {embedding.shape[-1]}): the prompt was '
                     f'trained for another model.')
  vocab_path = args.vocab or os.environ.get(VOCAB_ENV)
  vocab = SentencePieceVocab(vocab_path) if vocab_path else None
  if vocab is not None and vocab.vocab_size > embedding.shape[0]:
    raise ValueError(f'the vocabulary {vocab_path} has {vocab.vocab_size} ids but the embedding '
                     f'{embedding_source} has {embedding.shape[0]} rows: they belong to different '
                     f'models.')
  if vocab is None:
    print(f'prompt-tuning inspect: no vocabulary (--vocab or ${VOCAB_ENV}); tokens are shown as '
          f'ids.', file=sys.stderr)
  report = inspection.inspect_prompt(prompt, embedding, args.top_k, vocab,
                                     num_tokens=vocab.vocab_size if vocab else None)
  report = {'prompt_source': prompt_source, 'embedding_source': embedding_source,
            'vocab': vocab_path, **report}
  if args.json:
    atomic_write(storage.absolute(args.json), json.dumps(report, indent=1, ensure_ascii=False))
  print(inspection.format_table(report, prompt_source, embedding_source))
  if args.json:
    print(f'wrote {storage.absolute(args.json)}')
  return 0


def _int_list(flag: str, text: str) -> tuple[int, ...]:
  try:
    return tuple(int(x) for x in text.split(',') if x.strip())
  except ValueError:
    raise ValueError(f'{flag}={text}: give whole numbers separated by commas, e.g. 8,64.') from None


def _serve(args: argparse.Namespace) -> int:
  from prompt_tuning import serve
  config = serve.ServeConfig(
      max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
      max_queue=args.max_queue, max_inputs_per_request=args.max_inputs_per_request,
      max_chars_per_input=args.max_chars_per_input, max_decode_length=args.max_decode_length,
      fine_shapes={'auto': None, 'true': True, 'false': False}[args.fine_shapes],
      warmup_decode_lengths=_int_list('--warmup_decode_lengths', args.warmup_decode_lengths))
  if not 0 <= args.port < 65536:
    raise ValueError(f'--port={args.port}: choose a port in [0, 65535].')
  from prompt_tuning import storage
  if args.prompts and not storage.isdir(args.prompts):
    raise ValueError(f'--prompts={args.prompts}: not a folder of prompts.')
  if args.checkpoint and not args.gin_file and not args.gin_bindings:
    # Without gin (GPU machines lack it): the architecture is read from the checkpoint.
    return serve.serve(initial_checkpoint_path=args.checkpoint, prompts=args.prompts,
                       vocab=args.vocab, host=args.host, port=args.port,
                       api_key_file=args.api_key_file, config=config)
  args.gin_file = ['runs/serve.gin'] + list(args.gin_file)
  setup_gin(args)
  import gin
  return gin.get_configurable(serve.serve)(
      prompts=args.prompts, vocab=args.vocab, host=args.host, port=args.port,
      api_key_file=args.api_key_file, config=config)


_HANDLERS = {
    'train': _gin_run((), 'prompt_tuning.runs.train'),
    'eval': _gin_run((), 'prompt_tuning.runs.evaluate'),
    'infer': _gin_run((), 'prompt_tuning.runs.infer'),
    'plan': _gin_run((), 'prompt_tuning.train.plan.plan', _PLAN_DEFAULTS),
    'quickstart': _gin_run(('quickstart.gin',), 'prompt_tuning.quickstart.quickstart'),
    'export': _export,
    'convert': _convert,
    'inspect': _inspect,
    'serve': _serve,
}

"""The `prompt-tuning` command line: T5X's flags, one subcommand per job; it parses and
dispatches, each command's work lives in its library module.

  prompt-tuning train --gin_file=configs/paper/t5_1_1_base_rte.gin \\
      --gin.MODEL_DIR=/tmp/rte --gin.INITIAL_CHECKPOINT_PATH=/ckpts/lm100k_base

`prompt-tuning <command> --help` lists that command's flags; a flag of another command is an
error. Gin (files, bindings, search paths) is handled in gin_utils.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import sys
import typing
from typing import Callable, Optional, Sequence

from prompt_tuning import gin_utils
from prompt_tuning.storage import one_line
from prompt_tuning.train import xla_cpu
from prompt_tuning.gin_utils import UsageError, package_gin_dirs  # noqa: F401  (the CLI's API)

log = logging.getLogger('prompt_tuning')

VOCAB_ENV = 'PROMPT_TUNING_VOCAB'  # as data/vocabularies.py (which needs SeqIO) reads it
DEFAULT_COMMAND = 'quickstart'


# ================================ flags ================================

def _data_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument_group('data').add_argument('--tfds_data_dir', default=None,
                                                 help='TFDS data directory')


def _host_flags(parser: argparse.ArgumentParser) -> None:
  hosts = parser.add_argument_group('multi-host (jax.distributed)')
  hosts.add_argument('--multiprocess_gpu', action='store_true',
                     help='initialise jax.distributed for multi-process GPU training (on a '
                     'multi-host TPU slice or a SLURM step of several tasks it starts by itself)')
  hosts.add_argument('--coordinator_address', default=None, help='host:port of process 0')
  hosts.add_argument('--process_count', type=int, default=None)
  hosts.add_argument('--process_index', type=int, default=None)


def _export_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--model_dir', help='the prompt-tuning MODEL_DIR')
  parser.add_argument('--format', choices=('npy', 'peft', 't5x'), help='export format')
  parser.add_argument('--output', help='where to write')
  parser.add_argument('--prompt_name', default=None,
                      help="the prompt of a multi-task run's table to export (its task)")
  parser.add_argument('--step', type=int, default=None,
                      help='checkpoint step of --model_dir (default: the latest)')


def _convert_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--input', help='source checkpoint (T5X or HF directory)')
  parser.add_argument('--output', help='where to write')
  parser.add_argument('--to', choices=('t5x', 'hf'), help='target format')


def _inspect_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--prompt', help='a prompt file: .npy (also extension-less numpy files), '
                      'a PEFT adapter directory, or a T5X checkpoint (read at --variable)')
  parser.add_argument('--variable', default=None,
                      help='the T5X variable of --prompt (default encoder/prompt/prompt/prompt)')
  parser.add_argument('--model_dir', help='a prompt-tuning MODEL_DIR (instead of --prompt)')
  parser.add_argument('--step', type=int, default=None,
                      help='checkpoint step of --model_dir (default: the latest)')
  parser.add_argument('--checkpoint', help='the model whose token embedding is compared: a T5X '
                      'checkpoint, an HF T5 or decoder-only (Llama, Qwen2, Mistral, GPT-2) '
                      'directory or a [V, D] .npy (default with --model_dir: its base checkpoint)')
  parser.add_argument('--vocab', help=f'what decodes the ids: a SentencePiece model, or a folder '
                      f'with a tokenizer.json (default: a decoder-only checkpoint folder\'s '
                      f'tokenizer.json, else ${VOCAB_ENV}; without one, ids only)')
  parser.add_argument('--top_k', type=int, default=5, help='nearest tokens per position (5)')
  parser.add_argument('--json', help='also write the report as JSON to this file')


def _report_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('run_dirs', nargs='+', metavar='RUN_DIR',
                      help='finished MODEL_DIRs (local folders or gs:// URLs)')
  parser.add_argument('--output', default='report',
                      help='folder for report.md, the CSV tables and the plots (./report)')


_AUTO_BOOL = {'auto': None, 'true': True, 'false': False}


def _serve_flags(parser: argparse.ArgumentParser) -> None:
  from prompt_tuning.serve.config import ServeConfig
  parser.add_argument('--prompt_library', '--prompts', dest='prompt_library',
                      help='the prompt library folder (.npy, PEFT adapters, MODEL_DIRs), as '
                      "eval/infer's PROMPT_LIBRARY")
  parser.add_argument('--checkpoint', help='without gin files: the model to serve (a T5X '
                      'checkpoint, an HF T5 directory or an HF decoder-only folder with its '
                      'tokenizer.json; its architecture is read from it)')
  parser.add_argument('--vocab', help=f'T5\'s SentencePiece model (default ${VOCAB_ENV})')
  parser.add_argument('--placement', choices=('prefix', 'suffix', 'after_bos'),
                      help="where the prompts go (default: a decoder-only library's MODEL_DIRs' "
                      "own, else gin's PROMPT's, else prefix)")
  parser.add_argument('--data_layer', choices=tuple(_AUTO_BOOL), default='auto',
                      help='load the data layer (raw task examples, label words; TensorFlow '
                      'and SeqIO take seconds to import): auto, when installed')
  parser.add_argument('--host', default='127.0.0.1', help='address to bind (127.0.0.1)')
  parser.add_argument('--port', type=int, default=8000, help='port (8000)')
  parser.add_argument('--api_key_file', help='a file holding the bearer token to require')
  limits = parser.add_argument_group('batching and limits (ServeConfig)')
  hints = typing.get_type_hints(ServeConfig)
  defaults = ServeConfig()  # every field has a default: the flag's
  for field in dataclasses.fields(ServeConfig):
    kind, default = hints[field.name], getattr(defaults, field.name)
    text = f"{field.metadata.get('help', '')} (default: %(default)s)"
    if kind == Optional[bool]:
      limits.add_argument(f'--{field.name}', choices=tuple(_AUTO_BOOL), help=text,
                          default={v: k for k, v in _AUTO_BOOL.items()}[default])
    elif kind == tuple[int, ...]:
      limits.add_argument(f'--{field.name}', default=','.join(map(str, default)),
                          help=text + '; whole numbers separated by commas, e.g. 8,64')
    else:
      limits.add_argument(f'--{field.name}', type=kind, default=default, help=text)


def serve_config(args: argparse.Namespace):
  """The ServeConfig the serve flags give."""
  from prompt_tuning.serve.config import ServeConfig
  values = {}
  hints = typing.get_type_hints(ServeConfig)
  for field in dataclasses.fields(ServeConfig):
    value = getattr(args, field.name)
    if hints[field.name] == Optional[bool]:
      value = _AUTO_BOOL[value]
    elif hints[field.name] == tuple[int, ...]:
      value = _int_list(f'--{field.name}', value)
    values[field.name] = value
  return ServeConfig(**values)


# (help, flag groups, takes gin flags)
COMMANDS: dict[str, tuple[str, tuple[Callable, ...], bool]] = {
    'quickstart': ('tune a prompt of a tiny T5 on the embedded toy tasks (no downloads; a tiny '
                   'Llama with --gin_file=quickstart_causal_lm.gin)',
                   (_data_flags,), True),
    'train': ('prompt tuning from gin (T5X layout): train, evaluate, checkpoint, export',
              (_data_flags, _host_flags), True),
    'eval': ('evaluate a MODEL_DIR\'s prompt (or a prompt file) on a task',
             (_data_flags, _host_flags), True),
    'infer': ('predictions of a prompt, or of a prompt library over mixed-task inputs',
              (_data_flags, _host_flags), True),
    'plan': ('memory per remat policy for a gin-configured run, before running it', (), True),
    'export': ('write a MODEL_DIR\'s prompt as .npy, a PEFT adapter or a T5X checkpoint',
               (_export_flags,), False),
    'convert': ('convert a base checkpoint between T5X and HF formats', (_convert_flags,), False),
    'inspect': ('nearest vocabulary tokens of each prompt position', (_inspect_flags,), False),
    'serve': ('serve a frozen model and a prompt library over HTTP', (_serve_flags,), True),
    'report': ("the paper's tables and plots (Markdown, CSV, PNG) from finished MODEL_DIRs",
               (_report_flags,), False),
}


class _Parser(argparse.ArgumentParser):
  """argparse whose errors are one line naming the flag and where the command's flags are."""

  def error(self, message: str):  # type: ignore[override]
    self.exit(2, f'{self.prog}: error: {message} (see {self.prog} --help)\n')


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(
      prog='prompt-tuning', description='Prompt tuning of frozen T5 1.1 models (JAX/Flax). '
      f'Without a command: {DEFAULT_COMMAND}.')
  commands = parser.add_subparsers(dest='command', metavar='COMMAND')
  parser.set_defaults(parsers={})
  for name, (text, groups, gin) in COMMANDS.items():
    sub = commands.add_parser(name, help=text, description=text)
    parser.get_default('parsers')[name] = sub
    if gin:
      gin_utils.add_flags(sub)
    for add in groups:
      add(sub)
    sub.add_argument('-v', '--verbose', action='store_true',
                     help='debug logging and full tracebacks')
  return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  argv = list(argv)
  if not argv or (argv[0].startswith('-') and argv[0] not in ('-h', '--help')):
    argv.insert(0, DEFAULT_COMMAND)  # `prompt-tuning` alone runs the quickstart
  parser = build_parser()
  args, unknown = parser.parse_known_args(gin_utils.rewrite_gin_args(argv))
  if unknown:  # named by the command's own parser: its usage is the one to read
    args.parsers[args.command].error(f'unrecognized arguments: {" ".join(unknown)}')
  del args.parsers
  return args


# ================================ running ================================

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
  # Commands without the multi-host flags still join a cluster their launcher describes.
  flags = {name: getattr(args, name, None) for name in (
      'multiprocess_gpu', 'coordinator_address', 'process_count', 'process_index')}
  launch = None if (flags['multiprocess_gpu'] or flags['coordinator_address']) else (
      cluster_launch())
  if not (flags['multiprocess_gpu'] or flags['coordinator_address'] or launch):
    return
  import jax
  if launch:
    log.info('jax.distributed: %s detected; finding the peers from it.', launch)
  jax.distributed.initialize(coordinator_address=flags['coordinator_address'],
                             num_processes=flags['process_count'],
                             process_id=flags['process_index'])
  log.info('jax.distributed: process %d of %d, %d global devices', jax.process_index(),
           jax.process_count(), jax.device_count())


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
  if getattr(args, 'tfds_data_dir', None):
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
             defaults: Sequence[str] = (), alternate: Optional[str] = None) -> Callable:
  """A gin-configured command running `function`, or `alternate` when the gin files bind it
  (train: runs/causal_lm_prompt_tuning.gin binds the decoder-only run; quickstart:
  quickstart_causal_lm.gin the decoder-only demo)."""

  def run(args):
    init_distributed(args)
    gin_utils.setup(args, default_files, defaults)
    import gin
    chosen = function
    if alternate is not None:
      module, name = alternate.rsplit('.', 1)
      loaded = sys.modules.get(module)  # a gin file that binds it has imported its module
      try:
        if loaded is not None and gin.get_bindings(getattr(loaded, name)):
          chosen = alternate
      except ValueError:  # imported by Python, never registered with gin: not bound
        pass
    module_name, function_name = chosen.rsplit('.', 1)
    # Dynamic registration binds the function's registered wrapper, not the module attribute.
    fn = getattr(importlib.import_module(module_name), function_name)
    result = gin.get_configurable(fn)()
    return 0 if result is None or not isinstance(result, int) else result
  return run


def _export(args: argparse.Namespace) -> int:
  from prompt_tuning.prompts import export
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
  from prompt_tuning.prompts import inspection
  inspection.inspect_command(prompt=args.prompt, variable=args.variable, model_dir=args.model_dir,
                             step=args.step, checkpoint=args.checkpoint, vocab=args.vocab,
                             top_k=args.top_k, json_file=args.json)
  return 0


def _int_list(flag: str, text: str) -> tuple[int, ...]:
  try:
    return tuple(int(x) for x in text.split(',') if x.strip())
  except ValueError:
    raise ValueError(f'{flag}={text}: give whole numbers separated by commas, e.g. 8,64.') from None


def _serve(args: argparse.Namespace) -> int:
  from prompt_tuning import serve, storage
  config = serve_config(args)
  if not 0 <= args.port < 65536:
    raise ValueError(f'--port={args.port}: choose a port in [0, 65535].')
  if args.prompt_library and not storage.isdir(args.prompt_library):
    raise ValueError(f'--prompt_library={args.prompt_library}: not a folder of prompts.')
  if args.checkpoint and not args.gin_file and not args.gin_bindings:
    # Without gin (GPU machines lack it): the architecture is read from the checkpoint.
    return serve.serve(initial_checkpoint_path=args.checkpoint, prompt_library=args.prompt_library,
                       vocab=args.vocab, host=args.host, port=args.port,
                       api_key_file=args.api_key_file, config=config, placement=args.placement,
                       data_layer=_AUTO_BOOL[args.data_layer])
  args.gin_file = ['runs/serve.gin'] + list(args.gin_file)
  gin_utils.setup(args)
  import gin
  return gin.get_configurable(serve.serve)(
      prompt_library=args.prompt_library, vocab=args.vocab, host=args.host, port=args.port,
      api_key_file=args.api_key_file, config=config, placement=args.placement,
      **({} if args.data_layer == 'auto' else {'data_layer': _AUTO_BOOL[args.data_layer]}))


def _report(args: argparse.Namespace) -> int:
  from prompt_tuning.reports import command
  return command.report(args.run_dirs, args.output)


_HANDLERS = {
    'train': _gin_run((), 'prompt_tuning.runs.train',
                      alternate='prompt_tuning.train.causal_lm_run.train_causal_lm'),
    'eval': _gin_run((), 'prompt_tuning.runs.evaluate'),
    'infer': _gin_run((), 'prompt_tuning.runs.infer'),
    'plan': _gin_run((), 'prompt_tuning.train.plan.plan', _PLAN_DEFAULTS),
    'quickstart': _gin_run(
        ('quickstart.gin',), 'prompt_tuning.quickstart.quickstart',
        alternate='prompt_tuning.train.causal_lm_quickstart.quickstart_causal_lm'),
    'export': _export,
    'convert': _convert,
    'inspect': _inspect,
    'serve': _serve,
    'report': _report,
}

"""The gin-configured entry points `prompt-tuning train|eval|infer` call (plan: train/plan.py;
the quickstart: quickstart.py; export and convert take flags: export.py, checkpoints.convert).

The data path: gin -> task -> batches -> PromptTrainer step -> prompt checkpoint -> evaluation.
Every argument is bound in gin files (gin/runs/*.gin) through T5X-named macros such as MODEL_DIR,
MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, TRAIN_STEPS, BATCH_SIZE, INITIAL_CHECKPOINT_PATH.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
from typing import Any, Callable, Literal, Optional, Sequence

import jax
import numpy as np

from prompt_tuning.data import batching
from prompt_tuning import checkpoints, storage
from prompt_tuning.inference import evaluation
from prompt_tuning.prompts import export, files as prompt_files, init as prompt_init
from prompt_tuning.train import reporting
from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning.prompts import library as prompt_library_lib
from prompt_tuning.storage import write_atomic
from prompt_tuning.inference.decoding import DecodingConfig
from prompt_tuning.models import t5
from prompt_tuning.models.prompt import PromptConfig, merge_params, prompt_tree
from prompt_tuning.train import loop, optim, partitioning, preemption
from prompt_tuning.train.plan import plan  # noqa: F401  (gin files written before name runs.plan)
from prompt_tuning.train.trainer import LossConfig, PromptTrainer

log = logging.getLogger('prompt_tuning')

DEFAULT_TASK_MODULE = 'prompt_tuning.data.tasks'


def _import_tasks(module: Optional[str]) -> Any:
  for name in [DEFAULT_TASK_MODULE] + ([module] if module and module != DEFAULT_TASK_MODULE
                                       else []):
    importlib.import_module(name)
  return importlib.import_module(DEFAULT_TASK_MODULE)


def _write_gin_config(model_dir: str, name: str = model_dir_lib.CONFIG_GIN) -> None:
  import gin
  if jax.process_index() == 0:
    write_atomic(storage.join(model_dir, name), gin.config_str())


AdafactorStepOffset = Literal['zero', 'checkpoint'] | int | None


def _adafactor_offset(setting: AdafactorStepOffset, checkpoint_step: int) -> int:
  if isinstance(setting, bool):  # True == 1 would pass as a step count
    raise ValueError(f"adafactor_step_offset must be 'zero', 'checkpoint' or a step count, "
                     f'got {setting!r}.')
  if setting in (None, 0, 'zero'):
    return 0
  if setting == 'checkpoint':
    return checkpoint_step
  if isinstance(setting, int) and setting > 0:
    return setting
  raise ValueError(f"adafactor_step_offset must be 'zero', 'checkpoint' or a step count, "
                   f'got {setting!r}.')


def build_trainer(*, model: Optional[t5.T5Config], prompt: PromptConfig,
                  initial_checkpoint_path: Optional[str], learning_rate: Any,
                  optimizer: Callable[..., Any],
                  adafactor_step_offset: AdafactorStepOffset = 'zero',
                  loss: LossConfig = LossConfig(), mesh_shape: Optional[Sequence[int]] = None,
                  frozen_dtype: Optional[str] = None) -> tuple[PromptTrainer, int]:
  """(trainer, base checkpoint step) from the base checkpoint and the gin-bound settings."""
  config, frozen = checkpoints.load_base(initial_checkpoint_path, model)
  base_step = checkpoints.read_step(initial_checkpoint_path)
  offset = _adafactor_offset(adafactor_step_offset, base_step)
  tx = optimizer(learning_rate=learning_rate, step_offset=offset) if offset else optimizer(
      learning_rate=learning_rate)
  mesh = partitioning.make_mesh(mesh_shape)
  schedule = learning_rate if callable(learning_rate) else (lambda _: learning_rate)
  trainer = PromptTrainer(config, prompt, frozen, tx, mesh=mesh, loss=loss,
                          frozen_dtype=frozen_dtype, learning_rate_fn=schedule)
  return trainer, base_step


def train(*, model_dir: str, mixture_or_task_name: str, task_feature_lengths: dict,
          batch_size: int, train_steps: int, initial_checkpoint_path: Optional[str],
          model: Optional[t5.T5Config] = None, prompt: PromptConfig = PromptConfig(),
          prompt_init: Callable[..., Any] = prompt_init.initializer_by_name,
          learning_rate: Any = 0.3, optimizer: Callable[..., Any] = optim.make_optimizer,
          adafactor_step_offset: AdafactorStepOffset = 'zero', loss: LossConfig = LossConfig(),
          eval_period: int = 1000, eval_split: str = 'validation',
          eval_methods: Sequence[evaluation.EvalMethod] = ('generate',),
          eval_max_examples: Optional[int] = None,
          eval_batch_size: int = 32, decoding: DecodingConfig = DecodingConfig(),
          eval_at_start: bool = True,
          save_period: Optional[int] = None, keep: int = 1, random_seed: int = 0,
          mesh_shape: Optional[Sequence[int]] = None, frozen_dtype: Optional[str] = None,
          mixture_or_task_module: Optional[str] = None, shuffle: bool = True,
          length_buckets: batching.BucketSetting = 'auto', group_by_length: int = 32,
          export_formats: Sequence[str] = export.FINAL_FORMATS,
          prompt_per_task: bool = False, prompt_ensemble: int = 1) -> dict:
  """Prompt-tunes on a SeqIO task, evaluating every `eval_period` steps; returns a summary.

  Every input is checked before MODEL_DIR is created or changed; a kill at any moment leaves it
  consistent, and the same command resumes it (see train/model_dir.py). Batches are padded
  to their length bucket (`length_buckets`, gin LENGTH_BUCKETS; None: to TASK_FEATURE_LENGTHS);
  `group_by_length` > 1 sorts windows of that many batches by length (batching.py; 0: uniform
  random batches).

  `prompt_per_task` (gin PROMPT_PER_TASK): multi-task prompt tuning. The mixture's K tasks get
  K prompts in one table (one frozen model); each row trains its own task's prompt, batches mix
  tasks at the mixture's rates, evaluation answers each task with its prompt (per-task metrics
  and their average) and each prompt is exported on its own.

  `prompt_ensemble` N > 1 (gin PROMPT_ENSEMBLE): N prompts of one task trained together from N
  seeds (prompt n starts from fold_in(seed, n)); every batch runs once per member (N x
  BATCH_SIZE rows, member n's rows ask prompt n), so each member trains as its own run would
  on the same batches. Evaluation scores each member, their mean and the ensemble (one pass).
  """
  # Log lines of the checks wait until the run starts: bad input prints its one error line alone.
  with reporting.HeldLogs() as held:
    tasks = _import_tasks(mixture_or_task_module)
    tasks.get_task_or_mixture(mixture_or_task_name)  # unknown names fail here, with close names
    _check_settings(train_steps=train_steps, batch_size=batch_size, eval_period=eval_period,
                    save_period=save_period, keep=keep, eval_batch_size=eval_batch_size,
                    task_feature_lengths=task_feature_lengths, group_by_length=group_by_length)
    buckets = batching.resolve(length_buckets, task_feature_lengths)
    evaluation.check_methods(eval_methods)  # a typo is named even when nothing evaluates
    export.check_final_formats(export_formats)
    _adafactor_offset(adafactor_step_offset, 0)
    prompt, names = _task_prompts(prompt, mixture_or_task_name, prompt_per_task,
                                  prompt_ensemble)
    members = prompt_ensemble if prompt_ensemble > 1 else 0
    if train_steps == 0:
      print(f'TRAIN_STEPS = 0: nothing to train; {model_dir} was not touched.')
      return {'model_dir': model_dir, 'task': mixture_or_task_name, 'steps': 0}
    model_dir_lib.check_usable(model_dir)
    model_dir_lib.read_run_info(model_dir)  # a damaged run_info.json is named now, not later
    tasks.check_vocabulary(mixture_or_task_name)
    tasks.validate_task_data(mixture_or_task_name,
                             ['train'] + ([eval_split] if eval_period else []))
    vocab = tasks.get_vocabulary(mixture_or_task_name)
    trainer, base_step = build_trainer(
        model=model, prompt=prompt, initial_checkpoint_path=initial_checkpoint_path,
        learning_rate=learning_rate, optimizer=optimizer,
        adafactor_step_offset=adafactor_step_offset, loss=loss, mesh_shape=mesh_shape,
        frozen_dtype=frozen_dtype)
    if vocab.vocab_size > trainer.model_config.vocab_size:
      raise ValueError(f'The vocabulary of {mixture_or_task_name!r} has {vocab.vocab_size} ids but '
                       f'the model embeds only {trainer.model_config.vocab_size}.')

    num_hosts, host = jax.process_count(), jax.process_index()
    data_shards = trainer.mesh.shape.get('data', 1)
    for count, what in ((num_hosts, 'hosts'), (data_shards, "devices on the mesh's data axis")):
      if batch_size % count:
        raise ValueError(f'BATCH_SIZE={batch_size} does not split over {count} {what}; use a '
                         f'multiple of {count}.')

    def batches(position: int):
      from prompt_tuning.data import pipeline
      stream = pipeline.get_batches(mixture_or_task_name, 'train', task_feature_lengths,
                                    batch_size // num_hosts, shuffle=shuffle, seed=random_seed,
                                    shard_index=host, num_shards=num_hosts,
                                    start_position=position, group_window=group_by_length,
                                    prompt_per_task=names is not None)
      # Every host pads a step to the same bucket: the longest row over all of them.
      trimmed = batching.trimmed(stream, buckets,
                                 agree=partitioning.process_max if num_hosts > 1 else None)
      return _per_member(trimmed, members) if members else trimmed

    evaluator = evaluation.Evaluator(
        mixture_or_task_name, eval_split, task_feature_lengths, methods=eval_methods,
        batch_size=eval_batch_size, max_examples=eval_max_examples, decoding_config=decoding,
        output_dir=storage.join(model_dir, model_dir_lib.INFERENCE_EVAL), buckets=buckets,
        prompt_ids=None if names is None or members else {n: k for k, n in enumerate(names)}
    ) if eval_period else None
    main_metric = None
    if evaluator is not None and evaluator.main_metric:
      main_metric = f'{eval_methods[0]}/{"ensemble/" if members else ""}{evaluator.main_metric}'
    reporter = reporting.Reporter(model_dir, train_steps, main_metric=main_metric)
    best = reporting.BestPrompt(model_dir, main_metric)

    def on_eval(step: int, state) -> None:
      if members:
        metrics = _flat(evaluation.evaluate_ensemble(
            evaluator, trainer.model, trainer.full_params(state), names, step,
            tag=evaluation.TRAIN_ENSEMBLE_TAG))
      else:
        metrics = evaluator.evaluate(trainer.model, trainer.full_params(state), step)
      preemption.crash_point('mid_eval', step)
      best.update(step, metrics, trainer.prompt(state))
      reporter.eval_metrics(step, metrics)  # last: its record marks this evaluation complete

    def eval_done(step: int) -> bool:
      return partitioning.process0_flag(model_dir_lib.eval_done(model_dir, step))

    init = prompt_init(embedding_VxD=trainer.embedding(), vocab=vocab)
    periodic = [(eval_period, on_eval, eval_done)] if evaluator is not None else []
    if base_step > train_steps:
      log.warning('TRAIN_STEPS=%d counts prompt-tuning steps here; the base checkpoint is at '
                  'step %d. (The anchor T5X setup counts pretraining steps too: its '
                  'TRAIN_STEPS=%d would be %d here.)', train_steps, base_step,
                  base_step + train_steps, train_steps)
    try:
      state = loop.train(trainer, batches, model_dir, train_steps, prompt_init=init,
                         seed=random_seed, save_every=save_period or eval_period or train_steps,
                         keep=keep, initial_checkpoint=initial_checkpoint_path,
                         prompt_names=names, on_metrics=reporter.train_metrics, periodic=periodic,
                         periodic_at_start=eval_at_start,
                         before_write=lambda: (held.release(), _write_gin_config(model_dir)),
                         before_save=lambda _: reporter.flush())
    except preemption.Preempted:
      reporter.close()
      raise
    best.load()  # a restarted run's best prompt may come from before the restart
    plot_path = reporter.close()
    written = (export.export_final(model_dir, trainer.prompt(state), trainer.model_config,
                                   export_formats, prompt_names=names,
                                   deep_LxPxD=trainer.deep_prompt(state)) if host == 0 else {})
    summary = {'model_dir': model_dir, 'task': mixture_or_task_name, 'steps': train_steps,
               **({'prompt_names': names} if names is not None else {}),
               'first_eval': reporter.eval_history[0] if reporter.eval_history else None,
               'final_eval': reporter.eval_history[-1][1] if reporter.eval_history else None,
               'best': best.record, 'plot': plot_path, 'exports': written,
               'checkpoints': storage.join(model_dir, model_dir_lib.CHECKPOINTS),
               'numpy_checkpoints': storage.join(model_dir, model_dir_lib.NUMPY_CHECKPOINTS),
               'tensorboard': model_dir}
    _write_gin_config(model_dir, model_dir_lib.OPERATIVE_CONFIG_GIN)
    if host == 0:
      write_atomic(storage.join(model_dir, model_dir_lib.SUMMARY),
                   json.dumps(summary, indent=2, default=str))
      reporting.print_summary(summary)
    return summary


def _per_member(batches, members: int):
  """Each batch once per ensemble member: rows tiled N times, member n's rows with prompt n."""
  for batch in batches:
    rows = len(batch['encoder_input_tokens'])
    tiled = {k: np.concatenate([v] * members) for k, v in batch.items()}
    tiled['prompt_ids'] = np.repeat(np.arange(members, dtype=np.int32), rows)
    yield tiled


def _flat(results: dict) -> dict:
  """evaluate_ensemble's report as flat scalars: '<method>/ensemble/<metric>',
  '<method>/member_mean/<metric>', '<method>/member<n>/<metric>'."""
  flat = {}
  for key, value in results.items():
    if key == 'members':
      continue
    method, part = key.split('/', 1)
    parts = ([(f'member{n}', v) for n, v in enumerate(value)] if part == 'members'
             else [(part, value)])
    for label, metrics in parts:
      flat.update({f'{method}/{label}/{k}': v for k, v in metrics.items()})
  return flat


def _task_prompts(prompt: PromptConfig, name: str, prompt_per_task: bool,
                  prompt_ensemble: int = 1) -> tuple[PromptConfig, Optional[list[str]]]:
  """(the PromptConfig to train, the prompts' names): with PROMPT_PER_TASK a table of one prompt
  per task of the mixture, named by its tasks; with PROMPT_ENSEMBLE N > 1 a table of N members
  of one task; otherwise the config as it is (one prompt)."""
  n = prompt_ensemble
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise ValueError(f'PROMPT_ENSEMBLE = {n!r}: must be an integer >= 1 (the number of prompts '
                     f'trained together as an ensemble; 1: a single prompt).')
  if n > 1:
    if prompt_per_task:
      raise ValueError('Set PROMPT_PER_TASK (a prompt per task) or PROMPT_ENSEMBLE (N prompts of '
                       'one task), not both.')
    if prompt.shared is not None:
      raise ValueError(f'PROMPT_SHARED = {prompt.shared!r} combines a shared prompt with task '
                       f'prompts; an ensemble (PROMPT_ENSEMBLE) trains independent members.')
    if prompt.num_prompts not in (1, n):
      raise ValueError(f'PromptConfig.num_prompts = {prompt.num_prompts} but PROMPT_ENSEMBLE = '
                       f'{n}; leave num_prompts at 1 (it is set to the ensemble size).')
    return dataclasses.replace(prompt, num_prompts=n), [f'member{k}' for k in range(n)]
  if not prompt_per_task:
    if prompt.shared is not None:
      raise ValueError(f'PROMPT_SHARED = {prompt.shared!r} combines a shared prompt with each '
                       f'task prompt: it needs PROMPT_PER_TASK = True.')
    if prompt.num_prompts > 1:
      raise ValueError(f'PromptConfig.num_prompts = {prompt.num_prompts}: training a table of '
                       f'prompts needs PROMPT_PER_TASK = True (one prompt per task of a '
                       f'mixture) or PROMPT_ENSEMBLE = N; for one prompt leave num_prompts at 1.')
    return prompt, None
  from prompt_tuning.data import pipeline
  names = pipeline.prompt_names(name)
  if len(names) < 2:
    raise ValueError(f'PROMPT_PER_TASK = True trains a prompt for each task of a mixture, but '
                     f'{name!r} is a single task; name a mixture in MIXTURE_OR_TASK_NAME or set '
                     f'PROMPT_PER_TASK = False.')
  if prompt.num_prompts not in (1, len(names)):
    raise ValueError(f'PromptConfig.num_prompts = {prompt.num_prompts} but {name!r} has '
                     f'{len(names)} tasks ({names}); with PROMPT_PER_TASK leave num_prompts at '
                     f'1 (it is set to the number of tasks).')
  return dataclasses.replace(prompt, num_prompts=len(names)), names


def _check_settings(*, train_steps, batch_size, eval_period, save_period, keep, eval_batch_size,
                    task_feature_lengths, group_by_length=0) -> None:
  """Numbers of a launch, named by their gin macro when they are wrong."""
  lengths = task_feature_lengths
  if (not isinstance(lengths, dict) or not {'inputs', 'targets'} <= set(lengths) or any(
      isinstance(lengths[k], bool) or not isinstance(lengths[k], int) or lengths[k] < 1
      for k in ('inputs', 'targets'))):
    raise ValueError(f"TASK_FEATURE_LENGTHS = {lengths!r}: must be a dict with positive integer "
                     f"'inputs' and 'targets' lengths, e.g. {{'inputs': 512, 'targets': 8}}.")
  # (macro, value, smallest allowed, None allowed)
  for macro, value, low, optional in (
      ('TRAIN_STEPS', train_steps, 0, False), ('BATCH_SIZE', batch_size, 1, False),
      ('EVAL_PERIOD', eval_period, 0, True), ('SAVE_PERIOD', save_period, 1, True),
      ('KEEP_CHECKPOINTS', keep, 1, True),
      ('runs.train.eval_batch_size', eval_batch_size, 1, False),
      ('GROUP_BY_LENGTH', group_by_length, 0, False)):
    if value is None and optional:
      continue
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise ValueError(f'{macro} = {value!r}: must be an integer >= {low}.')


def evaluate(*, model_dir: Optional[str], mixture_or_task_name: str,
             task_feature_lengths: dict, initial_checkpoint_path: Optional[str],
             model: Optional[t5.T5Config] = None,
             prompt: PromptConfig = PromptConfig(),
             prompt_file: Optional[str] = None, split: str = 'validation',
             eval_methods: Sequence[evaluation.EvalMethod] = ('generate',),
             eval_max_examples: Optional[int] = None,
             eval_batch_size: int = 32, decoding: DecodingConfig = DecodingConfig(),
             output_dir: Optional[str] = None, mixture_or_task_module: Optional[str] = None,
             step: Optional[int] = None,
             length_buckets: batching.BucketSetting = 'auto',
             prompt_library: Optional[prompt_library_lib.Spec] = None,
             ensemble_prompts: Optional[prompt_library_lib.Spec] = None) -> dict:
  """Evaluates a prompt (PROMPT_FILE, or MODEL_DIR's latest/`step` checkpoint) on a task.

  `prompt_library` (PROMPT_LIBRARY; prompt_library.py): named prompts; a mixture's tasks are
  answered in mixed batches, each by the prompt named like the task. `ensemble_prompts`
  (ENSEMBLE_PROMPTS): N prompts of the task evaluated in one pass as an ensemble (each member,
  their mean and the ensemble; evaluation.evaluate_ensemble).
  """
  buckets = batching.resolve(length_buckets, task_feature_lengths)
  _import_tasks(mixture_or_task_module)
  if prompt_library is not None and ensemble_prompts is not None:
    raise ValueError('Set PROMPT_LIBRARY (a prompt per task) or ENSEMBLE_PROMPTS (N prompts of '
                     'one task), not both.')
  names = None
  if prompt_library is not None or ensemble_prompts is not None:
    model_module, params, ids, names = _library_model(
        initial_checkpoint_path, model, prompt, prompt_library or ensemble_prompts,
        mixture_or_task_name, ensemble=ensemble_prompts is not None)
    step = step or 0
  else:
    model_module, params, step, ids = _prompted_model(
        initial_checkpoint_path, model, prompt, model_dir, prompt_file, step,
        mixture_or_task_name)
  out = output_dir or storage.join(model_dir or '.', model_dir_lib.INFERENCE_EVAL)
  evaluator = evaluation.Evaluator(mixture_or_task_name, split, task_feature_lengths,
                                   methods=eval_methods, batch_size=eval_batch_size,
                                   max_examples=eval_max_examples, decoding_config=decoding,
                                   output_dir=out, buckets=buckets, prompt_ids=ids)
  if ensemble_prompts is not None:
    assert names is not None
    metrics = evaluation.evaluate_ensemble(evaluator, model_module, params, names, step)
  else:
    metrics = evaluator.evaluate(model_module, params, step, tag='eval')
  print(json.dumps({'task': mixture_or_task_name, 'split': split, 'step': step, **metrics},
                   indent=2, default=float))
  return metrics


def _find_prompt(model_dir: Optional[str], prompt_file: Optional[str],
                 step: Optional[int]) -> tuple[np.ndarray, int, Optional[list[str]]]:
  """(prompt [P, D] or a multi-task run's table [K, P, D], step, the table's names)."""
  if prompt_file:
    return prompt_files.load_prompt_file(prompt_file), step or 0, None
  if not model_dir:
    raise ValueError('Nothing to evaluate: set PROMPT_FILE or MODEL_DIR.')
  value, step = model_dir_lib.load_prompt(model_dir, step)
  return value, step, model_dir_lib.prompt_names(model_dir)


def _prompted_model(initial_checkpoint_path, model, prompt, model_dir, prompt_file, step,
                    task: Optional[str] = None):
  """(EncoderDecoder with the saved prompt's length, full params, step, prompt ids by task)
  for eval/infer. A multi-task MODEL_DIR evaluated on one of its tasks uses that task's prompt;
  on a mixture, the whole table with each task's rows given its own prompt."""
  config, frozen = checkpoints.load_base(initial_checkpoint_path, model)
  value, step, names = _find_prompt(model_dir, prompt_file, step)
  source = prompt_file or model_dir
  if value.shape[-1] != config.d_model:
    raise ValueError(f'{source}: the prompt has shape {value.shape} but the '
                     f'model width (d_model) is {config.d_model}.')
  ids = None
  if names is not None and value.ndim == 3:
    if task in names:
      value = value[names.index(task)]
    else:
      ids = {n: k for k, n in enumerate(names)}
  # A deep run's per-layer prompts come with its MODEL_DIR (a prompt file holds the input prompt).
  deep = model_dir_lib.load_deep_prompt(model_dir, step) if not prompt_file else None
  if value.ndim == 2:
    module = t5.EncoderDecoder(config, PromptConfig(value.shape[0], prompt.placement,
                                                    deep=deep is not None))
  else:
    module = t5.EncoderDecoder(config, PromptConfig(value.shape[1], prompt.placement,
                                                    value.shape[0]))
  return module, merge_params(frozen, prompt_tree(value, deep)), step, ids


def _library_model(initial_checkpoint_path, model, prompt, spec, task: str, ensemble: bool):
  """(module with the library's table, params, prompt ids by task, names) for eval."""
  from prompt_tuning.data import pipeline
  config, frozen = checkpoints.load_base(initial_checkpoint_path, model)
  library = prompt_library_lib.load_library(spec, config.d_model)
  ids = None
  if ensemble:
    if len(library) < 2:
      raise ValueError(f'ENSEMBLE_PROMPTS holds {len(library)} prompt; an ensemble needs at '
                       f'least 2.')
    names = list(library)
  else:
    tasks = pipeline.prompt_names(task)
    missing = [t for t in tasks if t not in library]
    if missing:
      raise ValueError(f'PROMPT_LIBRARY has no prompt for task(s) {missing} of {task!r}; its '
                       f'prompts are {sorted(library)}.')
    names = tasks
    ids = {n: k for k, n in enumerate(names)}
  multi = prompt_library_lib.MultiPromptModel(config, frozen, library, prompt.placement, names)
  if not multi.prompt_config.is_table:
    ids = None  # one task, one prompt
  return multi.module, multi.params, ids, names


def infer(*, model_dir: Optional[str], mixture_or_task_name: str, task_feature_lengths: dict,
          initial_checkpoint_path: Optional[str], model: Optional[t5.T5Config] = None,
          prompt: PromptConfig = PromptConfig(),
          prompt_file: Optional[str] = None, split: str = 'validation',
          max_examples: Optional[int] = None, batch_size: int = 32,
          decoding: DecodingConfig = DecodingConfig(),
          output_dir: Optional[str] = None, mixture_or_task_module: Optional[str] = None,
          step: Optional[int] = None, length_buckets: batching.BucketSetting = 'auto',
          prompt_library: Optional[prompt_library_lib.Spec] = None,
          input_file: Optional[str] = None) -> str:
  """Decodes a split with a prompt and writes predictions JSONL (no metrics).

  With PROMPT_LIBRARY (named prompts) and INFER_INPUT_FILE (JSONL rows {"prompt": name,
  "inputs": text}; "task" is accepted for "prompt"): decodes the mixed rows in shared batches,
  each with its named prompt, and writes {"prompt", "inputs", "prediction"} per row in order.
  Inputs are taken as the model's input text as is (tokenized with the task's vocabulary).
  """
  buckets = batching.resolve(length_buckets, task_feature_lengths)
  _import_tasks(mixture_or_task_module)
  if prompt_library is not None or input_file is not None:
    return _infer_mixed(
        prompt_library=prompt_library, input_file=input_file, task=mixture_or_task_name,
        task_feature_lengths=task_feature_lengths, model=model, prompt=prompt,
        initial_checkpoint_path=initial_checkpoint_path, batch_size=batch_size,
        decoding=decoding, output_dir=output_dir or storage.join(model_dir or '.',
                                                                 model_dir_lib.INFERENCE))
  model_module, params, step, ids = _prompted_model(
      initial_checkpoint_path, model, prompt, model_dir, prompt_file, step, mixture_or_task_name)
  evaluator = evaluation.Evaluator(mixture_or_task_name, split, task_feature_lengths,
                                   methods=('generate',), batch_size=batch_size,
                                   max_examples=max_examples, decoding_config=decoding,
                                   buckets=buckets, prompt_ids=ids)
  texts = evaluator.generate(model_module, params)
  out_dir = output_dir or storage.join(model_dir or '.', model_dir_lib.INFERENCE)
  path = storage.join(out_dir, f'{mixture_or_task_name}-{split}-step{step}.jsonl')
  write_atomic(path, ''.join(
      json.dumps({'input': example.get('inputs_pretokenized'), 'prediction': text}) + '\n'
      for example, text in zip(evaluator.examples, texts)))
  print(f'wrote {len(texts)} predictions to {path}')
  return path


def read_mixed_inputs(path: str) -> list[tuple[str, str]]:
  """(prompt name, input text) of each row of a mixed input file; bad rows named by line."""
  rows = []
  try:
    lines = storage.read_text(path).splitlines()
  except storage.StorageError as e:
    raise ValueError(f'INFER_INPUT_FILE {e}') from None
  except OSError as e:
    raise ValueError(f'INFER_INPUT_FILE {path}: cannot read it ({e.strerror}).') from e
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
    except ValueError:
      raise ValueError(f'{path}:{number}: not a JSON object; each line is {{"prompt": name, '
                       f'"inputs": text}}.') from None
    name = row.get('prompt', row.get('task')) if isinstance(row, dict) else None
    text = row.get('inputs') if isinstance(row, dict) else None
    if not isinstance(name, str) or not isinstance(text, str):
      raise ValueError(f'{path}:{number}: each line needs a string "prompt" (or "task") and a '
                       f'string "inputs".')
    rows.append((name, text))
  if not rows:
    raise ValueError(f'INFER_INPUT_FILE {path}: no rows.')
  return rows


def _infer_mixed(*, prompt_library, input_file, task, task_feature_lengths, model, prompt,
                 initial_checkpoint_path, batch_size, decoding, output_dir) -> str:
  if prompt_library is None or input_file is None:
    raise ValueError('Mixed-task inference needs both PROMPT_LIBRARY (the named prompts) and '
                     'INFER_INPUT_FILE (JSONL rows {"prompt": name, "inputs": text}).')
  rows = read_mixed_inputs(input_file)
  config, frozen = checkpoints.load_base(initial_checkpoint_path, model)
  library = prompt_library_lib.load_library(prompt_library, config.d_model)
  unknown = sorted({n for n, _ in rows} - set(library))
  if unknown:
    line = next(i for i, (n, _) in enumerate(rows, 1) if n == unknown[0])
    raise ValueError(f'{input_file}: row {line} asks for prompt {unknown[0]!r}, which the '
                     f'library does not have ({sorted(library)}).')
  vocab = _vocabulary(task)
  multi = prompt_library_lib.MultiPromptModel(config, frozen, library, prompt.placement)
  tokens = [list(vocab.encode(text))[:task_feature_lengths['inputs'] - 1] + [vocab.eos_id]
            for _, text in rows]
  outputs = multi.generate(tokens, [n for n, _ in rows], decoding=decoding,
                           max_decode_length=task_feature_lengths['targets'],
                           batch_size=batch_size,
                           max_input_length=task_feature_lengths['inputs'])
  path = storage.join(output_dir, os.path.splitext(storage.basename(input_file))[0] +
                      '-predictions.jsonl')
  write_atomic(path, ''.join(
      json.dumps({'prompt': n, 'inputs': text, 'prediction': vocab.decode(out)}) + '\n'
      for (n, text), out in zip(rows, outputs)))
  print(f'wrote {len(rows)} predictions ({len(set(n for n, _ in rows))} prompts, mixed '
        f'batches) to {path}')
  return path


def _vocabulary(task: Optional[str]):
  from prompt_tuning.data import tasks, vocabularies
  if task:
    return tasks.get_vocabulary(task)
  return vocabularies.t5_vocabulary()

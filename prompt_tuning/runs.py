"""Gin-configured runs (what `prompt-tuning train|eval|infer|plan|quickstart` call).

The data path: gin -> task -> batches -> PromptTrainer step -> prompt checkpoint -> evaluation.
Every argument is bound in gin files (gin/runs/*.gin) through T5X-named macros such as MODEL_DIR,
MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, TRAIN_STEPS, BATCH_SIZE, INITIAL_CHECKPOINT_PATH.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

from prompt_tuning import checkpoints, evaluation, prompts, reporting
from prompt_tuning import model_dir as model_dir_lib
from prompt_tuning.models import t5
from prompt_tuning.train import export as export_lib
from prompt_tuning.train import loop, optim, partitioning, preemption
from prompt_tuning.train.trainer import LossConfig, PromptTrainer

log = logging.getLogger('prompt_tuning')

DEFAULT_TASK_MODULE = 'prompt_tuning.data.tasks'


def _import_tasks(module: Optional[str]) -> Any:
  for name in [DEFAULT_TASK_MODULE] + ([module] if module and module != DEFAULT_TASK_MODULE
                                       else []):
    importlib.import_module(name)
  return importlib.import_module(DEFAULT_TASK_MODULE)


def _write_gin_config(model_dir: str, name: str = 'config.gin') -> None:
  import gin
  if jax.process_index() == 0:
    model_dir_lib.atomic_write(os.path.join(model_dir, name), gin.config_str())


def _adafactor_offset(setting: Any, checkpoint_step: int) -> int:
  if setting in (None, 0, 'zero'):
    return 0
  if setting == 'checkpoint':
    return checkpoint_step
  if isinstance(setting, int) and setting > 0:
    return setting
  raise ValueError(f"adafactor_step_offset must be 'zero', 'checkpoint' or a step count, "
                   f'got {setting!r}.')


def build_trainer(*, model: Optional[t5.T5Config], prompt: prompts.PromptConfig,
                  initial_checkpoint_path: Optional[str], learning_rate: Any,
                  optimizer: Callable[..., Any], adafactor_step_offset: Any = 'zero',
                  loss: LossConfig = LossConfig(), mesh_shape: Optional[Sequence[int]] = None,
                  frozen_dtype: Optional[str] = None) -> tuple[PromptTrainer, int]:
  """(trainer, base checkpoint step) from the base checkpoint and the gin-bound settings."""
  config, frozen = loop.load_base_checkpoint(initial_checkpoint_path, model)
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
          model: Optional[t5.T5Config] = None, prompt: prompts.PromptConfig = prompts.PromptConfig(),
          prompt_init: Callable[..., Any] = prompts.initializer_by_name,
          learning_rate: Any = 0.3, optimizer: Callable[..., Any] = optim.make_optimizer,
          adafactor_step_offset: Any = 'zero', loss: LossConfig = LossConfig(),
          eval_period: int = 1000, eval_split: str = 'validation',
          eval_methods: Sequence[str] = ('generate',), eval_max_examples: Optional[int] = None,
          eval_batch_size: int = 32, decoding: evaluation.Decoding = evaluation.Decoding(),
          eval_at_start: bool = True,
          save_period: Optional[int] = None, keep: int = 1, random_seed: int = 0,
          mesh_shape: Optional[Sequence[int]] = None, frozen_dtype: Optional[str] = None,
          mixture_or_task_module: Optional[str] = None, shuffle: bool = True,
          export_formats: Sequence[str] = ('npy', 'peft')) -> dict:
  """Prompt-tunes on a SeqIO task, evaluating every `eval_period` steps; returns a summary.

  Every input is checked before MODEL_DIR is created or changed; a kill at any moment leaves it
  consistent, and the same command resumes it (see prompt_tuning.model_dir).
  """
  # Log lines of the checks wait until the run starts: bad input prints its one error line alone.
  with reporting.HeldLogs() as held:
    tasks = _import_tasks(mixture_or_task_module)
    tasks.get_task_or_mixture(mixture_or_task_name)  # unknown names fail here, with close names
    _check_settings(train_steps=train_steps, batch_size=batch_size, eval_period=eval_period,
                    save_period=save_period, keep=keep, eval_batch_size=eval_batch_size,
                    task_feature_lengths=task_feature_lengths)
    evaluation.check_methods(eval_methods)  # a typo is named even when nothing evaluates
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
      return pipeline.get_batches(mixture_or_task_name, 'train', task_feature_lengths,
                                  batch_size // num_hosts, shuffle=shuffle, seed=random_seed,
                                  shard_index=host, num_shards=num_hosts,
                                  start_position=position)

    evaluator = evaluation.Evaluator(
        mixture_or_task_name, eval_split, task_feature_lengths, methods=eval_methods,
        batch_size=eval_batch_size, max_examples=eval_max_examples, decoding_config=decoding,
        output_dir=os.path.join(model_dir, model_dir_lib.INFERENCE_EVAL)) if eval_period else None
    main_metric = None
    if evaluator is not None and evaluator.main_metric:
      main_metric = f'{eval_methods[0]}/{evaluator.main_metric}'
    reporter = reporting.Reporter(model_dir, train_steps, main_metric=main_metric)
    best = _BestTracker(model_dir, main_metric)

    def on_eval(step: int, state) -> None:
      params = prompts.merge_params(trainer.frozen, state.params)
      metrics = evaluator.evaluate(trainer.model, params, step)
      preemption.crash_point('mid_eval', step)
      best.update(step, metrics, prompts.get_prompt(state.params))
      reporter.eval_metrics(step, metrics)  # last: its record marks this evaluation complete

    def eval_done(step: int) -> bool:
      return _agreed(model_dir_lib.eval_done(model_dir, step))

    embedding = np.asarray(jax.device_get(trainer.frozen['token_embedder']['embedding']))
    init = prompt_init(embedding_VxD=embedding, vocab=vocab)
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
                         on_metrics=reporter.train_metrics, periodic=periodic,
                         periodic_at_start=eval_at_start,
                         before_write=lambda: (held.release(), _write_gin_config(model_dir)),
                         on_save=lambda _: reporter.flush())
    except preemption.Preempted:
      reporter.close()
      raise
    best.load()  # a restarted run's best prompt may come from before the restart
    plot_path = reporter.close()
    prompt_value = np.asarray(jax.device_get(prompts.get_prompt(state.params)))
    written = _export_final(model_dir, prompt_value, trainer, export_formats)
    summary = {'model_dir': model_dir, 'task': mixture_or_task_name, 'steps': train_steps,
               'first_eval': reporter.eval_history[0] if reporter.eval_history else None,
               'final_eval': reporter.eval_history[-1][1] if reporter.eval_history else None,
               'best': best.record, 'plot': plot_path, 'exports': written,
               'checkpoints': os.path.join(model_dir, 'checkpoints'),
               'numpy_checkpoints': os.path.join(model_dir, 'numpy_checkpoints'),
               'tensorboard': model_dir}
    _write_gin_config(model_dir, 'operative_config.gin')
    if host == 0:
      model_dir_lib.atomic_write(os.path.join(model_dir, 'summary.json'),
                                 json.dumps(summary, indent=2, default=str))
      print_summary(summary)
    return summary


def _check_settings(*, train_steps, batch_size, eval_period, save_period, keep, eval_batch_size,
                    task_feature_lengths) -> None:
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
      ('runs.train.eval_batch_size', eval_batch_size, 1, False)):
    if value is None and optional:
      continue
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise ValueError(f'{macro} = {value!r}: must be an integer >= {low}.')


def _agreed(flag: bool) -> bool:
  """Process 0's answer on every process (hosts must run the same evaluations)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag, np.int32)))


def _export_final(model_dir, prompt_value, trainer, formats) -> dict:
  if jax.process_index() != 0:
    return {}
  out = {}
  export_dir = os.path.join(model_dir, 'export')
  if 'npy' in formats:
    out['npy'] = export_lib.export_numpy(os.path.join(export_dir, 'prompt.npy'), prompt_value)
  if 'peft' in formats:
    out['peft'] = export_lib.export_peft(os.path.join(export_dir, 'peft'), prompt_value,
                                         trainer.model_config)
  return out


class _BestTracker:
  """Keeps the prompt with the best main eval metric at MODEL_DIR/best/."""

  def __init__(self, model_dir: str, metric: Optional[str]):
    self.dir = os.path.join(model_dir, 'best')
    self.metric = metric
    self.record: Optional[dict] = None
    self.load()

  def load(self) -> None:
    path = os.path.join(self.dir, 'metrics.json')
    if self.metric and os.path.exists(path):
      with open(path) as f:
        self.record = json.load(f)

  def update(self, step: int, metrics: dict, prompt_value) -> None:
    if not self.metric or self.metric not in metrics or jax.process_index() != 0:
      return
    self.load()  # what a previous process of this run saved counts too
    value = float(metrics[self.metric])
    if self.record is not None and value <= self.record['value']:
      return
    record = {'step': step, 'metric': self.metric, 'value': value, 'metrics': metrics}
    # The prompt first: a kill between the two writes leaves a metric that a rerun beats again.
    export_lib.export_numpy(os.path.join(self.dir, model_dir_lib.NUMPY_NAME),
                            np.asarray(jax.device_get(prompt_value)))
    model_dir_lib.atomic_write(os.path.join(self.dir, 'metrics.json'),
                               json.dumps(record, indent=2, default=float))
    self.record = record


def print_summary(summary: dict) -> None:
  lines = [f"Prompt tuning of {summary['task']} finished ({summary['steps']} steps)."]
  if summary.get('final_eval'):
    lines.append('  final eval: ' + ', '.join(
        f'{k} {v:.4f}' if isinstance(v, float) else f'{k} {v}'
        for k, v in summary['final_eval'].items()))
  if summary.get('best'):
    b = summary['best']
    lines.append(f"  best {b['metric']} {b['value']:.4f} at step {b['step']}: "
                 f"{os.path.join(summary['model_dir'], 'best')}")
  lines.append(f"  prompt checkpoints (orbax): {summary['checkpoints']}")
  lines.append(f"  numpy prompts:              {summary['numpy_checkpoints']}")
  for fmt, path in summary.get('exports', {}).items():
    lines.append(f'  export ({fmt}):{" " * (15 - len(fmt))}{path}')
  if summary.get('plot'):
    lines.append(f"  plot:                       {summary['plot']}")
  lines.append(f"  TensorBoard:                tensorboard --logdir {summary['tensorboard']}")
  print('\n'.join(lines))


def evaluate(*, model_dir: Optional[str], mixture_or_task_name: str,
             task_feature_lengths: dict, initial_checkpoint_path: Optional[str],
             model: Optional[t5.T5Config] = None,
             prompt: prompts.PromptConfig = prompts.PromptConfig(),
             prompt_file: Optional[str] = None, split: str = 'validation',
             eval_methods: Sequence[str] = ('generate',), eval_max_examples: Optional[int] = None,
             eval_batch_size: int = 32, decoding: evaluation.Decoding = evaluation.Decoding(),
             output_dir: Optional[str] = None, mixture_or_task_module: Optional[str] = None,
             step: Optional[int] = None) -> dict:
  """Evaluates a prompt (PROMPT_FILE, or MODEL_DIR's latest/`step` checkpoint) on a task."""
  _import_tasks(mixture_or_task_module)
  model_module, params, step = _prompted_model(initial_checkpoint_path, model, prompt,
                                               model_dir, prompt_file, step)
  out = output_dir or os.path.join(model_dir or '.', 'inference_eval')
  evaluator = evaluation.Evaluator(mixture_or_task_name, split, task_feature_lengths,
                                   methods=eval_methods, batch_size=eval_batch_size,
                                   max_examples=eval_max_examples, decoding_config=decoding,
                                   output_dir=out)
  metrics = evaluator.evaluate(model_module, params, step, tag='eval')
  print(json.dumps({'task': mixture_or_task_name, 'split': split, 'step': step, **metrics},
                   indent=2, default=float))
  return metrics


def _find_prompt(model_dir: Optional[str], prompt_file: Optional[str],
                 step: Optional[int]) -> tuple[np.ndarray, int]:
  if prompt_file:
    return prompts.load_prompt_file(prompt_file), step or 0
  if not model_dir:
    raise ValueError('Nothing to evaluate: set PROMPT_FILE or MODEL_DIR.')
  return model_dir_lib.load_prompt(model_dir, step)


def _prompted_model(initial_checkpoint_path, model, prompt, model_dir, prompt_file, step):
  """(EncoderDecoder with the saved prompt's length, full params, step) for eval/infer."""
  config, frozen = loop.load_base_checkpoint(initial_checkpoint_path, model)
  value, step = _find_prompt(model_dir, prompt_file, step)
  if value.shape[1] != config.d_model:
    raise ValueError(f'{prompt_file or model_dir}: the prompt has shape {value.shape} but the '
                     f'model width (d_model) is {config.d_model}.')
  module = t5.EncoderDecoder(config, prompts.PromptConfig(value.shape[0], prompt.placement))
  return module, prompts.merge_params(frozen, prompts.prompt_tree(value)), step


def infer(*, model_dir: Optional[str], mixture_or_task_name: str, task_feature_lengths: dict,
          initial_checkpoint_path: Optional[str], model: Optional[t5.T5Config] = None,
          prompt: prompts.PromptConfig = prompts.PromptConfig(),
          prompt_file: Optional[str] = None, split: str = 'validation',
          max_examples: Optional[int] = None, batch_size: int = 32,
          decoding: evaluation.Decoding = evaluation.Decoding(),
          output_dir: Optional[str] = None, mixture_or_task_module: Optional[str] = None,
          step: Optional[int] = None) -> str:
  """Decodes a split with a prompt and writes predictions JSONL (no metrics)."""
  _import_tasks(mixture_or_task_module)
  model_module, params, step = _prompted_model(initial_checkpoint_path, model, prompt,
                                               model_dir, prompt_file, step)
  evaluator = evaluation.Evaluator(mixture_or_task_name, split, task_feature_lengths,
                                   methods=('generate',), batch_size=batch_size,
                                   max_examples=max_examples, decoding_config=decoding)
  texts = evaluator.generate(model_module, params)
  out_dir = output_dir or os.path.join(model_dir or '.', 'inference')
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f'{mixture_or_task_name}-{split}-step{step}.jsonl')
  with open(path, 'w') as f:
    for example, text in zip(evaluator.examples, texts):
      f.write(json.dumps({'input': example.get('inputs_pretokenized'), 'prediction': text})
              + '\n')
  print(f'wrote {len(texts)} predictions to {path}')
  return path


def export(model_dir: str, fmt: str, output: str, step: Optional[int] = None) -> str:
  """`prompt-tuning export`: a MODEL_DIR's prompt as .npy, a PEFT adapter or a full T5X ckpt."""
  prompt_value, step = _find_prompt(model_dir, None, step)
  if fmt == 'npy':
    return export_lib.export_numpy(output, prompt_value)
  info = model_dir_lib.read_run_info(model_dir)
  if info is None or 'model_config' not in info:
    raise model_dir_lib.ModelDirError(f'{model_dir}: no {model_dir_lib.RUN_INFO} with the model '
                                      f'config; export --format=npy needs none.')
  base = info.get('initial_checkpoint')
  if fmt == 'peft':
    config = t5.T5Config(**info['model_config'])
    return export_lib.export_peft(output, prompt_value, config, base_model_name_or_path=base)
  if fmt == 't5x':
    _, frozen = loop.load_base_checkpoint(base)
    return export_lib.export_t5x(output, frozen, prompt_value, step)
  raise ValueError(f"Unknown export format {fmt!r}; choose 'npy', 'peft' or 't5x'.")


def convert(source: str, output: str, to: str) -> str:
  """`prompt-tuning convert`: T5X <-> Hugging Face safetensors."""
  config, params = checkpoints.load_params(source)
  if to == 'hf':
    return checkpoints.save_hf(output, config, params)
  if to == 't5x':
    return checkpoints.save_t5x(output, params, checkpoints.read_step(source))
  raise ValueError(f"Unknown target format {to!r}; choose 't5x' or 'hf'.")


def plan(*, model: t5.T5Config, prompt: prompts.PromptConfig, batch_size: int,
         task_feature_lengths: dict, mesh_shape: Optional[Sequence[int]] = None,
         frozen_dtype: Optional[str] = None,
         remat_policies: Sequence[str] = ('none', 'dots', 'full'),
         device_memory_gib: Optional[float] = None) -> list[dict]:
  """`prompt-tuning plan`: per-device memory of the compiled train step, before renting hardware.

  Lowers and compiles the step ahead of time from shapes alone (nothing is allocated) for each
  rematerialisation policy, on this machine's backend: on a GPU the numbers are that GPU's; on a
  CPU they are XLA:CPU's buffer assignment, a close guide for arguments/outputs and a rougher one
  for temporaries (the CLI asks XLA:CPU for its memory-optimised schedule first, without which
  remat would not show in them at all).
  """
  import time
  mesh = partitioning.make_mesh(mesh_shape)
  batch = {'encoder_input_tokens': (batch_size, task_feature_lengths['inputs']),
           'decoder_input_tokens': (batch_size, task_feature_lengths['targets']),
           'decoder_target_tokens': (batch_size, task_feature_lengths['targets'])}
  limit = device_memory_gib * 2**30 if device_memory_gib else _device_bytes_limit()
  rows = []
  for policy in remat_policies:
    config = model.replace(remat_policy=policy)
    shapes = t5.param_shapes(config)
    trainer = PromptTrainer(config, prompt, shapes, optim.make_optimizer(), mesh=mesh,
                            frozen_dtype=frozen_dtype)
    start = time.time()
    compiled = trainer.lower_train_step(batch).compile()
    seconds = time.time() - start
    memory = compiled.memory_analysis()
    args, out = memory.argument_size_in_bytes, memory.output_size_in_bytes
    temp, alias = memory.temp_size_in_bytes, memory.alias_size_in_bytes
    total = args + out + temp - alias
    rows.append({'remat_policy': policy, 'arguments_bytes': args, 'outputs_bytes': out,
                 'temporaries_bytes': temp, 'aliased_bytes': alias, 'total_bytes': total,
                 'compile_seconds': round(seconds, 1),
                 'fits': None if limit is None else total <= limit})
  _print_plan(model, prompt, batch_size, task_feature_lengths, mesh, frozen_dtype, rows, limit)
  return rows


def _device_bytes_limit() -> Optional[int]:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get('bytes_limit')


def _print_plan(model, prompt, batch_size, lengths, mesh, frozen_dtype, rows, limit) -> None:
  gib = lambda b: f'{b / 2**30:8.2f}'
  print(f'Train-step memory per device: T5 1.1 d_model={model.d_model} '
        f'({t5.count_params(model) / 1e9:.2f}B params, frozen {frozen_dtype or model.param_dtype}),'
        f' prompt {prompt.length}, batch {batch_size}, inputs {lengths["inputs"]} + prompt, '
        f'targets {lengths["targets"]}, mesh {dict(mesh.shape)}, backend '
        f'{jax.devices()[0].platform} ({jax.devices()[0].device_kind}).')
  print(f'  {"remat":6} {"args GiB":>8} {"outs GiB":>8} {"temp GiB":>8} {"total GiB":>9}  '
        f'{"compile s":>9}  fits')
  for r in rows:
    fits = '?' if r['fits'] is None else ('yes' if r['fits'] else 'NO')
    print(f'  {r["remat_policy"]:6} {gib(r["arguments_bytes"])} {gib(r["outputs_bytes"])} '
          f'{gib(r["temporaries_bytes"])} {gib(r["total_bytes"])}   {r["compile_seconds"]:9.1f}  '
          f'{fits}')
  if limit:
    print(f'  device memory: {limit / 2**30:.1f} GiB')

"""The gin-configured entry points `prompt-tuning train|eval|infer` call (plan: train/plan.py;
the quickstart: quickstart.py; export and convert take flags: export.py, checkpoints.convert).

The data path: gin -> task -> batches -> PromptTrainer step -> prompt checkpoint -> evaluation.
Every argument is bound in gin files (gin/runs/*.gin) through T5X-named macros such as MODEL_DIR,
MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, TRAIN_STEPS, BATCH_SIZE, INITIAL_CHECKPOINT_PATH.
"""

from __future__ import annotations

import importlib
import json
import logging
from typing import Any, Callable, Optional, Sequence

import jax

from prompt_tuning import causal_runs, storage
from prompt_tuning.data import batching
from prompt_tuning.inference import evaluation, mixed
from prompt_tuning.inference.decoding import DecodingConfig
from prompt_tuning.inference.runner import PromptedModel, load_frozen
from prompt_tuning.models import t5
from prompt_tuning.models.decoder_model import DecoderModel
from prompt_tuning.models.prompt import PromptConfig
from prompt_tuning.prompts import export
from prompt_tuning.prompts import init as prompt_init
from prompt_tuning.prompts import library as library_lib
from prompt_tuning.storage import write_atomic
from prompt_tuning.train import loop, optim, partitioning, preemption, reporting, settings
from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning.train.plan import plan  # noqa: F401  (gin files written before name runs.plan)
from prompt_tuning.train.settings import AdafactorStepOffset
from prompt_tuning.train.model_tuning import ModelTrainer
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
          prompt_per_task: bool = False, prompt_ensemble: int = 1,
          sentinel_targets: bool = False, trainable: str = settings.PROMPT) -> dict:
  """Prompt-tunes (or model-tunes) on a SeqIO task, evaluating every `eval_period` steps;
  returns a summary.

  Every input is checked before MODEL_DIR is created or changed; a kill at any moment leaves it
  consistent, and the same command resumes it (see train/model_dir.py). Batches are padded
  to their length bucket (`length_buckets`, gin LENGTH_BUCKETS; None: to TASK_FEATURE_LENGTHS);
  `group_by_length` > 1 sorts windows of that many batches by length (batching.py; 0: uniform
  random batches). The `eval_*` settings are eval's `split`, `methods`, `max_examples` and
  `batch_size`, for the evaluations during training.

  `prompt_per_task` (gin PROMPT_PER_TASK): multi-task prompt tuning. The mixture's K tasks get
  K prompts in one table (one frozen model); each row trains its own task's prompt, batches mix
  tasks at the mixture's rates, evaluation answers each task with its prompt (per-task metrics
  and their average) and each prompt is exported on its own.

  `prompt_ensemble` N > 1 (gin PROMPT_ENSEMBLE): N prompts of one task trained together from N
  seeds (prompt n starts from fold_in(seed, n)); every batch runs once per member (N x
  BATCH_SIZE rows, member n's rows ask prompt n), so each member trains as its own run would
  on the same batches. Evaluation scores each member, their mean and the ensemble (one pass).

  `sentinel_targets` (gin/runs/sentinel_targets.gin): trains and evaluates the task's
  `<name>_sentinel` variant, whose targets start with `<extra_id_0>` (data/sentinel.py).

  `trainable` (gin TRAINABLE; runs/model_tuning.gin): 'prompt' (prompt tuning); 'all' or a
  parameter subtree ('decoder', 'encoder/layers_0', ...) model-tunes those weights instead, with
  no prompt (train/model_tuning.py); a mixture then trains one multi-task model.
  """
  # Log lines of the checks wait until the run starts: bad input prints its one error line alone.
  with reporting.HeldLogs() as held:
    if isinstance(model, DecoderModel):
      raise ValueError(f'MODEL is a decoder-only model ({model.gin_file}); train it with '
                       f'--gin_file=runs/causal_lm_prompt_tuning.gin.')
    tasks = _import_tasks(mixture_or_task_module)
    tasks.get_task_or_mixture(mixture_or_task_name)  # unknown names fail here, with close names
    if sentinel_targets:
      mixture_or_task_name = tasks.sentinel_task(mixture_or_task_name)
    settings.check_settings(
        train_steps=train_steps, batch_size=batch_size, eval_period=eval_period,
        save_period=save_period, keep=keep, eval_batch_size=eval_batch_size,
        task_feature_lengths=task_feature_lengths, group_by_length=group_by_length)
    buckets = batching.resolve(length_buckets, task_feature_lengths)
    evaluation.check_methods(eval_methods)  # a typo is named even when nothing evaluates
    export.check_final_formats(export_formats)
    settings.adafactor_offset(adafactor_step_offset, 0)
    settings.check_model_tuning(trainable, prompt_per_task, prompt_ensemble)
    model_tuning = trainable != settings.PROMPT
    prompt, names = settings.task_prompts(prompt, mixture_or_task_name, prompt_per_task,
                                          prompt_ensemble)
    members = prompt_ensemble if prompt_ensemble > 1 else 0
    if train_steps == 0:
      print(f'TRAIN_STEPS = 0: nothing to train; {model_dir} was not touched.')
      return {'model_dir': model_dir, 'task': mixture_or_task_name, 'steps': 0}
    tasks.check_vocabulary(mixture_or_task_name)
    tasks.validate_task_data(mixture_or_task_name,
                             ['train'] + ([eval_split] if eval_period else []))
    vocab = tasks.get_vocabulary(mixture_or_task_name)
    trainer, base_step = settings.build_trainer(
        model=model, prompt=prompt, initial_checkpoint_path=initial_checkpoint_path,
        learning_rate=learning_rate, optimizer=optimizer,
        adafactor_step_offset=adafactor_step_offset, loss=loss, mesh_shape=mesh_shape,
        frozen_dtype=frozen_dtype, trainable=trainable)
    _check_fits(trainer, vocab.vocab_size, mixture_or_task_name, batch_size)
    batches = _train_batches(mixture_or_task_name, task_feature_lengths, batch_size, buckets,
                             shuffle=shuffle, seed=random_seed, group_by_length=group_by_length,
                             per_task=names is not None, members=members)
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
    periodic = [] if evaluator is None else [
        (eval_period, _eval_hook(evaluator, trainer, reporter, best, names if members else None),
         lambda step: partitioning.process0_flag(model_dir_lib.eval_done(model_dir, step)))]
    _note_step_count(train_steps, base_step)
    try:
      state = loop.train(trainer, batches, model_dir, train_steps,
                         prompt_init=None if model_tuning else prompt_init(
                             embedding_VxD=trainer.embedding(), vocab=vocab),
                         seed=random_seed, save_every=save_period or eval_period or train_steps,
                         keep=keep, initial_checkpoint=initial_checkpoint_path,
                         prompt_names=names, on_metrics=reporter.train_metrics, periodic=periodic,
                         periodic_at_start=eval_at_start,
                         before_write=lambda: _start_writing(held, model_dir),
                         before_save=lambda _: reporter.flush())
    except preemption.Preempted:
      reporter.close()
      raise
    return _finish(model_dir, mixture_or_task_name, train_steps, trainer, state, reporter, best,
                   names, export_formats)


def _start_writing(held: reporting.HeldLogs, model_dir: str) -> None:
  """Just before the run first writes: the held log lines, then config.gin."""
  held.release()
  _write_gin_config(model_dir)


def _check_fits(trainer: PromptTrainer, vocab_size: int, task: str, batch_size: int) -> None:
  """The task's vocabulary fits the model's embedding; the batch splits over hosts and the
  mesh's data axis."""
  if vocab_size > trainer.model_config.vocab_size:
    raise ValueError(f'The vocabulary of {task!r} has {vocab_size} ids but the model embeds '
                     f'only {trainer.model_config.vocab_size}.')
  for count, what in ((jax.process_count(), 'hosts'),
                      (trainer.mesh.shape.get('data', 1), "devices on the mesh's data axis")):
    if batch_size % count:
      raise ValueError(f'BATCH_SIZE={batch_size} does not split over {count} {what}; use a '
                       f'multiple of {count}.')


def _train_batches(task: str, lengths: dict, batch_size: int, buckets, *, shuffle: bool,
                   seed: int, group_by_length: int, per_task: bool,
                   members: int) -> Callable[[int], Any]:
  """This host's training batches from a data position (the loop resumes from one)."""
  num_hosts, host = jax.process_count(), jax.process_index()

  def batches(position: int):
    from prompt_tuning.data import pipeline
    stream = pipeline.get_batches(task, 'train', lengths, batch_size // num_hosts,
                                  shuffle=shuffle, seed=seed, shard_index=host,
                                  num_shards=num_hosts, start_position=position,
                                  group_window=group_by_length, prompt_per_task=per_task)
    # Every host pads a step to the same bucket: the longest row over all of them.
    trimmed = batching.trimmed(stream, buckets,
                               agree=partitioning.process_max if num_hosts > 1 else None)
    return settings.per_member(trimmed, members) if members else trimmed
  return batches


def _eval_hook(evaluator: evaluation.Evaluator, trainer: PromptTrainer,
               reporter: reporting.Reporter, best: reporting.BestPrompt,
               members: Optional[list[str]]) -> Callable[[int, Any], None]:
  """The evaluation a training run makes every EVAL_PERIOD steps (an ensemble's: of each member,
  their mean and the ensemble)."""
  def on_eval(step: int, state) -> None:
    model = PromptedModel.of(trainer.model, trainer.full_params(state))
    if members:
      metrics = evaluation.flat_ensemble_report(evaluator.evaluate_ensemble(
          model, members, step, tag=evaluation.TRAIN_ENSEMBLE_TAG))
    else:
      metrics = evaluator.evaluate(model, step)
    preemption.crash_point('mid_eval', step)
    best.update(step, metrics, None if isinstance(trainer, ModelTrainer) else trainer.prompt(state))
    reporter.eval_metrics(step, metrics)  # last: its record marks this evaluation complete
  return on_eval


def _note_step_count(train_steps: int, base_step: int) -> None:
  if base_step > train_steps:
    log.warning('TRAIN_STEPS=%d counts prompt-tuning steps here; the base checkpoint is at '
                'step %d. (The anchor T5X setup counts pretraining steps too: its '
                'TRAIN_STEPS=%d would be %d here.)', train_steps, base_step,
                base_step + train_steps, train_steps)


def _finish(model_dir: str, task: str, train_steps: int, trainer: PromptTrainer, state,
            reporter: reporting.Reporter, best: reporting.BestPrompt,
            names: Optional[list[str]], export_formats: Sequence[str]) -> dict:
  """The run's exports, summary.json and printed summary, once its last step is committed."""
  host = jax.process_index()
  best.load()  # a restarted run's best prompt may come from before the restart
  plot_path = reporter.close()
  if isinstance(trainer, ModelTrainer):  # its weights: the T5X checkpoint of the last step
    written = {'t5x': model_dir_lib.model_checkpoint_path(model_dir, train_steps)}
  else:
    written = (export.export_final(model_dir, trainer.prompt(state), trainer.model_config,
                                   export_formats, prompt_names=names,
                                   deep_LxPxD=trainer.deep_prompt(state)) if host == 0 else {})
  summary = {'model_dir': model_dir, 'task': task, 'steps': train_steps,
             **({'tuning': 'model'} if isinstance(trainer, ModelTrainer) else {}),
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


def evaluate(*, model_dir: Optional[str], mixture_or_task_name: str,
             task_feature_lengths: dict, initial_checkpoint_path: Optional[str],
             model: Optional[t5.T5Config] = None,
             prompt: PromptConfig = PromptConfig(),
             prompt_file: Optional[str] = None, split: str = 'validation',
             methods: Sequence[evaluation.EvalMethod] = ('generate',),
             max_examples: Optional[int] = None,
             batch_size: int = 32, decoding: DecodingConfig = DecodingConfig(),
             output_dir: Optional[str] = None, mixture_or_task_module: Optional[str] = None,
             step: Optional[int] = None,
             length_buckets: batching.BucketSetting = 'auto',
             prompt_library: Optional[library_lib.Spec] = None,
             ensemble_prompts: Optional[library_lib.Spec] = None,
             frozen_dtype: Optional[str] = None, sentinel_targets: bool = False) -> dict:
  """Evaluates a prompt (PROMPT_FILE, or MODEL_DIR's latest/`step` checkpoint) on a task.

  `prompt_library` (PROMPT_LIBRARY; prompts/library.py): named prompts; a mixture's tasks are
  answered in mixed batches, each by the prompt named like the task. `ensemble_prompts`
  (ENSEMBLE_PROMPTS): N prompts of the task evaluated in one pass as an ensemble (each member,
  their mean and the ensemble; Evaluator.evaluate_ensemble). `sentinel_targets`: as train's.
  With MODEL a DecoderModel (gin/models/llama.gin, ...) the decoder-only model of
  INITIAL_CHECKPOINT_PATH (an HF folder) runs the same evaluation (causal_runs.py).
  """
  buckets = batching.resolve(length_buckets, task_feature_lengths)
  tasks = _import_tasks(mixture_or_task_module)
  if prompt_library is not None and ensemble_prompts is not None:
    raise ValueError('Set PROMPT_LIBRARY (a prompt per task) or ENSEMBLE_PROMPTS (N prompts of '
                     'one task), not both.')
  out = output_dir or storage.join(model_dir or '.', model_dir_lib.INFERENCE_EVAL)
  runner: Any
  evaluator: evaluation.EvaluatorBase
  if causal_runs.is_decoder_only(model, model_dir, sentinel_targets):
    runner, step, evaluator = causal_runs.eval_setup(
        model=model, model_dir=model_dir, task=mixture_or_task_name,
        task_feature_lengths=task_feature_lengths,
        initial_checkpoint_path=initial_checkpoint_path, prompt=prompt, prompt_file=prompt_file,
        split=split, methods=methods, max_examples=max_examples, batch_size=batch_size,
        decoding=decoding, output_dir=out, step=step, length_buckets=length_buckets,
        prompt_library=prompt_library, ensemble_prompts=ensemble_prompts,
        frozen_dtype=frozen_dtype)
    return _evaluated(evaluator, runner, step, split, ensemble_prompts is not None)
  if sentinel_targets:
    mixture_or_task_name = tasks.sentinel_task(mixture_or_task_name)
  if prompt_library is not None or ensemble_prompts is not None:
    runner, ids = _library_model(initial_checkpoint_path, model, prompt, frozen_dtype,
                                 prompt_library or ensemble_prompts, mixture_or_task_name,
                                 ensemble=ensemble_prompts is not None)
    step = step or 0
  else:
    runner, step, ids = PromptedModel.from_run(
        initial_checkpoint_path, model, placement=prompt.placement, model_dir=model_dir,
        prompt_file=prompt_file, step=step, task=mixture_or_task_name, frozen_dtype=frozen_dtype)
  evaluator = evaluation.Evaluator(mixture_or_task_name, split, task_feature_lengths,
                                   methods=methods, batch_size=batch_size,
                                   max_examples=max_examples, decoding_config=decoding,
                                   output_dir=out, buckets=buckets, prompt_ids=ids)
  return _evaluated(evaluator, runner, step, split, ensemble_prompts is not None)


def _evaluated(evaluator: evaluation.EvaluatorBase, runner: Any, step: int, split: str,
               ensemble: bool) -> dict:
  """eval's metrics (an ensemble's: members, mean, ensemble), printed and returned."""
  if ensemble:
    assert runner.names is not None
    metrics = evaluator.evaluate_ensemble(runner, runner.names, step)
  else:
    metrics = evaluator.evaluate(runner, step, tag=model_dir_lib.COMMAND_TAG)
  print(json.dumps({'task': evaluator.task_name, 'split': split, 'step': step, **metrics},
                   indent=2, default=float))
  return metrics


def _library_model(initial_checkpoint_path, model, prompt, frozen_dtype, spec, task: str,
                   ensemble: bool) -> tuple[PromptedModel, Optional[dict[str, int]]]:
  """(the library's prompts as one model, prompt ids by task) for eval: an ensemble's members,
  or the prompt of each task of `task` (named like the task)."""
  from prompt_tuning.data import pipeline
  config, frozen = load_frozen(initial_checkpoint_path, model, frozen_dtype)
  library = library_lib.load_library(spec, config.d_model)
  names = library_lib.run_names(library, task, pipeline.prompt_names(task), ensemble)
  if names is None:
    return PromptedModel.with_library(config, frozen, library, placement=prompt.placement), None
  runner = PromptedModel.with_library(config, frozen, library, placement=prompt.placement,
                                      names=names)
  # One task, one prompt: no ids.
  return runner, ({n: k for k, n in enumerate(names)} if runner.is_table else None)


def infer(*, model_dir: Optional[str], mixture_or_task_name: str, task_feature_lengths: dict,
          initial_checkpoint_path: Optional[str], model: Optional[t5.T5Config] = None,
          prompt: PromptConfig = PromptConfig(),
          prompt_file: Optional[str] = None, split: str = 'validation',
          max_examples: Optional[int] = None, batch_size: int = 32,
          decoding: DecodingConfig = DecodingConfig(),
          output_dir: Optional[str] = None, mixture_or_task_module: Optional[str] = None,
          step: Optional[int] = None, length_buckets: batching.BucketSetting = 'auto',
          prompt_library: Optional[library_lib.Spec] = None,
          input_file: Optional[str] = None, frozen_dtype: Optional[str] = None) -> str:
  """Decodes a split with a prompt and writes predictions JSONL (no metrics).

  With PROMPT_LIBRARY (named prompts) and INFER_INPUT_FILE (JSONL rows {"prompt": name,
  "inputs": text}; "task" is accepted for "prompt"): decodes the mixed rows in shared batches,
  each with its named prompt, and writes {"prompt", "inputs", "prediction"} per row in order.
  Inputs are taken as the model's input text as is (tokenized with the task's vocabulary).
  With MODEL a DecoderModel: the same for a decoder-only model (causal_runs.py).
  """
  buckets = batching.resolve(length_buckets, task_feature_lengths)
  _import_tasks(mixture_or_task_module)
  out_dir = output_dir or storage.join(model_dir or '.', model_dir_lib.INFERENCE)
  runner: Any
  evaluator: evaluation.EvaluatorBase
  if causal_runs.is_decoder_only(model, model_dir):
    if prompt_library is not None or input_file is not None:
      return causal_runs.infer_mixed(
          model=model, prompt_library=prompt_library, input_file=input_file,
          task_feature_lengths=task_feature_lengths, prompt=prompt,
          initial_checkpoint_path=initial_checkpoint_path, batch_size=batch_size,
          decoding=decoding, output_dir=out_dir, frozen_dtype=frozen_dtype)
    runner, step, evaluator = causal_runs.eval_setup(
        model=model, model_dir=model_dir, task=mixture_or_task_name,
        task_feature_lengths=task_feature_lengths,
        initial_checkpoint_path=initial_checkpoint_path, prompt=prompt, prompt_file=prompt_file,
        split=split, methods=('generate',), max_examples=max_examples, batch_size=batch_size,
        decoding=decoding, output_dir=None, step=step, length_buckets=length_buckets,
        prompt_library=None, ensemble_prompts=None, frozen_dtype=frozen_dtype)
    return evaluation.write_inference(out_dir, mixture_or_task_name, split, step,
                                      evaluator.examples, evaluator.generate(runner))
  if prompt_library is not None or input_file is not None:
    return mixed.infer_mixed(
        prompt_library=prompt_library, input_file=input_file, task=mixture_or_task_name,
        task_feature_lengths=task_feature_lengths, model=model, prompt=prompt,
        initial_checkpoint_path=initial_checkpoint_path, batch_size=batch_size,
        decoding=decoding, output_dir=out_dir, frozen_dtype=frozen_dtype)
  runner, step, ids = PromptedModel.from_run(
      initial_checkpoint_path, model, placement=prompt.placement, model_dir=model_dir,
      prompt_file=prompt_file, step=step, task=mixture_or_task_name, frozen_dtype=frozen_dtype)
  evaluator = evaluation.Evaluator(mixture_or_task_name, split, task_feature_lengths,
                                   methods=('generate',), batch_size=batch_size,
                                   max_examples=max_examples, decoding_config=decoding,
                                   buckets=buckets, prompt_ids=ids)
  return evaluation.write_inference(out_dir, mixture_or_task_name, split, step,
                                    evaluator.examples, evaluator.generate(runner))

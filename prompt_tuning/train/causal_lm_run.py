"""Prompt tuning a decoder-only model end to end (`train_causal_lm`): an HF checkpoint folder
(config.json, safetensors, tokenizer.json) -> a SeqIO task's batches (data/causal_lm.py) ->
DecoderPromptTrainer steps -> MODEL_DIR (the same loop, checkpoints, repair, records and best
prompt as T5's runs.train) -> evaluations (inference/causal_lm_eval.py) -> exports.

The decoder-only counterpart of runs.train; `prompt-tuning train` runs it with
gin/runs/causal_lm_prompt_tuning.gin (and optionally a family block, gin/models/llama.gin, ...).
It trains one prompt (deep prompts too, with
PromptConfig.deep) or, with `prompt_per_task` (gin PROMPT_PER_TASK, as runs.train), a prompt per
task of a mixture in one table, optionally with a shared prompt (PROMPT_SHARED): each task is
evaluated with its own prompt and exported on its own.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Callable, Optional, Sequence

import jax

from prompt_tuning import storage
from prompt_tuning.models.decoder_model import DecoderModel
from prompt_tuning.models.prompt import PromptConfig
from prompt_tuning.prompts import export
from prompt_tuning.prompts import init as prompt_init_lib
from prompt_tuning.storage import write_atomic
from prompt_tuning.train import loop, optim, partitioning, reporting, settings
from prompt_tuning.train import model_dir as model_dir_lib
from prompt_tuning.train.decoder_trainer import ARCHITECTURE, DecoderPromptTrainer
from prompt_tuning.train.trainer import LossConfig


def train_causal_lm(*, model_dir: str, mixture_or_task_name: str, task_feature_lengths: dict,
                    batch_size: int, train_steps: int, checkpoint_dir: str,
                    prompt: PromptConfig = PromptConfig(placement='prefix'),
                    prompt_init: Callable[..., Any] = functools.partial(
                        prompt_init_lib.initializer_by_name, 'sampled_vocab'),
                    learning_rate: float = 0.3,
                    optimizer: Callable[..., Any] = optim.make_optimizer,
                    loss: LossConfig = LossConfig(), eval_period: int = 1000,
                    eval_split: str = 'validation', eval_methods: Sequence[str] = ('rank',),
                    eval_max_examples: Optional[int] = None, eval_batch_size: int = 32,
                    save_period: Optional[int] = None, keep: int = 1, random_seed: int = 0,
                    mesh_shape: Optional[Sequence[int]] = None,
                    frozen_dtype: Optional[str] = None, group_by_length: int = 32,
                    add_bos: Optional[bool] = None,
                    export_formats: Sequence[str] = ('npy', 'peft'),
                    prompt_per_task: bool = False, prompt_ensemble: int = 1,
                    model: Optional[DecoderModel] = None) -> dict:
  """Prompt-tunes the decoder-only model in `checkpoint_dir` on a task; returns a summary.

  Batches: inputs as a prefix, loss on the targets (data/causal_lm.py's rows); `prompt`'s
  placement is 'prefix' (PEFT's) or 'after_bos' (the anchor's). Evaluation every `eval_period`
  steps (rank classification over the task's label words and/or greedy generation), keeping the
  best prompt. Exports: export/prompt.npy and, for a prefix prompt, a PEFT CAUSAL_LM adapter
  (a deep run: export/deep_prompt.npy beside it, no PEFT). `prompt_per_task`: a table of the
  mixture's tasks' prompts, each task evaluated with its own ('<method>/<task>/<metric>') and
  exported on its own (export/prompts/<task>.npy, export/peft/<task>/), as runs.train does.
  `prompt_ensemble` N > 1 (gin PROMPT_ENSEMBLE, runs/prompt_ensemble_train.gin): N prompts of
  one task trained together on the same batches (runs.train's rule), evaluated as each member,
  their mean and the ensemble, exported per member.
  `model` (gin MODEL, gin/models/<family>.gin): the family `checkpoint_dir` must hold, and the
  defaults of `add_bos` and `frozen_dtype` where those are None.
  """
  from prompt_tuning.checkpoints import hf_decoder
  from prompt_tuning.data import causal_lm as data
  from prompt_tuning.data import tasks
  from prompt_tuning.inference.causal_lm_eval import CausalLMEvaluator
  from prompt_tuning.inference import evaluation
  from prompt_tuning.inference.causal_runner import CausalPromptedModel
  from prompt_tuning.inference.runner import resolve_frozen_dtype

  with reporting.HeldLogs() as held:
    model = check_model(model)
    model.check(checkpoint_dir)
    add_bos = model.add_bos if add_bos is None else add_bos
    frozen_dtype = resolve_frozen_dtype(frozen_dtype or model.frozen_dtype)
    tasks.get_task_or_mixture(mixture_or_task_name)  # unknown names fail here, with close names
    settings.check_settings(
        train_steps=train_steps, batch_size=batch_size, eval_period=eval_period,
        save_period=save_period, keep=keep, eval_batch_size=eval_batch_size,
        task_feature_lengths=task_feature_lengths, group_by_length=group_by_length)
    prompt, names = settings.task_prompts(prompt, mixture_or_task_name, prompt_per_task,
                                          prompt_ensemble)
    members = names if prompt_ensemble > 1 else None
    if 'peft' in export_formats and prompt.placement != 'prefix':
      raise ValueError(f"EXPORT_FORMATS has 'peft', but PEFT cannot place a prompt at "
                       f"{prompt.placement!r}; drop it (export/prompt.npy is written).")
    tokenizer = data.CausalLMTokenizer(checkpoint_dir, add_bos=add_bos)
    config, frozen = hf_decoder.load(checkpoint_dir)
    schedule = lambda _: learning_rate
    trainer = DecoderPromptTrainer(config, prompt, frozen, optimizer(learning_rate=learning_rate),
                                   mesh=partitioning.make_mesh(mesh_shape), loss=loss,
                                   frozen_dtype=frozen_dtype, learning_rate_fn=schedule,
                                   target_length=int(task_feature_lengths['targets']))
    if tokenizer.vocab_size > config.vocab_size:
      raise ValueError(f'{checkpoint_dir}: the tokenizer has {tokenizer.vocab_size} ids but the '
                       f'model embeds only {config.vocab_size}.')
    hosts, host = jax.process_count(), jax.process_index()

    def batches(position: int):
      stream = data.get_batches(mixture_or_task_name, 'train', tokenizer, task_feature_lengths,
                                batch_size // hosts, seed=random_seed, shard_index=host,
                                num_shards=hosts, start_position=position,
                                group_window=group_by_length,
                                prompt_per_task=names is not None and not members)
      return settings.per_member(stream, len(members)) if members else stream
    evaluator = CausalLMEvaluator(
        mixture_or_task_name, eval_split, tokenizer, task_feature_lengths, methods=eval_methods,
        batch_size=eval_batch_size, max_examples=eval_max_examples,
        prompt_ids=None if names is None or members else {n: k for k, n in enumerate(names)}
    ) if eval_period else None
    main_metric = (f'{eval_methods[0]}/{"ensemble/" if members else ""}accuracy' if evaluator
                   else None)
    reporter = reporting.Reporter(model_dir, train_steps, main_metric=main_metric)
    best = reporting.BestPrompt(model_dir, main_metric)

    def on_eval(step: int, state) -> None:
      assert evaluator is not None
      runner = CausalPromptedModel.of(trainer.model, trainer.frozen,  # type: ignore[arg-type]
                                      trainer.prompt(state), deep=trainer.deep_prompt(state))
      metrics = (evaluation.flat_ensemble_report(evaluator.evaluate_ensemble(
          runner, members, step, tag=evaluation.TRAIN_ENSEMBLE_TAG)) if members
                 else evaluator.evaluate(runner, step))
      best.update(step, metrics, trainer.prompt(state))
      reporter.eval_metrics(step, metrics)  # last: its record marks this evaluation complete
    periodic = [] if evaluator is None else [
        (eval_period, on_eval,
         lambda step: partitioning.process0_flag(model_dir_lib.eval_done(model_dir, step)))]

    def start_writing() -> None:
      held.release()
      import gin
      if jax.process_index() == 0:
        write_atomic(storage.join(model_dir, model_dir_lib.CONFIG_GIN), gin.config_str())

    state = loop.train(trainer, batches, model_dir, train_steps,
                       prompt_init=prompt_init(embedding_VxD=trainer.embedding(),
                                               vocab=tokenizer),
                       seed=random_seed, save_every=save_period or eval_period or train_steps,
                       keep=keep, initial_checkpoint=checkpoint_dir, prompt_names=names,
                       on_metrics=reporter.train_metrics, periodic=periodic,
                       periodic_at_start=True, before_write=start_writing,
                       before_save=lambda _: reporter.flush())
  best.load()
  reporter.close()
  written = (export.export_final(model_dir, trainer.prompt(state), config, export_formats,
                                 prompt_names=names, deep_LxPxD=trainer.deep_prompt(state),
                                 placement=prompt.placement) if host == 0 else {})
  summary = {'model_dir': model_dir, 'task': mixture_or_task_name, 'steps': train_steps,
             'architecture': ARCHITECTURE,
             **({'prompt_names': names} if names is not None else {}),
             'first_eval': reporter.eval_history[0] if reporter.eval_history else None,
             'final_eval': reporter.eval_history[-1][1] if reporter.eval_history else None,
             'best': best.record, 'exports': written}
  if host == 0:
    write_atomic(storage.join(model_dir, model_dir_lib.SUMMARY),
                 json.dumps(summary, indent=2, default=str))
  return summary


def check_model(model: Any) -> DecoderModel:
  """gin's MODEL for a decoder-only run (None: any family); a T5 model is one line."""
  if model is None:
    return DecoderModel()
  if not isinstance(model, DecoderModel):
    raise ValueError(f'MODEL is {type(model).__name__}, a T5 model (models/t5_1_1_prompt.gin); a '
                     f'decoder-only run takes models/decoder_only.gin or a family\'s block '
                     f'(models/llama.gin, qwen2, mistral, gpt2).')
  return model

"""`prompt-tuning eval` and `infer` for decoder-only models (Llama, Qwen2, Mistral, GPT-2):
runs.evaluate and runs.infer hand over here when gin's MODEL is a DecoderModel
(gin/models/decoder_only.gin, llama.gin, qwen2.gin, mistral.gin, gpt2.gin). Same gin files,
macros, output files and printed results as T5's; this module only builds the decoder-only
pieces (train: train/causal_lm_run.py).

  is_decoder_only   which model eval/infer run; a T5 MODEL with a decoder-only MODEL_DIR (or the
                    reverse) is one line naming the gin file to use
  eval_setup        (CausalPromptedModel, step, CausalLMEvaluator) for a MODEL_DIR (its latest or
                    `step`; base folder and placement from run_info.json), a PROMPT_FILE, a
                    PROMPT_LIBRARY (a mixture's tasks, each with its own prompt, in mixed batches)
                    or ENSEMBLE_PROMPTS (one pass; majority vote / mean log-likelihood)
  infer_mixed       PROMPT_LIBRARY + INFER_INPUT_FILE: rows naming their prompts, in shared batches

INITIAL_CHECKPOINT_PATH is the HF folder; None with a MODEL_DIR: the folder it was trained on.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, TypeGuard

from prompt_tuning.data import batching
from prompt_tuning.inference import causal_runner, mixed
from prompt_tuning.inference.causal_lm_eval import CausalLMEvaluator
from prompt_tuning.inference.causal_runner import CausalPromptedModel
from prompt_tuning.inference.decoding import DecodingConfig
from prompt_tuning.models.decoder_model import DecoderModel
from prompt_tuning.models.prompt import PromptConfig
from prompt_tuning.prompts import library as library_lib
from prompt_tuning.train import model_dir as model_dir_lib


def is_decoder_only(model: Any, model_dir: Optional[str],
                    sentinel_targets: bool = False) -> TypeGuard[DecoderModel]:
  """Whether eval/infer run a decoder-only model: MODEL is a DecoderModel. MODEL_DIR must be a
  run of the same kind (one line naming the model block to use if not)."""
  info = model_dir_lib.read_run_info(model_dir) if model_dir else None
  decoder_run = causal_runner.is_decoder_only_run(model_dir)
  if isinstance(model, DecoderModel):
    if info is not None and not decoder_run:
      raise ValueError(f'MODEL_DIR {model_dir} is a T5 run, but the gin files give '
                       f'{model.gin_file} (decoder-only): use models/t5_1_1_prompt.gin and its '
                       f'size (models/sizes/*.gin).')
    if sentinel_targets:
      raise ValueError("runs/sentinel_targets.gin is T5's (targets led by <extra_id_0>); a "
                       "decoder-only model has no sentinels: drop it.")
    return True
  if decoder_run:
    assert info is not None
    family = (info.get('model_config') or {}).get('family', 'decoder_only')
    raise ValueError(f'MODEL_DIR {model_dir} is a decoder-only run ({family}): give the gin '
                     f'files models/{family}.gin in place of the T5 model files.')
  return False


def _checkpoint(model: DecoderModel, initial_checkpoint_path: Optional[str],
                model_dir: Optional[str]) -> str:
  """INITIAL_CHECKPOINT_PATH, else the MODEL_DIR's own base folder; checked to be the block's
  family."""
  path = initial_checkpoint_path or (
      causal_runner.run_settings(model_dir)[0] if model_dir else None)
  if not path:
    raise ValueError('No decoder-only checkpoint: set INITIAL_CHECKPOINT_PATH to the model\'s '
                     'Hugging Face folder.')
  model.check(path)
  return path


def _tokenizer(model: DecoderModel, checkpoint: str) -> Any:
  from prompt_tuning.data import causal_lm as data
  return data.CausalLMTokenizer(checkpoint, add_bos=model.add_bos)


def eval_setup(*, model: DecoderModel, model_dir: Optional[str], task: str,
               task_feature_lengths: Mapping[str, int], initial_checkpoint_path: Optional[str],
               prompt: PromptConfig, prompt_file: Optional[str], split: str,
               methods: Sequence[str], max_examples: Optional[int], batch_size: int,
               decoding: DecodingConfig, output_dir: Optional[str], step: Optional[int],
               length_buckets: batching.BucketSetting,
               prompt_library: Optional[library_lib.Spec],
               ensemble_prompts: Optional[library_lib.Spec], frozen_dtype: Optional[str]
               ) -> tuple[CausalPromptedModel, int, CausalLMEvaluator]:
  """(model, step, evaluator) of an eval (or a split's infer, methods ('generate',)), as
  runs.evaluate builds T5's."""
  from prompt_tuning.data import pipeline
  checkpoint = _checkpoint(model, initial_checkpoint_path, model_dir)
  tokenizer = _tokenizer(model, checkpoint)
  dtype = frozen_dtype or model.frozen_dtype
  spec = prompt_library if prompt_library is not None else ensemble_prompts
  ids: Optional[dict[str, int]] = None
  if spec is not None:
    config, frozen = causal_runner.load_frozen(checkpoint, dtype)
    library = library_lib.load_library(spec, config.d_model)
    names = library_lib.run_names(library, task, pipeline.prompt_names(task),
                                  ensemble=ensemble_prompts is not None)
    runner = CausalPromptedModel.with_library(config, frozen, library, names=names,
                                              placement=prompt.placement)  # type: ignore[arg-type]
    if names is not None and runner.is_table:  # one task, one prompt: no ids
      ids = {n: k for k, n in enumerate(names)}
    step = step or 0
  else:
    # A MODEL_DIR's prompt goes where it was trained; a prompt file's where PROMPT says.
    placement = prompt.placement if prompt_file or not model_dir else None
    runner, step, ids = CausalPromptedModel.from_run(
        checkpoint, model_dir=model_dir, prompt_file=prompt_file, step=step, task=task,
        placement=placement, frozen_dtype=dtype)  # type: ignore[arg-type]
  if tokenizer.vocab_size > runner.config.vocab_size:
    raise ValueError(f'{checkpoint}: the tokenizer has {tokenizer.vocab_size} ids but the model '
                     f'embeds only {runner.config.vocab_size}.')
  buckets = batching.resolve(length_buckets, task_feature_lengths)
  widths = (int(task_feature_lengths['inputs']),) if buckets is None else buckets['inputs']
  evaluator = CausalLMEvaluator(task, split, tokenizer, task_feature_lengths, methods=methods,
                                batch_size=batch_size, max_examples=max_examples,
                                prompt_ids=ids, decoding=decoding, output_dir=output_dir,
                                buckets=widths)
  return runner, step, evaluator


def infer_mixed(*, model: DecoderModel, prompt_library: Optional[library_lib.Spec],
                input_file: Optional[str], task_feature_lengths: Mapping[str, int],
                initial_checkpoint_path: Optional[str], prompt: PromptConfig, batch_size: int,
                decoding: DecodingConfig, output_dir: str, frozen_dtype: Optional[str]) -> str:
  """Mixed-task infer (mixed.py's, for a decoder-only model): each row of INFER_INPUT_FILE is
  answered by its named prompt of PROMPT_LIBRARY, rows of different prompts in shared batches."""
  from prompt_tuning.data import causal_lm as data
  rows = mixed.read_mixed_inputs(mixed.check_inputs(prompt_library, input_file))
  checkpoint = _checkpoint(model, initial_checkpoint_path, None)
  tokenizer = _tokenizer(model, checkpoint)
  config, frozen = causal_runner.load_frozen(checkpoint, frozen_dtype or model.frozen_dtype)
  assert prompt_library is not None
  library = library_lib.load_library(prompt_library, config.d_model)
  mixed.check_rows(rows, library, str(input_file))
  runner = CausalPromptedModel.with_library(config, frozen, library,
                                            placement=prompt.placement)  # type: ignore[arg-type]
  # The prefix of a row without targets: [BOS]? + inputs, cut from the left as eval cuts it.
  limit = int(task_feature_lengths['inputs'])
  prefixes = [data.prefix_ids(tokenizer, tokenizer.encode(text), limit) for _, text in rows]
  outputs = runner.generate_rows(
      prefixes, decoding, int(task_feature_lengths['targets']), batch_size=batch_size,
      buckets=batching.auto_buckets(int(task_feature_lengths['inputs'])),
      prompt_ids_N=runner.prompt_ids([n for n, _ in rows]))
  return mixed.write_predictions(output_dir, str(input_file), rows,
                                 [tokenizer.target_text(ids) for ids in outputs])


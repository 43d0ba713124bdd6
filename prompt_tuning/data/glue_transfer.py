"""Zero-shot transfer between QQP and MRPC (the paper's Table 2): train on one, score the other.

Follows google-research/prompt-tuning's prompt_tuning/data/glue_transfer.py (and the
`qqp_to_mrpc` / `mrpc_to_qqp` postprocessors of its prompt_tuning/data/postprocessors.py),
written anew for this package. As there, the evaluated examples keep their own dataset's T5
format (`mrpc sentence1: ... sentence2: ...`, `qqp question1: ... question2: ...`; the
`taskless_` variants drop the leading dataset name, as the reference's do), their targets keep
their own label words, and the model's answer, given in the words of the task it was trained on,
is read as the target task's class of the same id before T5's postprocessor and metrics (F1 and
accuracy, as GLUE reports both tasks):

  QQP   not_duplicate / duplicate        <->   MRPC  not_equivalent / equivalent

Registers, on import (after every other task, so their order is unchanged):

  glue_mrpc_from_qqp, glue_qqp_from_mrpc          validation only (TFDS glue/<target>:2.0.0)
  <each>_local                                    the GLUE release file glue/<Target>/dev.tsv,
                                                  read as glue_<target>_local reads it
  taskless_<each of the above>                    without the leading dataset name
  glue_<target>_from_<source>_zeroshot            mixture: glue_<source> (trained on) +
    (+ _local, taskless_ variants alike)          glue_<target>_from_<source> (evaluated too)

A mixture trains on the source only (the transfer tasks have no 'train' split) and reports both
tasks at each evaluation; its best prompt is picked by the source task's validation F1 (main
metric `<source task>/f1`), so the target's score stays zero-shot. The labels recorded for
every transfer task and mixture are the source's words: rank classification scores those.
"""

from __future__ import annotations

import functools

import seqio

from prompt_tuning.data import postprocessors, preprocessors, registry

# (source, target) pairs, as the reference's TRANSLATIONS.
PAIRS = (('qqp', 'mrpc'), ('mrpc', 'qqp'))


def _labels(task: str) -> tuple[str, ...]:
  labels = registry.TASK_INFO[f'glue_{task}'].labels
  assert labels is not None  # both are classification tasks
  return labels


def _postprocess(text, *, translation, postprocess, **kwargs):
  """The source task's word as the target's class word (predictions only), then the target's
  own postprocessor; targets are already in the target's words."""
  if not kwargs.get('is_target', False):
    text = postprocessors.translate_label(text, translation)
  return postprocess(text, **kwargs)


def _add_mixture(name: str, tasks: list[str], info: registry.TaskInfo) -> None:
  if name in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.remove(name)  # idempotent re-import
  seqio.MixtureRegistry.add(name, tasks, default_rate=1.0)
  registry.TASK_INFO[name] = info


def _register_transfer() -> None:
  for source, target in PAIRS:
    name = f'glue_{target}_from_{source}'
    base = seqio.TaskRegistry.get(f'glue_{target}')
    files, reader, _ = registry.LOCAL_TASKS[f'glue_{target}_local']
    translation = dict(zip(_labels(source), _labels(target)))
    postprocess = functools.partial(_postprocess, translation=translation,
                                    postprocess=base.postprocessor)
    info = registry.TaskInfo(_labels(source), registry.TASK_INFO[f'glue_{target}'].main_metric,
                             'glue')
    registry.add_variants(
        name, (f'glue/{target}:2.0.0', {'validation': 'validation'}, None),
        ({'validation': files['validation']}, reader, None),
        functools.partial(preprocessors.glue, benchmark_name=target, label_names=_labels(target)),
        registry.FORMATTERS[f'glue_{target}'], postprocess, list(base.metric_fns), info)
    for prefix in ('', 'taskless_'):
      for suffix in ('', '_local'):
        trained = f'{prefix}glue_{source}{suffix}'
        main = f'{trained}/{registry.TASK_INFO[f"glue_{source}"].main_metric}'
        _add_mixture(f'{prefix}{name}_zeroshot{suffix}', [trained, f'{prefix}{name}{suffix}'],
                     registry.TaskInfo(_labels(source), main, 'glue'))


_register_transfer()

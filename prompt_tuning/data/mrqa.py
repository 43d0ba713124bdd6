"""MRQA 2019: the paper's domain-shift experiment (Table 1), trained on SQuAD, scored zero-shot.

Registers, on import, mrqa_squad (train + validation) and the six out-of-domain sets the paper
evaluates on (validation only: MRQA's dev files, TFDS's 'test' split): mrqa_textbook_qa,
mrqa_bio_asq, mrqa_relation_extraction, mrqa_duo_rc, mrqa_race, mrqa_drop; each from TFDS
(`mrqa/<config>:1.0.0`) and as a `_local` variant reading MRQA's release files from the local data
folder, as the release lays them out:

  mrqa/train/SQuAD.jsonl.gz                  mrqa_squad_local 'train'
  mrqa/dev/SQuAD.jsonl.gz                    mrqa_squad_local 'validation'
  mrqa/dev/<Name>.jsonl.gz                   TextbookQA, BioASQ, RelationExtraction,
                                             DuoRC.ParaphraseRC, RACE, DROP

(gzipped or not). Each file is a header line `{"header": {...}}`, then one JSON object per
context: `{"context": ..., "qas": [{"qid", "question", "answers": [...], ...}]}`; every question
is one example. The mixtures mrqa_out_of_domain and mrqa_out_of_domain_local evaluate a prompt on
the six sets at once (each task scored alone, plus their mean).

The format is T5's SQuAD one, as google-research/prompt-tuning uses it for MRQA
(prompt_tuning/data/preprocessors.py, `mrqa`; prompt_tuning/data/qa.py): input `question: <q>
context: <c>`, target the first answer, punctuation padded with spaces (preprocessors.mrqa_text).
Scoring takes every answer as a reference, with the MRQA evaluation's EM and F1
(metrics.mrqa; main metric f1). No `taskless_` variants: the inputs start with no task name.
"""

from __future__ import annotations

import seqio

from prompt_tuning.data import metrics, postprocessors, preprocessors, registry, sources

# TFDS config of mrqa (the task is mrqa_<config>) -> (release file name, {split: (TFDS split,
# release folder)}); the out-of-domain sets are MRQA's dev files, TFDS's 'test' split.
_TRAIN_AND_DEV = {'train': ('train', 'train'), 'validation': ('validation', 'dev')}
_DEV_ONLY = {'validation': ('test', 'dev')}
_MRQA = {
    'squad': ('SQuAD', _TRAIN_AND_DEV),
    'textbook_qa': ('TextbookQA', _DEV_ONLY),
    'bio_asq': ('BioASQ', _DEV_ONLY),
    'relation_extraction': ('RelationExtraction', _DEV_ONLY),
    'duo_rc': ('DuoRC.ParaphraseRC', _DEV_ONLY),
    'race': ('RACE', _DEV_ONLY),
    'drop': ('DROP', _DEV_ONLY),
}
OUT_OF_DOMAIN = ('textbook_qa', 'bio_asq', 'relation_extraction', 'duo_rc', 'race', 'drop')
OUT_OF_DOMAIN_MIXTURE = 'mrqa_out_of_domain'

_NEEDS = ('MRQA lines after the header need {"context": text, "qas": [{"qid": text, "question": '
          'text, "answers": [text, ...]}, ...]}')


def _questions(row: dict, check: sources.Row, labeled: bool) -> list[dict]:
  """The examples of one context line: TFDS's mrqa fields that the task reads."""
  context = check.get(row, 'context', str).strip()  # TFDS strips context and question
  out = []
  for i, qa in enumerate(check.get(row, 'qas', list)):
    at = f'qas[{i}].'
    qa = check.object(qa, at[:-1])
    if 'answers' in qa or labeled:
      answers = check.get(qa, 'answers', list, at)
    else:
      answers = []
    if labeled and not answers:
      raise check.error(f'{at}answers is empty', f'train/validation questions need an answer; '
                        f'{check.needs}')
    out.append({'qid': check.get(qa, 'qid', str, at) if 'qid' in qa or labeled else '',
                'question': check.get(qa, 'question', str, at).strip(), 'context': context,
                'answers': [check.value(a, str, f'{at}answers[{j}]')
                            for j, a in enumerate(answers)]})
  return out


def _mrqa_reader(path: str, labeled: bool = True) -> list[dict]:
  """Reader of an MRQA release file (`.jsonl.gz` or gunzipped): one example per question, as
  TFDS's mrqa builder gives them (qid, question, context, answers); every field checked."""
  out: list[dict] = []
  for k, (line, row) in enumerate(sources.iter_jsonl(path)):
    check = sources.Row(path, line, _NEEDS)
    row = check.object(row)
    if k == 0 and 'header' in row and 'context' not in row:
      continue  # the release's first line describes the file
    out.extend(_questions(row, check, labeled))
  return out


def _formatter(example: dict) -> list[dict]:
  return [preprocessors.mrqa_text(example)]


def _register_mrqa() -> None:
  info = registry.TaskInfo(None, 'f1', 'mrqa')
  for config, (file_name, splits) in _MRQA.items():
    tfds = (f'mrqa/{config}:1.0.0', {s: tfds_split for s, (tfds_split, _) in splits.items()},
            None)
    files = {s: ('mrqa', folder, f'{file_name}.jsonl.gz') for s, (_, folder) in splits.items()}
    registry.add_variants(f'mrqa_{config}', tfds, (files, _mrqa_reader, None), preprocessors.mrqa,
                          _formatter, postprocessors.qa, [metrics.mrqa], info, taskless=False)
  for suffix in ('', '_local'):
    name = f'{OUT_OF_DOMAIN_MIXTURE}{suffix}'
    if name in seqio.MixtureRegistry.names():
      seqio.MixtureRegistry.remove(name)  # idempotent re-import
    seqio.MixtureRegistry.add(name, [f'mrqa_{t}{suffix}' for t in OUT_OF_DOMAIN],
                              default_rate=1.0)
    registry.TASK_INFO[name] = info  # 'f1': the mean of the six sets' F1


_register_mrqa()

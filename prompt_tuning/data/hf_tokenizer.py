"""A decoder-only checkpoint's tokenizer (`CausalLMTokenizer`): its `tokenizer.json` through the
`tokenizers` library, with BOS/EOS/pad ids from config.json / generation_config.json (else the
tokenizer's own special tokens) and BOS added where the family adds one. The row convention that
uses it (what is encoded, with which spaces, cut where) is data/causal_lm.py's.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Optional, Sequence

from prompt_tuning import storage

ADD_BOS = {'llama': True, 'mistral': True, 'qwen2': False, 'gpt2': False}
# Special tokens looked up by name when config.json and generation_config.json give no id.
_NAMES = {'bos': ('<s>', '<|begin_of_text|>', '<bos>', '<|endoftext|>'),
          'eos': ('</s>', '<|end_of_text|>', '<|endoftext|>', '<eos>'),
          'pad': ('<pad>', '<|pad|>', '<|finetune_right_pad_id|>')}


class TokenizerError(ValueError):
  """A missing or unreadable tokenizer file, or special ids it cannot provide (one line)."""


def _json_file(path: str) -> dict:
  if not storage.exists(path):
    return {}
  try:
    value = json.loads(storage.read_text(path))
  except (ValueError, OSError) as e:
    raise TokenizerError(f'{path}: not readable JSON ({storage.one_line(e)}).') from None
  return value if isinstance(value, dict) else {}


def _has_type(node: Any, kind: str) -> bool:
  if isinstance(node, dict):
    return node.get('type') == kind or any(_has_type(v, kind) for v in node.values())
  if isinstance(node, list):
    return any(_has_type(v, kind) for v in node)
  return False


def _template_adds_bos(spec: Mapping[str, Any]) -> bool:
  """Whether tokenizer.json's post-processor puts a special token before a single text."""
  def first_is_special(node: Any) -> bool:
    if isinstance(node, dict):
      if node.get('type') == 'TemplateProcessing':
        single = node.get('single') or [{}]
        return 'SpecialToken' in single[0]
      return any(first_is_special(v) for v in node.values())
    return isinstance(node, list) and any(first_is_special(v) for v in node)
  return first_is_special(spec.get('post_processor'))


class CausalLMTokenizer:
  """A decoder-only checkpoint's tokenizer (`<directory>/tokenizer.json`, read with the
  `tokenizers` library, offline). Special ids come from config.json, then
  generation_config.json (a list of EOS ids: the first), then the tokenizer's tokens by name;
  `add_bos` defaults to the family's habit (config.json's model_type, `ADD_BOS`), else to
  whether the tokenizer's own template starts with a special token."""

  def __init__(self, directory: str, add_bos: Optional[bool] = None):
    import tokenizers
    path = storage.join(directory, 'tokenizer.json')
    if not storage.exists(path):
      raise TokenizerError(f'{path}: tokenizer file not found (a decoder-only checkpoint '
                           f'directory holds its tokenizer.json).')
    try:
      text = storage.read_text(path)
      spec = json.loads(text)
      self._tok = tokenizers.Tokenizer.from_str(text)
    except Exception as e:  # pylint: disable=broad-except  # json, OS and tokenizers' errors
      raise TokenizerError(f'{path}: not a readable tokenizer.json '
                           f'({storage.one_line(e)}).') from None
    self.path = path
    config = _json_file(storage.join(directory, 'config.json'))
    generation = _json_file(storage.join(directory, 'generation_config.json'))
    self.family: Optional[str] = config.get('model_type')
    ids: dict[str, Optional[int]] = {}
    for key, names in _NAMES.items():
      value = config.get(f'{key}_token_id')
      if value is None:
        value = generation.get(f'{key}_token_id')
      if isinstance(value, (list, tuple)):
        value = value[0] if value else None
      if value is None:
        value = next((i for n in names if (i := self._tok.token_to_id(n)) is not None), None)
      ids[key] = None if value is None else int(value)
    self.bos_id, self.pad_id = ids['bos'], ids['pad']
    if ids['eos'] is None:
      raise TokenizerError(f'{path}: no EOS id in config.json, generation_config.json or the '
                           f'tokenizer\'s tokens ({", ".join(_NAMES["eos"])}).')
    self.eos_id: int = ids['eos']
    if add_bos is None:
      add_bos = ADD_BOS.get(self.family or '', _template_adds_bos(spec))
    if add_bos and self.bos_id is None:
      raise TokenizerError(f'{path}: the family adds BOS but no BOS id was found.')
    self.add_bos = bool(add_bos)
    # Byte-level BPEs keep a word's leading space in its token (see the module docstring).
    self.byte_level = _has_type(spec.get('pre_tokenizer'), 'ByteLevel') or _has_type(
        spec.get('decoder'), 'ByteLevel')

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  def piece(self, token_id: int) -> str:
    """The vocabulary's own spelling of one id ('Ġthe' in a byte-level BPE), as
    SentencePieceVocab.piece gives T5's ('▁the'): what `prompt-tuning inspect` shows."""
    token = self._tok.id_to_token(int(token_id))
    if token is None:
      raise ValueError(f'{self.path}: id {token_id} is outside the vocabulary of '
                       f'{self.vocab_size} ids.')
    return token

  def encode(self, text: str) -> list[int]:
    """The ids of `text` alone: no BOS, no EOS, nothing the tokenizer's template adds."""
    return list(self._tok.encode(text, add_special_tokens=False).ids)

  def encode_target(self, text: str) -> list[int]:
    """The ids of `text` as it follows the inputs (a target, a label word), without EOS."""
    return self.encode((' ' if self.byte_level else '') + text)

  def decode(self, ids: Sequence[int]) -> str:
    """The text of `ids` up to the first EOS, special tokens dropped."""
    kept = []
    for i in ids:
      if int(i) == self.eos_id:
        break
      kept.append(int(i))
    return self._tok.decode(kept, skip_special_tokens=True)

  def target_text(self, ids: Sequence[int]) -> str:
    """The text of target ids (generated, or a label word): `decode` without the space
    `encode_target` put before it, so that it compares with the task's targets."""
    text = self.decode(ids)
    return text[1:] if self.byte_level and text.startswith(' ') else text

  def __repr__(self) -> str:
    return (f'CausalLMTokenizer({self.path!r}, bos={self.bos_id}, eos={self.eos_id}, '
            f'pad={self.pad_id}, add_bos={self.add_bos}, byte_level={self.byte_level})')



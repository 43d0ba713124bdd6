"""Shared builders for the training tests: a prompt trainer and a deterministic batch stream."""

from prompt_tuning.models import prompt as prompt_lib
from prompt_tuning.testing import synthetic_batch
from prompt_tuning.train import optim
from prompt_tuning.train.trainer import PromptTrainer


def batches(start: int = 0, **kw):
  """synthetic_batch(start), synthetic_batch(start + 1), ...: a fixed synthetic stream."""
  position = start
  while True:
    yield synthetic_batch(position, **kw)
    position += 1


def make_trainer(config, frozen, prompt_length=5, optimizer=None, num_prompts=1,
                 **kw) -> PromptTrainer:
  return PromptTrainer(config, prompt_lib.PromptConfig(prompt_length, num_prompts=num_prompts),
                       frozen, optimizer or optim.adafactor(), **kw)

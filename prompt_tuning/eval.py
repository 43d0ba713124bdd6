"""`python -m prompt_tuning.eval --gin_file=...`, as T5X users launch `python -m t5x.eval`.

Only a launcher (= `prompt-tuning eval`); what it runs is in runs.evaluate and evaluation.py
(the Evaluator)."""

import sys

from prompt_tuning.cli import main

if __name__ == '__main__':
  sys.exit(main(['eval'] + sys.argv[1:]))

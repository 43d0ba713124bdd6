"""`python -m prompt_tuning.infer --gin_file=...`, as T5X users launch `python -m t5x.infer`.

Only a launcher (= `prompt-tuning infer`); what it runs is in runs.infer."""

import sys

from prompt_tuning.cli import main

if __name__ == '__main__':
  sys.exit(main(['infer'] + sys.argv[1:]))

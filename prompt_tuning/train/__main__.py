"""`python -m prompt_tuning.train --gin_file=...`, as T5X users launch `python -m t5x.train`.

Only a launcher (= `prompt-tuning train`); what it runs is in runs.train."""

import sys

from prompt_tuning.cli import main

if __name__ == '__main__':
  sys.exit(main(['train'] + sys.argv[1:]))

"""`python -m prompt_tuning.train --gin_file=...`: T5X-style entry point for training."""

import sys

from prompt_tuning.cli import main

if __name__ == '__main__':
  sys.exit(main(['train'] + sys.argv[1:]))

"""`python -m prompt_tuning.eval --gin_file=...`: T5X-style entry point."""

import sys

from prompt_tuning.cli import main

if __name__ == '__main__':
  sys.exit(main(['eval'] + sys.argv[1:]))

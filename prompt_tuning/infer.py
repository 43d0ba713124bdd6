"""`python -m prompt_tuning.infer --gin_file=...`: T5X-style entry point."""

import sys

from prompt_tuning.cli import main

if __name__ == '__main__':
  sys.exit(main(['infer'] + sys.argv[1:]))

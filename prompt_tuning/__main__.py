"""`python -m prompt_tuning [command] [flags]`; with no command, the quickstart (the embedded
default job)."""

import sys

from prompt_tuning.cli import main

if __name__ == '__main__':
  sys.exit(main())

"""`python -m prompt_tuning [command] [flags]`; with no command, the quickstart (embedded default)."""

import sys

from prompt_tuning.cli import main

if __name__ == '__main__':
  sys.exit(main())

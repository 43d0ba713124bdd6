"""`prompt-tuning report`: the paper's tables and figures from finished MODEL_DIRs.

  runs.py       a MODEL_DIR read for the report (method, size, variant, scores); RunSkipped
  tables.py     per-task tables, Table 1 (MRQA), Table 2 (QQP <-> MRPC); Markdown and CSV
  figure.py     Figure 1 / 3: score against model parameters
  published.py  the paper's numbers printed beside ours, each with its citation
  command.py    the command: read, report what was left out, write the files
"""

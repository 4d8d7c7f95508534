"""Command lines that span stages: `make plan` (`plan`: the planner, and a data file's tokens
counted with the model's tokenizer) and `make probe` (`probe`: a few real steps per approach on
this machine, fitted to the time model). `python -m sweep` (sweep/__main__.py) dispatches here.

May import: settings, planning, results, trial, launch, study.
"""

"""Trial: one measured trial, a function `run.run_trial(cfg, out_dir) -> TrialResult`.

    python -m sweep trial method=lora method.r=16        # one trial in this process
    python -m sweep.trial outputs/default/trials/0003    # re-run a sweep's trial by hand

Its phases, each a module: `models` (load), `methods` (full, LoRA, QLoRA), `data` and `batches`
(tasks, encoding, packing), `train` (the Trainer, measured by `measure`), `evaluate` and
`baseline` (accuracy, the untuned zero line), `stream` (live MLflow metrics). `preflight`
checks what can be checked before a model loads.

May import: settings, planning, results.
"""

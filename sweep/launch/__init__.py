"""Launch: a trial in a process of its own, so its memory counters start clean and a crash or an
out-of-memory is that trial's result, not the sweep's end.

Entry points: `launch.launch(cfg, trial_dir)` (forked from a server that imported torch & co
once: `child`, `preload`), `parallel` (one trial over several GPUs with accelerate), `memory`
(the memory a worker gives its trials, and the ones it skips as predicted not to fit).

May import: settings, planning, results, trial.
"""

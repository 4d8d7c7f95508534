"""Study: the sweep. Points from conf/sweep/, one Optuna study over them, a trial per point.

    python -m sweep run sweep=default      # make sweep

Entry points: `study.run_sweep(overrides)`, `points` (the grid as the list of points users mean),
`pool` (a worker per GPU), `live` (each trial's MLflow run opened when it starts).

May import: settings, planning, results, trial, launch.
"""

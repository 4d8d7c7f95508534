"""Results: what a trial leaves and what is made of it.

Entry points: `record.TrialResult` (one JSON record per trial: run, train and meta blocks),
`tracking` (MLflow: a parent run per sweep, a nested run per trial), `storage` (Optuna's storage
from one URL), `trials.find_trial`, and `report.rebuild(experiment)` (pandas and matplotlib over
the logged records into reports/<experiment>/). It sits below the trial and the study because
both write into it; the report reads records and never reaches into a running study.

May import: settings, planning.
"""

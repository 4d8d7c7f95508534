"""Planning: what a trial will cost before it runs, from the model's shape alone (no weights).

Entry points: `recipe.of(cfg)` (what a method builds: targets, quantization, optimizer, dtypes;
read by training and the planner alike), `arch.load_arch(name)`, `plan.predict_trial(cfg)` (peak
memory by part), `cost` (step time, hours and dollars per epoch), `ledger` (the bytes a step
really holds, measured), `budget` (steps and examples a trial trains on).

May import: settings.
"""

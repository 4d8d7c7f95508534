"""Settings: what the user asked for, composed and checked before anything expensive runs.

Entry points: `compose.compose(overrides) -> Config` (Hydra over conf/, then the schema and
`validate`), `errors.ConfigError` (the one-line error every stage raises for bad input),
`metrics.METRICS` (each metric's name, unit and direction), `hardware.gpu_present()`.

May import: nothing of the package (the bottom stage).
"""

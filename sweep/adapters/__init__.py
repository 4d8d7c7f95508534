"""Adapters: a trained trial put to use. Load its adapter on its base, merge, generate, export
(`trained`), and time separate against merged inference (`inference`).

    python -m sweep generate 0000-lora_r_16 "What is 2 + 3?"      # make generate

May import: settings, planning, results, trial.
"""

"""Benchmarks: `make bench` (the harness against a bare loop, a Trainer-based peer, and
one-by-one generation) and `make bench-plan` (the memory planner against the measured ledger).

May import: every other stage (the top of the package).
"""

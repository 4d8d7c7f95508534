"""Imported by the trial server on a GPU host (sweep.child.preload_modules): the whole trial
module, imported once with CUDA left alone (sweep.preload)."""

from sweep.preload import preload

preload()

"""Imported by the trial server on a GPU host (sweep.launch.child.preload_modules): the whole trial
module, imported once with CUDA left alone (sweep.launch.preload)."""

from sweep.launch.preload import preload

preload()

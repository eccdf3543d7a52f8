"""Scheduling microbenchmarks: AIMD window updates and fair-queue selection, numba vs its twin."""

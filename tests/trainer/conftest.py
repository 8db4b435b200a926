"""Trainer-test set-up. XLA:CPU runs the collectives of all simulated devices on one shared
thread pool sized by the core count; with 8 devices on 2 cores, sub-group collectives can
block every pool thread and deadlock. ``NPROC`` (read by XLA's CPU client) enlarges the pool;
it must be set before the JAX backend starts (see docs/training.md, "CPU runs")."""
import os

os.environ.setdefault("NPROC", "16")

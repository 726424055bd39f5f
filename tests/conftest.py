"""Shared test setup: tests/ helpers (synth.py, runs.py) import as top-level modules."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("MPLBACKEND", "Agg")

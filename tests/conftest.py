"""Shared pytest setup: make tests/ importable (tests/reference.py) and keep torch single-threaded."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

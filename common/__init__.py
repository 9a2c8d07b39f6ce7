"""The shared code of the experiment scripts (see docs/design.md)."""
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where ex_N.py, data/ and ex_N/ live

"""Hyperparameter tuning on Optuna (an optional extra): the search space, the sweep, its report.

Layout: space.py (what varies), sweep.py (trials, objective, storage), report.py (table and plots).
Optuna is imported only when a sweep runs, so the core still needs only NumPy.
"""

from .space import DEFAULT_SPACE, SpaceError, load_space
from .sweep import PRUNERS, SweepConfig, SweepError, run_sweep

__all__ = ["DEFAULT_SPACE", "PRUNERS", "SpaceError", "SweepConfig", "SweepError", "load_space", "run_sweep"]

"""Strategy methods by name: the one place that maps ``strategy.method`` to the class that implements it.

A new method is its options class in ``strategy_options.py``, its behaviour in a module here, and one line below.
"""

from __future__ import annotations

from typing import Any

from tunelab.errors import ModelError
from tunelab.strategies.adapters import Adapters
from tunelab.strategies.base import BitFit, FeatureExtraction, Freeze, GradualUnfreeze, Strategy
from tunelab.strategies.peft_methods import PEFT_METHODS, PeftStrategy

STRATEGIES: dict[str, type[Strategy]] = {
    "full": Strategy,
    "freeze": Freeze,
    "feature_extraction": FeatureExtraction,
    "bitfit": BitFit,
    "gradual_unfreeze": GradualUnfreeze,
    "adapters": Adapters,
    **dict.fromkeys(PEFT_METHODS, PeftStrategy),
}


def make_strategy(cfg: Any, task_type: str = "classification") -> Strategy:
    """The strategy object for a validated ``strategy`` section; PEFT needs the task type (SEQ_CLS, CAUSAL_LM, ...)."""
    if cfg.method not in STRATEGIES:
        raise ModelError(f"strategy.method '{cfg.method}' is not implemented; available: {', '.join(STRATEGIES)}")
    return STRATEGIES[cfg.method](cfg, task_type)

"""Strategies: which parameters train, and how (freeze, feature extraction, PEFT, gradual unfreezing)."""

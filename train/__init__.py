"""Experiment driver for training (run from the checkout: ``python -m train``)."""

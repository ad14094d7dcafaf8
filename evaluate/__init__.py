"""Experiment driver for cutbg: metrics, heat-map refinement and the ``python -m evaluate`` CLI."""

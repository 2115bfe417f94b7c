"""Measuring a model honestly: quality with confidence intervals, and the environment it ran in."""

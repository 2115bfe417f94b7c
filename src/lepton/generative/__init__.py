"""Generative models: decoder-only and encoder-decoder language modelling, prompted generation and translation."""

"""The bottom layer: errors, the strict config base, the registry, atomic I/O, output folders,
progress and the process-group helpers. It imports nothing else of Lepton."""

__version__ = "0.1.0"

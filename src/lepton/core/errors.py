"""Every error a user can cause is a LeptonError subclass.

The message names the file, key or row that caused it, so the CLI can print it on one line.
"""

from __future__ import annotations


class LeptonError(Exception):
    """Base class of all user-facing errors."""


class RecipeError(LeptonError):
    """The recipe is malformed: bad YAML, unknown key, wrong type, bad override."""


class DataError(LeptonError):
    """A data file is missing, empty or malformed (the message names file and line)."""


class LabelError(DataError):
    """A label is not in the task's label set."""


class ModelLoadError(LeptonError):
    """A model folder or id could not be loaded."""


class ArtifactError(LeptonError):
    """A saved model is incomplete, tampered with or of an unknown schema."""


class UnknownNameError(LeptonError):
    """A registry lookup failed (unknown stage kind, runtime, builtin model ...)."""


class MissingExtraError(LeptonError):
    """An optional dependency is not installed."""


class StageError(LeptonError):
    """A stage cannot run with the given settings or inputs."""


class OutputFolderError(LeptonError):
    """The output folder is not one Lepton may write into (not created by Lepton, a file ...)."""


class StorageError(LeptonError):
    """Reading or writing a file failed: disk full, read-only, permission, a damaged file."""


class SignatureError(ArtifactError):
    """A model's manifest signature is missing, invalid or made with another key."""


class SearchError(LeptonError):
    """A search cannot start or continue: its storage, its study or its settings."""

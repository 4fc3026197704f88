"""The exceptions imagetok raises.

Every error a user can cause is an :class:`ImagetokError`. Each subclass also derives from the
built-in exception a Python user would expect (``ValueError``, ``FileNotFoundError``...), so
``except ValueError`` keeps working. Messages say what was wrong and what was expected.
"""

from __future__ import annotations


class ImagetokError(Exception):
    """Base class of all imagetok errors."""


class InputError(ImagetokError, ValueError):
    """An image, token tensor or file given by the user cannot be used."""


class ConfigError(ImagetokError, ValueError):
    """A model or training configuration is malformed (unknown key, wrong type, bad value)."""


class WeightsError(ImagetokError, ValueError):
    """A weight file is missing, corrupt, or does not match the model (missing/extra/misshapen key)."""


class ChecksumError(WeightsError):
    """A downloaded or cached file's sha256 does not match the expected one."""


class UnknownModelError(ImagetokError, LookupError):
    """A model name is not a manifest entry, a hub id, or a local model folder."""


class ConversionError(ImagetokError, ValueError):
    """A foreign checkpoint cannot be converted (wrong format, unmapped keys, config mismatch)."""


class HubError(ImagetokError, OSError):
    """The Hugging Face Hub could not be reached or refused a request."""


class NoDecoderError(ImagetokError, NotImplementedError):
    """The model has no decoder (an encoder-only conversion), so tokens cannot become images."""


class MissingDependencyError(ImagetokError, ImportError):
    """An optional dependency (pyarrow for token datasets, matplotlib for plots) is not installed."""

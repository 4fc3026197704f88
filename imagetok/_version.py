"""The installed imagetok version (package metadata; the source tree's version when not installed)."""

from importlib import metadata

try:
    __version__ = metadata.version("imagetok")
except metadata.PackageNotFoundError:  # running from a source checkout (PYTHONPATH)
    __version__ = "0.1.0"

"""kling-hooks: the callback receiver, its store, dispatcher and plugins."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kling-hooks")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

"""The toolkit's version string, read from the installed package metadata."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mdlm-interp")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.1.0"

"""stackgen's version (the package re-exports it as ``stackgen.__version__``)."""

__version__ = "0.1.0"

"""The version of refbp: one place, read by the package's face and by the reports it writes."""

__all__ = ["__version__"]

__version__ = "0.1.0"

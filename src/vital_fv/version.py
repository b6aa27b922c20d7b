"""The package version, in one place (records, outputs and ``vital_fv.__version__`` read it)."""

__version__ = "0.1.0"

"""The tfflows version (one place; `tfflows.__version__` and exports read it)."""

__version__ = "0.2.0"

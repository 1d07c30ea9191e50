"""The package version, in a module of its own so that low modules can record it without importing the package
facade (``lowrank_lm/__init__.py`` sits at the top of the import layers; see docs/architecture.md)."""

__version__ = "0.1.0"

"""The package version (one place; read by upcycling provenance, study manifests and cache keys)."""

__version__ = "0.1.0"

"""Typed config schemas and their validation (dataclasses; no Hydra at import)."""

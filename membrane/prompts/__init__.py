"""Prompt texts, versioned by file name: <version>.<part>.txt (see membrane.extract)."""

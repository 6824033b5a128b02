"""Shared core: the method's equations, datasets, storage, evaluation."""

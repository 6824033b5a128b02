"""CDUL as services: CLIP-driven pseudo labels -> a served multi-label classifier."""

__version__ = "0.1.0"

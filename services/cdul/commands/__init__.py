"""Small utility sub-commands of ``cdul`` built on the shared core."""

"""The project's exception hierarchy.

Every error a user can cause (bad input, missing files, an unreachable object store)
is one of these, with a message that names the thing at fault. Command-line entry
points print ``str(error)`` and exit non-zero instead of showing a traceback.
"""


class CdulError(Exception):
    """Base class of every error the project raises on purpose."""


class ConfigError(CdulError, ValueError):
    """A setting or specification string is malformed (e.g. ``grid:0x3``)."""


class DatasetError(CdulError):
    """An image or annotation cannot be read; the message names the file."""


class StorageError(CdulError):
    """An object-store operation failed for a reason retrying will not fix."""


class ObjectNotFoundError(StorageError, KeyError):
    """The requested key (or bucket) does not exist."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class StorageUnavailableError(StorageError):
    """The object store could not be reached, even after every retry."""

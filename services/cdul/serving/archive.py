"""Build the TorchServe model archive (``.mar``) from a state_dict, classes and a config.

The archive holds the state_dict (as ``classifier.pt``), the classifier config
(:data:`~cdul.serving.config.CONFIG_FILE_NAME`) and :mod:`cdul.serving.handler`. Serving
settings (batch size, max batch delay, workers) deliberately stay out of it: they
belong to the deployment's ``config.properties`` (``models=`` block), where they can
change without rebuilding the archive. (A ``model-config.yaml`` inside the archive
would silently override them.)

The weights are loaded into the network before anything is packed, so a state_dict
of the wrong architecture or class count is refused here, with a message, instead of
failing later in a TorchServe worker log.

torch-model-archiver runs in a child process with a private ``TMPDIR``: it stages
files in ``$TMPDIR/<model name>`` and deletes that directory first, so two builds of
the same model name sharing ``/tmp`` would destroy each other's staging.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from cdul.core.errors import ConfigError
from cdul.serving.config import CONFIG_FILE_NAME, ClassifierConfig, load_classifier

__all__ = ["HANDLER_PATH", "WEIGHTS_FILE_NAME", "build_archive", "validate_model_name"]

#: The handler module shipped in every archive.
HANDLER_PATH = Path(__file__).with_name("handler.py")
#: Name of the state_dict inside the archive.
WEIGHTS_FILE_NAME = "classifier.pt"


def validate_model_name(name: str) -> str:
    """TorchServe model names: letters, digits, ``_`` and ``-``, starting with a letter
    or digit (the archiver's own rule; checked here for a clearer message)."""
    if not name or not (name[0].isascii() and name[0].isalnum()):
        raise ConfigError(f"model name {name!r} must start with a letter or digit")
    if not all(c.isascii() and (c.isalnum() or c in "_-") for c in name):
        raise ConfigError(f"model name {name!r} may only hold letters, digits, '_' and '-'")
    return name


def build_archive(
    weights: str | os.PathLike[str],
    config: ClassifierConfig,
    output_dir: str | os.PathLike[str],
    *,
    model_name: str = "cdul",
    version: str = "1.0",
    force: bool = False,
) -> Path:
    """Write ``output_dir/<model_name>.mar`` and return its path.

    ``force`` replaces an existing archive; without it an existing file is an error.
    The archive appears whole or not at all: it is built in a temporary directory
    beside the destination and renamed into place.
    """
    validate_model_name(model_name)
    weights = Path(weights)
    load_classifier(weights, config)  # refuses mismatched weights before packing
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / f"{model_name}.mar"
    if target.exists() and not force:
        raise ConfigError(f"{target} already exists (use --force to replace it)")

    # Inputs are staged in the system temp directory (torch-model-archiver splits
    # --extra-files on commas, so their path must not hold one); the archive is built
    # beside its destination so the final rename stays on one file system.
    with (
        tempfile.TemporaryDirectory(prefix="cdul-archive-") as inputs,
        tempfile.TemporaryDirectory(prefix=".cdul-archive-", dir=output_dir) as tmp,
    ):
        work = Path(tmp)
        staging = Path(inputs)
        # A symlink, not a copy: ResNet-101 weights are 170 MB and the archiver copies
        # (following links) anyway.
        (staging / WEIGHTS_FILE_NAME).symlink_to(weights.resolve())
        config.write(staging / CONFIG_FILE_NAME)
        export = work / "export"
        export.mkdir()
        _run_archiver(
            [
                "--model-name",
                model_name,
                "--version",
                version,
                "--serialized-file",
                str(staging / WEIGHTS_FILE_NAME),
                "--handler",
                str(HANDLER_PATH),
                "--extra-files",
                str(staging / CONFIG_FILE_NAME),
                "--export-path",
                str(export),
            ],
            tmpdir=work,
        )
        built = export / f"{model_name}.mar"
        if not built.is_file():
            raise ConfigError(f"torch-model-archiver did not write {built.name}")
        os.replace(built, target)
    return target


def _run_archiver(arguments: list[str], tmpdir: Path) -> None:
    """torch-model-archiver in a child process (see the module docstring for why)."""
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    command = [sys.executable, "-m", "model_archiver.model_packaging", *arguments]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise ConfigError(
            "torch-model-archiver failed: "
            + (detail[-1] if detail else f"exit {result.returncode}")
        )

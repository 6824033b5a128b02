"""The ``cdul`` console command: one sub-command per job.

Sub-commands are a registry (name -> module path and one-line help); a module is
imported only when its command is chosen, so ``cdul --help`` stays fast and a
component's heavy imports (torch, grpc) are paid only by the job that needs them.
Each module provides ``configure(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from cdul import __version__
from cdul.core.errors import CdulError


@dataclass(frozen=True)
class Command:
    module: str
    help: str


COMMANDS: dict[str, Command] = {
    "demo": Command(
        "cdul.demo", "the whole chain on the embedded world, offline: label, train, serve, predict"
    ),
    "dataset": Command(
        "cdul.commands.dataset", "read a dataset spec: counts per class and unreadable items"
    ),
    "clip-serve": Command(
        "cdul.clip_service.command", "run the CLIP similarity gRPC server (global + snippet scores)"
    ),
    "world": Command(
        "cdul.world.command", "the embedded world: generate scenes, train its models, report"
    ),
    "archive": Command(
        "cdul.serving.command", "build the TorchServe model archive (.mar) of a trained classifier"
    ),
    "snippets": Command(
        "cdul.commands.snippets", "show the snippets a spec cuts from an image of a given size"
    ),
    "label": Command(
        "cdul.labeler.command", "pseudo-label a dataset via the CLIP service into a run (shardable)"
    ),
    "relabel": Command(
        "cdul.labeler.relabel",
        "label other classes or prompts from a run's stored image embeddings",
    ),
    "label-merge": Command(
        "cdul.labels.merge", "check and merge a sharded run's pseudo labels; evaluate them"
    ),
    "label-sweep": Command(
        "cdul.labels.sweep", "zeta sweep from a run's stored alpha/beta (no CLIP call)"
    ),
    "label-report": Command(
        "cdul.labels.report", "mAP of global/aggregate/final for several runs, side by side"
    ),
    "serve-ready": Command(
        "cdul.serving.readiness", "exit 0 once a TorchServe model has a READY worker (probes)"
    ),
    "label-gallery": Command(
        "cdul.labels.gallery.command",
        "a static HTML gallery of a run's labels (thumbnails, per class)",
    ),
    "label-export": Command(
        "cdul.labels.export", "export a run's labels: CSV, JSON, Label Studio tasks, FiftyOne"
    ),
    "label-import": Command(
        "cdul.labels.import_", "reviewed labels (Label Studio export, CSV) into a run for training"
    ),
    "label-studio-backend": Command(
        "cdul.label_studio.backend",
        "a Label Studio ML backend on a run: predictions, reviews into the run",
    ),
    "train": Command(
        "cdul.trainer.command", "train the classifier on pseudo labels (Eq. 8), export a .mar"
    ),
    "cross-fit": Command(
        "cdul.trainer.crossfit", "out-of-sample predictions on a run's images for the review queue"
    ),
    "label-queue": Command(
        "cdul.labels.queue", "the review queue: (image, class) labels most likely wrong first"
    ),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only the ``selected`` sub-command's module is imported."""
    parser = argparse.ArgumentParser(
        prog="cdul",
        description="CLIP-driven unsupervised multi-label classification (CDUL) as services.",
    )
    parser.add_argument("--version", action="version", version=f"cdul {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="debug logging, and other libraries' INFO lines (e.g. open_clip's)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        if name == selected:
            module = importlib.import_module(command.module)
            child = sub.add_parser(name, help=command.help, description=command.help)
            module.configure(child)
            child.set_defaults(_run=module.run)
        else:
            sub.add_parser(name, help=command.help, add_help=False)
    return parser


def _project_or_warning(record: logging.LogRecord) -> bool:
    """The console filter without -v: this project's records at the root logger's level,
    everyone else's only from WARNING up."""
    own = record.name == "cdul" or record.name.startswith("cdul.")
    return own or record.levelno >= logging.WARNING


def configure_logging(verbose: bool) -> None:
    """Log to stderr: INFO and up from ``cdul.*`` loggers, WARNING and up from the rest
    (open_clip alone logs a dozen INFO lines per model load), everything with -v.

    A handler filter rather than per-library logger levels, because open_clip logs
    through the root logger (``logging.info``), so its records carry no name of their
    own. The root logger stays at INFO, so a process that raises it (the trainer's
    non-main ranks set WARNING) still quiets this project's INFO lines too. Like
    ``logging.basicConfig``, this does nothing when the root logger already has a
    handler (an embedding program or pytest configured logging first)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if not verbose:
        handler.addFilter(_project_or_warning)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if a in COMMANDS), None)
    args = build_parser(selected).parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args._run(args) or 0)
    except CdulError as error:
        print(f"cdul {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cdul {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

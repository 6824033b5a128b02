"""Generate the Python gRPC stubs from ``protos/`` (``make proto``).

The stubs are committed under ``services/cdul/_proto`` so an install needs no code
generation; ``tests/clip_service/test_contract.py`` regenerates them into a temp
directory and fails when the committed ones are stale. A developer's tool: it runs in a
source checkout (the .proto files are not installed with the package) and says so
anywhere else.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

REPO = Path(__file__).resolve().parents[3]
PROTO_ROOT = REPO / "protos"
OUT = REPO / "services" / "cdul" / "_proto"
PROTO = "cdul/similarity/v1/similarity.proto"


def generate(out: Path = OUT) -> None:
    if not (PROTO_ROOT / PROTO).is_file():
        raise SystemExit(
            f"{PROTO_ROOT / PROTO} not found: regenerate the stubs from a source checkout "
            "(make proto); an installed package carries the generated stubs only"
        )
    out.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(PROTO_ROOT / PROTO),
        ]
    )
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    # Make every generated directory a package, so `cdul._proto.cdul.similarity.v1` imports.
    for directory in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()
    # grpc_tools writes absolute imports ("from cdul.similarity.v1 import ..."); make them
    # relative to this package so they don't collide with the real `cdul` package.
    for path in out.rglob("*_pb2_grpc.py"):
        text = path.read_text(encoding="utf-8")
        path.write_text(
            text.replace("from cdul.similarity.v1 import", "from . import"), encoding="utf-8"
        )


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)

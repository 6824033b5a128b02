"""Comparing two labeling runs of the same images, the one way every test does it.

Why two runs can differ at all: the CLIP service's dynamic batcher packs the views of
whichever requests arrived together into one encoder forward, and a forward's batch size
picks the kernel's blocking (oneDNN, MKL), which moves a float's last bits. Measured on
the world's 120 val scenes with torch on one thread, two runs through the batching
service differed by up to 2.3e-6 (scalar, AVX2 and AVX-512 kernels alike), the stored
Otsu thresholds in their seventh digit; with two threads they were bit-identical.

So a test that compares two runs makes them identical by construction: both go through
the ``unbatched_endpoint`` service (``max_batch=1``: every view is encoded alone, so no
answer depends on what arrived beside it), and everything after the encoder computes an
image's numbers from that image's answers alone, row by row. Then every vector, the
stored thresholds and the whole manifest are equal bit for bit, on every kernel set and
thread count (checked by ``make test-repeat``), and :func:`assert_identical_labels` says
so with ``==``. A tolerance is left only where a test works a recipe out by hand in
another order (:data:`ARITHMETIC_TOLERANCE`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from cdul.core.pseudo_labels import VECTORS

#: float32's unit roundoff: a product or a sum rounds by at most this relative amount.
UNIT_ROUNDOFF = 2.0**-24
#: A label recipe worked out by hand in a test against the labeler's own: a few float32
#: operations on values in [0, 1] (a mix, a mean, a division by a bias), each within one
#: rounding of ``u``, in another order or with a fused multiply-add on one side: 16
#: roundings bound them (9.5e-7).
ARITHMETIC_TOLERANCE = 16 * UNIT_ROUNDOFF


def _manifest(labels) -> dict:
    data = labels.manifest.to_json()
    data.pop("created")  # the time the run finished
    return data


def assert_identical_labels(
    a, b, *, manifests: bool = True, image_key: Callable[[str], str] = str
) -> None:
    """Two runs through the ``unbatched_endpoint`` service: the same images in the same
    order, every label vector and the ground truth equal bit for bit, and (``manifests``)
    the manifests equal but for their creation time, stored thresholds included. Leave
    ``manifests`` off where the runs were laid out differently on purpose (two jobs and
    a merge against one job: other shard lists; a folder without ground truth against
    tars with it); the thresholds are still compared.
    ``image_key``: what names one image in both runs, where their ids differ in form (a
    folder's file name, a tar sample's key: ``lambda i: Path(i).stem``)."""
    assert [image_key(i) for i in a.ids] == [image_key(i) for i in b.ids]
    assert a.classes == b.classes
    for name in VECTORS:
        assert torch.equal(a[name], b[name]), (name, (a[name] - b[name]).abs().max().item())
    if a.ground_truth is not None and b.ground_truth is not None:
        assert torch.equal(a.ground_truth, b.ground_truth)
    if manifests:
        assert (a.ground_truth is None) == (b.ground_truth is None)
        assert _manifest(a) == _manifest(b)
    else:
        assert a.manifest.thresholds == b.manifest.thresholds

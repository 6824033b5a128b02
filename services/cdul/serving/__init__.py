"""Serving: the trained classifier behind TorchServe's HTTP API.

* :mod:`cdul.serving.config` — the classifier config an archive carries, and loading
  a state_dict into the network;
* :mod:`cdul.serving.protocol` — the request/response contract (image field,
  threshold override, JSON bodies), pure functions;
* :mod:`cdul.serving.handler` — the TorchServe handler (one class, shipped in the
  archive);
* :mod:`cdul.serving.archive` — building the ``.mar`` with torch-model-archiver;
* :mod:`cdul.serving.command` — ``cdul archive``.

Production settings live in ``cdul/serving/config.properties`` (package data: the
image, compose and ``cdul demo`` use this one file).
"""

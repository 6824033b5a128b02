"""Serving: the trained classifier behind TorchServe's HTTP API.

* :mod:`cdul.serving.config` — the classifier config an archive carries, and loading
  a state_dict into the network;
* :mod:`cdul.serving.protocol` — the request/response contract (image field,
  threshold override, JSON bodies), pure functions;
* :mod:`cdul.serving.handler` — the TorchServe handler (one class, shipped in the
  archive);
* :mod:`cdul.serving.archive` — building the ``.mar`` with torch-model-archiver;
* :mod:`cdul.serving.command` — ``cdul archive``.

Deployment settings live in ``deploy/torchserve/config.properties``.
"""

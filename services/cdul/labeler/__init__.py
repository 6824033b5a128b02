"""The labeling job (``cdul label``): a dataset -> the CLIP similarity service -> pseudo
labels in a store. The only room of the package that talks gRPC to the service.

- :mod:`.sources`: what gets labeled (a dataset spec, or images under an ``s3://``
  prefix) as ids + raw image bytes (the service decodes them; errors name the file).
- :mod:`.job`: one shard of a run, written in parts so that a kill loses little work;
  :mod:`.service` waits for the CLIP service and reads images ahead.
- :mod:`.command`: ``cdul label``; an unsharded run is merged at the end.

The artefact it writes is :mod:`cdul.core.pseudo_labels`; the tools that read a
finished run (merge, report, sweep, gallery, export and import) are :mod:`cdul.labels`.
"""

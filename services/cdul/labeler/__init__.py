"""The labeler job: a dataset -> the CLIP similarity service -> pseudo labels in a store.

- :mod:`.sources`: what gets labeled (a dataset spec, or images under an ``s3://``
  prefix) as ids + raw image bytes (the service decodes them; errors name the file).
- :mod:`.job`: one shard of a run, written in parts so that a kill loses little work;
  :mod:`.service` waits for the CLIP service and reads images ahead.
- :mod:`.report`: macro mAP / per-class AP of global, aggregate and final.
- :mod:`.command` (``cdul label``), :mod:`.merge` (``cdul label-merge``),
  :mod:`.sweep` (``cdul label-sweep``), :mod:`.compare` (``cdul label-report``).

The artefact format itself is :mod:`cdul.core.pseudo_labels`.
"""

"""The tools that read a labeled run: no gRPC, no CLIP service, no trainer.

A run is the artefact :mod:`cdul.core.pseudo_labels` defines; the labeling job
(:mod:`cdul.labeler`) writes it. Everything here reads it (a test keeps this room free
of the job's and the trainer's imports, so each tool runs in the labeler's image):

- :mod:`.reading`: which stored vector is read as labels and at which threshold
  (:class:`~.reading.LabelReading`, :func:`~.reading.over_threshold`), and a run's labels
  recomputed with another recipe (:func:`~.reading.relabel`).
- :mod:`.matching`: a run's rows matched to a dataset's images by id (the trainer,
  the export and the gallery use it).
- :mod:`.merge` (``cdul label-merge``): a sharded run's shards checked and merged;
  :mod:`.evaluation`: its mAP files beside the labels.
- :mod:`.stats`: per-class numbers of a run's scores; :mod:`.report` (``cdul
  label-report``) and :mod:`.gallery` (``cdul label-gallery``) show them.
- :mod:`.sweep` (``cdul label-sweep``): other recipes from what a run stores.
- :mod:`.formats`: the label file formats (CSV, JSON, Label Studio, FiftyOne), each a
  writer and, where the format can come back, a reader; :mod:`.export` (``cdul
  label-export``) writes them, :mod:`.import_` (``cdul label-import``) reads reviews back.
"""

"""``cdul label-gallery``: a run's labels as static HTML pages.

:mod:`.model` reads the run and builds the :class:`~.model.Gallery` (per class its top
images and errors, the thumbnails); :mod:`.html` turns it into page text (pure
functions); :mod:`.command` is the command that writes the pages.
"""

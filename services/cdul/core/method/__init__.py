"""The CDUL method as pure functions on tensors, one module per stage.

- :mod:`.similarity`  Eq. 1-4  CLIP similarity, global and per snippet
- :mod:`.aggregation` Eq. 5-7  min-max aggregation and the pseudo label
- :mod:`.alignment`   Eq. 8    gradient-aligned update of latent pseudo labels
- :mod:`.snippets`             snippet specifications (``grid:RxC``, ``patch:K[/S]``)

These modules import nothing from the services; the services call them.
"""

"""The embedded world: a synthetic multi-label image world and the small models
(tiny CLIP, backbone) trained on it, so the whole pipeline runs offline."""

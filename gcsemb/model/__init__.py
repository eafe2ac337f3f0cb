"""The model: open_clip's CLIP, its weights, and which model a dataset was embedded with.

- :mod:`~gcsemb.model.embedder`: the cached embedder (one model per process).
- :mod:`~gcsemb.model.checkpoints`: where weights live, their tags and hashes; the configs
  gcsemb ships (``configs/``).
- :mod:`~gcsemb.model.dataset_embedder`: the model a dataset's queries need (``ModelChoice``),
  recovered only from what is safe to trust in it; :mod:`~gcsemb.model.model_config`: a
  model config a dataset carries, checked as data.
"""

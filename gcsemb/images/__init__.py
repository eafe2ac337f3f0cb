"""Images: bytes to model input in bounded memory, or a failure with its reason.

- On the CPU with PIL: :mod:`~gcsemb.images.decode` (one image), with
  :mod:`~gcsemb.images.image_formats` (which decoders may run), :mod:`~gcsemb.images.pixel_budget`
  (pixel caps and the shared byte budget) and :mod:`~gcsemb.images.rgb_conversion`.
- On a GPU (or the CPU) with torchvision: :mod:`~gcsemb.images.tensor_decode`, with
  :mod:`~gcsemb.images.jpeg_header` (a JPEG's size read from its markers) and
  :mod:`~gcsemb.images.tensor_preprocess` (open_clip's preprocess on tensors).
"""

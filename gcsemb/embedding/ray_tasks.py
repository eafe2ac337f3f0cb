"""The Ray engine's per-batch stages: the local engine's functions, run on Arrow rows.

fetch (:func:`fetch_rows`) -> decode and the geometric preprocess (:func:`decode_rows`, uint8
pixels shipped) -> the model in an actor (:class:`Embed`, normalising on its device) -> atomic
shards (:func:`write_rows`). Each takes and returns a ``pyarrow.Table`` of
:mod:`~gcsemb.embedding.ray_rows` rows.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from gcsemb.embedding.ray_rows import aliases_of, items_of, with_failures
from gcsemb.embedding.stages import Failure, decode, fetch
from gcsemb.embedding.writer import ShardWriter
from gcsemb.errors import GcsembError
from gcsemb.storage import Store


@dataclass
class Preprocessor:
    """The model's own open_clip transform without its weights, split for shipping.

    Decode tasks run the geometric steps (resize, crop) and ship uint8 pixels, a quarter of the
    bytes of the float tensor; the model's actor converts and normalises them (on its GPU) with
    torchvision's arithmetic, so the model sees exactly what :meth:`transform` would give it.
    Quacks like :class:`gcsemb.model.embedder.Embedder` for :func:`gcsemb.embedding.stages.decode`.

    Attributes:
        transform: The full transform (PIL image -> normalised CHW float tensor).
        image_size: The shorter side the model takes.
        pixels: The steps before ``ToTensor`` (PIL -> PIL), or ``None`` if the transform does not
            end in ``ToTensor, Normalize`` (then floats are shipped).
        mean: ``Normalize``'s mean.
        std: ``Normalize``'s std.
    """

    transform: Callable[[Any], Any]
    image_size: int
    pixels: Callable[[Any], Any] | None = None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def preprocess(self, image: Any) -> np.ndarray:
        """What a decode task ships: uint8 HWC pixels (float CHW without a split)."""
        if self.pixels is None:
            return self.transform(image).numpy()
        return np.array(self.pixels(image), dtype=np.uint8)  # a writable copy for torch

    def model_input(self, batch: np.ndarray, device: Any = "cpu") -> Any:
        """A batch of :meth:`preprocess` outputs as the model's input tensor, on ``device``."""
        import torch

        x = torch.from_numpy(batch)
        if self.pixels is None:
            return x
        x = x.to(device).permute(0, 3, 1, 2).contiguous().float().div(255)  # as ToTensor
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
        return x.sub_(mean).div_(std)  # as Normalize


@functools.cache
def preprocessor(model: str, pretrained: str | None) -> Preprocessor:
    """The preprocess of ``(model, pretrained)``, built on torch's meta device (no weights).

    Same configuration path as :func:`gcsemb.model.embedder.load_embedder` (the weights tag's mean,
    std and resize mode), in a tenth of a second and no memory, once per worker process.
    """
    import open_clip
    import torch
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict
    from torchvision.transforms import Compose, Normalize, ToTensor

    from gcsemb.model.embedder import architecture, image_size
    from gcsemb.storage.cache import cache_dir

    arch = architecture(model)
    tag_cfg = (open_clip.get_pretrained_cfg(arch, pretrained) if pretrained else {}) or {}
    with torch.device("meta"), _quiet_root_logger():
        net = open_clip.create_model(
            arch,
            pretrained=None,
            device="meta",
            precision="fp32",
            pretrained_text=False,
            force_preprocess_cfg=merge_preprocess_dict({}, tag_cfg),
            cache_dir=str(cache_dir() / "open_clip"),
        )
    cfg = net.visual.preprocess_cfg
    transform = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    pre = Preprocessor(transform, image_size(cfg))
    steps = getattr(transform, "transforms", [])
    if len(steps) >= 2 and isinstance(steps[-2], ToTensor) and isinstance(steps[-1], Normalize):
        pre.pixels = Compose(steps[:-2])
        pre.mean, pre.std = tuple(steps[-1].mean), tuple(steps[-1].std)
    return pre


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """open_clip warns on the root logger that the weights are random: here that is the point."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def fetch_rows(batch: pa.Table, src: Store) -> pa.Table:
    """Fetch stage: :func:`gcsemb.embedding.stages.fetch` on a batch of listed objects."""
    items = items_of(batch)
    fetch(src, items)
    for it in items:
        if it.fatal is not None:  # refused credentials end the run, as in the local engine
            raise it.fatal
    md5s = pa.array([it.md5 for it in items], pa.string())
    batch = batch.set_column(batch.schema.get_field_index("md5"), "md5", md5s)
    batch = batch.append_column("data", pa.array([it.data for it in items], pa.binary()))
    return with_failures(batch, items)


def decode_rows(batch: pa.Table, model: str, pretrained: str | None) -> pa.Table:
    """Decode stage: :func:`~gcsemb.embedding.stages.decode` and the preprocess, per image.

    The preprocessed pixels travel as raw bytes (``tensor``); failures keep it empty.
    """
    pre = preprocessor(model, pretrained)
    items = items_of(batch)
    md5s, datas = batch.column("md5").to_pylist(), batch.column("data").to_pylist()
    for it, md5, data in zip(items, md5s, datas, strict=True):
        it.md5, it.data = md5, data
        decode(it, pre.preprocess, pre.image_size)
        if it.tensor is None and it.failure is None:
            it.failure = Failure("fetch", "no result")
    tensors = [b"" if it.failure else np.ascontiguousarray(it.tensor).tobytes() for it in items]
    out = batch.drop_columns(["data"])
    out = out.append_column("width", pa.array([it.width for it in items], pa.int32()))
    out = out.append_column("height", pa.array([it.height for it in items], pa.int32()))
    out = out.append_column("tensor", pa.array(tensors, pa.binary()))
    return with_failures(out, items)


class Embed:
    """Embed stage, a Ray Data actor: the model is loaded once, in ``__init__``.

    Args:
        model: open_clip architecture name or model-config JSON path.
        pretrained: Weights tag, checkpoint path or gs:// URL (must be readable on the worker).
        device: ``auto`` takes the actor's GPU when Ray gave it one.
        precision: ``auto``, ``fp32``, ``fp16`` or ``bf16``.
        access: The handle whose access reaches a gs:// checkpoint.
        tag: The model tag the driver computed; rows are written under it.
    """

    def __init__(
        self,
        model: str,
        pretrained: str | None,
        *,
        device: str,
        precision: str,
        access: Store,
        tag: str,
    ) -> None:
        from gcsemb.model.embedder import load_embedder

        self.embedder = load_embedder(
            model, pretrained, device=device, precision=precision, token=access
        )
        if self.embedder.name != tag:
            raise GcsembError(
                f"The worker loaded {self.embedder.name} but the driver expected {tag}: give "
                "every node the same checkpoint (a gs:// URL or a weights tag)."
            )
        from PIL import Image

        self.pre = preprocessor(model, pretrained)
        sample = self.pre.preprocess(Image.new("RGB", (8, 8)))
        self.shape, self.dtype = sample.shape, sample.dtype

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Embed the rows that decoded; the others get a zero vector and keep their error."""
        blobs = batch.column("tensor").to_pylist()
        ok = [i for i, blob in enumerate(blobs) if blob]
        emb = np.zeros((batch.num_rows, self.embedder.dim), np.float32)
        if ok:
            stacked = np.stack([np.frombuffer(blobs[i], self.dtype) for i in ok])
            pixels = stacked.reshape(len(ok), *self.shape)
            emb[ok] = self.embedder.embed_tensors(
                self.pre.model_input(pixels, self.embedder.device)
            )
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])
        return batch.drop_columns(["tensor"]).append_column("embedding", vectors)


def write_rows(
    batch: pa.Table, dst: Store, model: str, metadata: dict[str, str], run: str
) -> pa.Table:
    """Write stage: one :class:`~.writer.ShardWriter` flush per batch (atomic shards).

    Shards are named ``part-<run>-<task>-00000.parquet``: the run's id, then this task's own
    suffix (tasks run at once on many machines, so each needs its own name).

    Returns one row of counts (embedded, duplicates, failed) for the driver's summary.
    """
    emb = batch.column("embedding").combine_chunks()
    dim = emb.type.list_size
    matrix = emb.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    writer = ShardWriter(
        dst,
        model,
        dim,
        rows_per_shard=batch.num_rows + 1,
        seconds_per_shard=float("inf"),
        metadata=metadata,
        run=f"{run}-{uuid.uuid4().hex[:8]}",
    )
    counts = {"embedded": 0, "duplicates": 0, "failed": 0}
    cols = batch.select(["md5", "width", "height", "aliases"]).to_pydict()
    for i, (it, md5, width, height, blob) in enumerate(
        zip(items_of(batch), *cols.values(), strict=True)
    ):
        twins = aliases_of(blob)
        counts["duplicates"] += len(twins) if it.failure is None else 0
        for one in (it.obj, *twins):
            if it.failure is None:
                writer.add(one, md5, width, height, matrix[i])
            else:
                f = it.failure
                writer.add_error(
                    one, md5, f.stage, f.error, environmental=f.environmental, decoders=f.decoders
                )
                counts["failed"] += 1
        counts["embedded"] += it.failure is None
    writer.flush()
    return pa.table({k: [v] for k, v in counts.items()})

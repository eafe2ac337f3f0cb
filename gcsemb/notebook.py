"""What the notebooks call: where am I running, which bucket, which model, and the demo stand-ins.

Every notebook starts with the same three steps, so they live here rather than in cells:

1. :func:`authenticate` says which identity gcsemb will use (and in Colab signs the user in when a
   real bucket is given);
2. :func:`setup` turns the notebook's parameters into a :class:`Session`: with a bucket it just
   remembers it; with none it starts the embedded GCS emulator, uploads the sample photographs and
   picks a tiny model with random weights, so the notebook runs anywhere, offline, in seconds;
3. ``session.close()`` at the end stops the emulator (a real bucket is left alone).

Example:
    >>> from gcsemb import notebook as nb
    >>> s = nb.setup()  # doctest: +SKIP
    No bucket given: using the local emulator with 124 sample images and a tiny random-weights ...
    >>> s.embed()  # doctest: +SKIP
"""

from __future__ import annotations

import html
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gcsemb.model.checkpoints import TINY_MODEL
from gcsemb.storage import Store, open_store
from gcsemb.storage.auth import in_colab

DEMO_IMAGES = 120  # photographs uploaded by the demo (plus 3 broken files and 1 exact copy)


def in_workbench() -> bool:
    """Whether this kernel runs on a Vertex AI Workbench (or Deep Learning VM) instance."""
    return "DL_ANACONDA_HOME" in os.environ or Path("/opt/deeplearning/metadata").is_dir()


def where() -> str:
    """``"colab"``, ``"workbench"`` or ``"local"``."""
    return "colab" if in_colab() else "workbench" if in_workbench() else "local"


def cache_on_drive(folder: str = "gcsemb-cache") -> Path | None:
    """Colab: keep gcsemb's cache (model weights, thumbnails) on Google Drive; elsewhere nothing.

    A Colab runtime forgets its disk on a disconnect; with the cache on Drive the weights (about
    600 MB for ViT-B-32) are downloaded once, not after every reconnect. Call it before the
    first model is loaded: it mounts Drive (Colab asks for permission) and sets
    ``GCSEMB_CACHE``.

    Args:
        folder: A folder under "My Drive".

    Returns:
        The cache folder, or None outside Colab.
    """
    if not in_colab():
        print("Not in Colab: the cache stays where it is (GCSEMB_CACHE or ~/.cache/gcsemb).")
        return None
    from google.colab import drive  # type: ignore[import-not-found]

    drive.mount("/content/drive")
    path = Path("/content/drive/MyDrive") / folder
    path.mkdir(parents=True, exist_ok=True)
    os.environ["GCSEMB_CACHE"] = str(path)
    print(f"gcsemb's cache (weights, thumbnails) is now on Drive: {path}")
    return path


def authenticate(src: str | None = None, token: Any = None) -> Any:
    """Sign in where needed and print which identity gcsemb will use (never a secret).

    - No ``src``: the local emulator takes no credentials; nothing to do.
    - Colab with a ``gs://`` source and no ``token``: runs ``google.colab.auth.authenticate_user()``
      (a pop-up asks the user to allow access), then uses those credentials.
    - Vertex AI Workbench: the VM's service account, found through the metadata server.
    - Elsewhere: application default credentials (``gcloud auth application-default login``),
      ``GOOGLE_APPLICATION_CREDENTIALS``, or whatever ``token`` names (see
      :mod:`gcsemb.storage.auth`).

    Args:
        src: The notebook's source URL, or None for the demo.
        token: Anything :func:`gcsemb.storage.auth.resolve` accepts.

    Returns:
        The :class:`gcsemb.storage.auth.Identity` (its repr shows only the description), or None
        when no credentials are needed.
    """
    from gcsemb.storage import backend_class
    from gcsemb.storage.auth import resolve

    if src is None:
        print("No bucket given: no sign-in needed (the local emulator takes no credentials).")
        return None
    if not backend_class(src).signs_in:
        print(f"{src} is not in GCS: no sign-in needed.")
        return None
    if in_colab() and token is None:
        from google.colab import auth as colab_auth  # type: ignore[import-not-found]

        colab_auth.authenticate_user()
    identity = resolve(token)
    print(f"gcsemb will access {_bucket(src)} as: {identity.description}")
    return identity


def _bucket(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


def _default_dst(src: str) -> str:
    """``gs://b/photos`` -> ``gs://b/embeddings``: beside the images, never inside them."""
    return f"{_bucket(src)}/embeddings" if "://" in src else str(Path(src).parent / "embeddings")


@dataclass
class Session:
    """Where the images are, where the embeddings go, and with which model.

    Attributes:
        src: The images (a :class:`~gcsemb.storage.Store`: a ``gs://`` prefix or glob, or a local
            folder, with the access to reach it).
        dst: The parquet dataset (reached with ``src``'s access).
        model: open_clip architecture or model-config JSON.
        emulator: The running local emulator in the demo, else None.
        photos: How many sample photographs the demo uploaded (0 with a real bucket).
    """

    src: Store
    dst: Store
    model: str
    emulator: Any = None
    photos: int = 0
    _pretrained: str | None = field(default=None, repr=False)

    @property
    def demo(self) -> bool:
        """Whether this session runs on the local emulator with sample images."""
        return self.emulator is not None

    @property
    def pretrained(self) -> str | None:
        """The weights: for the demo, seeded random weights saved once in the cache."""
        if self.demo and self._pretrained is None:
            from gcsemb.demo.job import demo_checkpoint

            self._pretrained = str(demo_checkpoint(self.model))
        return self._pretrained

    def embed(self, **options: Any) -> Any:
        """:func:`gcsemb.embed` from ``src`` to ``dst`` with this session's model.

        In a notebook a run waits up to 5 minutes for DST's lease (``wait_for_lease``): after a
        disconnect, the run of the lost runtime may still hold it until it goes stale.
        """
        from gcsemb.embedding.job import embed

        options.setdefault("wait_for_lease", 300.0)
        return embed(self.src, self.dst, model=self.model, pretrained=self.pretrained, **options)

    def embedder(self, **options: Any) -> Any:
        """The session's model, loaded once per process (see :func:`gcsemb.load_embedder`)."""
        from gcsemb.model.embedder import load_embedder

        return load_embedder(self.model, self.pretrained, token=self.src, **options)

    def read(self, **options: Any) -> tuple[Any, Any]:
        """``(df, matrix)`` of the embeddings at ``dst`` (see :func:`gcsemb.read_embeddings`)."""
        from gcsemb.explore.dataset import read_embeddings

        return read_embeddings(self.dst, **options)

    def add_demo_images(self, count: int = 6, *, change: int = 1) -> None:
        """Demo only: upload ``count`` new photographs and overwrite ``change`` existing ones.

        This is what happens to a real bucket between two runs; with a real bucket this does
        nothing (gcsemb never writes into your images).
        """
        if not self.demo:
            print("A real bucket: nothing uploaded (gcsemb never writes into your images).")
            return
        from PIL import Image, ImageOps

        from gcsemb.demo.samples import encode, sample_images

        fs = self.emulator.filesystem()
        bucket = self.src.path.split("/", 1)[0]
        new = list(sample_images(self.photos + count))[self.photos :]
        fs.pipe({f"{bucket}/{name}": data for name, data in new})
        self.photos += len(new)
        edited = []
        for name, data in sample_images(change):
            with Image.open(io.BytesIO(data)) as im:
                inverted = ImageOps.invert(im.convert("RGB"))
            fs.pipe_file(f"{bucket}/{name}", encode(inverted, "JPEG", quality=90))
            edited.append(name)
        print(
            f"Uploaded {len(new)} new photographs and replaced {len(edited)} "
            f"({', '.join(edited)}) with an edited version, as happens in a real bucket."
        )

    def close(self) -> None:
        """Stop the demo's emulator (its objects vanish); nothing happens to a real bucket."""
        global _EMULATOR
        if self.emulator is not None:
            self.emulator.stop()
            print("Stopped the local emulator; the demo's images and embeddings are gone.")
            if _EMULATOR is self.emulator:
                _EMULATOR = None
            self.emulator = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fields(self) -> list[tuple[str, Any]]:
        return [
            ("images", self.src.url),
            ("embeddings", self.dst.url),
            ("model", Path(self.model).stem if self.model.endswith(".json") else self.model),
            ("weights", "random (demo)" if self.demo else _shown(self._pretrained)),
            ("storage", "local emulator" if self.demo else "Google Cloud Storage"),
            ("identity", self.src.identity.description),
        ]

    def __repr__(self) -> str:
        # no token, no local path, no port: safe to keep in a notebook's stored output
        return "Session(" + ", ".join(f"{k}={v!r}" for k, v in self._fields()) + ")"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{k}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in self._fields()
        )
        return f"<table>{rows}</table>"


def _shown(pretrained: str | None) -> str | None:
    """The weights as a repr shows them: a checkpoint URL without its password or signature."""
    from gcsemb.model.checkpoints import public_url

    return public_url(pretrained) if pretrained else pretrained


_EMULATOR: Any = None  # the demo's emulator: one per kernel, however often setup() runs


def _demo_emulator(n_images: int) -> tuple[Any, int]:
    """The running demo emulator (started once per kernel) holding the sample images."""
    global _EMULATOR
    from gcsemb.demo.emulator import Emulator
    from gcsemb.demo.job import DEMO_BUCKET, upload_samples

    if _EMULATOR is None or not _EMULATOR.running:
        _EMULATOR = Emulator(buckets=[DEMO_BUCKET]).start()  # dies with the kernel
    return _EMULATOR, upload_samples(_EMULATOR.filesystem(), n_images=n_images)


def setup(
    src: str | None = None,
    dst: str | None = None,
    *,
    model: str | None = None,
    pretrained: str | None = None,
    token: Any = None,
    project: str | None = None,
    n_images: int = DEMO_IMAGES,
    embedded: bool = False,
) -> Session:
    """Turn a notebook's parameters into a :class:`Session`.

    Args:
        src: Your images (``gs://bucket/prefix``, a glob, or a local folder). None: the demo,
            i.e. a local GCS emulator holding sample photographs, and a tiny model with random
            weights (no account, no download, no GPU). The emulator is reached only through this
            session's handles: a real ``gs://`` URL used later in the same kernel goes to Google.
        dst: Where the parquet dataset goes; default ``gs://<bucket>/embeddings``.
        model: open_clip architecture (default ``ViT-B-32``; the demo's tiny model without src).
        pretrained: Weights tag or checkpoint (default ``laion2b_s34b_b79k``; random in the demo).
        token: Credentials (see :mod:`gcsemb.storage.auth`).
        project: Google Cloud project (billing for requester-pays buckets).
        n_images: How many sample photographs the demo uploads.
        embedded: The notebook needs the embeddings to exist: the demo makes them here (as
            notebook 02 does); with a real bucket they must already be at ``dst``.

    Returns:
        The session; call ``close()`` when done (stops the demo's emulator).
    """
    from gcsemb.view.widget_display import enable_colab_widgets

    enable_colab_widgets()  # Colab only, once: progress bars and the explorer render there
    if src is not None:
        from gcsemb.model.checkpoints import DEFAULT_MODEL, DEFAULT_PRETRAINED

        if model not in (None, DEFAULT_MODEL) and pretrained is None:
            raise ValueError(
                f"MODEL = {model!r} needs its weights too: set PRETRAINED to an open_clip weights "
                f"tag (open_clip.list_pretrained_tags_by_model({model!r}) lists them), a "
                "checkpoint file or a gs:// URL of one."
            )
        source = open_store(src, token=token, project=project)
        return Session(
            source,
            open_store(dst or _default_dst(src), token=source),
            model or DEFAULT_MODEL,
            _pretrained=pretrained or DEFAULT_PRETRAINED,
        )
    from gcsemb.demo.job import DEMO_BUCKET

    emulator, count = _demo_emulator(n_images)
    source = emulator.store(f"gs://{DEMO_BUCKET}/photos")
    session = Session(
        source,
        source.at(f"gs://{DEMO_BUCKET}/embeddings"),
        model or TINY_MODEL,
        emulator,
        n_images,
        _pretrained=pretrained,
    )
    print(
        f"No bucket given: using the local emulator with {count} sample images and a tiny "
        "random-weights model (real computations, meaningless numbers). Set SRC in the "
        "parameters cell to use your own bucket."
    )
    if embedded:
        summary = session.embed(progress=False)
        print(
            f"Embedded them into {session.dst.url} as notebook 02 does: "
            f"{summary.embedded + summary.duplicates} rows, {summary.failed} failures recorded."
        )
    return session


def hardware() -> str:
    """One line on what will run the model: the GPU, or the CPU and how to get a GPU."""
    import torch

    if torch.cuda.is_available():
        from gcsemb.model.embedder import auto_precision

        props = torch.cuda.get_device_properties(0)
        precision = auto_precision(torch.cuda.get_device_capability(0))
        return (
            f"GPU: {props.name} ({props.total_memory / 2**30:.0f} GiB); the model runs there "
            f"with {precision} autocast."
        )
    where_gpu = (
        "Runtime > Change runtime type > T4 GPU"
        if in_colab()
        else "a Workbench instance with a GPU attached"
        if in_workbench()
        else "a machine with an NVIDIA GPU and a CUDA build of torch"
    )
    return (
        f"No GPU visible to torch: the model runs on the CPU ({os.cpu_count()} cores). "
        f"For speed use {where_gpu}."
    )


def objects_frame(objects: Any, root: str | None = None) -> Any:
    """A DataFrame of listed objects: name (relative to ``root``), size, type, md5, generation.

    Example:
        >>> objects_frame(gcsemb.list_images("gs://b/photos"), "gs://b/photos")  # doctest: +SKIP
    """
    import pandas as pd

    rows = [o.to_dict() for o in objects]
    df = pd.DataFrame(rows, columns=["uri", "size", "content_type", "md5", "generation", "updated"])
    prefix = root.rstrip("/") + "/" if root else ""
    df.insert(0, "name", df["uri"].str.removeprefix(prefix))
    df["extension"] = df["name"].str.extract(r"(\.[^./]+)$", expand=False).str.lower()
    df["updated"] = pd.to_datetime(df["updated"], utc=True)
    return df


def size_table(df: Any) -> Any:
    """Count, total and median size (KB) per file format, with the content types stored."""
    by_format = df.groupby(df["extension"].fillna("(none)"))
    out = by_format["size"].agg(images="count", total_KB="sum", median_KB="median")
    out[["total_KB", "median_KB"]] = (out[["total_KB", "median_KB"]] / 1024).round(1)
    out["content_types"] = by_format["content_type"].agg(
        lambda types: ", ".join(sorted(set(types.fillna("unknown"))))
    )
    return out.sort_values(["images", "total_KB"], ascending=False)


def shards(session: Session) -> Any:
    """The parquet files under ``dst`` (and ``_errors/``) with their row counts."""
    import pandas as pd
    import pyarrow.parquet as pq

    fs, path = session.dst.fs, session.dst.path
    rows = []
    for name in sorted(fs.find(path)):
        if not name.endswith(".parquet"):
            continue
        with fs.open(name, "rb", cache_type="readahead") as f:  # gcsfs's default leaks tasks
            rows.append(
                {
                    "file": name[len(path.rstrip("/")) + 1 :],
                    "rows": pq.ParquetFile(f).metadata.num_rows,
                }
            )
    return pd.DataFrame(rows, columns=["file", "rows"])

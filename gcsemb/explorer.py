"""What the notebook explorer shows, and the actions that change it, without any widget.

:class:`ExplorerState` holds one embeddings dataset ready to search repeatedly: a text query, the
neighbours of an image, a random image, the current results and their place on the UMAP map.
:class:`gcsemb.widgets.Explorer` is the ipywidgets view of it; scripts and tests can drive the
state directly.

Example:
    >>> from gcsemb.explorer import ExplorerState
    >>> state = ExplorerState("gs://my-bucket/embeddings", umap=False)  # doctest: +SKIP
    >>> state.query("a dog on a beach", k=5).uri[0]  # doctest: +SKIP
    >>> state.select(state.selected[0], k=5)  # its neighbours  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from gcsemb.dataset_embedder import embedder_for
from gcsemb.search import (
    RESULT_COLUMNS,
    embeddings_of,
    model_tag_of,
    search_image,
    search_text,
)
from gcsemb.thumbnails import DEFAULT_SIZE_PX, row_thumbnails

if TYPE_CHECKING:
    import pandas as pd

    from gcsemb.embedder import Embedder


class ExplorerState:
    """An embeddings dataset, searched by text or by image; the latest results and what made them.

    Args:
        data: A dataset URL, the ``(df, matrix)`` pair of :func:`gcsemb.read_embeddings`, or a
            DataFrame with an ``embedding`` column.
        embedder: The dataset's model, for text queries (default: recovered from the dataset's
            model tag, or built from ``model``/``pretrained``, on the first text query).
        model: Architecture, as given to :func:`gcsemb.embed`.
        pretrained: Weights, as given to :func:`gcsemb.embed` (default: recovered from the
            dataset, see :func:`gcsemb.dataset_embedder.dataset_weights`).
        token: Credentials for ``gs://`` (default: the access the dataset was read with).
        coords: A projection from :func:`gcsemb.umap_project`; None computes it (or reuses
            the one saved next to the dataset) unless ``umap=False``.
        umap: Compute the UMAP map when ``coords`` is None.
        device: Where text queries are embedded.

    Attributes:
        df: The dataset's rows.
        matrix: Their embeddings.
        access: Credentials (or the dataset's handle) that fetch its images.
        coords: The UMAP projection, or None.
        results: The current results (``uri``, ``score``, ``md5``), best first.
        last: What made them: ``("text", query)`` or ``("image", uri)``; None before any.

    Example:
        >>> state = ExplorerState((df, X), embedder=embedder, umap=False)  # doctest: +SKIP
        >>> state.query("a photo of a cat", k=3).uri.tolist()  # doctest: +SKIP
    """

    def __init__(
        self,
        data: Any,
        embedder: Embedder | None = None,
        *,
        model: str | None = None,
        pretrained: str | None = None,
        token: Any = None,
        coords: pd.DataFrame | None = None,
        umap: bool = True,
        device: str = "auto",
    ) -> None:
        import pandas as pd

        self.df, self.matrix, dataset = embeddings_of(data, token=token)
        if not len(self.df):
            raise ValueError("The dataset holds no embeddings: run gcsemb.embed(src, dst) first.")
        self.access = token if token is not None else dataset
        self._embedder: Embedder | None = embedder
        self._weights = {"model": model, "pretrained": pretrained, "device": device}
        self._embedder_checked = False
        if coords is None and umap:
            from gcsemb.projection import umap_project

            coords = umap_project((self.df, self.matrix), dst=dataset, token=self.access)
        self.coords = coords
        self.results: pd.DataFrame = pd.DataFrame(columns=RESULT_COLUMNS)
        self.last: tuple[str, str] | None = None

    @property
    def model_tag(self) -> str | None:
        """The dataset's model tag (its ``model`` column), if it has one."""
        return model_tag_of(self.df)

    @property
    def selected(self) -> list[str]:
        """The URIs of the current results, best first."""
        return list(self.results["uri"])

    def query(self, text: str, k: int) -> pd.DataFrame:
        """The ``k`` images best matching ``text``; they become the current results.

        Example:
            >>> state.query("a red car", k=8)  # doctest: +SKIP
        """
        results = search_text((self.df, self.matrix), text, k=k, embedder=self.embedder())
        return self._keep(results, ("text", text))

    def select(self, uri: str, k: int) -> pd.DataFrame:
        """The ``k`` neighbours of the dataset image ``uri`` (itself first); the current results.

        Raises:
            KeyError: ``uri`` is not an image of the dataset.

        Example:
            >>> state.select("gs://my-bucket/photos/cat-17.jpg", k=8)  # doctest: +SKIP
        """
        if uri not in set(self.df["uri"]):
            raise KeyError(f"{uri} is not in this dataset: pick one of its uris (df.uri).")
        return self._keep(search_image((self.df, self.matrix), uri, k=k), ("image", uri))

    def random_uri(self, seed: int | None = None) -> str:
        """A URI of the dataset picked at random.

        Example:
            >>> state.select(state.random_uri(), k=8)  # doctest: +SKIP
        """
        return str(self.df["uri"].sample(1, random_state=seed).iloc[0])

    def embedder(self) -> Embedder:
        """The dataset's model, loaded (or checked against the dataset) on the first call only.

        Example:
            >>> state.embedder().embed_texts(["a cat"]).shape  # doctest: +SKIP
            (1, 512)
        """
        if not self._embedder_checked:
            if self.model_tag is None:
                raise ValueError("The rows name no model (no 'model' column) to embed text with.")
            self._embedder = embedder_for(
                self.model_tag,
                embedder=self._embedder,
                token=self.access,
                dataset=self.df.attrs.get("dataset"),  # a checkpoint it records, if unchanged
                **self._weights,
            )
            self._embedder_checked = True
        return self._embedder

    def thumbnails(self, size_px: int = DEFAULT_SIZE_PX) -> list[bytes | None]:
        """JPEG thumbnails of the current results (None where unavailable).

        Only images under the dataset's source are fetched (:mod:`gcsemb.fetch_scope`).

        Example:
            >>> jpegs = state.thumbnails(size_px=128)  # doctest: +SKIP
        """
        md5s = list(self.results["md5"]) if "md5" in self.results else None
        return row_thumbnails(
            self.selected, md5s, self.df.attrs, size_px=size_px, token=self.access
        )

    def map_rows(self) -> np.ndarray:
        """The rows of :attr:`coords` holding the current results, best first (empty: no map).

        Example:
            >>> state.coords.iloc[state.map_rows()]  # doctest: +SKIP
        """
        if self.coords is None:
            return np.zeros(0, np.int64)
        where = {u: i for i, u in enumerate(self.coords["uri"])}
        return np.asarray([where[u] for u in self.selected if u in where], np.int64)

    def _keep(self, results: pd.DataFrame, last: tuple[str, str]) -> pd.DataFrame:
        self.results, self.last = results, last
        return results

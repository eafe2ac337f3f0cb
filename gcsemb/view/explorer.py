"""What the notebook explorer shows, and the actions that change it, without any widget.

:class:`ExplorerState` holds one embeddings dataset ready to search repeatedly: a text query, the
neighbours of an image, a random image, the current results and their place on the UMAP map. On
the map it answers gestures at any size (a million points in milliseconds, see
:mod:`gcsemb.view.map_points`): :meth:`~ExplorerState.pick` the point nearest a spot,
:meth:`~ExplorerState.select_box` and :meth:`~ExplorerState.select_lasso` (a count and a sample),
and :meth:`~ExplorerState.highlight` any rows (near-duplicate groups, a list of URIs).
:class:`gcsemb.view.widgets.Explorer` is the ipywidgets view of it; scripts and tests can drive the
state directly.

Example:
    >>> from gcsemb.view.explorer import ExplorerState
    >>> state = ExplorerState("gs://my-bucket/embeddings")  # doctest: +SKIP
    >>> state.query("a dog on a beach", k=5).uri[0]  # doctest: +SKIP
    >>> state.select(state.selected[0], k=5)  # its neighbours  # doctest: +SKIP
    >>> state.select_box(0, 0, 2, 2).count  # doctest: +SKIP
    1234
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gcsemb.explore.inputs import embeddings_of, model_tag_of
from gcsemb.explore.ranking import RESULT_COLUMNS
from gcsemb.explore.search import search_image, search_text
from gcsemb.model.dataset_embedder import ModelChoice, chosen_model, embedder_for
from gcsemb.view.map_picture import Overlay
from gcsemb.view.thumbnails import DEFAULT_SIZE_PX, row_thumbnails

if TYPE_CHECKING:
    import pandas as pd

    from gcsemb.model.embedder import Embedder
    from gcsemb.view.map_points import MapPoints

SAMPLE = 24
"""Images shown from a selection (a sample: never thousands of thumbnails)."""
COLORS = ((230, 0, 126), (255, 120, 0), (0, 170, 255), (120, 220, 0), (150, 60, 255))
"""Colours of highlighted groups on the map, in turn; a selection is the first."""


@dataclass(frozen=True)
class Selection:
    """The points inside a box or lasso drawn on the map.

    Attributes:
        kind: ``"box"`` or ``"lasso"``.
        polygon: Its outline in map coordinates, ``(m, 2)``.
        rows: The rows of the projection inside it, ascending.
        sample: Up to :data:`SAMPLE` of them picked at random (the projection's columns, plus
            ``md5`` where the dataset has it): what the explorer shows as thumbnails.

    Example:
        >>> selection = state.select_box(0, 0, 2, 2)  # doctest: +SKIP
        >>> selection.count, selection.sample.uri.tolist()[:2]  # doctest: +SKIP
    """

    kind: str
    polygon: np.ndarray
    rows: np.ndarray
    sample: pd.DataFrame

    @property
    def count(self) -> int:
        """How many points it holds."""
        return len(self.rows)

    def __repr__(self) -> str:
        return f"Selection({self.kind}: {self.count:,} images, a sample of {len(self.sample)})"


class RowLookup:
    """The row of each URI, from a hash table built once (a million URIs in a fraction of a second).

    Example:
        >>> RowLookup(["a", "b", "a"]).rows(["b", "z", "a"]).tolist()
        [1, -1, 0]
    """

    def __init__(self, uris: Any) -> None:
        import pandas as pd

        index = pd.Index(uris)
        self._rows: np.ndarray | None = None
        if not index.is_unique:  # the first row of each URI
            first = ~index.duplicated()
            index, self._rows = index[first], np.flatnonzero(first)
        self._index = index

    def rows(self, uris: Sequence[str]) -> np.ndarray:
        """The row of each of ``uris`` (-1 where absent)."""
        at = self._index.get_indexer(list(uris))
        if self._rows is None:
            return at.astype(np.int64)
        return np.where(at >= 0, self._rows[at], -1)

    def __contains__(self, uri: object) -> bool:
        return uri in self._index


class ExplorerState:
    """An embeddings dataset, searched by text or by image; the latest results and what made them.

    Args:
        data: A dataset URL, the ``(df, matrix)`` pair of :func:`gcsemb.read_embeddings`, or a
            DataFrame with an ``embedding`` column.
        embedder: The dataset's model for text queries, loaded, or the
            :class:`~gcsemb.model.dataset_embedder.ModelChoice` that loads it on the first text
            query (default: recovered from the dataset's model tag).
        token: Credentials for ``gs://`` (default: the access the dataset was read with).
        coords: A projection from :func:`gcsemb.umap_project`; None computes it (or reuses
            the one saved next to the dataset) unless ``umap=False``.
        umap: Compute the UMAP map when ``coords`` is None.
        **choice: ``model=``, ``pretrained=``, ``device=``: a ModelChoice's fields, as keywords.

    Attributes:
        df: The dataset's rows.
        matrix: Their embeddings.
        access: Credentials (or the dataset's handle) that fetch its images.
        coords: The UMAP projection, or None.
        results: The current results (``uri``, ``score``, ``md5``), best first.
        last: What made them: ``("text", query)`` or ``("image", uri)``; None before any.
        highlights: Rows of :attr:`coords` marked on the map, by label (:meth:`highlight`).
        selection: The latest box or lasso selection (:class:`Selection`), or None.

    Example:
        >>> state = ExplorerState((df, X), embedder=embedder, umap=False)  # doctest: +SKIP
        >>> state = ExplorerState(dst, ModelChoice(pretrained="tuned.pt"))  # doctest: +SKIP
        >>> state.query("a photo of a cat", k=3).uri.tolist()  # doctest: +SKIP
    """

    def __init__(
        self,
        data: Any,
        embedder: Embedder | ModelChoice | None = None,
        *,
        token: Any = None,
        coords: pd.DataFrame | None = None,
        umap: bool = True,
        **choice: Any,
    ) -> None:
        import pandas as pd

        self._embedder = chosen_model(embedder, **choice)
        self._embedder_checked = False
        self.df, self.matrix, dataset = embeddings_of(data, token=token)
        if not len(self.df):
            raise ValueError("The dataset holds no embeddings: run gcsemb.embed(src, dst) first.")
        self.access = token if token is not None else dataset
        if coords is None and umap:
            from gcsemb.explore.projection import umap_project

            coords = umap_project((self.df, self.matrix), dst=dataset, token=self.access)
        self.coords = coords
        self.results: pd.DataFrame = pd.DataFrame(columns=RESULT_COLUMNS)
        self.last: tuple[str, str] | None = None
        self.highlights: dict[str, np.ndarray] = {}
        self.selection: Selection | None = None
        self._dataset_rows = RowLookup(self.df["uri"])
        self._map_rows = self._points = None
        if coords is not None:
            from gcsemb.view.map_points import MapPoints

            same = "uri" in coords and coords["uri"].equals(self.df["uri"])
            self._map_rows = self._dataset_rows if same else RowLookup(coords.get("uri", []))
            self._points = MapPoints(coords[["x", "y"]].to_numpy(np.float64))

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
        if uri not in self._dataset_rows:
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
            )
            self._embedder_checked = True
        return self._embedder

    def thumbnails(self, size_px: int = DEFAULT_SIZE_PX) -> list[bytes | None]:
        """JPEG thumbnails of the current results (None where unavailable).

        Only images under the dataset's source are fetched (:mod:`gcsemb.storage.scope`).

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
        if self._map_rows is None:
            return np.zeros(0, np.int64)
        rows = self._map_rows.rows(self.selected)
        return rows[rows >= 0]

    @property
    def points(self) -> MapPoints:
        """The map's points as plotted, indexed for picks and selections.

        Raises:
            ValueError: There is no map (``umap=False`` and no ``coords``).
        """
        if self._points is None:
            raise ValueError("No map to pick from: pass coords=umap_project(...) or umap=True.")
        return self._points

    def pick(self, x: float, y: float) -> pd.Series:
        """The projection's row of the point nearest to ``(x, y)`` on the map (a KD-tree query).

        Example:
            >>> state.pick(1.5, -2.0).uri  # doctest: +SKIP
            'gs://my-bucket/photos/cat-17.jpg'
        """
        return self.coords.iloc[self.points.nearest(x, y)]

    def select_box(
        self, x0: float, y0: float, x1: float, y1: float, *, sample: int = SAMPLE, seed: int = 0
    ) -> Selection:
        """Select the points inside the box between two corners (map coordinates).

        Returns:
            The selection (its count, and a random sample of ``sample`` rows to look at); it
            becomes the current :attr:`selection`.

        Example:
            >>> state.select_box(-1, -1, 1, 1).count  # doctest: +SKIP
            5120
        """
        corners = np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], dtype=np.float64)
        rows = self.points.in_box(x0, y0, x1, y1)
        return self._select("box", corners, rows, sample, seed)

    def select_lasso(
        self,
        polygon: Sequence[Sequence[float]] | np.ndarray,
        *,
        sample: int = SAMPLE,
        seed: int = 0,
    ) -> Selection:
        """Select the points inside a closed polygon (map coordinates), e.g. drawn freehand.

        Example:
            >>> lasso = [(0, 0), (4, 0), (4, 3), (1, 4)]
            >>> state.select_lasso(lasso).sample.uri[:3]  # doctest: +SKIP
        """
        outline = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        return self._select("lasso", outline, self.points.in_lasso(outline), sample, seed)

    def clear_selection(self) -> None:
        """Forget the current selection."""
        self.selection = None

    def highlight(self, items: Any, label: str) -> int:
        """Mark rows on the map under ``label`` (one colour each); None removes the label.

        Args:
            items: URIs, a DataFrame or Series with them (``uri`` column: search results,
                near-duplicate groups), or integer rows of :attr:`coords`.
            label: The name shown in the map's key; marking again replaces its rows.

        Returns:
            How many of them are on the map.

        Example:
            >>> groups = near_duplicates(dst, groups=True)  # doctest: +SKIP
            >>> state.highlight(groups, "near-duplicates")  # doctest: +SKIP
            240
        """
        import pandas as pd

        if items is None:
            self.highlights.pop(label, None)
            return 0
        if isinstance(items, pd.DataFrame):
            items = items["uri"]
        values = np.asarray(items)
        if values.dtype.kind in "iu":
            rows = values.astype(np.int64)
            rows = rows[(rows >= 0) & (rows < len(self.points))]
        else:
            rows = self._map_rows.rows(values.astype(str)) if self._map_rows else values[:0]
            rows = rows[rows >= 0]
        self.highlights[label] = np.asarray(rows, np.int64)
        return len(rows)

    def overlays(self) -> list[Overlay]:
        """What to paint on the map, top first: results, the selection, then each highlight.

        Example:
            >>> png = painted_png(picture, state.overlays())  # doctest: +SKIP
        """
        if self._points is None:
            return []
        xy = self._points.xy
        out = [Overlay(xy[self.map_rows()], style="rings")]
        if self.selection is not None:
            shown = xy[self.selection.sample.index.to_numpy(np.int64)]
            chosen = self.selection
            label = f"{chosen.kind}: {chosen.count:,} images, {len(chosen.sample)} sampled"
            out.append(Overlay(shown, COLORS[0], outline=self.selection.polygon, label=label))
        for i, (label, rows) in enumerate(self.highlights.items()):
            key = f"{label} ({len(rows):,})"
            out.append(Overlay(xy[rows], COLORS[(i + 1) % len(COLORS)], label=key))
        return out

    def sample_thumbnails(self, size_px: int = DEFAULT_SIZE_PX) -> list[bytes | None]:
        """JPEG thumbnails of the current selection's sample (None where unavailable).

        Example:
            >>> state.select_box(0, 0, 1, 1); jpegs = state.sample_thumbnails()  # doctest: +SKIP
        """
        if self.selection is None or not len(self.selection.sample):
            return []
        sample = self.selection.sample
        md5s = list(sample["md5"]) if "md5" in sample else None
        return row_thumbnails(
            list(sample["uri"]), md5s, self.df.attrs, size_px=size_px, token=self.access
        )

    def __repr__(self) -> str:
        parts = [f"{len(self.df):,} images"]
        parts.append(f"map of {len(self._points):,} points" if self._points else "no map")
        if self.last is not None:
            parts.append(f"results: {len(self.results)} for {self.last[0]} {self.last[1]!r}")
        if self.highlights:
            marked = ", ".join(f"{k!r} ({len(v):,})" for k, v in self.highlights.items())
            parts.append(f"highlighted: {marked}")
        if self.selection is not None:
            parts.append(f"selection: {self.selection.kind} of {self.selection.count:,}")
        return f"ExplorerState({'; '.join(parts)})"

    def _select(
        self, kind: str, outline: np.ndarray, rows: np.ndarray, sample: int, seed: int
    ) -> Selection:
        """Keep a selection with a random sample of its rows (sorted), with md5 where known."""
        rng = np.random.default_rng(seed)
        picked = np.sort(rng.choice(rows, min(sample, len(rows)), replace=False))
        frame = self.coords.iloc[picked].copy()
        frame.index = picked  # the projection's rows
        if "md5" not in frame and "md5" in self.df and "uri" in frame:
            at = self._dataset_rows.rows(frame["uri"])
            md5 = self.df["md5"].iloc[np.maximum(at, 0)].to_numpy(object)  # 24 rows, not 1M
            frame["md5"] = np.where(at >= 0, md5, None)
        self.selection = Selection(kind, outline, rows, frame)
        return self.selection

    def _keep(self, results: pd.DataFrame, last: tuple[str, str]) -> pd.DataFrame:
        self.results, self.last = results, last
        return results

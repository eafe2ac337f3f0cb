"""The notebook explorer: search by text, click through neighbours, see where they sit on the map.

:class:`Explorer` is an ipywidgets app over one embeddings dataset: a text box and a ``k`` slider
show the top matches as thumbnails; each thumbnail's "neighbours" button (or a URI typed in the
second box, or "random") shows the images most like it; the UMAP map beside them marks the current
results (a star on the best). The map is drawn once (a shaded density where a million points
overlap) and highlights are painted over it, so every action answers in a fraction of a second.
With ``ipyevents`` installed (Colab has it) the map takes the mouse: hover names the nearest
image, a click shows its neighbours, a drag selects a box (with Shift: a lasso) and shows its
count and a sample of thumbnails. Works in JupyterLab, Jupyter Notebook, VS Code and Colab (gcsemb
switches on Colab's custom widget manager for you). Everything it does can also be driven from
Python: :meth:`Explorer.query`, :meth:`Explorer.select`, :meth:`Explorer.pick`,
:meth:`Explorer.select_box`, :meth:`Explorer.select_lasso`, :meth:`Explorer.highlight`; what it
shows, without widgets, is an :class:`gcsemb.view.explorer.ExplorerState`; its widgets are made
in :mod:`gcsemb.view.explorer_controls`.

Example:
    >>> from gcsemb.view.widgets import Explorer
    >>> explorer = Explorer("gs://my-bucket/embeddings")  # doctest: +SKIP
    >>> explorer  # displays the widget  # doctest: +SKIP
    >>> explorer.query("a dog on a beach")  # doctest: +SKIP
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from gcsemb.view.explorer import COLORS, ExplorerState, Selection
from gcsemb.view.explorer_controls import ExplorerControls
from gcsemb.view.map_gestures import MOUSE_HINT, PYTHON_HINT, Gestures, watch
from gcsemb.view.map_picture import MapPicture, Overlay, painted_png, render_map
from gcsemb.view.widget_display import enable_colab_widgets, import_ipywidgets, widget_bundle

if TYPE_CHECKING:
    import pandas as pd

    from gcsemb.model.dataset_embedder import ModelChoice
    from gcsemb.model.embedder import Embedder


class Explorer(ExplorerControls):
    """Search a dataset by text, browse neighbours of an image, and see them on the UMAP map.

    Args:
        data: A dataset URL, the ``(df, matrix)`` pair of :func:`gcsemb.read_embeddings`, a
            DataFrame with an ``embedding`` column, or an
            :class:`~gcsemb.view.explorer.ExplorerState` already made (shown as it is: its results,
            selection and highlights too).
        embedder: The dataset's model for text queries, loaded, or a
            :class:`~gcsemb.model.dataset_embedder.ModelChoice` (default: recovered from the
            dataset).
        k: Initial number of results.
        color_by: Column colouring the map (if the projection has it).
        thumbnail_px: Displayed thumbnail width in pixels.
        **options: The rest of :class:`~gcsemb.view.explorer.ExplorerState`'s arguments, for a
            ``data`` that is not a state yet: ``token=`` (credentials for ``gs://``),
            ``coords=`` (a projection from :func:`gcsemb.umap_project`), ``umap=`` (show the
            UMAP map, computed or reused from beside the dataset, when there are no coords),
            and the model choice's ``model=``, ``pretrained=``, ``device=``.

    Attributes:
        state: What the explorer shows (:class:`gcsemb.view.explorer.ExplorerState`).
        results: The current results (``uri``, ``score``, ``md5``), best first.
        selected: Their URIs (highlighted on the map).
        widget: The root widget (displayed when the Explorer is the cell's value).

    Raises:
        TypeError: ``data`` is a state, and ``embedder`` or ``options`` are given too (they
            made the state: they cannot change it).

    Example:
        >>> ex = Explorer((df, X), model=TINY_MODEL, pretrained="tiny.pt")  # doctest: +SKIP
        >>> ex.query("a photo of a cat").uri[0]  # doctest: +SKIP
        >>> ex.select(ex.selected[0])  # neighbours of the best match  # doctest: +SKIP
        >>> state = ExplorerState(dst, umap=False)  # doctest: +SKIP
        >>> state.query("a dog", k=5); Explorer(state)  # its results, as widgets  # doctest: +SKIP
    """

    def __init__(
        self,
        data: Any,
        embedder: Embedder | ModelChoice | None = None,
        *,
        k: int = 12,
        color_by: str = "folder",
        thumbnail_px: int = 112,
        **options: Any,
    ) -> None:
        w = import_ipywidgets()
        enable_colab_widgets()
        if not isinstance(data, ExplorerState):
            data = ExplorerState(data, embedder, **options)
        elif embedder is not None or options:
            given = ", ".join(["embedder"] * (embedder is not None) + sorted(options))
            raise TypeError(
                f"Explorer(state) shows the state as it was made; {given} would not change it: "
                "pass them to ExplorerState(...), or the dataset to Explorer(...)."
            )
        self.state = data
        self._px = int(thumbnail_px)
        self._syncing = False
        self._make_controls(w, k, len(self.state.df), self.state.model_tag)
        self._map: MapPicture | None = None
        if self.state.coords is not None:
            shown = color_by if color_by in self.state.coords else None
            self._map = render_map(self.state.coords, shown)
            self._gestures = Gestures(self._map)
            self._repaint()
            self._events = watch(self.plot, lambda e: self._safely(self._on_map_event, e))
            self.map_hint.value = MOUSE_HINT if self._events else PYTHON_HINT
        else:
            self.plot.layout.display = "none"
        self.widget = self._wire(w)
        if self.state.last is not None:  # a state already searched: its results, as tiles
            self._show_results(time.perf_counter())
        if self.state.selection is not None:
            self._show_selection(time.perf_counter())

    def _wire(self, w: Any) -> Any:
        """Wire the controls to their actions; the root widget."""
        self.text.observe(self._on_text, names="value")
        self.uri_box.observe(self._on_uri, names="value")
        self.k_slider.observe(self._on_k, names="value")
        self.random_button.on_click(self._on_random)
        self.clear_button.on_click(lambda _button: self._safely(self.clear_selection))
        return self._layout(w)

    @property
    def results(self) -> pd.DataFrame:
        """The current results (``uri``, ``score``, ``md5``), best first."""
        return self.state.results

    @property
    def selected(self) -> list[str]:
        """The URIs of the current results (highlighted on the map)."""
        return self.state.selected

    @property
    def coords(self) -> pd.DataFrame | None:
        """The UMAP projection on the map, or None."""
        return self.state.coords

    # ----------------------------------------------------------------- actions (Python API)

    def query(self, text: str, k: int | None = None) -> pd.DataFrame:
        """Show the images best matching ``text``; returns the results (uri, score, md5).

        Example:
            >>> explorer.query("a red car", k=8)  # doctest: +SKIP
        """
        k = self._set_k(k)
        started = time.perf_counter()
        results = self.state.query(text, k)
        self._show_results(started)
        return results

    def select(self, uri: str, k: int | None = None) -> pd.DataFrame:
        """Show the neighbours of the dataset image ``uri`` (itself first); returns them.

        Example:
            >>> explorer.select("gs://my-bucket/photos/cat-17.jpg")  # doctest: +SKIP
        """
        k = self._set_k(k)
        started = time.perf_counter()
        results = self.state.select(uri, k)
        self._show_results(started)
        return results

    def pick(self, x: float, y: float, k: int | None = None) -> pd.DataFrame:
        """Show the neighbours of the image nearest to ``(x, y)`` on the map (as a click does).

        Example:
            >>> explorer.pick(1.5, -2.0)  # doctest: +SKIP
        """
        return self.select(str(self.state.pick(x, y)["uri"]), k)

    def select_box(self, x0: float, y0: float, x1: float, y1: float) -> Selection:
        """Select the images inside a box on the map: shows the count and a sample of them.

        Example:
            >>> explorer.select_box(-1, -1, 1, 1).count  # doctest: +SKIP
            5120
        """
        started = time.perf_counter()
        selection = self.state.select_box(x0, y0, x1, y1)
        self._show_selection(started)
        return selection

    def select_lasso(self, polygon: Any) -> Selection:
        """Select the images inside a polygon on the map (map coordinates), as a lasso does.

        Example:
            >>> explorer.select_lasso([(0, 0), (4, 0), (4, 3), (1, 4)])  # doctest: +SKIP
        """
        started = time.perf_counter()
        selection = self.state.select_lasso(polygon)
        self._show_selection(started)
        return selection

    def clear_selection(self) -> None:
        """Forget the selection: its outline and sample go."""
        self.state.clear_selection()
        self.selection_panel.layout.display = "none"
        self.sample_box.children = ()
        self._repaint()

    def highlight(self, items: Any, label: str) -> int:
        """Mark images on the map under ``label`` (URIs, a DataFrame with ``uri``, or rows).

        None removes the label. Returns how many are on the map.

        Example:
            >>> groups = gcsemb.near_duplicates(dst, groups=True)  # doctest: +SKIP
            >>> explorer.highlight(groups, "near-duplicates")  # doctest: +SKIP
        """
        shown = self.state.highlight(items, label)
        self._repaint()
        return shown

    def show(self) -> None:
        """Display the widget (for use inside functions and scripts run in a notebook)."""
        from IPython.display import display

        display(self.widget)

    # -------------------------------------------------------------------------- rendering

    def _set_k(self, k: int | None) -> int:
        if k is not None:
            self._sync(self.k_slider, max(self.k_slider.min, min(int(k), self.k_slider.max)))
        return int(self.k_slider.value)

    def _sync(self, control: Any, value: Any) -> None:
        """Set a control's value without re-triggering the search it starts."""
        self._syncing = True
        try:
            control.value = value
        finally:
            self._syncing = False

    def _show_results(self, started: float) -> None:
        """The state's results, under a heading naming the text or image that made them."""
        (kind, value), n = self.state.last, len(self.state.results)
        if kind == "text":
            self._sync(self.text, value)
            self._show(f"Top {n} for <i>{html.escape(value)}</i>", started)
        else:
            self._sync(self.uri_box, value)
            name = html.escape(value.rsplit("/", 1)[-1])
            self._show(f"Top {n} neighbours of <i>{name}</i>", started)

    def _show(self, heading: str, started: float) -> None:
        results = self.state.results
        tiles = zip(results["uri"], results["score"], self.state.thumbnails(), strict=True)
        neighbours = self._neighbours
        self.result_box.children = [
            self._tile(u, float(s), jpeg, neighbours) for u, s, jpeg in tiles
        ]
        self._repaint()
        seconds = time.perf_counter() - started
        self.status.value = f"{heading} ({seconds:.2f} s). Click <b>neighbours</b> under an image."

    def _repaint(self, *extra: Overlay) -> None:
        """Paint the current results, selection and highlights (and ``extra``) on the map."""
        if self._map is not None:
            self.plot.value = painted_png(self._map, [*extra, *self.state.overlays()])

    def _show_selection(self, started: float) -> None:
        """The selection's count and its sample's thumbnails, below the results."""
        selection = self.state.selection
        self.sample_box.children = self._samples(self.state.sample_thumbnails())
        self._repaint()
        seconds = time.perf_counter() - started
        self.selection_status.value = (
            f"<b>{selection.count:,}</b> images in the {selection.kind}; a random sample of "
            f"{len(selection.sample)} ({seconds:.2f} s)."
        )
        self.selection_panel.layout.display = "flex"

    # -------------------------------------------------------------------------- callbacks

    def _safely(self, action: Callable[..., Any], *args: Any) -> None:
        """Run a UI action; an error shows in the status line instead of vanishing."""
        try:
            action(*args)
        except Exception as e:
            self._show_error(e)

    def _neighbours(self, uri: str) -> None:
        """A tile's "neighbours" button."""
        self._safely(self.select, uri)

    def _on_text(self, change: dict[str, Any]) -> None:
        if not self._syncing and change["new"].strip():
            self._safely(self.query, change["new"])

    def _on_uri(self, change: dict[str, Any]) -> None:
        if not self._syncing and change["new"].strip():
            self._safely(self.select, change["new"].strip())

    def _on_k(self, change: dict[str, Any]) -> None:
        if self._syncing or self.state.last is None:
            return
        kind, value = self.state.last
        self._safely(self.query if kind == "text" else self.select, value)

    def _on_map_event(self, event: dict[str, Any]) -> None:
        """A mouse event on the map (ipyevents' dict): hover, click, box or lasso."""
        gesture = self._gestures.feed(event)
        if gesture is None:
            return
        (x, y), outline = gesture.outline[0], gesture.outline
        if gesture.kind == "hover":
            row = self.state.pick(x, y)
            name = html.escape(str(row.get("uri", row.name)).rsplit("/", 1)[-1])
            self.map_hint.value = f"<small>nearest: <b>{name}</b></small>"
        elif gesture.kind == "drawing":
            self._repaint(Overlay(np.zeros((0, 2)), COLORS[0], outline=outline))
        elif gesture.kind == "click":
            self.pick(x, y)
        elif gesture.kind == "box":
            self.select_box(x, y, *outline[2])
        else:
            self.select_lasso(outline)

    def _on_random(self, _button: Any) -> None:
        self._safely(self.select, self.state.random_uri())

    # ------------------------------------------------------------------------ display

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return widget_bundle(self.widget, **kwargs)

    def __repr__(self) -> str:
        state = self.state
        last = f" for {state.last[1]!r}" if state.last else ""
        marked = f", highlighted {list(state.highlights)}" if state.highlights else ""
        chosen = f", {state.selection!r}" if state.selection is not None else ""
        return (
            f"Explorer({len(state.df):,} images, model_tag={state.model_tag or '?'!r}, "
            f"showing {len(state.selected)}{last}{marked}{chosen})"
        )

"""The notebook explorer: search by text, click through neighbours, see where they sit on the map.

:class:`Explorer` is an ipywidgets app over one embeddings dataset: a text box and a ``k`` slider
show the top matches as thumbnails; each thumbnail's "neighbours" button (or a URI typed in the
second box, or "random") shows the images most like it; the UMAP map beside them marks the current
results (a star on the best). Works in JupyterLab, Jupyter Notebook, VS Code and Colab (gcsemb
switches on Colab's custom widget manager for you). Everything it does can also be driven from
Python: :meth:`Explorer.query`, :meth:`Explorer.select`.

Example:
    >>> from gcsemb.widgets import Explorer
    >>> explorer = Explorer("gs://my-bucket/embeddings")  # doctest: +SKIP
    >>> explorer  # displays the widget  # doctest: +SKIP
    >>> explorer.query("a dog on a beach")  # doctest: +SKIP
"""

from __future__ import annotations

import html
import io
import sys
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from gcsemb.search import embedder_for, embeddings_of, search_image, search_text
from gcsemb.thumbnails import DEFAULT_SIZE, dataset_scope, thumbnail_bytes

if TYPE_CHECKING:
    import pandas as pd

    from gcsemb.embedder import Embedder

_COLAB_READY = False


def _ipywidgets() -> Any:
    try:
        import ipywidgets
    except ImportError as e:
        raise ImportError(
            "The explorer needs ipywidgets: pip install 'gcsemb[notebook]' (or ipywidgets)."
        ) from e
    return ipywidgets


def enable_colab_widgets() -> bool:
    """In Colab, switch on the custom widget manager ipywidgets 8 needs (once); else nothing.

    Returns:
        Whether it ran (only inside Colab).
    """
    global _COLAB_READY
    if "google.colab" not in sys.modules:
        return False
    if not _COLAB_READY:
        try:
            from google.colab import output

            output.enable_custom_widget_manager()
            _COLAB_READY = True
        except Exception:  # an older Colab runtime: widgets may still render
            return False
    return True


class Explorer:
    """Search a dataset by text, browse neighbours of an image, and see them on the UMAP map.

    Args:
        data: A dataset URL, the ``(df, matrix)`` pair of :func:`gcsemb.read_embeddings`, or a
            DataFrame with an ``embedding`` column.
        embedder: The dataset's model, for text queries (default: recovered from the dataset's
            model tag, or built from ``model``/``pretrained``, on the first text query).
        model: Architecture, as given to :func:`gcsemb.embed`.
        pretrained: Weights, as given to :func:`gcsemb.embed` (default: recovered from the
            dataset; a checkpoint only from the local file it records, if still the same bytes,
            or from gcsemb's cache; see :func:`gcsemb.search.dataset_weights`).
        token: Credentials for ``gs://``.
        coords: A projection from :func:`gcsemb.umap_project`; None computes it (or reuses
            the one saved next to the dataset) unless ``umap=False``.
        umap: Show the UMAP map.
        k: Initial number of results.
        color_by: Column colouring the map (if the projection has it).
        thumbnail_size: Displayed thumbnail width in pixels.
        device: Where text queries are embedded.

    Attributes:
        results: The current results (``uri``, ``score``, ``md5``), best first.
        selected: Their URIs (highlighted on the map).
        widget: The root widget (displayed when the Explorer is the cell's value).

    Example:
        >>> ex = Explorer((df, X), model=TINY_MODEL, pretrained="tiny.pt")  # doctest: +SKIP
        >>> ex.query("a photo of a cat").uri[0]  # doctest: +SKIP
        >>> ex.select(ex.selected[0])  # neighbours of the best match  # doctest: +SKIP
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
        k: int = 12,
        color_by: str = "folder",
        thumbnail_size: int = 112,
        device: str = "auto",
    ) -> None:
        import pandas as pd

        widgets = _ipywidgets()
        enable_colab_widgets()
        self._df, self._matrix, self._dst = embeddings_of(data, token=token)
        if not len(self._df):
            raise ValueError("The dataset holds no embeddings: run gcsemb.embed(src, dst) first.")
        self._token = token if token is not None else self._dst  # the dataset's access
        self._scope = dataset_scope(self._df.attrs)  # thumbnails only from the dataset's source
        self._device = device
        self._embedder, self._model, self._pretrained = embedder, model, pretrained
        self._embedder_checked = False
        self._size = int(thumbnail_size)
        self._last: tuple[str, str] | None = None
        self._syncing = False
        self.results: pd.DataFrame = pd.DataFrame(columns=["uri", "score", "md5"])
        self.selected: list[str] = []
        if coords is None and umap:
            from gcsemb.projection import umap_project

            coords = umap_project((self._df, self._matrix), dst=self._dst, token=self._token)
        self.coords = coords
        self._color_by = color_by if coords is not None and color_by in coords else None

        w = widgets
        n = len(self._df)
        self.text = w.Text(
            placeholder="describe an image, then Enter (e.g. 'a cat on a sofa')",
            description="Text",
            continuous_update=False,
            layout=w.Layout(width="420px"),
        )
        self.k_slider = w.IntSlider(
            value=min(k, n),
            min=1,
            max=min(60, n),
            description="k",
            continuous_update=False,
            layout=w.Layout(width="260px"),
        )
        self.uri_box = w.Text(
            placeholder="an image URI of the dataset, then Enter",
            description="Image",
            continuous_update=False,
            layout=w.Layout(width="420px"),
        )
        self.random_button = w.Button(description="random image", icon="random")
        self.status = w.HTML(
            f"<b>{n:,}</b> images ({html.escape(str(self._df['model'].iloc[0]))}). "
            "Search by text, or pick an image to see its neighbours."
            if "model" in self._df
            else f"<b>{n:,}</b> images."
        )
        self.result_box = w.GridBox(
            layout=w.Layout(
                grid_template_columns=f"repeat(auto-fill, {self._size + 8}px)",
                grid_gap="6px",
                flex="1 1 420px",
                align_content="flex-start",
            )
        )
        self.plot = w.Image(format="png", layout=w.Layout(width="520px", flex="0 0 auto"))
        self._base: np.ndarray | None = None
        self._pixels: np.ndarray | None = None
        if coords is not None:
            self._draw_base()
            self.plot.value = self._render_plot()
        else:
            self.plot.layout.display = "none"

        self.text.observe(self._on_text, names="value")
        self.uri_box.observe(self._on_uri, names="value")
        self.k_slider.observe(self._on_k, names="value")
        self.random_button.on_click(self._on_random)
        self.widget = w.VBox(
            [
                w.HBox([self.text, self.k_slider], layout=w.Layout(flex_flow="row wrap")),
                w.HBox([self.uri_box, self.random_button], layout=w.Layout(flex_flow="row wrap")),
                self.status,
                w.HBox(
                    [self.result_box, self.plot],
                    layout=w.Layout(flex_flow="row wrap", align_items="flex-start"),
                ),
            ]
        )

    # ----------------------------------------------------------------- actions (Python API)

    def query(self, text: str, k: int | None = None) -> pd.DataFrame:
        """Show the images best matching ``text``; returns the results (uri, score, md5).

        Example:
            >>> explorer.query("a red car", k=8)  # doctest: +SKIP
        """
        k = self._set_k(k)
        started = time.perf_counter()
        if not self._embedder_checked:  # loaded (or checked against the dataset) once
            self._embedder = embedder_for(
                str(self._df["model"].iloc[0]),
                embedder=self._embedder,
                model=self._model,
                pretrained=self._pretrained,
                token=self._token,
                device=self._device,
                dataset=self._df.attrs.get("dataset"),  # a checkpoint it records, if unchanged
            )
            self._embedder_checked = True
        results = search_text((self._df, self._matrix), text, k=k, embedder=self._embedder)
        self._last = ("text", text)
        self._sync(self.text, text)
        self._show(results, f"Top {len(results)} for <i>{html.escape(text)}</i>", started)
        return results

    def select(self, uri: str, k: int | None = None) -> pd.DataFrame:
        """Show the neighbours of the dataset image ``uri`` (itself first); returns them.

        Example:
            >>> explorer.select("gs://my-bucket/photos/cat-17.jpg")  # doctest: +SKIP
        """
        k = self._set_k(k)
        started = time.perf_counter()
        if uri not in set(self._df["uri"]):
            raise KeyError(f"{uri} is not in this dataset: pick one of its uris (df.uri).")
        results = search_image((self._df, self._matrix), uri, k=k)
        self._last = ("image", uri)
        self._sync(self.uri_box, uri)
        name = html.escape(uri.rsplit("/", 1)[-1])
        self._show(results, f"Top {len(results)} neighbours of <i>{name}</i>", started)
        return results

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

    def _show(self, results: pd.DataFrame, heading: str, started: float) -> None:
        self.results = results
        self.selected = list(results["uri"])
        md5s = list(results["md5"]) if "md5" in results else None
        jpegs = thumbnail_bytes(
            self.selected, md5s, size=DEFAULT_SIZE, token=self._token, scope=self._scope
        )
        self.result_box.children = [
            self._tile(uri, float(score), jpeg)
            for uri, score, jpeg in zip(results["uri"], results["score"], jpegs, strict=True)
        ]
        if self._base is not None:
            self.plot.value = self._render_plot()
        seconds = time.perf_counter() - started
        self.status.value = f"{heading} ({seconds:.2f} s). Click <b>neighbours</b> under an image."

    def _tile(self, uri: str, score: float, jpeg: bytes | None) -> Any:
        w = _ipywidgets()
        size = f"{self._size}px"
        image = w.Image(
            value=jpeg or b"",
            format="jpeg",
            layout=w.Layout(width=size, height=size, object_fit="contain"),
        )
        name = html.escape(uri.rsplit("/", 1)[-1])
        label = w.HTML(
            f"<div title='{html.escape(uri, quote=True)}' style='font-size:11px;line-height:1.3;"
            f"width:{size};overflow:hidden;text-overflow:ellipsis;white-space:nowrap'>"
            f"<b>{score:.3f}</b> {name}</div>"
        )
        button = w.Button(
            description="neighbours",
            tooltip=f"images like {uri}",
            layout=w.Layout(width=size, height="26px"),
        )
        button.on_click(lambda _button, uri=uri: self._safely(self.select, uri))
        tile = w.VBox([image, label, button], layout=w.Layout(width=f"{self._size + 4}px"))
        tile.uri = uri
        return tile

    def _draw_base(self) -> None:
        """Render the map once; highlights are then painted onto a copy of its pixels."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        from gcsemb.viz import frame_limits, plot_projection

        fig = Figure(figsize=(6.4, 5.0), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        plot_projection(self.coords, ax, color_by=self._color_by, max_categories=10)
        fig.canvas.draw()
        self._base = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
        raw = self.coords[["x", "y"]].to_numpy(float)
        xy = ax.transData.transform(np.clip(raw, *frame_limits(raw)))  # as plotted
        height = self._base.shape[0]
        self._pixels = np.column_stack([xy[:, 0], height - xy[:, 1]])
        self._where = {u: i for i, u in enumerate(self.coords["uri"])}

    def _render_plot(self) -> bytes:
        from PIL import Image, ImageDraw

        image = Image.fromarray(self._base)
        draw = ImageDraw.Draw(image)
        rows = [self._where[u] for u in self.selected if u in self._where]
        for i in rows[1:][::-1]:  # black rings: no category colour is black
            x, y = self._pixels[i]
            draw.ellipse((x - 6, y - 6, x + 6, y + 6), outline=(0, 0, 0), width=2)
        if rows:  # the best match (or the picked image): a yellow star
            x, y = self._pixels[rows[0]]
            angles = np.pi / 2 + np.arange(10) * np.pi / 5
            radii = np.where(np.arange(10) % 2 == 0, 11.0, 4.5)
            star = [
                (x + r * np.cos(a), y - r * np.sin(a)) for r, a in zip(radii, angles, strict=True)
            ]
            draw.polygon(star, fill=(255, 200, 0), outline=(0, 0, 0), width=1)
        out = io.BytesIO()
        image.save(out, "PNG", optimize=False)
        return out.getvalue()

    # -------------------------------------------------------------------------- callbacks

    def _safely(self, action: Any, *args: Any) -> None:
        """Run a UI action; an error shows in the status line instead of vanishing."""
        try:
            action(*args)
        except Exception as e:
            self.status.value = (
                f"<span style='color:#b00020'>{html.escape(type(e).__name__)}: "
                f"{html.escape(str(e))}</span>"
            )

    def _on_text(self, change: dict[str, Any]) -> None:
        if not self._syncing and change["new"].strip():
            self._safely(self.query, change["new"])

    def _on_uri(self, change: dict[str, Any]) -> None:
        if not self._syncing and change["new"].strip():
            self._safely(self.select, change["new"].strip())

    def _on_k(self, change: dict[str, Any]) -> None:
        if self._syncing or self._last is None:
            return
        kind, value = self._last
        self._safely(self.query if kind == "text" else self.select, value)

    def _on_random(self, _button: Any) -> None:
        uri = str(self._df["uri"].sample(1).iloc[0])
        self._safely(self.select, uri)

    # ------------------------------------------------------------------------ display

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        widget = self.widget
        if callable(getattr(widget, "_repr_mimebundle_", None)):  # ipywidgets 8
            return widget._repr_mimebundle_(**kwargs)
        if not callable(getattr(widget, "_ipython_display_", None)):
            return None  # a closed widget: IPython shows repr(self)
        # ipywidgets 7 (Colab ships 7.7.1): a widget displays itself through _ipython_display_
        # and has no mimebundle. Return the bundle it would display, so that an Explorer ending
        # a cell renders as the cell's result, as it does under ipywidgets 8.
        text = repr(widget)
        bundle = {"text/plain": text if len(text) <= 110 else text[:110] + "…"}
        if widget._view_name is not None:
            bundle["application/vnd.jupyter.widget-view+json"] = {
                "version_major": 2,
                "version_minor": 0,
                "model_id": widget._model_id,
            }
            widget._handle_displayed()
        return bundle

    def __repr__(self) -> str:
        model = self._df["model"].iloc[0] if "model" in self._df else "?"
        return (
            f"Explorer({len(self._df):,} images, model={model!r}, "
            f"showing {len(self.selected)}{' for ' + repr(self._last[1]) if self._last else ''})"
        )

"""The Explorer's widgets, built and laid out: what it shows, apart from what it does.

:class:`ExplorerControls` makes the text and URI boxes, the ``k`` slider, the status line, the
result tiles, the map image and the selection panel; :class:`gcsemb.view.widgets.Explorer`
wires them to its actions. A widget is an attribute of the explorer (``explorer.text``,
``explorer.result_box``, ...), so a notebook can restyle or drive one.

Example:
    >>> explorer = Explorer(dst)  # doctest: +SKIP
    >>> explorer.text.value = "a dog on a beach"  # as if typed, then Enter  # doctest: +SKIP
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from gcsemb.view.widget_display import import_ipywidgets


class ExplorerControls:
    """The widgets of an Explorer (made by :meth:`_make_controls`, laid out by :meth:`_layout`).

    Attributes:
        text: The text query box.
        k_slider: How many results.
        uri_box: An image URI whose neighbours to show.
        random_button: Neighbours of a random image.
        status: The line above the results (what they are, how long they took, errors).
        result_box: The result tiles.
        plot: The map (a PNG).
        map_hint: The line under the map (what the mouse does, the point under it).
        selection_status: The selection's count.
        clear_button: Forgets the selection.
        sample_box: Thumbnails of a sample of the selection.
        selection_panel: The selection's status, button and sample (hidden without one).
    """

    _px: int  # thumbnail width in pixels

    def _make_controls(self, w: Any, k: int, n: int, tag: str | None) -> None:
        """The text and URI boxes, the ``k`` slider, the button, status line, tiles and map."""
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
            f"<b>{n:,}</b> images ({html.escape(tag)}). "
            "Search by text, or pick an image to see its neighbours."
            if tag is not None
            else f"<b>{n:,}</b> images."
        )
        self.result_box = w.GridBox(
            layout=w.Layout(
                grid_template_columns=f"repeat(auto-fill, {self._px + 8}px)",
                grid_gap="6px",
                flex="1 1 420px",
                align_content="flex-start",
            )
        ).add_class("gcsemb-results")
        self.plot = w.Image(format="png", layout=w.Layout(width="520px", flex="0 0 auto"))
        self.map_hint = w.HTML(layout=w.Layout(width="520px"))
        self.selection_status = w.HTML()
        self.clear_button = w.Button(description="clear selection", icon="times")
        self.sample_box = w.GridBox(
            layout=w.Layout(
                grid_template_columns=f"repeat(auto-fill, {self._px // 2 + 4}px)",
                grid_gap="4px",
            )
        ).add_class("gcsemb-selection")
        self.selection_panel = w.VBox(
            [w.HBox([self.selection_status, self.clear_button]), self.sample_box],
            layout=w.Layout(display="none"),
        )

    def _layout(self, w: Any) -> Any:
        """The root widget: the controls laid out in rows, the results beside the map."""
        row = w.Layout(flex_flow="row wrap")
        return w.VBox(
            [
                w.HBox([self.text, self.k_slider], layout=row),
                w.HBox([self.uri_box, self.random_button], layout=row),
                self.status,
                w.HBox(
                    [self.result_box, w.VBox([self.plot, self.map_hint])],
                    layout=w.Layout(flex_flow="row wrap", align_items="flex-start"),
                ),
                self.selection_panel,
            ]
        )

    def _tile(
        self, uri: str, score: float, jpeg: bytes | None, neighbours: Callable[[str], None]
    ) -> Any:
        """A result: its thumbnail, score and name, and a button showing its ``neighbours``."""
        w = import_ipywidgets()
        size = f"{self._px}px"
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
        button.on_click(lambda _button, uri=uri: neighbours(uri))
        tile = w.VBox([image, label, button], layout=w.Layout(width=f"{self._px + 4}px"))
        tile.uri = uri
        return tile

    def _samples(self, jpegs: list[bytes | None]) -> list[Any]:
        """Half-size thumbnails of a selection's sample."""
        w = import_ipywidgets()
        size = f"{self._px // 2}px"
        layout = {"width": size, "height": size, "object_fit": "contain"}
        return [w.Image(value=j or b"", format="jpeg", layout=w.Layout(**layout)) for j in jpegs]

    def _show_error(self, error: Exception) -> None:
        """Put ``error`` in the status line, in red."""
        self.status.value = (
            f"<span style='color:#b00020'>{html.escape(type(error).__name__)}: "
            f"{html.escape(str(error))}</span>"
        )

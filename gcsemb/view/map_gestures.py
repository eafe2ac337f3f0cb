"""Mouse gestures on the explorer's map: ipyevents' events turned into hover, click, box, lasso.

:class:`Gestures` follows a press, the moves and the release on the map picture and says what
they meant, in map coordinates: a press and release in place is a click, a drag a box between
its ends, a drag with Shift a lasso along its path; moves without a press are hovers. It knows
nothing of widgets: :class:`gcsemb.view.widgets.Explorer` feeds it ipyevents' dicts and acts.

Example:
    >>> import numpy as np
    >>> from gcsemb.view.map_picture import MapPicture
    >>> picture = MapPicture(np.zeros((100, 100, 3), np.uint8), np.ones(2), np.zeros(2))
    >>> gestures = Gestures(picture)
    >>> gestures.feed({"type": "mousedown", "dataX": 10, "dataY": 90})
    >>> gestures.feed({"type": "mouseup", "dataX": 30, "dataY": 60})
    Gesture(kind='box', outline=array([[10., 10.],
           [30., 10.],
           [30., 40.],
           [10., 40.]]))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gcsemb.view.map_picture import MapPicture

CLICK_PX = 4
"""A press and release at most this many pixels apart is a click, not a drag."""
MOUSE_HINT = (
    "<small>Hover: the nearest image · click: its neighbours · drag: select a box · "
    "Shift+drag: a lasso</small>"
)
PYTHON_HINT = (
    "<small>Select from Python: <code>explorer.select_box(x0, y0, x1, y1)</code>, "
    "<code>explorer.pick(x, y)</code>; <code>pip install ipyevents</code> to click, "
    "box and lasso on the map.</small>"
)


def watch(image: Any, callback: Callable[[dict[str, Any]], None]) -> tuple[Any, ...]:
    """Send the mouse events on an ipywidgets ``Image`` to ``callback``, through ipyevents.

    Presses and releases come as they happen; moves at most every 100 ms (throttled in the
    browser, so a drag never floods the kernel).

    Returns:
        The ipyevents ``Event`` widgets (keep them alive), or ``()`` without ipyevents.

    Example:
        >>> events = watch(image_widget, print)  # doctest: +SKIP
    """
    try:
        from ipyevents import Event
    except ImportError:
        return ()
    buttons = Event(
        source=image,
        watched_events=["mousedown", "mouseup", "mouseleave"],
        prevent_default_action=True,  # no browser drag of the picture
    )
    moves = Event(
        source=image, watched_events=["mousemove"], wait=100, throttle_or_debounce="throttle"
    )
    for events in (buttons, moves):
        events.on_dom_event(callback)
    return buttons, moves


@dataclass(frozen=True)
class Gesture:
    """What the mouse did on the map.

    Attributes:
        kind: ``"hover"``, ``"click"``, ``"box"``, ``"lasso"``, or ``"drawing"`` (a drag
            under way: its outline so far, to show).
        outline: For a hover or click, the one point ``(1, 2)``; for the others, the box's four
            corners or the lasso's path, in map coordinates.
    """

    kind: str
    outline: np.ndarray


class Gestures:
    """Turns a stream of ipyevents mouse events on the map picture into :class:`Gesture` s.

    Args:
        picture: The map picture the events happen on (its pixels and data transform).
    """

    def __init__(self, picture: MapPicture) -> None:
        self.picture = picture
        self._path: list[tuple[float, float]] = []

    def feed(self, event: dict[str, Any]) -> Gesture | None:
        """The gesture this event completes or continues (None: nothing to do yet).

        Example:
            >>> gestures.feed({"type": "mousemove", "dataX": 5, "dataY": 5}).kind  # doctest: +SKIP
            'hover'
        """
        here = self.picture.to_data(*self._pixel(event))
        kind = event.get("type")
        lasso = bool(event.get("shiftKey"))
        if kind == "mousedown":
            self._path = [here]
            return None
        if kind == "mousemove":
            if not self._path:
                return Gesture("hover", np.array([here]))
            self._path.append(here)
            return Gesture("drawing", self._outline(lasso))
        if kind in ("mouseup", "mouseleave") and self._path:
            self._path.append(here)
            outline, moved = self._outline(lasso), self._moved()
            self._path = []
            if not moved:
                return Gesture("click", np.array([here]))
            return Gesture("lasso" if lasso else "box", outline)
        return None

    def _pixel(self, event: dict[str, Any]) -> tuple[float, float]:
        """The event's position in the picture's own pixels (it may be shown scaled)."""
        if "dataX" in event:  # ipyevents on an Image: in the image's own pixels
            return float(event["dataX"]), float(event["dataY"])
        height, width = self.picture.rgb.shape[:2]
        sx = width / max(float(event.get("boundingRectWidth", width)), 1)
        sy = height / max(float(event.get("boundingRectHeight", height)), 1)
        return float(event["relativeX"]) * sx, float(event["relativeY"]) * sy

    def _outline(self, lasso: bool) -> np.ndarray:
        """The drag so far: the lasso's path, or the box between its ends."""
        path = np.asarray(self._path, dtype=np.float64)
        if lasso:
            return path
        (x0, y0), (x1, y1) = path[0], path[-1]
        return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])

    def _moved(self) -> bool:
        """Whether the drag went further than :data:`CLICK_PX` pixels from its start."""
        px = self.picture.to_pixels(np.asarray(self._path))
        return bool(np.abs(px - px[0]).max() > CLICK_PX)

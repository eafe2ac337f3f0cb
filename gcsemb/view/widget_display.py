"""Showing ipywidgets in every notebook frontend: Colab's widget manager, ipywidgets 7 and 8.

Example:
    >>> from gcsemb.view.widget_display import enable_colab_widgets
    >>> enable_colab_widgets()  # outside Colab: nothing to do
    False
"""

from __future__ import annotations

from typing import Any

from gcsemb.extras import require
from gcsemb.storage.auth import in_colab

_COLAB_READY = False


def import_ipywidgets() -> Any:
    """Import ipywidgets, or say which gcsemb extra installs it.

    Example:
        >>> w = import_ipywidgets()  # doctest: +SKIP
        >>> w.Button(description="go")  # doctest: +SKIP
    """
    return require(
        "ipywidgets", "notebook", "The explorer", "pip install 'gcsemb[notebook]' (or ipywidgets)"
    )


def enable_colab_widgets() -> bool:
    """In Colab, switch on the custom widget manager ipywidgets 8 needs (once); else nothing.

    Returns:
        Whether it ran (only inside Colab, where ``google.colab`` can be imported).

    Example:
        >>> enable_colab_widgets()  # outside Colab  # doctest: +SKIP
        False
    """
    global _COLAB_READY
    if not in_colab():
        return False
    if not _COLAB_READY:
        try:
            from google.colab import output

            output.enable_custom_widget_manager()
            _COLAB_READY = True
        except Exception:  # no google.colab (a COLAB_* variable outside Colab), an older runtime
            return False
    return True


def widget_bundle(widget: Any, **kwargs: Any) -> Any:
    """The mimebundle that shows ``widget`` as a cell's result, under ipywidgets 7 or 8.

    For an object's ``_repr_mimebundle_`` that displays the widget it holds; None for a
    closed widget (IPython then shows the object's repr).

    Example:
        >>> class Panel:
        ...     def _repr_mimebundle_(self, **kwargs):
        ...         return widget_bundle(self.widget, **kwargs)
    """
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

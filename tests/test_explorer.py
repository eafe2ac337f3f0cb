"""The explorer's map at any size, without widgets: picks, box and lasso selections, highlights.

A synthetic map (clusters plus noise) stands in for a UMAP projection; every answer is checked
against brute force over all points. The last tests drive the widget with the mouse events
ipyevents sends, so the gestures work without a browser.
"""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.path import Path  # noqa: E402

from gcsemb.view.explorer import ExplorerState  # noqa: E402
from gcsemb.view.map_picture import Overlay, painted_png, render_map  # noqa: E402
from gcsemb.view.map_points import MapPoints, density_raster  # noqa: E402

# a wavy lasso crossing many grid cells, in the map's coordinates
ANGLES = np.linspace(0, 2 * np.pi, 120, endpoint=False)
LASSO = np.column_stack([4 * np.cos(ANGLES) * (1 + 0.3 * np.sin(5 * ANGLES)), 5 * np.sin(ANGLES)])


def _map(n=6000, seed=0, photos=None):
    """Rows, embeddings and a projection (in reverse order: rows are matched by URI).

    With ``photos`` (a folder), each row is a small JPEG written there, the dataset's source.
    """
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-8, 8, (12, 2))
    xy = centres[rng.integers(0, 12, n)] + rng.normal(0, 0.6, (n, 2))
    xy[:50] = rng.uniform(-10, 10, (50, 2))  # sparse noise
    uris = [f"gs://b/f{i % 7}/{i}.jpg" for i in range(n)]
    if photos is not None:
        from PIL import Image

        photos.mkdir()
        for i in range(n):
            Image.new("RGB", (40, 30), (i % 256, 90, 0)).save(photos / f"{i}.jpg", "JPEG")
        uris = [(photos / f"{i}.jpg").as_uri() for i in range(n)]
    matrix = rng.standard_normal((n, 8)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    df = pd.DataFrame({"uri": uris, "md5": [f"m{i}" for i in range(n)]})
    df.attrs["dataset"] = {"source": str(photos)} if photos is not None else {}
    coords = pd.DataFrame({"uri": uris, "x": xy[:, 0], "y": xy[:, 1], "folder": "f"}).iloc[::-1]
    return df, matrix, coords.reset_index(drop=True)


@pytest.fixture(scope="module")
def state():
    df, matrix, coords = _map()
    return ExplorerState((df, matrix), coords=coords)


def test_a_pick_answers_the_nearest_point(state):
    xy = state.coords[["x", "y"]].to_numpy()
    for x, y in np.random.default_rng(1).uniform(-9, 9, (25, 2)):
        nearest = np.argmin(np.hypot(xy[:, 0] - x, xy[:, 1] - y))
        assert state.pick(x, y).uri == state.coords.uri[nearest]


def test_a_box_selection_counts_what_it_holds_and_samples_it(monkeypatch, state):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # not importable: not needed
    xy = state.coords[["x", "y"]].to_numpy()
    chosen = state.select_box(3, 2, -2, -4)  # any two corners
    inside = (xy[:, 0] >= -2) & (xy[:, 0] <= 3) & (xy[:, 1] >= -4) & (xy[:, 1] <= 2)
    assert chosen.count == inside.sum() > 100
    assert len(chosen.sample) == 24 and set(chosen.sample.index) <= set(np.flatnonzero(inside))
    # the sample carries each image's md5 (for its thumbnail), from the dataset's rows
    md5 = dict(zip(state.df.uri, state.df.md5, strict=True))
    assert [md5[u] for u in chosen.sample.uri] == list(chosen.sample.md5)
    assert state.selection is chosen and "box: " in repr(chosen)
    assert f"selection: box of {chosen.count:,}" in repr(state)
    again = state.select_box(3, 2, -2, -4)
    assert list(again.sample.uri) == list(chosen.sample.uri)  # same seed, same sample
    assert state.select_box(100, 100, 101, 101).count == 0


def test_a_lasso_holds_exactly_the_points_inside_it(state):
    xy = state.coords[["x", "y"]].to_numpy()
    chosen = state.select_lasso(LASSO, sample=5)
    inside = Path(np.vstack([LASSO, LASSO[:1]])).contains_points(xy)
    assert chosen.count == inside.sum() > 500
    assert np.array_equal(chosen.rows, np.flatnonzero(inside))
    assert len(chosen.sample) == 5 and chosen.kind == "lasso"
    assert state.select_lasso([(0, 0), (1, 1)]).count == 0  # a line holds nothing
    state.clear_selection()
    assert state.selection is None


def test_highlights_take_uris_frames_or_rows_and_show_on_the_map(state):
    groups = pd.DataFrame(  # the shape of near_duplicates(..., groups=True)
        {
            "uri": [*state.df.uri[:4], "gs://elsewhere/x.jpg"],
            "group": [0, 0, 1, 1, 2],
            "representative": [True, False, True, False, True],
            "score": 1.0,
        }
    )
    assert state.highlight(groups, "near-duplicates") == 4  # the one off the map is skipped
    assert state.highlight([5, 6, 10**9], "rows") == 2
    assert state.highlight(pd.Series(state.df.uri[:3]), "picked") == 3
    assert "'near-duplicates' (4)" in repr(state) and "'picked' (3)" in repr(state)
    keys = [o.label for o in state.overlays()]
    assert "near-duplicates (4)" in keys and "rows (2)" in keys
    marked = next(o for o in state.overlays() if o.label.startswith("near-duplicates"))
    on_map = state.coords.set_index("uri").loc[list(state.df.uri[:4]), ["x", "y"]]
    np.testing.assert_allclose(np.sort(marked.xy, axis=0), np.sort(on_map.to_numpy(), axis=0))
    state.highlight(None, "rows")
    state.highlight(None, "picked")
    assert "rows" not in state.highlights and "picked" not in state.highlights


def test_search_results_are_marked_on_the_map(state):
    state.results = pd.DataFrame({"uri": state.df.uri[[7, 3]], "score": 1.0, "md5": None})
    rows = state.map_rows()
    assert list(state.coords.uri[rows]) == list(state.df.uri[[7, 3]])  # best first
    results = state.overlays()[0]
    assert results.style == "rings" and len(results.xy) == 2


def test_the_density_raster_counts_every_point():
    rng = np.random.default_rng(0)
    xy = rng.normal(0, 1, (20_000, 2))
    lo, hi = np.array([-6.0, -6.0]), np.array([6.0, 6.0])
    counts = density_raster(xy, lo, hi, (64, 48))
    assert counts.shape == (48, 64) and counts.sum() == 20_000
    assert counts[24, 32] > counts[2, 2]  # denser in the middle of a Gaussian
    half = density_raster(xy, lo, hi, (64, 48), weights=(xy[:, 0] > 0).astype(float))
    assert half.sum() == (xy[:, 0] > 0).sum() and half[:, :32].sum() == 0  # x > 0: the right half


def test_a_large_map_is_drawn_as_density_and_highlights_paint_where_their_points_are():
    from PIL import Image

    rng = np.random.default_rng(0)
    coords = pd.DataFrame({"x": rng.normal(0, 1, 50_000), "y": rng.normal(0, 1, 50_000)})
    coords.loc[0, ["x", "y"]] = [3.2, 3.2]  # alone in its corner: drawn as a single point
    picture = render_map(coords)
    points = MapPoints(coords[["x", "y"]].to_numpy())
    x, y = np.rint(picture.to_pixels(points.xy[:1])[0]).astype(int)
    assert (picture.rgb[y - 1 : y + 2, x - 1 : x + 2] < 250).any()  # the lone point shows
    middle = np.rint(picture.to_pixels(np.zeros((1, 2)))[0]).astype(int)
    assert (picture.rgb[middle[1], middle[0]] < 200).any()  # the dense centre is shaded
    png = painted_png(picture, [Overlay(points.xy[:1], (230, 0, 126), label="lone")])
    painted = np.asarray(Image.open(__import__("io").BytesIO(png)).convert("RGB"))
    assert painted[y, x].tolist() == [230, 0, 126]  # the highlight sits on its point
    unchanged = np.all(painted == picture.rgb, axis=2)
    assert unchanged.mean() > 0.99  # only the few pixels involved change
    assert picture.to_data(*picture.to_pixels(np.array([[1.5, -0.5]]))[0]) == pytest.approx(
        (1.5, -0.5)
    )


def test_no_map_says_how_to_get_one():
    df, matrix, _ = _map(50)
    state = ExplorerState((df, matrix), umap=False)
    assert state.overlays() == [] and "no map" in repr(state)
    with pytest.raises(ValueError, match="umap_project"):
        state.select_box(0, 0, 1, 1)


# ------------------------------------------------------------------ the widget, by mouse events


def _events(picture, kind, xy, shift=False):
    px, py = picture.to_pixels(np.asarray([xy], dtype=float))[0]
    return {"type": kind, "dataX": px, "dataY": py, "shiftKey": shift}


def test_the_widget_answers_clicks_drags_and_lassos(tmp_path, monkeypatch):
    pytest.importorskip("ipywidgets")
    from gcsemb.view.widgets import Explorer

    monkeypatch.setenv("GCSEMB_CACHE", str(tmp_path / "cache"))
    df, matrix, coords = _map(600, photos=tmp_path / "photos")
    explorer = Explorer((df, matrix), coords=coords, k=5)
    picture = explorer._map
    blank = bytes(explorer.plot.value)
    assert explorer.selection_panel.layout.display == "none"

    for kind, spot in (("mousedown", (-8, -8)), ("mousemove", (0, 0)), ("mouseup", (8, 6))):
        explorer._on_map_event(_events(picture, kind, spot))  # a drag: a box
    chosen = explorer.state.selection
    assert chosen.kind == "box" and chosen.count == len(explorer.state.points.in_box(-8, -8, 8, 6))
    assert f"{chosen.count:,}</b> images in the box" in explorer.selection_status.value
    assert explorer.selection_panel.layout.display == "flex"
    thumbnails = [bytes(image.value) for image in explorer.sample_box.children]
    assert len(thumbnails) == len(chosen.sample) == 24
    assert all(jpeg.startswith(b"\xff\xd8") for jpeg in thumbnails)  # the sample's pictures
    assert bytes(explorer.plot.value) != blank  # its outline and sample are on the map

    path = [(-4, -4), (4, -4), (4, 4), (-4, 4)]
    explorer._on_map_event(_events(picture, "mousedown", path[0], shift=True))
    for spot in path[1:]:
        explorer._on_map_event(_events(picture, "mousemove", spot, shift=True))
    explorer._on_map_event(_events(picture, "mouseup", path[0], shift=True))
    assert explorer.state.selection.kind == "lasso"
    assert explorer.state.selection.count == len(explorer.state.points.in_box(-4, -4, 4, 4))

    explorer._on_map_event(_events(picture, "mousemove", (1, 1)))  # hovering names the nearest
    nearest = explorer.state.pick(1, 1).uri.rsplit("/", 1)[-1]
    assert nearest in explorer.map_hint.value
    explorer._on_map_event(_events(picture, "mousedown", (1, 1)))  # a click: its neighbours
    explorer._on_map_event(_events(picture, "mouseup", (1, 1)))
    assert explorer.selected[0] == explorer.state.pick(1, 1).uri and len(explorer.selected) == 5

    explorer.clear_button.click()
    assert explorer.state.selection is None and explorer.selection_panel.layout.display == "none"
    assert explorer.highlight(df.uri[:10], "mine") == 10 and "'mine'" in repr(explorer)


def test_the_widget_shows_a_state_made_before_as_it_is(tmp_path, monkeypatch):
    pytest.importorskip("ipywidgets")
    from gcsemb.view.widgets import Explorer

    monkeypatch.setenv("GCSEMB_CACHE", str(tmp_path / "cache"))
    df, matrix, coords = _map(200, photos=tmp_path / "photos")
    state = ExplorerState((df, matrix), coords=coords)
    state.select(df.uri[7], 4)
    state.select_box(-8, -8, 8, 6)
    explorer = Explorer(state, k=4)
    assert explorer.state is state and explorer.selected[0] == df.uri[7]
    assert [tile.uri for tile in explorer.result_box.children] == state.selected
    assert explorer.uri_box.value == df.uri[7] and "neighbours of" in explorer.status.value
    assert explorer.selection_panel.layout.display == "flex"
    with pytest.raises(TypeError, match="coords, umap would not change it"):
        Explorer(state, coords=coords, umap=False)


def test_a_model_choice_is_one_value_and_its_fields_are_keywords_too(monkeypatch):
    from gcsemb.explore import search
    from gcsemb.model import dataset_embedder
    from gcsemb.model.dataset_embedder import ModelChoice

    df, matrix, _ = _map(50)
    df["model"] = "tiny/weights"
    asked = []

    def loaded(choice, tag, *, token=None, dataset=None):
        asked.append(choice)
        return type("Fake", (), {"name": tag, "embed_texts": lambda self, t: matrix[[3]]})()

    monkeypatch.setattr(dataset_embedder.ModelChoice, "load", loaded)
    chosen = ModelChoice(pretrained="tuned.pt", device="cpu")
    as_value = search.search_text((df, matrix), "a cat", k=3, embedder=chosen)
    as_keywords = search.search_text(
        (df, matrix), "a cat", k=3, pretrained="tuned.pt", device="cpu"
    )
    assert as_value.uri.tolist() == as_keywords.uri.tolist() and as_value.uri[0] == df.uri[3]
    assert asked == [chosen, chosen]
    state = ExplorerState((df, matrix), ModelChoice(model="tiny"), umap=False, device="cpu")
    state.query("a dog", 2)
    assert asked[-1] == ModelChoice(model="tiny", device="cpu")
    with pytest.raises(TypeError, match="pretrianed"):
        search.search_text((df, matrix), "a cat", pretrianed="tuned.pt")

"""Looking at a dataset: UMAP map PNGs, search, near-duplicates, image grids, the explorer widget.

One dataset per module: sample photos (plus one exact copy) embedded on the GCS emulator with the
tiny random-weight CLIP. Random weights still give deterministic embeddings, so an image is its own
best match and exact copies score 1.0.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from gcsemb.demo.job import upload_samples  # noqa: E402
from gcsemb.embedding.job import embed  # noqa: E402
from gcsemb.errors import GcsembError  # noqa: E402
from gcsemb.explore.dataset import read_embeddings  # noqa: E402
from gcsemb.explore.duplicates import near_duplicates  # noqa: E402
from gcsemb.explore.projection import projection_path, umap_project  # noqa: E402
from gcsemb.explore.search import search_image, search_text  # noqa: E402
from gcsemb.model.embedder import TINY_MODEL, load_embedder  # noqa: E402
from gcsemb.view.viz import THUMBNAIL_GID, image_grid, plot_projection  # noqa: E402

GCSEMB = str(Path(sys.executable).parent / "gcsemb")
COPY = "copies/same bytes, other name.jpg"


@pytest.fixture(scope="module")
def dataset(gcs, tiny_ckpt):
    """60 sample photos + one exact copy, embedded into gs://BUCKET/emb."""
    fs = gcs.filesystem()
    bucket = f"viz-{os.getpid()}"
    fs.mkdir(bucket)
    upload_samples(fs, bucket, 60)
    dst = f"gs://{bucket}/emb"
    embed(f"gs://{bucket}/photos", dst, model=TINY_MODEL, pretrained=tiny_ckpt, progress=False)
    df, matrix = read_embeddings(dst)
    copy = df.index[df["uri"].str.endswith(COPY)][0]
    twin = df.index[(df["md5"] == df.at[copy, "md5"]) & (df.index != copy)][0]
    return types.SimpleNamespace(
        dst=dst,
        df=df,
        matrix=matrix,
        ckpt=tiny_ckpt,
        copy=df.at[copy, "uri"],
        original=df.at[twin, "uri"],
    )


def _coords(dataset):
    return umap_project(dataset.dst)  # the CLI's defaults: it reuses what this saves


def _png(fig_or_ax, path, dpi=100):
    fig = getattr(fig_or_ax, "figure", fig_or_ax)
    fig.savefig(path, dpi=dpi)
    return Image.open(path).convert("RGB")


def _cli(*args):
    return subprocess.run(
        [GCSEMB, *args], capture_output=True, text=True, timeout=300, env=dict(os.environ)
    )


# ------------------------------------------------------------------------------- projection


def test_projection_is_saved_beside_the_dataset_and_reused(dataset, gcs):
    first = _coords(dataset)
    assert list(first.columns[:4]) == ["uri", "x", "y", "folder"]
    assert len(first) == len(dataset.df) and np.isfinite(first[["x", "y"]]).all().all()
    assert list(first["uri"]) == list(dataset.df["uri"])
    assert {"astronaut", "chelsea", "copies"} <= set(first["folder"])
    assert "embedding" not in first
    saved = projection_path(dataset.dst, dataset.df["model"][0])
    assert "/_umap/" in saved and gcs.filesystem().exists(saved.removeprefix("gs://"))
    # the dataset still reads as before: the projection is not mistaken for embeddings
    plain = pd.read_parquet(dataset.dst, storage_options={"token": gcs.key_file})
    assert len(plain) == len(dataset.df) and "x" not in plain
    again = _coords(dataset)
    assert again.attrs["umap"]["reused"] and not first.attrs["umap"]["reused"]
    np.testing.assert_array_equal(again[["x", "y"]], first[["x", "y"]])
    other = umap_project(dataset.dst, n_neighbors=5, save=False)
    assert not other.attrs["umap"]["reused"]


# ------------------------------------------------------------------------------------ plots


def test_umap_png_is_readable_and_has_thumbnails(dataset, tmp_path):
    coords = _coords(dataset)
    ax = plot_projection(coords, color_by="folder", thumbnails=12)
    thumbs = [a for a in ax.artists if a.get_gid() == THUMBNAIL_GID]
    assert len(thumbs) >= 3  # never overlapping: tight clusters hold one each
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("astronaut (") for t in legend)
    assert ax.get_title(loc="left").startswith(f"UMAP of {len(coords)} images")
    with_thumbs = np.asarray(_png(ax, tmp_path / "thumbs.png"), dtype=np.int16)
    plain = np.asarray(
        _png(plot_projection(coords, color_by="folder"), tmp_path / "plain.png"), dtype=np.int16
    )
    height, width, _ = with_thumbs.shape
    assert width >= 800 and height >= 600
    assert with_thumbs.shape == plain.shape
    differs = np.abs(with_thumbs - plain).sum(axis=2) > 30
    renderer = ax.figure.canvas.get_renderer()
    for thumb in thumbs:  # each thumbnail's box on the PNG is a picture, not the bare scatter
        box = thumb.patch.get_window_extent(renderer)  # the frame, not the leader line
        rows = slice(int(height - box.y1) + 3, int(height - box.y0) - 3)
        cols = slice(int(box.x0) + 3, int(box.x1) - 3)
        assert max(box.width, box.height) >= 30 and differs[rows, cols].mean() > 0.5


def test_plot_into_a_given_axes_and_numeric_colours(dataset):
    import matplotlib.pyplot as plt

    coords = _coords(dataset)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
    assert plot_projection(coords, left, color_by="size") is left
    assert plot_projection(coords.iloc[:20], right, highlight=[coords.uri[3]]) is right
    assert len(fig.axes) == 3  # two plots and the colour bar of "size"
    with pytest.raises(KeyError, match="No column 'nope'"):
        plot_projection(coords, color_by="nope")
    with pytest.raises(ValueError, match="umap_project"):
        plot_projection(dataset.df)
    plt.close("all")


def test_cli_umap_writes_a_png_with_thumbnails(dataset, tmp_path):
    _coords(dataset)  # saved beside the dataset: the command reuses it
    out = tmp_path / "map.png"
    done = _cli("umap", dataset.dst, "--out", str(out), "--thumbnails", "10", "--dpi", "100")
    assert done.returncode == 0, done.stderr
    width, height = Image.open(out).size
    assert width >= 800 and height >= 600
    drawn = int(done.stderr.split(" thumbnails")[0].rsplit(" ", 1)[1])
    assert drawn >= 3 and "umap-learn projection reused from" in done.stderr, done.stderr


@pytest.mark.skipif(importlib.util.find_spec("cuml") is not None, reason="cuML is installed")
def test_cli_umap_backend_cuml_without_cuml_says_what_to_install(dataset, tmp_path):
    out = tmp_path / "map.png"
    done = _cli("umap", dataset.dst, "--out", str(out), "--backend", "cuml")
    assert done.returncode == 1 and not out.exists()
    assert "cuML is not installed" in done.stderr and "pip install cuml-cu12" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


# ----------------------------------------------------------------------------------- search


def test_search_with_an_image_of_the_dataset_returns_it_first(dataset):
    data = (dataset.df, dataset.matrix)
    for uri in [*dataset.df["uri"][:5], dataset.original, dataset.copy]:
        hits = search_image(data, uri, k=5)
        assert list(hits.columns[:2]) == ["uri", "score"] and len(hits) == 5
        assert hits.uri[0] == uri and hits.score[0] == pytest.approx(1.0, abs=1e-5)
        assert hits.score.is_monotonic_decreasing
    twin = search_image(data, dataset.original, k=2)
    assert list(twin.uri) == [dataset.original, dataset.copy]  # the copy ties at 1.0, second


def test_search_with_a_new_image_file(dataset, tmp_path, gcs):
    data = gcs.filesystem().cat(dataset.df.uri[7].removeprefix("gs://"))
    path = tmp_path / "query.jpg"
    path.write_bytes(data)
    hits = search_image(
        (dataset.df, dataset.matrix), str(path), k=3, model=TINY_MODEL, pretrained=dataset.ckpt
    )
    assert hits.uri[0] == dataset.df.uri[7] and hits.score[0] > 0.999
    pil = Image.open(io.BytesIO(data))
    assert search_image(dataset.dst, pil, k=1, pretrained=dataset.ckpt).uri[0] == hits.uri[0]


def test_search_text_uses_the_datasets_model(dataset):
    hits = search_text((dataset.df, dataset.matrix), "a photo", k=6, pretrained=dataset.ckpt)
    embedder = load_embedder(TINY_MODEL, dataset.ckpt)
    expected = dataset.matrix @ embedder.embed_texts(["a photo"])[0]
    assert list(hits.uri) == list(dataset.df.uri[np.argsort(-expected, kind="stable")[:6]])
    np.testing.assert_allclose(hits.score, np.sort(expected)[::-1][:6], rtol=1e-5)
    # the dataset records its checkpoint (path and sha256): found again, nothing passed
    again = search_text((dataset.df, dataset.matrix), "a photo", k=6)
    assert list(again.uri) == list(hits.uri)
    other = load_embedder(TINY_MODEL, None)  # same architecture, other (random) weights
    with pytest.raises(GcsembError, match="not comparable"):
        search_text((dataset.df, dataset.matrix), "a photo", embedder=other)


def test_near_duplicates_finds_the_copy(dataset):
    pairs = near_duplicates(dataset.dst, threshold=0.99)
    assert list(pairs.columns) == ["uri_a", "uri_b", "score", "exact"]
    exact = pairs[pairs.exact]
    assert len(exact) == 1  # the one exact copy in the samples
    assert {exact.uri_a.iloc[0], exact.uri_b.iloc[0]} == {dataset.original, dataset.copy}
    assert exact.score.iloc[0] == pytest.approx(1.0, abs=1e-5)
    assert pairs.index[pairs.exact][0] < 5  # among the most similar, first
    assert (pairs.score >= 0.99).all() and (pairs.uri_a != pairs.uri_b).all()


def test_near_duplicates_blocks_match_brute_force():
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((50, 16)).astype(np.float32)
    matrix[10] = matrix[3] + 0.01 * rng.standard_normal(16)
    matrix[41] = matrix[3]
    matrix[27] = matrix[40] + 0.02 * rng.standard_normal(16)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    df = pd.DataFrame({"uri": [f"u{i}" for i in range(50)], "md5": [f"m{i}" for i in range(50)]})
    df.loc[41, "md5"] = "m3"
    blocked = near_duplicates((df, matrix), threshold=0.98, chunk=7)
    sims = matrix @ matrix.T
    brute = {(f"u{i}", f"u{j}") for i in range(50) for j in range(i + 1, 50) if sims[i, j] >= 0.98}
    assert set(zip(blocked.uri_a, blocked.uri_b, strict=True)) == brute
    assert brute >= {("u3", "u10"), ("u3", "u41"), ("u27", "u40")}
    assert blocked.set_index(["uri_a", "uri_b"]).loc[("u3", "u41"), "exact"]


def test_image_grid_draws_every_result(dataset, tmp_path):
    hits = search_image((dataset.df, dataset.matrix), dataset.df.uri[0], k=7)
    fig = image_grid(hits, ncols=4)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 7
    assert shown[0].get_title().startswith("1.000")
    image = _png(fig, tmp_path / "grid.png")
    assert image.size[0] >= 600
    pairs = image_grid(near_duplicates((dataset.df, dataset.matrix), threshold=0.99))
    assert "near-duplicate pairs" in pairs._suptitle.get_text()


def test_cli_search_jsonl_table_and_grid(dataset, tmp_path):
    grid = tmp_path / "grid.png"
    args = ["search", dataset.dst, "a photo", "-k", "4", "--format", "jsonl"]
    done = _cli(*args, "--pretrained", dataset.ckpt, "--out", str(grid))
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rows) == 4 and all(set(r) == {"uri", "score"} for r in rows)
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    assert Image.open(grid).size[0] >= 600
    by_image = _cli("search", dataset.dst, "--image", dataset.copy, "-k", "3")
    assert by_image.returncode == 0, by_image.stderr
    lines = by_image.stdout.splitlines()
    assert lines[0].split() == ["RANK", "SCORE", "URI"] and lines[1].endswith(dataset.copy)
    recorded = _cli("search", dataset.dst, "a photo", "-k", "4")  # checkpoint not given again
    assert recorded.returncode == 0, recorded.stderr
    assert "using the checkpoint the dataset records" in recorded.stderr
    lines = recorded.stdout.splitlines()[1:]  # the same results as with --pretrained
    assert len(lines) == 4
    assert all(line.endswith(r["uri"]) for line, r in zip(lines, rows, strict=True))


# ------------------------------------------------------------------------------- thumbnails


def test_thumbnails_are_fetched_once_then_read_from_disk(dataset, monkeypatch):
    from gcsemb.view import thumbnails

    uris = [*dataset.df.uri[:6], dataset.dst.replace("/emb", "/photos/broken/truncated.jpg")]
    md5s = [*dataset.df.md5[:6], None]
    first = thumbnails.thumbnail_bytes(uris, md5s, size_px=64)
    assert all(first[:6]) and first[6] is None
    assert max(Image.open(io.BytesIO(first[0])).size) == 64

    def no_network(*args, **kwargs):
        raise AssertionError("fetched again")

    monkeypatch.setattr(thumbnails, "_fetch", no_network)
    assert thumbnails.thumbnail_bytes(uris[:6], md5s[:6], size_px=64) == first[:6]


# ---------------------------------------------------------------------------------- widget


def test_explorer_reacts_to_a_query_and_to_picking_an_image(dataset):
    import ipywidgets

    from gcsemb.view.widgets import Explorer

    _coords(dataset)
    ex = Explorer(dataset.dst, pretrained=dataset.ckpt, k=6)
    assert ex.result_box.children == () and ex.selected == []
    blank_map = bytes(ex.plot.value)
    assert blank_map.startswith(b"\x89PNG")

    results = ex.query("a photo")
    tiles = ex.result_box.children
    assert len(tiles) == 6 and list(results.uri) == ex.selected
    images = [t.children[0] for t in tiles]
    assert all(isinstance(i, ipywidgets.Image) for i in images)
    assert all(bytes(i.value[:2]) == b"\xff\xd8" for i in images)  # JPEG thumbnails
    assert bytes(ex.plot.value) != blank_map  # the results are marked on the map
    assert ex.text.value == "a photo"

    ex.text.value = "a photo of a rocket"  # typing in the box searches
    assert "a photo of a rocket" in ex.status.value and len(ex.result_box.children) == 6
    ex.k_slider.value = 3  # moving the slider re-runs the search
    assert len(ex.result_box.children) == 3 and len(ex.selected) == 3

    pick = dataset.df.uri[10]
    neighbours = ex.select(pick)
    assert neighbours.uri[0] == pick and ex.selected[0] == pick
    assert ex.result_box.children[0].uri == pick

    second = ex.result_box.children[1]
    second.children[2].click()  # its "neighbours" button
    assert ex.selected[0] == second.uri

    ex.uri_box.value = "gs://nowhere/x.jpg"  # a mistake shows in the status line
    assert "not in this dataset" in ex.status.value
    bundle = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "Explorer(" in repr(ex)


def test_explorer_in_colab_enables_the_custom_widget_manager(monkeypatch, dataset):
    from gcsemb.view import widget_display, widgets

    calls = []
    output = types.SimpleNamespace(enable_custom_widget_manager=lambda: calls.append(1))
    colab = types.ModuleType("google.colab")
    colab.output = output
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setattr(widget_display, "_COLAB_READY", False)
    widgets.Explorer((dataset.df, dataset.matrix), umap=False)
    assert calls == [1]


# ------------------------------------------------- computed apart from drawing, no widgets

TAG = "tiny-clip/random-seed0"


def _rows(tmp_path, n=12):
    """n local JPEGs under tmp_path/photos, as a dataset's rows (plus one outside the source)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    uris = []
    for i in range(n):
        path = photos / f"{i}.jpg"
        Image.new("RGB", (40, 30), (20 * i, 0, 0)).save(path, "JPEG")
        uris.append(f"file://{path}")
    outside = tmp_path / "outside.jpg"
    Image.new("RGB", (40, 30), "blue").save(outside, "JPEG")
    uris.append(f"file://{outside}")
    matrix = np.random.default_rng(0).standard_normal((len(uris), 8)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    df = pd.DataFrame({"uri": uris, "md5": [f"m{i}" for i in range(len(uris))], "model": TAG})
    df.attrs["dataset"] = {"source": str(photos)}
    return df, matrix


def test_explorer_state_searches_without_widgets(tmp_path, monkeypatch):
    from gcsemb.view import explorer

    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # not importable: not needed
    df, matrix = _rows(tmp_path)
    fake = types.SimpleNamespace(name=TAG, embed_texts=lambda texts: matrix[[3]])
    loads = []
    monkeypatch.setattr(
        explorer, "embedder_for", lambda *a, **kw: loads.append(1) or kw["embedder"]
    )
    coords = pd.DataFrame({"uri": df.uri[::-1].tolist(), "x": 0.0, "y": 0.0})
    state = explorer.ExplorerState((df, matrix), fake, coords=coords)
    assert state.selected == [] and state.last is None and len(state.map_rows()) == 0

    hits = state.query("a red square", 4)
    assert hits.uri[0] == df.uri[3] and hits.score[0] == pytest.approx(1.0, abs=1e-5)
    assert state.selected == list(hits.uri) and state.last == ("text", "a red square")
    assert list(coords.uri[state.map_rows()]) == state.selected  # best first, on the map
    state.query("another", 2)
    assert loads == [1]  # the model is loaded (or checked) once

    near = state.select(df.uri[12], 3)
    assert near.uri[0] == df.uri[12] and len(near) == 3 and state.last == ("image", df.uri[12])
    jpegs = state.thumbnails(size_px=32)
    assert jpegs[0] is None  # outside the dataset's source: never fetched
    assert all(j is not None and j.startswith(b"\xff\xd8") for j in jpegs[1:])
    with pytest.raises(KeyError, match="not in this dataset"):
        state.select("file:///nowhere.jpg", 3)
    assert state.random_uri(seed=1) in set(df.uri) and state.model_tag == TAG


def test_colab_widgets_are_left_alone_where_google_colab_cannot_be_imported(monkeypatch):
    from gcsemb.view import widget_display

    monkeypatch.setenv("COLAB_RELEASE_TAG", "x")  # looks like Colab...
    monkeypatch.setitem(sys.modules, "google.colab", None)  # ...but google.colab fails to import
    monkeypatch.setattr(widget_display, "_COLAB_READY", False)
    assert widget_display.enable_colab_widgets() is False
    assert widget_display._COLAB_READY is False


def test_projection_plot_is_computed_without_drawing():
    import matplotlib.pyplot as plt

    from gcsemb.view.plot_content import OTHER_COLOR, projection_plot

    rng = np.random.default_rng(0)
    n = 400
    folders = ["$a$"] * 200 + ["b"] * 150 + [f"c{i}" for i in range(50)]
    coords = pd.DataFrame(
        {
            "uri": [f"gs://b/{i}.jpg" for i in range(n)],
            "x": rng.standard_normal(n),
            "y": rng.standard_normal(n),
            "folder": folders,
            "size": rng.integers(0, 10_000, n),
        }
    )
    coords.loc[7, "x"] = 1e6  # one far outlier
    figures = plt.get_fignums()
    plot = projection_plot(
        coords, color_by="folder", highlight=["gs://b/9.jpg", "gs://x/no.jpg", "gs://b/2.jpg"]
    )
    assert plt.get_fignums() == figures  # computed, nothing drawn
    labels = [e.label for e in plot.legend]
    assert labels[:2] == [r"\$a\$ (200)", "b (150)"] and labels[-1] == "42 others (42)"
    grey = (plot.colors == matplotlib.colors.to_rgba(OTHER_COLOR)).all(axis=1)
    assert grey.sum() == 42 and grey[plot.order[:42]].all()  # the others drawn first, under
    assert plot.pinned.tolist().count(True) == 1 and plot.pinned[7]
    assert plot.xy[7, 0] <= plot.xlim[1] and plot.highlight.tolist() == [9, 2]
    assert plot.title == "UMAP of 400 images, coloured by folder" and plot.values is None
    numeric = projection_plot(coords, color_by="size")
    assert numeric.values is not None and numeric.legend == ()
    with pytest.raises(KeyError, match="No column"):
        projection_plot(coords, color_by="nope")


def test_a_large_projection_is_drawn_as_density_with_single_points_where_sparse():
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    xy = rng.normal(0, 1, (30_000, 2))
    xy[:5] = [[4, 4], [4, -4], [-4, 4], [-4, -4], [4.1, 4.05]]  # alone in the corners
    ax = plot_projection(xy)
    assert len(ax.images) == 1  # the shaded histogram, drawn as one image
    singles = np.concatenate([c.get_offsets() for c in ax.collections])
    assert 5 <= len(singles) < 3_000  # the sparse points only, never every point
    assert {tuple(p) for p in xy[:5]} <= {tuple(p) for p in np.asarray(singles)}
    scattered = plot_projection(xy, density=False)
    assert not scattered.images and len(scattered.collections[0].get_offsets()) == 30_000
    plt.close("all")


@pytest.mark.parametrize("n", [1, 12, 300])
def test_a_small_map_asked_for_density_draws_every_point(n):
    import matplotlib.pyplot as plt

    xy = np.random.default_rng(n).uniform(-5, 5, (n, 2))  # few enough that every point is sparse
    coords = pd.DataFrame({"uri": [f"gs://b/{i}.jpg" for i in range(n)], "x": xy[:, 0]})
    coords["y"] = xy[:, 1]
    ax = plot_projection(coords, density=True, highlight=["gs://b/0.jpg"])
    drawn = np.concatenate([c.get_offsets() for c in ax.collections])
    assert {tuple(p) for p in xy} <= {tuple(p) for p in np.asarray(drawn)}
    plt.close("all")


def test_thumbnail_plan_never_overlaps():
    from gcsemb.view.layout import plan_thumbnails

    rng = np.random.default_rng(1)
    xy = np.concatenate([rng.normal(c, 0.3, (300, 2)) for c in ((0, 0), (5, 5), (0, 6))])
    box = (600.0, 450.0)
    plan = plan_thumbnails(xy, 20, box)
    assert 3 <= len(plan.rows) <= 20 and len(set(plan.rows.tolist())) == len(plan.rows)
    span = xy.max(axis=0) - xy.min(axis=0)
    side = plan.points / np.asarray(box) * span  # a thumbnail's width and height in data units
    for i in range(len(plan.spots)):
        for j in range(i):
            gap = np.abs(plan.spots[i] - plan.spots[j])
            assert (gap >= side * 0.999).any()  # apart along x or y
    assert (plan.moved == (np.abs(plan.spots - xy[plan.rows]).max(axis=1) > 1e-5)).all()
    assert plan_thumbnails(xy, 5, box, thumbnail_points=40).points == 40


def test_grid_content_and_embedding_matrix():
    from gcsemb.explore.dataset import embedding_matrix
    from gcsemb.view.grid import grid_content

    pairs = pd.DataFrame(
        {"uri_a": ["gs://b/x/1.jpg"], "uri_b": ["gs://b/y/$2$.jpg"], "score": [0.99]}
    )
    grid = grid_content(pairs)
    assert grid.uris == ("gs://b/x/1.jpg", "gs://b/y/$2$.jpg") and grid.attrs is not None
    assert (
        grid.labels[1] == "pair 1 · 0.990\ny/\\$2\\$.jpg" and grid.title == "1 near-duplicate pairs"
    )
    listed = grid_content([f"gs://b/{i}.jpg" for i in range(7)], max_images=6)
    assert (listed.ncols, listed.nrows, listed.attrs) == (5, 2, None)
    assert embedding_matrix(pd.DataFrame({"embedding": []})).shape == (0, 0)
    stacked = embedding_matrix(pd.DataFrame({"embedding": [[1, 0], [0, 1.5]]}))
    assert stacked.dtype == np.float32 and stacked.tolist() == [[1, 0], [0, 1.5]]

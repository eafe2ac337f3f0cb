"""UMAP at scale: the backend choice, the reused kNN graph, the Embedding Atlas neighbours column.

The data: points in tight clusters on the unit sphere (CLIP-like: cosine neighbours are the
cluster mates), given as the ``(df, matrix)`` pair with ``dst=`` a local folder, so the saved
projection is a plain parquet file next to them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gcsemb.explore.projection import atlas_neighbors, projection_path, umap_project
from gcsemb.explore.umap_backends import (
    available,
    choose_backend,
    initial_layout,
    neighbourhood_preservation,
)

MODEL = "tiny/random"


def clustered(n: int, clusters: int = 12, dim: int = 32, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors in ``clusters`` tight clusters."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim)).astype(np.float32)
    points = centers[rng.integers(0, clusters, n)] + 0.15 * rng.standard_normal((n, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def rows(matrix: np.ndarray) -> pd.DataFrame:
    n = len(matrix)
    return pd.DataFrame(
        {
            "uri": [f"gs://b/photos/{i % 3}/{i}.jpg" for i in range(n)],
            "md5": [f"md5-{i}" for i in range(n)],
            "model": MODEL,
        }
    )


def exact_neighbours(matrix: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` nearest other rows by cosine, nearest first."""
    sims = matrix @ matrix.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


# ------------------------------------------------------------------------------- the backend


@pytest.mark.parametrize(
    ("requested", "cuml_available", "gpu", "chosen"),
    [
        ("auto", True, True, "cuml"),
        ("auto", True, False, "umap-learn"),  # cuML installed on a CPU-only machine
        ("auto", False, True, "umap-learn"),  # a GPU but no cuML
        ("auto", False, False, "umap-learn"),
        ("umap-learn", True, True, "umap-learn"),  # asked for by name: kept
        ("cuml", True, True, "cuml"),
    ],
)
def test_cuml_is_chosen_only_when_importable_and_a_gpu_is_present(
    requested, cuml_available, gpu, chosen
):
    assert choose_backend(requested, cuml_available=cuml_available, gpu=gpu) == chosen


def test_asking_for_cuml_where_it_cannot_run_says_what_to_install():
    with pytest.raises(ValueError, match="cuML is not installed.*pip install cuml-cu12"):
        choose_backend("cuml", cuml_available=False, gpu=True)
    with pytest.raises(ValueError, match="no CUDA device"):
        choose_backend("cuml", cuml_available=True, gpu=False)
    with pytest.raises(ValueError, match="auto, umap-learn, cuml"):
        choose_backend("umap", cuml_available=True, gpu=True)


@pytest.mark.skipif(importlib.util.find_spec("cuml") is not None, reason="cuML is installed")
def test_without_cuml_auto_runs_umap_learn_and_says_so(capsys):
    assert available("auto") == {"cuml_available": False, "gpu": False}
    coords = umap_project(clustered(200), n_epochs=20)
    line = f"UMAP of 200 points with umap-learn on {os.cpu_count()} cores\n"
    assert capsys.readouterr().out == line
    assert coords.attrs["umap"]["backend"] == "umap-learn"
    with pytest.raises(ValueError, match="cuML is not installed"):
        umap_project(clustered(200), backend="cuml")


def test_auto_init_leaves_umap_learns_slow_spectral_init_at_a_million_points():
    assert initial_layout("auto", 50_000, "umap-learn") == "spectral"
    assert initial_layout("auto", 1_000_000, "umap-learn") == "pca"
    assert initial_layout("auto", 1_000_000, "cuml") == "spectral"  # fast on the GPU
    assert initial_layout("random", 1_000_000, "umap-learn") == "random"  # asked for: kept


def test_the_pca_layout_is_umap_learns_without_copying_the_matrix(monkeypatch):
    """Past SPECTRAL_MAX points, umap-learn gets gcsemb's PCA layout (same axes as sklearn's)."""
    import tracemalloc

    from sklearn.decomposition import PCA

    from gcsemb.explore import umap_backends

    big = clustered(40_000, dim=64)
    monkeypatch.setattr(umap_backends, "PCA_BLOCK", 256)  # 16,384 rows of 512-d at scale
    tracemalloc.start()
    umap_backends.pca_layout(big, seed=0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < big.nbytes / 4  # the layout alone; sklearn copies the whole matrix first
    x = clustered(3000, dim=64)
    xy = umap_backends.pca_layout(x, seed=0)
    reference = PCA(n_components=2).fit_transform(x)
    for axis in range(2):  # the same axes, up to sign and scale
        assert abs(np.corrcoef(xy[:, axis], reference[:, axis])[0, 1]) > 0.999
    assert np.abs(xy).max() == pytest.approx(10, abs=1e-3)
    monkeypatch.setattr(umap_backends, "SPECTRAL_MAX", 1000)
    inits = []
    original = umap_backends.pca_layout
    monkeypatch.setattr(
        umap_backends, "pca_layout", lambda m, s: inits.append(len(m)) or original(m, s)
    )
    coords = umap_project(x, n_epochs=10)
    assert inits == [3000] and np.isfinite(coords[["x", "y"]]).all().all()


def test_a_pca_started_layout_is_the_one_umap_learn_makes_from_the_whole_matrix():
    """umap-learn is handed the starting layout instead of the matrix: same points, same map."""
    import umap

    from gcsemb.explore.neighbours import knn_graph
    from gcsemb.explore.umap_backends import fit_layout, pca_layout

    x = clustered(2000, dim=32)
    knn = knn_graph((rows(x), x), 15)
    params = {"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine", "n_epochs": 30}
    ours = fit_layout(x, knn, {**params, "seed": 7, "init": "pca"}, backend="umap-learn")
    reducer = umap.UMAP(
        random_state=7, init=pca_layout(x, 7), precomputed_knn=knn, low_memory=True, **params
    )
    np.testing.assert_array_equal(ours, reducer.fit_transform(x))


# ------------------------------------------------------------------------- the kNN graph, once


def test_umap_learn_gets_the_knn_graph_instead_of_searching_again(monkeypatch):
    import umap.umap_

    def searched(*args, **kwargs):
        raise AssertionError("umap-learn ran its own nearest-neighbour search")

    # above 4096 points umap-learn would run NN-descent through this function
    monkeypatch.setattr(umap.umap_, "nearest_neighbors", searched)
    coords = umap_project(clustered(4200, dim=16), n_epochs=10)
    assert len(coords) == 4200 and np.isfinite(coords[["x", "y"]]).all().all()


def test_a_seed_gives_the_same_layout_and_says_it_is_repeatable(capsys):
    matrix = clustered(300)
    a = umap_project(matrix, n_epochs=30, seed=42)
    b = umap_project(matrix, n_epochs=30, seed=42)
    np.testing.assert_allclose(a[["x", "y"]], b[["x", "y"]])
    assert "on one core (seed 42: a repeatable layout)" in capsys.readouterr().out


def test_the_layout_keeps_most_of_each_neighbourhood():
    matrix = clustered(600)
    knn = exact_neighbours(matrix, 15)
    ids = np.column_stack([np.arange(len(matrix)), knn])  # self first, as knn_graph gives
    coords = umap_project(matrix, n_epochs=100, seed=1)
    kept = neighbourhood_preservation(ids, coords[["x", "y"]].to_numpy(), k=15)
    shuffled = np.random.default_rng(0).permutation(coords[["x", "y"]].to_numpy())
    by_chance = neighbourhood_preservation(ids, shuffled, k=15)
    # clusters of ~50: half the neighbours survive a projection, few survive a shuffle
    assert kept > 0.3 > 0.1 > by_chance


def test_preservation_counts_shared_neighbours_and_skips_self():
    xy = np.array([[0.0, 0], [1, 0], [2, 0], [3, 0]])  # on a line: 2-D neighbours are adjacent
    ids = np.array([[0, 1, 2], [0, 1, 2], [2, 1, 3], [3, 2, 1]])  # row 1: a tie put self 2nd
    assert neighbourhood_preservation(ids, xy, k=2) == 1.0
    ids[2] = [2, 1, 0]  # row 2 keeps 1 of its 2 neighbours (0 is not next to it on the line)
    assert neighbourhood_preservation(ids, xy, k=2) == 7 / 8


# --------------------------------------------------------------------- Embedding Atlas's column


@pytest.fixture
def saved(tmp_path):
    """A 400-point projection saved under ``tmp_path`` (the dataset folder)."""
    matrix = clustered(400)
    matrix[7] = matrix[3]  # an exact copy: its twin ties with itself at distance 0
    frame = rows(matrix)
    coords = umap_project((frame, matrix), dst=str(tmp_path), n_epochs=20)
    path = Path(projection_path(str(tmp_path), MODEL))
    return matrix, frame, coords, path


def test_projection_file_carries_neighbours_as_embedding_atlas_reads_them(saved):
    matrix, frame, coords, path = saved
    table = pq.read_table(path)
    assert table.schema.field("neighbors").type == pa.struct(
        [("ids", pa.list_(pa.int64())), ("distances", pa.list_(pa.float32()))]
    )
    assert table.column("uri").to_pylist() == frame["uri"].tolist()  # rows in the same order
    neighbours = table.column("neighbors").to_pylist()
    others = 1 - matrix @ matrix.T
    np.fill_diagonal(others, np.inf)
    fourteenth = np.sort(others, axis=1)[:, 13]
    for row, value in enumerate(neighbours):
        ids, distances = value["ids"], value["distances"]
        assert len(ids) == len(distances) == 14
        assert row not in ids and all(0 <= i < len(matrix) for i in ids)
        assert distances == sorted(distances) and min(distances) >= 0
        # ids are rows of this file, their cosine distances, and no nearer image left out
        np.testing.assert_allclose(distances, others[row, ids], atol=1e-5)
        assert distances[-1] <= fourteenth[row] + 1e-5
    assert 7 in neighbours[3]["ids"] and neighbours[3]["distances"][0] == pytest.approx(0, abs=1e-6)
    meta = table.schema.metadata
    assert meta[b"gcsemb.umap.backend"] == b"umap-learn"
    assert json.loads(meta[b"gcsemb.umap.params"])["seed"] is None
    np.testing.assert_array_equal(table.column("x").to_numpy(), coords["x"].to_numpy())


def test_reusing_the_saved_projection_prints_nothing_and_names_its_backend(saved, capsys):
    matrix, frame, coords, path = saved
    capsys.readouterr()
    again = umap_project((frame, matrix), dst=str(path.parent.parent), n_epochs=20)
    assert again.attrs["umap"]["reused"] and again.attrs["umap"]["backend"] == "umap-learn"
    assert capsys.readouterr().out == ""
    np.testing.assert_array_equal(again[["x", "y"]], coords[["x", "y"]])


@pytest.mark.parametrize("n", [1, 2, 5])
def test_a_tiny_dataset_saves_what_neighbours_it_has(tmp_path, capsys, n):
    matrix = clustered(n)
    umap_project((rows(matrix), matrix), dst=str(tmp_path))
    assert capsys.readouterr().out.startswith(f"UMAP of {n} point{'s' if n > 1 else ''} with")
    saved = pq.read_table(projection_path(str(tmp_path), MODEL)).column("neighbors").to_pylist()
    assert [len(v["ids"]) for v in saved] == [n - 1] * n
    assert all(i not in v["ids"] for i, v in enumerate(saved))


def test_neighbours_an_index_left_empty_are_left_out_not_written_as_minus_one():
    ids = np.array([[0, 2, -1], [1, 0, 2], [0, 2, 1]])  # row 2: self not first (a tie)
    dist = np.array([[0, 0.1, 0], [0, 0.3, 0.4], [0, 0, 0.4]], np.float32)
    assert atlas_neighbors((ids, dist)).to_pylist() == [
        {"ids": [2], "distances": [pytest.approx(0.1)]},
        {"ids": [0, 2], "distances": [pytest.approx(0.3), pytest.approx(0.4)]},
        {"ids": [0, 1], "distances": [0.0, pytest.approx(0.4)]},
    ]


def _embedding_atlas() -> str | None:
    """The ``embedding-atlas`` command: $GCSEMB_EMBEDDING_ATLAS (e.g. in a venv of its own,
    it brings torch), or on PATH."""
    return os.environ.get("GCSEMB_EMBEDDING_ATLAS") or shutil.which("embedding-atlas")


@pytest.mark.slow
@pytest.mark.skipif(_embedding_atlas() is None, reason="embedding-atlas is not installed")
def test_embedding_atlas_exports_a_viewer_of_the_projection_file(saved, tmp_path):
    *_, path = saved
    out = tmp_path / "atlas"
    done = subprocess.run(
        [
            _embedding_atlas(),
            str(path),
            "--x",
            "x",
            "--y",
            "y",
            "--neighbors",
            "neighbors",
            "--export-application",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "index.html").exists()
    props = json.loads((out / "data" / "metadata.json").read_text())["props"]["data"]
    assert props["projection"] == {"x": "x", "y": "y"} and props["neighbors"] == "neighbors"
    shipped = pq.read_table(out / "data" / "dataset.parquet")
    assert shipped.column("neighbors").to_pylist() == pq.read_table(path)["neighbors"].to_pylist()


def test_cli_umap_without_matplotlib_names_the_install(monkeypatch, tmp_path, capsys):
    import sys

    from gcsemb.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # not installed
    code = main(["umap", str(tmp_path), "--out", str(tmp_path / "map.png")])
    err = capsys.readouterr().err
    assert code != 0 and "pip install 'gcsemb[viz]'" in err and "ModuleNotFoundError" not in err

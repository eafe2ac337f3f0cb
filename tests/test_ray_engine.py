"""The Ray Data engine against the local engine on the emulator: same rows, errors and re-runs.

One local Ray (the machine's 2 CPUs) and one pair of runs for the module; the asserts share them.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the Ray engine needs pip install 'gcsemb[ray]'")

from gcsemb.demo.job import upload_samples  # noqa: E402
from gcsemb.embedding.job import embed  # noqa: E402
from gcsemb.explore.dataset import read_embeddings, read_errors  # noqa: E402
from gcsemb.model.embedder import TINY_MODEL  # noqa: E402

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


@pytest.fixture(scope="module")
def local_ray(gcs, tiny_ckpt):
    """A local Ray whose workers see the emulator and the test's model cache.

    One CPU per fetch task here (not a quarter): on two cores, starting worker processes (each
    imports pyarrow and gcsfs) costs more than fetching the few test images concurrently.
    """
    env = {
        k: os.environ[k]
        for k in ("STORAGE_EMULATOR_HOST", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "GCSEMB_CACHE")
    }
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=512 * 1024**2,
        runtime_env={"env_vars": env},
        log_to_driver=False,
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("gcsemb.embedding.ray_engine.FETCH_CPUS", 1)
        yield
    ray.shutdown()


@pytest.fixture(scope="module")
def runs(local_ray, gcs, tiny_ckpt):
    """The same 66 images (3 broken, 3 copies) embedded by each engine, then the Ray one again."""
    bucket = f"ray-{os.getpid()}"
    fs = gcs.filesystem()
    fs.mkdir(bucket)
    count = upload_samples(fs, bucket, 60)
    last = sorted(fs.find(f"{bucket}/photos"))[-1]
    fs.pipe(f"{bucket}/photos/top-level.png", fs.cat(last))  # a copy, outside any folder
    copy = f"{bucket}/photos/copies/same bytes, other name.jpg"
    fs.pipe(f"{bucket}/photos/copies/twin.jpg", fs.cat(copy))  # a copy in the same folder
    src = f"gs://{bucket}/photos"
    kw = dict(model=TINY_MODEL, pretrained=tiny_ckpt, progress=False)
    local = embed(src, f"gs://{bucket}/local", **kw)
    first = embed(src, f"gs://{bucket}/ray", engine="ray", batch_size=16, **kw)
    again = embed(src, f"gs://{bucket}/ray", engine="ray", **kw)
    return {
        "bucket": bucket,
        "count": count + 2,
        "local": local,
        "ray": first,
        "again": again,
        "kw": kw,
    }


def test_same_rows_as_the_local_engine(runs):
    bucket = runs["bucket"]
    a, ma = read_embeddings(f"gs://{bucket}/local")
    b, mb = read_embeddings(f"gs://{bucket}/ray")
    assert len(b) == runs["count"] - 3 and b["uri"].is_unique
    assert set(a["uri"]) == set(b["uri"])
    assert list(a.columns) == list(b.columns)
    b_index = {u: i for i, u in enumerate(b["uri"])}
    order = [b_index[u] for u in a["uri"]]
    cosine = np.sum(ma * mb[order], axis=1)
    assert cosine.min() >= 0.999
    cols = ["md5", "size", "generation", "updated", "width", "height", "model"]
    left = a[["uri", *cols]].set_index("uri").sort_index()
    right = b[["uri", *cols]].set_index("uri").sort_index()
    assert left.equals(right)


def test_same_errors_and_counts(runs):
    bucket = runs["bucket"]
    local, first = runs["local"], runs["ray"]
    ea = read_errors(f"gs://{bucket}/local")
    eb = read_errors(f"gs://{bucket}/ray")
    assert sorted(zip(ea["uri"], ea["stage"], strict=True)) == sorted(
        zip(eb["uri"], eb["stage"], strict=True)
    )
    assert len(eb) == 3 and set(eb["stage"]) == {"decode"}
    assert (first.seen, first.failed, first.model) == (local.seen, local.failed, local.model)
    # twins in one folder are fetched and embedded once; one in another folder on its own
    assert (local.duplicates, first.duplicates) == (3, 1)
    assert first.embedded + first.duplicates == local.embedded + local.duplicates
    df, matrix = read_embeddings(f"gs://{bucket}/ray")
    twins = df.index[df["uri"].str.contains("/copies/")]
    np.testing.assert_array_equal(matrix[twins[0]], matrix[twins[1]])


def test_rerun_skips_everything(runs):
    again = runs["again"]
    assert (again.seen, again.skipped, again.embedded, again.failed) == (
        runs["count"],
        runs["count"],
        0,
        0,
    )


def test_rerun_after_changes_embeds_only_them(runs, gcs):
    bucket, fs = runs["bucket"], gcs.filesystem()
    chelsea = sorted(fs.glob(f"{bucket}/photos/chelsea/*"))[0]
    first = sorted(fs.glob(f"{bucket}/photos/astronaut/*"))[0]
    fs.pipe(f"{bucket}/photos/new/one.jpg", fs.cat(chelsea))
    fs.pipe(first, fs.cat(chelsea))
    third = embed(f"gs://{bucket}/photos", f"gs://{bucket}/ray", engine="ray", **runs["kw"])
    assert third.embedded + third.duplicates == 2 and third.skipped == runs["count"] - 1
    df, _ = read_embeddings(f"gs://{bucket}/ray")
    assert df["uri"].is_unique and len(df) == runs["count"] - 3 + 1
    assert df.set_index("uri").loc[f"gs://{first}", "md5"] == fs.info(first)["md5Hash"]


def test_preprocess_without_weights_matches_the_embedder(tiny_ckpt):
    from PIL import Image

    from gcsemb.embedding.ray_tasks import preprocessor
    from gcsemb.model.embedder import _create, load_embedder

    image = Image.effect_mandelbrot((97, 61), (-2, -1, 1, 1), 50).convert("RGB")
    ours = preprocessor(TINY_MODEL, tiny_ckpt)
    theirs = load_embedder(TINY_MODEL, tiny_ckpt)
    assert ours.image_size == theirs.image_size
    shipped = ours.preprocess(image)
    assert shipped.dtype == np.uint8  # a quarter of the float tensor's bytes
    model_input = ours.model_input(shipped[None])
    np.testing.assert_array_equal(model_input[0], theirs.preprocess(image))
    # a weights tag sets its own mean/std: compare with open_clip's model built for it
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    tag = ("ViT-B-32", "laion2b_s34b_b79k")
    net = _create(tag[0], None, tag_cfg=open_clip.get_pretrained_cfg(*tag))
    want = image_transform_v2(PreprocessCfg(**net.visual.preprocess_cfg), is_train=False)
    got = preprocessor(*tag).model_input(preprocessor(*tag).preprocess(image)[None])[0]
    np.testing.assert_array_equal(got, want(image))


def test_cli_flags_and_missing_ray_message(tmp_path):
    from gcsemb.cli import build_parser

    args = build_parser().parse_args(
        ["embed", "gs://b/p", "gs://b/e", "--engine", "ray", "--address", "auto"]
        + ["--workers", "4", "--gpus-per-worker", "0.5"]
    )
    assert (args.engine, args.address, args.workers, args.gpus_per_worker) == (
        "ray",
        "auto",
        4,
        0.5,
    )
    (tmp_path / "photos").mkdir()
    src, dst = str(tmp_path / "photos"), str(tmp_path / "emb")
    code = (
        "import sys\n"
        "from gcsemb.embedding.job import embed\n"
        f"embed({src!r}, {dst!r}, progress=False)\n"
        "print('ray' in sys.modules)\n"
        "sys.modules['ray'] = None\n"
        f"try: embed({src!r}, {dst!r}, engine='ray')\n"
        "except ImportError as e: print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [
        "False",
        "The Ray engine needs Ray Data: pip install 'gcsemb[ray]'",
    ]


def test_a_workers_gcsemb_error_reaches_the_caller_as_itself(local_ray):
    from gcsemb.embedding.ray_engine import _reraise
    from gcsemb.errors import AccessDenied

    def denied(batch):
        raise AccessDenied("svc@p.iam may not read gs://b/x.jpg (403). Grant it objectViewer.")

    with pytest.raises(AccessDenied, match=r"^svc@p.iam may not read gs://b/x.jpg \(403\)"):
        try:
            ray.data.range(4).map_batches(denied).materialize()
        except Exception as e:
            _reraise(e)


def test_denied_source_stops_at_once(tiny_ckpt, monkeypatch, tmp_path):
    import time

    from servers import StubServer, deny

    from gcsemb.errors import AccessDenied

    with StubServer(deny(403)) as server:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
        started = time.monotonic()
        with pytest.raises(AccessDenied, match="may not list"):
            embed(
                "gs://private/photos",
                str(tmp_path / "emb"),
                model=TINY_MODEL,
                pretrained=tiny_ckpt,
                engine="ray",
            )
        assert time.monotonic() - started < 30

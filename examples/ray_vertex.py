"""Embed a bucket on a Ray cluster with GPUs: Ray on Vertex AI, or KubeRay on GKE.

Edit the settings below, then run this file where it can reach the cluster:

- Ray on Vertex AI: from a Workbench notebook or any machine with
  ``pip install 'gcsemb[ray]' 'google-cloud-aiplatform[ray]'``; ``ADDRESS`` is the cluster's
  ``vertex_ray://projects/PROJECT/locations/REGION/persistentResources/CLUSTER``.
- KubeRay on GKE: on the head pod (``ADDRESS = "auto"``), or submitted with
  ``ray job submit --address http://HEAD:8265 --working-dir . -- python ray_vertex.py``.

Credentials: every worker opens its own GCS client with ``TOKEN``. Leave it ``None`` to use each
node's own identity (the cluster's service account on Vertex AI; Workload Identity for the Ray
pods' Kubernetes service account on GKE); that identity needs roles/storage.objectViewer on SRC and
roles/storage.objectUser on DST. A key file must exist at the same path on every node.

Try it offline first: ``python examples/ray_vertex.py --local`` runs the same script on a local
Ray, the bundled GCS emulator and a tiny model with random weights (needs ``gcsemb[demo,ray]``).
"""

from __future__ import annotations

import os
import sys

ADDRESS = "vertex_ray://projects/my-project/locations/us-central1/persistentResources/my-ray"
SRC = "gs://my-bucket/photos"
DST = "gs://my-bucket/embeddings"
MODEL, PRETRAINED = "ViT-B-32", "gs://my-bucket/models/ViT-B-32-laion2b.pt"  # or a weights tag
TOKEN = None  # None: each node's own identity; or a key-file path present on every node
GPUS_PER_WORKER = 1  # GPUs per model actor (0.5: two actors share a GPU; 0: CPU only)
WORKERS = None  # model actors; None: the cluster's GPUs / GPUS_PER_WORKER
BATCH_SIZE = 256  # images per forward pass on one GPU
PIP = ["gcsemb[ray]"]  # what the workers install, unless the cluster image already has it


def main() -> None:
    """Connect to the cluster, then run the job there."""
    import ray

    import gcsemb

    ray.init(ADDRESS, runtime_env={"pip": PIP} if PIP else None)
    print(ray.cluster_resources())
    summary = gcsemb.embed(
        SRC,
        DST,
        model=MODEL,
        pretrained=PRETRAINED,
        token=TOKEN,
        engine=gcsemb.RayEngine(workers=WORKERS, gpus_per_worker=GPUS_PER_WORKER),
        batch_size=BATCH_SIZE,
    )
    print(summary)


def local() -> None:
    """The same call on a local Ray, the GCS emulator and a tiny random model."""
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    import ray

    import gcsemb
    from gcsemb.demo.emulator import Emulator
    from gcsemb.demo.job import demo_checkpoint, upload_samples
    from gcsemb.model.embedder import TINY_MODEL

    with Emulator(buckets=["my-bucket"]) as gcs:
        upload_samples(gcs.filesystem(), "my-bucket", 40)
        src = gcs.store(SRC)  # handles carry the emulator's address to every worker
        ray.init(include_dashboard=False)
        for _ in range(2):  # the second run finds everything done
            print(
                gcsemb.embed(
                    src,
                    src.at(DST),
                    model=TINY_MODEL,
                    pretrained=str(demo_checkpoint(TINY_MODEL)),
                    engine="ray",
                    progress=False,
                )
            )
        ray.shutdown()


if __name__ == "__main__":
    local() if "--local" in sys.argv else main()

"""Where a job's files end up once Ray spreads its stream actors over several machines.

Each stream actor writes its stream's Parquet files itself, on whichever node Ray placed it, and
the driver writes the resume points on its own node. With a local ``sinks.parquet.path`` on a
cluster of several nodes the dataset is therefore split over the nodes' disks, and a ``--resume``
run finds only the resume points of the driver's node. One object store (``s3://...``) or a
filesystem mounted on every node keeps them together; only the user knows whether a path is such a
mount, so this is a warning, not an error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from operators.storage import is_object_store

logger = logging.getLogger(__name__)


def warn_if_outputs_scatter(job, nodes: Sequence[dict] | None = None) -> bool:
    """Log one warning when ``job`` writes its Parquet dataset to a node-local path on a cluster of more than
    one live node (``nodes`` as ``ray.nodes()`` lists them; the running cluster's by default); returns
    whether it warned."""
    if getattr(job, "index", None) is not None:  # an index job: its workers write the dataset wherever Ray placed them
        where, what = f"index.out {job.index.out}", "the index dataset"
    elif job.sinks.parquet is not None:
        where, what = f"sinks.parquet.path {job.sinks.parquet.path}", "the Parquet dataset and the resume points"
    else:
        return False
    if is_object_store(where.split(" ", 1)[1]):
        return False
    if nodes is None:
        import ray

        nodes = ray.nodes()
    alive = sum(1 for node in nodes if node.get("Alive"))
    if alive <= 1:
        return False
    logger.warning("%s is a local path but the Ray cluster has %d nodes: %s will be scattered over the nodes' "
                   "disks (and a re-run or --resume will miss some); use an s3://... URI, or a filesystem that every "
                   "node mounts at that path", where, alive, what)
    return True

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
    spec = job.sinks.parquet
    if spec is None or is_object_store(str(spec.path)):
        return False
    if nodes is None:
        import ray

        nodes = ray.nodes()
    alive = sum(1 for node in nodes if node.get("Alive"))
    if alive <= 1:
        return False
    logger.warning("sinks.parquet.path %s is a local path but the Ray cluster has %d nodes: the Parquet dataset "
                   "and the resume points will be scattered over the nodes' disks (and --resume will miss some); "
                   "use an s3://... URI, or a filesystem that every node mounts at that path", spec.path, alive)
    return True

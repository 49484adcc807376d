"""A local Parquet path on a cluster of several nodes gets one warning saying to use an object store."""

from __future__ import annotations

import logging
import types

import pytest

from pipeline.jobspec.sinks import ParquetSinkSpec
from pipeline.placement import warn_if_outputs_scatter


def job_writing_to(path: str | None):
    parquet = None if path is None else ParquetSinkSpec.model_validate({"path": path})
    return types.SimpleNamespace(sinks=types.SimpleNamespace(parquet=parquet))


@pytest.fixture
def nodes(ray_session):
    """The test cluster's one real node, as ray.nodes() describes it."""
    listed = ray_session.nodes()
    assert [n["Alive"] for n in listed] == [True]
    return listed


def test_a_local_path_on_several_live_nodes_is_warned_about_once(nodes, caplog):
    second = {**nodes[0], "NodeID": "0" * 56, "NodeManagerAddress": "10.0.0.2"}
    with caplog.at_level(logging.WARNING, logger="pipeline.placement"):
        assert warn_if_outputs_scatter(job_writing_to("/data/out"), [*nodes, second])
    [record] = caplog.records
    assert "/data/out is a local path but the Ray cluster has 2 nodes" in record.getMessage()
    assert "scattered over the nodes' disks" in record.getMessage() and "s3://" in record.getMessage()


def test_no_warning_for_one_live_node_an_object_store_or_no_parquet(nodes, caplog):
    dead = {**nodes[0], "NodeID": "1" * 56, "Alive": False}
    second = {**nodes[0], "NodeID": "0" * 56}
    with caplog.at_level(logging.WARNING, logger="pipeline.placement"):
        assert not warn_if_outputs_scatter(job_writing_to("/data/out"))  # the running (one-node) cluster
        assert not warn_if_outputs_scatter(job_writing_to("/data/out"), [*nodes, dead])
        assert not warn_if_outputs_scatter(job_writing_to("s3://bucket/out"), [*nodes, second])
        assert not warn_if_outputs_scatter(job_writing_to(None), [*nodes, second])
    assert caplog.records == []


def test_an_index_job_writing_to_a_local_path_on_several_nodes_is_warned_about(nodes, caplog):
    second = {**nodes[0], "NodeID": "0" * 56}
    local = types.SimpleNamespace(index=types.SimpleNamespace(out="/data/index"), sinks=None)
    remote = types.SimpleNamespace(index=types.SimpleNamespace(out="s3://bucket/index"), sinks=None)
    with caplog.at_level(logging.WARNING, logger="pipeline.placement"):
        assert warn_if_outputs_scatter(local, [*nodes, second])
        assert not warn_if_outputs_scatter(remote, [*nodes, second])
    [record] = caplog.records
    assert "index.out /data/index is a local path but the Ray cluster has 2 nodes" in record.getMessage()

"""Storage locations on a local disk and on a real S3-compatible server: files round-trip, listings skip
hidden names, writes are all-or-nothing, and mistakes (a missing bucket, a scheme that is no store) say
what to fix."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from operators.storage import Location, StorageError, is_object_store, resolve

TABLE = pa.table({"frame": [1, 2, 3], "label": ["a", "b", "c"]})


def names(location: Location, suffix: str = "") -> list[str]:
    return [location.child(info).path[len(location.path) + 1:] for info in location.list(suffix)]


def round_trip(root: Location) -> None:
    """What every location must do, wherever it lives."""
    root.join("a", "one.bin").write_bytes(b"first")
    root.join("a", "one.bin").write_bytes(b"second")  # overwritten whole
    root.join("b", "two.parquet").write_parquet(TABLE)
    root.join("b", ".hidden.parquet.tmp").write_bytes(b"in progress")
    root.join("_meta", "x.parquet").write_bytes(b"not data")
    root.join("b", "_skipped.parquet").write_bytes(b"not data")

    assert root.join("a", "one.bin").read_bytes() == b"second"
    assert names(root) == ["_meta/x.parquet", "a/one.bin", "b/two.parquet"]
    assert names(root, ".parquet") == ["_meta/x.parquet", "b/two.parquet"]
    assert names(root.join("b"), ".parquet") == ["two.parquet"]
    with root.join("b", "two.parquet").open_input() as f:
        assert pq.read_table(f).equals(TABLE)
    assert root.join("a", "one.bin").exists() and not root.join("a", "none.bin").exists()
    assert root.join("missing").list() == []  # a directory nobody wrote lists as empty

    root.join("a", "one.bin").delete()
    root.join("a", "one.bin").delete()  # already gone: no error
    assert names(root, ".bin") == []
    with pytest.raises(FileNotFoundError):
        root.join("a", "one.bin").read_bytes()


def test_local_files_round_trip(tmp_path):
    root = resolve(tmp_path / "data")
    assert root.is_local and not is_object_store(tmp_path)
    round_trip(root)
    assert resolve(f"file://{tmp_path}/data").join("b", "two.parquet").read_bytes() == \
        (tmp_path / "data/b/two.parquet").read_bytes()


def test_s3_objects_round_trip(s3_env):
    uri = s3_env.bucket() + "/jobs/demo"
    root = resolve(uri)
    assert not root.is_local and is_object_store(uri) and root.uri == uri
    round_trip(root)
    # the objects are where the URI says, under the bucket, as any S3 client sees them
    bucket, prefix = uri[len("s3://"):].split("/", 1)
    keys = sorted(o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket)["Contents"])
    assert f"{prefix}/b/two.parquet" in keys and f"{prefix}/a/one.bin" not in keys


def test_a_failed_local_write_leaves_no_temporary(tmp_path):
    (tmp_path / "out" / "point.json").mkdir(parents=True)  # renaming the written file onto it fails
    with pytest.raises(StorageError, match=r"cannot write .*out/point\.json: IsADirectoryError"):
        resolve(tmp_path / "out" / "point.json").write_bytes(b"new")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["point.json"]


def test_a_failed_s3_write_leaves_the_old_object(s3_env):
    target = resolve(s3_env.bucket() + "/point.json")
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        target.write_bytes("text, not bytes")
    assert target.read_bytes() == b"old"
    fresh = resolve(s3_env.bucket() + "/new.json")
    with pytest.raises(TypeError):
        fresh.write_bytes("text, not bytes")
    assert not fresh.exists()


def test_a_missing_bucket_is_named_with_what_to_do(s3_env):
    with pytest.raises(StorageError, match=r"cannot write s3://no-such-bucket/x/part\.parquet: .*"
                                           r"the bucket 'no-such-bucket' does not exist: create it"):
        resolve("s3://no-such-bucket/x").join("part.parquet").write_parquet(TABLE)


def test_a_scheme_that_is_no_store_is_refused_with_the_ones_that_are():
    with pytest.raises(StorageError, match=r"ftp://host/data: ftp:// is not a storage location; use a local path "
                                           r"or one of s3://"):
        resolve("ftp://host/data")

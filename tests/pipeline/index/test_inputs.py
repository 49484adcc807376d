"""An archive's files from paths, directories, globs, manifests and S3 prefixes (a real moto server)."""

from __future__ import annotations

import csv
import os
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.index.inputs import ArchiveFile, InputError, list_archive


def _write(path: Path, data: bytes = b"video") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    root = tmp_path / "archive"
    _write(root / "cam1" / "a.mp4", b"a" * 10)
    _write(root / "cam1" / "b.MKV", b"b" * 20)
    _write(root / "cam2" / "deep" / "c.webm", b"c" * 30)
    _write(root / "cam2" / "notes.txt", b"not a video")
    _write(root / "cam2" / "._c.mp4", b"resource fork")
    _write(root / ".trash" / "d.mp4", b"deleted")
    return root


def _uris(files: list[ArchiveFile]) -> list[str]:
    return [f.uri for f in files]


def test_directory_lists_video_files_recursively_and_skips_hidden_and_other_files(archive: Path) -> None:
    files = list_archive([str(archive)])
    assert _uris(files) == [str(archive / "cam1/a.mp4"), str(archive / "cam1/b.MKV"),
                            str(archive / "cam2/deep/c.webm")]
    a = files[0]
    stat = os.stat(archive / "cam1/a.mp4")
    assert a.size_bytes == 10 and a.etag is None
    assert a.mtime == datetime.fromtimestamp(stat.st_mtime_ns // 1000 / 1e6, UTC)
    assert a.mtime.tzinfo is not None
    assert a.location().read_bytes() == b"a" * 10


def test_relative_sources_are_taken_from_base_dir_and_duplicates_collapse(archive: Path) -> None:
    files = list_archive(["cam1", "cam1/a.mp4", "**/*.mp4", f"file://{archive}/cam1/a.mp4"], base_dir=str(archive))
    assert _uris(files) == [str(archive / "cam1/a.mp4"), str(archive / "cam1/b.MKV")]


def test_glob_recurses_with_double_star_and_keeps_only_video_files(archive: Path) -> None:
    assert _uris(list_archive([f"{archive}/**/*"])) == _uris(list_archive([str(archive)]))
    with pytest.raises(InputError, match=r"\*/\*\.webm: matches no video file"):
        list_archive([f"{archive}/*/*.webm"])  # one level only: c.webm is two levels down
    assert _uris(list_archive([f"{archive}/cam?/**/*.webm"])) == [str(archive / "cam2/deep/c.webm")]


def test_a_file_named_outright_is_taken_whatever_its_suffix(tmp_path: Path) -> None:
    path = _write(tmp_path / "camera.dav")
    assert _uris(list_archive([str(path)])) == [str(path)]


def test_fingerprint_changes_with_size_and_mtime(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.mp4", b"12345")
    before = list_archive([str(path)])[0]
    assert list_archive([str(path)])[0].fingerprint == before.fingerprint
    later = os.stat(path).st_mtime_ns + 7_000_000_000
    os.utime(path, ns=(later, later))
    touched = list_archive([str(path)])[0]
    assert touched.size_bytes == before.size_bytes and touched.fingerprint != before.fingerprint
    assert ArchiveFile(before.uri, 6, before.mtime, None).fingerprint != before.fingerprint
    assert ArchiveFile(before.uri, 5, before.mtime, "etag-2").fingerprint != before.fingerprint


def test_shown_uri_masks_secrets() -> None:
    file = ArchiveFile("s3://bucket/v.mp4?token=SECRET", 1, None, None)
    assert "SECRET" not in file.shown_uri and file.shown_uri.startswith("s3://bucket/v.mp4")


def test_text_manifest_skips_comments_and_takes_relative_entries_from_its_directory(archive: Path,
                                                                                      tmp_path: Path) -> None:
    manifest = archive / "lists" / "today.txt"
    manifest.parent.mkdir()
    manifest.write_text(f"# today's files\n\n../cam1/a.mp4\n  {archive}/cam2/deep/c.webm  \n# ../cam1/b.MKV\n")
    files = list_archive(["archive/lists/today.txt"], base_dir=str(tmp_path))
    assert _uris(files) == [str(archive / "cam1/a.mp4"), str(archive / "cam2/deep/c.webm")]
    lst = _write(archive / "lists" / "all.lst", b"../cam1\n")
    assert _uris(list_archive([str(lst)])) == [str(archive / "cam1/a.mp4"), str(archive / "cam1/b.MKV")]


def test_csv_and_parquet_manifests_read_their_uri_column(archive: Path) -> None:
    with open(archive / "m.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["camera", " uri "])
        writer.writerow(["1", "cam1/a.mp4"])
        writer.writerow(["2", ""])
        writer.writerow(["3", str(archive / "cam1/b.MKV")])
    assert _uris(list_archive([str(archive / "m.csv")])) == [str(archive / "cam1/a.mp4"), str(archive / "cam1/b.MKV")]
    pq.write_table(pa.table({"uri": ["cam2/deep/c.webm", None], "n": [1, 2]}), archive / "m.parquet")
    assert _uris(list_archive([str(archive / "m.parquet")])) == [str(archive / "cam2/deep/c.webm")]


@pytest.mark.parametrize(("name", "content", "message"), [
    ("m.csv", b"path\ncam1/a.mp4\n", r"m\.csv: has no `uri` column \(header: path\)"),
    ("m.txt", b"# nothing\n\n", r"m\.txt: the manifest lists no file"),
    ("m.txt", b"cam1/a.mp4\ncam1/missing.mp4\n", r"m\.txt \(line 2\): cam1/missing\.mp4: no such file"),
    ("m.txt", b"other.lst\n", r"m\.txt \(line 1\): other\.lst: a manifest cannot name another manifest"),
    ("m.txt", b"\xff\xfe\x00", r"m\.txt: is not UTF-8 text"),
    ("m.txt", b"rtsp://admin:hunter2@cam/live\n", r"line 1\): rtsp://admin:\*\*\*@cam/live: a live stream"),
])
def test_bad_manifests_are_one_line_errors_naming_the_manifest(archive: Path, name: str, content: bytes,
                                                               message: str) -> None:
    _write(archive / "other.lst", b"cam1/a.mp4\n")
    _write(archive / name, content)
    with pytest.raises(InputError, match=message) as error:
        list_archive([str(archive / name)])
    assert "\n" not in str(error.value) and "hunter2" not in str(error.value)


def test_parquet_manifest_without_uri_column(archive: Path) -> None:
    pq.write_table(pa.table({"path": ["cam1/a.mp4"]}), archive / "m.parquet")
    with pytest.raises(InputError, match=r"m\.parquet: has no `uri` column \(columns: path\)"):
        list_archive([str(archive / "m.parquet")])


@pytest.mark.parametrize(("source", "message"), [
    ("missing.mp4", r"^missing\.mp4: no such file or directory; check the path \(relative paths are taken from "),
    ("cam2/deep/*.mp4", r"^cam2/deep/\*\.mp4: matches no video file"),
    ("empty", r"^empty: matches no video file"),
    ("https://example.com/live.m3u8?token=abc", r"^https://example\.com/live\.m3u8\?token=\*\*\*: a live stream "
                                                r"cannot be indexed.*sam3-stream run"),
    ("rtsp://cam/1", r"^rtsp://cam/1: a live stream"),
    ("ftp://host/a.mp4", r"^ftp://host/a\.mp4: ftp:// is not an archive source"),
])
def test_sources_that_name_no_video_are_errors(archive: Path, source: str, message: str) -> None:
    (archive / "empty").mkdir()
    _write(archive / "empty" / "readme.md")
    with pytest.raises(InputError, match=message) as error:
        list_archive(["cam1", source], base_dir=str(archive))
    assert "\n" not in str(error.value)


# --- object stores ------------------------------------------------------------------------------------------


@pytest.fixture
def bucket(s3_env) -> str:
    uri = s3_env.bucket()
    client, name = s3_env.client(), uri.removeprefix("s3://")
    for key, body in {"cams/1/a.mp4": b"a" * 11, "cams/1/b.mov": b"b" * 12, "cams/2/x/c.mp4": b"c" * 13,
                      "cams/2/notes.txt": b"n", "cams/2/.partial.mp4": b"p", "other/d.mkv": b"d" * 14,
                      "lists/today.txt": b"# relative to lists/\n../cams/1/a.mp4\n../other/d.mkv\n",
                      "lists/m.csv": b"uri\n../cams/1/b.mov\n", "lists/bad.txt": b"../cams/1/gone.mp4\n"}.items():
        client.put_object(Bucket=name, Key=key, Body=body)
    return uri


def test_s3_prefix_lists_video_objects_with_size_and_mtime(bucket: str) -> None:
    files = list_archive([f"{bucket}/cams/"])
    assert _uris(files) == [f"{bucket}/cams/1/a.mp4", f"{bucket}/cams/1/b.mov", f"{bucket}/cams/2/x/c.mp4"]
    assert [f.size_bytes for f in files] == [11, 12, 13]
    assert all(f.mtime is not None and f.mtime.tzinfo is not None for f in files)
    assert files[0].location().read_bytes() == b"a" * 11
    assert _uris(list_archive([f"{bucket}/cams"])) == _uris(files)  # a prefix without its slash
    assert len(list_archive([bucket])) == 4  # the whole bucket


def test_s3_objects_globs_and_manifests(bucket: str, tmp_path: Path) -> None:
    assert _uris(list_archive([f"{bucket}/other/d.mkv"])) == [f"{bucket}/other/d.mkv"]
    assert _uris(list_archive([f"{bucket}/cams/*/*.mp4"])) == [f"{bucket}/cams/1/a.mp4"]
    assert _uris(list_archive([f"{bucket}/**/?.m[ok]?"])) == [f"{bucket}/cams/1/b.mov", f"{bucket}/other/d.mkv"]
    assert _uris(list_archive([f"{bucket}/lists/today.txt", f"{bucket}/lists/m.csv"])) == [
        f"{bucket}/cams/1/a.mp4", f"{bucket}/cams/1/b.mov", f"{bucket}/other/d.mkv"]
    local = _write(tmp_path / "mixed.txt", f"{bucket}/cams/2/x/c.mp4\n".encode())
    assert _uris(list_archive([str(local)])) == [f"{bucket}/cams/2/x/c.mp4"]


@pytest.mark.parametrize(("suffix", "message"), [
    ("/nothing/", r"/nothing/: matches no video object; check the bucket name, the prefix and the credentials"),
    ("/cams/*.mp4", r"/cams/\*\.mp4: matches no video object"),
    ("/cams/1/a.mp4.missing", r"matches no video object"),
    ("/lists/bad.txt", r"bad\.txt \(line 1\): s3://[^/]+/cams/1/gone\.mp4: no such object; fix or remove this line"),
])
def test_s3_sources_that_match_nothing(bucket: str, suffix: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        list_archive([bucket + suffix])


def test_a_missing_bucket_is_named(s3_env) -> None:
    with pytest.raises(InputError, match=r"^s3://no-such-bucket-here/v/: there is no bucket 'no-such-bucket-here'"):
        list_archive(["s3://no-such-bucket-here/v/"])


def test_a_store_that_cannot_be_reached_is_an_input_error(s3_env, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")  # nothing listens on port 1
    with pytest.raises(InputError, match=r"^s3://videos/cams/: cannot be listed \(.*\); check the bucket name, "
                                         r"the prefix and the credentials and endpoint") as error:
        list_archive(["s3://videos/cams/"])
    assert "\n" not in str(error.value)

"""Where datasets, resume points and archive files live: a local path or an object-store URI.

A :class:`Location` pairs a pyarrow filesystem with a path on it, so everything that writes or
reads the project's files (the Parquet sink, resume points, the index dataset and catalog,
archive sources) works the same on a local disk and on S3-compatible storage
(``s3://bucket/prefix``), GCS (``gs://``) or HDFS. Credentials and endpoints come from the
usual environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``,
``AWS_DEFAULT_REGION``, ...), which pyarrow reads itself; nothing here holds a secret.

Writes are atomic for readers: on a local disk a file is written under a hidden temporary name
(``.name.<rand>.tmp``, which pyarrow and ``*.parquet`` globs skip) in its final directory,
synced, then renamed; on an object store a single PUT is already all-or-nothing.
"""

from __future__ import annotations

import io
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
OBJECT_STORE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss")


class StorageError(OSError):
    """A location cannot be opened, read or written; the message names it and says what to check."""


def scheme_of(uri: str) -> str | None:
    match = _SCHEME.match(str(uri))
    return match.group(1).lower() if match else None


def is_object_store(uri: str | os.PathLike) -> bool:
    return scheme_of(str(uri)) in OBJECT_STORE_SCHEMES


@dataclass(frozen=True)
class Location:
    """A file or directory: ``fs`` and ``path`` on it; ``uri`` is how the user named it (for messages)."""

    fs: pafs.FileSystem
    path: str
    uri: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def join(self, *parts: str) -> Location:
        path = "/".join([self.path.rstrip("/"), *(p.strip("/") for p in parts)])
        uri = "/".join([self.uri.rstrip("/"), *(p.strip("/") for p in parts)])
        return Location(self.fs, path, uri)

    def info(self) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(self.path)
        except OSError as e:
            raise StorageError(f"{self.uri}: cannot be read ({e}); check the path, the credentials in the "
                               "environment and, for an S3-compatible store, AWS_ENDPOINT_URL") from e

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.info().type == pafs.FileType.Directory

    def list(self, suffix: str = "", recursive: bool = True) -> list[pafs.FileInfo]:
        """The files below this directory whose names end in ``suffix`` (hidden names skipped), by path;
        a directory that does not exist lists as empty."""
        selector = pafs.FileSelector(self.path, recursive=recursive, allow_not_found=True)
        try:
            infos = self.fs.get_file_info(selector)
        except OSError as e:
            raise StorageError(f"{self.uri}: cannot be listed ({e}); check the path and the credentials in the "
                               "environment") from e
        files = [i for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix)
                 and not i.base_name.startswith((".", "_"))]
        return sorted(files, key=lambda i: i.path)

    def child(self, info: pafs.FileInfo) -> Location:
        """The location of a file this directory listed."""
        rel = info.path[len(self.path.rstrip("/")) + 1:] if info.path.startswith(self.path.rstrip("/")) else info.path
        return self.join(rel)

    def read_bytes(self) -> bytes:
        try:
            with self.fs.open_input_stream(self.path) as f:
                return f.read()
        except FileNotFoundError:
            raise
        except OSError as e:
            raise StorageError(f"{self.uri}: cannot be read ({e})") from e

    def open_input(self):
        """A seekable binary file (PyAV and pyarrow read from it)."""
        try:
            return self.fs.open_input_file(self.path)
        except OSError as e:
            raise StorageError(f"{self.uri}: cannot be opened ({e}); check the path and the credentials") from e

    def write_bytes(self, data: bytes, *, sync: bool = True) -> None:
        """Write the whole file atomically (see the module docstring); ``sync=False`` skips the local fsyncs
        (a crash may then lose the file, never show part of it)."""
        # Not bytes-like: fail before anything is opened (closing an object-store stream, even after an
        # error, would store whatever it had, replacing a good object with an empty one).
        view = memoryview(data)
        try:
            if self.is_local:
                _write_local_atomically(Path(self.path), view, sync)
            else:
                with self.fs.open_output_stream(self.path) as f:
                    f.write(view)
        except OSError as e:
            raise StorageError(f"cannot write {self.uri}: {type(e).__name__}: {e}; {self._hint(e)}") from e

    def _hint(self, error: OSError) -> str:
        """What to check after a failed write, as precisely as the error allows."""
        text = str(error)
        if "NO_SUCH_BUCKET" in text or "NoSuchBucket" in text:
            return f"the bucket {self.path.split('/', 1)[0]!r} does not exist: create it, or fix the URI"
        if self.is_local:
            return "check free space and permissions"
        return "check the credentials and endpoint in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, " \
               "AWS_ENDPOINT_URL) and the bucket's permissions"

    def write_parquet(self, table: pa.Table, compression: str = "zstd", *, sync: bool = True) -> None:
        """``table`` as one Parquet file, written atomically."""
        sink = io.BytesIO()
        pq.write_table(table, sink, compression=compression)
        self.write_bytes(sink.getbuffer(), sync=sync)

    def delete(self) -> None:
        """Delete the file; one that is already gone is no error."""
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            if self.exists():
                raise StorageError(f"cannot delete {self.uri}: {e}") from e

    def make_dirs(self) -> None:
        """Create the directory (a no-op on object stores, which have no directories)."""
        if not self.is_local:
            return
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create {self.uri}: {e}; check the path and its permissions") from e


def resolve(uri: str | os.PathLike) -> Location:
    """A local path (or ``file://`` URI) or an object-store URI as a :class:`Location`."""
    text = str(uri)
    scheme = scheme_of(text)
    if scheme is None:
        return Location(pafs.LocalFileSystem(), os.path.abspath(text), text)
    if scheme == "file":
        return Location(pafs.LocalFileSystem(), os.path.abspath(text[len("file://"):]), text)
    if scheme not in OBJECT_STORE_SCHEMES:
        raise StorageError(f"{text}: {scheme}:// is not a storage location; use a local path or one of "
                           f"{', '.join(s + '://' for s in OBJECT_STORE_SCHEMES)}")
    opened = text
    if scheme == "s3":
        # Delayed open: a file that fits one part is sent as a single PUT (one request, not three),
        # and S3-compatible stores that mishandle multipart completion still take it.
        opened = f"{text}{'&' if '?' in text else '?'}allow_delayed_open=true"
    try:
        fs, path = pafs.FileSystem.from_uri(opened)
    except (OSError, pa.ArrowException) as e:
        raise StorageError(f"{text}: cannot open this object store ({e}); check the URI, and the credentials and "
                           "endpoint in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                           "AWS_ENDPOINT_URL)") from e
    return Location(fs, path.rstrip("/"), text.split("?", 1)[0].rstrip("/"))


def _write_local_atomically(path: Path, data: bytes | memoryview, sync: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if not sync:
        return
    fd = os.open(path.parent, os.O_RDONLY)  # make the rename itself survive a crash
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""The files of a video archive: what ``sam3-stream index SOURCE...`` reads.

A source is a video file, a directory (every video file below it), a glob (``**`` crosses
directories), a manifest (``.txt``/``.lst``: one URI per line; ``.csv``/``.parquet``: a ``uri``
column), or an object-store prefix, object or key glob (``s3://bucket/videos/``,
``s3://bucket/a.mp4``, ``s3://bucket/cams/*/2024-*.mp4``). Directories, prefixes and globs pick the
files with a video suffix (:data:`operators.sources.VIDEO_SUFFIXES`) and skip hidden names (``.x``:
partial uploads, ``._x.mp4`` resource forks); a file named outright, on the command line or in a
manifest, is taken whatever its suffix. Live URLs are refused: they belong in ``sam3-stream run``.

Each file comes with what tells whether it changed since it was indexed: size, modification time
and, where the listing gives one, an ETag. pyarrow's object-store listings give size and
last-modified only (no ETag); an object written again gets a new last-modified, so the two still
tell a rewrite.
"""

from __future__ import annotations

import csv
import glob
import io
import logging
import os
import posixpath
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from operators.redaction import redact_url
from operators.sources import LIVE_SCHEMES, VIDEO_SUFFIXES
from operators.storage import OBJECT_STORE_SCHEMES, Location, StorageError, resolve, scheme_of

logger = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".txt", ".lst", ".csv", ".parquet")
_GLOB_CHARS = "*?["
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class InputError(ValueError):
    """A source names no video file or cannot be read; one line naming the source and what to do."""


@dataclass(frozen=True)
class ArchiveFile:
    uri: str  # an absolute local path, or scheme://bucket/key as listed
    size_bytes: int
    mtime: datetime | None  # UTC, tz-aware, microseconds (what the catalog's timestamp column holds)
    etag: str | None  # None where the store gives none

    @property
    def shown_uri(self) -> str:
        """The URI as tables and logs carry it: secrets masked."""
        return redact_url(self.uri)

    @property
    def fingerprint(self) -> str:
        """Changes whenever the content may have changed (it names the file's parts)."""
        mtime = self.mtime.isoformat() if self.mtime is not None else ""
        return f"size={self.size_bytes};mtime={mtime};etag={self.etag or ''}"

    def location(self) -> Location:
        return resolve(self.uri)


def list_archive(sources: Sequence[str], base_dir: str | None = None) -> list[ArchiveFile]:
    """Every video file the sources name, de-duplicated, sorted by uri (see the module docstring).
    Relative local sources are taken from ``base_dir`` (default: the working directory)."""
    lister = _Lister(base_dir or os.getcwd())
    found: dict[str, ArchiveFile] = {}
    for source in sources:
        for item in lister.expand(str(source), os.path.abspath(lister.base_dir), origin=None):
            found[item.uri] = item
    return sorted(found.values(), key=lambda f: f.uri)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _has_glob(text: str) -> bool:
    return any(ch in text for ch in _GLOB_CHARS)


def _is_video(name: str) -> bool:
    return name.lower().endswith(VIDEO_SUFFIXES) and not name.startswith(".")


def _is_manifest(name: str) -> bool:
    return name.lower().endswith(MANIFEST_SUFFIXES)


def _mtime(ns: int | None) -> datetime | None:
    return None if ns is None else _EPOCH + timedelta(microseconds=ns // 1000)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A key glob as a regex over whole keys: ``**`` spans directories, ``*`` and ``?`` do not."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) > 0:
            body = pattern[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


class _Lister:
    """One listing: object-store filesystems are opened once per bucket, not once per file."""

    def __init__(self, base_dir: str) -> None:
        self.base_dir = base_dir
        self._stores: dict[tuple[str, str], pafs.FileSystem] = {}

    def expand(self, source: str, base: str, origin: str | None) -> list[ArchiveFile]:
        """The files of one source; ``origin`` names the manifest line it came from, if any."""
        where = f"{origin}: {redact_url(source)}" if origin else redact_url(source)
        scheme = scheme_of(source)
        if scheme in LIVE_SCHEMES or scheme in ("rtmp", "udp", "srt"):
            raise InputError(f"{where}: a live stream cannot be indexed; index recorded files, and run live "
                             "streams with `sam3-stream run JOB.yaml`")
        if scheme in OBJECT_STORE_SCHEMES:
            return self._object_store(source, scheme, where, origin)
        if scheme is None and scheme_of(base) in OBJECT_STORE_SCHEMES and not source.startswith("/"):
            # a relative entry of a manifest that lives in an object store: next to the manifest
            head, _, key = base.partition("://")
            bucket, _, prefix = key.partition("/")
            joined = posixpath.normpath(posixpath.join("/", prefix, source)).lstrip("/")
            return self.expand(f"{head}://{bucket}/{joined}", base, origin)
        if scheme == "file":
            source = source[len("file://"):]
        elif scheme is not None:
            raise InputError(f"{where}: {scheme}:// is not an archive source; use a local path or one of "
                             f"{', '.join(s + '://' for s in OBJECT_STORE_SCHEMES)}")
        return self._local(os.path.join(base, os.path.expanduser(source)), where, origin)

    # local files --------------------------------------------------------------------------------

    def _local(self, path: str, where: str, origin: str | None) -> list[ArchiveFile]:
        path = os.path.abspath(path)
        if _has_glob(path):
            paths = [p for p in glob.glob(path, recursive=True) if _is_video(os.path.basename(p))]
            files = [f for p in paths if (f := _local_file(p)) is not None]
            what = "no video file"
        elif os.path.isdir(path):
            files = list(_walk_local(path))
            what = "no video file"
        elif os.path.isfile(path):
            if _is_manifest(path):
                return self._manifest(resolve(path), os.path.dirname(path), where, origin)
            files = [f] if (f := _local_file(path)) is not None else []
            what = "nothing readable"
        else:
            raise InputError(f"{where}: no such file or directory; check the path (relative paths are taken "
                             f"from {self.base_dir})" if origin is None else
                             f"{where}: no such file or directory; fix or remove this line of the manifest")
        if not files:
            raise InputError(f"{where}: matches {what} (video suffixes: {' '.join(VIDEO_SUFFIXES)}); "
                             "check the path or pattern")
        return files

    # object stores ------------------------------------------------------------------------------

    def _store(self, scheme: str, bucket: str, where: str) -> pafs.FileSystem:
        key = (scheme, bucket)
        if key not in self._stores:
            try:
                self._stores[key] = resolve(f"{scheme}://{bucket}").fs
            except StorageError as e:
                raise InputError(f"{where}: {_one_line(e)}") from e
        return self._stores[key]

    def _object_store(self, uri: str, scheme: str, where: str, origin: str | None) -> list[ArchiveFile]:
        bucket, _, key = uri.split("://", 1)[1].partition("/")
        if not bucket or _has_glob(bucket):
            raise InputError(f"{where}: name a bucket without wildcards ({scheme}://bucket/prefix/)")
        fs = self._store(scheme, bucket, where)
        check = ("check the bucket name, the prefix and the credentials and endpoint in the environment "
                 "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL)")
        try:
            if _has_glob(key):
                first = min(key.find(ch) for ch in _GLOB_CHARS if ch in key)
                prefix = key[:key.rfind("/", 0, first) + 1]
                pattern = _glob_regex(key)
                infos = _list_store(fs, f"{bucket}/{prefix}")
                files = [_store_file(scheme, i) for i in infos
                         if pattern.match(i.path[len(bucket) + 1:]) and _is_video(i.base_name)]
            elif not key or key.endswith("/"):
                files = [_store_file(scheme, i) for i in _list_store(fs, f"{bucket}/{key}".rstrip("/"))
                         if _is_video(i.base_name)]
            else:
                info = fs.get_file_info(f"{bucket}/{key}")
                if info.type == pafs.FileType.File and _is_manifest(key):
                    base = f"{scheme}://{bucket}/{key.rpartition('/')[0]}".rstrip("/")
                    return self._manifest(Location(fs, f"{bucket}/{key}", uri), base, where, origin)
                if info.type == pafs.FileType.File:
                    files = [_store_file(scheme, info)]
                elif info.type == pafs.FileType.Directory:
                    files = [_store_file(scheme, i) for i in _list_store(fs, f"{bucket}/{key}")
                             if _is_video(i.base_name)]
                elif origin is not None:
                    raise InputError(f"{where}: no such object; fix or remove this line of the manifest")
                else:
                    files = []
        except OSError as e:
            raise InputError(f"{where}: cannot be listed ({_one_line(e)}); {check}") from e
        if not files:
            if _missing(fs, bucket):
                raise InputError(f"{where}: there is no bucket {bucket!r} on this store; check the bucket name "
                                 "and AWS_ENDPOINT_URL")
            raise InputError(f"{where}: matches no video object; {check}")
        return files

    # manifests ----------------------------------------------------------------------------------

    def _manifest(self, manifest: Location, base: str, where: str, origin: str | None) -> list[ArchiveFile]:
        if origin is not None:
            raise InputError(f"{where}: a manifest cannot name another manifest; list the files themselves")
        try:
            data = manifest.read_bytes()
        except OSError as e:
            raise InputError(f"{where}: cannot be read ({_one_line(e)}); check the file and its permissions") from e
        entries = list(_manifest_entries(data, manifest.name, where))
        if not entries:
            raise InputError(f"{where}: the manifest lists no file; add one URI per line (or per row of its "
                             "`uri` column)")
        files: list[ArchiveFile] = []
        for line, entry in entries:
            files += self.expand(entry, base, origin=f"{where} ({line})")
        return files


def _manifest_entries(data: bytes, name: str, where: str) -> Iterable[tuple[str, str]]:
    """(where in the manifest, entry) of every entry; comments and blank lines skipped."""
    lower = name.lower()
    if lower.endswith(".parquet"):
        try:
            table = pq.read_table(io.BytesIO(data))
        except (OSError, pa.ArrowException) as e:
            raise InputError(f"{where}: not a readable Parquet file ({_one_line(e)})") from e
        if "uri" not in table.column_names:
            raise InputError(f"{where}: has no `uri` column (columns: {', '.join(table.column_names)}); "
                             "name the column of file URIs `uri`")
        rows = table.column("uri").to_pylist()
        return ((f"row {n}", str(v).strip()) for n, v in enumerate(rows, 1) if v is not None and str(v).strip())
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{where}: is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from e
    if lower.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        columns = [c.strip() for c in reader.fieldnames or ()]
        if "uri" not in columns:
            raise InputError(f"{where}: has no `uri` column (header: {', '.join(columns) or 'none'}); "
                             "add a header row with a `uri` column")
        reader.fieldnames = columns
        return ((f"line {reader.line_num}", row["uri"].strip()) for row in reader if (row.get("uri") or "").strip())
    stripped = ((n, line.strip()) for n, line in enumerate(text.splitlines(), 1))
    return ((f"line {n}", line) for n, line in stripped if line and not line.startswith("#"))


def _local_file(path: str) -> ArchiveFile | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # gone between listing and stat, or a dangling link
    return ArchiveFile(os.path.abspath(path), st.st_size, _mtime(st.st_mtime_ns), None)


def _walk_local(root: str) -> Iterable[ArchiveFile]:
    for directory, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if _is_video(name) and (f := _local_file(os.path.join(directory, name))) is not None:
                yield f


def _missing(fs: pafs.FileSystem, bucket: str) -> bool:
    try:
        return fs.get_file_info(bucket).type == pafs.FileType.NotFound
    except OSError:
        return False  # cannot tell: the caller's message names the bucket among what to check


def _list_store(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    return [i for i in fs.get_file_info(selector) if i.type == pafs.FileType.File]


def _store_file(scheme: str, info: pafs.FileInfo) -> ArchiveFile:
    return ArchiveFile(f"{scheme}://{info.path}", info.size, _mtime(info.mtime_ns), None)

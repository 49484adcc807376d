"""The index catalog (append files read back as the latest row per file) and the planning rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from operators.index_tables import DONE, FAILED
from operators.storage import Location, resolve
from pipeline.index.catalog import Catalog, Plan, WorkItem, catalog_row, plan_work
from pipeline.index.inputs import ArchiveFile

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
CKPT = "sam3-v1"


def _file(name: str, size: int = 100, mtime: datetime = T0, etag: str | None = None) -> ArchiveFile:
    return ArchiveFile(f"/archive/{name}.mp4", size, mtime, etag)


def _row(file: ArchiveFile, *, status: str = DONE, concepts=("person",), checkpoint: str = CKPT,
         parts=("p1",), next_track_id: int = 5, at: datetime = T0, run_id: str = "r1") -> dict:
    return {"uri": file.shown_uri, "size_bytes": file.size_bytes, "mtime": file.mtime, "etag": file.etag,
            "duration_s": 10.0, "frames": 250, "fps": 25.0, "status": status,
            "error": "boom" if status == FAILED else None, "concepts": list(concepts), "checkpoint": checkpoint,
            "run_id": run_id, "indexed_at": at, "processing_s": 1.0, "next_track_id": next_track_id,
            "parts": list(parts)}


@pytest.fixture
def root(tmp_path: Path) -> Location:
    return resolve(str(tmp_path / "dataset"))


def _catalog(root: Location, *rows: dict) -> Catalog:
    catalog = Catalog.load(root)
    catalog.append(list(rows), run_id="r1")
    return Catalog.load(root)


def _only(plan: Plan) -> WorkItem:
    assert len(plan.items) == 1, plan
    return plan.items[0]


# --- the catalog --------------------------------------------------------------------------------------------


def test_a_dataset_without_catalog_files_is_empty(root: Location) -> None:
    catalog = Catalog.load(root)
    assert len(catalog) == 0 and catalog.latest("/archive/a.mp4") is None


def test_rows_read_back_as_written(root: Location) -> None:
    a = _file("a", etag="e1")
    row = _catalog(root, _row(a)).latest(a.uri)
    assert row == _row(a)
    assert row["mtime"] == a.mtime and row["indexed_at"].tzinfo is not None


def test_latest_row_is_the_one_indexed_last_across_append_files_and_runs(root: Location) -> None:
    a, b = _file("a"), _file("b")
    first = Catalog.load(root)
    first.append([_row(a, at=T0 + timedelta(hours=2), parts=("a-late",)), _row(b, at=T0, parts=("b-1",))],
                 run_id="run-2")
    first.append([_row(b, at=T0 + timedelta(hours=1), parts=("b-2",))], run_id="run-2")
    second = Catalog.load(root)
    # a later run appends an older row of a (a clock skew, or rows replayed): it does not win
    second.append([_row(a, at=T0 + timedelta(hours=1), parts=("a-early",))], run_id="run-1")
    assert second.latest(a.uri)["parts"] == ["a-late"]
    loaded = Catalog.load(root)
    assert len(loaded) == 2
    assert loaded.latest(a.uri)["parts"] == ["a-late"] and loaded.latest(b.uri)["parts"] == ["b-2"]
    names = sorted(p.name for p in (Path(root.path) / "files").iterdir())
    assert names == ["part-run-1-000000.parquet", "part-run-2-000000.parquet", "part-run-2-000001.parquet"]


def test_append_never_clobbers_an_earlier_file_of_the_same_run(root: Location) -> None:
    a, b, c = _file("a"), _file("b"), _file("c")
    Catalog.load(root).append([_row(a)], run_id="r")
    Catalog.load(root).append([_row(b)], run_id="r")  # the run continued by a new process
    stale_view = Catalog(root)  # a catalog that never saw the files above
    stale_view.append([_row(c)], run_id="r")
    stale_view.append([], run_id="r")  # nothing to write: no empty file
    files = sorted((Path(root.path) / "files").glob("*.parquet"))
    assert [f.name for f in files] == [f"part-r-00000{i}.parquet" for i in range(3)]
    assert [pq.read_table(f)["uri"].to_pylist() for f in files] == [[a.uri], [b.uri], [c.uri]]
    assert len(Catalog.load(root)) == 3


def test_two_catalogs_appending_for_one_run_take_turns_instead_of_overwriting(root: Location) -> None:
    a, b, c = _file("a"), _file("b"), _file("c")
    first, second = Catalog.load(root), Catalog.load(root)
    first.append([_row(a)], run_id="r")  # 000000
    second.append([_row(b)], run_id="r")  # sees 000000: 000001
    first.append([_row(c)], run_id="r")  # would be 000001 by its own count: finds it taken
    assert len(Catalog.load(root)) == 3


def test_a_continued_run_numbers_its_files_after_the_last_one_it_left(root: Location) -> None:
    Catalog.load(root).append([_row(_file("a"))], run_id="r")
    (Path(root.path) / "files" / "part-r-000000.parquet").rename(Path(root.path) / "files" / "part-r-000004.parquet")
    Catalog.load(root).append([_row(_file("b"))], run_id="r")
    Catalog.load(root).append([_row(_file("c"))], run_id="r-2")  # another run whose id starts the same
    names = sorted(p.name for p in (Path(root.path) / "files").iterdir())
    assert names == ["part-r-000004.parquet", "part-r-000005.parquet", "part-r-2-000000.parquet"]


def test_rows_that_do_not_fit_the_schema_are_refused(root: Location) -> None:
    with pytest.raises(ValueError, match="FILES_SCHEMA"):
        Catalog.load(root).append([{**_row(_file("a")), "size_bytes": "big"}], run_id="r")


def test_latest_finds_a_file_by_its_full_uri_too(root: Location) -> None:
    secret = ArchiveFile("s3://b/v.mp4?token=SECRET", 1, T0, None)
    catalog = _catalog(root, _row(secret))
    assert "SECRET" not in str(catalog.uris())
    assert catalog.latest(secret.uri) == catalog.latest(secret.shown_uri) is not None


def test_a_catalog_of_many_append_files_plans_a_thousand_files(root: Location) -> None:
    files = [_file(f"f{i:04d}") for i in range(1000)]
    writer = Catalog.load(root)
    for start in range(0, 1000, 10):  # 100 small files, as a run that appends every few files leaves
        writer.append([_row(f) for f in files[start:start + 10]], run_id="big")
    catalog = Catalog.load(root)
    assert len(catalog) == 1000
    plan = plan_work(files + [_file("new")], catalog, ["person"], CKPT)
    assert plan.up_to_date == 1000 and [i.file.uri for i in plan.items] == ["/archive/new.mp4"]


def test_catalog_on_s3(s3_env) -> None:
    root = resolve(s3_env.bucket() + "/index")
    a = _file("a")
    Catalog.load(root).append([_row(a)], run_id="r")
    Catalog.load(root).append([_row(a, at=T0 + timedelta(seconds=1), status=FAILED)], run_id="r")
    loaded = Catalog.load(root)
    assert loaded.latest(a.uri)["status"] == FAILED and len(loaded) == 1
    assert sorted(i.base_name for i in root.join("files").list()) == ["part-r-000000.parquet",
                                                                      "part-r-000001.parquet"]


# --- planning -----------------------------------------------------------------------------------------------


def test_a_new_file_gets_a_full_pass(root: Location) -> None:
    item = _only(plan_work([_file("a")], Catalog.load(root), ["person", "car", "person"], CKPT))
    assert item.reason == "new" and item.concepts == item.all_concepts == ("person", "car")
    assert item.stale_parts == item.keep_parts == () and item.first_track_id == 0


@pytest.mark.parametrize("changed", [_file("a", size=101), _file("a", mtime=T0 + timedelta(microseconds=1)),
                                     _file("a", etag="e2")])
def test_a_changed_file_gets_a_full_pass_replacing_its_parts(root: Location, changed: ArchiveFile) -> None:
    catalog = _catalog(root, _row(_file("a"), parts=("p1", "p2")))
    item = _only(plan_work([changed], catalog, ["person"], CKPT))
    assert item.reason == "changed" and item.stale_parts == ("p1", "p2") and item.keep_parts == ()
    assert item.concepts == ("person",) and item.first_track_id == 0


def test_an_unchanged_file_is_up_to_date(root: Location) -> None:
    a = _file("a", etag="e1")
    plan = plan_work([a], _catalog(root, _row(a)), ["person"], CKPT)
    assert plan.items == [] and plan.up_to_date == 1 and plan.summary() == "1 up to date"


def test_a_failed_file_is_skipped_unless_retried(root: Location) -> None:
    a = _file("a")
    catalog = _catalog(root, _row(a), _row(a, status=FAILED, parts=("p1",), at=T0 + timedelta(minutes=1)))
    plan = plan_work([a], catalog, ["person"], CKPT)
    assert plan.items == [] and plan.failed_skipped == 1 and plan.up_to_date == 0
    assert plan.summary() == "1 failed (use --retry-failed)"
    item = _only(plan_work([a], catalog, ["person"], CKPT, retry_failed=True))
    assert item.reason == "retry" and item.stale_parts == ("p1",) and item.concepts == ("person",)


def test_a_failed_file_that_changed_is_redone(root: Location) -> None:
    catalog = _catalog(root, _row(_file("a"), status=FAILED))
    assert _only(plan_work([_file("a", size=5)], catalog, ["person"], CKPT)).reason == "changed"


def test_another_checkpoint_redoes_the_file(root: Location) -> None:
    a = _file("a")
    item = _only(plan_work([a], _catalog(root, _row(a, checkpoint="sam3-v0")), ["person"], CKPT))
    assert item.reason == "checkpoint_changed" and item.stale_parts == ("p1",) and item.first_track_id == 0


def test_concepts_added_run_only_the_new_concepts_and_keep_the_old_parts(root: Location) -> None:
    a = _file("a")
    catalog = _catalog(root, _row(a, concepts=("person", "dog"), parts=("p1", "p2"), next_track_id=17))
    item = _only(plan_work([a], catalog, ["car", "person", "bike"], CKPT))
    assert item.reason == "concepts_added" and item.concepts == ("car", "bike")
    assert item.all_concepts == ("person", "dog", "car", "bike") and item.kept_concepts == ("person", "dog")
    assert item.keep_parts == ("p1", "p2") and item.stale_parts == () and item.first_track_id == 17


def test_concepts_removed_from_the_watchlist_leave_the_file_up_to_date(root: Location) -> None:
    a = _file("a")
    plan = plan_work([a], _catalog(root, _row(a, concepts=("person", "dog"))), ["dog"], CKPT)
    assert plan.items == [] and plan.up_to_date == 1


def test_force_redoes_every_file(root: Location) -> None:
    a, b, c = _file("a"), _file("b"), _file("c")
    catalog = _catalog(root, _row(a, parts=("pa",)), _row(b, status=FAILED, parts=("pb",)))
    plan = plan_work([a, b, c], catalog, ["person"], CKPT, force=True)
    assert [(i.reason, i.stale_parts) for i in plan.items] == [("forced", ("pa",)), ("forced", ("pb",)),
                                                               ("new", ())]
    assert plan.summary() == "1 new, 2 forced"


def test_summary_counts_every_kind_of_work(root: Location) -> None:
    done = [_file(f"d{i}") for i in range(4)]
    catalog = _catalog(root, *(_row(f) for f in done), _row(_file("x"), status=FAILED),
                       _row(_file("y"), checkpoint="old"))
    files = [*done[:2], _file("d2", size=1), done[3], _file("x"), _file("y"), _file("n1"), _file("n2")]
    plan = plan_work(files, catalog, ["person", "car"], CKPT)
    assert plan.summary() == "2 new, 1 changed, 3 concepts added, 1 checkpoint changed, 1 failed (use --retry-failed)"
    assert plan_work([], catalog, ["person"], CKPT).summary() == "0 up to date"


def test_no_concepts_is_an_error(root: Location) -> None:
    with pytest.raises(ValueError, match="--concept"):
        plan_work([_file("a")], Catalog.load(root), [], CKPT)


# --- catalog rows of finished passes, and the plans they lead to ---------------------------------------------


def _finish(item: WorkItem, status: str, parts=("new-part",), next_track_id: int = 30) -> dict:
    return catalog_row(item, status=status, error="RuntimeError: decoder said no" if status == FAILED else None,
                       duration_s=12.0, frames=300, fps=25.0, checkpoint=CKPT, run_id="r2", processing_s=3.5,
                       next_track_id=next_track_id, parts=[*item.keep_parts, *parts])


def test_a_done_row_makes_the_file_up_to_date_after_a_parquet_round_trip(root: Location) -> None:
    a = _file("a", etag="e1")
    catalog = Catalog.load(root)
    item = _only(plan_work([a], catalog, ["person"], CKPT))
    catalog.append([_finish(item, DONE)], run_id="r2")
    row = Catalog.load(root).latest(a.uri)
    assert row["parts"] == ["new-part"] and row["concepts"] == ["person"] and row["next_track_id"] == 30
    assert row["status"] == DONE and row["error"] is None and row["size_bytes"] == 100 and row["etag"] == "e1"
    assert plan_work([a], Catalog.load(root), ["person"], CKPT).up_to_date == 1


def test_a_done_concepts_added_row_covers_old_and_new_concepts(root: Location) -> None:
    a = _file("a")
    catalog = _catalog(root, _row(a, concepts=("person",), parts=("p1",), next_track_id=5))
    item = _only(plan_work([a], catalog, ["person", "car"], CKPT))
    catalog.append([_finish(item, DONE)], run_id="r2")
    row = Catalog.load(root).latest(a.uri)
    assert row["concepts"] == ["person", "car"] and row["parts"] == ["p1", "new-part"]
    assert plan_work([a], Catalog.load(root), ["car", "person"], CKPT).up_to_date == 1


def test_a_failed_concepts_added_pass_keeps_the_earlier_state(root: Location) -> None:
    a = _file("a")
    catalog = _catalog(root, _row(a, concepts=("person",), parts=("p1",), next_track_id=5))
    item = _only(plan_work([a], catalog, ["person", "car"], CKPT))
    catalog.append([_finish(item, FAILED, parts=())], run_id="r2")
    row = Catalog.load(root).latest(a.uri)
    assert row["status"] == FAILED and row["error"] == "RuntimeError: decoder said no"
    assert row["concepts"] == ["person"] and row["parts"] == ["p1"] and row["next_track_id"] == 5
    retry = _only(plan_work([a], Catalog.load(root), ["person", "car"], CKPT, retry_failed=True))
    assert retry.reason == "retry" and retry.stale_parts == ("p1",) and retry.concepts == ("person", "car")


def test_a_failed_full_pass_lists_every_part_that_may_hold_rows_of_the_file(root: Location) -> None:
    a = _file("a")
    catalog = _catalog(root, _row(a, concepts=("person",), parts=("old",), next_track_id=5))
    item = _only(plan_work([_file("a", size=7)], catalog, ["person"], CKPT))
    catalog.append([_finish(item, FAILED, parts=("half-written",))], run_id="r2")
    row = Catalog.load(root).latest(a.uri)
    # the old rows were to be replaced: they cover nothing now, but a retry must still delete them
    assert row["concepts"] == [] and row["next_track_id"] == 0 and row["size_bytes"] == 7
    assert row["parts"] == ["old", "half-written"]
    retry = _only(plan_work([_file("a", size=7)], Catalog.load(root), ["person"], CKPT, retry_failed=True))
    assert retry.stale_parts == ("old", "half-written")


def test_failure_errors_show_no_secrets() -> None:
    file = ArchiveFile("s3://b/v.mp4?token=SECRET", 1, T0, None)
    item = WorkItem(file, ("person",), ("person",), (), (), 0, "new")
    row = catalog_row(item, status=FAILED, error=f"cannot open {file.uri}", duration_s=None, frames=0, fps=None,
                      checkpoint=CKPT, run_id="r", processing_s=0.1, next_track_id=0, parts=())
    assert "SECRET" not in row["error"] and "SECRET" not in row["uri"]
    with pytest.raises(ValueError, match="status"):
        catalog_row(item, status="partial", error=None, duration_s=None, frames=0, fps=None, checkpoint=CKPT,
                    run_id="r", processing_s=0.1, next_track_id=0, parts=())

"""``sam3-stream query``: clips of a concept from an index dataset on disk, SQL over its views, clip and
thumbnail export, and the one-line errors of bad input."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import av
import pytest
from PIL import Image

from operators.index_tables import EVENTS, FILES, SCHEMAS, TRACK_SUMMARIES, TRACKS
from pipeline.cli import main
from pipeline.index.query import Clip, QueryError, find_clips, open_views
from tests.index_dataset import CURRENT, STALE, current_clips, write_index_dataset, write_video


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("index")
    videos = {name: str(write_video(root / f"{name}.mp4")) for name in ("a", "b", "c")}
    return write_index_dataset(str(root / "dataset"), videos)


def _names(dataset, clips: list[Clip]) -> list[tuple[str, int]]:
    by_uri = {uri: name for name, uri in dataset.videos.items()}
    return [(by_uri[c.uri], c.track_id) for c in clips]


def test_clips_of_a_concept_by_file_then_start_case_insensitive(dataset):
    clips = find_clips(open_views(dataset.uri), "PERSON")
    assert _names(dataset, clips) == current_clips("person") == [("a", 1), ("a", 2), ("b", 1)]
    first = clips[0]
    assert (first.concept, first.start_s, first.end_s, first.duration_s, first.score) == ("person", 0.5, 3.5, 3.0, 0.92)
    assert _names(dataset, find_clips(open_views(dataset.uri), "red car")) == [("a", 3)]


def test_min_seconds_min_score_and_limit_filter_clips(dataset):
    con = open_views(dataset.uri)
    assert _names(dataset, find_clips(con, "person", min_seconds=2.0)) == [("a", 1), ("b", 1)]
    assert _names(dataset, find_clips(con, "person", min_score=0.7)) == [("a", 1), ("b", 1)]
    assert _names(dataset, find_clips(con, "person", min_seconds=2.5, min_score=0.7)) == [("a", 1)]
    assert _names(dataset, find_clips(con, "person", min_score=0.93)) == []
    assert _names(dataset, find_clips(con, "person", limit=2)) == [("a", 1), ("a", 2)]


def test_stale_parts_and_failed_files_are_not_current(dataset):
    con = open_views(dataset.uri)
    stale_name, stale_track = STALE
    assert (dataset.stale_part + ".parquet") in {p.name for p in (Path(dataset.uri) / TRACKS).iterdir()}
    for table in (TRACKS, TRACK_SUMMARIES, EVENTS):
        id_column = "uri" if table == TRACK_SUMMARIES else "stream_id"
        rows = con.execute(f"SELECT DISTINCT {id_column}, track_id FROM {table}").fetchall()
        assert (dataset.videos[stale_name], stale_track.track_id) not in rows, table
        assert dataset.videos["c"] not in {uri for uri, _ in rows}, table
    expected = sum(t.end_frame - t.start_frame + 1 for tracks in CURRENT.values() for t in tracks)
    assert con.execute(f"SELECT count(*) FROM {TRACKS}").fetchone()[0] == expected
    assert con.execute(f"SELECT count(*) FROM {FILES}").fetchone()[0] == 5  # every catalog row ever written
    assert dict(con.execute("SELECT uri, status FROM catalog").fetchall()) == {
        dataset.videos["a"]: "done", dataset.videos["b"]: "done", dataset.videos["c"]: "failed"}


def test_a_concept_indexed_but_never_seen_has_no_clips(dataset):
    assert find_clips(open_views(dataset.uri), "Bicycle") == []


def test_an_unknown_concept_lists_the_known_ones_closest_first(dataset):
    with pytest.raises(QueryError) as raised:
        find_clips(open_views(dataset.uri), "persn")
    message = str(raised.value)
    assert "'persn'" in message and "\n" not in message
    known = message.split("it has: ")[1].split(", ")
    assert known[0] == "person" and sorted(known) == sorted(["person", "Red Car", "bicycle", "dog"])
    with pytest.raises(QueryError, match="no concept 'cat'"):  # only the failed file was indexed for it
        find_clips(open_views(dataset.uri), "cat")


def test_tables_not_written_yet_are_empty_views_with_their_schema(tmp_path):
    (tmp_path / "fresh").mkdir()
    con = open_views(str(tmp_path / "fresh"))
    for table in (FILES, TRACKS, TRACK_SUMMARIES, EVENTS, "catalog"):
        assert con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0
        columns = [row[0] for row in con.execute(f"DESCRIBE {table}").fetchall()]
        assert columns == SCHEMAS.get(table, SCHEMAS[FILES]).names
    with pytest.raises(QueryError, match="no indexed concept yet"):
        find_clips(con, "person")


def test_json_output_is_one_array_and_nothing_else(dataset, capsys):
    assert main(["query", dataset.uri, "person", "--min-seconds", "1.5", "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [(r["uri"], r["track_id"]) for r in records] == [(dataset.videos["a"], 1), (dataset.videos["b"], 1)]
    assert records[0] == {"uri": dataset.videos["a"], "track_id": 1, "concept": "person", "start_s": 0.5,
                          "end_s": 3.5, "duration_s": 3.0, "score": 0.92}


def test_csv_output_has_a_header(dataset, capsys):
    assert main(["query", dataset.uri, "dog", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["uri"], r["track_id"], r["start_s"], r["end_s"], r["score"]) for r in rows] == [
        (dataset.videos["b"], "2", "1.2", "2.4", "0.6")]


def test_table_output_lists_every_clip(dataset, capsys):
    assert main(["query", dataset.uri, "person", "--min-score", "0.6"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if dataset.videos["a"] in line or dataset.videos["b"] in line]
    assert len(lines) == 2 and "0.92" in lines[0] and "0.7" in lines[1]
    assert "duration_s" in out


def test_sql_runs_over_the_views_without_a_concept(dataset, capsys):
    sql = "SELECT type, count(*) AS n FROM events GROUP BY type ORDER BY type"
    assert main(["query", dataset.uri, "--sql", sql, "--format", "json"]) == 0
    tracks = sum(len(t) for t in CURRENT.values())
    assert json.loads(capsys.readouterr().out) == [{"type": "track_end", "n": tracks},
                                                    {"type": "track_start", "n": tracks}]
    assert main(["query", dataset.uri, "--sql", "SELECT uri, indexed_at, parts FROM catalog ORDER BY uri",
                 "--format", "csv", "--limit", "1"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 1 and rows[0]["uri"] == dataset.videos["a"]
    assert rows[0]["indexed_at"].startswith("2025-05-02") and json.loads(rows[0]["parts"])[0]


def test_bad_input_exits_2_with_one_line(dataset, tmp_path, capsys):
    assert main(["query", dataset.uri, "--sql", "SELEC * FROM tracks"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sam3-stream: error: --sql: Parser Error") and err.count("\n") == 1
    assert main(["query", dataset.uri, "--sql", "SELECT * FROM nowhere"]) == 2
    assert "nowhere" in capsys.readouterr().err
    missing = tmp_path / "no-such-dataset"
    assert main(["query", str(missing), "person"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "sam3-stream index" in err and err.count("\n") == 1
    assert main(["query", dataset.uri, "persn", "--format", "json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "it has: person" in captured.err
    assert main(["query", dataset.uri]) == 2
    assert "CONCEPT" in capsys.readouterr().err


def test_export_clips_and_thumbnails(dataset, tmp_path, capsys):
    clips_dir, thumbs_dir = tmp_path / "clips", tmp_path / "thumbs"
    assert main(["query", dataset.uri, "person", "--min-seconds", "1.5", "--format", "json",
                 "--export-clips", str(clips_dir), "--thumbnails", str(thumbs_dir)]) == 0
    records = json.loads(capsys.readouterr().out)
    stems = ["a-track1-person-500", "b-track1-person-0"]
    assert [r["clip"] for r in records] == [str(clips_dir / f"{s}.mp4") for s in stems]
    assert [r["thumbnail"] for r in records] == [str(thumbs_dir / f"{s}.jpg") for s in stems]
    assert sorted(p.name for p in clips_dir.iterdir()) == [f"{s}.mp4" for s in stems]
    for record in records:
        with Image.open(record["thumbnail"]) as image:
            assert image.format == "JPEG" and image.size == (64, 48)
            image.verify()
        with av.open(record["clip"]) as clip:
            frames = [f.time for f in clip.decode(video=0)]
        assert frames[0] == 0.0
        assert record["duration_s"] <= frames[-1] <= record["duration_s"] + 1.0 + 0.1  # a GOP is 1 s


def test_a_dataset_and_videos_on_s3(s3_env, tmp_path, capsys):
    bucket = s3_env.bucket()
    client = s3_env.client()
    videos = {}
    for name in ("a", "b", "c"):
        local = write_video(tmp_path / f"{name}.mp4")
        client.upload_file(str(local), bucket.removeprefix("s3://"), f"videos/{name}.mp4")
        videos[name] = f"{bucket}/videos/{name}.mp4"
    dataset = write_index_dataset(f"{bucket}/index", videos)

    assert _names(dataset, find_clips(open_views(dataset.uri), "person")) == current_clips("person")
    assert main(["query", dataset.uri, "red car", "--format", "json", "--export-clips", str(tmp_path / "clips")]) == 0
    [record] = json.loads(capsys.readouterr().out)
    assert record["uri"] == videos["a"] and record["clip"] == str(tmp_path / "clips" / "a-track3-red-car-2000.mp4")
    with av.open(record["clip"]) as clip:
        assert clip.streams.video[0].codec_context.name == "h264" and len(list(clip.decode(video=0))) > 10
    assert main(["query", f"{bucket}/no-index-here", "person"]) == 2
    assert f"{bucket}/no-index-here" in capsys.readouterr().err


def test_a_clip_that_cannot_be_cut_is_skipped_and_exits_3(tmp_path, capsys, caplog):
    videos = {name: str(write_video(tmp_path / f"{name}.mp4")) for name in ("a", "b", "c")}
    Path(videos["b"]).write_bytes(b"truncated")  # the file changed after it was indexed
    dataset = write_index_dataset(str(tmp_path / "dataset"), videos)
    assert main(["query", dataset.uri, "person", "--min-seconds", "1.5", "--format", "json",
                 "--export-clips", str(tmp_path / "clips")]) == 3
    captured = capsys.readouterr()
    records = json.loads(captured.out)
    assert [bool(r["clip"]) for r in records] == [True, False]
    assert Path(records[0]["clip"]).is_file() and "Traceback" not in captured.err
    assert f"{videos['b']} track 1: clip not exported" in caplog.text

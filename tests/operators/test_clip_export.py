"""Clip export: packets copied from the keyframe at or before the start, rebased to 0, audio along;
a re-encode only where the output cannot take the source's codec."""

from __future__ import annotations

import logging

import av
import pytest

from operators.clip_export import ClipExportError, export_clip
from tests.index_dataset import FPS, GOP, write_video

GOP_S = GOP / FPS


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("clip") / "source.mp4", audio=True)


def _video_packets(path) -> list[tuple[int, bytes]]:
    with av.open(str(path)) as container:
        return [(p.pts, bytes(p)) for p in container.demux(video=0) if p.size]


def _decoded_times(path) -> list[float]:
    with av.open(str(path)) as container:
        return [frame.time for frame in container.decode(video=0)]


@pytest.mark.parametrize(("start_s", "end_s", "keyframe_s"), [(1.5, 2.2, 1.0), (2.0, 3.0, 2.0), (0.0, 3.9, 0.0)])
def test_packets_are_copied_from_the_keyframe_at_or_before_the_start(source, tmp_path, start_s, end_s, keyframe_s):
    clip = export_clip(str(source), start_s, end_s, tmp_path / "clip.mp4")
    assert clip.copied and clip.path == tmp_path / "clip.mp4"
    assert clip.source_start_s == pytest.approx(keyframe_s)

    with av.open(str(source)) as src, av.open(str(clip.path)) as out:
        assert out.streams.video[0].codec_context.name == src.streams.video[0].codec_context.name
        assert (out.streams.video[0].width, out.streams.video[0].height) == (src.streams.video[0].width,
                                                                               src.streams.video[0].height)
        assert [s.codec_context.name for s in out.streams.audio] == ["aac"]
    # no re-encoding: the clip's video packets are the source's own, byte for byte, starting at its keyframe
    source_packets = {payload: pts for pts, payload in _video_packets(source)}
    clip_packets = [payload for _, payload in _video_packets(clip.path)]
    assert len(clip_packets) == clip.video_packets and all(p in source_packets for p in clip_packets)
    assert source_packets[clip_packets[0]] == min(source_packets[p] for p in clip_packets)

    times = _decoded_times(clip.path)
    assert times[0] == 0.0 and times == sorted(times)
    wanted = end_s - start_s
    assert wanted <= times[-1] <= wanted + GOP_S + 1 / FPS  # at most a keyframe interval early, a frame late


def test_audio_is_copied_over_the_clip(source, tmp_path):
    clip = export_clip(str(source), 1.5, 2.5, tmp_path / "clip.mp4")
    with av.open(str(clip.path)) as out:
        audio = out.streams.audio[0]
        seconds = sum(frame.samples for frame in out.decode(audio=0)) / audio.sample_rate
    assert 1.5 - 1 / FPS <= seconds <= 1.5 + 0.1  # from the keyframe at 1.0 s to 2.5 s


def test_a_codec_the_output_cannot_take_is_re_encoded(tmp_path, caplog):
    source = write_video(tmp_path / "source.avi", codec="utvideo")  # MP4 cannot hold Ut Video; every frame is a key
    with caplog.at_level(logging.DEBUG, logger="operators.clip_export"):
        clip = export_clip(str(source), 1.2, 2.0, tmp_path / "clip.mp4")
    assert not clip.copied and clip.source_start_s == pytest.approx(1.2)
    assert "re-encoding" in caplog.text
    with av.open(str(clip.path)) as out:
        assert out.streams.video[0].codec_context.name in ("h264", "mpeg4")
    times = _decoded_times(clip.path)
    assert times[0] == 0.0 and len(times) == clip.video_packets == 9  # 1.2 s .. 2.0 s at 10 fps
    assert not list(tmp_path.glob(".*partial*"))


def test_an_end_before_the_start_is_refused(source, tmp_path):
    with pytest.raises(ClipExportError, match="before its start"):
        export_clip(str(source), 2.0, 1.0, tmp_path / "clip.mp4")
    assert not list(tmp_path.iterdir())


def test_a_source_that_is_not_a_video_is_one_clear_error(tmp_path):
    bogus = tmp_path / "bogus.mp4"
    bogus.write_bytes(b"not a video at all" * 100)
    with pytest.raises(ClipExportError, match="not a video PyAV can read"):
        export_clip(str(bogus), 0.0, 1.0, tmp_path / "clip.mp4")
    assert not (tmp_path / "clip.mp4").exists()

"""Source URLs shown without their secrets: ``redact_url``/``redact_text``, and a real LiveSource's logs and errors."""

from __future__ import annotations

import logging

import pytest

from operators.live_source import LiveSource
from operators.redaction import redact_text, redact_url
from operators.synthetic import write_synthetic_video
from operators.video_source import VideoSourceError
from tests.http_files import http_files
from tests.rtsp_server import free_port

SECRET = "S3cretPa55"


@pytest.mark.parametrize(("url", "shown"), [
    ("rtsp://admin:S3cretPa55@10.0.0.5/stream1", "rtsp://admin:***@10.0.0.5/stream1"),
    ("rtsps://admin:S3cretPa55@cam.example.com:322/live?channel=1", "rtsps://admin:***@cam.example.com:322/live?channel=1"),
    ("RTSP://Admin:S3cretPa55@HOST/stream", "RTSP://Admin:***@HOST/stream"),
    # the user alone is no secret
    ("rtsp://admin@10.0.0.5/stream1", "rtsp://admin@10.0.0.5/stream1"),
    ("rtsp://admin:@10.0.0.5/stream1", "rtsp://admin:***@10.0.0.5/stream1"),
    # '@' and ':' in the password, percent-encoded or not (the user info ends at the last '@' of the authority)
    ("rtsp://admin:p%40ss%3Aw0rd@10.0.0.5/s", "rtsp://admin:***@10.0.0.5/s"),
    ("rtsp://admin:p@ss:w0rd@10.0.0.5/s", "rtsp://admin:***@10.0.0.5/s"),
    ("rtsp://ad%40min:pw@10.0.0.5/s", "rtsp://ad%40min:***@10.0.0.5/s"),
    # unencoded '#', '?' or '/' in the password: not a valid URL, but the password is masked all the same
    ("rtsp://admin:pa#ss@10.0.0.5/s", "rtsp://admin:***@10.0.0.5/s"),
    ("rtsp://admin:pa?ss@10.0.0.5/s", "rtsp://admin:***@10.0.0.5/s"),
    ("rtsp://admin:pa/ss@10.0.0.5/s", "rtsp://admin:***@10.0.0.5/s"),
    # IPv6 hosts
    ("rtsp://admin:S3cretPa55@[fe80::1]:554/stream", "rtsp://admin:***@[fe80::1]:554/stream"),
    ("rtsp://admin:S3cretPa55@[fe80::1%25eth0]/stream", "rtsp://admin:***@[fe80::1%25eth0]/stream"),
    ("rtsp://[::1]:8554/stream", "rtsp://[::1]:8554/stream"),
    # no scheme, or scheme-relative
    ("admin:S3cretPa55@10.0.0.5/stream", "admin:***@10.0.0.5/stream"),
    ("//admin:S3cretPa55@10.0.0.5/stream", "//admin:***@10.0.0.5/stream"),
    # secret query parameters of HTTP(S) and HLS URLs; other parameters stay
    ("https://cdn.example.com/live/index.m3u8?token=abc123&quality=hd",
     "https://cdn.example.com/live/index.m3u8?token=***&quality=hd"),
    ("http://cam/video.mjpg?user=admin&password=S3cretPa55", "http://cam/video.mjpg?user=admin&password=***"),
    ("https://s3.example.com/v.mp4?X-Amz-Credential=AKIA&X-Amz-Signature=ff00&X-Amz-Expires=60",
     "https://s3.example.com/v.mp4?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=60"),
    ("https://h/v.m3u8?Key-Pair-Id=K1&Signature=xyz&Policy=p", "https://h/v.m3u8?Key-Pair-Id=K1&Signature=***&Policy=p"),
    ("https://h/v.m3u8?sig=1;api_key=2&access_token=3&key=4#t=5", "https://h/v.m3u8?sig=***;api_key=***&access_token=***&key=***#t=5"),
    ("https://h/v.m3u8?PWD=x&monkey=banana", "https://h/v.m3u8?PWD=***&monkey=banana"),
    ("https://u:pw@h/v.m3u8?token=t", "https://u:***@h/v.m3u8?token=***"),
    # nothing secret: unchanged, '@' in a path or query included
    ("http://example.com/users/a@b/stream.m3u8", "http://example.com/users/a@b/stream.m3u8"),
    ("http://example.com:8080/x?email=a@b.c", "http://example.com:8080/x?email=a@b.c"),
    ("/data/cam@lobby/clip.mp4", "/data/cam@lobby/clip.mp4"),
    ("/data/clips/*.mp4", "/data/clips/*.mp4"),
    ("rtsp://10.0.0.5:554/stream1", "rtsp://10.0.0.5:554/stream1"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown
    assert redact_url(shown) == shown  # showing a shown URL changes nothing


def test_redact_text_masks_the_password_wherever_it_appears():
    url = "rtsp://admin:p%40ss%2Fw0rd@10.0.0.5/stream"
    text = (f"Cannot open video stream {url} (Connection refused); "
            "DESCRIBE for rtsp://admin:p%40ss%2Fw0rd@10.0.0.5/stream failed: user admin password p@ss/w0rd")
    shown = redact_text(text, url)
    for secret in ("p%40ss%2Fw0rd", "p@ss/w0rd", "w0rd"):
        assert secret not in shown, shown
    assert shown.startswith("Cannot open video stream rtsp://admin:***@10.0.0.5/stream (Connection refused)")
    assert shown.endswith("user admin password ***")


def test_redact_text_masks_query_secrets_decoded_and_as_written():
    url = "https://cdn/x.m3u8?token=a%2Bb%3Dc&q=1"
    shown = redact_text(f"GET {url} -> 403 (token a+b=c expired)", url)
    assert shown == "GET https://cdn/x.m3u8?token=***&q=1 -> 403 (token *** expired)"


def test_redact_text_without_a_url_masks_urls_it_quotes():
    text = "redirected to rtsp://op:hunter2@10.0.0.9/main and https://cdn/x?sig=abc from rtsp://10.0.0.5:554/s"
    assert redact_text(text) == "redirected to rtsp://op:***@10.0.0.9/main and https://cdn/x?sig=*** from rtsp://10.0.0.5:554/s"
    assert redact_text("nothing secret: a=b & key") == "nothing secret: a=b & key"


def test_unreachable_live_source_never_shows_its_password(caplog):
    url = f"rtsp://admin:{SECRET}@127.0.0.1:{free_port()}/stream"  # nothing listens there
    source = LiveSource(url, reconnect_initial_s=0.05, reconnect_max_s=0.1, max_reconnects=2, open_timeout_s=1)
    with caplog.at_level(logging.DEBUG, logger="operators.live_source"), pytest.raises(VideoSourceError) as raised:
        list(source)
    error = raised.value
    waits = [r for r in caplog.records if r.getMessage().startswith("reconnecting to")]
    assert len(waits) == 2, caplog.text
    assert all("rtsp://admin:***@127.0.0.1" in r.getMessage() for r in waits), caplog.text
    assert "gave up after 2 failed reconnection attempts" in str(error)
    assert error.source == redact_url(url) and isinstance(error.__cause__, VideoSourceError)
    # FFmpeg's message quotes the URL; it reaches the log and the error only masked
    assert "Cannot open video stream rtsp://admin:***@" in str(error.__cause__)
    for text in (caplog.text, str(error), str(error.__cause__), error.__cause__.source):
        assert SECRET not in text, text
    assert error.__cause__.__cause__ is None and error.__cause__.__context__ is None  # no raw traceback rides along
    assert source.url == url  # the connection itself used the real URL


def test_reconnect_callback_gets_the_error_without_the_password(tmp_path, caplog):
    clip = write_synthetic_video(tmp_path / "clip.mp4", 5, (64, 48), 10.0)
    calls = []
    with http_files(tmp_path, fail_first=clip.name) as host:
        url = f"http://viewer:{SECRET}@{host}/{clip.name}?token={SECRET}x"
        source = LiveSource(url, reconnect_initial_s=0.05, reconnect_max_s=0.1, max_reconnects=3, open_timeout_s=5,
                            on_reconnect=lambda *args: calls.append(args))
        with caplog.at_level(logging.DEBUG, logger="operators.live_source"):
            frames = list(source)
    assert len(frames) == 5 and len(calls) == 1, (len(frames), calls)
    attempt, error, _downtime = calls[0]
    assert attempt == 1 and isinstance(error, VideoSourceError)
    assert f"Cannot open video stream http://viewer:***@{host}/{clip.name}?token=***" in str(error), error
    assert any(r.getMessage().startswith(f"http://viewer:***@{host}/") for r in caplog.records), caplog.text
    for text in (caplog.text, str(error), error.source):
        assert SECRET not in text, text


def test_a_video_url_that_cannot_open_names_it_without_the_password():
    from operators.video_source import VideoSource

    url = f"http://admin:S3cretPa55@127.0.0.1:{free_port()}/clip.mp4?token=T0kenValue"
    with pytest.raises(VideoSourceError) as err:
        VideoSource(url, timeout_s=5)
    shown = f"{err.value} {err.value.source}"
    assert "admin:***@127.0.0.1" in shown
    assert "S3cretPa55" not in shown and "T0kenValue" not in shown

"""Source URLs as they may be shown or stored: without their secrets.

A camera URL often holds a password (``rtsp://admin:PASSWORD@host/...``) and a signed HTTP(S) or
HLS URL a token or signature (``?token=...``, ``&sig=...``). Only the connection uses a source as
written. Wherever a source is shown or stored (logs, events, records, errors, metrics, the
progress table) it goes through :func:`redact_url`, and any text that may quote it (FFmpeg's
error messages do) through :func:`redact_text`.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, unquote_plus

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+://")
MASK = "***"
# key=value of a query (or path parameters); names may be percent-encoded, values never span whitespace
_PARAM = re.compile(r"([?&;])([^=&;#?\s]+)=([^&;#\s]*)")
# names of query parameters whose values are secrets: passwords, tokens, API keys, signed-URL signatures
_SECRET_PARAM = re.compile(r"(?:^|[-_.])(?:api|access|secret|private|session|auth)?"
                           r"(?:password|passwd|pwd|pass|passphrase|token|key|sig|signature|secret|credentials?|auth)$",
                           re.IGNORECASE)
# a well-formed host[:port] (IPv6 in brackets): an authority like this has no user info in it
_HOST_PORT = re.compile(r"(?:\[[0-9A-Za-z:.%_-]*\]|[^\s:@\[\]]*)(?::\d*)?")
# user:password@ of any URL inside free text; the password runs to the last '@' before a '/' or a blank
_TEXT_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]*):[^\s/]*@")


def redact_url(url: str) -> str:
    """``url`` as it may be shown or stored: the password of its user info and the values of secret
    query parameters (``password=``, ``token=``, ``key=``, ``sig=``, ...) read ``***``; the user,
    host, path and every other part stay. Paths and URLs without secrets come back unchanged."""
    if "@" not in url and "=" not in url:
        return url  # the common case, and the one on the per-record path
    head, userinfo, rest = _split_userinfo(url)
    if userinfo is not None:
        user, has_password, _password = userinfo.partition(":")
        head += f"{user}:{MASK}@" if has_password else f"{user}@"
    return head + _PARAM.sub(_mask_param, rest)


def redact_text(text: str, url: str | None = None) -> str:
    """``text`` (an error message, a log line) with the secrets of ``url`` masked wherever they appear,
    as written or percent-decoded, and with the passwords and secret query values of any URL in it masked."""
    if url:
        shown = redact_url(url)
        if shown != url:
            text = text.replace(url, shown)
        for secret in sorted(_url_secrets(url), key=len, reverse=True):
            text = text.replace(secret, MASK)
    text = _TEXT_USERINFO.sub(rf"\1:{MASK}@", text)
    return _PARAM.sub(_mask_param, text)


def _split_userinfo(url: str) -> tuple[str, str | None, str]:
    """(``scheme://``, user info or None, the rest from the host on)."""
    match = _SCHEME.match(url)
    if match is not None:
        head = match.group(0)
    elif url.startswith("//"):
        head = "//"
    else:
        head = ""  # no scheme: user info only when the first path segment reads user:password@host
        first = url.split("/", 1)[0]
        if "@" not in first or ":" not in first.split("@", 1)[0]:
            return url, None, ""
    rest = url[len(head):]
    # FFmpeg and urllib take the authority up to the first '/', '?' or '#', and its user info up to the
    # last '@' in it. A password that holds an unencoded '#', '?' or '/' leaves an authority that is no
    # host[:port]; its user info then runs to a later '@', so the password is still masked.
    strict = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    loose = rest.find("/") if "/" in rest else len(rest)
    for end in (strict, loose):
        at = rest.rfind("@", 0, end)
        if at >= 0:
            return head, rest[:at], rest[at + 1:]
        if _HOST_PORT.fullmatch(rest[:end]):
            return head, None, rest
    at = rest.find("@")
    return (head, rest[:at], rest[at + 1:]) if at >= 0 else (head, None, rest)


def _mask_param(match: re.Match) -> str:
    separator, name, value = match.groups()
    if not value or not _SECRET_PARAM.search(unquote(name)):
        return match.group(0)
    return f"{separator}{name}={MASK}"


def _url_secrets(url: str) -> set[str]:
    """The secrets of ``url`` as written and percent-decoded: its password and its secret query values."""
    _head, userinfo, rest = _split_userinfo(url)
    found = []
    if userinfo is not None and ":" in userinfo:
        found.append(userinfo.partition(":")[2])
    found += [m.group(3) for m in _PARAM.finditer(rest) if m.group(3) and _SECRET_PARAM.search(unquote(m.group(2)))]
    secrets = {form for raw in found for form in (raw, unquote(raw), unquote_plus(raw))}
    return secrets - {"", MASK}

"""The checkpoint error and the one-sentence messages it carries, hub failures included.

Every failure a user can fix raises :class:`CheckpointError` whose message says what to do.
"""

from __future__ import annotations

_SHOWN = 5  # how many keys a message names
_NETWORK_MODULES = ("httpx", "httpx2", "requests", "urllib3")


class CheckpointError(ValueError):
    """A checkpoint spec or file that cannot be used as given.

    A ValueError because it is always about the input (a path, repo id, token or file contents), so
    callers that turn bad arguments into a usage error (CLI exit code 2) treat it the same way.
    """


def first_keys(keys: list[str]) -> str:
    """The first few keys, comma-separated, with a count of the rest."""
    return ", ".join(keys[:_SHOWN]) + (f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


def hub_failure_kind(err: Exception) -> str:
    """Sort a hub exception into gated / revision / not_found / auth / unreachable / other."""
    from huggingface_hub import errors

    if isinstance(err, errors.GatedRepoError):
        return "gated"
    if isinstance(err, errors.RevisionNotFoundError):
        return "revision"
    if isinstance(err, errors.RepositoryNotFoundError):
        return "not_found"
    if isinstance(err, errors.HfHubHTTPError):
        return "auth" if getattr(err.response, "status_code", None) in (401, 403) else "unreachable"  # else: hub down
    if isinstance(err, OSError | TimeoutError) or type(err).__module__.split(".")[0] in _NETWORK_MODULES:
        return "unreachable"
    return "other"


def hub_failure_message(kind: str, repo: str, revision: str | None, err: Exception) -> str:
    return {
        "gated": f"{repo} is gated: accept the licence on https://huggingface.co/{repo} and set HF_TOKEN, or pass a local directory or file.",
        "not_found": f"{repo!r} is neither a local path nor a hub model repo you can access: check the spelling, set HF_TOKEN if it is private, or pass a local directory or file.",
        "revision": f"revision {revision!r} does not exist in {repo}: pass an existing branch, tag or commit, or leave out the @revision.",
        "auth": f"the hub refused access to {repo}: set HF_TOKEN to a valid read token that can see it, or pass a local directory or file.",
        "unreachable": f"the hub is unreachable ({type(err).__name__}) and {repo} is neither cached nor a local path: pass a local directory or file, or set HF_HUB_OFFLINE=1 with a cached copy.",
    }.get(kind, f"downloading {repo} failed ({type(err).__name__}: {err}): pass a local directory or file instead.")

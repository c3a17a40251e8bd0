"""``ndkd export --push-to-hub REPO_ID``: upload an export folder to a Hugging Face model repo.

``huggingface_hub`` (the ``ndkd[hub]`` extra) is imported only here, when a push is asked
for. The token is the one ``huggingface_hub`` finds itself (``HF_TOKEN``, else the cached
``hf auth login``). Every failure (no library, no token, offline, an HTTP error) is a
:class:`HubPushError`, a ``ValueError`` whose one-line message names the repo.
"""

from __future__ import annotations

import os
from pathlib import Path


class HubPushError(ValueError):
    """The push did not happen or did not finish; the message is one line naming the repo."""


def push_to_hub(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool = False,
    commit_message: str | None = None,
) -> str:
    """Create the model repo ``repo_id`` if needed (``private`` when new) and upload ``folder``
    to its root. Returns the repo's URL.

    Raises:
        HubPushError: ``huggingface_hub`` missing, no token, offline mode, no network or an
            error answered by the Hub.
    """
    try:
        import huggingface_hub
    except ImportError:
        raise HubPushError(
            f"--push-to-hub {repo_id}: huggingface_hub is not installed; "
            "pip install 'ndkd[hub]' (or huggingface-hub>=0.20)"
        ) from None
    folder = Path(folder)
    token = _get_token(huggingface_hub)
    if not token:
        raise HubPushError(
            f"--push-to-hub {repo_id}: no Hugging Face token found; set HF_TOKEN or run "
            "`hf auth login` (the export stays written)"
        )
    api = huggingface_hub.HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private or None, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            commit_message=commit_message or f"ndkd export: {folder.name}",
        )
    except _hub_errors() as error:
        raise HubPushError(
            f"--push-to-hub {repo_id}: push failed ({_cause(error)}); the export stays "
            f"written at {folder}"
        ) from error
    return str(url)


def _get_token(huggingface_hub) -> str | None:
    getter = getattr(huggingface_hub, "get_token", None)
    if getter is None:  # older releases: only in huggingface_hub.utils
        from huggingface_hub.utils import get_token as getter
    return getter()


def _hub_errors() -> tuple[type[BaseException], ...]:
    """What a push can raise for a reason outside ndkd: the Hub's own errors (HTTP, token,
    offline, an invalid repo id: ValueError), OSError (requests' ConnectionError is one) and
    the HTTP client's transport errors."""
    errors: list[type[BaseException]] = [OSError, ValueError]
    from huggingface_hub import utils

    for name in ("HfHubHTTPError", "LocalTokenNotFoundError", "OfflineModeIsEnabled"):
        if isinstance(getattr(utils, name, None), type):
            errors.append(getattr(utils, name))
    for module, name in (
        ("requests", "RequestException"),
        ("httpx", "HTTPError"),
        ("httpx2", "HTTPError"),  # the client of huggingface_hub >= 1.x / 2.x
    ):
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _cause(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__

"""Fetching torchvision/timm pretrained weights without hanging and with one-line errors.

Weights already in the local cache (torch hub's ``checkpoints`` folder, the Hugging Face hub
cache) load without any network access. Otherwise a quick TCP connection to the weights'
host decides whether a download is tried at all; without a route there, the caller gets one
:class:`ValueError` line within seconds instead of a retry loop or a traceback. Downloads run
with a socket timeout so a stalled connection ends in the same error.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")

CONNECT_TIMEOUT_S = 5.0
SOCKET_TIMEOUT_S = 60.0
_ADVICE = "download them where there is internet or give a checkpoint file"


def download_error(label: str, reason: str) -> ValueError:
    """The one error every failed pretrained-weights fetch raises."""
    return ValueError(f"{label}: pretrained weights could not be downloaded ({reason}); {_ADVICE}")


def unreachable(url: str, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """``None`` when a TCP connection to ``url``'s host opens within ``timeout`` seconds (or a
    proxy is configured, which then decides), else the reason in a few words."""
    if urllib.request.getproxies():
        return None
    parts = urlparse(url)
    if not parts.hostname:
        return f"no host in {url!r}"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as error:
        return f"{parts.hostname} unreachable: {_reason(error)}"
    return None


def torch_hub_cached(url: str) -> bool:
    """Whether torch hub's cache (``$TORCH_HOME/hub/checkpoints``) holds ``url``'s file."""
    return (Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name).is_file()


def fetch(label: str, load: Callable[[], T], timeout: float = SOCKET_TIMEOUT_S) -> T:
    """``load()`` under a socket timeout of ``timeout`` seconds, with torch hub's stderr
    messages sent to the log; any failure becomes :func:`download_error`."""
    captured = io.StringIO()
    try:
        with _socket_timeout(timeout), contextlib.redirect_stderr(captured):
            return load()
    except Exception as error:
        raise download_error(label, _reason(error)) from None
    finally:
        for line in captured.getvalue().splitlines():
            if line.strip():
                log.info("%s: %s", label, line.strip())


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Hugging Face hub downloads answer from the local cache only, for the ``with`` body."""
    try:
        from huggingface_hub import constants
    except ImportError:  # timm without the hub: nothing to switch
        yield
        return
    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def hub_endpoint() -> str:
    """The Hugging Face hub address (``HF_ENDPOINT`` honoured)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return "https://huggingface.co"
    return constants.ENDPOINT


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _reason(error: BaseException) -> str:
    """A short, single-line description of ``error``."""
    reason = getattr(error, "reason", None)  # urllib's URLError wraps the socket error
    if isinstance(reason, BaseException):
        error = reason
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    text = " ".join(str(text).split())
    return text if len(text) <= 160 else text[:157] + "..."

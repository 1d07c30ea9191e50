"""Whether lm-eval's task data can come from the Hugging Face Hub, and a one-line answer when it cannot.

Without a network, the hub clients retry each request with back-off before a traceback (docs/export.md
gives the time). A quick probe decides first; when the hub is out of reach, the run goes on in the
clients' offline mode, where cached datasets and local task files still load and anything else
fails at once, and :func:`hub_failure` recognises that failure for a one-line error.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

TRUE = {"1", "ON", "YES", "TRUE"}
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_host() -> str:
    """The host the hub clients talk to (HF_ENDPOINT, or huggingface.co)."""
    return urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"


def offline_by_setting() -> bool:
    """The user asked for offline mode (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE or TRANSFORMERS_OFFLINE)."""
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(n, "").upper() in TRUE for n in names)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub opens within ``timeout`` s (assumed yes behind a proxy)."""
    if offline_by_setting():
        return False
    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return True  # only the proxy knows; let the clients try
    try:
        socket.create_connection((hub_host(), 443), timeout=timeout).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def hub_offline(enabled: bool) -> Iterator[None]:
    """Put huggingface_hub and datasets in their offline mode for the block (what HF_HUB_OFFLINE=1 does
    at start-up; they read the setting at import, so the block sets their module constants)."""
    if not enabled:
        yield
        return
    import datasets.config
    import huggingface_hub.constants

    saved = huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    huggingface_hub.constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def hub_failure(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) is a failure to reach the hub or find a dataset."""
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    kinds = (ConnectionError, OfflineModeIsEnabled, LocalEntryNotFoundError, DatasetNotFoundError)
    seen: BaseException | None = error
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:
        if isinstance(seen, kinds):
            return True
        visited.add(id(seen))
        seen = seen.__cause__ or seen.__context__
    return False

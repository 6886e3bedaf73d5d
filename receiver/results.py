"""The URLs in a Kling ``task_result``: each one with its kind and index (PROTOCOL.md section
4: ``images``, ``videos``, ``audios``... lists whose items carry ``url`` and other ``*_url``
fields). The plugin event (:meth:`receiver.models.Event.result_urls`) and the dashboard's
task page list results this way."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ResultURL:
    """One URL in ``task_result``: ``kind`` is the list's name made singular, with the URL
    field's prefix (``image``, ``image_watermark``, ``video``, ``video_watermark``, ``audio``),
    ``index`` its position in that list."""

    kind: str
    index: int
    url: str

    @property
    def media(self) -> str:
        """``image``, ``video``, ``audio`` or ``other``: what content type to expect."""
        head = self.kind.split("_", 1)[0]
        return head if head in ("image", "video", "audio") else "other"


def result_urls(task_result: dict[str, Any]) -> Iterator[ResultURL]:
    """Every URL in ``task_result``, in order: for each list (``images``, ``videos``,
    ``audios``...), each item's ``url`` and then its other ``*_url`` fields."""
    for key, items in task_result.items():
        if not isinstance(items, list):
            continue
        singular = key[:-1] if key.endswith("s") else key
        for position, item in enumerate(items):
            if not isinstance(item, dict):
                continue
            index = item.get("index", position)
            index = index if isinstance(index, int) else position
            names = sorted(k for k in item if k == "url" or k.endswith("_url"))
            names.sort(key=lambda k: k != "url")
            for name in names:
                url = item[name]
                if isinstance(url, str) and url:
                    kind = singular if name == "url" else f"{singular}_{name[: -len('_url')]}"
                    yield ResultURL(kind, index, url)

"""Helpers of the report tests: open ``index.html`` in headless Chromium, and read a page's elements back.

``dump_dom`` returns the DOM after the page's scripts ran (its ``load`` handler records, on ``<body>``,
how many images there are and how many did not load: ``naturalWidth == 0``); :class:`Elements` parses
HTML with :mod:`html.parser` into start tags (with attributes) and text.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed (make test installs it: apt-get install -y chromium)")
    return exe


def run_chromium(index: Path, extra: list[str], profile: str) -> str:
    """Run headless Chromium on ``index`` with ``extra`` flags; its stdout."""
    folder = index.parent / f".chromium-profile-{profile}"
    try:
        res = subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={folder}", *extra, index.resolve().as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def dump_dom(index: Path) -> str:
    """The page's DOM once it has loaded (every image fetched, the load handler run)."""
    return run_chromium(index, ["--virtual-time-budget=10000", "--dump-dom"], "dom")


def screenshot(index: Path, png: Path, size: str = "1400,2600") -> None:
    run_chromium(index, [f"--window-size={size}", f"--screenshot={png}"], "shot")


def body_data(dom: str) -> dict[str, str]:
    """The ``data-*`` attributes of ``<body>`` (``images``, ``broken``, ``broken-src``)."""
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    return dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1)))


class Elements(HTMLParser):
    """Every start tag of a page as ``(tag, {attribute: value})``, and its text (entities decoded)."""

    def __init__(self, page: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.chunks: list[str] = []
        self.feed(page)
        self.close()
        self.text = "".join(self.chunks)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_data(self, data):
        self.chunks.append(data)

    def having(self, tag: str | None = None, **attrs: str) -> list[dict[str, str]]:
        """The attributes of each element with this tag (any when None) and these attribute values."""
        return [a for t, a in self.tags if (tag is None or t == tag)
                and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())]

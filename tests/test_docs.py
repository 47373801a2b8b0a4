"""The documentation cannot rot: every Python code block in README.md and docs/*.md runs here, offline
(any connection off this machine fails the test), in the order of its page; the site builds with
``mkdocs build --strict``; and the README keeps its promises (size, the two set-up commands, the
command CI runs).

A block that genuinely needs the network is marked in the page source, on the line before it, with
``<!-- docs-test: skip (the reason) -->``; the reason must be given and the next block must be an
offline equivalent, which runs.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP = re.compile(r"^<!--\s*docs-test:\s*skip\s*(?:\((?P<reason>[^)]*)\))?\s*-->$")
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)\s*$")


class Block:
    def __init__(self, page: Path, line: int, lang: str, code: str, skip: str | None) -> None:
        self.page, self.line, self.lang, self.code, self.skip = page, line, lang, code, skip

    def __repr__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def code_blocks(page: Path) -> list[Block]:
    """Every fenced block of a page (language, code, line of the fence, the skip reason if marked)."""
    lines = page.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m["lang"]:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        previous = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = SKIP.match(previous)
        skip = (marker["reason"] or "").strip() if marker else None
        blocks.append(Block(page, start + 1, m["lang"], "\n".join(body) + "\n", skip))
        i += 1
    return blocks


PYTHON_PAGES = [p for p in PAGES if any(b.lang == "python" for b in code_blocks(p))]


@pytest.fixture
def offline(monkeypatch):
    """Connections to anything but this machine fail, and the Hugging Face libraries stay offline."""
    real_connect = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("127.0.0.1", "::1", "localhost") and not host.startswith("/"):
            raise OSError(f"docs examples must run offline; tried to connect to {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run_offline(page, offline, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # files a block writes land here
    namespace: dict = {"__name__": "__docs__"}
    ran = 0
    for block in code_blocks(page):
        if block.lang != "python" or block.skip is not None:
            continue
        try:
            exec(compile(block.code, f"{block!r}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"the Python block at {block!r} failed: {type(exc).__name__}: {exc}") from exc
        ran += 1
    assert ran > 0


def test_skipped_blocks_say_why_and_have_an_offline_equivalent_next_to_them():
    skipped = 0
    for page in PAGES:
        blocks = code_blocks(page)
        for i, block in enumerate(blocks):
            if block.skip is None:
                continue
            skipped += 1
            assert block.skip, f"{block!r}: a skipped block must give its reason: <!-- docs-test: skip (why) -->"
            assert "network" in block.skip or "download" in block.skip, f"{block!r}: only the network is a reason"
            following = blocks[i + 1] if i + 1 < len(blocks) else None
            assert following is not None and following.lang == "python" and following.skip is None, (
                f"{block!r}: the next block must be an offline equivalent that runs"
            )
    assert skipped >= 1  # the pretrained examples are marked, not silently left out


def test_blocks_are_parsed_with_their_skip_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n```python\nx = 1\n```\n\n<!-- docs-test: skip (needs the network) -->\n```python\nimport nowhere\n```\n"
        "```bash\nls\n```\n"
    )
    blocks = code_blocks(page)
    assert [(b.lang, b.skip, b.line) for b in blocks] == [("python", None, 3), ("python", "needs the network", 8),
                                                          ("bash", None, 11)]
    assert blocks[1].code == "import nowhere\n"


def test_mkdocs_builds_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extras: pip install -e '.[docs]'")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "WARNING" not in proc.stderr, proc.stderr[-4000:]
    site = tmp_path / "site"
    assert (site / "coverage" / "index.html").is_file()  # the generated coverage table is part of the site
    api = (site / "api" / "index.html").read_text()
    for name in ("apply_drop_path", "set_drop_path_rate", "remove_drop_path", "DropPathScheduler", "VerificationError"):
        assert name in api, name  # rendered from the docstrings by mkdocstrings


def test_every_page_is_in_the_navigation():
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("tag:yaml.org,2002:python/name:", lambda loader, suffix, node: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)

    def pages(nav):
        for item in nav:
            for value in item.values() if isinstance(item, dict) else [item]:
                yield from pages(value) if isinstance(value, list) else [value]

    assert sorted(pages(config["nav"])) == sorted(p.name for p in (ROOT / "docs").glob("*.md"))


def test_readme_is_short_and_keeps_the_two_set_up_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 8 * 1024, len(readme.encode())
    main_job = "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[timm,hf]' && python examples/quickstart.py"
    tests = "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && python -m pytest -q"
    assert main_job in readme and tests in readme
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert ci == [tests], ci
    assert 'pip install "droppath-surgery[timm]"' in readme
    first = next(b for b in code_blocks(ROOT / "README.md") if b.lang == "python")
    assert first.skip is None and "import timm" in first.code  # the quickstart runs as pasted


def test_relative_links_in_the_readme_point_at_files():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((?!https?://|#)([^)#\s]+)", readme)
    assert links
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, missing

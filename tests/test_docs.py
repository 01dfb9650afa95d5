"""The documentation site (docs/, mkdocs.yml): it builds with --strict (broken links, anchors
and docstring references fail the build), every relative link of its pages resolves to a file
and, where it names one, an anchor of that page, every docs/<page>.md#<anchor> that the code,
tests, experiment files and notebooks point to exists, and the examples of the learning-rules
page run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.parts)

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCED = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`]*`")
# how code and data files point into the site: docs/design.md#learning-rules-conv2d
DOC_REFERENCE = re.compile(r"docs/((?:[\w-]+/)*[\w-]+\.md)(?:#([\w-]+))?")


class _Ids(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs) -> None:
        self.ids.update(value for name, value in attrs if name == "id" and value)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built as `make docs` builds it, with --strict, into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stderr[-4000:]}"
    return out


def page_html(site: Path, page: Path) -> Path:
    """Where mkdocs writes a page (directory URLs): x.md -> x/index.html, index.md -> index.html."""
    relative = page.relative_to(DOCS).with_suffix("")
    if relative.name == "index":
        return site / relative.parent / "index.html"
    return site / relative / "index.html"


def anchors(site: Path, page: Path) -> set[str]:
    parser = _Ids()
    parser.feed(page_html(site, page).read_text())
    return parser.ids


def relative_links(page: Path) -> list[str]:
    """The targets of the page's Markdown links that are not URLs (code excluded)."""
    text = INLINE_CODE.sub("", FENCED.sub("", page.read_text()))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_pages_are_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    missing = [p.relative_to(DOCS).as_posix() for p in PAGES
               if p.relative_to(DOCS).as_posix() not in nav]  # fmt: skip
    assert not missing, f"pages missing from mkdocs.yml's nav: {missing}"


def test_site_builds_strict(site):
    for page in PAGES:
        assert page_html(site, page).is_file(), page


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(DOCS).as_posix())
def test_relative_links_resolve(site, page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and DOCS in linked.parents:
            if anchor not in anchors(site, linked):
                broken.append(f"{target}: no anchor #{anchor}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def _repository_text_files() -> list[Path]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: nothing to list")
    suffixes = {".py", ".yaml", ".yml", ".ipynb", ".sh", ".toml", ".cfg", ".md", ""}
    return [
        ROOT / name
        for name in sorted(set(listed.split("\0")))
        if name and (ROOT / name).is_file() and Path(name).suffix in suffixes
    ]


def test_references_into_the_docs_resolve(site):
    """Docstrings and comments say where the maths is: `docs/design.md#learning-rules-conv2d`."""
    broken = []
    for path in _repository_text_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for match in DOC_REFERENCE.finditer(text):
            page, anchor = DOCS / match.group(1), match.group(2)
            where = f"{path.relative_to(ROOT)}: {match.group(0)}"
            if not page.is_file():
                broken.append(f"{where} (no such page)")
            elif anchor and anchor not in anchors(site, page):
                broken.append(f"{where} (no such anchor)")
    assert not broken, "references to missing pages or anchors:\n" + "\n".join(broken)


def test_rules_page_examples_run():
    """The code of docs/rules.md runs as written, its blocks in order in one namespace."""
    blocks = re.findall(r"^```python\n(.*?)^```", (DOCS / "rules.md").read_text(), re.S | re.M)
    assert blocks
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/rules.md", "exec"), namespace)  # noqa: S102
    assert namespace["model"][2].feedback_rank == 4
    assert namespace["net"].direct.q.grad is not None
    assert namespace["mlp"].fc_3.feedback_rank == 4

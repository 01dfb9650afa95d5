"""A griffe extension for the API pages: the docstrings' Sphinx roles as Markdown code.

The docstrings are written for ``help()`` and editors as much as for the site, so they name
objects the reStructuredText way (``:class:`~retina_raf.feedback.RAFLinear```) and end a
paragraph that introduces a literal block with ``::``. Markdown has neither: this extension
shows a role as inline code (its last component when the name starts with ``~``, its title
for ``title <target>``), turns a closing ``::`` into ``:`` and makes the docstrings' references
to the site's pages links. mkdocs.yml loads it.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):`([^`]+)`")
LITERAL_BLOCK = re.compile(r"(?<=\S)::[ \t]*$", re.MULTILINE)
# a page of the site named in a docstring; the API pages live in docs/api/, one level below the
# pages, hence the "../" of the link (tests/test_docs.py checks every such page and anchor)
DOC_REFERENCE = re.compile(r"(?<![\w/`])docs/((?:[\w-]+/)*[\w-]+\.md(?:#[\w-]+)?)")


def _as_code(match: re.Match) -> str:
    text = match.group(1).strip()
    if titled := re.fullmatch(r"(.+?)\s*<[^>]+>", text):
        return f"`{titled.group(1)}`"
    if text.startswith("~"):
        text = text[1:].rsplit(".", 1)[-1]
    return f"`{text}`"


def markdown_docstring(text: str) -> str:
    """A docstring with its Sphinx roles as code spans, ``::`` before blocks as ``:``, and its
    references to the pages (``docs/design.md#learning-rules``) as links."""
    text = LITERAL_BLOCK.sub(":", ROLE.sub(_as_code, text))
    return DOC_REFERENCE.sub(lambda m: f"[{m.group(0)}](../{m.group(1)})", text)


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring that griffe loads for the API pages."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown_docstring(obj.docstring.value)

"""Every relative link in the project's markdown points at a file (and heading) that exists.

The README is short and sends readers to docs/, infra/, deployments/ and benchmarks/; a moved or
renamed file must not leave a dead link behind.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT_FOLDERS = ("docs", "infra", "deployments", "benchmarks")
DOCUMENTS = sorted(
    [ROOT / "README.md"] + [path for folder in DOCUMENT_FOLDERS for path in (ROOT / folder).rglob("*.md")]
)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCED_CODE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...


def relative_links(markdown: str) -> list[str]:
    """Link targets outside code, other than URLs with a scheme."""
    prose = INLINE_CODE.sub("", FENCED_CODE.sub("", markdown))
    return [target for target in LINK.findall(prose) if not EXTERNAL.match(target)]


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a file's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", FENCED_CODE.sub("", markdown), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_the_link_finder_sees_links_and_skips_code_and_urls():
    markdown = "[a](docs/x.md) `[b](no.md)` [c](https://example.com)\n```\n[d](no.md)\n```\n[e](y.md#part)"
    assert relative_links(markdown) == ["docs/x.md", "y.md#part"]
    assert heading_anchors("# Deployments, the fine-tune hand-off and the worker\n") == {
        "deployments-the-fine-tune-hand-off-and-the-worker"
    }


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_resolves(document):
    broken = []
    for target in relative_links(document.read_text(encoding="utf-8")):
        path_part, _, anchor = target.partition("#")
        linked = (document.parent / path_part).resolve() if path_part else document
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text("utf-8")):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{document.relative_to(ROOT)}: {broken}"


def test_the_readme_links_its_documentation():
    links = set(relative_links((ROOT / "README.md").read_text(encoding="utf-8")))
    assert len(DOCUMENTS) > 5
    assert {"docs/design.md", "docs/configuration.md", "infra/README.md", "benchmarks/README.md"} <= links

"""docs/DESIGN.md links: every ``docs/DESIGN.md#<anchor>`` link in the repository's .py/.md files names an
anchor that exists, and no reference to the old out-of-repository design text remains."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DESIGN = os.path.join(ROOT, "docs", "DESIGN.md")
#: Not part of the repository's text: caches anywhere, generated data and run folders at the top.
SKIP_DIRS = {"__pycache__"}
SKIP_TOP = {"data", "workdir", "workdirs", "build", "dist"}
LINK = re.compile(r"docs/DESIGN\.md#([A-Za-z0-9_-]+)")
ANCHOR = re.compile(r'<a id="([^"]+)"></a>')
#: The retired citation style, built so that this file does not match itself.
OLD_CITATION = re.compile("SPEC" + r"(\s*\u00a7|\.md)")


def _text_files():
    for dirpath, dirnames, filenames in os.walk(ROOT):
        top = dirpath == ROOT
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS
                       and not (top and d in SKIP_TOP) and not d.endswith(".egg-info")]
        for name in filenames:
            if name.endswith((".py", ".md")):
                path = os.path.join(dirpath, name)
                with open(path, encoding="utf-8") as f:
                    yield os.path.relpath(path, ROOT), f.read()


def _anchors() -> list[str]:
    with open(DESIGN, encoding="utf-8") as f:
        return ANCHOR.findall(f.read())


def test_design_anchors_are_unique():
    anchors = _anchors()
    assert len(anchors) > 20
    assert len(set(anchors)) == len(anchors), sorted(a for a in set(anchors) if anchors.count(a) > 1)


def test_every_design_link_names_an_existing_anchor():
    anchors = set(_anchors())
    links, bad = 0, []
    for rel, text in _text_files():
        for lineno, line in enumerate(text.splitlines(), 1):
            for anchor in LINK.findall(line):
                links += 1
                if anchor not in anchors:
                    bad.append(f"{rel}:{lineno}: #{anchor}")
    assert links >= 40  # the code cites the design notes throughout (guards against an empty walk)
    assert not bad, "links to anchors missing from docs/DESIGN.md:\n" + "\n".join(bad)


def test_design_internal_links_resolve():
    with open(DESIGN, encoding="utf-8") as f:
        text = f.read()
    anchors = set(ANCHOR.findall(text))
    internal = re.findall(r"\]\(#([A-Za-z0-9_-]+)\)", text)
    assert internal
    assert sorted(set(internal) - anchors) == []


def test_no_citation_of_the_out_of_repository_spec_remains():
    bad = [f"{rel}:{lineno}: {line.strip()}" for rel, text in _text_files()
           for lineno, line in enumerate(text.splitlines(), 1) if OLD_CITATION.search(line)]
    assert not bad, "cite docs/DESIGN.md#<anchor> instead:\n" + "\n".join(bad)

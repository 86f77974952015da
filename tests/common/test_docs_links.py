"""Every repository path that the documentation cites exists: the paths named in README.md, docs/*.md and
deploy/README.md (and their relative Markdown links), and in the docstrings and comments of the code.

A file renamed or deleted leaves its old name behind in prose that no import checks; this test finds it."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOP_DIRS = ("common", "api", "worker", "cli", "tests", "scripts", "benchmarks", "deploy", "docs", "migrations")
CODE_DIRS = ("common", "api", "worker", "cli", "tests", "scripts", "benchmarks", "migrations")
# A path that starts at one of the top-level folders; it stops at the first character no file name here has.
PATH = re.compile(r"(?<![\w./-])((?:" + "|".join(TOP_DIRS) + r")/[\w./-]*)")
PLACEHOLDER = "<{*…["  # `deploy/*.Dockerfile`, `files/<tenant>/…`: a pattern, not a path
LINK = re.compile(r"\]\(([^)\s]+)\)")


def cited_paths(text: str) -> list[str]:
    """The repository paths `text` names, trailing punctuation stripped; patterns and placeholders left out."""
    out = []
    for match in PATH.finditer(text):
        path = match.group(1)
        following = text[match.end():match.end() + 1]
        if following and following in PLACEHOLDER:
            continue
        path = path.rstrip(".-")
        if path:
            out.append(path)
    return out


def missing(paths: list[str], base: Path = REPO) -> list[str]:
    return sorted({p for p in paths if not (base / p).exists()})


def broken_links(markdown: str, md_file: Path) -> list[str]:
    """Relative Markdown link targets (anchors dropped) that do not exist beside `md_file`."""
    out = []
    for target in LINK.findall(markdown):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL, or an anchor on the same page
        path = target.split("#", 1)[0]
        if path and not (md_file.parent / path).exists():
            out.append(target)
    return out


def prose_of_python(source: str) -> str:
    """The docstrings and comments of a Python module: what a reader takes for documentation."""
    parts = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                parts.append(doc)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            parts.append(token.string)
    return "\n".join(parts)


def markdown_files() -> list[Path]:
    return [REPO / "README.md", REPO / "deploy" / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def python_files() -> list[Path]:
    return [p for d in CODE_DIRS for p in sorted((REPO / d).rglob("*.py")) if "corpus" not in p.parts]


@pytest.mark.parametrize("md_file", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_markdown_cites_only_paths_that_exist(md_file: Path) -> None:
    text = md_file.read_text()
    assert missing(cited_paths(text)) == [], f"{md_file.relative_to(REPO)} names paths that do not exist"
    assert broken_links(text, md_file) == [], f"{md_file.relative_to(REPO)} links to files that do not exist"


def test_docstrings_and_comments_cite_only_paths_that_exist() -> None:
    stale = {}
    for path in python_files():
        gone = missing(cited_paths(prose_of_python(path.read_text())))
        if gone:
            stale[str(path.relative_to(REPO))] = gone
    assert stale == {}


def test_the_check_finds_a_path_that_does_not_exist(tmp_path: Path) -> None:
    """The check itself can fail: a made-up module, a made-up doc and a broken link are each reported, while
    real paths, folders, patterns and placeholders are not."""
    text = ("See `worker/runner.py`, worker/train/ and docs/progress.md. Not `worker/nonexistent_module.py`, "
            "nor docs/no-such-page.md. Patterns: deploy/*.Dockerfile, tests/common/datasets/corpus/….")
    assert missing(cited_paths(text)) == ["docs/no-such-page.md", "worker/nonexistent_module.py"]

    page = tmp_path / "page.md"
    page.write_text("[ok](page.md) [anchor](#x) [web](https://example.com) [gone](../missing.md#part)")
    assert broken_links(page.read_text(), page) == ["../missing.md#part"]

    module = "'''Moved to worker/old_name.py.'''\nx = 'common/in_a_string_not_prose.py'  # see cli/gone.py\n"
    assert missing(cited_paths(prose_of_python(module))) == ["cli/gone.py", "worker/old_name.py"]

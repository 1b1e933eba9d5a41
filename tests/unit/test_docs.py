"""The README stays a short guide and the docs hold together (issue #23, DESIGN §9).

- README.md is at most 250 lines (the rest lives in docs/).
- Every relative link in README.md, docs/*.md, services/README.md and bench/README.md points at
  a file that exists, and a `#fragment` at a heading that exists in it.
- The README's command list names every `matterfab` command and every option of each.
- docs/README.md, the index, links every page in docs/.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer

from matterfab.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 250
# Where links are checked: the README, every page under docs/, and the folder READMEs.
LINKED = [README, *sorted(DOCS.glob("*.md")), ROOT / "services" / "README.md",
          ROOT / "bench" / "README.md"]  # fmt: skip
# Options typer adds to every app; not matterfab's own.
TYPER_OPTIONS = {"--help", "--install-completion", "--show-completion"}

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """Markdown without fenced code blocks and inline code, where links are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return {slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def relative_links(path: Path) -> list[str]:
    """The links of a Markdown file that point into the repository."""
    links = LINK.findall(prose(path.read_text()))
    return [link for link in links if not re.match(r"^[a-z][a-z0-9+.-]*:", link)]


def test_readme_is_short() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines, at most {MAX_README_LINES}: move detail to docs/"
    )


@pytest.mark.parametrize("path", LINKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    broken = []
    for link in relative_links(path):
        target, _, fragment = link.partition("#")
        file = (path.parent / target).resolve() if target else path
        if not file.exists():
            broken.append(f"{link}: no such file")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file):
            broken.append(f"{link}: no heading #{fragment} in {file.relative_to(ROOT)}")
    assert not broken, f"{path.relative_to(ROOT)}: " + "; ".join(broken)


def test_link_checker_sees_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# A heading, with `code`\n")
    page.write_text(
        "[ok](there.md) [ok too](there.md#a-heading-with-code) [web](https://example.com)\n"
        "[gone](missing.md) `[not a link](nowhere.md)`\n```\n[nor this](nowhere.md)\n```\n"
    )
    assert relative_links(page) == ["there.md", "there.md#a-heading-with-code", "missing.md"]
    assert "a-heading-with-code" in anchors(tmp_path / "there.md")


def test_docs_index_links_every_page() -> None:
    index = DOCS / "README.md"
    linked = {link.partition("#")[0] for link in relative_links(index)}
    pages = {p.name for p in DOCS.glob("*.md")} - {"README.md"}
    assert pages <= linked, f"docs/README.md does not link {sorted(pages - linked)}"


def commands() -> list[tuple[tuple[str, ...], Any]]:
    """Every leaf command of the CLI with its path, e.g. (("pki", "init-test"), cmd).

    Typer builds on its own copy of click, so groups are told apart by their `commands`.
    """
    found: list[tuple[tuple[str, ...], Any]] = []

    def walk(group: Any, path: tuple[str, ...]) -> None:
        if hasattr(group, "commands"):
            for name, sub in group.commands.items():
                walk(sub, (*path, name))
        else:
            found.append((path, group))

    walk(typer.main.get_command(app), ())
    return found


def command_list() -> str:
    """The README's section "The command line"."""
    text = README.read_text()
    section = text.split("## The command line", 1)[1]
    return section.split("\n## ", 1)[0]


def test_cli_is_walked() -> None:
    paths = {" ".join(path) for path, _ in commands()}
    assert {"up", "verify", "pki init-test", "order labels", "station run", "device find"} <= paths


def test_readme_lists_every_command() -> None:
    lines = [line.strip() for line in command_list().splitlines()]
    missing = []
    for path, _ in commands():
        *group, leaf = path
        # `matterfab pki show …`, or an alternative on a group's line: `… | list`.
        prefix = re.escape(" ".join(["matterfab", *group]))
        leaf_re = re.compile(rf"(^{prefix} |\| ){re.escape(leaf)}\b")
        on_group_lines = [line for line in lines if re.match(rf"{prefix}\b", line)]
        if not any(leaf_re.search(line) for line in on_group_lines):
            missing.append(" ".join(path))
    assert not missing, f"README's command list lacks: {', '.join(missing)}"


def test_readme_lists_every_option() -> None:
    section = command_list()
    missing = []
    root = typer.main.get_command(app)
    everything = [((), root), *commands()]
    for path, command in everything:
        for param in command.params:
            names = [o for o in (*param.opts, *param.secondary_opts) if o.startswith("--")]
            if not names or set(names) & TYPER_OPTIONS:
                continue
            if not any(re.search(rf"{re.escape(n)}(?![\w-])", section) for n in names):
                missing.append(f"matterfab {' '.join(path)} {names[0]}".replace("  ", " "))
    assert not missing, f"README's command list lacks: {', '.join(missing)}"

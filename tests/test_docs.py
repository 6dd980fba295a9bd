"""The documentation: the README stays a five-minute read that keeps the blocks
CI and the tests run, and the MkDocs site under docs/ builds with
``--strict``, so a broken link, a missing anchor or a page left out of the nav
fails the suite. mkdocs is a test dependency: missing, the build test fails
(never a skip)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"


def readme() -> str:
    return README.read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same level."""
    level = heading.split(" ", 1)[0]
    body = text.split(heading + "\n", 1)[1]
    return re.split(rf"^{level} ", body, maxsplit=1, flags=re.M)[0]


def nav_pages(entries: object) -> list[str]:
    """Every page a mkdocs ``nav`` names, however deeply nested."""
    if isinstance(entries, str):
        return [entries]
    if isinstance(entries, dict):
        return [page for value in entries.values() for page in nav_pages(value)]
    if isinstance(entries, list):
        return [page for entry in entries for page in nav_pages(entry)]
    raise AssertionError(f"unexpected nav entry {entries!r}")


def test_the_site_builds_with_strict(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "benchmark.png").is_file()


def test_every_docs_page_is_in_the_nav() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert config["docs_dir"] == "docs"
    pages = nav_pages(config["nav"])
    assert len(pages) == len(set(pages)), pages
    on_disk = {path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md")}
    assert set(pages) == on_disk
    required = {"protocols.md", "durability.md", "data-file.md", "operations.md", "testing.md", "security.md"}
    assert required | {"benchmarks.md"} <= on_disk


def test_the_readme_is_a_five_minute_read() -> None:
    assert len(readme().splitlines()) <= 200


def test_the_readme_keeps_the_two_commands_and_ci_runs_the_second() -> None:
    text = readme()
    assert "```sh\npython3 -m pip install . && mcl serve\n```\n" in text
    command = text.split("<!-- test-command -->\n```sh\n", 1)[1].split("```", 1)[0]
    assert command.count("\n") == 1, command
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    last = [line for line in ci.splitlines() if line.strip()][-1]
    assert last.strip() == command.strip()


def test_the_readme_says_how_the_first_command_works_on_debians_python() -> None:
    """Debian's and Ubuntu's own Python refuse ``pip install`` outside a virtual
    environment (PEP 668): the text just before the first command says what to run."""
    before = readme().split("```sh\npython3 -m pip install . && mcl serve\n```\n", 1)[0]
    paragraph = before.rstrip().rsplit("\n\n", 1)[1]
    assert "`externally-managed-environment`" in paragraph
    assert "`python3 -m venv .venv && . .venv/bin/activate`" in paragraph


def test_the_readme_links_only_to_docs_that_exist() -> None:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)\s]*)?\)", readme())
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        if "://" not in link:
            assert (ROOT / link).exists(), link


def test_the_home_page_chooses_as_the_readme_does() -> None:
    # GitHub's tables need "\|" inside code, MkDocs's must not have it; the
    # README names pages from the repository root, the site from docs/.
    ours = section(readme(), "## When to pick it, and when not").replace("\\|", "|").replace("](docs/", "](")
    site = section((DOCS / "index.md").read_text(encoding="utf-8"), "## When to pick it, and when not")
    assert ours.strip() == site.strip()
    figures = ("25.7 µs (0.46, W1)", "23.0 µs (0.40, W2)", "(0.55, W3)", "(0.35, W4)", "(0.28, W6)", "(1.09)", "1.19 s")
    for figure in figures:
        assert figure in ours


def test_the_testing_page_shows_the_readme_plugin_example() -> None:
    example = readme().split("<!-- plugin-example -->\n```python\n", 1)[1].split("```", 1)[0]
    assert f"```python\n{example}```" in (DOCS / "testing.md").read_text(encoding="utf-8")


def test_every_durability_promise_names_tests_that_exist() -> None:
    """docs/durability.md states each promise beside the tests that pin it:
    every row names at least one, and each named file and test exists."""
    text = (DOCS / "durability.md").read_text(encoding="utf-8")
    promises = section(text, "## What survives what: the promises, and the tests that pin them")
    rows = [line for line in promises.splitlines() if line.startswith("| ") and not line.startswith("| promise ")]
    assert len(rows) >= 10, promises
    for row in rows:
        named = re.findall(r"`(tests/\w+\.py)(?:::(\w+))?`", row)
        assert named, f"a promise no test pins: {row}"
        for file, test in named:
            path = ROOT / file
            assert path.is_file(), f"{file}, named beside a promise, does not exist"
            if test:
                source = path.read_text(encoding="utf-8")
                assert re.search(rf"^def {test}\(", source, re.M), f"{file} has no test {test}"

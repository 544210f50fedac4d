"""The README stays short and every link in it and in docs/ leads somewhere (a file, and a heading for #anchors)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def github_anchor(heading: str) -> str:
    """GitHub's id for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # '#' in code is not a heading
    return {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def test_the_readme_is_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 150


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(REPO)} → {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.relative_to(REPO)} → {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_anchor_rule_matches_githubs():
    assert github_anchor("Python API (plain torch)") == "python-api-plain-torch"
    assert github_anchor("Demo Mask R-CNN") == "demo-mask-r-cnn"


def committed_results() -> list[Path]:
    return sorted(p for p in (REPO / "docs/benchmarks").rglob("*.json") if p.with_suffix(".md").is_file())


def tool_of(result: Path) -> str:
    """The tool that wrote a committed result: the one its recorded command runs (``python tools/<tool>.py ...``)."""
    import json

    command = (json.loads(result.read_text()).get("provenance") or {}).get("command") or ""
    found = re.match(r"python tools/(\w+)\.py(?: |$)", command)
    return found.group(1) if found else ""


def test_every_committed_result_has_a_tool_that_renders_it():
    results = committed_results()
    orphans = [f"{r.relative_to(REPO)}: {tool_of(r) or 'no tools/ command'}" for r in results
               if not (REPO / "tools" / f"{tool_of(r)}.py").is_file()]
    assert results and not orphans, orphans


def test_committed_benchmark_pages_are_what_their_tools_render_from_the_committed_results(tmp_path):
    """A page under docs/benchmarks/<folder>/ is its tool's rendering of the JSON beside it: re-rendering a copy
    gives the committed page byte for byte, so no number on it can drift from what was measured."""
    import importlib.util
    import shutil

    tools = {}
    for result in committed_results():
        name = tool_of(result)
        if name not in tools:
            spec = importlib.util.spec_from_file_location(f"equi_tools_{name}", REPO / "tools" / f"{name}.py")
            tools[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(tools[name])
        copy = tmp_path / result.relative_to(REPO)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(result, copy)
        tools[name].main(["--render", str(copy)])
        assert copy.with_suffix(".md").read_text() == result.with_suffix(".md").read_text(), result


#: Words of the project's own working notes, which a user who has only the repository cannot follow.
INTERNAL_JARGON = re.compile(r"SPEC §|§\s?\d|SPEC pilot|\b[Tt]he (?:SPEC|spec)\b|[Ii]ssue's|[Tt]he issue\b|"
                             r"[Tt]his session|session history|\b[Ww]orkspace\b|was lent|unverified guess")


def test_docs_and_help_texts_speak_to_users():
    pages = [REPO / "README.md", REPO / "CHANGELOG.md", REPO / "SECURITY.md",
             *(p for p in (REPO / "docs").rglob("*.md")), *(REPO / "tools").glob("*.py")]
    found = [f"{page.relative_to(REPO)}:{n}: {match.group(0)!r}" for page in pages
             for n, line in enumerate(page.read_text().splitlines(), 1) for match in INTERNAL_JARGON.finditer(line)]
    assert not found, "\n".join(found)


def test_every_committed_result_says_how_and_where_it_was_measured():
    """Each result behind a benchmark page carries its provenance (command, date, CPU, versions, commit), and the
    page shows the command and the date, so a reader can tell what produced each number and re-run it."""
    import json

    lacking = []
    for result in committed_results():
        provenance = json.loads(result.read_text()).get("provenance") or {}
        page = result.with_suffix(".md").read_text()
        missing = {"command", "date", "cpu", "cpu_capability", "torch_threads", "torch", "equi_ext", "commit"}
        missing -= {key for key, value in provenance.items() if value not in (None, "")}
        if missing or provenance["command"] not in page or provenance["date"] not in page:
            lacking.append(f"{result.relative_to(REPO)}: " + (f"no {sorted(missing)}" if missing else
                                                            "its page omits the command or the date"))
    assert not lacking, "\n".join(lacking)

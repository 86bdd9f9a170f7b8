"""The references in README.md and docs/**/*.md stay true: every stack config key they name is declared in
Pulumi.yaml, every `make` target exists in the Makefile, every repository path exists, and every relative link
(and its #anchor) resolves. Expected values come from those files and the file system, never from lists here.

What counts as a reference (chosen so that prose never trips the check):
- config key: the key of `pulumi config set [--secret] KEY` (optionally `ml-platform:KEY`), `ml-platform:KEY` in
  stack-file snippets, the first cell of a table whose first column is headed `key`, and a backticked camelCase
  word in a sentence that calls it a key ("config keys `a`, `b`", "the keys to set (`c`)");
- make target: `make TARGET` inside backticks or a fenced code block;
- path: a token whose first component is a top-level entry of the repository that git does not ignore
  (`infra/tls.py`, `docs/tls.md`, `kind/traefik.yaml`), anywhere in the text; placeholders (`<stack>`, `...`,
  `*`, `$VAR`) end the token, and a token that is only a prefix of a placeholder path is not checked;
- link: the target of `[text](target)` that is not a URL, relative to the document; `#anchor`s are checked
  against the target's headings, slugged as GitHub does.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

# Paths the docs name that a command creates, inside directories git tracks (so .gitignore cannot say so).
CREATED_BY_COMMANDS = {
    "policy/venv",  # `pulumi install` in policy/ creates it (docs/security.md, "Policy pack")
}


def config_keys() -> set[str]:
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    return set(project["config"])


def make_targets() -> set[str]:
    found = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", line):
            found.add(match.group(1))
    return found


def top_level_entries() -> set[str]:
    """Top-level files and directories that git tracks: what a repository path can start with."""
    ignored = [
        line.strip().rstrip("/")
        for line in (ROOT / ".gitignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return {
        entry.name
        for entry in ROOT.iterdir()
        if entry.name != ".git" and not any(fnmatch.fnmatch(entry.name, pattern) for pattern in ignored)
    }


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped (but `-` and `_`), spaces to `-`."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for _number, line, in_code in lines(path):
        if in_code or not (match := re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)):
            continue
        slug = github_slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def lines(path: Path) -> Iterator[tuple[int, str, bool]]:
    """(line number, text, inside a fenced code block) of a markdown file; fence lines count as code."""
    fenced = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            yield number, line, True
            continue
        yield number, line, fenced


def where(doc: Path, number: int) -> str:
    return f"{doc.relative_to(ROOT)}:{number}"


def paragraphs(path: Path) -> Iterator[tuple[int, str]]:
    """(first line number, text) of each run of consecutive non-blank lines outside code blocks."""
    start, block = 0, []
    for number, line, in_code in [*lines(path), (0, "", False)]:
        if in_code or not line.strip():
            if block:
                yield start, "\n".join(block)
            start, block = 0, []
        else:
            start, block = start or number, [*block, line]


def sentences_calling_them_keys(text: str) -> Iterator[tuple[int, str]]:
    """(offset, sentence) of the sentences of `text` that say "key" or "keys"."""
    offset = 0
    for sentence in re.split(r"(?<=[.;:])\s+(?=[A-Z(`*])|\n(?=\s*(?:[-*|]|\d+\.) )", text):
        offset = text.index(sentence, offset)
        if re.search(r"\bkeys?\b", sentence):
            yield offset, sentence
        offset += len(sentence)


CAMEL = r"[a-z][a-z0-9]*(?:[A-Z][a-z0-9]*)+"


def key_of_config_set(args: list[str]) -> str | None:
    """The KEY of `pulumi config set [flags] KEY [VALUE]` (flags may come first; -s/--stack take a value)."""
    words = iter(args)
    for word in words:
        if word in ("-s", "--stack", "--config-file"):
            next(words, None)
        elif not word.startswith("-"):
            # `--path 'key[0]'` names a key too; an upper-case word (`KEY`) is a placeholder.
            match = re.match(r"['\"]?(?:ml-platform:)?([a-z]\w*)", word)
            return match.group(1) if match else None
    return None


def named_config_keys(doc: Path) -> Iterator[tuple[int, str]]:
    table_of_keys = False
    for number, line, in_code in lines(doc):
        for match in re.finditer(r"pulumi config set\s+([^`;|&#\n]*)", line):
            if key := key_of_config_set(match.group(1).split()):
                yield number, key
        if match := re.match(r"^\s*(?:#\s*)?ml-platform:([A-Za-z]\w*):", line):  # a stack file's line
            yield number, match.group(1)
        if in_code:
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else []
        if cells and cells[0].lower() == "key":
            table_of_keys = True
        elif not cells:
            table_of_keys = False
        elif table_of_keys and (match := re.fullmatch(r"`(\w+)`", cells[0])):
            yield number, match.group(1)
    for number, paragraph in paragraphs(doc):
        for sentence_start, sentence in sentences_calling_them_keys(paragraph):
            for match in re.finditer(rf"`({CAMEL})`", sentence):
                yield number + paragraph.count("\n", 0, sentence_start + match.start()), match.group(1)


def named_make_targets(doc: Path) -> Iterator[tuple[int, str]]:
    for number, line, in_code in lines(doc):
        spans = [line] if in_code else re.findall(r"`([^`]+)`", line)
        for span in spans:
            for match in re.finditer(r"(?<![\w$(-])make\s+([a-z][\w-]*)(?![\w.=-])", span):
                yield number, match.group(1)


def named_paths(doc: Path, roots: set[str]) -> Iterator[tuple[int, str]]:
    component = r"[\w.-]+"
    pattern = re.compile(rf"(?<![\w./:~$@-])({component}(?:/{component})*/?)(?P<rest>[<*$.{{]?)")
    for number, line, _in_code in lines(doc):
        for match in pattern.finditer(line):
            token, rest = match.group(1), match.group("rest")
            if token.split("/")[0] not in roots or "/" not in token.rstrip("/"):
                continue
            if rest or line[match.end(1) :].startswith(("...", "<", "{", "*")) or "..." in token:
                continue  # a placeholder path (`bench/...`, `docs/<name>.md`): nothing definite to check
            yield number, token.rstrip(".")


def links(doc: Path) -> Iterator[tuple[int, str]]:
    for number, line, in_code in lines(doc):
        if in_code:
            continue
        line = re.sub(r"`[^`]*`", "", line)
        for match in re.finditer(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", line):
            target = match.group(1)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # not a URL (http:, mailto:, ...)
                yield number, target


def test_every_config_key_the_docs_name_is_declared_in_pulumi_yaml() -> None:
    keys = config_keys()
    missing = [
        f"{where(doc, number)}: config key {key!r} is not declared in Pulumi.yaml"
        for doc in DOCS
        for number, key in named_config_keys(doc)
        if key not in keys
    ]
    assert not missing, "\n".join(missing)


def test_every_make_target_the_docs_name_exists() -> None:
    targets = make_targets()
    missing = [
        f"{where(doc, number)}: `make {target}` is not a Makefile target"
        for doc in DOCS
        for number, target in named_make_targets(doc)
        if target not in targets
    ]
    assert not missing, "\n".join(missing)


def test_every_repository_path_the_docs_name_exists() -> None:
    roots = top_level_entries()
    missing = [
        f"{where(doc, number)}: {path} does not exist"
        for doc in DOCS
        for number, path in named_paths(doc, roots)
        if path.rstrip("/") not in CREATED_BY_COMMANDS and not (ROOT / path).exists()
    ]
    assert not missing, "\n".join(missing)


def test_every_relative_link_resolves() -> None:
    broken = []
    for doc in DOCS:
        for number, target in links(doc):
            file, _, anchor = target.partition("#")
            path = (doc.parent / file).resolve() if file else doc
            if file and not path.is_relative_to(ROOT):
                continue  # ../shared beside the checkout: not part of this repository
            if not path.exists():
                broken.append(f"{where(doc, number)}: link target {file} does not exist")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{where(doc, number)}: {path.relative_to(ROOT)} has no heading for #{anchor}")
    assert not broken, "\n".join(broken)


def test_the_config_reference_documents_every_key() -> None:
    """docs/config.md has a row for every key of Pulumi.yaml's schema (and, by the test above, no other)."""
    documented = {key for _, key in named_config_keys(ROOT / "docs" / "config.md")}
    assert sorted(config_keys() - documented) == []


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("CI budget (issue 21): what changed", "ci-budget-issue-21-what-changed"),
        ("Running one tier, one file, one test", "running-one-tier-one-file-one-test"),
        ("What `make test` does", "what-make-test-does"),
        ("`POST /v1/completions`", "post-v1completions"),
    ],
)  # fmt: skip
def test_github_slugs(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug


def test_the_checks_find_what_they_look_for(tmp_path: Path) -> None:
    """Each recogniser sees a reference of its kind (so that a check cannot pass by finding nothing)."""
    doc = tmp_path / "doc.md"
    doc.write_text(
        "Set it: `pulumi config set --secret ml-platform:noSuchKey x -s dev`; the config keys `otherKey` and\n"
        "`thirdKey` matter.\n\n| key | type |\n|---|---|\n| `tableKey` | string |\n\n"
        "Run `make no-such-target`, read `infra/nope.py` and docs/nope.md, [link](nope.md#x).\n"
        "```bash\nmake other-target   # comment\nkubectl apply -f kind/nope.yaml\n```\n"
        "Not references: make sure, `maxUnavailable: 1`, `docs/<name>.md`, bench/..., https://x.io/docs/a.md.\n"
    )
    assert sorted(key for _, key in named_config_keys(doc)) == ["noSuchKey", "otherKey", "tableKey", "thirdKey"]
    assert [target for _, target in named_make_targets(doc)] == ["no-such-target", "other-target"]
    assert [path for _, path in named_paths(doc, top_level_entries())] == [
        "infra/nope.py", "docs/nope.md", "kind/nope.yaml"
    ]  # fmt: skip
    assert [target for _, target in links(doc)] == ["nope.md#x"]

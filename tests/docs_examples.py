"""The examples in README.md and docs/*.md, as tests/test_docs_examples.py runs them.

An example is a ```python block (run with exec, from the repository root) or a `simhete ...`
command line (also `$ simhete ...`, with `\\` continuations; what follows a `$` line is its output)
inside a ``` block without a language (or bash/sh/shell/console) or an indented code block.
A block is marked by an HTML comment on the line just above it (blank lines between allowed):

    <!-- doc-test: slow (why) -->        run only with SIMHETE_DOCS_SLOW=1 (reported as skipped)
    <!-- doc-test: synopsis -->          a command's form with placeholders: parsed, not run
    <!-- doc-test: skip (why) -->        not run (reported as skipped, with the reason)

Every example is run or reported; none is dropped without a word.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHELL_LANGS = {"", "bash", "sh", "shell", "console"}
MARK = re.compile(r"<!--\s*doc-test:\s*(slow|synopsis|skip)\s*(?:\((.*?)\))?\s*-->")


@dataclass(frozen=True)
class Example:
    file: str
    line: int
    kind: str          # "python" | "command"
    text: str          # the code, or the command without "$ " and comment
    mark: str = ""     # "" | "slow" | "synopsis" | "skip"
    why: str = ""

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"

    def argv(self) -> list[str]:
        """The command's arguments after ``simhete`` (a leading ``nice -n N`` dropped)."""
        words = shlex.split(self.text, comments=True)
        while words and words[0] != "simhete":
            words.pop(0)
        return words[1:]


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _mark_above(lines: list[str], i: int) -> tuple[str, str]:
    j = i - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    m = MARK.search(lines[j]) if j >= 0 else None
    return (m.group(1), m.group(2) or "") if m else ("", "")


def _commands(block: list[str], first_line: int, rel: str, mark: tuple[str, str]) -> list[Example]:
    out: list[Example] = []
    k = 0
    while k < len(block):
        raw = block[k].strip()
        start = k
        if raw.startswith("$ "):
            raw = raw[2:]
        words = raw.split()
        if "simhete" in words[:4] and (words[0] == "simhete" or words[0] == "nice"):
            text = raw
            while text.endswith("\\") and k + 1 < len(block):
                k += 1
                text = text[:-1].rstrip() + " " + block[k].strip()
            out.append(Example(rel, first_line + start, "command", text, *mark))
        k += 1
    return out


def examples() -> list[Example]:
    found: list[Example] = []
    for path in doc_files():
        rel = str(path.relative_to(ROOT))
        lines = path.read_text().splitlines()
        i = 0
        in_fence_before = False
        while i < len(lines):
            m = re.match(r"^```(\w*)\s*$", lines[i])
            if m:
                lang = m.group(1)
                j = i + 1
                while j < len(lines) and not lines[j].startswith("```"):
                    j += 1
                body = lines[i + 1:j]
                mark = _mark_above(lines, i)
                if lang == "python":
                    found.append(Example(rel, i + 2, "python", "\n".join(body), *mark))
                elif lang in SHELL_LANGS:
                    found += _commands(body, i + 2, rel, mark)
                i = j + 1
                continue
            # an indented code block: after a blank line, lines indented by 4+ spaces (not a list item's text)
            if lines[i].startswith("    ") and (i == 0 or not lines[i - 1].strip()) and not in_fence_before:
                j = i
                while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                    j += 1
                body = lines[i:j]
                found += _commands(body, i + 1, rel, _mark_above(lines, i))
                i = j
                continue
            i += 1
    return found

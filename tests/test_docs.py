"""The README is a front page and the manual lives in docs/: the README
stays short and links only into the repository, and every `threadguard`
command the README and the manual show exists, with the options shown."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from threadguard._cli import _parser

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_readme_is_a_front_page():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 300


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_stay_in_the_repository(page):
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        path = target.split("#", 1)[0]
        assert "://" not in target and not target.startswith("/"), target
        if path:
            resolved = (page.parent / path).resolve()
            assert resolved.is_relative_to(REPO) and resolved.exists(), target


def shown_commands(text: str) -> Iterator[Tuple[int, List[str]]]:
    """(line, words after `threadguard`) of each command in a code block or
    inline code span."""
    spans = re.findall(r"```[^\n]*\n(.*?)```", text, re.S) + re.findall(r"`([^`\n]+)`", text)
    for span in spans:
        for number, line in enumerate(span.splitlines()):
            for match in re.finditer(r"(?:^|[\s;&|(])threadguard ([a-z][^\n#]*)", line):
                try:
                    words = shlex.split(match.group(1), posix=True)
                except ValueError:
                    words = match.group(1).split()
                yield number, words


def subparsers() -> Dict[str, argparse.ArgumentParser]:
    parser = _parser(())
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def options_of(parser: argparse.ArgumentParser) -> set:
    return {flag for action in parser._actions for flag in action.option_strings}


def test_every_command_shown_exists_with_its_options():
    commands = subparsers()
    full = {name: _full_parser(name) for name in commands}
    problems = []
    seen = 0
    for page in PAGES:
        for _, words in shown_commands(page.read_text(encoding="utf-8")):
            name = words[0]
            if name not in commands:
                # prose like "threadguard itself" in inline code is not a command
                if re.fullmatch(r"[a-z]+", name) and page.suffix == ".md" and len(words) > 1 \
                        and words[1].startswith("-"):
                    problems.append(f"{page.name}: no command {name!r}")
                continue
            seen += 1
            known = options_of(full[name])
            for word in words[1:]:
                if word == "--":
                    break
                if word.startswith("--") and len(word) > 2:
                    flag = word.split("=", 1)[0]
                    if flag not in known:
                        problems.append(f"{page.name}: threadguard {name} has no {flag}")
    assert problems == []
    assert seen > 20  # the check found the commands


def _full_parser(name: str) -> argparse.ArgumentParser:
    for action in _parser((name,))._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise AssertionError(name)


def test_the_check_catches_an_option_that_does_not_exist():
    commands = subparsers()
    assert "run" in commands and "--no-such-option" not in options_of(_full_parser("run"))
    shown = list(shown_commands("```\nthreadguard run --no-such-option -- true\n```"))
    assert shown == [(0, ["run", "--no-such-option", "--", "true"])]

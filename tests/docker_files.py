"""The pipeline image's Dockerfile and .dockerignore read as Docker reads them: tooling for the deploy tests.

    instructions = dockerfile_instructions()        # [("FROM", "tensorflow/tfx:1.16.0"), ...]
    assert not is_ignored("pipeline/pipeline.py", dockerignore_patterns())
"""
from __future__ import annotations

import fnmatch
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the root Dockerfile, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        instr, _, rest = current.strip().partition(" ")
        lines.append((instr.upper(), rest.strip()))
        current = ""
    return lines


def dockerfile_env() -> dict[str, str]:
    env = {}
    for instr, rest in dockerfile_instructions():
        if instr == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip().strip("/") for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def is_ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's matching, closely enough: patterns are anchored at the context root and exclude a
    directory with everything under it; a leading `**/` matches at any depth. No `!` patterns here."""
    assert not any(p.startswith("!") for p in patterns), "exceptions are not modelled"
    parts = rel.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pat in patterns:
        if pat.startswith("**/"):
            subpaths = ["/".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1)]
            if any(fnmatch.fnmatch(p, pat[3:]) for p in subpaths):
                return True
        elif any(fnmatch.fnmatch(p, pat) for p in prefixes):
            return True
    return False

"""A small Dockerfile reader for the tests (no Docker daemon here): instructions with their
arguments, continuation lines joined, comments and parser directives dropped, and the stages'
base images with build ARGs substituted."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}  # fmt: skip


class DockerfileError(ValueError):
    pass


@dataclass
class Instruction:
    name: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD/ENTRYPOINT/RUN, else None."""
        try:
            value = json.loads(self.args)
        except ValueError:
            return None
        return value if isinstance(value, list) else None

    def pairs(self) -> dict[str, str]:
        """KEY=VALUE pairs of ENV, ARG or LABEL (values unquoted)."""
        out = {}
        for token in re.findall(r'(?:[^\s"\']+|"(?:\\.|[^"])*"|\'[^\']*\')+', self.args):
            key, eq, value = token.partition("=")
            out[key] = value.strip("\"'") if eq else ""
        return out


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, name: str) -> list[Instruction]:
        return [i for i in self.instructions if i.name == name]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse(text: str, build_args: dict[str, str] | None = None) -> Dockerfile:
    instructions = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue  # a comment, a parser directive (# syntax=...), a blank line
        if pending and stripped.startswith("#"):
            continue  # comments inside a continued instruction are dropped too
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        pending += stripped
        name, _, args = pending.partition(" ")
        if name.upper() not in INSTRUCTIONS:
            raise DockerfileError(f"line {start}: unknown instruction {name!r}")
        instructions.append(Instruction(name.upper(), args.strip(), start))
        pending = ""
    if pending:
        raise DockerfileError("the file ends inside a continued line")
    values = dict(build_args or {})
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions:
        if ins.name == "ARG" and not stages:
            for key, value in ins.pairs().items():
                global_args[key] = values.get(key, value)
            continue
        if ins.name == "FROM":
            words = ins.args.split()
            base = re.sub(
                r"\$\{(\w+)\}|\$(\w+)",
                lambda m: global_args[m.group(1) or m.group(2)],
                words[0],
            )
            stage_name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, stage_name))
            continue
        if not stages:
            raise DockerfileError(f"line {ins.line}: {ins.name} before the first FROM")
        stages[-1].instructions.append(ins)
    if not stages:
        raise DockerfileError("no FROM")
    return Dockerfile(global_args, stages)

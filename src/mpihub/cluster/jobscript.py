"""Job scripts: mpihub's Slurm and PBS templates (or a user's own), rendered.

A template is a shell script with named ``{{placeholders}}``. ``{{directives}}`` becomes
the batch system's directive block, made from the job's options (plus any extra
directives, less any skipped ones), so a template need not spell out ``#SBATCH`` or
``#PBS`` lines; a user's template may write its own instead. Values are shell-quoted;
``directives``, ``prologue``, ``environment`` and ``controller_options`` are shell text
already. A user's template is checked before use: every placeholder it names must be
known, and it must name those its role needs (the engines' count, the cluster id and
the profile directory, without which the job could not meet its controller).
"""
from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")

#: What each placeholder stands for (docs/hpc.md has the same list for users).
PLACEHOLDERS = {
    "directives": "the #SBATCH / #PBS block made from the options below",
    "engines": "number of engines (MPI ranks)",
    "nodes": "number of nodes",
    "ppn": "engines per node",
    "walltime": "time limit, HH:MM:SS",
    "queue": "Slurm partition or PBS queue",
    "account": "account / project to charge",
    "job_name": "the job's name",
    "output": "the job's log file",
    "profile_dir": "mpihub profile directory (on the shared file system)",
    "cluster_id": "the cluster's id, which names its connection files",
    "python": "the Python that runs mpihub on the compute nodes",
    "prologue": "shell lines run first, e.g. `module load mpi; source venv/bin/activate`",
    "environment": "export lines mpihub adds (walltime, tuning variables)",
    "launchers": "directory of mpihub's launcher scripts",
    "engine_launch": "srun, mpiexec or relay",
    "controller_options": "options for the controller launcher (--ip, --interface, --split, ...)",
}
SHELL_TEXT = {"directives", "prologue", "environment", "controller_options"}
#: Placeholders a template of each role must use.
REQUIRED = {
    "job": {"engines", "cluster_id", "profile_dir"},
    "controller": {"cluster_id", "profile_dir"},
    "engines": {"engines", "cluster_id", "profile_dir"},
}
ROLES = tuple(REQUIRED)
SUFFIX = {"slurm": "sbatch", "pbs": "pbs"}


class TemplateError(ValueError):
    """A job template that cannot be used as it is, and why."""


@dataclass
class JobOptions:
    """What a job asks the batch system for, and how it runs mpihub."""

    engines: int = 1
    nodes: int | None = None
    walltime: str | None = None
    queue: str | None = None
    account: str | None = None
    job_name: str = "mpihub"
    output: str | None = None
    extra_directives: list[str] = field(default_factory=list)
    skip_directives: list[str] = field(default_factory=list)

    @property
    def ppn(self) -> int:
        return math.ceil(self.engines / (self.nodes or 1))


def walltime_seconds(walltime: str) -> int:
    """Seconds in a walltime: ``SS``, ``MM:SS``, ``HH:MM:SS`` or ``D-HH:MM:SS``."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", walltime.strip())
    if not match:
        raise ValueError(f"walltime {walltime!r} is not [D-]HH:MM:SS, MM:SS or SS")
    days, *parts = match.groups()
    numbers = [int(p) for p in parts if p is not None]
    seconds = 0
    for number in numbers:
        seconds = seconds * 60 + number
    return int(days or 0) * 86400 + seconds


def template_path(system: str, role: str) -> Path:
    """The template mpihub ships for ``system`` ("slurm", "pbs") and ``role``."""
    if system not in SUFFIX or role not in REQUIRED:
        raise ValueError(f"no {role!r} template for {system!r}: systems {sorted(SUFFIX)}, roles {ROLES}")
    return Path(str(resources.files("mpihub") / "templates" / system / f"mpihub-{role}.{SUFFIX[system]}"))


def launchers_dir() -> Path:
    return Path(str(resources.files("mpihub") / "templates" / "launchers"))


def check_template(text: str, role: str, source: str = "the template") -> set[str]:
    """The placeholders ``text`` uses; TemplateError for unknown or missing ones."""
    used = set(PLACEHOLDER.findall(text))
    unknown = used - PLACEHOLDERS.keys()
    if unknown:
        raise TemplateError(f"{source} uses unknown placeholders {sorted(unknown)}; known: {sorted(PLACEHOLDERS)}")
    missing = REQUIRED[role] - used
    if missing:
        raise TemplateError(f"{source} is a {role} template but never uses {sorted(missing)}: without them its job "
                            "cannot find its controller or start the right number of engines")
    if not text.startswith("#!"):
        raise TemplateError(f"{source} does not start with a #! line (batch systems run it as a script)")
    return used


def check_directive_order(script: str, prefix: str, source: str = "the job script") -> None:
    """TemplateError when a ``prefix`` directive follows the first command: sbatch and
    qsub read directives only up to there and silently ignore the rest."""
    first_command = None
    for number, line in enumerate(script.splitlines()[1:], start=2):
        stripped = line.strip()
        if stripped.startswith(prefix) and first_command:
            raise TemplateError(f"{source}: the directive {stripped!r} on line {number} comes after the first "
                                f"command ({first_command!r}), where the batch system ignores it; "
                                "put every directive before it")
        if stripped and not stripped.startswith("#") and first_command is None:
            first_command = stripped


def render(text: str, values: dict[str, object]) -> str:
    """Fill every placeholder; a value of None becomes the empty string."""
    def fill(match: re.Match) -> str:
        name = match.group(1)
        value = values.get(name)
        if value is None:
            return ""
        return str(value) if name in SHELL_TEXT else shlex.quote(str(value))

    rendered = PLACEHOLDER.sub(fill, text)
    return re.sub(r"\n{3,}", "\n\n", rendered)


def select_directives(lines: list[str], prefix: str, options: JobOptions) -> str:
    """The directive block: ``lines`` less the skipped ones, then the extra ones."""
    kept = [line for line in lines
            if not any(line[len(prefix):].strip().startswith(skip) for skip in options.skip_directives)]
    extra = [d if d.startswith("#") else f"{prefix} {d}" for d in options.extra_directives]
    return "\n".join(kept + extra)

"""Reading deploy/compose.yml, deploy/Dockerfile, deploy/.env.example and .dockerignore as
Docker and Compose read them (for tests/test_deploy.py and tests/integration/test_image_tree.py)."""

import json
import posixpath
import re
import shlex
from pathlib import Path
from typing import Any, NamedTuple

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY_DIR = REPO_ROOT / "deploy"
COMPOSE_FILE = DEPLOY_DIR / "compose.yml"
SCALE_FILE = DEPLOY_DIR / "compose.scale.yml"
CLUSTER_FILE = DEPLOY_DIR / "compose.cluster.yml"
DOCKERFILE = DEPLOY_DIR / "Dockerfile"
ENV_EXAMPLE = DEPLOY_DIR / ".env.example"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"

APP_PORTS = {"features_api": 8001, "model_api": 8002, "metric_api": 8003, "plot_api": 8004}
APP_SERVICES = sorted(APP_PORTS)

# ${NAME}, ${NAME:?message}, ${NAME:-default}, ...; "$$" is a literal dollar.
COMPOSE_VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[?\-+]?)")
# The arguments of FROM: [--platform=...] image [AS name]
FROM_ARGUMENTS = re.compile(r"(?:--\S+\s+)*(?P<image>\S+)(?:\s+AS\s+(?P<name>\S+))?", re.IGNORECASE)

Instruction = tuple[str, str]


class ComposeLoader(yaml.SafeLoader):
    """YAML as Compose reads it, including its merge tags (!override, !reset)."""


def _untagged(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    assert isinstance(node, yaml.ScalarNode)  # YAML has no fourth kind of node
    return loader.construct_scalar(node)


ComposeLoader.add_constructor("!override", _untagged)
ComposeLoader.add_constructor("!reset", lambda _loader, _node: None)


def load_compose(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=ComposeLoader)  # noqa: S506 - ComposeLoader is a SafeLoader


def dockerfile_instructions(path: Path) -> list[Instruction]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw_line in path.read_text(encoding="utf-8").splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, f"{path}: the last instruction ends with a line continuation"
    return instructions


class Stage(NamedTuple):
    parent: str  # an image, or the name of an earlier stage
    instructions: list[Instruction]  # its own, starting with its FROM


def dockerfile_stages(path: Path = DOCKERFILE) -> dict[str, Stage]:
    """The build stages of a Dockerfile by name (an unnamed stage by its index)."""
    stages: dict[str, Stage] = {}
    for keyword, arguments in dockerfile_instructions(path):
        if keyword == "FROM":
            match = FROM_ARGUMENTS.fullmatch(arguments)
            assert match, f"{path}: cannot read FROM {arguments}"
            stages[match["name"] or str(len(stages))] = Stage(match["image"], [])
        elif not stages:
            assert keyword == "ARG", f"{path}: {keyword} before the first FROM"
            continue
        current = list(stages.values())[-1]
        current.instructions.append((keyword, arguments))
    return stages


def target_instructions(target: str) -> list[Instruction]:
    """What building `--target target` puts in the image: its stage's chain of parents, oldest first."""
    stages = dockerfile_stages()
    assert target in stages, f"{DOCKERFILE} has no stage {target!r}"
    chain: list[Instruction] = []
    while target in stages:
        chain[:0] = stages[target].instructions
        target = stages[target].parent
    return chain


def last_arguments(instructions: list[Instruction], keyword: str) -> str:
    """The arguments of the last `keyword` instruction: the one in effect."""
    found = [arguments for found, arguments in instructions if found == keyword]
    assert found, f"no {keyword} instruction"
    return found[-1]


def dockerfile_env(instructions: list[Instruction]) -> dict[str, str]:
    """The ENV settings of a Dockerfile (KEY=value form)."""
    env: dict[str, str] = {}
    for keyword, arguments in instructions:
        if keyword == "ENV":
            for assignment in shlex.split(arguments):
                key, _, value = assignment.partition("=")
                env[key] = value
    return env


def first_index(instructions: list[Instruction], keyword: str, *words: str) -> int:
    """Position of the first `keyword` instruction whose arguments contain all `words`."""
    for index, (found, arguments) in enumerate(instructions):
        if found == keyword and all(word in arguments for word in words):
            return index
    raise AssertionError(f"no {keyword} instruction with {words}")


def copy_sources(arguments: str) -> tuple[list[str], str, str | None]:
    """(sources, destination, --from stage) of a COPY instruction."""
    words = shlex.split(arguments)
    options = [word for word in words if word.startswith("--")]
    paths = [word for word in words if not word.startswith("--")]
    stage = next((o.split("=", 1)[1] for o in options if o.startswith("--from=")), None)
    return paths[:-1], paths[-1], stage


# Settings of deploy/.env.example that may stay empty (the rest of the empty ones are secrets to choose).
OPTIONAL_SETTINGS = frozenset({"SEGMENT_KEYS"})


def env_example() -> dict[str, str]:
    values = {}
    for raw in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            name, value = line.split("=", 1)
            values[name.removeprefix("export ").strip()] = value.strip()
    return values


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes?, regex) per line of .dockerignore, with Docker's matching: `*` and `?`
    within one path element, `**` across any number; `!` re-includes; the last rule that
    matches a path, or any folder above it, decides."""
    rules = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        excludes = not line.startswith("!")
        pattern = posixpath.normpath(line.removeprefix("!").strip()).lstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((excludes, re.compile(regex)))
    return rules


def left_out_of_context(path: str) -> bool:
    """Whether the build context (the repository root) leaves ``path`` out."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    left_out = False
    for excludes, regex in dockerignore_rules():
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            left_out = excludes
    return left_out


def published(port: Any) -> tuple[str, str, str]:
    """(host_ip, host port or "", container port) of a compose `ports` entry."""
    if isinstance(port, dict):
        return port.get("host_ip", ""), str(port.get("published", "")), str(port["target"])
    parts = str(port).split(":")
    host_ip = parts[0] if len(parts) == 3 else ""
    host_port = parts[-2] if len(parts) >= 2 else ""
    return host_ip, host_port, parts[-1]


def healthcheck_command(target: str) -> list[str]:
    """The HEALTHCHECK command of a target (exec form: no shell in between)."""
    options_and_command = last_arguments(target_instructions(target), "HEALTHCHECK")
    options, _, command = options_and_command.partition("CMD ")
    assert all(option.startswith("--") for option in options.split()), options_and_command
    return json.loads(command)

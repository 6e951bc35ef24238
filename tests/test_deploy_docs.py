"""The deployment files name only what the code has: every `fhir-sched …` command line in the
Dockerfile, compose.yaml and docs/deploy.md is one the CLI takes (its subcommands and options),
and every FHIRSCHED_ variable they use is one the server reads. So they cannot drift from the
code; the checks are shown failing on made-up names at the end."""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import click
import pytest
import yaml
from sqlalchemy.engine import make_url

from fhir_server.cli import main
from fhir_server.cli_backup import PASSPHRASE_ENV
from fhir_server.settings import Settings

ROOT = Path(__file__).parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
COMPOSE_TEXT = (ROOT / "compose.yaml").read_text()
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_TEXT)
DEPLOY = (ROOT / "docs" / "deploy.md").read_text()
DOT_ENV = {"PUBLIC_HOST": "sched.example.org"}  # the .env docs/deploy.md asks for

# FHIRSCHED_ followed by a name, or by a prefix and `*` (`FHIRSCHED_HL7_*` in prose)
VARIABLE = re.compile(r"(?<![A-Za-z0-9_])(FHIRSCHED_[A-Z0-9_]*[A-Z0-9])(_\*)?")
COMMAND = re.compile(r"(?<![\w./:-])fhir-sched(?=\s|$)(.*)$", re.MULTILINE)
SHELL_COMMENT = re.compile(r"(?:^|(?<=\s))#.*$", re.MULTILINE)
EXEC_FORM = re.compile(r"^(?:HEALTHCHECK\b.*?)?(?:CMD|ENTRYPOINT)\s+(\[.*\])\s*$", re.MULTILINE)
ELLIPSIS = {"…", "..."}


def known_variables() -> set[str]:
    """What the server reads: Settings' fields under its prefix (a list or a mapping is one
    variable holding JSON), and the backup passphrase, which the command reads itself."""
    prefix = str(Settings.model_config.get("env_prefix", ""))
    return {prefix + name.upper() for name in Settings.model_fields} | {PASSPHRASE_ENV}


def unknown_variables(text: str) -> list[str]:
    known = known_variables()
    unknown = set()
    for found in VARIABLE.finditer(text):
        name, wildcard = found.groups()
        if not (any(k.startswith(f"{name}_") for k in known) if wildcard else name in known):
            unknown.add(found.group(0))
    return sorted(unknown)


def cli_problem(argv: list[str]) -> str | None:
    """Why `fhir-sched *argv` is not a command line the CLI takes (its command path and
    options; arguments are not checked), or None."""
    command: click.Command = main
    path = "fhir-sched"
    words = list(argv)
    while isinstance(command, click.Group):
        if not words:
            return f"{path} needs a command" if argv else None
        if words[0] in ELLIPSIS:
            return None
        if words[0].startswith("-"):
            return f"{path} needs a command before {words[0]}"
        name = words.pop(0)
        if name not in command.commands:
            return f"{path} has no command {name!r}"
        command, path = command.commands[name], f"{path} {name}"
    options = {"--help"} | {
        name
        for param in command.params
        if isinstance(param, click.Option)
        for name in (*param.opts, *param.secondary_opts)
    }
    for word in words:
        if word in ELLIPSIS:
            break
        if word.startswith("-") and word.split("=")[0] not in options:
            return f"{path} has no option {word.split('=')[0]}"
    return None


def _words(line: str) -> list[str]:
    """The words of one command, up to the shell's next operator (`&&`, `|`, `;`, `)`, `>`)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words: list[str] = []
    try:
        for word in lexer:
            if set(word) <= set("();<>|&"):
                break
            words.append(word)
    except ValueError:  # a quote closed on a later line: the words before it
        pass
    return words


def commands_in_text(text: str) -> list[list[str]]:
    """The argv after each `fhir-sched` used as a command in shell text (continued lines
    joined); `/opt/fhir-sched`, `fhir-sched:local` or `fhir-sched-console` are not commands."""
    text = SHELL_COMMENT.sub("", text.replace("\\\n", " "))
    return [_words(found.group(1)) for found in COMMAND.finditer(text)]


def commands_in_markdown(text: str) -> list[list[str]]:
    """The commands in a Markdown file's code: fenced blocks and inline code spans."""
    fenced = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)
    blocks = [m.group(1) for m in fenced.finditer(text)]
    spans = [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", fenced.sub("", text))]
    return [argv for code in (*blocks, *spans) for argv in commands_in_text(code)]


def commands_in_dockerfile(text: str) -> list[list[str]]:
    """The exec-form CMD and ENTRYPOINT (a HEALTHCHECK's CMD too) that run fhir-sched."""
    found = []
    text = text.replace("\\\n", " ")
    for line in EXEC_FORM.findall(text):
        argv = json.loads(line)
        if argv and argv[0] == "fhir-sched":
            found.append(argv[1:])
    return found


def commands_in_compose(compose: dict[str, Any]) -> list[list[str]]:
    """The services' commands and entrypoints that run fhir-sched."""
    found = []
    for service in compose.get("services", {}).values():
        for key in ("entrypoint", "command"):
            value = service.get(key) or []
            argv = shlex.split(value) if isinstance(value, str) else [str(v) for v in value]
            if argv and argv[0] == "fhir-sched":
                found.append(argv[1:])
    return found


def problems(commands: list[list[str]], text: str) -> list[str]:
    found = [cli_problem(argv) for argv in commands]
    return [p for p in found if p] + [f"no setting {v}" for v in unknown_variables(text)]


# -- the Dockerfile -------------------------------------------------------------------------


def test_the_dockerfile_names_only_what_the_code_has() -> None:
    commands = commands_in_dockerfile(DOCKERFILE)
    assert problems(commands, DOCKERFILE) == []
    assert commands == [["serve"]]


def test_the_image_installs_with_the_constraints_and_runs_unprivileged() -> None:
    froms = re.findall(r"^FROM (\S+)", DOCKERFILE, re.MULTILINE)
    assert froms and all(re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", f) for f in froms), froms
    assert "pip install -c constraints.txt ." in DOCKERFILE
    assert re.findall(r"^USER (\d+):(\d+)$", DOCKERFILE, re.MULTILINE) == [("10001", "10001")]
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", DOCKERFILE, re.MULTILINE)
    assert re.search(r"^EXPOSE 8080 2575$", DOCKERFILE, re.MULTILINE)


def test_the_build_context_holds_every_package_the_install_needs() -> None:
    """.dockerignore lets in only what `pip install .` reads: each package setuptools finds,
    and the files pyproject.toml names."""
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
    needed = {p.rstrip("*") for p in packages} | {"pyproject.toml", "constraints.txt"}
    needed |= {project["project"]["readme"], *project["project"]["license-files"]}
    assert sorted(needed - allowed) == []


# -- compose.yaml -------------------------------------------------------------------------


def test_compose_names_only_what_the_code_has() -> None:
    commands = commands_in_compose(COMPOSE)
    assert problems(commands, COMPOSE_TEXT) == []
    assert sorted(commands) == [["db", "upgrade"], ["hl7", "listen"], ["serve"]]


def interpolate(value: object) -> str:
    """A value as compose interpolates it with DOT_ENV: ${X}, ${X:-default}, ${X:?error}."""

    def one(found: re.Match[str]) -> str:
        name, op, arg = found.groups()
        if name in DOT_ENV:
            return DOT_ENV[name]
        assert op == "-", f"{name} must be set"
        return str(arg)

    return re.sub(r"\$\{(\w+)(?::?([-?])([^}]*))?\}", one, str(value))


def image_environment() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV (.*)$", DOCKERFILE.replace("\\\n", " "), re.MULTILINE):
        for word in shlex.split(line):
            key, _, value = word.partition("=")
            env[key] = value
    return env


def service(name: str) -> dict[str, Any]:
    found: dict[str, Any] = COMPOSE["services"][name]
    return found


def settings_of(name: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a service's server starts with: the image's ENV, then the service's
    environment. The clinic file is left out: it exists only once compose mounts it."""
    env = image_environment() | {
        k: interpolate(v) for k, v in service(name).get("environment", {}).items()
    }
    for key in os.environ:
        if key.startswith("FHIRSCHED_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("FHIRSCHED_") and key != "FHIRSCHED_CLINIC_FILE":
            monkeypatch.setenv(key, value)
    return Settings()


def test_the_api_runs_several_workers_on_postgresql_without_the_bridge(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_of("api", monkeypatch)
    settings.check_bind()  # what `serve` refuses, it would refuse here
    settings.check_workers()
    assert settings.workers > 1
    assert not settings.hl7_listen
    assert make_url(settings.database_url).drivername == "postgresql+psycopg"
    assert settings.fhir_base == "https://sched.example.org/fhir"
    assert "ports" not in service("api")  # the proxy alone reaches it (FORWARDED_ALLOW_IPS)


def test_the_hl7_listener_runs_apart_on_the_same_database(monkeypatch: pytest.MonkeyPatch) -> None:
    api_database = settings_of("api", monkeypatch).database_url
    settings = settings_of("hl7", monkeypatch)
    settings.check_hl7_bind()
    assert settings.database_url == api_database


def test_migrations_run_once_before_the_servers() -> None:
    assert service("migrate")["command"] == ["fhir-sched", "db", "upgrade"]
    for name in ("api", "hl7"):
        needs = service(name)["depends_on"]
        assert needs["migrate"]["condition"] == "service_completed_successfully", name
    assert service("migrate")["depends_on"]["db"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", ["migrate", "api", "hl7"])
def test_keys_are_read_only_secrets_and_what_is_written_is_in_a_volume(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_of(name, monkeypatch)
    secrets = {f"/run/secrets/{s}" for s in service(name)["secrets"]}
    assert str(settings.key_file) == "/run/secrets/fhirsched_keys"
    needed = [settings.key_file]
    if name != "hl7":  # the listener signs no id_token and runs no agent
        needed += [settings.signing_key_path, settings.agent_key_path]
    assert sorted(str(p) for p in needed if str(p) not in secrets) == []
    volumes = {PurePosixPath(v.split(":")[1]) for v in service(name)["volumes"]}
    assert PurePosixPath(settings.audit_checkpoint_path).parent in volumes
    assert set(COMPOSE["secrets"]) >= set(service(name)["secrets"])


def test_the_image_dumps_the_database_version_compose_runs() -> None:
    """`fhir-sched backup` needs pg_dump of the server's major version or newer."""
    server = re.fullmatch(r"postgres:(\d+)\.\d+-\w+", service("db")["image"])
    client = re.search(r"postgresql-client-(\d+)", DOCKERFILE)
    assert server and client and server.group(1) == client.group(1)


# -- docs/deploy.md -----------------------------------------------------------------------


def test_deploy_md_names_only_what_the_code_has() -> None:
    commands = commands_in_markdown(DEPLOY)
    assert problems(commands, DEPLOY) == []
    for needed in (["db", "upgrade"], ["keys", "rotate"], ["backup"], ["hl7", "listen"]):
        assert any(argv[: len(needed)] == needed for argv in commands), needed


# -- the checks themselves ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["serve", "--workers", "4"], None),
        (["keys", "retire", "KEY_ID"], None),
        (["backup", "/backups/x", "--passphrase-file=/run/p"], None),
        (["hl7", "…"], None),
        (["keys", "rotat"], "fhir-sched keys has no command 'rotat'"),
        (["serve", "--wrokers", "4"], "fhir-sched serve has no option --wrokers"),
        (["db"], "fhir-sched db needs a command"),
        (["--help", "db"], "fhir-sched needs a command before --help"),
    ],
    ids=["ok", "argument", "option=value", "ellipsis", "command", "option", "group", "order"],
)
def test_cli_problem(argv: list[str], problem: str | None) -> None:
    assert cli_problem(argv) == problem


def test_unknown_variables() -> None:
    text = (
        "FHIRSCHED_WORKERS=4 FHIRSCHED_WORKRES=4 `FHIRSCHED_HL7_*` FHIRSCHED_NOPE_* $FHIRSCHED_KEYS"
    )
    assert unknown_variables(text) == ["FHIRSCHED_NOPE_*", "FHIRSCHED_WORKRES"]


def test_commands_are_found_where_they_are_used() -> None:
    markdown = (
        "Run `fhir-sched keys rotat` in the image `fhir-sched:local`.\n\n"
        "```sh\ndocker compose run --rm migrate fhir-sched backup /b \\\n"
        "  --passphrase /p && echo done  # fhir-sched in a comment\n"
        "cat /etc/fhir-sched/clinic.yaml\n```\n"
    )
    assert commands_in_markdown(markdown) == [
        ["backup", "/b", "--passphrase", "/p"],
        ["keys", "rotat"],
    ]
    assert problems(commands_in_markdown(markdown), markdown) == [
        "fhir-sched backup has no option --passphrase",
        "fhir-sched keys has no command 'rotat'",
    ]
    compose_text = (
        "services:\n  hl7:\n    command: fhir-sched hl7 listne\n"
        "    environment:\n      FHIRSCHED_WROKERS: ${FHIRSCHED_WROKERS:-2}\n"
    )
    assert problems(commands_in_compose(yaml.safe_load(compose_text)), compose_text) == [
        "fhir-sched hl7 has no command 'listne'",
        "no setting FHIRSCHED_WROKERS",
    ]
    dockerfile = 'ENV FHIRSCHED_PORTS=1\nCMD ["fhir-sched", "serv"]\n'
    assert problems(commands_in_dockerfile(dockerfile), dockerfile) == [
        "fhir-sched has no command 'serv'",
        "no setting FHIRSCHED_PORTS",
    ]

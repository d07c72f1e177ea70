"""The docs say what the code does: README's configuration table (every variable, every
default, every bound) and command table (every command, every option shown), the variables
the other documents and the --help texts name, the container's probes, prune's horizon,
the SDK's constructor and the commands that run the checkout's files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic_core import PydanticUndefined

from keyservice.config import Settings
from keyservice.maintenance import SIGNING_KEY_KEPT

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# What a newcomer reads first, and the files they copy settings from.
DOCUMENTS = [
    README,
    ROOT / "SECURITY.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "examples").glob("*.py")),
    ROOT / "Dockerfile",
    ROOT / "docker-compose.yml",
]
# KEYSERVICE_ variables that are not the service's settings: the SDK's and the examples'
# (keyservice.client, examples/) and the test suite's (tests/conftest.py).
NOT_SETTINGS = {
    "API_KEY",
    "TOKEN_URL",
    "URL",
    "TEST_POSTGRES_URL",
    "TEST_SKIP_POSTGRES",
}


def documented() -> dict[str, str]:
    """{field name: the README's default cell} for each KEYSERVICE_ row of the table."""
    rows: dict[str, str] = {}
    text = README.read_text(encoding="utf-8")
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        if not line.startswith("| `KEYSERVICE_"):
            continue
        names_cell, default_cell = (cell.strip() for cell in line.split(" | ")[:2])
        names = re.findall(r"`KEYSERVICE_([A-Z_]+)`", names_cell)
        defaults = re.findall(r"`([^`]*)`", default_cell)
        for i, name in enumerate(names):
            # Several variables in one row have their defaults in the same order.
            cell = defaults[i] if len(defaults) == len(names) else default_cell
            rows[name.lower()] = cell
    return rows


def shown(value: Any) -> str:
    """A default as the README writes it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, Path):
        return f"./{value}"
    return str(value)


def test_every_setting_is_in_the_table_and_nothing_else():
    assert set(documented()) == set(Settings.model_fields)


def test_the_configuration_table_is_one_table():
    """Every row in the one table: a blank line ends a Markdown table, and rows after it
    show as a paragraph of pipes (the metrics' two were)."""
    section = README.read_text(encoding="utf-8").split("## Configuration", 1)[1]
    table = section.split("| variable |", 1)[1].split("\n\n", 1)[0]
    in_table = set(re.findall(r"^\| `KEYSERVICE_([A-Z_]+)`", table, flags=re.MULTILINE))
    firsts = {re.findall(r"`KEYSERVICE_([A-Z_]+)`", row)[0] for row in _rows().values()}
    assert firsts <= in_table, sorted(firsts - in_table)


def test_every_documented_default_is_the_code_default():
    rows = documented()
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        assert default is not PydanticUndefined, name
        if default is None or default == []:
            # Derived or absent: prose ("none", "the issuer"), never a literal value.
            assert rows[name] in ("none", "the issuer") or " " in rows[name], (name, rows[name])
        else:
            assert rows[name] == shown(default), (name, rows[name], default)


def test_every_variable_the_documents_name_is_a_setting():
    """A KEYSERVICE_ variable in a document or a deployment file is one Settings reads."""
    settings = {name.upper() for name in Settings.model_fields}
    for path in DOCUMENTS:
        named = set(re.findall(r"KEYSERVICE_([A-Z][A-Z_]*[A-Z])", path.read_text(encoding="utf-8")))
        unknown = named - settings - NOT_SETTINGS
        assert not unknown, (path.name, sorted(unknown))


def test_the_containers_probe_and_port_are_the_services(tmp_path):
    """The image's and compose's health checks ask the port `serve` binds, on a real path."""
    from keyservice.main import create_app

    app = create_app(Settings(data_dir=tmp_path))
    paths = {getattr(route, "path", None) for route in app.routes}
    dockerfile = (ROOT / "Dockerfile").read_text()
    port = re.search(r'CMD \["keyservice", "serve", .*"--port", "(\d+)"', dockerfile)
    assert port, "the image's CMD runs keyservice serve --port N"
    assert re.search(rf"^EXPOSE {port.group(1)}$", dockerfile, re.MULTILINE)
    compose = (ROOT / "docker-compose.yml").read_text()
    for text in (dockerfile, compose):
        probes = re.findall(r"urlopen\('http://127\.0\.0\.1:(\d+)(/[a-z]+)'", text)
        assert probes, "a health check probing the service"
        for probe_port, path in probes:
            assert probe_port == port.group(1) and path in paths, (probe_port, path)
    assert f'"127.0.0.1:{port.group(1)}:{port.group(1)}"' in compose


def test_compose_builds_the_image_once():
    """One service builds and tags the image; the other runs that image and never pulls it
    (no registry has it), and waits for the builder, so `up` builds once, before both."""
    import yaml

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    builders = [name for name, service in services.items() if "build" in service]
    assert builders == ["migrate"], builders
    image = services["migrate"]["image"]
    assert image and "/" not in image  # a local tag, not a registry's image
    users = {name for name, service in services.items() if service.get("image") == image}
    assert users == {"migrate", "keyservice"}, users
    assert services["keyservice"]["pull_policy"] == "never"
    assert "migrate" in services["keyservice"]["depends_on"]
    # Both run the service's code with the same settings.
    assert services["migrate"]["environment"] == services["keyservice"]["environment"]


def test_compose_issues_tokens_for_the_address_it_publishes():
    """The stack's default issuer is the URL it is reached at (its published loopback port),
    which the README's tour and the examples call: with `localhost` there, the downstream
    example (KEYSERVICE_URL=http://127.0.0.1:8000) refused every token for its `iss`."""
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["keyservice"]
    [published] = service["ports"]
    host, port, _ = published.split(":")
    issuer = re.fullmatch(
        r"\$\{KEYSERVICE_ISSUER:-(.+)\}", service["environment"]["KEYSERVICE_ISSUER"]
    )
    assert issuer, service["environment"]["KEYSERVICE_ISSUER"]
    assert issuer.group(1) == f"http://{host}:{port}"
    for example in (ROOT / "examples").glob("*.py"):
        for default in re.findall(r'"KEYSERVICE_URL", "([^"]+)"', example.read_text()):
            assert default == issuer.group(1), (example.name, default)


def test_compose_keeps_its_secret_from_one_start_to_the_next():
    """The way docker-compose.yml says to start it keeps one server secret, in a .env file
    Compose reads at every start and git ignores: a secret made afresh on the command line
    of every `up` left the second start unable to read the signing keys."""
    header = (ROOT / "docker-compose.yml").read_text().split("services:", 1)[0]
    made = [line for line in header.splitlines() if "$(python3" in line]
    assert made, "the header says how to make the secret"
    assert all("> .env" in line for line in made), made
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_a_documented_pg_dump_writes_a_private_file():
    """A dump holds the password hashes and the audit log: the README's `pg_dump > FILE`
    runs under `umask 077`, so the file is 0600 as `keyservice backup` makes its copy."""
    dumps = re.findall(r"`([^`]*pg_dump[^`]*>[^`]*)`", README.read_text())
    assert dumps
    for command in dumps:
        assert "umask 077" in command, command


def test_prune_horizon_of_signing_keys_is_the_codes():
    """Where the README says when prune deletes a retired signing key, it says the code's."""
    said = re.findall(r"retired over (\d+) days ago", README.read_text())
    assert len(said) >= 2, said  # the prune row and the signing-keys row
    assert set(said) == {str(SIGNING_KEY_KEPT.days)}, said


def _command(words: list[str]) -> tuple[Any, list[str]] | None:
    """The click command a README span names (`keyservice keys list ...`), and the rest."""
    import click

    from keyservice.cli import main

    if words and words[0] == "keyservice":
        words = words[1:]
    command: Any = main
    used = 0
    while isinstance(command, click.Group) and used < len(words):
        sub = command.commands.get(words[used])
        if sub is None:
            break
        command, used = sub, used + 1
    if used == 0 or isinstance(command, click.Group):
        return None
    return command, words[used:]


def test_the_command_table_names_real_commands_and_options():
    """Each command of README's "Command line" table exists, with the options shown."""
    section = README.read_text().split("## Command line", 1)[1].split("\n## ", 1)[0]
    commands = 0
    for span in re.findall(r"`([^`]+)`", section):
        found = _command(span.replace("\\|", "|").split())
        if found is None:
            continue
        commands += 1
        command, rest = found
        options = {name for param in command.params for name in param.opts}
        for word in rest:
            option = word.strip("[]").split("=")[0]
            if option.startswith("--"):
                assert option in options, (span, option, sorted(options))
    assert commands >= 14, commands  # every row's commands were found


def test_the_probe_endpoints_are_documented():
    """A platform engineer wiring a load balancer or orchestrator finds the probe paths the
    image uses in the README, not only in the Dockerfile."""
    readme = README.read_text(encoding="utf-8")
    for path in ("Dockerfile", "docker-compose.yml"):
        text = (ROOT / path).read_text()
        for probe in re.findall(r"urlopen\('http://127\.0\.0\.1:\d+(/[a-z]+)'", text):
            assert f"`GET {probe}`" in readme, (path, probe)
    assert "`GET /healthz`" in readme


def test_prune_is_named_as_the_command_it_is():
    """`prune` is a command of its own (`keyservice prune`), not a `signing-keys` one."""
    from keyservice.cli import main

    signing_keys: Any = main.commands["signing-keys"]
    section = README.read_text().split("## Command line", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in section.splitlines() if "`keyservice signing-keys" in line)
    for span in re.findall(r"`([^`]+)`", row):
        words = span.split()
        if words[0] in ("keyservice", "signing-keys") or words[0] in signing_keys.commands:
            continue
        # A bare command word in this row would read as `keyservice signing-keys WORD`.
        assert words[0] not in main.commands, (span, "write `keyservice " + words[0] + "`")


def test_commands_that_run_the_repositorys_files_use_its_venv():
    """`make run` installs into .venv, not on PATH: a command the docs give for running a
    file of this checkout (an example, a script) names .venv's interpreter, as the
    keyservice commands name .venv/bin/keyservice, so that it works as written."""
    commands = 0
    for path in (README, *sorted((ROOT / "docs").glob("*.md"))):
        for span in re.findall(r"`([^`\n]+)`", path.read_text(encoding="utf-8")):
            words = span.split()
            for program, target in zip(words, words[1:], strict=False):
                if program.rsplit("/", 1)[-1] not in ("python", "python3", "uvicorn"):
                    continue
                if target.endswith(".py") or target.endswith(":app"):
                    commands += 1
                    assert "/.venv/bin/" in f"/{program}", (path.name, span)
    assert commands >= 3, commands  # the two examples and the screenshots script


def _rows() -> dict[str, str]:
    """{field name: the whole README table row} for each KEYSERVICE_ variable it names."""
    section = README.read_text(encoding="utf-8").split("## Configuration", 1)[1]
    rows: dict[str, str] = {}
    for line in section.split("\n## ", 1)[0].splitlines():
        if line.startswith("| `KEYSERVICE_"):
            names_cell = line.split(" | ")[0]
            for name in re.findall(r"`KEYSERVICE_([A-Z_]+)`", names_cell):
                rows[name.lower()] = line
    return rows


def test_every_bounded_setting_documents_the_codes_bounds():
    """A setting with an upper bound says its range in the table, and it is the code's: a
    value past it stops start-up, so the reader should not find out from that."""
    rows = _rows()
    for name, field in Settings.model_fields.items():
        bounds = {
            kind.capitalize(): getattr(m, kind)
            for m in field.metadata
            for kind in ("ge", "gt", "le")
            if hasattr(m, kind)
        }
        if "Le" not in bounds or name == "port":  # the port's bounds are TCP's
            continue
        upper = shown(bounds["Le"])
        if "Ge" in bounds:
            said = re.search(r"\((\d+) to (\d+)\b", rows[name])
            assert said, (name, "no (low to high) range in the README row")
            assert said.groups() == (shown(bounds["Ge"]), upper), (name, said.groups(), bounds)
        else:  # more than zero, at most N
            assert f"(≤ {upper})" in rows[name], (name, bounds)


def test_every_command_is_in_the_command_table():
    """The reverse of the table's check: no command of `keyservice --help` is missing."""
    import click

    from keyservice.cli import main

    section = README.read_text().split("## Command line", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([^`]+)`", section))

    def leaves(group: click.Group, prefix: str) -> list[str]:
        found = []
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                found += leaves(command, f"{prefix}{name} ")
            else:
                found.append(f"{prefix}{name}")
        return found

    for command in leaves(main, ""):
        group, _, word = command.rpartition(" ")
        # `keyservice keys list ...`, or `keys revoke ...` / `list` after its group in a row.
        spoken = (f"keyservice {command}", command, word if group else command)
        assert any(span.split(" [")[0].startswith(spoken) for span in named), command


def test_the_cli_help_names_only_real_settings():
    """The variables `--help` texts name (serve's --host, import-legacy's cut-off, ...)
    are settings, as for the documents."""
    from click.testing import CliRunner

    from keyservice.cli import main

    settings = {name.upper() for name in Settings.model_fields}
    runner = CliRunner()
    seen: set[str] = set()
    stack: list[list[str]] = [[]]
    while stack:
        words = stack.pop()
        result = runner.invoke(main, [*words, "--help"])
        assert result.exit_code == 0, (words, result.output)
        seen |= set(re.findall(r"KEYSERVICE_([A-Z][A-Z_]*[A-Z])", result.output))
        command: Any = main
        for word in words:
            command = command.commands[word]
        stack += [[*words, name] for name in getattr(command, "commands", {})]
    assert seen, "the help texts name some settings"
    assert not seen - settings, sorted(seen - settings)


def test_the_sdk_signature_and_arguments_are_the_codes():
    """docs/sdk.md's KeyServiceAuth(...) line is the constructor's, and every argument of
    KeyServiceAuth and TokenVerifier is described there."""
    import inspect

    from keyservice.client import KeyServiceAuth
    from keyservice.verify import TokenVerifier

    sdk = (ROOT / "docs" / "sdk.md").read_text(encoding="utf-8")
    said = re.search(r"`(KeyServiceAuth\([^`]*\))`:", sdk)
    assert said, "the constructor's signature is in docs/sdk.md"
    parts = []
    star = False
    for param in list(inspect.signature(KeyServiceAuth.__init__).parameters.values())[1:]:
        if param.kind is param.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        parts.append(f"{param.name}={param.default!r}")
    assert " ".join(said.group(1).split()) == f"KeyServiceAuth({', '.join(parts)})"
    for cls in (KeyServiceAuth, TokenVerifier):
        for name in list(inspect.signature(cls.__init__).parameters)[1:]:
            # Described (`leeway`), or shown in the example (issuer=...).
            assert f"`{name}`" in sdk or f"{name}=" in sdk, (cls.__name__, name)


def test_every_relative_link_of_the_documents_is_a_file_of_the_repository():
    # README linked the contract as ../shared/API.md, a folder beside our checkout that
    # no clone has; the contract's copy is docs/API.md.
    documents = [
        README,
        ROOT / "SECURITY.md",
        ROOT / "bench" / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
    ]
    checked = 0
    for document in documents:
        text = re.sub(r"```.*?```", "", document.read_text(), flags=re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:|#", target):  # a URL, or a heading of the same page
                continue
            path = (document.parent / target.split("#", 1)[0]).resolve()
            assert path.is_relative_to(ROOT) and path.exists(), (document.name, target)
            checked += 1
    assert checked >= 5  # the pattern still finds the links

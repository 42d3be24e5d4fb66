"""Offline validation of the deployment files: docker/Dockerfile, .dockerignore,
docker-compose.yml (with its Prometheus and Grafana provisioning) and k8s/.

No Docker engine or cluster is needed. What is checked:

- every stage's health is asked of its own HTTP server on the metrics port: compose
  healthchecks GET ``/readyz``, k8s readiness probes GET ``/readyz`` and liveness probes
  ``/healthz`` (core/health.py);
- every command a container runs (compose `command`, k8s `args`, HEALTHCHECK) is a
  real `omniquant` command: the path is walked through the CLI's click tree, every
  `--option` must exist on that command, and the CLI's own parser type-checks the values;
- every environment variable handed to an app container is one ``Settings`` reads
  (``OMNIQUANT_`` + field, ``__`` for nesting, or a name in ``config._WELL_KNOWN_ENV``), and
  the values actually load through ``load_settings``;
- the k8s manifests validate against the Kubernetes schemas bundled with
  kubernetes-validate (strict: unknown fields fail), for 1.30 and the newest bundled;
- the Dockerfile is multi-stage, runs as a fixed non-root uid with a CLI health check;
- the files agree with each other (uid, state dir, metrics port, stage list, scrape targets).

Each checker returns a list of problems; the ``*_catches_*`` tests feed it a broken copy
of the real data to prove it can fail.
"""

from __future__ import annotations

import base64
import copy
import functools
import itertools
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel

from core.config import _WELL_KNOWN_ENV, ENV_PREFIX, Settings, load_settings
from omniquant.stages import STAGES as REGISTERED_STAGES

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "docker-compose.yml"
PROMETHEUS = REPO / "docker" / "prometheus" / "prometheus.yml"
GRAFANA_DATASOURCES = REPO / "docker" / "grafana" / "provisioning" / "datasources"
K8S = REPO / "k8s" / "base"  # the manifests; k8s/ and k8s/secure/ build on them

# The stages of `omniquant run` (the CLI contract); each is a compose service and a
# k8s Deployment of the same name.
STAGES = tuple(s.name for s in REGISTERED_STAGES)
INFRA_SERVICES = ("kafka", "clickhouse", "redis", "prometheus", "grafana")
APP_IMAGE = "omniquant-streams"
METRICS_PORT = 9100
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())


# ======================================================================================
# Settings: which environment variables exist
# ======================================================================================
def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``annotation`` (``Model``, ``Model | None``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _env_names(model: type[BaseModel], prefix: str, delimiter: str) -> Iterator[str]:
    for name, field in model.model_fields.items():
        env = prefix + name.upper()
        nested = _model_in(field.annotation)
        if nested is not None:
            yield from _env_names(nested, env + delimiter, delimiter)
        else:
            yield env
        if isinstance(field.validation_alias, str):
            yield field.validation_alias.upper()


@functools.cache
def settings_env_names() -> frozenset[str]:
    """Every variable Settings reads: prefixed leaf fields plus the well-known names."""
    delimiter = Settings.model_config.get("env_nested_delimiter") or "__"
    prefixed = set(_env_names(Settings, ENV_PREFIX, delimiter))
    return frozenset(prefixed | set(_WELL_KNOWN_ENV))


def unknown_env_names(names: Iterator[str] | Sequence[str], where: str) -> list[str]:
    allowed = settings_env_names()
    return [
        f"{where}: {name} is not a setting (typo? see core/config.py)"
        for name in sorted(set(names))
        if name not in allowed
    ]


def load_settings_from(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """load_settings() seeing exactly ``env`` (nothing from this process or a .env file)."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX) or name in _WELL_KNOWN_ENV:
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    return load_settings()


@pytest.fixture(autouse=True)
def _no_stray_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings reads ./.env; run where there is none.
    monkeypatch.chdir(tmp_path)


# ======================================================================================
# CLI: is a list of arguments a real `omniquant` command?
# ======================================================================================
@functools.cache
def cli_root() -> Any:
    import typer

    import omniquant.cli

    return typer.main.get_command(omniquant.cli.app)


def cli_problems(args: Sequence[str]) -> list[str]:
    """Problems running ``omniquant <args>``: unknown command, option, or bad value."""
    cmd = cli_root()
    path = ["omniquant"]
    rest = [str(a) for a in args]
    while hasattr(cmd, "commands"):  # a group: the next token names a subcommand
        if not rest or rest[0].startswith("-"):
            return [f"`{' '.join(path)}` needs a subcommand: one of {sorted(cmd.commands)}"]
        name = rest.pop(0)
        if name not in cmd.commands:
            return [f"`{' '.join(path)}` has no command {name!r}; it has {sorted(cmd.commands)}"]
        cmd = cmd.commands[name]
        path.append(name)
    where = " ".join(path)

    options = {
        opt: param
        for param in cmd.params
        for opt in (*param.opts, *getattr(param, "secondary_opts", ()))
        if opt.startswith("-")
    }
    problems = []
    i = 0
    while i < len(rest):
        token = rest[i]
        if token.startswith("-") and not re.fullmatch(r"-\d+(\.\d+)?", token):
            flag, has_value = token.split("=", 1)[0], "=" in token
            param = options.get(flag)
            if param is None:
                problems.append(f"`{where}` has no option {flag}; it has {sorted(options)}")
            elif not getattr(param, "is_flag", False) and not has_value:
                i += 1  # skip the option's value
        i += 1
    if problems:
        return problems
    try:  # the command's own parser: values are converted and range-checked, nothing runs
        cmd.make_context(where, list(rest))
    except Exception as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        return [f"`{where} {shlex.join(rest)}`: {message}"]
    return []


# ======================================================================================
# Compose
# ======================================================================================
_INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose variable interpolation (``${VAR}``, ``${VAR:-default}``, ``$$`` ...)."""

    def replace(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        current = env.get(name)
        unset_or_empty = not current
        if op in (":-", "-"):
            return arg if (current is None or (op == ":-" and unset_or_empty)) else current
        if op in (":?", "?"):
            if current is None or (op == ":?" and unset_or_empty):
                raise ValueError(f"required variable {name} is not set: {arg}")
            return current
        if op in (":+", "+"):
            return arg if (current is not None and (op == "+" or not unset_or_empty)) else ""
        return current or ""

    return _INTERPOLATION.sub(replace, value)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    return node


@functools.cache
def _compose_raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # merge keys (<<: *anchor) resolved


def compose_raw() -> dict[str, Any]:
    """The compose file as written (no interpolation); a fresh copy to mutate freely."""
    return copy.deepcopy(_compose_raw())


def compose() -> dict[str, Any]:
    """The compose file as `docker compose` sees it with nothing set: every default used."""
    return interpolate_tree(compose_raw(), {})


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    files = service.get("env_file") or []
    for item in [files] if isinstance(files, str | dict) else files:
        path = REPO / (item["path"] if isinstance(item, dict) else item)
        for line in path.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                name, _, value = line.partition("=")
                env[name.strip()] = value.strip()
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        for item in raw:
            name, _, value = item.partition("=")
            env[name] = value
    else:
        env.update({k: "" if v is None else str(v) for k, v in raw.items()})
    return env


def service_command(service: Mapping[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def is_app_service(service: Mapping[str, Any]) -> bool:
    build = service.get("build")
    dockerfile = build.get("dockerfile") if isinstance(build, dict) else None
    image = str(service.get("image", ""))
    return dockerfile == "docker/Dockerfile" or image.split(":")[0].endswith(APP_IMAGE)


def app_services(doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in doc["services"].items() if is_app_service(svc)}


def compose_command_problems(doc: Mapping[str, Any]) -> list[str]:
    problems = []
    for name, svc in app_services(doc).items():
        command = service_command(svc)
        problems += [f"service {name}: {p}" for p in cli_problems(command)]
        expected = ["topics", "create"] if name == "topics" else ["stage", name]
        if command[:2] != expected:
            problems.append(f"service {name}: command {command} should start with {expected}")
        hc = svc.get("healthcheck") or {}
        if name != "topics":
            problems += [f"service {name} healthcheck: {p}" for p in compose_probe_problems(hc)]
    return problems


# `python -c "...urlopen('http://127.0.0.1:PORT/PATH'...)"`: the image has no curl or wget,
# and urlopen raises (exit 1) on a 503.
_URLOPEN = re.compile(r"urlopen\('http://127\.0\.0\.1:(?P<port>\d+)(?P<path>/[a-z]*)'")


def compose_probe_problems(healthcheck: Mapping[str, Any], path: str = "/readyz") -> list[str]:
    """A stage's compose healthcheck must GET its own ``path`` on the metrics port."""
    test = list(healthcheck.get("test") or [])
    if healthcheck.get("disable"):
        return ["disabled"]
    if test[:3] != ["CMD", "python", "-c"] or len(test) != 4:
        return [f"{test} is not CMD python -c <urlopen of {path}>"]
    m = _URLOPEN.search(test[3])
    if m is None:
        return [f"{test[3]!r} does not urlopen http://127.0.0.1:<port>/..."]
    problems = []
    if m["port"] != str(METRICS_PORT):
        problems.append(f"asks port {m['port']}, the metrics port is {METRICS_PORT}")
    if m["path"] != path:
        problems.append(f"asks {m['path']}, not {path}")
    return problems


def k8s_probe_problems(container: Mapping[str, Any], probe: str, path: str) -> list[str]:
    """A k8s probe must GET ``path`` on the container's metrics port (by name or number)."""
    spec = container.get(probe)
    if not spec:
        return [f"{probe} missing"]
    get = spec.get("httpGet")
    if not get:
        return [f"{probe} must be an httpGet of {path}, has {sorted(spec)}"]
    problems = []
    if get.get("path") != path:
        problems.append(f"{probe} asks {get.get('path')}, not {path}")
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    port = ports.get(get.get("port"), get.get("port"))
    if port != METRICS_PORT:
        problems.append(f"{probe} port {get.get('port')} is not the metrics port {METRICS_PORT}")
    return problems


def compose_env_problems(doc: Mapping[str, Any]) -> list[str]:
    problems = []
    for name, svc in app_services(doc).items():
        problems += unknown_env_names(list(service_env(svc)), f"service {name}")
    return problems


def has_healthcheck(service: Mapping[str, Any]) -> bool:
    hc = service.get("healthcheck") or {}
    return bool(hc.get("test")) and not hc.get("disable")


def startup_order_problems(doc: Mapping[str, Any]) -> list[str]:
    services = doc["services"]
    problems = []
    edges: dict[tuple[str, str], str] = {}
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, spec in deps.items():
            condition = (spec or {}).get("condition", "service_started")
            edges[(name, dep)] = condition
            if dep not in services:
                problems.append(f"{name} depends on unknown service {dep}")
            elif condition == "service_healthy" and not has_healthcheck(services[dep]):
                problems.append(
                    f"{name} waits for {dep} to be healthy but {dep} has no healthcheck"
                )

    def require(service: str, dep: str, condition: str) -> None:
        if edges.get((service, dep)) != condition:
            problems.append(f"{service} must depend on {dep} with condition {condition}")

    require("topics", "kafka", "service_healthy")
    for stage in STAGES:
        require(stage, "topics", "service_completed_successfully")
    require("sink-clickhouse", "clickhouse", "service_healthy")
    require("grafana", "clickhouse", "service_healthy")
    return problems


_SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|_AUTH$|^APCA_API_KEY_ID$")
_WHOLE_INTERPOLATION = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:?[-?][^}]*)?\}$")
_URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^:@/\s]*:(?P<password>[^@\s]+)@")


def _strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{path}[{i}]")
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, f"{path}.{k}" if path else str(k))


def literal_secret_problems(raw: Mapping[str, Any]) -> list[str]:
    """Credentials in the (uninterpolated) compose file must come from ${VARIABLES}."""
    problems = []
    for name, svc in raw["services"].items():
        for key, value in service_env(svc).items():
            if _SECRET_KEY.search(key) and value and not _WHOLE_INTERPOLATION.match(value):
                problems.append(f"service {name}: {key} holds a literal; use ${{{key}}}")
        command = service_command(svc)
        for flag, value in itertools.pairwise(command):
            if flag == "--requirepass" and not _WHOLE_INTERPOLATION.match(value):
                problems.append(f"service {name}: --requirepass holds a literal")
    for where, text in _strings(raw):
        # hide ${...} (it may contain ':' or '@') behind opaque tokens, then look at URLs
        masked = re.sub(r"\$\{[^}]*\}", "\x00", text)
        for m in _URL_PASSWORD.finditer(masked):
            if m.group("password") != "\x00":
                problems.append(f"{where}: password in URL {text!r} is a literal")
    return problems


def default_drift_problems(text: str) -> list[str]:
    """One variable, one default: a password default differing between uses breaks logins."""
    defaults: dict[str, set[str]] = {}
    for m in re.finditer(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?-([^}]*)\}", text):
        defaults.setdefault(m.group(1), set()).add(m.group(2))
    return [
        f"${{{k}}} has different defaults {sorted(v)}" for k, v in defaults.items() if len(v) > 1
    ]


# ======================================================================================
# Dockerfile and .dockerignore
# ======================================================================================
def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # blank lines and comments, also inside a continuation
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        instruction, _, args = buf.partition(" ")
        out.append((instruction.upper(), args.strip()))
        buf = ""
    return out


def dockerfile_stages(text: str) -> list[dict[str, Any]]:
    stages: list[dict[str, Any]] = []
    for instruction, args in dockerfile_instructions(text):
        if instruction == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append({"image": words[0], "name": name, "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((instruction, args))
    return stages


def dockerfile_env(stage: Mapping[str, Any]) -> dict[str, str]:
    env = {}
    for instruction, args in stage["instructions"]:
        if instruction != "ENV":
            continue
        words = shlex.split(args)
        if words and "=" not in words[0]:  # legacy `ENV NAME value`
            env[words[0]] = " ".join(words[1:])
        else:
            env.update(w.split("=", 1) for w in words)
    return env


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    return [str(v) for v in value]


def dockerfile_problems(text: str) -> list[str]:
    problems = []
    stages = dockerfile_stages(text)
    if len(stages) < 2:
        return [f"not multi-stage: {len(stages)} FROM"]
    for stage in stages:
        if not stage["image"].startswith("python:3.11-slim"):
            problems.append(f"FROM {stage['image']}: expected python:3.11-slim")
    builders = {s["name"] for s in stages[:-1] if s["name"]}
    final = stages[-1]
    last: dict[str, str] = {}
    for instruction, args in final["instructions"]:
        last[instruction] = args
        if instruction in ("COPY", "ADD"):
            source = re.search(r"--from=(\S+)", args)
            if source is None or source.group(1) not in builders:
                problems.append(
                    f"runtime stage copies from the build context: {instruction} {args}"
                )
        if instruction == "RUN" and re.search(r"\bpip\b.*\binstall\b", args):
            problems.append("runtime stage installs packages; build them in the builder stage")
    user = last.get("USER", "")
    uid = user.split(":")[0]
    if not user or uid in ("root", "0"):
        problems.append(f"runtime stage must end as a non-root USER (found {user or 'none'})")
    elif not uid.isdigit():
        problems.append(f"USER {user}: use a numeric uid so runAsNonRoot can verify it")
    healthcheck = last.get("HEALTHCHECK", "")
    m = re.fullmatch(r"(?P<options>(?:--\S+\s+)*)CMD\s+(?P<cmd>\[.*\])", healthcheck)
    if m is None:
        problems.append(f"HEALTHCHECK must be `CMD [exec form]`, found {healthcheck!r}")
    else:
        cmd = _exec_form(m.group("cmd"))
        if cmd[:1] != ["omniquant"]:
            problems.append(f"HEALTHCHECK runs {cmd}, not omniquant")
        problems += [f"HEALTHCHECK: {p}" for p in cli_problems(cmd[1:])]
    if "ENTRYPOINT" not in last or _exec_form(last["ENTRYPOINT"]) != ["omniquant"]:
        problems.append('ENTRYPOINT must be ["omniquant"]')
    if str(METRICS_PORT) not in last.get("EXPOSE", "").split():
        problems.append(f"EXPOSE {METRICS_PORT} missing")
    env = dockerfile_env(final)
    if env.get("PYTHONUNBUFFERED") != "1":
        problems.append("PYTHONUNBUFFERED=1 missing (logs would be block-buffered)")
    problems += unknown_env_names([n for n in env if n.startswith(ENV_PREFIX)], "Dockerfile ENV")
    return problems


def dockerfile_uid(text: str) -> int:
    user = [a for i, a in dockerfile_stages(text)[-1]["instructions"] if i == "USER"][-1]
    return int(user.split(":")[0])


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_matcher(text: str) -> Any:
    """is_excluded(path) with Docker's rules: last match wins, a match on a parent counts."""
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = posixpath.normpath(line.lstrip("!").strip().lstrip("/"))
        rules.append((negate, _dockerignore_regex(pattern)))

    def is_excluded(path: str) -> bool:
        parts = path.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        excluded = False
        for negate, regex in rules:
            if any(regex.fullmatch(c) for c in candidates):
                excluded = not negate
        return excluded

    return is_excluded


def build_context_problems(dockerfile_text: str, dockerignore_text: str) -> list[str]:
    """Every file the builder COPYs is in the context; secrets and junk are not."""
    is_excluded = dockerignore_matcher(dockerignore_text)
    needed: list[str] = []
    for stage in dockerfile_stages(dockerfile_text):
        for instruction, args in stage["instructions"]:
            if instruction not in ("COPY", "ADD") or "--from=" in args:
                continue
            for source in [w for w in args.split() if not w.startswith("--")][:-1]:
                path = REPO / source
                if path.is_dir():
                    needed += [
                        p.relative_to(REPO).as_posix()
                        for p in path.rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts
                    ]
                else:
                    needed.append(source)
    problems = [
        f"{p} is needed by the build but .dockerignore excludes it"
        for p in needed
        if is_excluded(p)
    ]
    for junk in (
        ".env",
        "omniquant/.env",
        ".venv/bin/python",
        ".git/HEAD",
        "tests/test_config.py",
        ".omniquant/logs/run.log",
        "state/x",
        "omniquant/__pycache__/cli.cpython-311.pyc",
        "k8s/base/secret.yaml",
        "docker-compose.yml",
    ):
        if not is_excluded(junk):
            problems.append(f"{junk} would be sent to the Docker daemon; exclude it")
    return problems


# ======================================================================================
# Kubernetes
# ======================================================================================
def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@functools.cache
def _manifests() -> tuple[tuple[str, dict[str, Any]], ...]:
    docs = []
    for resource in kustomization()["resources"]:
        for doc in yaml.safe_load_all((K8S / resource).read_text()):
            if doc:
                docs.append((resource, doc))
    return tuple(docs)


def manifests() -> list[tuple[str, dict[str, Any]]]:
    return copy.deepcopy(list(_manifests()))


def of_kind(docs: Sequence[tuple[str, dict[str, Any]]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in docs if d["kind"] == kind}


def k8s_schema_problems(doc: Mapping[str, Any], version: str) -> list[str]:
    where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    try:
        kubernetes_validate.validate(dict(doc), version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        return [f"{where} (k8s {version}): {path}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{where}: {exc.message}"]
    return []


def pod_spec(doc: Mapping[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]


def containers(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(doc)
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def effective_container_env(
    container: Mapping[str, Any], docs: Sequence[tuple[str, dict[str, Any]]]
) -> tuple[dict[str, str], list[str]]:
    """The container's environment from envFrom ConfigMaps/Secrets and env; plus problems."""
    config_maps, secrets = of_kind(docs, "ConfigMap"), of_kind(docs, "Secret")
    env: dict[str, str] = {}
    problems = []
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            ref = source["configMapRef"]["name"]
            found = config_maps.get(ref)
            data = (found or {}).get("data", {})
        else:
            ref = source["secretRef"]["name"]
            found = secrets.get(ref)
            data = {
                **{
                    k: base64.b64decode(v).decode()
                    for k, v in (found or {}).get("data", {}).items()
                },
                **(found or {}).get("stringData", {}),
            }
        if found is None:
            problems.append(f"container {container['name']}: envFrom {ref} is not in the manifests")
        env.update({source.get("prefix", "") + k: str(v) for k, v in data.items()})
    for item in container.get("env", []):
        env[item["name"]] = str(item.get("value", ""))
    return env, problems


def k8s_env_problems(docs: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    problems = []
    for _, doc in docs:
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        for container in containers(doc):
            env, missing = effective_container_env(container, docs)
            problems += missing
            problems += unknown_env_names(list(env), f"{doc['kind']}/{doc['metadata']['name']}")
    return problems


_QUANTITY = {
    "m": 1e-3,
    "": 1.0,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
}


def quantity(value: Any) -> float:
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert m is not None and m.group(2) in _QUANTITY, f"bad quantity {value!r}"
    return float(m.group(1)) * _QUANTITY[m.group(2)]


def workload_problems(
    doc: Mapping[str, Any], docs: Sequence[tuple[str, dict[str, Any]]]
) -> list[str]:
    """Deployment/Job hygiene: CLI args, probes, resources, non-root, metrics, state dir."""
    where = f"{doc['kind']}/{doc['metadata']['name']}"
    spec = pod_spec(doc)
    problems = []
    pod_sc = spec.get("securityContext", {})
    if pod_sc.get("runAsNonRoot") is not True:
        problems.append(f"{where}: pod securityContext.runAsNonRoot must be true")
    if pod_sc.get("runAsUser", 0) == 0:
        problems.append(f"{where}: pod securityContext.runAsUser must be a non-zero uid")
    if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: seccompProfile RuntimeDefault missing")
    for container in containers(doc):
        name = f"{where}/{container['name']}"
        if "command" in container:
            problems.append(f"{name}: sets `command`, replacing the image's omniquant ENTRYPOINT")
        problems += [f"{name}: {p}" for p in cli_problems(container.get("args", []))]
        resources = container.get("resources", {})
        for resource in ("cpu", "memory"):
            request = resources.get("requests", {}).get(resource)
            limit = resources.get("limits", {}).get(resource)
            if request is None or limit is None:
                problems.append(f"{name}: resources.requests/limits.{resource} missing")
            elif quantity(limit) < quantity(request):
                problems.append(f"{name}: {resource} limit {limit} below request {request}")
        sc = container.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{name}: capabilities must drop ALL")
        env, _ = effective_container_env(container, docs)
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        if sc.get("readOnlyRootFilesystem") is True:
            state_dir = env.get(f"{ENV_PREFIX}STATE_DIR")
            for needed in (state_dir, "/tmp"):
                if needed not in mounts:
                    problems.append(f"{name}: read-only root but no writable volume at {needed}")
        else:
            problems.append(f"{name}: readOnlyRootFilesystem should be true")
        if doc["kind"] != "Deployment":
            continue
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            problems += [f"{name}: {p}" for p in k8s_probe_problems(container, probe, path)]
        annotations = doc["spec"]["template"]["metadata"].get("annotations", {})
        port = env.get(f"{ENV_PREFIX}METRICS_PORT")
        ports = {str(p["containerPort"]) for p in container.get("ports", [])}
        if annotations.get("prometheus.io/scrape") != "true":
            problems.append(f"{name}: prometheus.io/scrape annotation missing")
        if not (
            annotations.get("prometheus.io/port") == port == str(METRICS_PORT) and port in ports
        ):
            problems.append(
                f"{name}: scrape port {annotations.get('prometheus.io/port')}, "
                f"OMNIQUANT_METRICS_PORT {port} and containerPorts {ports} disagree"
            )
    return problems


# ======================================================================================
# Tests: the CLI contract the deployment files rely on
# ======================================================================================
CONTRACT = [
    ["up"],
    ["down"],
    ["status"],
    ["topics", "create"],
    ["topics", "list"],
    [
        "run",
        "--duration",
        "30",
        "--symbols",
        "AAPL,MSFT",
        "--ticks",
        "100",
        "--rate",
        "20",
        "--seed",
        "3",
        "--no-live",
    ],
    ["sql", "SELECT 1", "--format", "csv"],
    ["stage", "feed", "--symbols", "AAPL", "--rate", "5", "--ticks", "10", "--seed", "1"],
    *(["stage", s] for s in STAGES[1:]),
    ["healthcheck"],
]


@pytest.mark.parametrize("args", CONTRACT, ids=lambda a: " ".join(a[:2]))
def test_cli_offers_the_contracted_command(args: list[str]) -> None:
    assert cli_problems(args) == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["stage", "feeds"], "has no command 'feeds'"),
        (["topic", "create"], "has no command 'topic'"),
        (["stage"], "needs a subcommand"),
        (["stage", "feed", "--tick", "5"], "has no option --tick"),
        (["stage", "signals", "--rate", "5"], "has no option --rate"),
        (["stage", "feed", "--rate", "fast"], "Invalid value for '--rate'"),
        (["stage", "feed", "--rate", "0"], "greater than or equal to 0.1"),
        (["healthcheck", "now"], "unexpected extra argument"),
        (["sql"], "Missing argument"),
    ],
)
def test_cli_checker_catches_bad_commands(args: list[str], expected: str) -> None:
    problems = cli_problems(args)
    assert problems and expected in problems[0]


def test_stage_list_matches_omniquant_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from omniquant.supervisor import pipeline_stages

    settings = load_settings_from({}, monkeypatch)
    feed = {"symbols": ["AAPL"], "rate": 5.0, "ticks": None, "seed": 1}
    stages = pipeline_stages(settings, options={"feed": feed}, metrics_base_port=METRICS_PORT)
    assert tuple(s.name for s in stages) == STAGES
    for stage in stages:  # what `omniquant run` spawns is what compose and k8s run
        assert stage.args[0] == stage.name
        assert cli_problems(["stage", *stage.args]) == []


def test_env_names_follow_the_settings_model() -> None:
    names = settings_env_names()
    assert Settings.model_config["env_prefix"] == ENV_PREFIX == "OMNIQUANT_"
    assert Settings.model_config["env_nested_delimiter"] == "__"
    for name in (
        "OMNIQUANT_KAFKA__SECURITY_PROTOCOL",
        "OMNIQUANT_METRICS_PORT",
        "OMNIQUANT_TOPIC_PREFIX",
        "OMNIQUANT_STATE_DIR",
        "OMNIQUANT_RISK__MAX_ORDER_NOTIONAL",
        "KAFKA_BOOTSTRAP_SERVERS",
        "CLICKHOUSE_URL",
        "MASSIVE_API_KEY",
        "KITE_ACCESS_TOKEN",
    ):
        assert name in names
    assert "OMNIQUANT_KAFKA" not in names  # a section, not a setting
    assert unknown_env_names(["OMNIQUANT_METRIC_PORT", "KAFKA_BOOTSTRAP_SERVER"], "x") == [
        "x: KAFKA_BOOTSTRAP_SERVER is not a setting (typo? see core/config.py)",
        "x: OMNIQUANT_METRIC_PORT is not a setting (typo? see core/config.py)",
    ]


# ======================================================================================
# Tests: Dockerfile and .dockerignore
# ======================================================================================
def test_dockerfile_is_multi_stage_non_root_with_cli_healthcheck() -> None:
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


def test_dockerfile_checker_catches_root_single_stage_and_bad_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    assert "non-root USER" in " ".join(
        dockerfile_problems(text.replace("USER 10001:10001", "USER root"))
    )
    assert "USER" in " ".join(dockerfile_problems(re.sub(r"(?m)^USER .*$", "", text)))
    single = text[text.index("FROM python:3.11-slim AS runtime") :]
    assert dockerfile_problems(single) == ["not multi-stage: 1 FROM"]
    typo = text.replace('CMD ["omniquant", "healthcheck"]', 'CMD ["omniquant", "health-check"]')
    assert "no command 'health-check'" in " ".join(dockerfile_problems(typo))
    no_check = re.sub(r"(?ms)^HEALTHCHECK .*?\]$", "", text)
    assert "HEALTHCHECK" in " ".join(dockerfile_problems(no_check))
    leaky = text.replace("COPY --from=builder /opt/venv /opt/venv", "COPY . /app")
    assert "copies from the build context" in " ".join(dockerfile_problems(leaky))
    env_typo = text.replace("OMNIQUANT_METRICS_PORT=9100", "OMNIQUANT_METRIC_PORT=9100")
    assert "OMNIQUANT_METRIC_PORT is not a setting" in " ".join(dockerfile_problems(env_typo))


def test_dockerfile_builds_every_package_pyproject_ships() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    builder = dockerfile_stages(DOCKERFILE.read_text())[0]
    copied = {
        Path(w).name
        for instruction, args in builder["instructions"]
        if instruction == "COPY" and "--from=" not in args
        for w in args.split()[:-1]
    }
    assert packages | {"pyproject.toml", pyproject["project"]["readme"]} <= copied
    assert "omniquant" in pyproject["project"]["scripts"]  # the ENTRYPOINT


def test_dockerignore_keeps_build_inputs_and_drops_secrets() -> None:
    assert build_context_problems(DOCKERFILE.read_text(), DOCKERIGNORE.read_text()) == []


def test_dockerignore_checker_catches_a_missing_input_and_a_leaked_secret() -> None:
    text = DOCKERIGNORE.read_text()
    problems = build_context_problems(DOCKERFILE.read_text(), text + "\nREADME.md\n")
    assert problems == ["README.md is needed by the build but .dockerignore excludes it"]
    problems = build_context_problems(
        DOCKERFILE.read_text(), text.replace("**/.env", "") + "!.env\n"
    )
    assert any(".env would be sent" in p for p in problems)


# ======================================================================================
# Tests: docker-compose.yml
# ======================================================================================
def test_compose_has_infrastructure_topics_and_every_stage() -> None:
    doc = compose()
    assert set(INFRA_SERVICES) <= set(doc["services"])
    assert set(app_services(doc)) == {"topics", *STAGES}
    for name, svc in app_services(doc).items():
        assert svc["build"] == {"context": ".", "dockerfile": "docker/Dockerfile"}, name
    for mount in (v for s in doc["services"].values() for v in s.get("volumes", [])):
        source = mount.split(":")[0]
        if source.startswith("."):
            assert (REPO / source).exists(), f"bind mount source {source} is missing"


def test_compose_commands_are_real_cli_commands() -> None:
    assert compose_command_problems(compose()) == []


def test_compose_command_checker_catches_a_typo() -> None:
    doc = compose()
    doc["services"]["feed"]["command"] = ["stage", "feed", "--symbol", "AAPL"]
    doc["services"]["risk-gate"]["command"] = ["stage", "riskgate"]
    doc["services"]["signals"]["healthcheck"]["test"] = ["CMD", "omniquant", "healthcheck"]
    bars = doc["services"]["bars"]["healthcheck"]
    bars["test"] = [*bars["test"][:3], bars["test"][3].replace("9100/readyz", "9200/healthz")]
    problems = compose_command_problems(doc)
    assert any("has no option --symbol" in p for p in problems)
    assert any("has no command 'riskgate'" in p for p in problems)
    assert any("signals healthcheck" in p and "is not CMD python -c" in p for p in problems)
    assert "service bars healthcheck: asks port 9200, the metrics port is 9100" in problems
    assert "service bars healthcheck: asks /healthz, not /readyz" in problems


def test_every_stage_healthcheck_asks_its_own_readyz() -> None:
    doc = compose()
    for stage in STAGES:
        assert compose_probe_problems(doc["services"][stage]["healthcheck"]) == [], stage
    assert compose_probe_problems({"disable": True}) == ["disabled"]


def test_compose_app_env_names_are_settings() -> None:
    assert compose_env_problems(compose()) == []


def test_compose_env_checker_catches_a_typo() -> None:
    doc = compose()
    env = doc["services"]["execution"]["environment"]
    env["OMNIQUANT_KAFKA__SECURITY_PROTCOL"] = "PLAINTEXT"
    env["REDIS_URI"] = env.pop("REDIS_URL")
    assert compose_env_problems(doc) == [
        "service execution: OMNIQUANT_KAFKA__SECURITY_PROTCOL is not a setting "
        "(typo? see core/config.py)",
        "service execution: REDIS_URI is not a setting (typo? see core/config.py)",
    ]


@pytest.mark.parametrize("service", ["topics", *STAGES])
def test_compose_app_env_loads_through_settings(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = compose()
    settings = load_settings_from(service_env(doc["services"][service]), monkeypatch)
    assert settings.kafka_bootstrap() == "kafka:9092"
    assert settings.metrics_port == METRICS_PORT
    assert settings.state_dir == Path("/var/lib/omniquant")
    assert settings.clickhouse.url is not None
    assert settings.redis.url is not None
    assert settings.clickhouse.url.get_secret_value().startswith("http://omniquant:")
    assert "@clickhouse:8123" in settings.clickhouse.url.get_secret_value()


def test_compose_kafka_is_single_node_kraft_without_auto_create() -> None:
    doc = compose()
    kafka = doc["services"]["kafka"]
    env = service_env(kafka)
    assert kafka["image"].startswith("apache/kafka:4.")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16
    node_id = env["KAFKA_NODE_ID"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split("@")[0] == node_id
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    protocols = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert set(listeners) == set(protocols)
    assert set(advertised) < set(listeners)  # controller listener is not advertised
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    # the app containers use the internal listener; the host gets a published one
    internal = {service_env(s)["KAFKA_BOOTSTRAP_SERVERS"] for s in app_services(doc).values()}
    assert internal == {advertised[env["KAFKA_INTER_BROKER_LISTENER_NAME"]]}
    host = [a for a in advertised.values() if a.startswith("localhost:")]
    assert host and any(p.split(":")[-2] == host[0].split(":")[1] for p in kafka["ports"])


def test_compose_startup_order_uses_health_and_completion() -> None:
    assert startup_order_problems(compose()) == []


def test_compose_startup_checker_catches_missing_conditions() -> None:
    doc = compose()
    doc["services"]["signals"]["depends_on"] = ["topics"]
    del doc["services"]["clickhouse"]["healthcheck"]
    problems = startup_order_problems(doc)
    assert "signals must depend on topics with condition service_completed_successfully" in problems
    assert (
        "sink-clickhouse waits for clickhouse to be healthy but clickhouse has no healthcheck"
        in problems
    )


def test_compose_credentials_come_from_variables() -> None:
    assert literal_secret_problems(compose_raw()) == []
    assert default_drift_problems(COMPOSE.read_text()) == []


def test_compose_secret_checker_catches_literals_and_drift() -> None:
    raw = compose_raw()
    raw["services"]["clickhouse"]["environment"]["CLICKHOUSE_PASSWORD"] = "hunter2"
    raw["services"]["feed"]["environment"]["REDIS_URL"] = "redis://:hunter2@redis:6379/0"
    problems = literal_secret_problems(raw)
    assert any("CLICKHOUSE_PASSWORD holds a literal" in p for p in problems)
    assert any("password in URL 'redis://:hunter2@redis:6379/0'" in p for p in problems)
    drifted = COMPOSE.read_text().replace(
        "CLICKHOUSE_PASSWORD: ${CLICKHOUSE_PASSWORD:-omniquant-dev}",
        "CLICKHOUSE_PASSWORD: ${CLICKHOUSE_PASSWORD:-other}",
    )
    assert default_drift_problems(drifted) == [
        "${CLICKHOUSE_PASSWORD} has different defaults ['omniquant-dev', 'other']"
    ]


def test_compose_interpolation_uses_the_environment_when_set() -> None:
    raw = compose_raw()
    resolved = interpolate_tree(raw, {"CLICKHOUSE_PASSWORD": "s3cret", "FEED_RATE": "7"})
    assert service_env(resolved["services"]["clickhouse"])["CLICKHOUSE_PASSWORD"] == "s3cret"
    assert (
        "omniquant:s3cret@clickhouse"
        in service_env(resolved["services"]["sink-clickhouse"])["CLICKHOUSE_URL"]
    )
    assert service_command(resolved["services"]["feed"])[5] == "7"
    assert interpolate("$${X}", {}) == "${X}"
    with pytest.raises(ValueError, match="NEEDED"):
        interpolate("${NEEDED:?set it}", {})


def test_prometheus_scrapes_every_stage_on_its_metrics_port() -> None:
    doc = compose()
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {t for sc in jobs["omniquant"]["static_configs"] for t in sc["targets"]}
    expected = set()
    for stage in STAGES:
        port = service_env(doc["services"][stage])["OMNIQUANT_METRICS_PORT"]
        assert port == str(METRICS_PORT)
        assert port in [str(p) for p in doc["services"][stage].get("expose", [])]
        expected.add(f"{stage}:{port}")
    assert targets == expected
    assert jobs["omniquant"].get("metrics_path", "/metrics") == "/metrics"
    # the whole directory: rule_files are relative to prometheus.yml (rules/*.yml)
    mounts = [m.split("#")[0].strip() for m in doc["services"]["prometheus"]["volumes"]]
    assert "./docker/prometheus:/etc/prometheus:ro" in mounts
    assert (
        "--config.file=/etc/prometheus/prometheus.yml" in doc["services"]["prometheus"]["command"]
    )
    for pattern in config.get("rule_files", []):
        assert list(PROMETHEUS.parent.glob(pattern)), f"rule_files {pattern} matches nothing"


def test_grafana_provisions_clickhouse_and_prometheus_datasources() -> None:
    doc = compose()
    grafana = doc["services"]["grafana"]
    env = service_env(grafana)
    assert "grafana-clickhouse-datasource" in env["GF_PLUGINS_PREINSTALL_SYNC"].split(",")
    assert "./docker/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    datasources = [
        ds
        for f in sorted(GRAFANA_DATASOURCES.glob("*.y*ml"))
        for ds in yaml.safe_load(f.read_text())["datasources"]
    ]
    by_type = {ds["type"]: ds for ds in datasources}
    clickhouse = by_type["grafana-clickhouse-datasource"]["jsonData"]
    assert clickhouse["host"] == "clickhouse" and "clickhouse" in doc["services"]
    assert f"{clickhouse['port']}:{clickhouse['port']}" in doc["services"]["clickhouse"]["ports"][0]
    assert clickhouse["protocol"] == "http"
    app_env = service_env(doc["services"]["sink-clickhouse"])
    assert clickhouse["defaultDatabase"] == app_env["OMNIQUANT_CLICKHOUSE__DATABASE"]
    assert (
        service_env(doc["services"]["clickhouse"])["CLICKHOUSE_DB"] == clickhouse["defaultDatabase"]
    )
    # $VARIABLES in the provisioning file are expanded from Grafana's environment
    text = "".join(f.read_text() for f in GRAFANA_DATASOURCES.glob("*.y*ml"))
    for var in re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", text):
        assert var in env, f"provisioning uses ${var}, not set on the grafana service"
    assert by_type["prometheus"]["url"] == "http://prometheus:9090"


# ======================================================================================
# Tests: k8s/
# ======================================================================================
def test_kustomization_lists_every_manifest() -> None:
    listed = kustomization()["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk
    assert len(listed) == len(set(listed))
    images = {i["name"] for i in kustomization().get("images", [])}
    used = {
        c["image"].split(":")[0]
        for _, d in manifests()
        if d["kind"] in ("Deployment", "Job")
        for c in containers(d)
    }
    assert used == {APP_IMAGE} and used <= images


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_validate_against_kubernetes_schemas(version: str) -> None:
    problems = [p for _, doc in manifests() for p in k8s_schema_problems(doc, version)]
    assert problems == []


def test_k8s_schema_checker_catches_a_misspelled_field_and_a_wrong_type() -> None:
    deployment = of_kind(manifests(), "Deployment")["omniquant-signals"]
    container = pod_spec(deployment)["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    assert "readinesProbe" in " ".join(k8s_schema_problems(deployment, "1.30"))
    deployment = of_kind(manifests(), "Deployment")["omniquant-feed"]
    deployment["spec"]["replicas"] = "one"
    assert "spec.replicas" in " ".join(k8s_schema_problems(deployment, "1.30"))


def test_every_stage_has_a_deployment_running_its_stage_command() -> None:
    deployments = of_kind(manifests(), "Deployment")
    by_component = {
        d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: d
        for d in deployments.values()
    }
    assert set(by_component) == set(STAGES)
    for stage, deployment in by_component.items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        (container,) = pod_spec(deployment)["containers"]
        assert container["args"][:2] == ["stage", stage]
        assert "--ticks" not in container["args"]  # a Deployment's feed must not finish
    (job,) = of_kind(manifests(), "Job").values()
    assert [c["args"] for c in containers(job)] == [["topics", "create"]]
    assert pod_spec(job)["restartPolicy"] in ("OnFailure", "Never")


def test_k8s_workloads_have_probes_resources_security_and_metrics() -> None:
    docs = manifests()
    problems = [
        p
        for _, doc in docs
        if doc["kind"] in ("Deployment", "Job")
        for p in workload_problems(doc, docs)
    ]
    assert problems == []


def test_k8s_workload_checker_catches_broken_deployments() -> None:
    docs = manifests()
    deployment = of_kind(docs, "Deployment")["omniquant-execution"]
    spec = pod_spec(deployment)
    container = spec["containers"][0]
    container["args"] = ["stage", "exec"]
    del container["resources"]["limits"]["memory"]
    container["livenessProbe"]["httpGet"]["path"] = "/readyz"
    container["readinessProbe"] = {"exec": {"command": ["omniquant", "healthcheck"]}}
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    spec["securityContext"]["runAsUser"] = 0
    deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] = "8000"
    problems = " | ".join(workload_problems(deployment, docs))
    for expected in (
        "has no command 'exec'",
        "limits.memory missing",
        "livenessProbe asks /readyz, not /healthz",
        "readinessProbe must be an httpGet of /readyz",
        "no writable volume at /var/lib/omniquant",
        "runAsUser must be a non-zero uid",
        "scrape port 8000",
    ):
        assert expected in problems


def test_k8s_env_names_are_settings_and_refs_resolve() -> None:
    assert k8s_env_problems(manifests()) == []


def test_k8s_env_checker_catches_a_typo_and_a_dangling_ref() -> None:
    docs = manifests()
    config_map = of_kind(docs, "ConfigMap")["omniquant-config"]
    config_map["data"]["OMNIQUANT_RISK__MAX_ORDER_NOTIONALL"] = config_map["data"].pop(
        "OMNIQUANT_RISK__MAX_ORDER_NOTIONAL"
    )
    deployment = of_kind(docs, "Deployment")["omniquant-feed"]
    pod_spec(deployment)["containers"][0]["env"] = [
        {"name": "OMNIQUANT_LOGLEVEL", "value": "DEBUG"}
    ]
    pod_spec(deployment)["containers"][0]["envFrom"][1]["secretRef"]["name"] = "omniquant-secret"
    problems = " | ".join(k8s_env_problems(docs))
    assert "OMNIQUANT_RISK__MAX_ORDER_NOTIONALL is not a setting" in problems
    assert "Deployment/omniquant-feed: OMNIQUANT_LOGLEVEL is not a setting" in problems
    assert "envFrom omniquant-secret is not in the manifests" in problems


def test_k8s_config_and_secret_load_through_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = manifests()
    deployment = of_kind(docs, "Deployment")["omniquant-sink-clickhouse"]
    env, _ = effective_container_env(pod_spec(deployment)["containers"][0], docs)
    settings = load_settings_from(env, monkeypatch)
    config = of_kind(docs, "ConfigMap")["omniquant-config"]["data"]
    assert settings.kafka_bootstrap() == config["KAFKA_BOOTSTRAP_SERVERS"]
    assert not settings.uses_local_kafka and not settings.uses_local_redis
    assert settings.clickhouse.url is not None
    assert settings.metrics_port == METRICS_PORT
    assert settings.feeds.polygon_api_key is None  # empty placeholder = unset


def test_k8s_secret_holds_only_placeholders() -> None:
    (secret,) = of_kind(manifests(), "Secret").values()
    assert secret["type"] == "Opaque"
    assert "data" not in secret and secret["stringData"]
    for key, value in secret["stringData"].items():
        assert value == "" or "CHANGE-ME" in value, f"{key} looks like a real secret"


def test_files_agree_on_uid_state_dir_and_metrics_port() -> None:
    text = DOCKERFILE.read_text()
    uid = dockerfile_uid(text)
    image_env = dockerfile_env(dockerfile_stages(text)[-1])
    config = of_kind(manifests(), "ConfigMap")["omniquant-config"]["data"]
    compose_env = service_env(compose()["services"]["signals"])
    for name in ("OMNIQUANT_STATE_DIR", "OMNIQUANT_METRICS_PORT"):
        assert image_env[name] == config[name] == compose_env[name], name
    for _, doc in manifests():
        if doc["kind"] in ("Deployment", "Job"):
            assert pod_spec(doc)["securityContext"]["runAsUser"] == uid
            assert pod_spec(doc)["securityContext"]["fsGroup"] == uid


def test_kustomize_build_validates(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    kustomize = shutil.which("kustomize")
    if kustomize:
        command = [kustomize, "build", str(K8S)]
    elif kubectl:
        command = [kubectl, "kustomize", str(K8S)]
    else:
        pytest.skip("neither kustomize nor kubectl is installed")
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert len(docs) == len(manifests())
    namespace = kustomization()["namespace"]
    for doc in docs:
        assert k8s_schema_problems(doc, "1.30") == []
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace
        if doc["kind"] in ("Deployment", "Job"):
            tag = kustomization()["images"][0]["newTag"]
            assert all(c["image"].endswith(f":{tag}") for c in containers(doc))


def test_k8s_probe_checker_resolves_the_named_port_and_catches_another() -> None:
    container = {
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}},
    }
    assert k8s_probe_problems(container, "readinessProbe", "/readyz") == []
    assert k8s_probe_problems(container, "livenessProbe", "/healthz") == [
        f"livenessProbe port 8080 is not the metrics port {METRICS_PORT}"
    ]
    assert k8s_probe_problems({}, "livenessProbe", "/healthz") == ["livenessProbe missing"]


def test_the_secure_k8s_overlay_mounts_each_stage_only_its_own_password(tmp_path: Path) -> None:
    """k8s/secure/ over k8s/base with the files `omniquant secure init` writes: each stage
    runs as its own SCRAM user and its pod mounts a Secret holding only its own password
    (the one `secure init` generated) and the CA; the access Job gets every component's."""
    from omniquant.access import COMPONENTS
    from omniquant.stack.secure import StackSecrets, export_for_containers

    kubectl, kustomize = shutil.which("kubectl"), shutil.which("kustomize")
    if not (kubectl or kustomize):
        pytest.skip("neither kustomize nor kubectl is installed")
    shutil.copytree(K8S.parent, tmp_path / "k8s")
    secrets_dir = tmp_path / "k8s" / "secure" / "secrets"
    export_for_containers(StackSecrets.in_directory(secrets_dir), list(COMPONENTS), ("kafka",))
    overlay = str(tmp_path / "k8s" / "secure")
    command = [kustomize, "build", overlay] if kustomize else [str(kubectl), "kustomize", overlay]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert [p for d in docs for p in k8s_schema_problems(d, "1.30")] == []
    secrets = {
        d["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in d["data"].items()}
        for d in docs
        if d["kind"] == "Secret" and d["metadata"]["name"].startswith("omniquant-kafka-")
    }

    def password(user: str) -> str:
        return (secrets_dir / "passwords" / user).read_text()

    ca = (secrets_dir / "ca.pem").read_text()
    workloads = {d["metadata"]["name"]: d for d in docs if d["kind"] in ("Deployment", "Job")}
    expected = {f"omniquant-{s.name}": s.name for s in REGISTERED_STAGES}
    expected |= {"omniquant-topics-create": "admin", "omniquant-access": "admin"}
    assert set(workloads) == set(expected)
    for name, user in expected.items():
        (container,) = containers(workloads[name])
        env = {e["name"]: e["value"] for e in container["env"]}
        assert not unknown_env_names(list(env), name)
        assert env["OMNIQUANT_KAFKA__SASL_USERNAME"] == user
        assert "OMNIQUANT_KAFKA__SASL_PASSWORD" not in env
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "kafka-credentials"]
        folder = mount["mountPath"]
        assert env["OMNIQUANT_KAFKA__SASL_PASSWORD_FILE"] == f"{folder}/kafka-password-{user}"
        assert env["OMNIQUANT_KAFKA__SSL_CA_LOCATION"] == f"{folder}/kafka-ca"
        (volume,) = [v for v in pod_spec(workloads[name])["volumes"] if v["name"] == mount["name"]]
        data = secrets[volume["secret"]["secretName"]]
        assert data["kafka-ca"] == ca
        if name == "omniquant-access":  # it creates every component's user
            assert container["args"] == ["secure", "apply", "--secrets", folder]
            assert data == {"kafka-ca": ca} | {
                f"kafka-password-{u}": password(u) for u in ("admin", *COMPONENTS)
            }
        else:
            assert data == {"kafka-ca": ca, f"kafka-password-{user}": password(user)}, name

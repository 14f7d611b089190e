"""The agent's YAML config: validated in full at load, every error with its file, line and field.

Layout (all keys; unknown keys are errors everywhere)::

    ward: ward-minh-phung          # required, shared.wire Ident
    agent: pc-01                   # optional, default: the host name, sanitized
    collector:
      url: http://127.0.0.1:8080   # http:// or https://
      urls:                        # instead of url: several collectors, tried in turn (the
        - https://lb.example.gov.vn    # first that answers is kept until it fails)
        - https://collector-2.example.gov.vn
      token_file: /etc/wardready/token   # or `token:` inline; exactly one of the two
      ca_file: /etc/wardready/ca.pem     # https only: trust this CA (default: the system's)
      client_cert: /etc/wardready/agent.pem   # https only, with client_key: mTLS
      client_key: /etc/wardready/agent.key
      push_interval: 5s
      timeout: 5s                  # per HTTP request
      batch_size: 500              # results per push, at most shared.wire.MAX_RESULTS_PER_BATCH
      ca_file: /etc/wardready/ca.pem   # optional: trust this CA for an https:// collector
      plan: false                  # true: also run the ward's check plan from the collector
      plan_interval: 30s           # how often the plan is asked for (If-None-Match: cheap)
    spool:
      path: /var/lib/wardready/spool.db
      max_results: 100000
    metrics:
      listen: 127.0.0.1:9430       # HOST:PORT ([::1]:9430 for IPv6); "" disables
    defaults:
      interval: 30s
      timeout: 10s
      workers: 8                   # checks running at once (scheduler thread pool size)
    checks:                        # at least one, unless collector.plan is true
      - name: wan-city             # unique, shared.wire Name
        type: icmp                 # a key of checks.registry.REGISTRY
        target: 10.0.0.1
        target_name: city-gw       # optional, default: name
        interval: 30s              # optional, default: defaults.interval
        timeout: 10s               # optional, default: defaults.timeout; < interval
        labels: {role: wan}        # Word keys; `ward` is added; check, name, target, item reserved
        params: {count: 10}        # validated by the check type's Params

Durations: "500ms", "30s", "5m", "1h", or a number of seconds. Relative paths (token_file,
ca_file, client_cert, client_key, spool.path) are relative to the config file's directory, so
a config and its files can move together.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.scheduler import CheckSpec
from checks.core import CheckType, Params, Target
from shared.confload import (
    LoadError,
    Loc,
    field_errors,
    line_of,
    load,
    located,
    model_at,
    read_mapping,
)
from shared.confload import parse_duration as parse_duration  # agent.cli reads durations too
from shared.wire import MAX_LABELS, MAX_RESULTS_PER_BATCH, Ident, LabelValue, Name, Word

MAX_SECONDS = 86400.0
# Label names the agent sets itself on exported series.
RESERVED_LABELS = frozenset({"ward", "check", "name", "target", "item"})

# pydantic reports a pattern mismatch by quoting the regex; say what it means instead.
_PATTERN_HINTS = {
    r"^[a-z0-9][a-z0-9._-]{0,63}$": (
        "must be 1 to 64 of a-z 0-9 . _ - (lower case), starting with a letter or digit"
    ),
    r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$": (
        "must be 1 to 128 of A-Z a-z 0-9 . _ : @ / -, starting with a letter or digit"
    ),
    r"^[a-z][a-z0-9_]{0,63}$": "must be lower snake case (a-z 0-9 _), starting with a letter",
}


_M = TypeVar("_M", bound=BaseModel)


class ConfigError(LoadError):
    """A config that cannot be used; ``messages`` holds one ``file:line: field: problem`` each."""


def format_duration(seconds: float) -> str:
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0, le=MAX_SECONDS)]


def parse_listen(value: str) -> tuple[str, int] | None:
    """("127.0.0.1", 9430) from "127.0.0.1:9430", ("::1", 9430) from "[::1]:9430"; "" is None."""
    if value == "":
        return None
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:9430, or '', got {value!r}")
    return host, int(port)


def default_agent_name() -> str:
    host = socket.gethostname().split(".")[0].lower()
    name = re.sub(r"[^a-z0-9._-]+", "-", host).strip("-._")[:64]
    return name or "agent"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL with a host, got {value!r}")
    if parts.query or parts.fragment:
        raise ValueError("must not carry a query or fragment")
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_http_url)]
# More would only lengthen the time a push takes to find a working one.
MAX_COLLECTOR_URLS = 8


class CollectorSection(_Section):
    url: HttpUrl | None = None
    urls: list[HttpUrl] | None = Field(None, min_length=1, max_length=MAX_COLLECTOR_URLS)
    token_file: str | None = None
    token: SecretStr | None = None
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    push_interval: Duration = 5.0
    timeout: Duration = 5.0
    batch_size: int = Field(500, ge=1, le=MAX_RESULTS_PER_BATCH)
    plan: bool = False
    plan_interval: Duration = 30.0

    @field_validator("urls")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            twice = next(u for u in value if value.count(u) > 1)
            raise ValueError(f"{twice!r} is listed twice")
        return value

    @property
    def all_urls(self) -> tuple[str, ...]:
        return tuple(self.urls) if self.urls else (self.url,) if self.url else ()

    @model_validator(mode="after")
    def _one_token(self) -> CollectorSection:
        if (self.url is None) == (self.urls is None):
            raise ValueError("set exactly one of url (one collector) or urls (several)")
        if (self.token_file is None) == (self.token is None):
            raise ValueError("set exactly one of token_file (preferred) or token")
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("set both client_cert and client_key, or neither")
        tls = self.ca_file is not None or self.client_cert is not None
        if tls and not all(u.startswith("https://") for u in self.all_urls):
            raise ValueError("ca_file, client_cert and client_key need an https:// url")
        return self


class SpoolSection(_Section):
    path: str = "/var/lib/wardready/spool.db"
    max_results: int = Field(100_000, ge=1)


class MetricsSection(_Section):
    listen: str = "127.0.0.1:9430"

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value


class DefaultsSection(_Section):
    interval: Duration = 30.0
    timeout: Duration = 10.0
    workers: int = Field(8, ge=1, le=256)


class CheckSection(_Section):
    name: Name
    type: str
    target: Annotated[str, StringConstraints(min_length=1, max_length=255)]
    target_name: Name | None = None
    interval: Duration | None = None
    timeout: Duration | None = None
    # One slot is kept for the `ward` label the agent adds.
    labels: dict[Word, LabelValue] = Field(default_factory=dict, max_length=MAX_LABELS - 1)
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _not_reserved(cls, value: dict[str, str]) -> dict[str, str]:
        taken = sorted(RESERVED_LABELS & value.keys())
        if taken:
            reserved = ", ".join(sorted(RESERVED_LABELS))
            raise ValueError(f"label {taken[0]!r} is reserved (the agent sets {reserved})")
        return value


class ConfigFile(_Section):
    ward: Ident
    agent: Ident | None = None
    collector: CollectorSection
    spool: SpoolSection = SpoolSection()
    metrics: MetricsSection = MetricsSection()
    defaults: DefaultsSection = DefaultsSection()
    checks: list[CheckSection] = Field(default_factory=list)


class PlanFile(_Section):
    """A check plan from the collector, validated as a config file's ``checks:``."""

    checks: list[CheckSection] = Field(default_factory=list)


@dataclass(frozen=True)
class CollectorSettings:
    url: str  # the first of urls
    token: str = field(repr=False)
    push_interval: float = 5.0
    timeout: float = 5.0
    batch_size: int = 500
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    plan: bool = False
    plan_interval: float = 30.0
    # Every collector the shipper may push to, in the order they are tried.
    urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    source: Path
    ward: str
    agent: str
    collector: CollectorSettings
    spool_path: Path
    spool_max_results: int
    metrics_listen: tuple[str, int] | None
    workers: int
    checks: tuple[CheckSpec, ...]
    default_interval: float = 30.0
    default_timeout: float = 10.0


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_messages(exc: ValidationError, model: type[BaseModel]) -> list[tuple[Loc, str]]:
    """pydantic errors as (location, plain message) pairs."""
    out: list[tuple[Loc, str]] = []
    for loc, bad_key, err in field_errors(exc):
        msg = err["msg"]
        ctx = err.get("ctx") or {}
        if err["type"] == "value_error" and "error" in ctx:
            msg = str(ctx["error"])
        elif err["type"] == "string_pattern_mismatch" and ctx.get("pattern") in _PATTERN_HINTS:
            hint = _PATTERN_HINTS[ctx["pattern"]]
            msg = hint if bad_key else f"{_short(err['input'])} {hint}"
        elif err["type"] in ("model_type", "dict_type"):
            msg = f"expected a mapping (key: value), got {_short(err['input'])}"
        elif err["type"] == "extra_forbidden":
            parent = model_at(model, loc[:-1])
            allowed = f" (allowed: {', '.join(parent.model_fields)})" if parent else ""
            msg = f"unknown key{allowed}"
        out.append((loc, f"invalid key: {msg}" if bad_key else msg))
    return out


def _try_duration(value: object) -> float | None:
    try:
        seconds = parse_duration(value)
    except ValueError:
        return None  # reported by the model
    return seconds if 0 < seconds <= MAX_SECONDS else None


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


class _Checker:
    """The checks that need more than one field, or the registry: run on the raw data so that
    they report even when other parts of the file are wrong."""

    def __init__(self, raw: dict[Any, Any], lines: dict[Loc, int], base: Path) -> None:
        self.raw = raw
        self.lines = lines
        self.base = base
        self.errors: list[tuple[Loc, str]] = []
        self.params: dict[int, Params] = {}
        self.token: str | None = None
        self.tls_files: dict[str, Path] = {}

    def run(
        self,
        registry: dict[str, CheckType],
        d_interval: float | None = None,
        d_timeout: float | None = None,
    ) -> None:
        defaults = self.raw.get("defaults")
        defaults = defaults if isinstance(defaults, dict) else {}
        if d_interval is None:
            d_interval = _try_duration(defaults.get("interval", DefaultsSection().interval))
        if d_timeout is None:
            d_timeout = _try_duration(defaults.get("timeout", DefaultsSection().timeout))
        if d_interval and d_timeout and d_timeout >= d_interval:
            self.errors.append((("defaults", "timeout"), _too_long(d_timeout, d_interval)))
        checks = self.raw.get("checks")
        if isinstance(checks, list):
            first_line: dict[str, int] = {}
            for i, item in enumerate(checks):
                if isinstance(item, dict):
                    self._check(i, item, registry, d_interval, d_timeout, first_line)
        self._read_token()
        self._check_tls()
        self._need_checks()

    def _need_checks(self) -> None:
        section = self.raw.get("collector")
        if not isinstance(section, dict) or section.get("plan") is True:
            return
        checks = self.raw.get("checks")
        if checks is None or checks == []:
            msg = "at least one check is needed (or collector.plan: true, to take the plan's)"
            self.errors.append((("checks",), msg))

    def _check(
        self,
        i: int,
        item: dict[Any, Any],
        registry: dict[str, CheckType],
        d_interval: float | None,
        d_timeout: float | None,
        first_line: dict[str, int],
    ) -> None:
        name = item.get("name")
        if isinstance(name, str):
            if name in first_line:
                msg = f"duplicate check name {name!r} (first at line {first_line[name]})"
                self.errors.append((("checks", i, "name"), msg))
            else:
                first_line[name] = line_of(self.lines, ("checks", i, "name"))

        kind_word = item.get("type")
        if isinstance(kind_word, str):
            kind = registry.get(kind_word)
            if kind is None:
                known = ", ".join(sorted(registry))
                msg = f"unknown check type {kind_word!r} (known: {known})"
                self.errors.append((("checks", i, "type"), msg))
            else:
                target = item.get("target")
                if kind.parse_target is not None and isinstance(target, str):
                    try:
                        kind.parse_target(target)
                    except ValueError as exc:
                        self.errors.append((("checks", i, "target"), str(exc)))
                params = item.get("params", {})
                if isinstance(params, dict):
                    try:
                        self.params[i] = kind.params.model_validate(params)
                    except ValidationError as exc:
                        for loc, msg in error_messages(exc, kind.params):
                            self.errors.append((("checks", i, "params", *loc), msg))

        if "interval" in item or "timeout" in item:
            interval = _try_duration(item["interval"]) if "interval" in item else d_interval
            timeout = _try_duration(item["timeout"]) if "timeout" in item else d_timeout
            if interval and timeout and timeout >= interval:
                field_name = "timeout" if "timeout" in item else "interval"
                msg = _too_long(timeout, interval, "timeout" in item, "interval" in item)
                self.errors.append((("checks", i, field_name), msg))

    def _read_token(self) -> None:
        section = self.raw.get("collector")
        if not isinstance(section, dict) or not isinstance(section.get("token_file"), str):
            return
        path = _resolve(self.base, section["token_file"])
        loc: Loc = ("collector", "token_file")
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            self.errors.append((loc, f"cannot read {path}: {exc.strerror or exc}"))
            return
        except UnicodeDecodeError:
            self.errors.append((loc, f"{path} is not UTF-8 text"))
            return
        if not token:
            self.errors.append((loc, f"{path} is empty"))
        elif any(c.isspace() for c in token):
            self.errors.append((loc, f"{path} must hold one token with no spaces"))
        else:
            self.token = token

    def _check_tls(self) -> None:
        """The CA and client certificate files exist and are usable, found now rather than at
        the first push hours later."""
        section = self.raw.get("collector")
        if not isinstance(section, dict):
            return
        for key in ("ca_file", "client_cert", "client_key"):
            if isinstance(section.get(key), str):
                self.tls_files[key] = _resolve(self.base, section[key])
        for key, path in self.tls_files.items():
            if not path.is_file():
                self.errors.append((("collector", key), f"no file at {path}"))
        if any(("collector", k) in {e[0] for e in self.errors} for k in self.tls_files):
            return
        ca = self.tls_files.get("ca_file")
        if ca is not None:
            try:
                ssl.create_default_context(cafile=str(ca))
            except (OSError, ssl.SSLError) as exc:
                self.errors.append((("collector", "ca_file"), f"{ca}: not a PEM CA: {exc}"))
        cert, pkey = self.tls_files.get("client_cert"), self.tls_files.get("client_key")
        if cert is not None and pkey is not None:
            try:
                ssl.create_default_context().load_cert_chain(str(cert), str(pkey))
            except (OSError, ssl.SSLError) as exc:
                msg = f"{cert} with {pkey}: not a usable certificate and key: {exc}"
                self.errors.append((("collector", "client_cert"), msg))


def _too_long(timeout: float, interval: float, own_t: bool = True, own_i: bool = True) -> str:
    t = format_duration(timeout) + ("" if own_t else " (from defaults)")
    i = format_duration(interval) + ("" if own_i else " (from defaults)")
    return f"timeout {t} must be shorter than the interval {i}"


def load_config(
    path: str | os.PathLike[str], registry: Mapping[str, CheckType] | None = None
) -> Config:
    """Read and validate ``path``; raise ConfigError listing every problem found.

    ``registry``: the check types a config may use, by default all of them.
    """
    if registry is None:
        from checks.registry import REGISTRY  # the check modules load only when a config is read

        registry = REGISTRY

    shown = os.fspath(path)
    source = Path(path)
    raw, lines = read_mapping(path, ConfigError, "ward:, collector:, ...")
    model, checker = _validate(ConfigFile, raw, lines, shown, source.absolute().parent, registry)
    return _build(model, checker, source, dict(registry))


def _validate(
    model_type: type[_M],
    raw: dict[Any, Any],
    lines: dict[Loc, int],
    shown: str,
    base: Path,
    registry: Mapping[str, CheckType],
    interval: float | None = None,
    timeout: float | None = None,
) -> tuple[_M, _Checker]:
    """The model and the cross-field checks over ``raw``; ConfigError lists every problem."""
    errors: list[tuple[Loc, str]] = []
    model: _M | None = None
    try:
        model = model_type.model_validate(raw)
    except ValidationError as exc:
        errors.extend(error_messages(exc, model_type))
    checker = _Checker(raw, lines, base)
    checker.run(dict(registry), interval, timeout)
    errors.extend(checker.errors)
    if errors or model is None:
        errors.sort(key=lambda e: line_of(lines, e[0]))  # stable: same line keeps its order
        raise ConfigError([located(shown, lines, loc, msg) for loc, msg in errors])
    return model, checker


def _specs(
    checks: list[CheckSection],
    params: dict[int, Params],
    ward: str,
    interval: float,
    timeout: float,
    registry: dict[str, CheckType],
) -> tuple[CheckSpec, ...]:
    return tuple(
        CheckSpec(
            name=ch.name,
            check=ch.type,
            kind=registry[ch.type],
            target=Target(
                name=ch.target_name or ch.name,
                address=ch.target,
                labels={"ward": ward, **ch.labels},
            ),
            params=params[i],
            interval=ch.interval or interval,
            timeout=ch.timeout or timeout,
        )
        for i, ch in enumerate(checks)
    )


def load_plan(
    checks: object,
    shown: str,
    ward: str,
    interval: float = DefaultsSection().interval,
    timeout: float = DefaultsSection().timeout,
) -> tuple[CheckSpec, ...]:
    """A plan's ``checks`` (JSON from the collector), validated exactly as a config file's
    are; errors read ``plan v3:7: checks[1].params.count: ...`` (lines of the YAML form)."""
    from checks.registry import REGISTRY

    text = yaml.safe_dump({"checks": checks}, allow_unicode=True, sort_keys=False)
    raw, lines = load(text)
    model, checker = _validate(PlanFile, raw, lines, shown, Path("."), REGISTRY, interval, timeout)
    return _specs(model.checks, checker.params, ward, interval, timeout, dict(REGISTRY))


def _build(
    model: ConfigFile, checker: _Checker, source: Path, registry: dict[str, CheckType]
) -> Config:
    c = model.collector
    token = checker.token if c.token is None else c.token.get_secret_value()
    assert token is not None  # exactly one of token/token_file, and a file was read
    d = model.defaults
    specs = _specs(model.checks, checker.params, model.ward, d.interval, d.timeout, registry)
    base = source.absolute().parent
    return Config(
        source=source,
        ward=model.ward,
        agent=model.agent or default_agent_name(),
        collector=CollectorSettings(
            url=c.all_urls[0],
            urls=c.all_urls,
            token=token,
            push_interval=c.push_interval,
            timeout=c.timeout,
            batch_size=c.batch_size,
            ca_file=checker.tls_files.get("ca_file"),
            client_cert=checker.tls_files.get("client_cert"),
            client_key=checker.tls_files.get("client_key"),
            plan=c.plan,
            plan_interval=c.plan_interval,
        ),
        spool_path=_resolve(base, model.spool.path),
        spool_max_results=model.spool.max_results,
        metrics_listen=parse_listen(model.metrics.listen),
        workers=model.defaults.workers,
        checks=specs,
        default_interval=d.interval,
        default_timeout=d.timeout,
    )

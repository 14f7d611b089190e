"""Config loading: a table of broken files, each with the exact messages a user would read."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import main
from agent.config import ConfigError, load_config, parse_duration
from checks.registry import REGISTRY
from tests.gadget import GADGET

KNOWN_TYPES = ", ".join(sorted(REGISTRY))

CONFIGS = Path(__file__).resolve().parent / "configs"

ICMP_PARAMS = ", ".join(REGISTRY["icmp"].params.model_fields)
IDENT_HINT = "must be 1 to 64 of a-z 0-9 . _ - (lower case), starting with a letter or digit"
WORD_HINT = "must be lower snake case (a-z 0-9 _), starting with a letter"
DURATION_HINT = "use e.g. 500ms, 30s, 5m, 1h or a number of seconds"

INVALID: list[tuple[str, list[str]]] = [
    (
        "syntax_error.yaml",
        [
            "syntax_error.yaml:5: YAML: while parsing a block mapping: "
            "expected <block end>, but found '<block mapping start>'"
        ],
    ),
    (
        "unknown_top_key.yaml",
        [
            "unknown_top_key.yaml:7: schedule: unknown key "
            "(allowed: ward, agent, collector, spool, metrics, defaults, checks)"
        ],
    ),
    (
        "unknown_type.yaml",
        [f"unknown_type.yaml:8: checks[1].type: unknown check type 'icmpp' (known: {KNOWN_TYPES})"],
    ),
    (
        "params_unknown_key.yaml",
        [
            "params_unknown_key.yaml:11: checks[0].params.cuont: "
            f"unknown key (allowed: {ICMP_PARAMS})"
        ],
    ),
    (
        "params_bad_value.yaml",
        [
            "params_bad_value.yaml:12: checks[1].params.count: "
            "Input should be greater than or equal to 1"
        ],
    ),
    (
        "bad_duration.yaml",
        [f"bad_duration.yaml:9: checks[0].interval: invalid duration '30 sec': {DURATION_HINT}"],
    ),
    (
        "timeout_not_shorter.yaml",
        [
            "timeout_not_shorter.yaml:10: checks[0].timeout: "
            "timeout 5s must be shorter than the interval 5s",
            "timeout_not_shorter.yaml:14: checks[1].interval: "
            "timeout 10s (from defaults) must be shorter than the interval 5s",
        ],
    ),
    (
        "duplicate_names.yaml",
        ["duplicate_names.yaml:9: checks[1].name: duplicate check name 'wan' (first at line 6)"],
    ),
    ("bad_ward.yaml", [f"bad_ward.yaml:1: ward: 'Phường Minh Phụng' {IDENT_HINT}"]),
    ("missing_ward.yaml", ["missing_ward.yaml:1: ward: Field required"]),
    (
        "bad_label_key.yaml",
        [f"bad_label_key.yaml:11: checks[0].labels.Line-Kind: invalid key: {WORD_HINT}"],
    ),
    (
        "reserved_label.yaml",
        [
            "reserved_label.yaml:9: checks[0].labels: label 'ward' is reserved "
            "(the agent sets check, item, name, target, ward)"
        ],
    ),
    (
        "missing_token_file.yaml",
        [
            "missing_token_file.yaml:4: collector.token_file: "
            "cannot read /nonexistent/wardready/token: No such file or directory"
        ],
    ),
    (
        "two_tokens.yaml",
        ["two_tokens.yaml:2: collector: set exactly one of token_file (preferred) or token"],
    ),
    (
        "bad_url.yaml",
        [
            "bad_url.yaml:3: collector.url: must be an http:// or https:// URL with a host, "
            "got 'ftp://collector.example.gov.vn'"
        ],
    ),
    (
        "duplicate_key.yaml",
        ["duplicate_key.yaml:10: YAML: duplicate key 'interval' (first at line 9)"],
    ),
    ("bad_listen.yaml", ["bad_listen.yaml:6: metrics.listen: Input should be a valid string"]),
    (
        "not_a_mapping.yaml",
        ["not_a_mapping.yaml:1: the file must be a YAML mapping (ward:, collector:, ...)"],
    ),
    (
        "no_checks.yaml",
        [
            "no_checks.yaml:5: checks: at least one check is needed (or collector.plan: true, "
            "to take the plan's)"
        ],
    ),
    (
        # a key overriding a merged one is no duplicate; its error points at the override
        "merged_params.yaml",
        [
            "merged_params.yaml:15: checks[1].params.count: "
            "Input should be greater than or equal to 1",
            "merged_params.yaml:16: checks[2]: expected a mapping (key: value), got 'wan-3'",
        ],
    ),
    (
        "many_errors.yaml",
        [
            "many_errors.yaml:5: collector.batch_size: Input should be greater than or equal to 1",
            "many_errors.yaml:8: defaults.timeout: "
            "timeout 10s must be shorter than the interval 10s",
            "many_errors.yaml:13: checks[0].params.count: "
            "Input should be a valid integer, unable to parse string as an integer",
            "many_errors.yaml:16: checks[1].target: String should have at least 1 character",
        ],
    ),
]


def test_every_invalid_fixture_is_in_the_table() -> None:
    on_disk = {p.name for p in CONFIGS.glob("*.yaml")} - {"valid.yaml"}
    assert on_disk == {name for name, _ in INVALID}
    assert len(INVALID) >= 12


@pytest.mark.parametrize(("name", "expected"), INVALID, ids=[n for n, _ in INVALID])
def test_invalid_config_reports_exact_messages(
    name: str, expected: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(CONFIGS)  # messages name the file as the user gave it
    with pytest.raises(ConfigError) as caught:
        load_config(name)
    assert caught.value.messages == expected


def test_valid_config_is_resolved_in_full() -> None:
    config = load_config(CONFIGS / "valid.yaml")
    assert config.ward == "ward-minh-phung"
    assert config.agent == "pc-01"
    assert config.collector.url == "http://127.0.0.1:8080"
    assert config.collector.token == "test-token-3f9a"
    assert "test-token" not in repr(config)
    assert (config.collector.push_interval, config.collector.timeout) == (2.0, 1.5)
    assert config.collector.batch_size == 100
    assert config.spool_path == CONFIGS / "spool" / "agent.db"
    assert config.spool_max_results == 5000
    assert config.metrics_listen == ("::1", 9430)
    assert config.workers == 4

    wan, mail = config.checks
    assert (wan.name, wan.check, wan.kind) == ("wan-city", "icmp", REGISTRY["icmp"])
    assert (wan.interval, wan.timeout) == (60.0, 10.0)  # from defaults
    assert wan.target.name == "wan-city" and wan.target.address == "10.0.0.1"
    assert dict(wan.target.labels) == {
        "ward": "ward-minh-phung",
        "role": "wan",
        "line": "fibre",
        "site": "Phường Minh Phụng",
    }
    assert isinstance(wan.params, REGISTRY["icmp"].params)
    assert wan.params.count == 10  # type: ignore[attr-defined]
    assert (mail.interval, mail.timeout) == (30.0, 5.0)
    assert mail.target.name == "mail-server"
    assert mail.target.address == "mail.example.gov.vn:587"


def test_agent_name_defaults_to_a_valid_host_name(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        "ward: ward-1\ncollector: {url: 'https://c.example', token: t}\n"
        "checks: [{name: x, type: tcp, target: '127.0.0.1:1'}]\n"
    )
    config = load_config(path)
    assert config.agent
    assert config.agent[0].isalnum() and config.agent == config.agent.lower()
    assert config.metrics_listen == ("127.0.0.1", 9430)  # documented default
    assert config.spool_path == Path("/var/lib/wardready/spool.db")


def test_missing_file_is_named() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config("/nonexistent/agent.yaml")
    assert caught.value.messages == [
        "/nonexistent/agent.yaml: cannot read: No such file or directory"
    ]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("2.5", 2.5), (7, 7.0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "1d", "-1s", True, None, "s"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_validate_command_ok(capsys: pytest.CaptureFixture[str]) -> None:
    path = str(CONFIGS / "valid.yaml")
    assert main(["validate", "-c", path]) == 0
    assert capsys.readouterr().out == f"{path}: OK (2 checks)\n"


def test_validate_command_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(CONFIGS)
    assert main(["validate", "-c", "timeout_not_shorter.yaml"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == dict(INVALID)["timeout_not_shorter.yaml"]


def test_inline_token_never_in_messages(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        "ward: ward-1\ncollector: {url: 'https://c.example', token: [s3cret-value]}\n"
        "checks: [{name: x, type: tcp, target: '127.0.0.1:1'}]\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "s3cret" not in str(caught.value)
    assert caught.value.messages == [f"{path}:2: collector.token: Input should be a valid string"]


GADGET_CONFIG = """\
ward: ward-1
collector: {url: 'https://c.example', token: t}
checks:
  - {name: good, type: gadget, target: '10.0.0.1:443'}
  - name: portless
    type: gadget
    target: 10.0.0.1
  - {name: wrong, type: gadget, target: 'dms:https'}
"""


def test_a_target_its_check_type_cannot_parse_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(GADGET_CONFIG, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {"gadget": GADGET})
    assert caught.value.messages == [
        f"{path}:7: checks[1].target: '10.0.0.1' has no port: write host:port",
        f"{path}:8: checks[2].target: 'dms:https': the port must be a number from 1 to 65535",
    ]
    path.write_text(
        GADGET_CONFIG.replace("10.0.0.1\n", "10.0.0.1:22\n").replace("dms:https", "dms:443")
    )
    assert [c.target.address for c in load_config(path, {"gadget": GADGET}).checks] == [
        "10.0.0.1:443",
        "10.0.0.1:22",
        "dms:443",
    ]


def test_validate_refuses_a_tcp_target_without_a_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        "ward: ward-1\ncollector: {url: 'https://c.example', token: t}\n"
        "checks:\n  - {name: dms, type: tcp, target: 127.0.0.1}\n",
        encoding="utf-8",
    )
    assert main(["validate", "-c", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{path}:4: checks[0].target: ")
    assert "port" in err
def _tls_config(tmp_path: Path, collector: str, url: str = "https://127.0.0.1:8443") -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(
        f"ward: ward-1\ncollector: {{url: '{url}', token: t, {collector}}}\n"
        "checks: [{name: x, type: tcp, target: '127.0.0.1:1'}]\n"
    )
    return path


def test_tls_files_resolve_relative_to_the_config(tmp_path: Path) -> None:
    from tests.pki import issue, make_ca

    ca = make_ca(tmp_path, "city-ca")
    issue(ca, tmp_path / "agent.pem", tmp_path / "agent.key", "pc-01", client=True)
    path = _tls_config(
        tmp_path, "ca_file: city-ca.pem, client_cert: agent.pem, client_key: agent.key"
    )
    c = load_config(path).collector
    assert (c.ca_file, c.client_cert, c.client_key) == (
        tmp_path / "city-ca.pem",
        tmp_path / "agent.pem",
        tmp_path / "agent.key",
    )


@pytest.mark.parametrize(
    ("collector", "message"),
    [
        ("ca_file: nowhere.pem", "collector.ca_file: no file at {d}/nowhere.pem"),
        ("ca_file: junk.pem", "collector.ca_file: {d}/junk.pem: not a PEM CA"),
        ("client_cert: junk.pem", "collector: set both client_cert and client_key, or neither"),
        (
            "client_cert: junk.pem, client_key: junk.pem",
            "collector.client_cert: {d}/junk.pem with {d}/junk.pem: not a usable",
        ),
    ],
)
def test_tls_files_are_checked_at_load(tmp_path: Path, collector: str, message: str) -> None:
    (tmp_path / "junk.pem").write_text("not PEM\n")
    path = _tls_config(tmp_path, collector)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert len(caught.value.messages) == 1
    assert caught.value.messages[0].startswith(f"{path}:2: " + message.format(d=tmp_path))


def test_tls_files_need_an_https_url(tmp_path: Path) -> None:
    path = _tls_config(tmp_path, "ca_file: x.pem", url="http://127.0.0.1:8080")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert any("need an https:// url" in m for m in caught.value.messages)

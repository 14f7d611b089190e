"""Several collector URLs: the config lists them (validated at load), and the shipper fails
over between them on an unreachable collector or a 5xx, keeps the one that works, and never
loses a batch on the way."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.config import ConfigError, load_config
from agent.spool import Spool
from tests.agent import test_agent_shipper as shipping
from tests.agent.test_agent_shipper import FakeCollector, fill, shipper_for

collector_factory = shipping.collector_factory  # the fixture, shared

CHECKS = "checks:\n  - {name: wan, type: icmp, target: 10.0.0.1}\n"


def closed_port() -> str:
    """A loopback URL nobody listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_an_unreachable_collector_is_skipped_and_the_working_one_kept(
    tmp_path: Path, collector_factory: Callable[..., FakeCollector]
) -> None:
    good = collector_factory()
    spool = Spool(tmp_path / "spool.db", 1000)
    fill(spool, 5)
    shipper = shipper_for(spool, [closed_port(), good.url], timeout=2.0)
    try:
        outcome = shipper.push_once()
        assert outcome.ok and outcome.sent == 5
        assert shipper.endpoint == good.url + "/api/v1/ingest"
        fill(spool, 3)
        assert shipper.push_once().ok
    finally:
        shipper.close()
    assert good.delivered() == list(range(1, 9))
    assert spool.depth() == 0


def test_a_5xx_fails_over_and_the_next_push_starts_where_it_worked(
    tmp_path: Path, collector_factory: Callable[..., FakeCollector]
) -> None:
    sick = collector_factory([503, 503])
    well = collector_factory()
    spool = Spool(tmp_path / "spool.db", 1000)
    fill(spool, 4)
    shipper = shipper_for(spool, [sick.url, well.url])
    try:
        assert shipper.push_once().ok
        fill(spool, 2)
        assert shipper.push_once().ok
    finally:
        shipper.close()
    assert sick.codes == [503]  # asked once, then left alone
    assert well.delivered() == list(range(1, 7))


def test_when_every_collector_fails_the_batch_stays_in_the_spool(
    tmp_path: Path, collector_factory: Callable[..., FakeCollector]
) -> None:
    a = collector_factory([500])
    b = collector_factory([502])
    spool = Spool(tmp_path / "spool.db", 1000)
    fill(spool, 3)
    shipper = shipper_for(spool, [a.url, b.url])
    try:
        outcome = shipper.push_once()
        assert not outcome.ok and outcome.transient
        assert "502" in outcome.problem
        assert spool.depth() == 3
        assert shipper.push_once().ok  # both well again
    finally:
        shipper.close()
    assert (a.codes, b.codes) == ([500, 200], [502])
    assert a.delivered() == [1, 2, 3]


def test_a_refusal_of_the_agent_is_not_failed_over(
    tmp_path: Path, collector_factory: Callable[..., FakeCollector]
) -> None:
    """A 401 says the token is wrong: every replica would say so; the data stays."""
    a = collector_factory([401])
    b = collector_factory()
    spool = Spool(tmp_path / "spool.db", 1000)
    fill(spool, 2)
    shipper = shipper_for(spool, [a.url, b.url])
    try:
        assert not shipper.push_once().ok
    finally:
        shipper.close()
    assert b.codes == []
    assert spool.depth() == 2


def config(tmp_path: Path, collector: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(f"ward: ward-minh-phung\ncollector:\n{collector}  token: abc\n{CHECKS}")
    return path


def test_config_takes_several_urls(tmp_path: Path) -> None:
    path = config(tmp_path, "  urls:\n    - http://lb.example.vn:8080/\n    - http://c2:8080\n")
    c = load_config(path).collector
    assert c.urls == ("http://lb.example.vn:8080", "http://c2:8080")
    assert c.url == "http://lb.example.vn:8080"
    one = load_config(config(tmp_path, "  url: http://c1:8080\n")).collector
    assert (one.url, one.urls) == ("http://c1:8080", ("http://c1:8080",))


@pytest.mark.parametrize(
    ("collector", "message"),
    [
        (
            "  urls:\n    - http://a:1\n    - ftp://b\n",
            "agent.yaml:5: collector.urls[1]: must be an http:// or https:// URL with a host, "
            "got 'ftp://b'",
        ),
        (
            "  urls: [http://a:1, http://a:1]\n",
            "agent.yaml:3: collector.urls: 'http://a:1' is listed twice",
        ),
        (
            "  url: http://a:1\n  urls: [http://b:1]\n",
            "agent.yaml:2: collector: set exactly one of url (one collector) or urls (several)",
        ),
        ("", "agent.yaml:2: collector: set exactly one of url (one collector) or urls (several)"),
        (
            "  urls: []\n",
            "agent.yaml:3: collector.urls: List should have at least 1 item after validation, "
            "not 0",
        ),
    ],
)
def test_bad_urls_are_named_with_file_line_and_field(
    tmp_path: Path, collector: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config(tmp_path, collector)
    with pytest.raises(ConfigError) as caught:
        load_config("agent.yaml")
    assert caught.value.messages == [message]


def test_a_push_with_a_timeout_spends_it_on_all_tries_together(
    tmp_path: Path, collector_factory: Callable[..., FakeCollector]
) -> None:
    """The final drain's deadline holds: a collector that never answers uses it up, and the
    next one is not tried past it (the results stay for the next start)."""
    well = collector_factory()
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        spool = Spool(tmp_path / "spool.db", 1000)
        fill(spool, 2)
        shipper = shipper_for(spool, [f"http://127.0.0.1:{silent.getsockname()[1]}", well.url])
        try:
            outcome = shipper.push_once(timeout=0.5)
        finally:
            shipper.close()
    assert not outcome.ok and "Timeout" in outcome.problem
    assert well.codes == []
    assert spool.depth() == 2

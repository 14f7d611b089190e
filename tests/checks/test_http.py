from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from checks import http
from checks.core import Result

RunCheck = Callable[..., Result]

PAGE_BYTES = len("<html><body>Phường Bến Thành: sẵn sàng (ready)</body></html>".encode())


def test_ok_with_phase_timings(run: RunCheck, http_url: str) -> None:
    r = run("http", f"{http_url}/")
    assert (r.success, r.reason) == (True, "ok"), r.info
    m = r.metrics
    assert m["status_code"] == 200
    assert m["content_length_bytes"] == PAGE_BYTES
    assert m["redirects"] == 0
    for phase in ("connect_seconds", "processing_seconds", "transfer_seconds"):
        assert 0 <= m[phase] <= m["duration_seconds"], phase
    assert "tls_seconds" not in m and "tls_verified" not in m
    assert r.info["http_version"] == "HTTP/1.1"


def test_head_has_no_body(run: RunCheck, http_url: str) -> None:
    r = run("http", f"{http_url}/", method="HEAD")
    assert r.success
    assert r.metrics["content_length_bytes"] == 0


def test_not_found_is_a_status_mismatch(run: RunCheck, http_url: str) -> None:
    r = run("http", f"{http_url}/missing")
    assert (r.success, r.reason) == (False, "status_mismatch")
    assert r.metrics["status_code"] == 404
    assert "200-299" in r.info["error"]


def test_valid_status_accepts_what_is_listed(run: RunCheck, http_url: str) -> None:
    assert run("http", f"{http_url}/missing", valid_status=[404]).success
    assert run("http", f"{http_url}/", valid_status=[404]).reason == "status_mismatch"


def test_body_regex_on_unicode_text(run: RunCheck, http_url: str) -> None:
    assert run("http", f"{http_url}/", body_regex=r"Phường Bến Thành").success
    r = run("http", f"{http_url}/", body_regex=r"Phường Tân Định")
    assert (r.success, r.reason) == (False, "body_mismatch")


def test_body_regex_absent(run: RunCheck, http_url: str) -> None:
    assert run("http", f"{http_url}/", body_regex_absent="maintenance").success
    r = run("http", f"{http_url}/", body_regex_absent=r"sẵn sàng")
    assert r.reason == "body_mismatch"
    assert "absent" in r.info["error"]


def test_regex_sees_only_max_body_bytes(run: RunCheck, http_url: str) -> None:
    r = run("http", f"{http_url}/", body_regex="ready", max_body_bytes=10)
    assert r.reason == "body_mismatch"
    assert r.metrics["content_length_bytes"] == PAGE_BYTES


def test_headers_are_sent(run: RunCheck, http_url: str) -> None:
    assert run(
        "http", f"{http_url}/echo", headers={"X-Ward": "q1"}, body_regex="x-ward=q1$"
    ).success


def test_redirect_followed(run: RunCheck, http_url: str) -> None:
    r = run("http", f"{http_url}/redirect?token=secret")
    assert r.success, r.info
    assert r.metrics["redirects"] == 1
    assert r.metrics["status_code"] == 200
    assert r.info["final_url"] == f"{http_url}/"


def test_redirect_not_followed(run: RunCheck, http_url: str) -> None:
    r = run("http", f"{http_url}/redirect", follow_redirects=False)
    assert r.reason == "status_mismatch"
    assert r.metrics["status_code"] == 302
    assert run("http", f"{http_url}/redirect", follow_redirects=False, valid_status=[302]).success


def test_redirect_loop(run: RunCheck, http_url: str) -> None:
    r = run("http", f"{http_url}/loop", max_redirects=3)
    assert (r.success, r.reason) == (False, "too_many_redirects")


def test_closed_port_is_refused(run: RunCheck, closed_port: int) -> None:
    r = run("http", f"http://127.0.0.1:{closed_port}/")
    assert (r.success, r.reason) == (False, "refused")


def test_server_that_never_answers_times_out(run: RunCheck, silent_port: int) -> None:
    r = run("http", f"http://127.0.0.1:{silent_port}/", timeout=0.5)
    assert (r.success, r.reason) == (False, "timeout")
    assert r.duration_seconds < 1.5


def test_slow_body_stops_at_the_deadline(run: RunCheck, http_url: str) -> None:
    r = run("http", f"{http_url}/trickle", timeout=0.5)
    assert (r.success, r.reason) == (False, "timeout")
    assert "body still arriving" in r.info["error"]
    assert r.metrics["status_code"] == 200
    assert r.duration_seconds < 1.5


def test_garbage_reply_is_a_protocol_error(run: RunCheck, http_url: str) -> None:
    r = run("http", f"{http_url}/garbage")
    assert (r.success, r.reason) == (False, "protocol_error")


def test_source_address(run: RunCheck, http_url: str) -> None:
    assert run("http", f"{http_url}/", source="127.0.0.1").success
    # Documentation address: bind() fails locally, nothing is sent.
    r = run("http", f"{http_url}/", source="192.0.2.123")
    assert r.reason == "source_unavailable"


def test_unsupported_url_is_an_error(run: RunCheck) -> None:
    r = run("http", "ftp://127.0.0.1/")
    assert r.reason == "error"
    assert "ftp" in r.info["error"].lower() or "protocol" in r.info["error"].lower()


def test_https_verified(run: RunCheck, https_url: Callable[[str], str], certs: Any) -> None:
    r = run("http", f"{https_url('valid')}/", ca_file=str(certs.ca), body_regex="ready")
    assert r.success, r.info
    m = r.metrics
    assert m["tls_verified"] == 1
    assert m["tls_seconds"] > 0
    assert 29 * 86400 < m["cert_expiry_seconds"] < 31 * 86400
    assert r.info["tls_version"].startswith("TLS")


def test_https_expired_certificate(
    run: RunCheck, https_url: Callable[[str], str], certs: Any
) -> None:
    r = run("http", f"{https_url('expired')}/", ca_file=str(certs.ca))
    assert (r.success, r.reason) == (False, "tls_expired")


def test_https_expired_unverified_is_measured(
    run: RunCheck, https_url: Callable[[str], str]
) -> None:
    r = run("http", f"{https_url('expired')}/", verify=False)
    assert r.success, r.info
    assert r.metrics["tls_verified"] == 0
    assert r.metrics["cert_expiry_seconds"] < 0


def test_https_self_signed_with_verify(run: RunCheck, https_url: Callable[[str], str]) -> None:
    r = run("http", f"{https_url('self_signed')}/")
    assert (r.success, r.reason) == (False, "tls_error")
    assert "certificate" in r.info["error"]


def test_params() -> None:
    with pytest.raises(ValidationError, match="body_regex"):
        http.Params.model_validate({"body_regex": "(unclosed"})
    with pytest.raises(ValidationError, match="valid_status"):
        http.Params.model_validate({"valid_status": [700]})
    with pytest.raises(ValidationError, match="method"):
        http.Params.model_validate({"method": "DELETE"})
    with pytest.raises(ValidationError, match="follow"):
        http.Params.model_validate({"follow": True})
    assert http.Params().valid_status == []


# ---- interface: one check per WAN line (tests/e2e/test_line_checks_netns.py cuts a line) ----


def test_interface_pins_the_request(run: RunCheck, http_url: str) -> None:
    r = run("http", f"{http_url}/", interface="lo", body_regex="ready")
    assert (r.success, r.reason) == (True, "ok"), r.info
    assert r.metrics["connect_seconds"] > 0


def test_interface_pins_https_with_verification(
    run: RunCheck, https_url: Callable[[str], str], certs: Any
) -> None:
    r = run("http", f"{https_url('valid')}/", interface="lo", ca_file=str(certs.ca))
    assert (r.success, r.reason) == (True, "ok"), r.info
    assert r.metrics["tls_verified"] == 1
    assert r.metrics["cert_expiry_seconds"] > 20 * 86400


def test_interface_with_a_refused_port_is_refused(run: RunCheck, closed_port: int) -> None:
    r = run("http", f"http://127.0.0.1:{closed_port}/", interface="lo")
    assert (r.success, r.reason) == (False, "refused"), r.info


def test_a_missing_interface_is_source_unavailable(run: RunCheck, http_url: str) -> None:
    r = run("http", f"{http_url}/", interface="wrnosuch0")
    assert (r.success, r.reason) == (False, "source_unavailable")
    assert r.info["error"] == "interface wrnosuch0: no such network interface on this host"


def test_interface_param_is_checked() -> None:
    with pytest.raises(ValidationError, match="interface"):
        http.Params.model_validate({"interface": "eth0/1"})

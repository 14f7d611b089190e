"""DNS query: one question to one server, with rcode and answer checks (dnspython).

Target address: the NAME to query, taken as absolute (no search domains); Unicode names are
IDNA-encoded. For ``record_type: PTR`` an IP address is turned into its reverse name.

``server`` is ``ip``, ``ip:port`` or ``[v6]:port``; without it the system resolver's servers
(``/etc/resolv.conf``) are asked in turn, sharing the timeout, until one answers. UDP answers
marked truncated are retried over TCP.

Metrics:
- ``resolve_seconds``: query sent to answer received (the TCP retry included);
- ``answers``: records of the asked type in the answer section (CNAME chains followed by the
  server count only their final records);
- ``rcode``: the numeric response code (0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN, 5 REFUSED).

Info: ``answers`` (comma-joined, truncated), ``rcode`` (its name), ``server``, ``protocol``
(the one that answered), ``missing`` (expected answers not found), ``error``.

Answers compare as text: names lower-cased without the final dot, IP addresses in canonical
form, TXT as its strings joined; ``expected_answers: ["10 mail.ward.test"]`` matches an MX.

Reasons: ``timeout``, ``nxdomain`` (NXDOMAIN when another rcode was expected),
``rcode_mismatch``, ``no_answer`` (NOERROR without a record of the type), ``answer_mismatch``
(an expected answer missing), ``refused`` (nothing listens: TCP refused or ICMP port
unreachable), ``unreachable``.

Privileges: none.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from checks import core
from checks._net import (
    REFUSED,
    UNREACHABLE,
    oserror_reason,
    parse_address,
)
from checks.core import ERROR, TIMEOUT, Outcome, Target

NXDOMAIN = "nxdomain"
RCODE_MISMATCH = "rcode_mismatch"
ANSWER_MISMATCH = "answer_mismatch"
NO_ANSWER = "no_answer"

REASONS = frozenset(
    {TIMEOUT, NXDOMAIN, RCODE_MISMATCH, ANSWER_MISMATCH, NO_ANSWER, REFUSED, UNREACHABLE}
)

RecordType = Literal["A", "AAAA", "CNAME", "MX", "TXT", "NS", "PTR", "SRV", "SOA", "CAA"]
Rcode = Literal["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"]

MAX_INFO_CHARS = 1000


class Params(core.Params):
    server: str | None = Field(default=None, min_length=1, max_length=64)
    record_type: RecordType = "A"
    protocol: Literal["udp", "tcp"] = "udp"
    expected_answers: list[str] = Field(default_factory=list, max_length=64)
    expect_rcode: Rcode = "NOERROR"
    recursion_desired: bool = True

    @field_validator("server")
    @classmethod
    def _server_is_ip(cls, value: str | None) -> str | None:
        if value is not None:
            host, _ = parse_address(value, default_port=53)
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ValueError(f"server {value!r}: must be an IP address") from None
        return value

    @field_validator("record_type", "expect_rcode", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _answers_need_noerror(self) -> Params:
        if self.expected_answers and self.expect_rcode != "NOERROR":
            raise ValueError("expected_answers needs expect_rcode NOERROR")
        return self


def normalize(text: str, record_type: str) -> str:
    """The comparable form of one answer."""
    if record_type == "TXT":
        return text
    words = []
    for word in text.split():
        try:
            words.append(str(ipaddress.ip_address(word)))
        except ValueError:
            words.append(word.lower().rstrip(".") or ".")
    return " ".join(words)


def _servers(params: Params) -> list[tuple[str, int]]:
    if params.server is not None:
        return [parse_address(params.server, default_port=53)]
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=True)
    return [(str(ns), int(resolver.port)) for ns in resolver.nameservers]


def _ask(query: Any, host: str, port: int, protocol: str, timeout: float) -> tuple[Any, str]:
    import dns.query

    if protocol == "tcp":
        return dns.query.tcp(query, host, timeout=timeout, port=port), "tcp"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # A connected socket hears ICMP port-unreachable, so "nothing listens" is not a timeout.
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((host, port))
        response, used_tcp = dns.query.udp_with_fallback(
            query, host, timeout=timeout, port=port, udp_sock=sock
        )
    return response, "tcp" if used_tcp else "udp"


def _texts(response: Any, record_type: str) -> list[str]:
    import dns.rdatatype

    wanted = dns.rdatatype.from_text(record_type)
    found = []
    for rrset in response.answer:
        if rrset.rdtype != wanted:
            continue
        for rdata in rrset:
            if record_type == "TXT":
                text = b"".join(rdata.strings).decode("utf-8", errors="replace")
            else:
                text = rdata.to_text()
            found.append(normalize(text, record_type))
    return found


def _qname(address: str, record_type: str) -> Any:
    import dns.exception
    import dns.name
    import dns.reversename

    name = address.strip()
    if record_type == "PTR":
        try:
            return dns.reversename.from_address(name)
        except (ValueError, dns.exception.DNSException):
            pass
    return dns.name.from_text(name.rstrip(".") + ".")


def probe(target: Target, params: Params, timeout: float) -> Outcome:
    import dns.exception
    import dns.flags
    import dns.message

    deadline = time.monotonic() + timeout
    try:
        qname = _qname(target.address, params.record_type)
    except dns.exception.DNSException as exc:
        return Outcome(False, ERROR, info={"error": f"name {target.address!r}: {exc}"})
    flags = dns.flags.RD if params.recursion_desired else 0
    try:
        servers = _servers(params)
    except dns.exception.DNSException as exc:
        return Outcome(False, ERROR, info={"error": f"system resolver: {exc}"})
    if not servers:
        return Outcome(False, ERROR, info={"error": "no server given and none in resolv.conf"})

    failure = Outcome(False, TIMEOUT, info={"error": f"no answer within {timeout:g} s"})
    for n, (host, port) in enumerate(servers):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        share = remaining / (len(servers) - n)
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        query = dns.message.make_query(qname, params.record_type, flags=flags)
        t0 = time.perf_counter()
        try:
            response, used = _ask(query, host, port, params.protocol, share)
        except dns.exception.Timeout:
            failure = Outcome(
                False, TIMEOUT, info={"server": where, "error": f"no answer within {share:.3g} s"}
            )
            continue
        except OSError as exc:
            reason = oserror_reason(exc)
            failure = Outcome(
                False,
                TIMEOUT if reason == TIMEOUT else reason,
                info={"server": where, "error": str(exc.strerror or exc)},
            )
            continue
        except dns.exception.DNSException as exc:
            failure = Outcome(False, ERROR, info={"server": where, "error": f"bad answer: {exc}"})
            continue
        elapsed = time.perf_counter() - t0
        return _judge(params, response, elapsed, where, used)
    return failure


def _judge(params: Params, response: Any, elapsed: float, where: str, used: str) -> Outcome:
    import dns.rcode

    rcode = response.rcode()
    rcode_name = dns.rcode.to_text(rcode)
    answers = _texts(response, params.record_type)
    metrics = {"resolve_seconds": elapsed, "answers": float(len(answers)), "rcode": float(rcode)}
    info = {
        "server": where,
        "protocol": used,
        "rcode": rcode_name,
        "answers": ",".join(answers)[:MAX_INFO_CHARS],
    }
    if rcode_name != params.expect_rcode:
        reason = NXDOMAIN if rcode_name == "NXDOMAIN" else RCODE_MISMATCH
        error = f"rcode {rcode_name}, want {params.expect_rcode}"
        return Outcome(False, reason, metrics, {**info, "error": error})
    if params.expect_rcode == "NOERROR" and not answers:
        return Outcome(
            False, NO_ANSWER, metrics, {**info, "error": f"no {params.record_type} record"}
        )
    present = set(answers)
    missing = [
        a for a in params.expected_answers if normalize(a, params.record_type) not in present
    ]
    if missing:
        info["missing"] = ",".join(missing)[:MAX_INFO_CHARS]
        return Outcome(
            False, ANSWER_MISMATCH, metrics, {**info, "error": "expected answer missing"}
        )
    return Outcome(True, metrics=metrics, info=info)


CHECK = core.CheckType(
    params=Params,
    probe=probe,
    reasons=REASONS,
    metrics={
        "resolve_seconds": core.seconds(
            "Query sent to answer received, a retry over TCP included."
        ),
        "answers": core.gauge("Records of the asked type in the answer section.", 0),
        # 4 bits in the header, 12 with EDNS.
        "rcode": core.gauge(
            "DNS response code: 0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN, 5 REFUSED.", 0, 4095
        ),
    },
    doc=__doc__ or "",
)

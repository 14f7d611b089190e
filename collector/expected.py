"""Expected checks: what each ward's plan says should be reporting, for verdicts to use.

A criterion that matches no reporting series reads, without a plan, "no check matches
role=wan". With the ward's plan known, that splits in two:

- a planned check serves the criterion but has not reported: "pc-01 has not reported
  wan-fibre yet (plan v12 sent 40 s ago)", the agent's side to look at;
- no planned check serves it: "no planned check serves criterion wan_up (plan gap: plan v12
  has no check=icmp role=wan)", the fleet file's side to fix.

The criterion's status is unchanged (a check that has not reported is still no evidence of
readiness); only what the verdict says about it is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from collector import fleet as fleetstore
from collector.profile import Profile, Select
from collector.readiness import FAILED, Verdict, _reason, format_age
from shared.wire import Batch

PLANS_SECONDS = 5.0


@dataclass(frozen=True)
class Served:
    version: int
    at: float


class PlanBook:
    """The wards' plans (re-read every few seconds), which plan each agent was sent and
    which one it says it runs, and the plan requests answered."""

    def __init__(self, engine: Engine, seconds: float = PLANS_SECONDS) -> None:
        self.engine = engine
        self.seconds = seconds
        self._lock = threading.Lock()
        self._plans: tuple[float, tuple[Any, ...], dict[str, fleetstore.Plan]] | None = None
        self._reported: dict[tuple[str, str], tuple[int | None, str | None]] = {}
        self.served: dict[tuple[str, str], Served] = {}
        self.requests: dict[str, int] = {"sent": 0, "not_modified": 0, "no_plan": 0}

    def plans(self) -> dict[str, fleetstore.Plan]:
        """Every ward's plan; re-read only when the plans table changed (checked every few
        seconds), since parsing thousands of plans on each verdict would cost more than it."""
        now = time.monotonic()
        with self._lock:
            if self._plans is not None and now - self._plans[0] <= self.seconds:
                return self._plans[2]
            held = self._plans
        mark = fleetstore.plans_mark(self.engine)
        if held is not None and held[1] == mark:
            plans = held[2]
        else:
            plans = fleetstore.all_plans(self.engine)
        with self._lock:
            self._plans = (now, mark, plans)
        return plans

    def forget(self) -> None:
        """Drop the cached plans (after an import or an accept through this process)."""
        with self._lock:
            self._plans = None

    def sent(self, ward: str, agent: str, version: int | None, outcome: str, now: float) -> None:
        with self._lock:
            self.requests[outcome] = self.requests.get(outcome, 0) + 1
            if version is not None and outcome == "sent":
                self.served[(ward, agent)] = Served(version, now)
            elif version is not None and (ward, agent) not in self.served:
                # A 304 to an agent this process never sent the plan to (it restarted).
                self.served[(ward, agent)] = Served(version, now)

    def served_in(self, ward: str) -> dict[str, Served]:
        with self._lock:
            return {a: s for (w, a), s in self.served.items() if w == ward}

    def note(self, conn: sa.Connection, batch: Batch, now: float) -> None:
        """Keep the plan version (and error) the batch's agent reports, when it changed."""
        key = (batch.ward, batch.agent)
        value = (batch.status.plan_version, batch.status.plan_error)
        with self._lock:
            if self._reported.get(key) == value:
                return
        if value == (None, None) and key not in self._reported:
            with self._lock:
                self._reported[key] = value
            return  # an agent without a plan: nothing to record
        fleetstore.report(conn, batch.ward, batch.agent, value[0], value[1], now)
        with self._lock:
            self._reported[key] = value

    def forget_reported(self, keys: list[tuple[str, str]]) -> None:
        """Forget what these (ward, agent) reported: the transaction that noted it was rolled
        back, so the next batch must write it again."""
        with self._lock:
            for key in keys:
                self._reported.pop(key, None)


def _matches(check: Mapping[str, Any], select: Select, ward: str) -> bool:
    if select.check is not None and check.get("type") != select.check:
        return False
    if select.name is not None and check.get("name") != select.name:
        return False
    labels = {"ward": ward, **(check.get("labels") or {})}
    return all(labels.get(k) == v for k, v in select.labels.items())


def annotate(
    verdicts: dict[str, Verdict], profile: Profile, book: PlanBook, now: float | None = None
) -> None:
    """Reword "no check matches" in ``verdicts`` with what each ward's plan expects."""
    plans = book.plans()
    if not plans:
        return
    now = time.time() if now is None else now
    criteria = {c.id: c for c in profile.criteria}
    for ward, verdict in verdicts.items():
        plan = plans.get(ward)
        if plan is None:
            continue
        for r in verdict.criteria:
            c = criteria.get(r.id)
            if c is None or r.status != FAILED or len(r.evidence) != 1 or r.evidence[0].series:
                continue
            before = _reason(r)
            planned = [ch["name"] for ch in plan.checks if _matches(ch, c.select, ward)]
            r.evidence[0].detail = _detail(book, ward, plan, planned, c.id, c.select, now)
            after = _reason(r)
            verdict.reasons = [after if x == before else x for x in verdict.reasons]


def _detail(
    book: PlanBook,
    ward: str,
    plan: fleetstore.Plan,
    planned: list[str],
    criterion: str,
    select: Select,
    now: float,
) -> str:
    if not planned:
        return (
            f"no planned check serves criterion {criterion} (plan gap: plan v{plan.version} "
            f"has no check {select.describe()})"
        )
    names = ", ".join(planned)
    served = book.served_in(ward)
    if not served:
        made = format_age(now - plan.updated_at)
        return (
            f"no agent has fetched plan v{plan.version} yet (made {made} ago), which plans {names}"
        )
    parts = []
    for agent, s in sorted(served.items()):
        old = f", an older plan than v{plan.version}" if s.version != plan.version else ""
        parts.append(
            f"{agent} has not reported {names} yet (plan v{s.version} sent "
            f"{format_age(now - s.at)} ago{old})"
        )
    return "; ".join(parts)

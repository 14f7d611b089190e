"""schemathesis against the collector's own /openapi.json: every operation, as an agent, a
viewer and an admin, valid and invalid requests generated from the schema.

Passing means: no server error, every status and body the server answers is documented, and
data the schema forbids is refused (the server accepts nothing the schema does not allow).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from collector import tokens
from collector.api import create_app
from collector.service import Service

from .conftest import READY

# Generated requests per operation, per role and per mode; with 10 operations, 3 roles and
# 2 modes this is well over 2,000 cases (operations with few possible inputs stop sooner).
EXAMPLES = 45
MIN_CASES = 2000

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def _fuzz(operation: Any, role: str, token: str, mode: GenerationMode, cases: Counter[str]) -> None:
    checks = CHECKS + ([negative_data_rejection] if mode.is_negative else [])
    headers = {"Authorization": f"Bearer {token}"}
    key = f"{operation.label} as {role}"

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        cases[key] += 1
        # Negative cases may drop or mangle the header themselves; theirs wins.
        case.call_and_validate(headers={**headers, **(case.headers or {})}, checks=checks)

    try:
        run()
    except Unsatisfiable:
        # Nothing to make invalid (no parameters, no body): no negative cases exist.
        assert mode.is_negative, key
    except Exception as exc:  # name the operation and role that failed
        pytest.fail(f"{key} ({mode.value}): {exc}")


@pytest.mark.sqlite_only(
    "the API's conformance to its schema is under test, not the database; its 2,000 generated"
    " requests take over a minute per database"
)
def test_schemathesis_every_operation_every_role(service: Service) -> None:
    engine = service.engine
    roles = {
        "agent": tokens.create(engine, READY, "pc-01"),
        "viewer": tokens.create(engine, role="viewer", name="viewer"),
        "admin": tokens.create(engine, role="admin", name="admin"),
    }
    # No rate limit here: the point is what each request gets, not how many may come.
    app = create_app(service, ingest_rate=None)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    cases: Counter[str] = Counter()
    for operation in operations:
        for role, token in roles.items():
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                _fuzz(operation, role, token, mode, cases)

    print(f"schemathesis: {sum(cases.values())} cases over {len(operations)} operations")
    assert sum(cases.values()) >= MIN_CASES, cases
    assert {k.rsplit(" as ", 1)[0] for k in cases} == {op.label for op in operations}

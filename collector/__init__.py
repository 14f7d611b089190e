"""The central collector: ingests agents' results, keeps per-ward readiness verdicts.

Modules: ``db`` (tables, engine, migrations), ``wards`` (CSV import), ``tokens`` (agent
credentials), ``ingest`` (the POST path), ``service`` (database + in-memory state + profile +
cached verdicts), ``api`` (FastAPI app), ``exposition`` (Prometheus /metrics), ``cli``.
"""

import importlib.util as _util

# `pip install wardready` brings the agent alone; say how to get the rest rather than fail
# with a traceback about a module the user never heard of.
_MISSING = [m for m in ("fastapi", "sqlalchemy", "uvicorn") if _util.find_spec(m) is None]
if _MISSING:
    raise SystemExit(
        f"the collector needs {', '.join(_MISSING)}: install it with "
        "pip install 'wardready[collector]'"
    )

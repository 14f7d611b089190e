"""The central collector: ingests agents' results, keeps per-ward readiness verdicts.

Modules: ``db`` (tables, engine, migrations), ``wards`` (CSV import), ``tokens`` (agent
credentials), ``ingest`` (the POST path), ``service`` (database + in-memory state + profile +
cached verdicts), ``api`` (FastAPI app), ``exposition`` (Prometheus /metrics), ``cli``.
"""

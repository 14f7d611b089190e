"""The ward agent: runs checks on a schedule, keeps results in a spool, ships them, exports metrics.

The agent measures and never judges: readiness verdicts belong to the collector.
"""

__version__ = "0.1.0"

"""``python -m collector``: the same as the ``wardready-collector`` command."""

from collector.cli import main

raise SystemExit(main())

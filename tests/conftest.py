import sys
from pathlib import Path

# The demo's process helpers (scripts/fleet.py) drive the end-to-end tests too.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

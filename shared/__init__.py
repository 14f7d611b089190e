"""What the agent and the collector both read: the wire schema and the line-tracking YAML loader.

Neither is a probe, so neither lives in ``checks/``; both sides import them from here.
"""

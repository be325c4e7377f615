"""Offline tools, never on the serving path: eval, calibrate, placement, config_check (``python -m ...``)."""

"""The typed configuration (schema.py), the Serve config file (file.py), live updates (live.py), and the plan
of what each deployment asks of Ray (graph.py)."""

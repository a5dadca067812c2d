"""Shared pytest set-up. Each part keeps its fixtures in its own module, loaded here."""

# The local-cluster fixtures `cluster` and `namespace` (tests marked `cluster`).
pytest_plugins = ["cluster_fixtures", "operator_fixtures", "agent_fixtures"]

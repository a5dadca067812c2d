"""The activator: holds HTTP requests for a ModelService scaled to zero, wakes it, then
proxies them to its first ready server pod (Knative's activator idea; see docs/api.md)."""

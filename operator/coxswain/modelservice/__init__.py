"""The ModelService controller: builders, autoscaler, canary analysis, metrics scraping, kopf wiring."""

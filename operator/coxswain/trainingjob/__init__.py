"""The TrainingJob controller: pure builders and decisions, and a thin kopf layer."""

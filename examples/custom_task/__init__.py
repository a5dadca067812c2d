"""Example user modules for `spec.task.custom` (see README.md beside this file)."""

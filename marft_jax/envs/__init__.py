"""Environments: the math environment (answer extraction, grading, datasets) and task generators."""

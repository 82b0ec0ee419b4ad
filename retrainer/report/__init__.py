"""What a run reports: markdown, the model card, pictures (plain functions; tasks/report.py publishes
them as Prefect artifacts)."""

"""The application shell above the flows: the `retrainer` CLI, the demo, platform setup, automations."""

"""The ML core: labels, text preparation, training, scoring, the gate, the lexical half, calibration,
metrics and the validation rules. It imports neither Prefect nor boto3 (tests/test_architecture.py),
so it runs where they are not installed: a GPU box, a notebook, a serving process.
"""

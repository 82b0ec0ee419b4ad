"""`retrainer serve`: the production model over HTTP.

`production` follows the registry's production pointer and holds the loaded model, `batching` scores
concurrent requests together off the event loop, `feedback` writes agents' labels to ``incoming/``,
`metrics` holds the Prometheus metrics, `api` the FastAPI application and `server` runs it with uvicorn.
"""

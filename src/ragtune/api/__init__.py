"""The HTTP service: `create_app(settings)` builds the FastAPI app that `ragtune serve` runs.

Routes (``routes/``) only translate HTTP to calls on the domain objects (the `System` and its `RagPipeline`, the
job queue) and back; authentication, limits and metrics are ASGI middleware around them.
"""

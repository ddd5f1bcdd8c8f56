"""The HTTP server: settings, the micro-batcher, Prometheus metrics and the FastAPI app with its routers."""

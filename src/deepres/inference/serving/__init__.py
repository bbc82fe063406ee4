"""`deepres serve`'s HTTP server (FastAPI on uvicorn) as small rooms: `app.py` the app and its routes, `batching.py`
the dynamic batcher, `uploads.py` reading and decoding uploaded images, `metrics.py` the Prometheus metrics,
`limits.py` what one server accepts, `budget.py` the memory all requests in flight may hold, `connections.py`
uvicorn with its connections bounded. Every prediction goes through `Predictor.run`, as `deepres predict`'s do, and
the model's task turns each result into JSON (deepres.tasks)."""
from .app import create_app
from .limits import Limits, RequestError

__all__ = ["Limits", "RequestError", "create_app"]

"""`deepres serve MODEL`: the model over HTTP (deepres.inference.serving: a JSON API, Grad-CAM, dynamic batching,
a browser page, Prometheus metrics) on one socket, until SIGINT/SIGTERM."""
import argparse
import socket

import uvicorn

from deepres.inference.serving import Limits, create_app

from .options import add_model_options, predictor_from_args


# Limits' fields as options: field -> help
LIMIT_OPTIONS = {"max_batch": "images per model call (1 turns batching off)",
                 "max_wait_ms": "how long a batch waits for more images after its first, ms",
                 "workers": "model copies in this process, each with its own queue",
                 "max_upload_mb": "largest request body, MiB",
                 "max_images": "images per request",
                 "max_pixels": "largest image, width x height, checked before decoding"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser, positional=True)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; put a TLS and "
                             "authenticating reverse proxy in front before listening on others)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: any free one, printed)")
    defaults = Limits()
    for field, help_text in LIMIT_OPTIONS.items():
        default = getattr(defaults, field)
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(default), default=default,
                            help=f"{help_text} (default %(default)s)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's; at most the "
                                                    "available cores shared by the --workers)")


def run(args: argparse.Namespace) -> int:
    limits = Limits(**{field: getattr(args, field) for field in LIMIT_OPTIONS})
    if not 0 <= args.port < 65536:
        raise ValueError(f"--port must be 0..65535, got {args.port}")
    # each worker runs its own forward passes side by side: their threads together within the cores
    predictor = predictor_from_args(args, processes=limits.workers)
    app = create_app(predictor, limits)
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it. Without it, on a socket handed to uvicorn, a keep-alive client waited ~40 ms
    # per response (Nagle's algorithm against delayed ACKs; measured with httpx: /healthz 44 ms -> 0.7 ms).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        raise ValueError(f"cannot listen on {args.host}:{args.port}: {e.strerror}") from None
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    # the line a supervisor (or a test) waits for; --port 0 is resolved here
    print(f"deepres serve: {predictor.source.get('model', args.model)} on {url} (page {url}/, API docs "
          f"{url}/docs)", flush=True)
    # uvicorn stops on SIGINT/SIGTERM, then re-raises the signal: the process ends the way it was asked to
    uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)).run(sockets=[sock])
    return 0

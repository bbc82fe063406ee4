"""`deepres serve MODEL`: the model over HTTP (deepres.inference.serving: a JSON API, Grad-CAM, dynamic batching,
a browser page, Prometheus metrics) on one socket, until SIGINT/SIGTERM. At start-up it prints the URL, then the
memory its limits let requests hold against what the machine has."""
import argparse
import socket
import sys

from deepres.core.malloc import one_arena

one_arena()  # before torch loads: the model runs on a worker thread, whose activations would not be reused

from deepres.inference.serving import Limits, create_app  # noqa: E402 - after one_arena
from deepres.inference.serving.app import SHOW_PATHS  # noqa: E402
from deepres.inference.serving.connections import serve_on  # noqa: E402
from deepres.inference.serving.limits import machine_memory, option  # noqa: E402

from .options import add_model_options, predictor_from_args  # noqa: E402

# Limits' fields as options: field -> help
LIMIT_OPTIONS = {"max_batch": "images per model call (1 turns batching off)",
                 "max_wait_ms": "how long a batch waits for more images after its first, ms (then also for the images "
                                "being decoded, at most 100 ms more)",
                 "workers": "model copies in this process, each with its own queue",
                 "max_upload_mb": "largest request body, MiB",
                 "max_images": "images per request",
                 "max_pixels": "largest image as stored, width x height, checked before decoding",
                 "max_request_pixels": "pixels of a request's images at the size the model's preprocessing "
                                       "resizes them to (they are decoded to it), width x height summed; more: 413",
                 "max_inflight_mb": "memory held for all requests at once, MiB: bodies, images decoding (their "
                                    "pixels as stored) and decoded, answers; more: 503 with Retry-After",
                 "max_output_pixels": "largest segmentation class map in an answer, width x height; a larger one "
                                      "is scaled down to fit (or ask for ?class_map=model)",
                 "max_connections": "open connections; one more is answered 503 and closed",
                 "header_timeout_s": "time a client has to send a request's headers, s; then 408 and closed",
                 "body_timeout_s": "time a client has to send a request's body, s; then 408 and closed",
                 "shutdown_timeout_s": "on SIGTERM/SIGINT, time requests in flight have to finish, s; then they "
                                       "are answered 503 shutting_down"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser, positional=True, compile=False)  # serving compiles nothing: no --compile
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; put a TLS and "
                             "authenticating reverse proxy in front before listening on others)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: any free one, printed)")
    defaults = Limits()
    limits = parser.add_argument_group("limits (every one is in GET /v1/model's \"limits\")")
    for field, help_text in LIMIT_OPTIONS.items():
        default = getattr(defaults, field)
        limits.add_argument(option(field), type=type(default), default=default,
                            help=f"{help_text} (default %(default)s)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's; at most the "
                                                    "available cores shared by the --workers)")
    parser.add_argument("--show-paths", choices=SHOW_PATHS, default="name",
                        help="how GET /v1/model shows the checkpoint's path: its file name, or its path relative to "
                             "the folder the server was started in (default %(default)s)")


def memory_line(limits: Limits) -> str:
    """What the limits let requests hold at once, against what the machine has (printed at start-up)."""
    line = (f"deepres serve: requests in flight hold at most {limits.max_inflight_mb:g} MiB "
            f"({option('max_inflight_mb')} {limits.max_inflight_mb:g}: bodies, images decoding and decoded, answers; "
            f"beyond it 503 + Retry-After); one request at most {limits.max_upload_mb:g} MiB of body, "
            f"{limits.max_images} images, {limits.max_request_pixels / 1e6:g} Mpx at the model's size, "
            f"{limits.max_pixels / 1e6:g} Mpx per image as stored; {limits.max_connections} connections")
    memory = machine_memory()
    if memory is None:
        return line + "; this machine's memory is unknown"
    total, available = memory
    line += f"; this machine has {total / 2**30:.1f} GiB, {available / 2**30:.1f} GiB available"
    if limits.inflight_bytes > available / 2:
        line += (f" -- WARNING: {option('max_inflight_mb')} is more than half of what is available: lower it, "
                 f"or the model and its batches may not fit")
    return line


def run(args: argparse.Namespace) -> int:
    try:
        return serve(args)
    except KeyboardInterrupt:  # Ctrl-C while loading, or uvicorn's re-raised SIGINT after it stopped: no traceback
        print("deepres serve: stopped", file=sys.stderr)
        return 130


def serve(args: argparse.Namespace) -> int:
    limits = Limits(**{field: getattr(args, field) for field in LIMIT_OPTIONS})
    if not 0 <= args.port < 65536:
        raise ValueError(f"--port must be 0..65535, got {args.port}")
    # each worker runs its own forward passes side by side: their threads together within the cores
    predictor = predictor_from_args(args, processes=limits.workers)
    app = create_app(predictor, limits, show_paths=args.show_paths)
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
    print(memory_line(limits), flush=True)
    serve_on(app, sock, limits)  # until SIGTERM (which ends the process) or SIGINT (KeyboardInterrupt, see run)
    return 0


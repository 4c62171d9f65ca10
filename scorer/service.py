"""The web service (``scorer serve``): JSON records in over HTTP, the same ``Scorer`` as the Kafka pipeline, JSON out.

Azure's "publish as a web service" for a model bundle::

    POST /score     {"records": [{feature: value, ..., "id": ...}, ...]} (or a bare list)
                    -> 200 {"model_name", "model_version", "predictions": [...], "rejections": [...]}
    GET  /schema    the model's input schema (Avro JSON): what to send
    GET  /healthz   200 while the model is loaded and the service is not stopping
    GET  /metrics   Prometheus text format

A bad row is a rejection in the response (``index``, ``reason``, ``detail``, with the reasons of the
dead-letter topic), never a failed request. Over Kafka, Avro decoding checks each value's type before the
``Scorer`` sees it; JSON has no schema, so ``row_problem`` makes the same checks here (a number where the
model reads a double, an integer where it reads a long, ...), and the ``Scorer`` then does the rest (ids,
NaN, unknown categories, model errors) exactly as it does for the stream.

Why the standard library's ``ThreadingHTTPServer`` and not a web framework: no framework is among our
dependencies, and the surface is two endpoints and two probes. What a framework's server would otherwise
give is done here in a few lines each: at most ``max_concurrent_requests`` connections are served at once
(the accept loop waits for a free slot, so threads and memory stay bounded); one request per connection
(``Connection: close``), whose headers and body must arrive within ``request_timeout_s`` of the connection
being accepted (a deadline on every read, not an idle timeout that a client sending a byte now and then
could extend); the body's size is checked from ``Content-Length`` before it is read, and also before
``100 Continue``; errors are JSON, and an unexpected exception is logged here and answered with a generic
500. It has no authentication or TLS and binds to loopback by default: exposing it is the operator's
choice, behind a proxy that has them.

May import: config, errors, types, schema, bundle, scoring, metrics (never the Kafka modules). Third-party:
prometheus_client's registry type, for injection (``metrics`` defines and renders the metrics).
"""

from __future__ import annotations

import errno
import io
import ipaddress
import json
import logging
import math
import socket
import socketserver
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import REGISTRY, CollectorRegistry

from scorer.bundle import ModelBundle, load_bundle
from scorer.config import ServeSettings, env_name, flag_name
from scorer.errors import ConfigError, RejectReason
from scorer.metrics import ServeMetrics, exposition
from scorer.runtime import settle_heap
from scorer.schema import Feature
from scorer.scoring import Scorer, limit_model_threads
from scorer.types import Rejection

__all__ = ["RequestRefused", "ScoringService", "is_loopback", "parse_records", "row_problem"]

log = logging.getLogger("scorer.service")

ROUTES: dict[str, tuple[str, ...]] = {
    "/score": ("POST",),
    "/schema": ("GET", "HEAD"),
    "/healthz": ("GET", "HEAD"),
    "/metrics": ("GET", "HEAD"),
}
LINGER_S = 1.0
LINGER_BYTES = 16 << 20
"""After answering, read and discard what the client still sends (at most this long and this much) before
closing: closing a socket with unread bytes sends a reset, which can destroy the response in flight (a
413 sent while the client is still uploading the body it refers to)."""
_LONG = (-(2**63), 2**63 - 1)
_TOO_MANY_DIGITS = 10**19
_EXPECTED = {"double": "a number", "long": "an integer", "boolean": "true or false", "string": "a string"}
GENERIC_500 = "the server failed to handle this request; the cause is in its log"


class RequestRefused(Exception):
    """A request the service answers with an error status and a JSON body ``{"error", "detail"}``."""

    def __init__(self, status: int, code: str, detail: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, tuple(headers)


def _limit(name: str) -> str:
    return f"{flag_name(name)} / {env_name(name)}"


def parse_records(body: bytes, max_rows: int) -> list[Any]:
    """The records of a ``/score`` body: ``{"records": [...]}`` or a bare list; rows are not checked here.

    >>> parse_records(b'{"records": [{"x": 1}, 2]}', max_rows=10)
    [{'x': 1}, 2]

    Raises:
        RequestRefused: 400 for a body that is not JSON or not of that shape, 413 for more than ``max_rows``.
    """
    try:
        document = json.loads(body.decode("utf-8"))  # json.loads(bytes) would also take UTF-16 and UTF-32
    except UnicodeDecodeError as exc:
        raise RequestRefused(400, "invalid_json", f"the body is not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise RequestRefused(400, "invalid_json", f"the body is not valid JSON: {exc.msg} at {exc.pos}") from None
    except RecursionError:
        raise RequestRefused(400, "invalid_json", "the body is nested too deeply") from None
    except ValueError:  # an integer with more digits than Python converts (sys.set_int_max_str_digits)
        raise RequestRefused(400, "invalid_json", "the body has a number too long to read") from None
    if isinstance(document, dict):
        if set(document) != {"records"}:
            keys = ", ".join(sorted(map(repr, document))) or "none"
            raise RequestRefused(400, "invalid_request", f'send {{"records": [...]}}; the object has keys {keys}')
        document = document["records"]
    if not isinstance(document, list):
        raise RequestRefused(
            400, "invalid_request", f'send {{"records": [...]}} or a JSON list of records, not {_kind(document)}'
        )
    if len(document) > max_rows:
        raise RequestRefused(
            413,
            "too_many_rows",
            f"the request has {len(document)} records; the limit is {max_rows} ({_limit('max_rows')}): "
            "split it into several requests",
        )
    return document


def row_problem(row: Any, features: Sequence[Feature], id_field: str) -> str | None:
    """Why a JSON record cannot be read as the model's input, or None: the checks Avro decoding makes.

    A nullable feature may be null or absent; extra fields are ignored (as Avro ignores a writer's extra
    fields). A missing or null id is left to the ``Scorer`` (``missing_id``), as over Kafka.

    >>> from scorer.schema import Feature
    >>> row_problem({"x": "high", "id": 1}, [Feature("x", "double")], "id")
    "x is a string ('high'); the model reads a number"
    """
    if not isinstance(row, dict):
        return f"a record must be a JSON object of features, not {_kind(row)}"
    for feature in features:
        value = row.get(feature.name)
        if value is None:
            if feature.nullable:
                continue
            state = "missing" if feature.name not in row else "null"
            return f"{feature.name} is {state}; the model reads {_EXPECTED[feature.type]}"
        if not _fits(value, feature.type):
            return f"{feature.name} is {_kind(value)}; the model reads {_EXPECTED[feature.type]}"
    ident = row.get(id_field)
    if (
        ident is not None
        and all(f.name != id_field for f in features)
        and not (_fits(ident, "long") or isinstance(ident, str))
    ):
        return f"{id_field} is {_kind(ident)}; an id is a string or an integer"
    return None


def _fits(value: Any, kind: str) -> bool:
    if isinstance(value, bool):
        return kind == "boolean"
    if kind == "double":
        if isinstance(value, int):
            try:
                return math.isfinite(float(value))
            except OverflowError:
                return False
        return isinstance(value, float)  # NaN and infinity pass here and are rejected as invalid_value
    if kind == "long":
        return isinstance(value, int) and _LONG[0] <= value <= _LONG[1]
    return isinstance(value, str) if kind == "string" else False


def _kind(value: Any) -> str:
    """A JSON value's type, with a short excerpt of it, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    return f"a string ({text})" if isinstance(value, str) else f"a number ({text})"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine.

    >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("localhost"), is_loopback("0.0.0.0")
    (True, True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _error_body(code: str, detail: str) -> bytes:
    return json.dumps({"error": code, "detail": detail}).encode()


class ScoringService:
    """``scorer serve``: ``start()`` loads the model and binds, ``run()`` serves until ``request_stop()``.

    ``bundle``, if given, is used instead of loading ``settings.model`` (tests score without a socket).
    """

    def __init__(
        self, settings: ServeSettings, registry: CollectorRegistry = REGISTRY, bundle: ModelBundle | None = None
    ) -> None:
        self.settings = settings
        self.metrics = ServeMetrics(registry)
        self.slots = threading.BoundedSemaphore(settings.max_concurrent_requests)
        self.stopping = threading.Event()
        self.bundle: ModelBundle | None = None
        self.scorer: Scorer | None = None
        self.input_schema: bytes = b""
        self.server: _Server | None = None
        self._counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        # a thread per connection, but the model runs on these, each capped once (as in the pipeline)
        self._workers = ThreadPoolExecutor(
            settings.max_concurrent_requests,
            thread_name_prefix="scorer-model",
            initializer=limit_model_threads,
            initargs=(settings.model_threads,),
        )
        if bundle is not None:
            self._use(bundle)

    def start(self) -> None:
        """Load and verify the bundle, then bind. Each failure names the setting to fix."""
        s = self.settings
        if self.bundle is None:
            trusted = [t.strip() for t in s.model_trusted_types.split(",") if t.strip()]
            bundle = load_bundle(Path(s.model), expected_sha256=s.model_sha256 or None, trusted_types=trusted)
            self._use(bundle)
            log.info("model %s version %s (%s) loaded from %s", bundle.name, bundle.version, bundle.task, s.model)
        family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
        try:
            self.server = _Server((s.host, s.port), self, family)
        except OSError as exc:
            setting = "port" if exc.errno in (errno.EADDRINUSE, errno.EACCES) else "host"
            raise ConfigError(_limit(setting), f"cannot listen on {s.host}:{s.port}: {exc.strerror or exc}") from exc
        host, port = self.server.server_address[:2]
        if not is_loopback(s.host):
            log.warning(
                "listening on %s, which is not a loopback address: other machines can reach this service, which "
                "has no authentication or TLS of its own",
                s.host,
            )
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        settle_heap()  # start-up objects out of the collector's way (scorer.runtime)
        log.info("serving on http://%s:%d", shown, port)

    def _use(self, bundle: ModelBundle) -> None:
        s = self.settings
        self.bundle = bundle
        self.scorer = Scorer(bundle, s.id_field, s.unknown_categories)
        self.input_schema = json.dumps(bundle.schema.reader_schema(s.id_field), indent=2).encode()
        self.metrics.model_info.labels(bundle.name, bundle.version, bundle.task).set(1)

    def request_stop(self, *_args: Any) -> None:
        """Signal handler: stop accepting, let the requests in progress finish, return from ``run()``."""
        if self.stopping.is_set():
            return
        log.info("stop requested: finishing the requests in progress")
        self.stopping.set()
        if self.server is not None:  # shutdown() waits for serve_forever, which runs on this (main) thread
            threading.Thread(target=self.server.shutdown, name="scorer-serve-stop", daemon=True).start()

    def run(self) -> None:
        assert self.server is not None  # noqa: S101 - start() binds first
        try:
            if not self.stopping.is_set():
                self.server.serve_forever(poll_interval=0.25)
        finally:
            self._drain()

    def _drain(self) -> None:
        """Wait (bounded) until every slot is free again, that is until no request is in progress."""
        assert self.server is not None  # noqa: S101
        deadline = time.monotonic() + self.settings.request_timeout_s + LINGER_S + 5
        taken = 0
        while taken < self.settings.max_concurrent_requests:
            if not self.slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
                log.warning(
                    "stopping with %d requests still in progress", self.settings.max_concurrent_requests - taken
                )
                break
            taken += 1
        self.server.server_close()
        self._workers.shutdown(wait=False)
        log.info("stopped: %s", ", ".join(f"{k} {self._counts[k]}" for k in ("requests", "scored", "rejected")))

    def count(self, **increments: int) -> None:
        """Add to the totals logged at stop (handler threads call this concurrently)."""
        with self._counts_lock:
            self._counts.update(increments)

    # ----------------------------------------------------------------- the endpoints
    def score(self, body: bytes) -> dict[str, Any]:
        """The ``/score`` response for a request body (raises ``RequestRefused`` for a bad request)."""
        assert self.scorer is not None and self.bundle is not None  # noqa: S101
        rows = parse_records(body, self.settings.max_rows)
        features, id_field = self.bundle.schema.features, self.settings.id_field
        rejections: list[Rejection] = []
        good: list[dict[str, Any]] = []
        positions: list[int] = []
        for index, row in enumerate(rows):
            problem = row_problem(row, features, id_field)
            if problem is None:
                good.append(row)
                positions.append(index)
            else:
                rejections.append(Rejection(index, RejectReason.MALFORMED_BODY, problem))
        result = self._workers.submit(self.scorer.score, good, positions).result()
        rejections = sorted([*rejections, *result.rejections], key=lambda r: r.index)
        self.metrics.scored.inc(len(result))
        for reason, count in Counter(r.reason.value for r in rejections).items():
            self.metrics.rejected.labels(reason=reason).inc(count)
        self.count(scored=len(result), rejected=len(rejections))
        return {
            "model_name": self.bundle.name,
            "model_version": self.bundle.version,
            "predictions": result.predictions,
            "rejections": [{"index": r.index, "reason": r.reason.value, "detail": r.detail} for r in rejections],
        }

    def health(self) -> tuple[int, dict[str, Any]]:
        assert self.bundle is not None  # noqa: S101
        status = "stopping" if self.stopping.is_set() else "ok"
        body = {"status": status, "model_name": self.bundle.name, "model_version": self.bundle.version}
        return (503 if self.stopping.is_set() else 200), body


class _Server(ThreadingHTTPServer):
    """A threading server that serves at most ``max_concurrent_requests`` connections at a time."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], service: ScoringService, family: socket.AddressFamily) -> None:
        self.address_family = family
        self.service = service
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """HTTPServer's, without its reverse DNS lookup of the address (``getfqdn``), which can hang."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        # waiting here, on the accept loop, keeps further connections in the kernel's listen queue
        while not self.service.slots.acquire(timeout=0.25):
            if self.service.stopping.is_set():
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.service.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.service.slots.release()

    def shutdown_request(self, request: Any) -> None:
        """Close after a bounded lingering read (``LINGER_S``), so that the response reaches the client."""
        try:
            request.shutdown(socket.SHUT_WR)
            deadline, drained = time.monotonic() + LINGER_S, 0
            while drained < LINGER_BYTES and (left := deadline - time.monotonic()) > 0:
                request.settimeout(left)
                chunk = request.recv(65536)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass
        self.close_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Exceptions that escaped a handler: a client that went away is one line, anything else a traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            log.info("connection from %s ended: %s", client_address[0], error)
        else:
            log.exception("unexpected error serving %s", client_address[0])


class _DeadlineReader(io.RawIOBase):
    """A socket's reading side where every read times out at one deadline for the whole request."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock, self._deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request did not arrive in time")
        self._sock.settimeout(left)
        return self._sock.recv_into(buffer)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # for Expect: 100-continue; every response still closes the connection
    server: _Server

    def version_string(self) -> str:
        return "scorer"  # no Python or library versions in the Server header

    def setup(self) -> None:
        self.accepted = time.monotonic()
        self.timeout = self.server.service.settings.request_timeout_s
        super().setup()
        self.rfile.close()
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, time.monotonic() + self.timeout))

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.address_string(), format % args)

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002
        log.info("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's names
        self._handle()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET  # noqa: N815

    def handle_expect_100(self) -> bool:
        """Refuse before the body is sent (too large, wrong type, ...) rather than after."""
        try:
            self._check_head()
        except RequestRefused as refused:
            self._finish(refused.status, _error_body(refused.code, refused.detail), headers=refused.headers)
            return False
        except Exception:  # noqa: BLE001 - as in _handle: a generic 500, the traceback in our log
            log.exception("unexpected error checking %s %s", self.command, "a request's headers")
            self._finish(500, _error_body("internal_error", GENERIC_500))
            return False
        return super().handle_expect_100()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (request line or headers malformed or too long) as JSON too."""
        phrase = HTTPStatus(code).phrase
        self._finish(code, _error_body(phrase.lower().replace(" ", "_").replace("-", "_"), message or phrase))

    # ----------------------------------------------------------------- one request
    def _handle(self) -> None:
        path = urlsplit(self.path).path
        headers: tuple[tuple[str, str], ...] = ()
        content_type = "application/json"
        try:
            status, body, content_type = self._respond(path)
        except RequestRefused as refused:
            status, body, headers = refused.status, _error_body(refused.code, refused.detail), refused.headers
        except Exception:  # noqa: BLE001 - the client gets a generic 500; the traceback stays in our log
            log.exception("unexpected error answering %s %s", self.command, path if path in ROUTES else "(other)")
            status, body = 500, _error_body("internal_error", GENERIC_500)
        self._finish(status, body, content_type, headers)

    def _respond(self, path: str) -> tuple[int, bytes, str]:
        self._check_head()
        service = self.server.service
        if path == "/score":
            payload = service.score(self._read_body())
            return 200, json.dumps(payload, allow_nan=False).encode(), "application/json"
        if path == "/schema":
            return 200, service.input_schema, "application/json"
        if path == "/metrics":
            text, content_type = exposition(service.metrics.registry)
            return 200, text, content_type
        status, health = service.health()
        return status, json.dumps(health).encode(), "application/json"

    def _check_head(self) -> None:
        """Everything that can be refused from the request line and headers alone."""
        path = urlsplit(self.path).path
        allowed = ROUTES.get(path)
        if allowed is None:
            raise RequestRefused(404, "not_found", "no such endpoint; try POST /score, GET /schema or GET /healthz")
        if self.command not in allowed:
            raise RequestRefused(
                405, "method_not_allowed", f"{path} takes {' or '.join(allowed)}", [("Allow", ", ".join(allowed))]
            )
        if self.command != "POST":
            return
        limit, length = self.server.service.settings.max_request_bytes, self._content_length()
        if length > limit:
            shown = length if length < _TOO_MANY_DIGITS else "more than 10**18"
            raise RequestRefused(
                413,
                "request_too_large",
                f"the body is {shown} bytes; the limit is {limit} ({_limit('max_request_bytes')})",
            )
        media_type, *params = (part.strip().lower() for part in (self.headers.get("Content-Type") or "").split(";"))
        charset = next((p.partition("=")[2].strip('"') for p in params if p.startswith("charset=")), "utf-8")
        if media_type != "application/json" or charset != "utf-8":
            raise RequestRefused(
                415, "unsupported_media_type", "send the body as Content-Type: application/json (UTF-8)"
            )

    def _content_length(self) -> int:
        lengths = self.headers.get_all("Content-Length") or []
        if self.headers.get("Transfer-Encoding") or not lengths:
            raise RequestRefused(411, "length_required", "send the body with a Content-Length header (not chunked)")
        value = lengths[0].strip()
        if len(set(lengths)) != 1 or not (value.isascii() and value.isdigit()):
            raise RequestRefused(400, "invalid_content_length", "Content-Length must be one whole number of bytes")
        return int(value) if len(value) <= 18 else _TOO_MANY_DIGITS  # int() refuses thousands of digits

    def _read_body(self) -> bytes:
        length = self._content_length()
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            timeout = self.server.service.settings.request_timeout_s
            raise RequestRefused(
                408, "request_timeout", f"the body did not arrive within {timeout:g} s ({_limit('request_timeout_s')})"
            ) from None
        if len(body) != length:
            raise RequestRefused(400, "incomplete_body", f"the body ended after {len(body)} of {length} bytes")
        return body

    def _finish(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Send a whole response and mark the connection for closing; a client that does not read it has
        ``request_timeout_s`` before the send gives up."""
        self.close_connection = True
        self.connection.settimeout(self.server.service.settings.request_timeout_s)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()
        service = self.server.service
        path = urlsplit(getattr(self, "path", "")).path
        endpoint = path if path in ROUTES else "other"
        service.metrics.requests.labels(endpoint=endpoint, code=str(status)).inc()
        service.metrics.request_seconds.labels(endpoint=endpoint).observe(time.monotonic() - self.accepted)
        service.count(requests=1)

"""Ray Serve application: an HTTP ingress that encodes queries, N label-index shard deployments,
a top-k merge.

    serve run serve.app:app bundle=bundles/demo shards=2          # local Ray, HTTP on 127.0.0.1:8000
    serve deploy serve/config.yaml                                # the same app on a running cluster

API::

    POST /v1/predict  {"text": str} | {"texts": [str, ...]}, optional "k" (1..100, default 10)
                      -> {"results": [[{"id", "uid", "label", "score"}, ...], ...], "version": str}
                      with a ``Server-Timing`` header: encode, shards and ingress milliseconds
    GET  /healthz     -> {"status": "ok", "version": str}
    GET  /v1/info     -> bundle version, counts, shards, source run

A request whose label index shard replica was lost mid-request (a node lost, a process killed) gets a 503
``{"error": ...}`` with ``Retry-After``; Serve replaces the replica and a retry is answered.

HTTP: Serve's proxy listens on the ``http_options`` port and forwards to the ingress over gRPC. With Serve's
direct ingress (``XMC_SERVE_DIRECT_INGRESS=1`` for ``scripts/env.sh``) the ingress replica answers HTTP
itself, without that hop (docs/performance.md); :func:`http_port` says where.

Hot swap: the bundle path travels in each deployment's ``user_config``. Deploying the app with another
``bundle=`` (``serve run``, ``jobs/deploy.py``) is a new build for Serve, which starts new replicas and keeps
the old ones answering until they are ready; ``serve deploy`` of a config that changes only the deployments'
``user_config`` reconfigures the running replicas in place (Serve's lightweight update). Either way each
request is pinned to the bundle version that encoded it: shards keep the previous version loaded while newer
requests arrive, and load a version they do not hold yet on demand, so a request never mixes an encoder of
one version with label vectors of another, and none is dropped during the swap.
"""

import asyncio
import collections
import os
import time

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from xmc import storage
from xmc.index.bundle import Bundle
from xmc.index.predictor import Predictor

MAX_TEXTS = 64          # texts per request
MAX_TEXT_CHARS = 2000   # characters per text (the encoder truncates to max_len tokens anyway)
MAX_K = 100
# The largest valid request is MAX_TEXTS texts of MAX_TEXT_CHARS characters, each written as a 6-byte JSON
# escape at worst; anything much larger is refused before it is read.
MAX_BODY_BYTES = 1 << 20
BATCH_SIZE = 16         # requests encoded together by the ingress
BATCH_WAIT_S = 0.0      # no wait for company: requests held back during a forward pass come together
VERSIONS_KEPT = 2       # bundle versions a shard replica keeps loaded (the current one and the one before)
# no access-log line per request and per shard call (each is a write to the replica's log file on the request
# path); warnings and errors are still logged
QUIET = {"enable_access_log": False, "log_level": "WARNING"}


# ------------------------------------------------------------------------------------------------------------
# request validation


class PredictRequest(BaseModel):
    """One query (``text``) or a list (``texts``), and how many labels to return."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    texts: list[str] | None = None
    k: StrictInt = Field(10, ge=1, le=MAX_K)  # true, "10" and 10.0 are refused, not read as integers

    @model_validator(mode="after")
    def _one_kind_of_input(self) -> "PredictRequest":
        if (self.text is None) == (self.texts is None):
            raise ValueError('give exactly one of "text" (a string) or "texts" (a list of strings)')
        texts = self.all_texts()
        if not texts:
            raise ValueError('"texts" is empty; expected 1 to %d strings' % MAX_TEXTS)
        if len(texts) > MAX_TEXTS:
            raise ValueError(f'"texts" has {len(texts)} strings; at most {MAX_TEXTS} per request')
        for position, text in enumerate(texts):
            where = "text" if self.text is not None else f"texts[{position}]"
            if not text.strip():
                raise ValueError(f'"{where}" is empty; expected a non-blank string')
            if len(text) > MAX_TEXT_CHARS:
                raise ValueError(f'"{where}" has {len(text)} characters; at most {MAX_TEXT_CHARS}')
        return self

    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


def _describe(error: dict) -> str:
    """One readable line for a pydantic error: where (JSON path) and what is wrong."""
    if error.get("type") == "json_invalid":
        return f"request body is not valid JSON ({error.get('ctx', {}).get('error', 'decode error')})"
    where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """Every error the API gives has one shape: ``{"error": message}``."""
    return JSONResponse(status_code=status, content={"error": message}, headers=headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    status = 400 if any(e.get("type") == "json_invalid" for e in errors) else 422
    return _error(status, "; ".join(_describe(e) for e in errors))


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    # FastAPI's own errors (unknown path, wrong method, a body it could not parse) in our shape
    if isinstance(exc.__cause__, RecursionError):
        return _error(400, "request body is nested too deeply to parse; expected a flat JSON object")
    return _error(exc.status_code, str(exc.detail), exc.headers)


class BodySizeLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets a 413 without being read whole. A declared
    ``Content-Length`` over the limit is refused before any byte of the body is read; a chunked body, as soon
    as what has arrived passes the limit (an HTTPException raised while FastAPI reads the body, which its
    handler turns into the 413)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def too_large(self) -> HTTPException:
        return HTTPException(413, f"request body over {self.max_bytes} bytes; send at most {MAX_TEXTS} "
                                  f"texts of at most {MAX_TEXT_CHARS} characters")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and not declared.isdigit():
            return await _error(400, "Content-Length is not a number")(scope, receive, send)
        if declared is not None and int(declared) > self.max_bytes:
            refused = self.too_large()
            return await _error(refused.status_code, refused.detail)(scope, receive, send)
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self.too_large()
            return message

        await self.app(scope, counted, send)


def guard(api: FastAPI) -> FastAPI:
    """Install the request size limit and the one error shape on ``api`` (the app below, and tests)."""
    api.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.add_exception_handler(HTTPException, _http_error)
    return api


api = guard(FastAPI(title="xmc-platform", docs_url=None, redoc_url=None))


# ------------------------------------------------------------------------------------------------------------
# deployments

#: How a call to a shard replica that died (a node lost, a process killed) fails: the caller gets a 503 and
#: retries, while Serve replaces the replica.
SHARD_LOST = (RayActorError, ActorUnavailableError)


class ShardUnavailable(Exception):
    """A shard replica was lost while answering; the request may be retried."""


async def search_shards(shards: list, vectors: np.ndarray, k: int, version: str, path: str) -> list:
    """Every shard's top-``k`` of ``vectors`` (one call each, in parallel); a call whose replica was lost
    becomes :class:`ShardUnavailable` while Serve starts a new replica."""
    try:
        calls = [shard.search.remote(vectors, k, version, path) for shard in shards]
        return list(await asyncio.gather(*calls))
    except SHARD_LOST as err:
        raise ShardUnavailable(f"a label index shard is restarting ({type(err).__name__}); retry the "
                               "request") from err


def server_timing(seconds: dict[str, float]) -> str:
    """A ``Server-Timing`` header (W3C) of where a request's time went inside the ingress, in milliseconds:
    ``encode`` (its batch's forward pass), ``shards`` (the parallel shard calls and the merge) and
    ``ingress`` (all of it, waits for the batch included); what a client measures beyond ``ingress`` is
    HTTP, the proxy and the hop to the ingress."""
    return ", ".join(f"{name};dur={value * 1000:.2f}" for name, value in seconds.items())


def unavailable(err: ShardUnavailable) -> JSONResponse:
    return _error(503, str(err), {"Retry-After": "1"})


def _load_ingress_predictor(path: str, with_shards: bool) -> Predictor:
    """The ingress's part of a bundle: query tower and label texts, and every index shard when it searches
    them itself (else they are the shard deployments' part)."""
    return Predictor.from_bundle(path, shards=None if with_shards else [])


def _bundle_info(predictor: Predictor) -> dict:
    bundle = predictor.bundle
    manifest = bundle.manifest
    return {"version": bundle.version, "labels": bundle.num_labels, "shards": bundle.num_shards,
            "dim": manifest["counts"]["dim"], "score": manifest["score"], "created": manifest["created"],
            "source": manifest["source"], "indexes": [s["index"] for s in manifest["shards"]]}


# A shard gets at most two calls at a time from each ingress replica (one per batch in flight); Serve's
# default limit of 5 would make the routers of several ingress replicas back off.
@serve.deployment(max_ongoing_requests=32, logging_config=QUIET)
class IndexShard:
    """One shard of the label index (faiss), or a few of them (``shards_per_replica``), searched with batched
    query vectors; a replica merges its shards' top-k before it answers."""

    def __init__(self, shards: int | list[int], device: str = "cpu"):
        self.shards = [shards] if isinstance(shards, int) else list(shards)
        self.device = device
        self.loaded: collections.OrderedDict[str, Predictor] = collections.OrderedDict()
        self.lock = asyncio.Lock()

    async def reconfigure(self, config: dict) -> None:
        await self._predictor(Bundle(config["bundle"]).version, config["bundle"])

    async def _predictor(self, version: str, path: str) -> Predictor:
        """This replica's shards of bundle ``version``, loaded from ``path`` unless it holds them."""
        if version in self.loaded:
            self.loaded.move_to_end(version)
            return self.loaded[version]
        async with self.lock:
            if version not in self.loaded:
                predictor = await asyncio.to_thread(Predictor.from_bundle, path, shards=self.shards,
                                                    encoder=False, labels=False, device=self.device)
                if predictor.version != version:
                    raise RuntimeError(f"{path} now holds bundle version {predictor.version}, not {version}")
                self.loaded[version] = predictor
                while len(self.loaded) > VERSIONS_KEPT:
                    self.loaded.popitem(last=False)
            return self.loaded[version]

    async def search(self, vectors: np.ndarray, k: int, version: str,
                     path: str) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, global label ids)`` of the top-``k`` labels of these shards for each row of ``vectors``.

        Not batched here: the ingress already sends one call per batch of requests. The search runs on the
        replica's event loop: a batch's search is short, and a hop to a worker thread would cost about as much
        as a single query's search.
        """
        predictor = await self._predictor(version, path)
        return predictor.search(vectors, k)


# Serve's default of 5 requests in flight per replica starves batching: under concurrent load the proxy keeps
# retrying the full replica with backoff. Batches need many requests admitted.
@serve.deployment(max_ongoing_requests=64, logging_config=QUIET)
@serve.ingress(api)
class Ingress:
    """Validates requests, encodes queries (batched across requests), fans out to the shards, merges.

    With ``shards_here`` the ingress holds every index shard itself and searches them in process: no hop to
    shard replicas, for a label index that fits one replica's memory (``AppArgs.shards_in_ingress``).
    """

    def __init__(self, shards: list[DeploymentHandle], num_shards: int | None = None,
                 shards_here: bool = False):
        # Shard calls go over Serve's gRPC transport between replicas instead of Ray actor calls (the replica
        # always runs that server): the calls cost less than through the actor path, which dominated a
        # query's search time (docs/performance.md). Arguments and results are pickled either way.
        self.shards = [shard.options(_by_reference=False) for shard in shards]
        self.num_shards = num_shards or len(shards)  # index shards, held by len(shards) deployments
        self.shards_here = shards_here
        self.current: Predictor | None = None
        self.encoder_idle = asyncio.Event()
        self.encoder_idle.set()

    async def reconfigure(self, config: dict) -> None:
        loaded = await asyncio.to_thread(_load_ingress_predictor, config["bundle"], self.shards_here)
        shards = loaded.bundle.num_shards
        if shards != self.num_shards:
            raise ValueError(f"bundle {config['bundle']} has {shards} shards but this app was deployed with "
                             f"{self.num_shards}; redeploy with shards={shards}")
        self.current = loaded  # requests already encoded keep the version they started with

    @serve.batch(max_batch_size=BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S, max_concurrent_batches=2)
    async def _answer(self, requests: list[tuple[list[str], int]]
                      ) -> list[tuple[np.ndarray, np.ndarray, Predictor, dict[str, float]]]:
        """Top-k ``(scores, ids)`` of each request's texts, for several concurrent requests at once, with the
        bundle that answered and the batch's seconds per stage.

        One forward pass encodes every text of the batch, and each shard is called once with all the vectors:
        per-request handle calls would cost more CPU than the searches. A batch uses one bundle version. While
        this batch's vectors are searched, the next batch is already being encoded.
        """
        loaded = self.current
        self.encoder_idle.clear()
        started = time.perf_counter()
        try:
            flat = [text for texts, _ in requests for text in texts]
            vectors = await asyncio.to_thread(loaded.encode, flat)
        finally:
            self.encoder_idle.set()
        encoded = time.perf_counter()
        k = max(k for _, k in requests)  # a top-k_i is a prefix of the top-k: one search serves all
        scores, ids = await self._search(loaded, vectors, k)
        timing = {"encode": encoded - started, "shards": time.perf_counter() - encoded}
        out, start = [], 0
        for texts, k_request in requests:
            stop = start + len(texts)
            out.append((scores[start:stop, :k_request], ids[start:stop, :k_request], loaded, timing))
            start = stop
        return out

    async def _search(self, loaded: Predictor, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top-``k`` ``(scores, ids)`` over every shard: searched here (in a worker thread, so the next
        batch's requests are still taken in), or by the shard deployments in parallel and ranked here
        (:meth:`Predictor.rank`: the merge, and the query-neighbour channel of a bundle that has one)."""
        if self.shards_here:
            return await asyncio.to_thread(loaded.search, vectors, k)
        parts = await search_shards(self.shards, vectors, loaded.search_depth(k), loaded.version,
                                    loaded.bundle.location)
        if loaded.neighbours is None:  # a merge of top-k lists: quicker here than a hop to a thread
            return loaded.rank(vectors, parts, k)
        return await asyncio.to_thread(loaded.rank, vectors, parts, k)

    @api.post("/v1/predict")
    async def predict(self, body: PredictRequest) -> JSONResponse:
        # Serve's batcher forms a batch from whatever is queued as soon as a request arrives, then the batch
        # waits for a free slot: under steady load requests trickle in, and every batch would hold one or two.
        # Requests that arrive during a forward pass wait here instead and enter the queue together when the
        # encoder is free, so batches grow with the load. A lone request passes straight through.
        arrived = time.perf_counter()
        await self.encoder_idle.wait()
        try:
            scores, ids, loaded, timing = await self._answer((body.all_texts(), body.k))
        except ShardUnavailable as err:
            return unavailable(err)
        results = [[{"id": hit.id, "uid": hit.uid, "label": hit.label, "score": hit.score} for hit in row]
                   for row in loaded.describe(ids, scores)]
        timing = {**timing, "ingress": time.perf_counter() - arrived}  # the batch's, and this request's
        return JSONResponse({"results": results, "version": loaded.version},
                            headers={"Server-Timing": server_timing(timing)})

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "version": self.current.version}

    @api.get("/v1/info")
    async def info(self) -> dict:
        return _bundle_info(self.current)


# ------------------------------------------------------------------------------------------------------------
# application builder (serve run serve.app:app bundle=DIR shards=N; serve deploy serve/config.yaml)


class AppArgs(BaseModel):
    """Arguments of :func:`app` (``key=value`` after ``serve run``, or ``args:`` in serve/config.yaml).

    ``bundle`` is a path or a storage URI; ``shard_gpus`` > 0 puts each shard replica on (a share of) a GPU,
    where its flat or IVF index is searched with faiss's GPU build. ``shards_per_replica`` > 1 makes each
    shard deployment hold that many index shards (``IndexShard0`` the first ones): fewer calls per query, for
    machines with fewer cores than shards, where every call costs a request more than its search.
    ``shards_in_ingress`` makes no shard deployment: each ingress replica holds every index shard and searches
    them itself, which saves the hop to the shards on every request (the lowest latency) where the whole
    label index fits one replica's memory; the shard settings are then unused.
    """

    model_config = ConfigDict(extra="forbid")

    bundle: str
    shards: int | None = None
    shards_per_replica: int = Field(1, ge=1)
    shard_replicas: int = Field(1, ge=1)
    ingress_replicas: int = Field(1, ge=1)
    shard_cpus: float = Field(0.5, gt=0)
    shard_gpus: float = Field(0.0, ge=0, le=1)
    ingress_cpus: float = Field(1.0, gt=0)
    shards_in_ingress: bool = False


def http_port(configured: int) -> int:
    """The port the app answers HTTP on, in a Serve started with this process's environment: with Serve's
    direct ingress (``RAY_SERVE_ENABLE_DIRECT_INGRESS=1``, what ``XMC_SERVE_DIRECT_INGRESS=1`` sets) the
    ingress replica listens itself, on the first port of ``RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT``'s range
    (a second replica on the same machine, or a new one started before the old one stops, takes the next
    one); else Serve's HTTP proxy does, on ``configured``."""
    if os.environ.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "1":
        return int(os.environ.get("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", "30000"))
    return configured


def app(args: dict) -> serve.Application:
    """Build the application for a bundle; ``shards`` (if given) must match the bundle's shard count."""
    settings = AppArgs(**args)
    # a storage URI, or a path (relative: against $XMC_WORKDIR, else the current directory)
    path = storage.resolve(settings.bundle)
    bundle = Bundle(path)
    if settings.shards is not None and settings.shards != bundle.num_shards:
        raise ValueError(f"shards={settings.shards} but bundle {path} was exported with {bundle.num_shards} "
                         f"shards; pass shards={bundle.num_shards} "
                         f"or re-export with --shards {settings.shards}")
    user_config = {"bundle": path}
    ingress = Ingress.options(num_replicas=settings.ingress_replicas, user_config=user_config,
                              ray_actor_options={"num_cpus": settings.ingress_cpus})
    if settings.shards_in_ingress:
        return ingress.bind([], bundle.num_shards, shards_here=True)
    per = settings.shards_per_replica
    groups = [list(range(start, min(start + per, bundle.num_shards)))
              for start in range(0, bundle.num_shards, per)]
    shards = [IndexShard.options(name=f"IndexShard{number}", num_replicas=settings.shard_replicas,
                                 user_config=user_config,
                                 ray_actor_options={"num_cpus": settings.shard_cpus,
                                                    "num_gpus": settings.shard_gpus})
              .bind(group, "cuda" if settings.shard_gpus else "cpu")
              for number, group in enumerate(groups)]
    return ingress.bind(shards, bundle.num_shards)

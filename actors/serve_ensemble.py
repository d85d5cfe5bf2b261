"""HTTP ingress of an ensemble endpoint: POST /predict, POST /feedback, GET /healthz, GET /metadata, /docs.

The ingress holds no model. It runs the fitted plan (`app.serving.runtime.PlanRunner`) against member
deployments through DeploymentHandles, and reads everything that changes - which plans serve, the canary
split, limits, auth - from the rollout-state actor it syncs with a few times a second. A new version is
therefore deployed beside the old one and switched to by routing; the old apps are deleted only after every
ingress replica has stopped using them, so a rollout, a rollback or `--redeploy` drops no request.
A challenger that fails a request is counted as an error for its canary gate and the request is answered
by the champion instead. `POST /feedback` takes the true label of an answered item (by request id or text);
the rollout-state actor turns it into online accuracy per version and into the canary's accuracy gate.

No `from __future__ import annotations` here: FastAPI would then read `request: Request` as a query parameter.
"""

import asyncio
import hashlib
import hmac
import logging
import random
import time
import uuid
from collections import Counter

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from app.serving.feedback import AnswerLog, FeedbackError, text_key
from app.serving.schemas import FeedbackRequest, FeedbackResponse, PredictRequest, PredictResponse, parse_body

log = logging.getLogger("ray.serve")
api = FastAPI(title="Flywheel ensemble", description="Ensemble of Flywheel members (weighted, moe or cascade) "
              "with canary rollout. Every route but /healthz needs `Authorization: Bearer <token>` when the "
              "endpoint was started with a token.")
_AUTH = {"sha256": ""}  # set by the replica from the routing; one ingress replica per worker process
SYNC_S = 0.25
LOCAL_ANSWERS = 5000  # answers this replica remembers itself: feedback may come before the next sync


@api.middleware("http")
async def _bearer_auth(request: Request, call_next):
    want = _AUTH["sha256"]
    if want and request.url.path.rstrip("/") != "/healthz":
        got = request.headers.get("authorization", "")
        token = got[7:] if got.lower().startswith("bearer ") else ""
        if not token or not hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), want):
            return JSONResponse({"detail": "missing or wrong bearer token (Authorization: Bearer <token>)"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
    return await call_next(request)


def _summary(variant):
    if variant is None:
        return None
    plan = variant["plan"]
    policy = {k: v for k, v in plan["policy"].items() if k not in ("coef", "mean", "scale", "intercept")}
    return {"model_version": variant["model_version"], "policy": policy, "val": plan.get("val"),
            "members": [{k: m.get(k) for k in ("name", "uri", "version", "temperature", "ece_before", "ece_after",
                                               "val_accuracy", "cost")} for m in plan["members"]]}


@serve.deployment(max_ongoing_requests=256)
@serve.ingress(api)
class EnsembleIngress:
    async def __init__(self, state_name: str, namespace: str, generation: str = ""):
        import ray
        from ray.util.metrics import Counter as MCounter
        from ray.util.metrics import Gauge, Histogram

        self.state = ray.get_actor(state_name, namespace=namespace)
        ctx = serve.get_replica_context()
        self.replica_id = getattr(ctx.replica_id, "unique_id", None) or uuid.uuid4().hex
        self.generation = generation  # changed by `up --redeploy` to roll the ingress replicas
        self.routing = await self.state.routing.remote()
        self._apply(self.routing)
        self.runners, self.handles = {}, {}
        self.inflight = Counter()
        self.requests, self.shadows, self.samples, self.answers = [], [], [], []
        self.local_answers = AnswerLog(LOCAL_ANSWERS)
        tags = ("stage", "variant")
        self.m_items = MCounter("flywheel_serve_items", description="answered texts per stage", tag_keys=tags)
        self.m_escalated = MCounter("flywheel_serve_escalated", description="texts that needed more than one "
                                    "member (escalation rate = this / items)", tag_keys=("variant",))
        self.m_errors = MCounter("flywheel_serve_errors", description="failed ensemble calls", tag_keys=("variant",))
        self.m_conf = Histogram("flywheel_serve_confidence", description="confidence of answers",
                                boundaries=[0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99], tag_keys=("variant",))
        self.m_lat = Histogram("flywheel_serve_latency_ms", description="request latency in the ingress (ms)",
                               boundaries=[5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000], tag_keys=("variant",))
        self.m_pct = Gauge("flywheel_serve_challenger_percent", description="traffic share of the challenger")
        self._sync_task = asyncio.get_running_loop().create_task(self._sync_loop())

    # ---- routing ------------------------------------------------------------------------------
    def _apply(self, routing):
        import actors.serve_ensemble as this_module

        self.routing = routing
        s = routing.get("settings", {})
        # Serve pickles this class by value, so a bare `_AUTH` here would be a copy; the middleware reads the
        # imported module's dict, which is the one to write.
        this_module._AUTH["sha256"] = s.get("auth_sha256", "")
        key = (s.get("max_text_chars"), s.get("max_batch"))
        if getattr(self, "_limits", None) != key:
            from app.serving.schemas import DEFAULT_MAX_BATCH, DEFAULT_MAX_CHARS, make_request_model, max_body_bytes

            self._limits = key
            chars, batch = key if all(key) else (DEFAULT_MAX_CHARS, DEFAULT_MAX_BATCH)
            self.request_model = make_request_model(chars, batch)
            self.max_body = max_body_bytes(chars, batch)

    async def _sync_loop(self):
        while True:
            report = {"epoch": self.routing["epoch"], "inflight": dict(self.inflight), "requests": self.requests,
                      "shadows": self.shadows, "samples": self.samples, "answers": self.answers}
            self.requests, self.shadows, self.samples, self.answers = [], [], [], []
            try:
                self._apply(await self.state.sync.remote(self.replica_id, report))
                self.m_pct.set(self.routing["percent"])
            except Exception as e:  # noqa: BLE001 - keep serving on the last routing while the state actor restarts
                log.warning("ensemble ingress: sync with the rollout state failed (%s); keeping epoch %s",
                            e, self.routing["epoch"])
            await asyncio.sleep(SYNC_S)

    def _runner(self, variant):
        pid = variant["plan_id"]
        if pid not in self.runners:
            from app.serving.runtime import PlanRunner

            # a new plan is routed: forget runners and handles of plans that left the routing
            live = [v for v in (self.routing["champion"], self.routing["challenger"]) if v]
            apps = {m["app"] for v in live for m in v["plan"]["members"]}
            self.runners = {k: v for k, v in self.runners.items() if k in {x["plan_id"] for x in live}}
            self.handles = {k: v for k, v in self.handles.items() if k[0] in apps}
            self.runners[pid] = PlanRunner(variant["plan"])
        return self.runners[pid]

    async def _call(self, member, texts):
        key = (member["app"], member["deployment"])
        if key not in self.handles:
            self.handles[key] = serve.get_deployment_handle(member["deployment"], member["app"])
        timeout = self.routing["settings"].get("member_timeout_s", 30.0)
        return await asyncio.wait_for(self.handles[key].predict.remote(texts), timeout)

    async def _run(self, variant, texts):
        runner = self._runner(variant)
        members = variant["plan"]["members"]
        self.inflight[variant["plan_id"]] += 1
        try:
            return await runner.run(texts, lambda i, t: self._call(members[i], t))
        finally:
            self.inflight[variant["plan_id"]] -= 1

    # ---- routes -------------------------------------------------------------------------------
    @api.get("/healthz")
    def healthz(self):
        champ = self.routing["champion"]
        body = {"status": "ok" if champ else "no_model", "epoch": self.routing["epoch"],
                "model_version": champ["model_version"] if champ else None}
        return JSONResponse(body, status_code=200 if champ else 503)

    @api.get("/metadata")
    def metadata(self):
        r = self.routing
        return {"epoch": r["epoch"], "traffic": {"challenger_percent": r["percent"]},
                "champion": _summary(r["champion"]), "challenger": _summary(r["challenger"]),
                "limits": {k: r["settings"].get(k) for k in ("max_text_chars", "max_batch")},
                "online": r.get("online"), "ingress": {"replica": self.replica_id, "generation": self.generation}}

    @api.post("/predict", response_model=PredictResponse, openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": PredictRequest.model_json_schema()}}}})
    async def predict(self, request: Request):
        from app.serving.canary import route_to_challenger

        t0 = time.perf_counter()
        req, err = parse_body(await request.body(), self.max_body, self.request_model)
        if err:
            return JSONResponse(err[1], status_code=err[0])
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex  # set by Serve's proxy when not by the client
        r = self.routing
        if r["champion"] is None:
            return JSONResponse({"detail": "no model deployed yet: run `python -m jobs.serve up CONFIG`"},
                                status_code=503)
        texts = req.inputs
        on_ch = r["challenger"] is not None and route_to_challenger(rid, r["percent"], r["salt"])
        variant = r["challenger"] if on_ch else r["champion"]
        try:
            ans = await self._run(variant, texts)
        except Exception as e:  # noqa: BLE001 - answered by the champion below; counted against the variant
            self._record(variant, t0, None, error=True)
            fallback = self.routing["champion"]  # re-read: a swap may have happened while we waited
            if fallback is None or (not on_ch and fallback["plan_id"] == variant["plan_id"]):
                return JSONResponse({"detail": f"model call failed: {e!r}"}, status_code=503)
            log.warning("ensemble ingress: %s failed (%r); answering with %s", variant["model_version"], e,
                        fallback["model_version"])
            variant, on_ch = fallback, False
            ans = await self._run(variant, texts)
        self._record(variant, t0, ans)
        if on_ch and r["champion"] and random.random() < r["settings"].get("shadow_fraction", 1.0):
            asyncio.get_running_loop().create_task(self._shadow(r["champion"], variant, texts, ans))
        if not req.opt_out and random.random() < r["settings"].get("sample_rate", 0.0):
            self.samples += [{"text": t, "confidence": c, "stage": s, "model_version": variant["model_version"]}
                             for t, c, s in zip(texts, ans.confidences, ans.stages)]
        keys = [text_key(t) for t in texts]
        self.local_answers.add(rid, keys, ans.labels, variant["plan_id"], variant["model_version"])
        self.answers.append({"request_id": rid, "text_keys": keys, "labels": ans.labels,
                             "plan_id": variant["plan_id"], "model_version": variant["model_version"]})
        preds = [{"label": lab, "confidence": c, "stage": s, "model_version": variant["model_version"]}
                 for lab, c, s in zip(ans.labels, ans.confidences, ans.stages)]
        # Serve's proxy puts the request id (the client's x-request-id, or one it generated and handed to us in
        # the same header) on the response: that is the id POST /feedback takes.
        return JSONResponse({"predictions": preds})

    @api.post("/feedback", response_model=FeedbackResponse, openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": FeedbackRequest.model_json_schema()}}}})
    async def feedback(self, request: Request):
        """True label of an answered item: {"request_id" (+ "index") or "text", "label"}."""
        req, err = parse_body(await request.body(), self.max_body, FeedbackRequest)
        if err:
            return JSONResponse(err[1], status_code=err[0])
        champ = self.routing["champion"]
        labels = champ["plan"]["labels"] if champ else []
        if req.label not in labels:
            return JSONResponse({"detail": f"label {req.label!r} is not one of the endpoint's labels {labels}"},
                                status_code=422)
        try:  # this replica's own recent answers first: the sync that carries them may not have run yet
            local = self.local_answers.find(req.request_id, req.text, req.index)
        except FeedbackError as e:
            if e.status != 404:
                return JSONResponse({"detail": str(e)}, status_code=e.status)
            local = None
        out = await self.state.feedback.remote(req.label, req.request_id, req.text, req.index, local)
        if "error" in out:
            return JSONResponse({"detail": out["error"]}, status_code=out["status"])
        return {k: out[k] for k in FeedbackResponse.model_fields}

    def _record(self, variant, t0, ans, error=False):
        ms = (time.perf_counter() - t0) * 1000
        name = "challenger" if self.routing["challenger"] and variant["plan_id"] == self.routing["challenger"][
            "plan_id"] else "champion"
        self.m_lat.observe(ms, tags={"variant": name})
        if error:
            self.m_errors.inc(1, tags={"variant": name})
            self.requests.append({"plan_id": variant["plan_id"], "latency_ms": ms, "error": True, "stages": []})
            return
        for s, c in zip(ans.stages, ans.confidences):
            self.m_items.inc(1, tags={"stage": s, "variant": name})
            self.m_conf.observe(c, tags={"variant": name})
        n_esc = sum(ans.escalated)
        if n_esc:
            self.m_escalated.inc(n_esc, tags={"variant": name})
        self.requests.append({"plan_id": variant["plan_id"], "latency_ms": ms, "error": False,
                              "stages": ans.stages, "escalated": n_esc})

    async def _shadow(self, champion, challenger, texts, ans):
        t0 = time.perf_counter()
        try:
            ref = await self._run(champion, texts)
        except Exception as e:  # noqa: BLE001 - a failed shadow call only loses one comparison
            log.warning("ensemble ingress: shadow call to the champion failed: %r", e)
            return
        agreed = sum(a == b for a, b in zip(ans.labels, ref.labels))
        self.shadows.append({"plan_id": challenger["plan_id"], "champion_plan_id": champion["plan_id"],
                             "agreed": agreed, "compared": len(texts),
                             "champion_latency_ms": (time.perf_counter() - t0) * 1000})

"""Ray Serve deployment of one Flywheel model: POST /predict, GET /healthz, OpenAPI at /docs.

Request validation comes from app.serving.schemas: a bad body is a 4xx with a message (413 for
size limits, 400 for unparsable JSON, 422 for the rest), never a 5xx.
"""

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

api = FastAPI(title="Flywheel", description="Predictions from the champion model")


@serve.deployment(max_ongoing_requests=32)
@serve.ingress(api)
class ModelServer:
    def __init__(self, model_dir: str, model_version: str, max_chars: int, max_batch: int):
        from app.models.predictor import Predictor
        from app.serving.schemas import make_request_model, max_body_bytes

        self.predictor = Predictor(model_dir)
        self.version = model_version
        self.request_model = make_request_model(max_chars, max_batch)
        self.max_body = max_body_bytes(max_chars, max_batch)

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok", "model_version": self.version, "task": self.predictor.task}

    @api.post("/predict")
    async def predict(self, request: Request):
        from app.serving.schemas import parse_body

        req, err = parse_body(await request.body(), self.max_body, self.request_model)
        if err:
            return JSONResponse(err[1], status_code=err[0])
        preds = self.predictor.predict(req.inputs)
        return {"predictions": [{**p, "stage": "champion", "model_version": self.version} for p in preds]}


def deploy(model_dir: str, model_version: str, host: str, port: int, app_name: str, num_cpus: float,
           max_chars: int, max_batch: int) -> str:
    """Start Serve's HTTP proxy on host:port and run the app at route '/'; returns the base URL."""
    serve.start(http_options={"host": host, "port": port})
    app = ModelServer.options(ray_actor_options={"num_cpus": num_cpus}).bind(
        model_dir, model_version, max_chars, max_batch)
    serve.run(app, name=app_name, route_prefix="/")
    return f"http://{host}:{port}"

"""The peer of `bench_serve.py`: the web service a user would write around a Keras model instead of `bigmodel
serve` — Starlette + uvicorn, the exported model.keras (preprocessing inside), the model called per request.

    python benchmarks/serve_peer.py EXPORT_DIR PORT
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import uvicorn  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

import bigmodel_cli.features  # noqa: E402, F401  (the preprocessing layers, for loading)

model = keras.saving.load_model(f"{sys.argv[1]}/model.keras")
numeric = {i.name for i in model.inputs if i.dtype == "float32"}


async def predict(request: Request) -> JSONResponse:
    rows = (await request.json())["instances"]
    x = {k: np.array([[np.nan if r[k] is None else r[k]] for r in rows], dtype="float32") if k in numeric
         else np.array([["" if r[k] is None else str(r[k])] for r in rows], dtype=object) for k in rows[0]}
    # model.predict refuses NumPy string arrays ("Invalid dtype"): call the model on tensors, as one ends up doing
    return JSONResponse({"predictions": model({k: tf.constant(v) for k, v in x.items()}).numpy().tolist()})


uvicorn.run(Starlette(routes=[Route("/v1/models/model:predict", predict, methods=["POST"])]),
            host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")

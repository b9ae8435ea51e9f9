"""The reference of benchmarks/service.py: a minimal FastAPI + Captum server, the least a service
that explains one image per request needs: the model loaded once, a lock around it (torch's
autograd hooks and Captum's layer hooks are not safe to share between requests), the image read,
predicted and explained in the request.

    uvicorn benchmarks.minimal_server:app --port 8100
"""

from __future__ import annotations

import threading

import torch
from captum.attr import LayerAttribution, LayerGradCam, Saliency
from fastapi import FastAPI
from pydantic import BaseModel

from engine.data import load_image
from engine.models import cached_model

model = cached_model("efficientnet_lite0", None, "cpu")  # the same model object the service runs
layer = model.classifier.get_submodule(model.spec.cam_layer)
lock = threading.Lock()
app = FastAPI()


class Request(BaseModel):
    sample: str
    method: str  # saliency or gradcam


@app.post("/explain")
def explain(request: Request) -> dict:
    x, _ = load_image(request.sample, tuple(model.spec.input_size), "center_crop")
    x = x[None]
    with lock:
        with torch.no_grad():
            probabilities = model.module(x).softmax(1)[0]
        target = int(probabilities.argmax())
        if request.method == "saliency":
            attribution = Saliency(model.module).attribute(x, target=target, abs=False)
        else:
            cam = LayerGradCam(model.module, layer).attribute(x, target, relu_attributions=True)
            attribution = LayerAttribution.interpolate(cam, tuple(x.shape[2:]), "bilinear")
    return {"class_index": target, "probability": float(probabilities[target]),
            "attribution_sum": float(attribution.abs().sum())}  # fmt: skip

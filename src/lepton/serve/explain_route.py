"""``POST /v1/explain``: token attributions of the served model's predictions.

The body is the one ``POST /v1/predict`` takes, with the same limits (inputs per request,
characters per text, body size, JSON only); ``?method=occlusion`` (default) or ``?method=ig``.
An explanation costs one model pass per token (occlusion) or ``steps`` passes (ig), so it does
not go through the prediction batcher: explanations run one at a time in a worker thread, and
prediction requests keep their own queue. A model whose kind has no attributions, an empty text
or ig on a model without PyTorch gradients is a 422 naming the reason.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoint annotations at runtime.

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query
from pydantic import BaseModel, Field, create_model

from lepton.core.errors import LeptonError

log = logging.getLogger(__name__)


class TokenAttribution(BaseModel):
    token: str
    score: float = Field(description="attribution toward `label`: positive for it, negative against it")
    text: int = Field(description="0: the text, 1: the text pair")
    start: int | None = Field(description="character offset of the token in its text")
    end: int | None


class Explained(BaseModel):
    label: str
    score: float = Field(description="probability of `label`")
    scores: dict[str, float]
    method: str
    explained: str = Field(description="the label the token scores are toward: the predicted one")
    tokens: list[TokenAttribution]


class ExplainResponse(BaseModel):
    model: str
    model_sha256: str
    explanations: list[Explained]


def add_explain_route(app: FastAPI, service: Any, request_model: type[BaseModel], require_json: Callable[..., Any],
                      errors: dict[int | str, dict[str, Any]]) -> None:
    """``POST /v1/explain`` on the prediction app; ``service.current`` is the model served now."""
    one_at_a_time = asyncio.Semaphore(1)
    body_model = create_model("ExplainRequest", __base__=request_model)  # its own name in the OpenAPI schema

    async def explain(body: body_model,  # type: ignore[valid-type]
                      method: Literal["occlusion", "ig"] = Query("occlusion")) -> Any:
        served = service.current  # read once: a swap mid-request does not change the answering model
        async with one_at_a_time:
            try:
                results = await asyncio.to_thread(served.predictor.explain, body.inputs,  # type: ignore[attr-defined]
                                                    method=method)
            except LeptonError as err:
                raise HTTPException(422, str(err)) from None
            except Exception:  # noqa: BLE001 - this request alone fails
                log.exception("explain failed")
                raise HTTPException(500, "explanation failed; the server log has the details") from None
        return {"model": served.info.name, "model_sha256": served.artifact.sha256, "explanations": results}

    app.post("/v1/explain", response_model=ExplainResponse, responses=errors, dependencies=[Depends(require_json)],
             summary="Explain predictions: token attributions", operation_id="explain")(explain)

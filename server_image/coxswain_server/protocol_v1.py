"""The v1 predict protocol: `{"instances": [...]}` in, `{"predictions": [...]}` out, one
prediction per instance.

Predictions:
- classification: `{"label": <name from the manifest's labels, else the class index>,
  "index": <class index>, "probabilities": [one per class]}` (softmax of the logits);
- regression: the output's value for that instance: a number when the output holds one
  value per instance, else a (nested) list;
- a model with several outputs: `{output name: value}` per instance.
For a model with several inputs, each instance is `{input name: value}`.
"""

from __future__ import annotations

from typing import Any

import numpy.typing as npt
import orjson

from coxswain_server.errors import BadRequest
from coxswain_server.limits import check_rows
from coxswain_server.tensors import Signature

_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def decode_request(body: bytes, signature: Signature, max_rows: int) -> tuple[list[npt.NDArray[Any]], int]:
    """The model's input arrays and the number of instances (at most `max_rows`)."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise BadRequest('the request body must be a JSON object {"instances": [...]}')
    instances = request.get("instances")
    if not isinstance(instances, list) or not instances:
        raise BadRequest(f'"instances" must be a non-empty list; each instance is {signature.input_names}')
    check_rows(len(instances), max_rows)
    if len(signature.inputs) == 1:
        return [signature.inputs[0].from_instances(instances)], len(instances)
    arrays = []
    for schema in signature.inputs:
        try:
            column = [instance[schema.name] for instance in instances]
        except (TypeError, KeyError):
            raise BadRequest(
                f"this model takes several inputs, so each instance must be an object with {signature.input_names}"
            ) from None
        arrays.append(schema.from_instances(column))
    return arrays, len(instances)


def encode_response(outputs: list[npt.NDArray[Any]], signature: Signature) -> bytes:
    first = outputs[0]
    if signature.probabilities:
        probabilities = outputs[-1]
        indexes = probabilities.argmax(axis=1).tolist()
        labels = signature.labels
        predictions: list[Any] = [
            {
                "label": labels[i] if labels is not None and i < len(labels) else i,
                "index": i,
                "probabilities": probabilities[row],
            }
            for row, i in enumerate(indexes)
        ]
    elif len(signature.outputs) == 1:
        predictions = first.reshape(len(first)).tolist() if first[0].size == 1 else list(first)
    else:
        names = [s.name for s in signature.outputs]
        predictions = [{name: outputs[k][row] for k, name in enumerate(names)} for row in range(len(first))]
    return orjson.dumps({"predictions": predictions}, option=_DUMPS_OPTIONS)

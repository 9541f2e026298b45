"""Client for a tfflows model behind TF Serving: REST bodies and gRPC requests.

Builds the requests for the signatures that `tfflows.export.save` writes
(see that module for their inputs and outputs):

- `rest_body(signature, inputs)`: the JSON body of a REST `predict` call,
  `{"signature_name": ..., "inputs": {name: nested lists}}` (TF Serving's
  columnar format), to POST to `rest_url(model_name)`;
- `predict_request(model_name, signature, inputs)`: a
  `tensorflow_serving.apis.predict_pb2.PredictRequest` for the gRPC
  `PredictionService/Predict` (needs the `tensorflow-serving-api` package);
- `log_prob_inputs`, `sample_inputs`, `encode_inputs`, `decode_inputs`:
  the input dict of each signature, with the dtypes and shapes the SavedModel
  declares, checked here so that a bad request fails before it is sent;
- `rest_predict(url, body)`: POSTs a body with the standard library and
  returns the outputs as numpy arrays.

From the shell, `python -m tfflows.serving sample --seed 1 2 --temperature 0.7`
prints a request body, and `--url http://localhost:8501/v1/models/glow:predict`
sends it.

>>> body = rest_body("sample", sample_inputs(seed=[1, 2], temperature=0.7))
>>> body["signature_name"], body["inputs"]["seed"], body["inputs"]["temperature"]
('sample', [1, 2], [0.7, 0.7])
"""

import argparse
import json
import sys
import urllib.error
import urllib.request

import numpy as np

DEFAULT_REST_PORT = 8501
DEFAULT_GRPC_PORT = 8500

#: The signatures `tfflows.export.save` writes: the one table of their inputs
#: and outputs, as `(dtype, shape)` with the shape named by its kind:
#: `"batch"` is `(batch,)`, `"image"` is `(batch, H, W, C)` (the model's
#: `data_shape`) and `"latent"` is `(batch, D)` (the flat latent). The
#: exporter builds its `tf.TensorSpec`s from it and this client checks
#: requests against it; docs/serving.md says what each one computes.
SIGNATURES = {
    "serving_default": {"inputs": {"images": ("uint8", "image")},
                        "outputs": {"log_prob": ("float32", "batch"), "bits_per_dim": ("float32", "batch")}},
    "log_prob_float": {"inputs": {"images": ("float32", "image")},
                       "outputs": {"log_prob": ("float32", "batch"), "bits_per_dim": ("float32", "batch")}},
    "sample": {"inputs": {"temperature": ("float32", "batch"), "seed": ("int64", "batch")},
               "outputs": {"images": ("float32", "image")}},
    "encode": {"inputs": {"images": ("float32", "image")}, "outputs": {"latent": ("float32", "latent")}},
    "decode": {"inputs": {"latent": ("float32", "latent")}, "outputs": {"images": ("float32", "image")}},
}

#: The signatures of a model of continuous data (`n_bits=None`, e.g. a MAF
#: on vectors): `"data"` is `(batch, *data_shape)`, outputs are not clipped.
CONTINUOUS_SIGNATURES = {
    "serving_default": {"inputs": {"x": ("float32", "data")}, "outputs": {"log_prob": ("float32", "batch")}},
    "sample": {"inputs": {"temperature": ("float32", "batch"), "seed": ("int64", "batch")},
               "outputs": {"x": ("float32", "data")}},
    "encode": {"inputs": {"x": ("float32", "data")}, "outputs": {"latent": ("float32", "latent")}},
    "decode": {"inputs": {"latent": ("float32", "latent")}, "outputs": {"x": ("float32", "data")}},
}

#: A conditional model's signatures each take this input as well: the
#: context, one row per example, `(batch, *context_shape)`.
CONTEXT_INPUT = ("context", ("float32", "context"))


def signature_table(continuous=False, conditional=False):
    """The signatures of a model: `SIGNATURES` (images) or
    `CONTINUOUS_SIGNATURES` (`n_bits=None`), with `CONTEXT_INPUT` added to
    every signature of a conditional model."""
    table = CONTINUOUS_SIGNATURES if continuous else SIGNATURES
    if not conditional:
        return table
    name, spec = CONTEXT_INPUT
    return {sig: {"inputs": dict(io["inputs"], **{name: spec}), "outputs": io["outputs"]}
            for sig, io in table.items()}


#: Input names and dtypes of each exported signature (from `SIGNATURES`).
SIGNATURE_INPUTS = {name: {k: dtype for k, (dtype, _) in spec["inputs"].items()}
                    for name, spec in SIGNATURES.items()}

#: Output names of each exported signature (from `SIGNATURES`), sorted.
SIGNATURE_OUTPUTS = {name: tuple(sorted(spec["outputs"])) for name, spec in SIGNATURES.items()}


class RequestError(ValueError):
    """The inputs do not fit the signature they are meant for."""


# -- per-signature inputs ----------------------------------------------------------
def _images(images, data_shape, float_ok=True):
    x = np.asarray(images)
    if x.ndim == 3:  # one image
        x = x[None]
    if x.ndim != 4:
        raise RequestError(f"images must be (batch, H, W, C) or (H, W, C), got shape {x.shape}.")
    if data_shape is not None and tuple(x.shape[1:]) != tuple(data_shape):
        raise RequestError(f"images must have trailing shape {tuple(data_shape)}, got {x.shape}.")
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating) and float_ok:
        if x.size and (x.min() < 0.0 or x.max() >= 1.0 + 1e-6):
            raise RequestError(
                f"float images must lie in [0, 1), got values in [{x.min()}, {x.max()}]; "
                f"send uint8 pixels (0-255) to serving_default instead."
            )
        return x.astype(np.float32)
    raise RequestError(f"images must be uint8 (0-255) or float in [0, 1), got dtype {x.dtype}.")


def log_prob_inputs(images, data_shape=None):
    """`(signature, inputs)` for the density of `images`.

    uint8 images (0-255) go to `serving_default`, which dequantizes them to
    bin centres on the server; float images in [0, 1) go to `log_prob_float`.
    """
    x = _images(images, data_shape)
    return ("serving_default" if x.dtype == np.uint8 else "log_prob_float"), {"images": x}


def sample_inputs(seed, temperature=1.0):
    """Inputs of `sample`: one int64 seed per row, temperature per row or scalar."""
    seed = np.atleast_1d(np.asarray(seed))
    if seed.ndim != 1 or not np.issubdtype(seed.dtype, np.integer):
        raise RequestError(f"seed must be an integer or a 1-D list of integers, got {seed!r}.")
    t = np.asarray(temperature, dtype=np.float32)
    if t.ndim == 0:
        t = np.full(seed.shape, t, np.float32)
    if t.shape != seed.shape:
        raise RequestError(
            f"sample needs one temperature per seed: got {t.shape[0] if t.ndim else 1} "
            f"temperatures for {seed.shape[0]} seeds."
        )
    return {"temperature": t, "seed": seed.astype(np.int64)}


def encode_inputs(images, data_shape=None, n_bits=8):
    """Inputs of `encode`: float32 images in [0, 1).

    uint8 images are dequantized to bin centres as `serving_default` does:
    `((u8 >> (8 - n_bits)) + 0.5) / 2^n_bits`.
    """
    x = _images(images, data_shape)
    if x.dtype == np.uint8:
        k = np.right_shift(x, 8 - int(n_bits)).astype(np.float32)
        x = ((k + 0.5) / float(2 ** int(n_bits))).astype(np.float32)
    return {"images": x}


def decode_inputs(latent, latent_dim=None):
    """Inputs of `decode`: flat float32 latents `(batch, D)`."""
    z = np.asarray(latent, dtype=np.float32)
    if z.ndim == 1:
        z = z[None]
    if z.ndim != 2 or (latent_dim is not None and z.shape[1] != latent_dim):
        want = f"(batch, {latent_dim})" if latent_dim else "(batch, D)"
        raise RequestError(f"latent must be {want}, got shape {z.shape}.")
    return {"latent": z}


def _checked(signature, inputs):
    if signature not in SIGNATURE_INPUTS:
        raise RequestError(f"Unknown signature {signature!r}; choose one of {sorted(SIGNATURE_INPUTS)}.")
    want = dict(SIGNATURE_INPUTS[signature])
    if CONTEXT_INPUT[0] in inputs:  # a conditional model's signature
        want[CONTEXT_INPUT[0]] = CONTEXT_INPUT[1][0]
    if set(inputs) != set(want):
        raise RequestError(f"Signature {signature!r} takes inputs {sorted(want)}, got {sorted(inputs)}.")
    out = {}
    for name, dtype in want.items():
        arr = np.asarray(inputs[name])
        if arr.dtype != np.dtype(dtype):
            raise RequestError(
                f"Signature {signature!r} input {name!r} must be {dtype}, got {arr.dtype}."
            )
        out[name] = arr
    return out


# -- REST --------------------------------------------------------------------------------
def rest_url(model_name, host="localhost", port=DEFAULT_REST_PORT, version=None):
    """`http://host:port/v1/models/<name>[/versions/<n>]:predict`."""
    version_part = "" if version is None else f"/versions/{int(version)}"
    return f"http://{host}:{port}/v1/models/{model_name}{version_part}:predict"


def _json_list(arr):
    """Nested lists; float32 values as their shortest decimal (0.7, not
    0.699999988...), which parses back to the identical float32."""
    if arr.dtype == np.float32:
        return np.asarray(arr.astype(str), dtype=np.float64).tolist()
    return arr.tolist()


def rest_body(signature, inputs):
    """The JSON-ready body of a REST `predict` call (columnar `inputs`)."""
    inputs = _checked(signature, inputs)
    return {"signature_name": signature, "inputs": {k: _json_list(v) for k, v in inputs.items()}}


def outputs_from_response(response, signature=None):
    """TF Serving's REST `predict` response -> `{name: np.ndarray}`.

    TF Serving leaves out the name of a signature's only output (`sample`,
    `encode`, `decode`); given `signature`, it is put back (`"images"` or
    `"latent"`), else the array is returned under `"output"`.
    """
    if "error" in response:
        raise RequestError(f"TF Serving refused the request: {response['error']}")
    outputs = response["outputs"]
    if not isinstance(outputs, dict):
        names = SIGNATURE_OUTPUTS.get(signature, ())
        return {names[0] if len(names) == 1 else "output": np.asarray(outputs)}
    return {k: np.asarray(v) for k, v in outputs.items()}


def rest_predict(url, body, timeout=30.0):
    """POSTs `body` to `url` and returns the outputs as numpy arrays.

    Raises `RequestError` with TF Serving's message when it answers with an
    error (HTTP 400 for a bad request).
    """
    data = json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            response = json.loads(reply.read().decode("utf-8"))
    except urllib.error.HTTPError as err:
        try:
            response = json.loads(err.read().decode("utf-8"))
        except ValueError:
            raise RequestError(f"TF Serving answered HTTP {err.code}: {err.reason}") from err
    return outputs_from_response(response, body.get("signature_name"))


# -- gRPC --------------------------------------------------------------------------------
def predict_request(model_name, signature, inputs, version=None):
    """A `PredictRequest` proto for the gRPC `PredictionService`.

    Send it with
    `prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel("host:8500")).Predict(request, timeout)`.
    Needs `tensorflow-serving-api`.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    inputs = _checked(signature, inputs)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = int(version)
    for name, arr in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(arr, dtype=arr.dtype, shape=arr.shape))
    for name in SIGNATURE_OUTPUTS[signature]:
        request.output_filter.append(name)
    return request


def outputs_from_predict_response(response):
    """A gRPC `PredictResponse` -> `{name: np.ndarray}`."""
    import tensorflow as tf

    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


# -- command line ------------------------------------------------------------------------
def _inputs_from_args(args):
    if args.signature == "sample":
        return "sample", sample_inputs(args.seed or [0], args.temperature)
    if args.array is None:
        raise RequestError(f"{args.signature} needs --array FILE.npy")
    arr = np.load(args.array)
    if args.signature == "decode":
        return "decode", decode_inputs(arr)
    if args.signature == "encode":
        return "encode", encode_inputs(arr)
    signature, inputs = log_prob_inputs(arr)
    if args.signature not in ("log_prob", signature):
        raise RequestError(f"{args.array} holds {arr.dtype} images, which go to {signature}.")
    return signature, inputs


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m tfflows.serving",
        description="Print (or send) a TF Serving REST predict request for a tfflows export.")
    parser.add_argument("signature", choices=["log_prob"] + list(SIGNATURE_INPUTS))
    parser.add_argument("--seed", type=int, nargs="+", help="sample: one seed per image")
    parser.add_argument("--temperature", type=float, nargs="+", default=[1.0],
                        help="sample: one temperature, or one per seed")
    parser.add_argument("--array", help=".npy with images (uint8 or float in [0,1)) or latents")
    parser.add_argument("--url", help="POST the body here and print the outputs, "
                                      "e.g. " + rest_url("glow"))
    args = parser.parse_args(argv)
    if len(args.temperature) == 1:
        args.temperature = args.temperature[0]
    try:
        signature, inputs = _inputs_from_args(args)
        body = rest_body(signature, inputs)
    except RequestError as err:
        parser.error(str(err))
    if not args.url:
        print(json.dumps(body))
        return 0
    outputs = rest_predict(args.url, body)
    print(json.dumps({k: v.tolist() for k, v in outputs.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

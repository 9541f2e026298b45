"""SavedModel export for TF Serving (`tfflows.export`, `tfflows.serving`).

TF Serving cannot run here, so these tests check its contract instead:

- every export is loaded with plain `tf.saved_model.load` in a fresh process
  that never imports tfflows, and each signature is called there, directly
  and from REST JSON bodies converted the way TF Serving converts them;
- the outputs equal the in-Python model's (`log_prob` to 1e-5 relative);
- `saved_model_cli show --all` lists the signatures with the
  `tensorflow/serving/predict` method, and the `PredictRequest`s that
  `tfflows.serving` builds (with the `tensorflow-serving-api` protos) match
  the inputs it lists;
- version folders, bad requests, the CLI hooks, and an export of a model
  trained under `tf.distribute.MirroredStrategy`.

Models are tiny (8x8x1 images, one step per level, width 8) so the file runs
in well under a minute on two cores.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tfflows
from tfflows import cli, export, serving
from tfflows import layers as L

LOG_PROB_RTOL = 1e-5  # exported vs in-Python log_prob (the bound)
IMAGE_ATOL = 1e-5  # exported vs in-Python decode/sample (float32, clipped to [0, 1])
LATENT_ATOL = 1e-5
SUBPROCESS_TIMEOUT = 240
DATA_SHAPE = (8, 8, 1)
SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")

# name -> (builder, kwargs). `glow` and `realnvp` are multi-scale (one Split),
# `glow_1level` has an image-shaped latent, `nice` a logistic base.
MODELS = {
    "glow": ("glow", dict(preset="mnist-tiny", levels=2, steps=1, hidden=8, data_shape=DATA_SHAPE)),
    "realnvp": ("realnvp", dict(preset="mnist-tiny", levels=2, steps=1, hidden=8, data_shape=DATA_SHAPE)),
    "glow_1level": ("glow", dict(preset="mnist-tiny", levels=1, steps=1, hidden=8, data_shape=DATA_SHAPE)),
    "nice": ("nice", dict(preset="mnist-tiny", couplings=2, hidden=8, depth=1, data_shape=DATA_SHAPE)),
}

# Run in a fresh interpreter: loads SavedModels with TensorFlow alone and
# calls their signatures as a plan says. Never imports tfflows (or numpy
# helpers from it); records whether anything did.
RUNNER = r'''
import json, sys
import numpy as np
import tensorflow as tf


class _NoTfflows:
    """Makes any import of tfflows fail: the export must not need it."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tfflows":
            raise ImportError(f"{name} is blocked in this process")


sys.meta_path.insert(0, _NoTfflows())

jobs = json.load(open(sys.argv[1]))
report = {}
for job in jobs:
    arrays = np.load(job["arrays"])
    loaded = tf.saved_model.load(job["path"])
    out, errors, specs = {}, {}, {}
    for name, fn in loaded.signatures.items():
        specs[name] = {
            "inputs": {k: [v.dtype.name, list(v.shape)] for k, v in fn.structured_input_signature[1].items()},
            "outputs": {k: [v.dtype.name, list(v.shape)] for k, v in fn.structured_outputs.items()},
        }
    for call in job["calls"]:
        fn = loaded.signatures[call["signature"]]
        if "rest_body" in call:
            # What TF Serving's REST handler does: JSON lists -> tensors of the
            # signature's input dtypes.
            body = json.loads(call["rest_body"])
            assert body["signature_name"] == call["signature"]
            wanted = fn.structured_input_signature[1]
            inputs = {k: tf.constant(np.asarray(v, dtype=wanted[k].dtype.as_numpy_dtype))
                      for k, v in body["inputs"].items()}
        else:
            inputs = {k: tf.constant(arrays[key]) for k, key in call["inputs"].items()}
        try:
            result = fn(**inputs)
        except Exception as err:  # a bad request must raise, not kill the process
            errors[call["id"]] = f"{type(err).__name__}: {err}"
            continue
        for k, v in result.items():
            out[f"{call['id']}/{k}"] = v.numpy()
    np.savez(job["results"], **out)
    report[job["name"]] = {"errors": errors, "signatures": specs}
report["_modules"] = {m: m in sys.modules for m in ("tfflows", "keras")}
json.dump(report, open(sys.argv[2], "w"))
'''


def _clean_env():
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def _run(args, cwd, timeout=SUBPROCESS_TIMEOUT):
    proc = subprocess.run(args, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{args[:3]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def _run_fresh_process(jobs, workdir):
    """Runs RUNNER on `jobs`; returns (report, {job name: results npz})."""
    workdir = str(workdir)
    plan, report_path, runner = (os.path.join(workdir, n) for n in ("plan.json", "report.json", "runner.py"))
    with open(runner, "w") as f:
        f.write(RUNNER)
    with open(plan, "w") as f:
        json.dump(jobs, f)
    _run([sys.executable, runner, plan, report_path], cwd=workdir)
    with open(report_path) as f:
        report = json.load(f)
    return report, {job["name"]: dict(np.load(job["results"])) for job in jobs}


def _build(name):
    builder, kwargs = MODELS[name]
    return tfflows.zoo.builders.BUILDERS[builder](**kwargs)


def _images(seed, n=6):
    rng = np.random.default_rng(seed)
    x_u8 = rng.integers(0, 256, (n,) + DATA_SHAPE).astype("uint8")
    x_f32 = rng.uniform(0.0, 1.0, (n,) + DATA_SHAPE).astype("float32")
    return x_u8, x_f32


def _bin_centres(x_u8, n_bits=8):
    return ((np.right_shift(x_u8, 8 - n_bits).astype("float32") + 0.5) / 2 ** n_bits).astype("float32")


def _trained_like(model, seed):
    """ActNorm init on data, then every trainable weight perturbed, so the
    zero-initialised coupling nets and priors are not the identity."""
    x_u8, _ = _images(seed, n=32)
    model.initialize(_bin_centres(x_u8))
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign(np.asarray(v.numpy()) + 0.05 * rng.standard_normal(v.shape).astype("float32"))
    return model


def _np(x):
    return np.asarray(tf.convert_to_tensor(x))


def _stateless_noise(model, seed, temperature):
    """The base noise `sample` draws for one row, computed in this process."""
    key = tf.constant([seed, 0], tf.int64)
    shape = tuple(model.latent_shape)
    if isinstance(model.base, tfflows.distributions.Logistic):
        u = tf.random.stateless_uniform(shape, seed=key, minval=1e-6, maxval=1.0 - 1e-6)
        eps = tf.math.log(u) - tf.math.log1p(-u)
    else:
        eps = tf.random.stateless_normal(shape, seed=key)
    return _np(eps) * np.float32(temperature)


# Each sample call: (temperature, seed). Rows 0, 1 share seed and temperature;
# `sample_one` and `sample_swapped` put the same keys at other batch positions.
SAMPLE_CALLS = {
    "sample": ([1.0, 1.0, 0.7, 1.0, 0.0], [11, 11, 11, 12, 13]),
    "sample_one": ([1.0], [11]),
    "sample_swapped": ([1.0, 1.0], [12, 11]),
}


def _plan(name, model, path, workdir):
    x_u8, x_f32 = _images(seed=1)
    latent = (0.5 * np.random.default_rng(2).standard_normal((4, int(np.prod(model.latent_shape))))).astype("float32")
    arrays = {"x_u8": x_u8, "x_f32": x_f32, "latent": latent,
              "x_u8_cropped": x_u8[:, :4], "x_flat": x_f32.reshape(6, -1),
              "t2": np.ones(2, "float32"), "s3": np.arange(3, dtype="int64"), "s3_float": np.arange(3, dtype="float32"),
              "t3": np.ones(3, "float32")}
    calls = [
        dict(id="lp_u8", signature="serving_default", inputs={"images": "x_u8"}),
        dict(id="lp_f32", signature="log_prob_float", inputs={"images": "x_f32"}),
        dict(id="encode", signature="encode", inputs={"images": "x_f32"}),
        dict(id="decode", signature="decode", inputs={"latent": "latent"}),
    ]
    for cid, (t, s) in SAMPLE_CALLS.items():
        arrays[cid + "_t"] = np.asarray(t, "float32")
        arrays[cid + "_s"] = np.asarray(s, "int64")
        calls.append(dict(id=cid, signature="sample", inputs={"temperature": cid + "_t", "seed": cid + "_s"}))
    # Bad requests, each must raise in the loading process; then a good call.
    calls += [
        dict(id="bad_dtype", signature="serving_default", inputs={"images": "x_f32"}),
        dict(id="bad_shape", signature="serving_default", inputs={"images": "x_u8_cropped"}),
        dict(id="bad_rank", signature="log_prob_float", inputs={"images": "x_flat"}),
        dict(id="bad_sample_batch", signature="sample", inputs={"temperature": "t2", "seed": "s3"}),
        dict(id="bad_seed_dtype", signature="sample", inputs={"temperature": "t3", "seed": "s3_float"}),
        dict(id="bad_latent", signature="decode", inputs={"images": "x_f32"}),
        dict(id="after_bad", signature="serving_default", inputs={"images": "x_u8"}),
    ]
    # REST bodies built by tfflows.serving, one per signature.
    rest = {
        "serving_default": serving.log_prob_inputs(x_u8)[1],
        "log_prob_float": serving.log_prob_inputs(x_f32)[1],
        "sample": serving.sample_inputs(seed=SAMPLE_CALLS["sample"][1], temperature=SAMPLE_CALLS["sample"][0]),
        "encode": serving.encode_inputs(x_f32),
        "decode": serving.decode_inputs(latent),
    }
    for sig, inputs in rest.items():
        calls.append(dict(id="rest_" + sig, signature=sig, rest_body=json.dumps(serving.rest_body(sig, inputs))))
    arrays_path = os.path.join(str(workdir), f"{name}_inputs.npz")
    np.savez(arrays_path, **arrays)
    job = dict(name=name, path=path, arrays=arrays_path, calls=calls,
               results=os.path.join(str(workdir), f"{name}_results.npz"))
    return job, arrays


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every model in MODELS, exported and run in ONE fresh process."""
    workdir = tmp_path_factory.mktemp("export")
    models, jobs, inputs = {}, [], {}
    for i, name in enumerate(MODELS):
        model = _trained_like(_build(name), seed=10 + i)
        path = export.save(model, os.path.join(str(workdir), name))
        job, arrays = _plan(name, model, path, workdir)
        models[name], inputs[name] = (model, path), arrays
        jobs.append(job)
    report, results = _run_fresh_process(jobs, workdir)
    return {name: dict(model=models[name][0], path=models[name][1], inputs=inputs[name],
                       results=results[name], report=report[name]) for name in MODELS} | {"_report": report}


@pytest.fixture(scope="module")
def cli_listing(exported):
    """`saved_model_cli show --all` of the Glow export, parsed."""
    proc = _run([SAVED_MODEL_CLI, "show", "--all", "--dir", exported["glow"]["path"]],
                cwd=os.path.dirname(exported["glow"]["path"]))
    return parse_saved_model_cli(proc.stdout)


def parse_saved_model_cli(text):
    """`{signature: {"method", "inputs", "outputs"}}` plus `"_ops"`, from `show --all`."""
    listing, _, rest = text.partition("The MetaGraph with tag set")
    ops = re.search(r"contains the following ops: \{([^}]*)\}", "The MetaGraph with tag set" + rest)
    parsed = {"_ops": {o.strip().strip("'") for o in ops.group(1).split(",")} if ops else set()}
    for block in re.split(r"^signature_def\['", listing, flags=re.M)[1:]:
        name, body = block.split("']:", 1)
        entry = {"method": re.search(r"Method name is: (\S*)", body).group(1), "inputs": {}, "outputs": {}}
        for side, key, dtype, shape in re.findall(
                r"(inputs|outputs)\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+shape: \(([^)]*)\)", body):
            entry[side][key] = (dtype, [int(d) for d in shape.split(",") if d.strip()])
        parsed[name] = entry
    return parsed


# -- fresh-process load and equality with the in-Python model -----------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_exported_log_prob_equals_python_model(exported, name):
    e = exported[name]
    model, inputs, results = e["model"], e["inputs"], e["results"]
    x = _bin_centres(inputs["x_u8"])
    want_lp = _np(model.log_prob(x))
    assert np.all(np.isfinite(want_lp))
    np.testing.assert_allclose(results["lp_u8/log_prob"], want_lp, rtol=LOG_PROB_RTOL)
    np.testing.assert_allclose(results["lp_u8/bits_per_dim"], _np(model.bits_per_dim(x)), rtol=LOG_PROB_RTOL)
    np.testing.assert_allclose(results["lp_f32/log_prob"], _np(model.log_prob(inputs["x_f32"])),
                               rtol=LOG_PROB_RTOL)
    assert results["lp_u8/log_prob"].shape == (6,)


@pytest.mark.parametrize("name", list(MODELS))
def test_exported_encode_and_decode_equal_python_model(exported, name):
    e = exported[name]
    model, inputs, results = e["model"], e["inputs"], e["results"]
    z = _np(model.encode(inputs["x_f32"])).reshape(6, -1)
    np.testing.assert_allclose(results["encode/latent"], z, atol=LATENT_ATOL, rtol=1e-5)
    x = np.clip(_np(model.decode(inputs["latent"].reshape((-1,) + tuple(model.latent_shape)))), 0.0, 1.0)
    np.testing.assert_allclose(results["decode/images"], x, atol=IMAGE_ATOL)
    assert results["decode/images"].shape == (4,) + DATA_SHAPE
    assert results["decode/images"].min() >= 0.0 and results["decode/images"].max() <= 1.0


@pytest.mark.parametrize("name", list(MODELS))
def test_same_seed_gives_same_sample_at_any_batch_position(exported, name):
    r = exported[name]["results"]
    a, one, swapped = r["sample/images"], r["sample_one/images"], r["sample_swapped/images"]
    assert a.shape == (5,) + DATA_SHAPE and one.shape == (1,) + DATA_SHAPE
    np.testing.assert_allclose(a[1], a[0], atol=IMAGE_ATOL)  # same key, same batch
    np.testing.assert_allclose(one[0], a[0], atol=IMAGE_ATOL)  # batch of one
    np.testing.assert_allclose(swapped[1], a[0], atol=IMAGE_ATOL)  # other position
    np.testing.assert_allclose(swapped[0], a[3], atol=IMAGE_ATOL)


@pytest.mark.parametrize("name", list(MODELS))
def test_different_seeds_or_temperatures_give_different_samples(exported, name):
    a = exported[name]["results"]["sample/images"]
    assert np.abs(a[0] - a[3]).max() > 1e-2  # seeds 11 vs 12
    assert np.abs(a[3] - a[4]).max() > 1e-2  # seeds 12 vs 13
    assert np.abs(a[0] - a[2]).max() > 1e-3  # seed 11 at temperature 1 vs 0.7


@pytest.mark.parametrize("name", list(MODELS))
def test_sample_decodes_the_stateless_base_noise_of_each_row(exported, name):
    e = exported[name]
    model = e["model"]
    temperatures, seeds = SAMPLE_CALLS["sample"]
    z = np.stack([_stateless_noise(model, s, t) for t, s in zip(temperatures, seeds)])
    want = np.clip(_np(model.decode(z)), 0.0, 1.0)
    np.testing.assert_allclose(e["results"]["sample/images"], want, atol=IMAGE_ATOL)
    # Temperature 0 is the decoded mode (z = 0).
    mode = np.clip(_np(model.decode(np.zeros((1,) + tuple(model.latent_shape), "float32"))), 0.0, 1.0)
    np.testing.assert_allclose(e["results"]["sample/images"][4], mode[0], atol=IMAGE_ATOL)


@pytest.mark.parametrize("name", list(MODELS))
def test_rest_bodies_give_the_same_outputs_as_tensors(exported, name):
    r = exported[name]["results"]
    pairs = [("serving_default", "lp_u8", "log_prob"), ("serving_default", "lp_u8", "bits_per_dim"),
             ("log_prob_float", "lp_f32", "log_prob"), ("sample", "sample", "images"),
             ("encode", "encode", "latent"), ("decode", "decode", "images")]
    for sig, direct, key in pairs:
        np.testing.assert_array_equal(r[f"rest_{sig}/{key}"], r[f"{direct}/{key}"], err_msg=f"{sig}/{key}")


def test_fresh_process_never_imported_tfflows(exported):
    modules = exported["_report"]["_modules"]
    assert modules["tfflows"] is False


@pytest.mark.parametrize("name", list(MODELS))
def test_loaded_signatures_have_the_documented_inputs_and_outputs(exported, name):
    e = exported[name]
    loaded = e["report"]["signatures"]
    for sig, spec in export.signature_specs(e["model"]).items():
        for side in ("inputs", "outputs"):
            got = {k: (d, [None if s is None else s for s in shape]) for k, (d, shape) in loaded[sig][side].items()}
            want = {k: (d, list(shape)) for k, (d, shape) in spec[side].items()}
            assert got == want, f"{sig} {side}"
    assert set(loaded) == set(export.SIGNATURES)


@pytest.mark.parametrize("name", ["glow", "nice"])
def test_bad_requests_raise_signature_errors_and_the_process_survives(exported, name):
    e = exported[name]
    errors = e["report"]["errors"]
    assert "expected to be a uint8 tensor" in errors["bad_dtype"]
    assert "is not compatible with expected shape [?,8,8,1]" in errors["bad_shape"]
    assert "is not compatible with expected shape [?,8,8,1]" in errors["bad_rank"]
    assert "one temperature per seed" in errors["bad_sample_batch"]
    assert "expected to be a int64 tensor" in errors["bad_seed_dtype"]
    assert "latent" in errors["bad_latent"]  # unknown input name: TF names the expected one
    assert set(errors) == {"bad_dtype", "bad_shape", "bad_rank", "bad_sample_batch", "bad_seed_dtype",
                           "bad_latent"}
    np.testing.assert_array_equal(e["results"]["after_bad/log_prob"], e["results"]["lp_u8/log_prob"])


# -- saved_model_cli and the TF Serving request protos -----------------------------------------
def test_saved_model_cli_lists_the_signatures_as_predict(cli_listing, exported):
    signatures = {k for k in cli_listing if not k.startswith("_")}
    assert signatures == set(export.SIGNATURES)
    want_dtypes = {"uint8": "DT_UINT8", "float32": "DT_FLOAT", "int64": "DT_INT64"}
    for sig, spec in export.signature_specs(exported["glow"]["model"]).items():
        listed = cli_listing[sig]
        assert listed["method"] == "tensorflow/serving/predict", sig
        for side in ("inputs", "outputs"):
            want = {k: (want_dtypes[d], [-1 if s is None else s for s in shape]) for k, (d, shape) in spec[side].items()}
            assert listed[side] == want, f"{sig} {side}"


def test_export_has_no_python_only_ops(cli_listing, exported):
    assert cli_listing["_ops"], "saved_model_cli listed no ops"
    assert not cli_listing["_ops"] & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
    for name in MODELS:
        for root, _, files in os.walk(exported[name]["path"]):
            assert not [f for f in files if f.endswith((".pkl", ".pickle", ".keras", ".h5"))], root


def _request_inputs(sig, x_u8, x_f32, latent):
    return {
        "serving_default": serving.log_prob_inputs(x_u8)[1],
        "log_prob_float": serving.log_prob_inputs(x_f32)[1],
        "sample": serving.sample_inputs(seed=[1, 2, 3], temperature=[0.5, 0.7, 1.0]),
        "encode": serving.encode_inputs(x_f32),
        "decode": serving.decode_inputs(latent),
    }[sig]


@pytest.mark.parametrize("sig", export.SIGNATURES)
def test_predict_request_matches_saved_model_cli(cli_listing, exported, sig):
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2

    x_u8, x_f32 = _images(seed=3, n=2)
    latent = np.zeros((2, int(np.prod(exported["glow"]["model"].latent_shape))), "float32")
    request = serving.predict_request("glow", sig, _request_inputs(sig, x_u8, x_f32, latent), version=1)
    assert isinstance(request, predict_pb2.PredictRequest)
    assert request.model_spec.name == "glow" and request.model_spec.version.value == 1
    assert request.model_spec.signature_name == sig
    listed = cli_listing[sig]
    assert set(request.inputs) == set(listed["inputs"])
    assert set(request.output_filter) == set(listed["outputs"])
    for key, tensor in request.inputs.items():
        dtype, shape = listed["inputs"][key]
        assert types_pb2.DataType.Name(tensor.dtype) == dtype, key
        got = [d.size for d in tensor.tensor_shape.dim]
        assert len(got) == len(shape) and all(w in (-1, g) for g, w in zip(got, shape)), (key, got, shape)
    # The proto round-trips to the arrays it was built from.
    for key, tensor in request.inputs.items():
        np.testing.assert_array_equal(tf.make_ndarray(tensor), _request_inputs(sig, x_u8, x_f32, latent)[key])


def test_request_helpers_reject_bad_inputs_before_sending():
    with pytest.raises(serving.RequestError, match="one temperature per seed"):
        serving.sample_inputs(seed=[1, 2, 3], temperature=[1.0, 0.5])
    with pytest.raises(serving.RequestError, match=r"lie in \[0, 1\)"):
        serving.log_prob_inputs(np.full((1,) + DATA_SHAPE, 255.0, "float32"))
    with pytest.raises(serving.RequestError, match="trailing shape"):
        serving.log_prob_inputs(np.zeros((1, 4, 4, 1), "uint8"), data_shape=DATA_SHAPE)
    with pytest.raises(serving.RequestError, match="must be int64"):
        serving.rest_body("sample", {"temperature": np.ones(2, "float32"), "seed": np.ones(2, "float32")})
    assert serving.log_prob_inputs(np.zeros(DATA_SHAPE, "uint8"))[0] == "serving_default"
    assert serving.log_prob_inputs(np.zeros(DATA_SHAPE, "float32"))[0] == "log_prob_float"
    assert serving.rest_url("glow", version=3) == "http://localhost:8501/v1/models/glow/versions/3:predict"
    body = serving.rest_body("sample", serving.sample_inputs(seed=7, temperature=0.5))
    assert body == {"signature_name": "sample", "inputs": {"temperature": [0.5], "seed": [7]}}


class _FakeTFServingREST:
    """A stand-in for TF Serving's REST `predict` endpoint over a loaded
    SavedModel: JSON inputs -> tensors of the signature's dtypes; a single
    output is returned unnamed and errors as HTTP 400 `{"error": ...}`, as
    TF Serving does. Used only to exercise `tfflows.serving`'s HTTP path."""

    def __init__(self, path, model_name):
        import http.server
        import threading

        served = tf.saved_model.load(path)
        prefix = f"/v1/models/{model_name}"

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not (self.path == prefix + ":predict" or self.path.startswith(prefix + "/versions/")):
                    return self._reply(404, {"error": f"no model at {self.path}"})
                fn = served.signatures[body.get("signature_name", "serving_default")]
                specs = fn.structured_input_signature[1]
                try:
                    inputs = {k: tf.constant(np.asarray(v, specs[k].dtype.as_numpy_dtype))
                              for k, v in body["inputs"].items()}
                    out = {k: v.numpy().tolist() for k, v in fn(**inputs).items()}
                except Exception as err:  # noqa: BLE001 (TF Serving answers 400)
                    return self._reply(400, {"error": str(err)})
                self._reply(200, {"outputs": next(iter(out.values())) if len(out) == 1 else out})

            def _reply(self, code, payload):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_rest_client_round_trip_against_a_fake_server(exported):
    e = exported["glow"]
    server = _FakeTFServingREST(e["path"], "glow")
    try:
        url = serving.rest_url("glow", host="127.0.0.1", port=server.port, version=1)
        x_u8 = e["inputs"]["x_u8"]
        out = serving.rest_predict(url, serving.rest_body(*serving.log_prob_inputs(x_u8)), timeout=60)
        np.testing.assert_array_equal(out["log_prob"], e["results"]["lp_u8/log_prob"])
        temperatures, seeds = SAMPLE_CALLS["sample"]
        body = serving.rest_body("sample", serving.sample_inputs(seed=seeds, temperature=temperatures))
        images = serving.rest_predict(url, body, timeout=60)["images"]  # the unnamed single output
        np.testing.assert_allclose(images, e["results"]["sample/images"], atol=1e-7)
        bad = {"signature_name": "serving_default", "inputs": {"images": x_u8[:, :4].tolist()}}
        with pytest.raises(serving.RequestError, match="not compatible with expected shape"):
            serving.rest_predict(url, bad, timeout=60)
    finally:
        server.close()


# -- layout, versions, uint8 dequantization ----------------------------------------------------
def test_multiscale_latent_layout_is_split_parts_then_final(exported):
    """`encode`'s flat latent is [split_1, ..., final], each row-major HWC, as documented."""
    e = exported["glow"]
    model = e["model"]
    layout = json.load(open(os.path.join(e["path"], export.METADATA_FILE)))["latent_layout"]
    assert [p["name"] for p in layout] == ["split_1", "final"]
    assert sum(p["size"] for p in layout) == e["results"]["encode/latent"].shape[1]
    # Push the batch through the layers by hand, keeping each factored part.
    x = tf.constant(e["inputs"]["x_f32"])
    parts = []
    for layer in model.flow.flow_layers:
        x, _ = layer.forward(x)
        if isinstance(layer, L.FactorOut):
            x, factored = layer.separate(x)
            parts.append(factored)
    parts.append(x)
    flat = e["results"]["encode/latent"]
    for part, spec in zip(parts, layout):
        assert list(part.shape[1:]) == spec["shape"]
        got = flat[:, spec["offset"]:spec["offset"] + spec["size"]].reshape((-1,) + tuple(spec["shape"]))
        np.testing.assert_allclose(got, _np(part), atol=LATENT_ATOL, rtol=1e-5)


def test_image_shaped_latents_are_flattened_row_major(exported):
    e = exported["glow_1level"]
    model = e["model"]
    assert len(model.latent_shape) == 3
    assert json.load(open(os.path.join(e["path"], export.METADATA_FILE)))["latent_layout"] == [
        dict(name="latent", shape=list(model.latent_shape), offset=0, size=int(np.prod(model.latent_shape)))]
    z = _np(model.encode(e["inputs"]["x_f32"]))
    np.testing.assert_allclose(e["results"]["encode/latent"], z.reshape(6, -1), atol=LATENT_ATOL, rtol=1e-5)


def test_versions_go_in_numbered_folders(tmp_path):
    model = _trained_like(_build("nice"), seed=5)
    base = str(tmp_path / "nice")
    assert export.save(model, base) == os.path.join(base, "1")
    assert export.save(model, base) == os.path.join(base, "2")
    assert export.save(model, base, version=7) == os.path.join(base, "7")
    assert export.list_versions(base) == [1, 2, 7]
    for v in ("1", "2", "7"):
        assert os.path.isfile(os.path.join(base, v, "saved_model.pb"))
        assert os.path.isdir(os.path.join(base, v, "variables"))
        assert os.stat(os.path.join(base, v)).st_mode & 0o005 == 0o005  # others may read and enter
    assert sorted(os.listdir(base)) == ["1", "2", "7"]  # no temporary folders left behind
    with pytest.raises(FileExistsError, match="already exists"):
        export.save(model, base, version=2)
    assert export.save(model, base, version=2, overwrite=True) == os.path.join(base, "2")
    for bad in (0, -1, 1.5, "3", True):
        with pytest.raises(ValueError, match="positive integer version"):
            export.save(model, base, version=bad)


def test_save_refuses_an_uninitialised_actnorm(tmp_path):
    with pytest.raises(ValueError, match=r"initialize\(batch\)"):
        export.save(_build("glow"), str(tmp_path / "glow"))
    assert not os.path.exists(tmp_path / "glow" / "1")


def test_uint8_images_keep_the_models_top_bits(tmp_path):
    """A 5-bit model serves 8-bit pixels as `((u8 >> 3) + 0.5) / 32`, like tfflows.zoo.data."""
    model = tfflows.zoo.glow(preset="mnist-tiny", levels=1, steps=1, hidden=8, data_shape=DATA_SHAPE, n_bits=5)
    model = _trained_like(model, seed=6)
    loaded = tf.saved_model.load(export.save(model, str(tmp_path / "g5")))
    x_u8, _ = _images(seed=7)
    out = loaded.signatures["serving_default"](images=tf.constant(x_u8))
    x = _bin_centres(x_u8, n_bits=5)
    np.testing.assert_allclose(out["log_prob"], _np(model.log_prob(x)), rtol=LOG_PROB_RTOL)
    np.testing.assert_allclose(out["bits_per_dim"], _np(model.bits_per_dim(x)), rtol=LOG_PROB_RTOL)


# -- the CLI hooks ---------------------------------------------------------------------------
def _cli(argv):
    return cli.main(["export", *argv])


def test_cli_exports_weights_and_keras_files(tmp_path, capsys):
    builder, kwargs = MODELS["glow"]
    model = _trained_like(_build("glow"), seed=8)
    weights = str(tmp_path / "glow.weights.h5")
    model.save_weights(weights)
    x = _images(seed=9)[1]
    want = _np(model.log_prob(x))
    arch = [f"--arch={k}={v!r}" for k, v in kwargs.items() if k != "preset"]
    out = str(tmp_path / "served")
    assert _cli(["--weights", weights, "--model", builder, "--preset", kwargs["preset"], *arch,
                 "--out", out, "--version", "3"]) == 0
    assert "serving_default(images: uint8" in capsys.readouterr().out
    got = tf.saved_model.load(os.path.join(out, "3")).signatures["log_prob_float"](images=tf.constant(x))
    np.testing.assert_allclose(got["log_prob"], want, rtol=LOG_PROB_RTOL)

    keras_file = str(tmp_path / "glow.keras")
    model.save(keras_file)
    assert _cli(["--keras", keras_file, "--out", out]) == 0  # next version: 4
    got = tf.saved_model.load(os.path.join(out, "4")).signatures["log_prob_float"](images=tf.constant(x))
    np.testing.assert_allclose(got["log_prob"], want, rtol=LOG_PROB_RTOL)

    # Without the training architecture (--model glow --preset mnist by default) the file does not fit.
    assert _cli(["--weights", weights, "--out", out]) == 2
    assert f"{weights} does not fit --model glow --preset mnist" in capsys.readouterr().err
    assert _cli(["--weights", weights, "--keras", keras_file, "--out", out]) == 2
    assert "give one of --run, --weights, --pretrained, --keras" in capsys.readouterr().err
    assert _cli(["--keras", keras_file, "--arch", "hidden=8", "--out", out]) == 2
    assert "drop --arch" in capsys.readouterr().err
    assert _cli(["--weights", weights, "--model", builder, *arch, "--out", out, "--version", "3"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_cli_arch_values_and_nice_keywords():
    assert cli.parse_arch(["lu=false", "hidden=8", "data_shape=(8, 8, 1)", "base=logistic"]) == dict(
        lu=False, hidden=8, data_shape=(8, 8, 1), base="logistic")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        cli.parse_arch(["hidden"])
    # NICE's K is `couplings`; its other keywords (depth, base, data_shape) reach the builder.
    from tfflows.zoo import builders

    kwargs = builders.builder_kwargs("nice", dict(steps=2, hidden=8, depth=1, data_shape=[8, 8, 1]))
    assert kwargs == dict(couplings=2, hidden=8, depth=1, data_shape=[8, 8, 1])
    model = builders.build("nice", "mnist-tiny", dict(steps=2, hidden=8, depth=1, data_shape=[8, 8, 1]))
    assert model.count_params() < 10_000


# -- a model trained under a distribution strategy -------------------------------------------------
MIRRORED_TRAINING = r'''
import sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
import tfflows

out, arrays = sys.argv[1], sys.argv[2]
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert strategy.num_replicas_in_sync == 2
rng = np.random.default_rng(0)
x = ((rng.integers(0, 256, (64, 8, 8, 1)) + 0.5) / 256).astype("float32")
with strategy.scope():
    # Glow's x - 0.5: here log p(x) is about -1 nats, and with the logit
    # transform it is the sum of two ~200-nat terms of opposite sign, whose
    # float32 rounding alone (~2e-5 nats) exceeds an rtol of 1e-5 on -1.
    model = tfflows.zoo.glow(preset="mnist-tiny", levels=2, steps=1, hidden=8, data_shape=(8, 8, 1),
                             preprocess="center")
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
assert type(model.trainable_variables[0].value).__name__ == "MirroredVariable"
model.initialize(x[:32])
before = np.asarray(model.log_prob(x))
history = model.fit(x, batch_size=16, epochs=2, verbose=0).history
after = np.asarray(model.log_prob(x))
path = tfflows.export.save(model, out)
np.savez(arrays, x=x, before=before, after=after, loss=np.asarray(history["loss"]), path=path)
'''


@pytest.mark.slow
def test_export_of_a_model_trained_under_mirrored_strategy(tmp_path):
    script = tmp_path / "train_mirrored.py"
    script.write_text(MIRRORED_TRAINING)
    arrays = str(tmp_path / "trained.npz")
    _run([sys.executable, str(script), str(tmp_path / "served"), arrays], cwd=str(tmp_path))
    trained = np.load(arrays)
    assert np.all(np.isfinite(trained["loss"])) and len(trained["loss"]) == 2
    assert np.abs(trained["after"] - trained["before"]).max() > 1e-3  # training moved the weights
    path = str(trained["path"])
    assert path == str(tmp_path / "served" / "1")
    job = dict(name="mirrored", path=path, arrays=arrays,
               calls=[dict(id="lp", signature="log_prob_float", inputs={"images": "x"})],
               results=str(tmp_path / "mirrored_results.npz"))
    report, results = _run_fresh_process([job], tmp_path)
    assert report["mirrored"]["errors"] == {}
    np.testing.assert_allclose(results["mirrored"]["lp/log_prob"], trained["after"], rtol=LOG_PROB_RTOL)


def test_a_conditional_vector_model_exports_signatures_that_take_its_context(tmp_path):
    model = tfflows.zoo.maf(3, flows=2, hidden=(8,), context_dim=2)
    rng = np.random.default_rng(0)
    for w in model.trainable_weights:
        w.assign(w.value + 0.05 * rng.standard_normal(tuple(w.shape)).astype("float32"))
    x = rng.normal(size=(4, 3)).astype("float32")
    c = rng.normal(size=(4, 2)).astype("float32")
    path = export.save(model, str(tmp_path / "maf"))
    meta = json.load(open(os.path.join(path, export.METADATA_FILE)))
    assert meta["n_bits"] is None and meta["context_shape"] == [2]
    assert meta["signatures"]["sample"]["inputs"]["context"] == {"dtype": "float32", "shape": [-1, 2]}
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == {"serving_default", "sample", "encode", "decode"}
    got = loaded.signatures["serving_default"](x=tf.constant(x), context=tf.constant(c))
    np.testing.assert_allclose(got["log_prob"], _np(model.log_prob(x, context=c)), rtol=1e-5, atol=1e-5)
    z = loaded.signatures["encode"](x=tf.constant(x), context=tf.constant(c))["latent"]
    np.testing.assert_allclose(loaded.signatures["decode"](latent=z, context=tf.constant(c))["x"], x, atol=1e-4)
    # Row i of `sample` is the decode of its stateless noise under context row i.
    seeds = tf.constant([5, 6, 7, 8], tf.int64)
    temps = tf.constant([1.0, 0.5, 1.0, 0.0])
    s = loaded.signatures["sample"](temperature=temps, seed=seeds, context=tf.constant(c))["x"]
    eps = np.stack([tf.random.stateless_normal((3,), seed=[int(k), 0]).numpy() for k in seeds.numpy()])
    want = _np(model.decode(eps * temps.numpy()[:, None], context=c))
    np.testing.assert_allclose(s, want, atol=1e-4)
    with pytest.raises(Exception, match="context"):
        loaded.signatures["serving_default"](x=tf.constant(x), context=tf.constant(c[:2]))

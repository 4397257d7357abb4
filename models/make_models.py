#!/usr/bin/env python3
"""Writes the policy models the project ships and tests with, deterministically.

    python models/make_models.py            # rewrites every model beside this script

policy-mlp.onnx          64 -> 256 -> 256 -> 16 MLP (ReLU), dynamic batch: the model everything
                         is tuned and benchmarked on
policy-mlp-tiny.onnx     16 -> 32 -> 32 -> 4, small enough for a ConfigMap in examples
policy-mlp-large.onnx    256 -> 1024 -> 1024 -> 64, where threads and batching matter
policy-mlp.int8.onnx     policy-mlp quantized with onnxruntime's quantize_dynamic
broken/truncated.onnx    the first half of policy-mlp.onnx
broken/not-onnx.onnx     a text file
broken/unsupported-op.onnx   an operator from a domain ONNX Runtime does not know
broken/int64-input.onnx  an integer input, which the float-only engine refuses
broken/static-batch.onnx a fixed batch of 1, which the dynamic batcher cannot use
"""

import os
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

HERE = os.path.dirname(os.path.abspath(__file__))
OPSET = 17


def mlp(name, sizes, seed, batch="batch", input_type=TensorProto.FLOAT):
    """A ReLU MLP with He-initialised weights; input 'obs', output 'action'."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current = "obs"
    if input_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["obs"], ["obs_f"], to=TensorProto.FLOAT))
        current = "obs_f"
    layers = list(zip(sizes[:-1], sizes[1:]))
    for i, (fan_in, fan_out) in enumerate(layers):
        w = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = "action" if i == len(layers) - 1 else f"h{i}"
        gemm_out = out if i == len(layers) - 1 else f"z{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [gemm_out]))
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [gemm_out], [out]))
        current = out
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("obs", input_type, [batch, sizes[0]])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, [batch, sizes[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    model.producer_name = "policyserve/models/make_models.py"
    onnx.checker.check_model(model)
    return model


def save(model, *path):
    target = os.path.join(HERE, *path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    onnx.save(model, target)
    return target


def unsupported_op():
    node = helper.make_node("Teleport", ["obs"], ["action"], domain="com.example.nonexistent")
    graph = helper.make_graph(
        [node],
        "unsupported-op",
        [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("action", TensorProto.FLOAT, ["batch", 16])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.example.nonexistent", 1)],
    )
    model.ir_version = 8
    return model


def main():
    small = save(mlp("policy-mlp", [64, 256, 256, 16], seed=1), "policy-mlp.onnx")
    save(mlp("policy-mlp-tiny", [16, 32, 32, 4], seed=2), "policy-mlp-tiny.onnx")
    save(mlp("policy-mlp-large", [256, 1024, 1024, 64], seed=3), "policy-mlp-large.onnx")

    with tempfile.TemporaryDirectory() as tmp:
        quantized = os.path.join(tmp, "int8.onnx")
        quantize_dynamic(small, quantized, weight_type=QuantType.QInt8)
        save(onnx.load(quantized), "policy-mlp.int8.onnx")

    data = open(small, "rb").read()
    with open(os.path.join(HERE, "broken", "truncated.onnx"), "wb") as f:
        f.write(data[: len(data) // 2])
    with open(os.path.join(HERE, "broken", "not-onnx.onnx"), "w") as f:
        f.write("this is not an ONNX model\n")
    save(unsupported_op(), "broken", "unsupported-op.onnx")
    save(mlp("int64-input", [64, 16], seed=4, input_type=TensorProto.INT64), "broken", "int64-input.onnx")
    save(mlp("static-batch", [64, 16], seed=5, batch=1), "broken", "static-batch.onnx")

    for root, _, files in os.walk(HERE):
        for name in sorted(files):
            if name.endswith(".onnx"):
                path = os.path.join(root, name)
                print(f"{os.path.relpath(path, HERE):32} {os.path.getsize(path):>10} bytes")


if __name__ == "__main__":
    main()

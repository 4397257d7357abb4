#!/usr/bin/env python3
"""KServe's Python model server serving an ONNX model with onnxruntime: the peer a user would
otherwise deploy, for the serving load benchmark (docs/benchmarks.md).

A plain kserve.Model with default ModelServer settings (gRPC on 8081, REST on 8080, one
worker); the onnxruntime session uses the engine's settings (optimisation ALL, 1 intra-op
thread, 1 inter-op thread, sequential) unless --threads says otherwise.

    kserve_server.py --model_name policy --model_path models/policy-mlp.onnx [--threads 1]

Other flags go to kserve's own argument parser (--grpc_port, --http_port, ...).
"""
import argparse

import kserve
import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse


class OnnxPolicy(kserve.Model):
    def __init__(self, name, path, threads):
        super().__init__(name)
        self.path = path
        self.threads = threads
        self.session = None
        self.load()

    def load(self):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.ready = True
        return self.ready

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        x = payload.inputs[0].as_numpy().astype(np.float32, copy=False)
        (y,) = self.session.run([self.output_name], {self.input_name: x})
        output = InferOutput(name=self.output_name, shape=list(y.shape), datatype="FP32")
        output.set_data_from_numpy(y)
        return InferResponse(
            response_id=payload.id,
            model_name=self.name,
            infer_outputs=[output],
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser], add_help=False)
    parser.add_argument("--model_path", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args, _ = parser.parse_known_args()
    model = OnnxPolicy(args.model_name, args.model_path, args.threads)
    kserve.ModelServer().start([model])

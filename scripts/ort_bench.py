#!/usr/bin/env python3
"""onnxruntime side of `edge bench`: times ONNX models on inputs prepared by the edge.

The edge writes its preprocessed inputs (float32, little-endian, N x 3 x H x W) to a file,
so both runtimes see exactly the same numbers. This script runs every model on every
input for a number of rounds, one inference at a time, and prints one JSON object on
stdout: per model, the latency of each run in milliseconds and the outputs of the first
round (score, then the four box values), which the edge compares with tract's.
"""

import argparse
import json
import sys
import time

import numpy as np
import onnxruntime as ort


def parse_args():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--inputs", required=True, help="raw float32 file of N x 3 x H x W")
    p.add_argument("--shape", required=True, help="C,H,W of one input, e.g. 3,224,224")
    p.add_argument("--rounds", type=int, default=5, help="passes over all inputs")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads")
    p.add_argument("models", nargs="+", help="ONNX files")
    return p.parse_args()


def session(path, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def bench(path, inputs, rounds, threads):
    sess = session(path, threads)
    name = sess.get_inputs()[0].name
    order = [o.name for o in sess.get_outputs()]
    # Score first, then the box, whatever order the file lists them in.
    order.sort(key=lambda n: 0 if n == "score" else 1)
    for x in inputs[:2]:
        sess.run(order, {name: x})
    latencies, outputs = [], []
    for r in range(rounds):
        for x in inputs:
            t0 = time.perf_counter()
            res = sess.run(order, {name: x})
            latencies.append((time.perf_counter() - t0) * 1000.0)
            if r == 0:
                outputs.append([float(v) for a in res for v in np.ravel(a)])
    return {"model": path, "latencies_ms": latencies, "outputs": outputs}


def main():
    args = parse_args()
    c, h, w = (int(v) for v in args.shape.split(","))
    flat = np.fromfile(args.inputs, dtype="<f4")
    if flat.size % (c * h * w) != 0:
        sys.exit(f"{args.inputs}: {flat.size} floats is not a whole number of {c}x{h}x{w} inputs")
    inputs = flat.reshape(-1, 1, c, h, w)
    results = [bench(m, inputs, args.rounds, args.threads) for m in args.models]
    json.dump({"onnxruntime": ort.__version__, "results": results}, sys.stdout)


if __name__ == "__main__":
    main()

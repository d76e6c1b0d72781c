#!/usr/bin/env python3
"""Trains the example classifier shipped in models/digits/ and writes it as plain ONNX.

The data is scikit-learn's bundled 8x8 handwritten digits (1797 images, no download). A small
MLP (64 -> 32 ReLU -> 10) is trained with scikit-learn; its weights are written with the
`onnx` helper API as Flatten/Gemm/Relu/Gemm/Softmax only, so both ONNX Runtime and tract run
it. Prints the held-out accuracy (recorded in models/README.md).

    .cache/venv/bin/python models/train_digits.py models/digits
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier


def main(out_dir: str) -> None:
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)  # [n, 8, 8] in [0, 1]
    y = digits.target
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y
    )
    mlp = MLPClassifier(hidden_layer_sizes=(32,), activation="relu", max_iter=600, random_state=0)
    mlp.fit(x_train.reshape(len(x_train), -1), y_train)
    accuracy = mlp.score(x_test.reshape(len(x_test), -1), y_test)

    w1, w2 = (w.astype(np.float32) for w in mlp.coefs_)
    b1, b2 = (b.astype(np.float32) for b in mlp.intercepts_)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["image"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "w1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["h_relu"]),
            helper.make_node("Gemm", ["h_relu", "w2", "b2"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "digits_mlp",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(a, n) for a, n in [(w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2")]],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnxd-train-digits"
    )
    model.ir_version = 8
    helper.set_model_props(
        model,
        {"description": "8x8 grey digit classifier (scikit-learn digits), input in [0, 1]",
         "heldout_accuracy": f"{accuracy:.4f}"},
    )
    onnx.checker.check_model(model, full_check=True)
    os.makedirs(out_dir, exist_ok=True)
    onnx.save(model, os.path.join(out_dir, "model.onnx"))
    with open(os.path.join(out_dir, "labels.txt"), "w") as f:
        f.write("".join(f"{d}\n" for d in range(10)))
    # A sample request: the first held-out image, for `onnxd infer` and the README.
    sample = x_test[:1].reshape(1, 1, 8, 8)
    request = {
        "id": f"digit-{int(y_test[0])}",
        "inputs": [{"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32",
                    "data": [round(float(v), 4) for v in sample.ravel()]}],
    }
    import json
    with open(os.path.join(out_dir, "sample-request.json"), "w") as f:
        json.dump(request, f)
        f.write("\n")
    print(f"held-out accuracy {accuracy:.4f} on {len(y_test)} images; wrote {out_dir}/model.onnx")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "models/digits")

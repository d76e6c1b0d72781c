#!/usr/bin/env python3
"""The PyTorch route to onnxd: export a trained model with a dynamic batch axis, check it,
and drop it into the model repository. Not run in CI (PyTorch is ~3 GB); run it where your
model is trained:

    pip install torch torchvision onnx
    python models/export_pytorch.py --out /var/lib/onnxd/models/resnet18/1/model.onnx
    onnxd inspect /var/lib/onnxd/models/resnet18/1/model.onnx

Replace `build_model()` with your own trained module (load its state_dict).
"""
import argparse
import os

import onnx
import torch
import torchvision


def build_model() -> torch.nn.Module:
    # Your trained network goes here, e.g.:
    #   model = MyNet(); model.load_state_dict(torch.load("weights.pt", map_location="cpu"))
    return torchvision.models.resnet18(weights=torchvision.models.ResNet18_Weights.DEFAULT)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="model.onnx")
    parser.add_argument("--height", type=int, default=224)
    parser.add_argument("--width", type=int, default=224)
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args()

    model = build_model().eval()
    example = torch.randn(1, 3, args.height, args.width)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.onnx.export(
        model,
        (example,),
        args.out,
        input_names=["images"],
        output_names=["logits"],
        # A symbolic batch dimension lets onnxd batch requests and TensorRT build one
        # engine for a range of batch sizes.
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=args.opset,
        do_constant_folding=True,
    )
    onnx.checker.check_model(onnx.load(args.out), full_check=True)

    # The exported model must reproduce PyTorch's output (onnxruntime, if installed).
    try:
        import numpy as np
        import onnxruntime as ort

        session = ort.InferenceSession(args.out, providers=["CPUExecutionProvider"])
        batch = torch.randn(3, 3, args.height, args.width)
        expected = model(batch).detach().numpy()
        got = session.run(None, {"images": batch.numpy()})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
        print("onnxruntime reproduces PyTorch's output for a batch of 3")
    except ImportError:
        print("onnxruntime not installed: skipped the numerical check")
    print(f"wrote {args.out}; next: onnxd inspect {args.out}")


if __name__ == "__main__":
    main()

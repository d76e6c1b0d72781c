#!/usr/bin/env python3
"""The OpenCV-Python side of scripts/bench-preprocess.

    bench_preprocess.py frame OUT.jpg               writes the 1280x720 benchmark JPEG
    bench_preprocess.py compare FRAME.jpg CRITERION  times OpenCV on FRAME.jpg, reads the Rust
                                                      medians from CRITERION, prints the table
"""
import json
import os
import sys
import time

import cv2
import numpy as np
from PIL import Image

SIZE = 320
PAD = 114
RUST = {
    "total": "preprocess_jpeg_1280x720_letterbox_320_nchw_f32",
    "decode": "decode_jpeg_1280x720",
    "rest": "preprocess_rgb_1280x720_letterbox_320_nchw_f32",
}


def write_frame(path):
    """A photo-like frame: smooth gradients, flat shapes, mild sensor noise; JPEG q90, 4:2:0."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:720, 0:1280].astype(np.float64)
    img = np.stack([200 * x / 1279 + 30, 180 * y / 719 + 40, 128 + 90 * np.sin(x / 60) * np.cos(y / 45)], -1)
    for _ in range(12):
        x0, y0, w, h = rng.integers(0, 1280), rng.integers(0, 720), rng.integers(40, 300), rng.integers(40, 200)
        img[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, 3)
    img += rng.normal(0, 4, img.shape)
    Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB").save(path, quality=90, subsampling=2)


def letterbox_nchw(bgr):
    """cv2.resize INTER_LINEAR into the letterbox, pad, RGB, NCHW FP32 in [0, 1]."""
    h, w = bgr.shape[:2]
    r = min(SIZE / w, SIZE / h)
    nw, nh = int(w * r + 0.5), int(h * r + 0.5)
    resized = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    top, left = (SIZE - nh) // 2, (SIZE - nw) // 2
    padded = cv2.copyMakeBorder(resized, top, SIZE - nh - top, left, SIZE - nw - left,
                                cv2.BORDER_CONSTANT, value=(PAD, PAD, PAD))
    chw = padded[:, :, ::-1].transpose(2, 0, 1)
    return (chw.astype(np.float32) * np.float32(1 / 255))[None]


def median_seconds(fn, seconds=5.0):
    for _ in range(20):
        fn()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def compare(frame, criterion):
    cv2.setNumThreads(1)
    jpeg = np.frombuffer(open(frame, "rb").read(), np.uint8)
    bgr = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
    assert letterbox_nchw(bgr).shape == (1, 3, SIZE, SIZE)
    opencv = {
        "total": median_seconds(lambda: letterbox_nchw(cv2.imdecode(jpeg, cv2.IMREAD_COLOR))),
        "decode": median_seconds(lambda: cv2.imdecode(jpeg, cv2.IMREAD_COLOR)),
        "rest": median_seconds(lambda: letterbox_nchw(bgr)),
    }
    rust = {}
    for key, name in RUST.items():
        with open(os.path.join(criterion, name, "new", "estimates.json")) as f:
            rust[key] = json.load(f)["median"]["point_estimate"] * 1e-9
    print(f"## 1280x720 JPEG ({len(jpeg) // 1024} KiB, q90 4:2:0) -> 320x320 letterbox NCHW FP32, "
          f"per frame (median), one thread; OpenCV {cv2.__version__}")
    print("| step | onnxd (Rust) ms | OpenCV-Python ms | Rust / OpenCV |")
    print("|---|---|---|---|")
    labels = {"total": "whole step", "decode": "JPEG decode", "rest": "resize + pad + normalise"}
    for key, label in labels.items():
        print(f"| {label} | {rust[key] * 1e3:.3f} | {opencv[key] * 1e3:.3f} | {rust[key] / opencv[key]:.2f} |")


if __name__ == "__main__":
    if sys.argv[1] == "frame":
        write_frame(sys.argv[2])
    else:
        compare(sys.argv[2], sys.argv[3])

#!/usr/bin/env python3
"""Reference side of the speed comparison: the same glimpse bundle on ONNX Runtime with
Pillow preprocessing, the stack a user would otherwise pick. Reads the bundle's glimpse.*
metadata, so both sides preprocess the same way, and prints the figures `glimpse bench
-f json` prints (decode, preprocess, inference, total percentiles; throughput; peak RSS).

usage: reference.py MODEL.onnx IMAGE_DIR [--threads N] [--iterations N] [--warmup N]
needs: pip install onnxruntime pillow numpy   (kept out of CI: see benches/README.md)
"""
import argparse, io, json, os, resource, sys, time

import numpy as np
import onnx_meta  # noqa: E402  (benches/onnx_meta.py: reads metadata without the onnx package)
import onnxruntime as ort
from PIL import Image, ImageOps

EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif"}


def preprocess(img, meta):
    w, h = (int(v) for v in meta["glimpse.input_size"].split("x"))
    channels = meta.get("glimpse.channels", "rgb")
    img = img.convert("L" if channels == "gray" else "RGB")
    resize = meta.get("glimpse.resize", "stretch")
    if resize == "center-crop":
        short = int(meta.get("glimpse.resize_short", max(w, h)))
        iw, ih = img.size
        s = short / min(iw, ih)
        img = img.resize((max(1, round(iw * s)), max(1, round(ih * s))), Image.BILINEAR)
        iw, ih = img.size
        left, top = (iw - w) // 2, (ih - h) // 2
        img = img.crop((left, top, left + w, top + h))
    else:
        img = img.resize((w, h), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32)
    if x.ndim == 2:
        x = x[:, :, None]
    if channels == "bgr":
        x = x[:, :, ::-1]
    mean = np.array([float(v) for v in meta["glimpse.mean"].split(",")], dtype=np.float32)
    std = np.array([float(v) for v in meta["glimpse.std"].split(",")], dtype=np.float32)
    x = (x - mean) / std
    if meta.get("glimpse.layout", "nchw") == "nchw":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[None])


def pct(values):
    v = sorted(values)
    at = lambda q: v[round((len(v) - 1) * q)] * 1e3
    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "mean": sum(v) / len(v) * 1e3}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("images")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    a = ap.parse_args()
    meta = onnx_meta.metadata(a.model)
    files = sorted(
        os.path.join(a.images, f) for f in os.listdir(a.images)
        if os.path.splitext(f)[1].lower() in EXTS
    )
    data = [(f, open(f, "rb").read()) for f in files]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    opts.inter_op_num_threads = 1
    t0 = time.perf_counter()
    sess = ort.InferenceSession(a.model, opts, providers=["CPUExecutionProvider"])
    load = time.perf_counter() - t0
    name = sess.get_inputs()[0].name

    def one(b):
        t0 = time.perf_counter()
        img = ImageOps.exif_transpose(Image.open(io.BytesIO(b)))
        img.load()
        t1 = time.perf_counter()
        x = preprocess(img, meta)
        t2 = time.perf_counter()
        out = sess.run(None, {name: x})[0]
        t3 = time.perf_counter()
        return (t1 - t0, t2 - t1, t3 - t2), int(np.argmax(out))

    first = one(data[0][1])[0][2]
    for _ in range(a.warmup):
        for _, b in data:
            one(b)
    samples, top1 = [], {}
    t0 = time.perf_counter()
    for _ in range(a.iterations):
        for f, b in data:
            s, k = one(b)
            samples.append(s)
            top1[f] = k
    wall = time.perf_counter() - t0
    print(json.dumps({
        "runtime": f"onnxruntime {ort.__version__} + Pillow",
        "model": a.model, "images": len(data), "threads": a.threads,
        "iterations": a.iterations, "load_ms": load * 1e3, "first_inference_ms": first * 1e3,
        "decode_ms": pct([s[0] for s in samples]),
        "preprocess_ms": pct([s[1] for s in samples]),
        "inference_ms": pct([s[2] for s in samples]),
        "total_ms": pct([sum(s) for s in samples]),
        "images_per_second": len(samples) / wall,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "top1": top1,
    }, indent=1))


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""PyTorch side of the trainer comparison: the network `glimpse-train bench` times (the
small CNN of trainer/src/model.rs, layer for layer), trained the same way (AdamW, weight
decay 5e-4, lr 2e-3, cross-entropy, dropout 0.25, batch norm) on a batch of real
Fashion-MNIST images, printing the same JSON figures.

usage: torch_train.py IDX_DIR [--width W] [--batch-size N] [--warmup N] [--steps N]
                      [--threads N]
needs: pip install torch numpy   (~2.8 GB with its CUDA libraries: kept out of CI)
"""
import argparse, gzip, json, os, sys, time

import numpy as np
import torch
from torch import nn


def ch(c, width):
    return max(4, round(c * width))


def small_cnn(in_ch, side, classes, width, dropout=0.25):
    """trainer/src/model.rs `Arch::SmallCnn`: (conv3x3-BN-ReLU x2, maxpool2) stages until
    the map is at most 8x8, doubling channels; flatten, dense, ReLU, dense."""
    layers, c_in, c = [], in_ch, ch(32, width)
    for _ in range(4):
        for a, b in [(c_in, c), (c, c)]:
            layers += [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU()]
        layers.append(nn.MaxPool2d(2))
        side, c_in = side // 2, c
        c *= 2
        if side <= 8:
            break
    hidden = ch(128, width)
    return nn.Sequential(
        *layers, nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in * side * side, hidden),
        nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, classes))


def read_idx(path):
    with gzip.open(path) if path.endswith(".gz") else open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def find(folder, stem):
    for name in sorted(os.listdir(folder)):
        if name.startswith(stem):
            return os.path.join(folder, name)
    sys.exit(f"{folder}: no {stem}* file")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(42)
    images = read_idx(find(a.data, "train-images"))[: a.batch_size]
    labels = read_idx(find(a.data, "train-labels"))[: a.batch_size]
    n, h, w = images.shape
    x = torch.from_numpy((images.astype(np.float32) - 127.5) / 127.5).reshape(n, 1, h, w)
    y = torch.from_numpy(labels.astype(np.int64))
    net = small_cnn(1, h, 10, a.width)
    net.train()
    optim = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        optim.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.item()
        loss.backward()
        optim.step()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    ms = sorted(t * 1e3 for t in times)
    at = lambda q: ms[round((len(ms) - 1) * q)]
    total = sum(times)
    print(json.dumps({
        "framework": f"PyTorch {torch.__version__} (CPU)",
        "arch": "small-cnn", "width": a.width, "input": [n, 1, h, w], "classes": 10,
        "threads": torch.get_num_threads(), "steps": a.steps,
        "step_ms": {"p50": at(0.5), "p90": at(0.9), "min": ms[0]},
        "steps_per_second": a.steps / total,
        "images_per_second": a.steps * n / total,
    }, indent=1))


if __name__ == "__main__":
    main()

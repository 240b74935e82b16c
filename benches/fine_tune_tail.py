#!/usr/bin/env python3
"""Does fine-tuning EfficientNet-Lite0's last blocks pay on few-shot Fashion-MNIST? (issue 25 part 1)

A measurement to decide the design of `--fine-tune N` before building it in burn: the
BENCHMARKS.md transfer protocol (100 training images per class, 28x28 grey stretched to
224x224 RGB, the backbone's mean and std, the full 10,000-image test set), with the
backbone run by ONNX Runtime up to a cut and the tail above it trained in numpy (forward
and backward written out: 1x1 convs, depthwise convs, ReLU6, residual adds, global average
pool, a linear head), AdamW with the backbone's layers at a scaled learning rate, cosine
decay, the best validation epoch kept, the same seeded subset for every row. Rows:

  0  the linear head on the frozen 1280 pooled features (what `--backbone` does)
  1  head.conv (320 -> 1280, 1x1) trained with the head, cut after block 15
  2  block 15 (expand, depthwise 3x3, project) too, cut after block 14
  3  block 14 (depthwise 5x5, residual) too, cut after block 13

Every tail is first checked to compute, with the backbone's weights, the pooled features
ONNX Runtime computed (within 1e-3).

needs: numpy, onnx, onnxruntime, pillow; Debian's dataset-fashion-mnist
usage: fine_tune_tail.py [--model models/efficientnet-lite0.onnx] [--epochs 15] [--seed 1]
                         [--scales 0.1 0.3] [--rows 0 1 2 3] [--views K]
"""
import argparse, gzip, os, sys, time

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

FM = "/usr/share/datasets/fashion-mnist"
CUT_N1 = "_blocks.15.project:89"    # block 15's output, 320 x 7 x 7
CUT_N2 = "_blocks.14.residual:84"   # block 14's output, 192 x 7 x 7


def idx(name):
    with gzip.open(os.path.join(FM, name)) as f:
        data = f.read()
    if "labels" in name:
        return np.frombuffer(data, np.uint8, offset=8)
    return np.frombuffer(data, np.uint8, offset=16).reshape(-1, 28, 28)


def preprocess(images, rng=None):
    """28x28 grey -> 224x224 RGB stretched, (x - 127) / 128, NCHW. With `rng`, an augmented
    view: a random crop of 80-100% of the area and a random horizontal flip."""
    out = np.empty((len(images), 3, 224, 224), np.float32)
    for i, im in enumerate(images):
        pic = Image.fromarray(im)
        if rng is not None:
            side = int(round(28 * np.sqrt(rng.uniform(0.8, 1.0))))
            x, y = rng.integers(0, 28 - side + 1, 2)
            pic = pic.crop((x, y, x + side, y + side))
            if rng.random() < 0.5:
                pic = pic.transpose(Image.FLIP_LEFT_RIGHT)
        big = np.asarray(pic.resize((224, 224), Image.BILINEAR), np.float32)
        out[i] = (big - 127.0) / 128.0
    return out


def session(model_path, outputs):
    m = onnx.load(model_path)
    for name in outputs:
        if name not in [o.name for o in m.graph.output]:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    so = ort.SessionOptions()
    so.intra_op_num_threads = os.cpu_count()
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]), m


def activations(sess, images, names, rng=None, batch=50):
    outs = {n: [] for n in names}
    for s in range(0, len(images), batch):
        res = sess.run(names, {"input": preprocess(images[s:s + batch], rng)})
        for n, r in zip(names, res):
            outs[n].append(r)
    return {n: np.concatenate(v) for n, v in outs.items()}


def weights(model):
    init = {i.name: onnx.numpy_helper.to_array(i).astype(np.float32) for i in model.graph.initializer}
    return init


class AdamW:
    def __init__(self, params, lr, wd=1e-4):
        self.p, self.lr, self.wd, self.t = params, lr, wd, 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, grads, lr_scale):
        self.t += 1
        for k, g in grads.items():
            lr = self.lr * lr_scale[k]
            self.m[k] = 0.9 * self.m[k] + 0.1 * g
            self.v[k] = 0.999 * self.v[k] + 0.001 * g * g
            mh, vh = self.m[k] / (1 - 0.9 ** self.t), self.v[k] / (1 - 0.999 ** self.t)
            self.p[k] -= lr * (mh / (np.sqrt(vh) + 1e-8) + self.wd * self.p[k])


def conv1x1(x, w, b):          # x [n, c, hw], w [o, c]
    return np.einsum("oc,nch->noh", w, x, optimize=True) + b[None, :, None]


def dwconv(x, w, b, hw):        # x [n, c, h*w], w [c, k, k], stride 1, "same" padding
    n, c, _ = x.shape
    k, r = w.shape[1], w.shape[1] // 2
    xp = np.pad(x.reshape(n, c, hw, hw), ((0, 0), (0, 0), (r, r), (r, r)))
    out = np.zeros((n, c, hw, hw), np.float32)
    for i in range(k):
        for j in range(k):
            out += xp[:, :, i:i + hw, j:j + hw] * w[None, :, i, j, None, None]
    return (out + b[None, :, None, None]).reshape(n, c, hw * hw), xp


def dwconv_back(g, xp, w, hw):
    n, c, _ = g.shape
    k, r = w.shape[1], w.shape[1] // 2
    g4 = g.reshape(n, c, hw, hw)
    gw, gxp = np.empty_like(w), np.zeros_like(xp)
    for i in range(k):
        for j in range(k):
            gw[:, i, j] = np.einsum("nchw,nchw->c", g4, xp[:, :, i:i + hw, j:j + hw], optimize=True)
            gxp[:, :, i:i + hw, j:j + hw] += g4 * w[None, :, i, j, None, None]
    return gxp[:, :, r:r + hw, r:r + hw].reshape(n, c, hw * hw), gw, g4.sum((0, 2, 3))


relu6_mask = lambda pre: (pre > 0) & (pre < 6)


def block_forward(p, i, x):
    """MBConv block i: 1x1 expand, ReLU6, depthwise, ReLU6, 1x1 project (+ input)."""
    c = {"in": x}
    c["e"] = conv1x1(x, p[f"{i}.e.w"], p[f"{i}.e.b"])
    c["e6"] = np.clip(c["e"], 0, 6)
    c["d"], c["xp"] = dwconv(c["e6"], p[f"{i}.d.w"], p[f"{i}.d.b"], 7)
    c["d6"] = np.clip(c["d"], 0, 6)
    out = conv1x1(c["d6"], p[f"{i}.p.w"], p[f"{i}.p.b"])
    return (out + x if out.shape == x.shape else out), c


def block_backward(p, i, c, gout, g):
    gd6 = gout
    g[f"{i}.p.w"] = np.einsum("noh,nch->oc", gd6, c["d6"], optimize=True)
    g[f"{i}.p.b"] = gd6.sum((0, 2))
    gd = np.einsum("oc,noh->nch", p[f"{i}.p.w"], gd6, optimize=True) * relu6_mask(c["d"])
    ge6, g[f"{i}.d.w"], g[f"{i}.d.b"] = dwconv_back(gd, c["xp"], p[f"{i}.d.w"], 7)
    ge = ge6 * relu6_mask(c["e"])
    g[f"{i}.e.w"] = np.einsum("noh,nch->oc", ge, c["in"], optimize=True)
    g[f"{i}.e.b"] = ge.sum((0, 2))
    gin = np.einsum("oc,noh->nch", p[f"{i}.e.w"], ge, optimize=True)
    return gin + gout if gout.shape == gin.shape else gin


def forward(p, x, blocks):
    """The tail on cached activations x [n, c, 49]: `blocks` MBConv blocks, then (unless
    the tail is the head alone, x being the pooled features) head.conv, ReLU6, the pool
    and the linear head. Returns the logits and what backward needs."""
    cache = {"blocks": []}
    for i in blocks:
        x, c = block_forward(p, i, x)
        cache["blocks"].append(c)
    cache["x"] = x
    if "h.w" in p:
        cache["hc"] = conv1x1(x, p["h.w"], p["h.b"])
        feat = np.clip(cache["hc"], 0, 6).mean(2)
    else:
        feat = x
    cache["feat"] = feat
    return feat @ p["fc.w"].T + p["fc.b"], cache


def backward(p, cache, glog, blocks):
    g = {"fc.w": glog.T @ cache["feat"], "fc.b": glog.sum(0)}
    if "h.w" not in p:
        return g
    gfeat = glog @ p["fc.w"]
    ghc = np.repeat(gfeat[:, :, None] / 49.0, 49, 2) * relu6_mask(cache["hc"])
    g["h.w"] = np.einsum("noh,nch->oc", ghc, cache["x"], optimize=True)
    g["h.b"] = ghc.sum((0, 2))
    gx = np.einsum("oc,noh->nch", p["h.w"], ghc, optimize=True) if blocks else None
    for i, c in zip(reversed(blocks), reversed(cache["blocks"])):
        gx = block_backward(p, i, c, gx, g)
    return g


def train(p, views, ys, xv, yv, xt, yt, blocks, epochs, lr, tail_scale, seed):
    """`views`: the training activations, plain first, then any augmented views; each
    epoch takes one of them per image at random."""
    rng = np.random.default_rng(seed)
    xs = views[0]
    scale = {k: (1.0 if k.startswith("fc.") else tail_scale) for k in p}
    opt = AdamW(p, lr)
    steps, total = 0, epochs * int(np.ceil(len(xs) / 32))
    best, best_val = None, -1.0
    for ep in range(epochs):
        order = rng.permutation(len(xs))
        for s in range(0, len(xs), 32):
            b = order[s:s + 32]
            pick = rng.integers(0, len(views), len(b))
            x = np.stack([views[v][i] for v, i in zip(pick, b)])
            logits, cache = forward(p, x, blocks)
            prob = np.exp(logits - logits.max(1, keepdims=True))
            prob /= prob.sum(1, keepdims=True)
            prob[np.arange(len(b)), ys[b]] -= 1.0
            cos = 0.5 * (1 + np.cos(np.pi * steps / total))
            opt.step(backward(p, cache, prob / len(b), blocks), {k: v * cos for k, v in scale.items()})
            steps += 1
        val = accuracy(p, xv, yv, blocks)
        if val >= best_val:
            best_val, best = val, {k: v.copy() for k, v in p.items()}
    return accuracy(best, xt, yt, blocks), best_val


def accuracy(p, x, y, blocks):
    hits = 0
    for s in range(0, len(x), 500):
        logits, _ = forward(p, x[s:s + 500], blocks)
        hits += (logits.argmax(1) == y[s:s + 500]).sum()
    return hits / len(x)


# The rows: how many blocks below head.conv are trained, and the tensor cut at (cached).
ROWS = [(None, "head.pool.flatten:93"), (0, "_blocks.15.project:89"),
        (1, "_blocks.14.residual:84"), (2, "_blocks.13.residual:78")]


def tail_params(w, blocks, seed):
    """The tail's parameters: the backbone's own weights above the cut, a fresh head."""
    rng = np.random.default_rng(seed)
    p = {"fc.w": (rng.standard_normal((10, 1280)) * 0.01).astype(np.float32), "fc.b": np.zeros(10, np.float32)}
    if blocks is None:
        return p
    p.update({"h.w": w["head.conv.weight"][:, :, 0, 0].copy(), "h.b": w["head.conv.bias"].copy()})
    for i in blocks:
        b = f"_blocks.{i}"
        p.update({f"{i}.e.w": w[f"{b}.expand.weight"][:, :, 0, 0].copy(), f"{i}.e.b": w[f"{b}.expand.bias"].copy(),
                  f"{i}.d.w": w[f"{b}.depthwise.weight"][:, 0].copy(), f"{i}.d.b": w[f"{b}.depthwise.bias"].copy(),
                  f"{i}.p.w": w[f"{b}.project.weight"][:, :, 0, 0].copy(), f"{i}.p.b": w[f"{b}.project.bias"].copy()})
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(os.path.dirname(__file__), "../models/efficientnet-lite0.onnx"))
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scales", type=float, nargs="+", default=[0.1, 0.3],
                    help="learning-rate scales of the backbone's layers against the head's")
    ap.add_argument("--views", type=int, default=0,
                    help="augmented views of each training image besides the plain one")
    ap.add_argument("--rows", type=int, nargs="+", default=None,
                    help="which rows to run (0: head, 1: head.conv, 2: +block 15, 3: +block 14)")
    args = ap.parse_args()
    tr_x, tr_y = idx("train-images-idx3-ubyte.gz"), idx("train-labels-idx1-ubyte.gz")
    te_x, te_y = idx("t10k-images-idx3-ubyte.gz"), idx("t10k-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(args.seed)
    pick = np.concatenate([rng.permutation(np.flatnonzero(tr_y == c))[:111] for c in range(10)])
    train_i = np.concatenate([pick[c * 111:c * 111 + 100] for c in range(10)])
    val_i = np.concatenate([pick[c * 111 + 100:(c + 1) * 111] for c in range(10)])

    names = [cut for _, cut in ROWS]
    sess, model = session(args.model, names)
    t0 = time.time()
    a_tr = activations(sess, tr_x[train_i], names)
    view_rng = np.random.default_rng(args.seed + 1)
    a_views = [activations(sess, tr_x[train_i], names, view_rng) for _ in range(args.views)]
    a_va = activations(sess, tr_x[val_i], names)
    a_te = activations(sess, te_x, names)
    print(f"activations: {len(train_i) * (1 + args.views) + len(val_i) + len(te_x)} images in {time.time() - t0:.0f} s", file=sys.stderr)
    w = weights(model)
    flat = lambda a, n: a[n].reshape(len(a[n]), a[n].shape[1], -1)
    ytr, yva, yte = tr_y[train_i].astype(int), tr_y[val_i].astype(int), te_y.astype(int)
    print("| trained above the cut | cut (cached) | tail lr scale | val | test top-1 | train s |\n|---|---|---:|---:|---:|---:|")
    for row, (n_blocks, cut) in enumerate(ROWS):
        if args.rows is not None and row not in args.rows:
            continue
        blocks = None if n_blocks is None else list(range(16 - n_blocks, 16))
        label = "linear head" if blocks is None else " + ".join([f"block {i}" for i in blocks] + ["head.conv", "head"])
        for tail_scale in args.scales if blocks is not None else [1.0]:
            p = tail_params(w, blocks, args.seed)
            xs, xv, xt = (a[cut] if blocks is None else flat(a, cut) for a in (a_tr, a_va, a_te))
            # The tail as written here must compute what ONNX Runtime computed above it.
            feat = forward(p, xs[:8], blocks or [])[1]["feat"]
            drift = np.abs(feat - a_tr["head.pool.flatten:93"][:8]).max()
            assert drift < 1e-3, f"the numpy tail differs from ONNX Runtime by {drift}"
            t0 = time.time()
            views = [xs] + [a[cut] if blocks is None else flat(a, cut) for a in a_views]
            test, val = train(p, views, ytr, xv, yva, xt, yte, blocks or [], args.epochs, 1e-3, tail_scale, args.seed)
            print(f"| {label} | `{cut}` | {tail_scale if blocks is not None else '-'} | {val * 100:.2f}% | {test * 100:.2f}% | {time.time() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()

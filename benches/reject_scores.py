#!/usr/bin/env python3
"""Which "none of the above" score separates a Fashion-MNIST model's own kind of image from
kinds it never saw: AUROC of five scores, Fashion-MNIST's 10,000 test images against three
unseen sets (scikit-image's 200 LFW faces, every third of darknet's label glyphs, and 20
random square crops of each darknet and scikit-image photo), all made 28x28 grey.

Scores from the class outputs: the maximum probability, the margin between the top two,
the maximum logit, the energy (log-sum-exp of the logits). From the features the final
layer reads (`hidden.relu:13`, the small CNN's): the cosine to the nearest class mean,
the Euclidean and the Mahalanobis distance (shared covariance) to it, and the cosine to
the nearest of k spherical k-means prototypes per class (what glimpse-train stores, k = 8),
all from the first 6,000 training images. Deterministic (seeded crops and k-means).

usage: reject_scores.py [MODEL.onnx]   (default models/fashion-mnist.onnx; needs numpy,
       Pillow, onnx, onnxruntime and scikit-learn: pip install them in a venv)
       reject_scores.py --write-unseen DIR   (needs Pillow and numpy only)
           writes the unseen images as glimpse's tests do (glimpse_e2e::unseen_images):
           DIR/faces (the 200 LFW faces as 25x25 PNGs), DIR/glyphs (every third darknet
           label glyph), DIR/photos (every darknet .jpg and scikit-image .jpg/.png), whole,
           for `glimpse-train train --negatives DIR`
"""
import glob, gzip, os, sys

import shutil

import numpy as np
from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FM = "/usr/share/datasets/fashion-mnist"
SKIMAGE = os.path.join(
    os.environ.get("GLIMPSE_TESTDATA", os.path.expanduser("~/.cache/glimpse-testdata")),
    "skimage", "data")
FEATURES = "hidden.relu:13"


def idx(name, offset=16, shape=(-1, 28, 28)):
    data = gzip.open(os.path.join(FM, name)).read()
    return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


def grey28(img):
    return np.asarray(img.convert("L").resize((28, 28), Image.BILINEAR), np.float32)


def unseen_sets():
    rng = np.random.default_rng(0)
    faces = np.load(os.path.join(SKIMAGE, "lfw_subset.npy"))
    faces = np.stack([grey28(Image.fromarray((f * 255).astype(np.uint8))) for f in faces])
    glyphs = sorted(glob.glob("/usr/share/darknet/data/labels/*.png"))[::3]
    glyphs = np.stack([grey28(Image.open(p)) for p in glyphs])
    crops = []
    for p in glob.glob("/usr/share/darknet/data/*.jpg") + glob.glob(os.path.join(SKIMAGE, "*.png")):
        im = Image.open(p).convert("L")
        w, h = im.size
        for _ in range(20):
            s = int(min(w, h) * rng.uniform(0.3, 1.0))
            x, y = rng.integers(0, w - s + 1), rng.integers(0, h - s + 1)
            crops.append(grey28(im.crop((x, y, x + s, y + s))))
    return [("faces", faces), ("glyphs", glyphs), ("photos", np.stack(crops))]


def write_unseen(out):
    for d in ("faces", "glyphs", "photos"):
        os.makedirs(os.path.join(out, d), exist_ok=True)
    for i, f in enumerate(np.load(os.path.join(SKIMAGE, "lfw_subset.npy"))):
        face = np.clip(np.round(f * 255), 0, 255).astype(np.uint8)
        Image.fromarray(face).save(os.path.join(out, "faces", f"{i}.png"))
    for p in sorted(glob.glob("/usr/share/darknet/data/labels/*"))[::3]:
        shutil.copy(p, os.path.join(out, "glyphs"))
    for folder in ("/usr/share/darknet/data", SKIMAGE):
        for p in glob.glob(os.path.join(folder, "*.jpg")) + glob.glob(os.path.join(folder, "*.png")):
            shutil.copy(p, os.path.join(out, "photos"))


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--write-unseen":
        return write_unseen(sys.argv[2])
    import onnx
    import onnxruntime as ort
    from sklearn.cluster import KMeans
    from sklearn.metrics import roc_auc_score
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "models", "fashion-mnist.onnx")
    model = onnx.load(path)
    meta = {p.key: p.value for p in model.metadata_props}
    mean, std = float(meta["glimpse.mean"]), float(meta["glimpse.std"])
    model.graph.output.append(onnx.helper.make_tensor_value_info(FEATURES, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString())

    def run(x):
        logits, feats = session.run(None, {"input": ((x - mean) / std)[:, None]})[:2]
        return logits, feats

    train = idx("train-images-idx3-ubyte.gz")[:6000].astype(np.float32)
    labels = idx("train-labels-idx1-ubyte.gz", 8, (-1,))[:6000]
    feats = run(train)[1]
    means = np.stack([feats[labels == c].mean(0) for c in range(10)])
    centred = feats - means[labels]
    precision = np.linalg.inv(centred.T @ centred / len(centred) + 1e-3 * np.eye(feats.shape[1]))
    unit_means = means / np.linalg.norm(means, axis=1, keepdims=True)
    unit_feats = feats / (np.linalg.norm(feats, axis=1, keepdims=True) + 1e-12)

    def prototypes(k):
        # k-means on unit vectors, centres renormalized: close to glimpse-train's
        # spherical k-means (not the same seeding).
        centres = [KMeans(k, n_init=3, random_state=0).fit(unit_feats[labels == c]).cluster_centers_ for c in range(10)]
        c = np.concatenate(centres)
        return c / np.linalg.norm(c, axis=1, keepdims=True)

    protos = {k: prototypes(k) for k in (4, 8, 16)}

    def scores(x):
        logits, f = run(x)
        m = logits.max(1, keepdims=True)
        e = np.exp(logits - m)
        p = e / e.sum(1, keepdims=True)
        top2 = np.sort(p, 1)[:, -2:]
        d = f[:, None, :] - means[None]
        unit_f = f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-12)
        return {
            "max probability": p.max(1),
            "margin": top2[:, 1] - top2[:, 0],
            "max logit": logits.max(1),
            "energy": m[:, 0] + np.log(e.sum(1)),
            "cosine to class mean": (unit_f @ unit_means.T).max(1),
            **{f"cosine to {k} prototypes per class": (unit_f @ c.T).max(1) for k, c in protos.items()},
            "euclidean to class mean": -(d ** 2).sum(2).min(1),
            "mahalanobis to class mean": -np.einsum("nkd,de,nke->nk", d, precision, d).min(1),
        }

    known = scores(idx("t10k-images-idx3-ubyte.gz").astype(np.float32))
    sets = unseen_sets()
    print("| score | " + " | ".join(f"{n} ({len(x)})" for n, x in sets) + " |")
    print("|---|" + "---:|" * len(sets))
    results = [scores(x) for _, x in sets]
    for name in known:
        row = []
        for r in results:
            y = np.r_[np.ones(len(known[name])), np.zeros(len(r[name]))]
            row.append(f"{roc_auc_score(y, np.r_[known[name], r[name]]):.3f}")
        print(f"| {name} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()

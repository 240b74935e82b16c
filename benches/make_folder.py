#!/usr/bin/env python3
"""Makes a folder of N real-photo JPEGs for folder throughput benchmarks: random crops,
scales and flips of the photos in samples/ and Debian's darknet package (data/*.jpg),
saved at camera-like sizes and JPEG qualities. Deterministic (seeded), so two runs make
the same files.

usage: make_folder.py OUT_DIR [N]      (default N = 1000; needs Pillow)
"""
import glob, os, random, sys

from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SOURCES = sorted(
    glob.glob(os.path.join(ROOT, "samples", "*.png"))
    + glob.glob(os.path.join(ROOT, "samples", "*.jpg"))
    + glob.glob("/usr/share/darknet/data/*.jpg")
)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    photos = [Image.open(p).convert("RGB") for p in SOURCES]
    if not any("darknet" in p for p in SOURCES):
        print("make_folder.py: darknet photos not found (apt install darknet); "
              "using samples/ only", file=sys.stderr)
    os.makedirs(out, exist_ok=True)
    rng = random.Random(1000)
    for i in range(n):
        src = photos[i % len(photos)]
        w, h = src.size
        # A crop of 60-100% of each side, somewhere in the photo.
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        img = src.crop((x, y, x + cw, y + ch))
        # Long side 320-1280 px: thumbnails to phone-camera previews.
        s = rng.randint(320, 1280) / max(cw, ch)
        img = img.resize((max(1, round(cw * s)), max(1, round(ch * s))), Image.BILINEAR)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        img.save(os.path.join(out, f"{i:05d}.jpg"), quality=rng.randint(75, 95))
    print(f"{out}: {n} JPEGs from {len(photos)} photos")


if __name__ == "__main__":
    main()

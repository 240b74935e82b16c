#!/usr/bin/env python3
"""Whole-folder comparison, end to end as a user runs it: `glimpse classify DIR -j N`
against the ONNX Runtime + Pillow reference (reference.py, one pass, N intra-op threads),
each a fresh process timed from start to exit (start-up and model load included), with
its peak RSS, and top-1 agreement between the two on every image.

usage: folder.py MODEL.onnx DIR [--threads N] [--glimpse BIN] [--python PY]
(benches/make_folder.py makes a folder of 1,000 real-photo JPEGs.)
"""
import argparse, json, os, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))


def timed(cmd, env=None):
    """Runs cmd; returns (stdout, wall seconds, peak RSS MiB) of that one process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd[0]} failed ({os.waitstatus_to_exitcode(status)})")
    return out.decode(), wall, usage.ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("images")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--glimpse", default=os.path.join(HERE, "..", "target/release/glimpse"))
    ap.add_argument("--python", default=sys.executable)
    a = ap.parse_args()

    out, g_wall, g_rss = timed([a.glimpse, "classify", a.images, "--model", a.model,
                                "--jobs", str(a.threads), "--top-k", "1", "-f", "json"])
    ours = {}
    for line in out.splitlines():
        r = json.loads(line)
        ours[os.path.normpath(r["path"])] = r["top"][0]["index"]
    env = dict(os.environ, PYTHONPATH=HERE)
    out, r_wall, r_rss = timed([a.python, os.path.join(HERE, "reference.py"), a.model,
                                a.images, "--threads", str(a.threads), "--iterations", "1",
                                "--warmup", "0"], env)
    ref = {os.path.normpath(k): v for k, v in json.loads(out)["top1"].items()}
    n = len(ref)
    same = sum(1 for k, v in ref.items() if ours.get(k) == v)
    print(f"{a.model} on {a.images}: {n} images, {a.threads} thread(s) each side; "
          f"glimpse classify --jobs {a.threads} vs ONNX Runtime + Pillow "
          f"({a.threads} intra-op threads), fresh processes, load included")
    print("| figure | glimpse | reference | ratio |\n|---|---:|---:|---:|")
    print(f"| wall time | {g_wall:.2f} s | {r_wall:.2f} s | {g_wall / r_wall:.2f} |")
    print(f"| throughput | {len(ours) / g_wall:.1f} img/s | {n / r_wall:.1f} img/s "
          f"| {(len(ours) / g_wall) / (n / r_wall):.2f} |")
    print(f"| peak RSS | {g_rss:.0f} MiB | {r_rss:.0f} MiB | {g_rss / r_rss:.2f} |")
    print(f"| same top-1 | {same} of {n} | | |")
    if len(ours) != n:
        sys.exit(f"glimpse classified {len(ours)} images, the reference {n}")


if __name__ == "__main__":
    main()

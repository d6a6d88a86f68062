"""Benchmark: `autoorgan_plan_and_preprocess` against `nnUNetv2_plan_and_preprocess -c 3d_fullres` on the same
copy of OpenKBP (../shared/data/Dataset501_OpenKBP), in the same run. Prints wall time, peak memory (sum of the
resident memory of the whole process tree, sampled every 0.1 s) and the ratios ours / nnU-Net.

    python bench/preprocess.py [--np 2] [--cases N] [--data ../shared/data/Dataset501_OpenKBP]

Both start from nothing (no fingerprint) and both check the dataset's integrity (nnU-Net with
--verify_dataset_integrity; ours does it on a first run). Target: ratio <= 1.1.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "Dataset501_OpenKBP"


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total


def measure(cmd: list[str], env: dict) -> tuple[float, int]:
    """Wall seconds and peak tree RSS (bytes) of a command; raises if it fails."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.1)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - start
    t.join()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{out[-3000:]}")
    return wall, peak[0]


def link_dataset(src: Path, dst: Path, cases: int | None) -> int:
    ds = json.loads((src / "dataset.json").read_text())
    names = sorted(p.name[: -len("_0000.nii.gz")] for p in (src / "imagesTr").glob("*_0000.nii.gz"))
    names = names[:cases] if cases else names
    for sub in ("imagesTr", "labelsTr"):
        (dst / sub).mkdir(parents=True)
    for n in names:
        (dst / "imagesTr" / f"{n}_0000.nii.gz").symlink_to(src / "imagesTr" / f"{n}_0000.nii.gz")
        (dst / "labelsTr" / f"{n}.nii.gz").symlink_to(src / "labelsTr" / f"{n}.nii.gz")
    ds["numTraining"] = len(names)
    (dst / "dataset.json").write_text(json.dumps(ds))
    if (src / "contoured.json").is_file():
        c = json.loads((src / "contoured.json").read_text())["contoured"]
        (dst / "contoured.json").write_text(json.dumps({"contoured": {n: c[n] for n in names if n in c}}))
    return len(names)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--np", type=int, default=2, help="worker processes for both tools (default 2)")
    p.add_argument("--cases", type=int, default=None, help="use only the first N cases (default all)")
    args = p.parse_args()
    if not args.data.is_dir():
        print(f"skipped: {args.data} is absent (real data lives in ../shared/data)")
        return
    bindir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="bench_pp_") as tmp:
        tmp = Path(tmp)
        n = link_dataset(args.data, tmp / "src" / "Dataset501_OpenKBP", args.cases)
        # ours: the partial-annotation dataset.json is made by our converter (linking, no copy)
        env_ours = {**os.environ, "autoorgan_raw": str(tmp / "ours_raw"),
                    "autoorgan_preprocessed": str(tmp / "ours_pre"), "autoorgan_results": str(tmp / "ours_res")}
        subprocess.run([str(bindir / "autoorgan_convert_contoured_json"), "-i", str(tmp / "src" /
                                                                                  "Dataset501_OpenKBP")],
                       env=env_ours, check=True, capture_output=True)
        nn_raw = tmp / "nn_raw"
        nn_raw.mkdir()
        (nn_raw / "Dataset501_OpenKBP").symlink_to(tmp / "src" / "Dataset501_OpenKBP")
        env_nn = {**os.environ, "nnUNet_raw": str(nn_raw), "nnUNet_preprocessed": str(tmp / "nn_pre"),
                  "nnUNet_results": str(tmp / "nn_res")}
        nn_cmd = [str(bindir / "nnUNetv2_plan_and_preprocess"), "-d", "501", "-c", "3d_fullres", "-np",
                  str(args.np), "-npfp", str(args.np), "--verify_dataset_integrity"]
        ours_cmd = [str(bindir / "autoorgan_plan_and_preprocess"), "-d", "501", "-np", str(args.np), "--quiet"]
        print(f"OpenKBP, {n} cases, {args.np} worker processes, {os.cpu_count()} cores")
        t_nn, m_nn = measure(nn_cmd, env_nn)
        print(f"nnU-Net  (nnUNetv2_plan_and_preprocess -c 3d_fullres --verify_dataset_integrity): "
              f"{t_nn:7.1f} s  peak {m_nn / 2**30:5.2f} GiB")
        t_ours, m_ours = measure(ours_cmd, env_ours)
        print(f"autoorgan (autoorgan_plan_and_preprocess, organdetr + ccq, integrity check):      "
              f"{t_ours:7.1f} s  peak {m_ours / 2**30:5.2f} GiB")
        print(f"ratio ours/nnU-Net: wall {t_ours / t_nn:.2f}, peak memory {m_ours / m_nn:.2f} (target <= 1.1)")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

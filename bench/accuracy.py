"""Accuracy the way users meet it: train one fold for a wall-clock budget, predict the fold's validation cases with
``autoorgan_predict`` from the raw images (original image space), score them with ``autoorgan_evaluate`` against the
raw label maps.

    python bench/accuracy.py -d 501 -c organdetr --minutes 60 [--fold 0] [--threads 2] [--curve] [--tag NAME]
                             [--refine_with_masks FOLDER] [--seeds S1 S2 ...]
                             [-- extra autoorgan_train options, e.g. --matcher hungarian]

Works for every configuration of the registry (organdetr: boxes; ccq, dodnet, masked_sigmoid: masks and boxes from
masks). Plans and preprocessed data are made first when missing (``-device cpu``). Prints box metrics (mAP over IoU
.50:.95, mAR, AP10/50/75, per-organ AP and mean IoU) and for masks Dice and HD95 (mm) per organ over the cases that
annotate it, with the iterations, training minutes and seconds per iteration; writes everything to
``accuracy_<tag>.json`` in the model folder. ``--curve`` validates every ``--val_every`` epochs during training (that
time counts against the budget; the trainer validates through the same predictor, in the original image frame) and
writes the metric against minutes to ``curve_<tag>.json`` / ``.png``. ``--refine_with_masks FOLDER`` (box
configurations): the validation cases are also predicted with ``autoorgan_predict --refine_with_masks FOLDER`` (label
maps of the same cases, e.g. another run's ``val_predictions_fold0`` or nnU-Net's ``fold_0/validation``) and scored;
both results are printed and stored (``refined``). ``--tta`` (label-map configurations): the validation cases are
also predicted with ``autoorgan_predict --tta`` (the left-right mirrored pass added) and scored (``tta``).
``--seeds S1 S2 ...``: one run per seed, trained side by side (``--threads`` each; ``--seeds 12345 2 --threads 1``
is the 2 cores as two runs), each predicted and scored alone (folders ``<tag>`` for the first seed,
``<tag>_seedS`` for the others), then the runs ensembled by ``autoorgan_predict -tr <tag> <tag>_seedS ...`` into the
first folder's ``val_predictions_fold<F>_ensemble`` and scored (``accuracy_<tag>_ensemble.json``).

Threads: ``--threads`` sets OMP_NUM_THREADS of the training and prediction processes. Run benchmarks alone on the
machine, or two at a time with ``--threads 1`` each, and say which.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _run(cmd: list[str], env: dict, what: str) -> subprocess.CompletedProcess:
    t = time.time()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace")
    if res.returncode not in (0, 1):
        sys.exit(f"{what} failed (exit {res.returncode}): {res.stderr.strip().splitlines()[-1:]}")
    print(f"  {what}: {time.time() - t:.0f} s", flush=True)
    return res


def _train_side_by_side(runs: list[tuple[str, list[str], Path]], env: dict) -> None:
    """Train every (tag, command, fold folder) at once (one process each); a run with a final checkpoint is reused,
    one with a latest checkpoint continues (``--c``)."""
    procs = []
    for tag, cmd, fold_dir in runs:
        if (fold_dir / "checkpoint_final.pth").is_file():
            print(f"  {tag}: trained model exists; reusing it (delete the folder to train again)")
            continue
        if (fold_dir / "checkpoint_latest.pth").is_file():
            cmd = [*cmd, "--c"]
        fold_dir.parent.mkdir(parents=True, exist_ok=True)
        err = open(fold_dir.parent / f"train_stderr_{fold_dir.name}.txt", "w")
        procs.append((tag, subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err), err, time.time()))
    for tag, proc, err, t in procs:
        code = proc.wait()
        err.close()
        print(f"  training {tag}: {time.time() - t:.0f} s", flush=True)
        if code:
            for _, other, _, _ in procs:   # no run left behind: rerunning the command continues them (--c)
                other.terminate()
            sys.exit(f"training {tag} failed (exit {code}):\n" + Path(err.name).read_text()[-2000:])


def _scored(out: Path, inputs: Path, ref: Path, args: argparse.Namespace, env: dict,
            members: list[str], what: str, *options: str) -> tuple[dict, float]:
    """Predict ``inputs`` with ``autoorgan_predict -tr <members...>`` into ``out`` and score it against ``ref``;
    returns (summary.json, prediction seconds)."""
    t = time.time()
    _run([_bin("autoorgan_predict"), "-i", str(inputs), "-o", str(out), "-d", args.d, "-c", args.c, "-tr", *members,
          "-f", args.fold, "-device", "cpu", "--quiet", *options], env, what)
    seconds = time.time() - t
    _run([_bin("autoorgan_evaluate"), "-ref", str(ref), "-pred", str(out), "-d", args.d, "--quiet"], env,
         f"evaluation ({what})")
    return json.loads((out / "summary.json").read_text()), seconds


def _print_masks(m: dict, label: str) -> None:
    print(f"{label}: mean Dice {m['mean_Dice']:.3f}  mean HD95 {m['mean_HD95']:.1f} mm")
    for organ, v in m["per_class"].items():
        print(f"  {organ:<16} n {v['num_cases']:>3}  Dice {v['Dice']:.3f}  HD95 {v['HD95']:.1f} mm")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-d", required=True, help="dataset id")
    p.add_argument("-c", required=True, help="configuration (organdetr, ccq, dodnet, masked_sigmoid)")
    p.add_argument("--minutes", type=float, required=True, help="training budget (wall clock)")
    p.add_argument("--fold", default="0")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tag", default=None, help="trainer folder name (default Acc_<config>_<minutes>min)")
    p.add_argument("--curve", action="store_true", help="validate during training and plot the metric vs minutes")
    p.add_argument("--val_every", type=int, default=5, help="with --curve: validate every N epochs (default 5)")
    p.add_argument("--iters_per_epoch", type=int, default=50)
    p.add_argument("--refine_with_masks", default=None, metavar="FOLDER",
                   help="box configurations: also predict with autoorgan_predict --refine_with_masks FOLDER and score")
    p.add_argument("--tta", action="store_true",
                   help="label-map configurations: also predict with autoorgan_predict --tta and score")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="S",
                   help="one run per seed, trained side by side (--threads each), scored alone and as an ensemble "
                        "(autoorgan_predict -tr A B ...); folders <tag>, <tag>_seedS")
    args = p.parse_args(argv)
    if "--seed" in extra and args.seeds:
        sys.exit("give the seeds with --seeds, not --seed after --")
    if args.seeds and len(set(args.seeds)) != len(args.seeds):
        sys.exit("--seeds: each seed once")

    from autoorgan.configurations import get_configuration
    from autoorgan.planning.plans import PLANS_NAME
    from autoorgan.utils.paths import find_dataset_name, model_folder, preprocessed_root
    entry = get_configuration(args.c)
    name = find_dataset_name(args.d)
    base_tag = args.tag or f"Acc_{args.c}_{args.minutes:g}min"
    seeds = args.seeds or [None]
    tags = [base_tag if i == 0 else f"{base_tag}_seed{s}" for i, s in enumerate(seeds)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    pre = preprocessed_root() / name
    plans_path = pre / f"{PLANS_NAME}.json"
    if not plans_path.is_file() or entry.plans_section not in json.loads(plans_path.read_text())["configurations"]:
        _run([_bin("autoorgan_plan_and_preprocess"), "-d", args.d, "-c", args.c, "-device", "cpu", "--quiet"], env,
             "plan and preprocess")
    folders = [model_folder(name, tag, PLANS_NAME, entry.plans_section) for tag in tags]
    print(f"{args.c} on {name} fold {args.fold}: {args.minutes:g} min, {args.threads} thread(s) per run -> "
          + ", ".join(map(str, folders)))
    runs = []
    for tag, seed, folder in zip(tags, seeds, folders):
        train = [_bin("autoorgan_train"), args.d, args.c, args.fold, "-device", "cpu", "--max_minutes",
                 str(args.minutes), "--epochs", "100000", "--iters_per_epoch", str(args.iters_per_epoch), "-tr", tag,
                 *(["--val_every", str(args.val_every)] if args.curve else ["--no_val"]), *extra,
                 *(["--seed", str(seed)] if seed is not None else [])]
        runs.append((tag, train, folder / f"fold_{args.fold}"))
    _train_side_by_side(runs, env)
    for tag, folder in zip(tags, folders):
        evaluate_run(args, entry, name, tag, folder, env, extra)
    if len(tags) > 1:
        folder = folders[0]
        out = folder / f"val_predictions_fold{args.fold}_ensemble"
        summary, seconds = _scored(out, folder / f"val_inputs_fold{args.fold}",
                                   folder / f"val_references_fold{args.fold}", args, env, tags,
                                   "prediction of the ensemble", "--continue_prediction")
        result = {"configuration": args.c, "dataset": name, "fold": args.fold, "members": tags, "seeds": seeds,
                  "minutes_budget": args.minutes, "threads_per_run": args.threads,
                  "prediction_seconds": round(seconds, 1), "extra_train_args": extra, "metrics": summary}
        (folder / f"accuracy_{base_tag}_ensemble.json").write_text(json.dumps(result, indent=1))
        print(f"\nensemble of {' + '.join(tags)} ({len(tags)} runs side by side, {args.threads} thread(s) each): "
              f"predicted in {seconds:.0f} s")
        if "boxes" in summary:
            b = summary["boxes"]
            print(f"boxes: mAP_coco {b['mAP']:.3f}  mAR {b['mAR']:.3f}  AP50 {b['AP50']:.3f}  AP75 {b['AP75']:.3f}")
        if "masks" in summary:
            _print_masks(summary["masks"], "masks")
        print(f"results: {folder / f'accuracy_{base_tag}_ensemble.json'}")


def evaluate_run(args: argparse.Namespace, entry, name: str, tag: str, folder: Path, env: dict,
                 extra: list[str]) -> None:
    """One trained run: predict the fold's validation cases from the raw images, score, print, write
    ``accuracy_<tag>.json`` (and the curve)."""
    from autoorgan.dataset.raw import list_cases
    from autoorgan.utils.paths import preprocessed_root, raw_root
    fold_dir = folder / f"fold_{args.fold}"
    import torch
    ck = torch.load(fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    h = ck["history"]
    iters = len(h["train_loss"]) * args.iters_per_epoch
    train_s = float(sum(h["epoch_time"]))

    # the fold's validation cases, as a user's input folder (links to the raw images)
    pre = preprocessed_root() / name
    splits = json.loads((pre / "splits_final.json").read_text())
    val = sorted(splits[int(args.fold)]["val"]) if args.fold != "all" else None
    raw = raw_root() / name
    ds = json.loads((raw / "dataset.json").read_text())
    inputs = folder / f"val_inputs_fold{args.fold}"
    inputs.mkdir(exist_ok=True)
    n_ch = len(ds["channel_names"])
    cases = list_cases(raw, ds)
    for cid in (val or sorted(cases)):
        for ch, src in enumerate(cases[cid].images[:n_ch]):
            link = inputs / f"{cid}_{ch:04d}{ds['file_ending']}"
            if not link.exists():
                link.symlink_to(Path(src).resolve())
    ref = folder / f"val_references_fold{args.fold}"
    ref.mkdir(exist_ok=True)
    for cid in (val or sorted(cases)):
        link = ref / f"{cid}{ds['file_ending']}"
        if not link.exists():
            link.symlink_to(Path(cases[cid].label).resolve())
    summary, predict_s = _scored(folder / f"val_predictions_fold{args.fold}", inputs, ref, args, env, [tag],
                                 "prediction", "--continue_prediction")
    refined = None
    if args.refine_with_masks:
        metrics, _ = _scored(folder / f"val_predictions_fold{args.fold}_refined", inputs, ref, args, env,
                             [tag], "prediction refined with masks", "--refine_with_masks", args.refine_with_masks)
        refined = {"masks": str(Path(args.refine_with_masks).resolve()), "metrics": metrics}

    tta = None
    if args.tta:
        metrics, tta_s = _scored(folder / f"val_predictions_fold{args.fold}_tta", inputs, ref, args, env,
                                 [tag], "prediction with --tta", "--continue_prediction", "--tta")
        tta = {"prediction_seconds": round(tta_s, 1), "metrics": metrics}

    result = {"configuration": args.c, "dataset": name, "fold": args.fold, "minutes_budget": args.minutes,
              "threads": args.threads, "iterations": iters, "training_minutes": round(train_s / 60, 2),
              "seconds_per_iteration": round(train_s / max(iters, 1), 3), "prediction_seconds": round(predict_s, 1),
              "num_val_cases": len(val or cases), "extra_train_args": extra, "seed": ck["options"].get("seed"),
              "metrics": summary, "refined": refined, "tta": tta}
    (folder / f"accuracy_{tag}.json").write_text(json.dumps(result, indent=1))
    print(f"\n{tag} ({args.c}): {iters} iterations in {train_s / 60:.1f} min ({train_s / max(iters, 1):.2f} s/it), "
          f"{args.threads} thread(s); {len(val or cases)} validation cases predicted in {predict_s:.0f} s")
    if "boxes" in summary:
        b = summary["boxes"]
        print(f"boxes: mAP_coco {b['mAP']:.3f}  mAR {b['mAR']:.3f}  AP10 {b['AP10']:.3f}  AP50 {b['AP50']:.3f}  "
              f"AP75 {b['AP75']:.3f}  mean IoU {b['mean_IoU']:.3f}")
        for organ, v in b["per_class"].items():
            print(f"  {organ:<16} n {v['num_reference']:>3}  AP {v['AP']:.3f}  AP50 {v['AP50']:.3f}  "
                  f"IoU {v['mean_IoU']:.3f}")
    if refined is not None:
        b = refined["metrics"]["boxes"]
        print(f"boxes refined with {refined['masks']}: mAP_coco {b['mAP']:.3f}  mAR {b['mAR']:.3f}  "
              f"AP10 {b['AP10']:.3f}  AP50 {b['AP50']:.3f}  AP75 {b['AP75']:.3f}  mean IoU {b['mean_IoU']:.3f}")
        print("  " + "  ".join(f"{o} {v['AP']:.2f}/{v['AP50']:.2f}" for o, v in b["per_class"].items()) +
              "  (AP/AP50)")
    if "masks" in summary:
        _print_masks(summary["masks"], "masks")
    if tta is not None and "masks" in tta["metrics"]:
        m = tta["metrics"]["masks"]
        print(f"masks with --tta ({tta['prediction_seconds']:.0f} s): mean Dice {m['mean_Dice']:.3f}  mean HD95 "
              f"{m['mean_HD95']:.1f} mm")
        print("  " + "  ".join(f"{o} {v['Dice']:.3f}" for o, v in m["per_class"].items()))
    if args.curve and h["val_epoch"]:
        elapsed = [sum(h["epoch_time"][:e]) / 60 for e in h["val_epoch"]]
        curve = {"minutes": elapsed, "metric": h["val_metric"], "metric_name": "mAP" if entry.output == "boxes"
                 else "mean_Dice", "frame": "original image (trainer validation through the predictor)"}
        (folder / f"curve_{tag}.json").write_text(json.dumps(curve, indent=1))
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(elapsed, h["val_metric"], "o-")
        ax.set_xlabel("training minutes")
        ax.set_ylabel(f"validation {curve['metric_name']}")
        ax.set_title(f"{args.c} on {name}, fold {args.fold}")
        fig.tight_layout()
        fig.savefig(folder / f"curve_{tag}.png", dpi=90)
        print(f"curve: {folder / f'curve_{tag}.png'}")
    print(f"results: {folder / f'accuracy_{tag}.json'}")


if __name__ == "__main__":
    main()

"""Margins of the learning checks: each check (tests/learning_checks.py) over seeds and OpenMP thread counts, and
deliberately broken variants that the check must reject.

    python bench/learning_checks.py ccq --seeds 12345 1 2 3 4 --threads 1 2 [--variants classes_ignored mask_inverted]
    python bench/learning_checks.py organdetr --seeds 12345 1 2 3 4 --threads 1 2 --variants boxes_axes_swapped

Prints one line per run (per-organ figures, mean, pass/fail with the reasons) and, per organ, the worst intact run
against the threshold (the margin). Runs are sequential; ``--parallel 2`` runs two at a time (use it with
``--threads 1`` only: two 2-thread runs on 2 cores slow each other down several-fold; the figures do not change,
the timings do). ``--root`` keeps the prepared phantom between calls.

Variants (each is a bug the check exists to catch; applied by patching the code in the training process):

* ``classes_ignored`` (ccq, dodnet): the network is asked for class 0 whatever the class, so every class map is the
  same (a broken class conditioning);
* ``mask_inverted`` (ccq, dodnet): the partial-label loss uses the negated annotation mask (trains the pairs it must
  ignore and ignores the rest);
* ``boxes_axes_swapped`` (organdetr): training box targets with axes 0 and 2 exchanged (the classic 3D-DETR axis
  order bug).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the checks' definitions live with the tests

VARIANTS = {"classes_ignored": ("ccq", "dodnet"), "mask_inverted": ("ccq", "dodnet"),
            "boxes_axes_swapped": ("organdetr",)}


def _patch(variant: str) -> None:
    """Break the code in this (training) process."""
    if variant == "classes_ignored":
        import autoorgan.networks.ccq as ccq
        original = ccq._classes_per_image
        ccq._classes_per_image = lambda classes, b, n, device: original(classes, b, n, device) * 0
    elif variant == "mask_inverted":
        import autoorgan.trainers.ccq as trainer
        original_loss = trainer.partial_dice_bce
        trainer.partial_dice_bce = lambda logits, targets, annotated: original_loss(logits, targets, ~annotated.bool())
    elif variant == "boxes_axes_swapped":
        import autoorgan.training.whole_volume as data
        original_item = data.WholeVolumeCases.item

        def item(self, *args, **kwargs):
            out = original_item(self, *args, **kwargs)
            out["boxes"] = out["boxes"][:, [2, 1, 0, 5, 4, 3]]
            return out
        data.WholeVolumeCases.item = item
    else:
        raise SystemExit(f"unknown variant {variant}")


def _run(check, roots, seed, threads, variant):
    import learning_checks as lc
    tag = f"{check.name}_{variant or 'intact'}_s{seed}_t{threads}"
    prefix = [sys.executable, str(Path(__file__).resolve()), "_train", variant] if variant else None
    t0 = time.time()
    res, metrics = lc.train(check, roots, tag, seed=seed, threads=threads, prefix=prefix)
    return tag, variant, time.time() - t0, res, metrics


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "_train":  # child: a broken training run
        _patch(sys.argv[2])
        from autoorgan.cli.train import main as train_main
        # data loader workers are spawned and would not see the patch: load in this process (every sample is a pure
        # function of seed and index, so the data are the same)
        sys.argv = ["autoorgan_train", *sys.argv[3:], "-num_workers", "0"]
        train_main()
        return
    import learning_checks as lc
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("check", choices=sorted(lc.CHECKS))
    p.add_argument("--seeds", type=int, nargs="*", default=[12345, 1, 2, 3, 4])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--variants", nargs="*", default=[], choices=sorted(VARIANTS))
    p.add_argument("--variant_seeds", type=int, nargs="+", default=[12345])
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--root", type=Path, default=None, help="working folder (default: a temporary one)")
    args = p.parse_args()
    check = lc.CHECKS[args.check]
    for v in args.variants:
        if check.name not in VARIANTS[v]:
            p.error(f"variant {v} does not apply to {check.name}")
    root = args.root or Path(tempfile.mkdtemp(prefix=f"learning_{check.name}_"))
    roots = lc.roots_under(root)
    lc.prepare(check, roots)
    untrained = lc.untrained_metrics(check, roots)
    print(f"{check.name}: untrained {check.per_class_key} " +
          " ".join(f"{k}={v:.3f}" for k, v in lc.per_class(check, untrained).items()), flush=True)
    jobs = [(s, t, None) for t in args.threads for s in args.seeds]
    jobs += [(s, max(args.threads), v) for v in args.variants for s in args.variant_seeds]
    intact = []
    with ThreadPoolExecutor(max(1, args.parallel)) as pool:
        for tag, variant, seconds, res, metrics in pool.map(lambda j: _run(check, roots, *j), jobs):
            if not metrics:
                print(f"{tag}: training failed (exit {res.returncode}): {res.stderr.strip().splitlines()[-1:]}")
                continue
            fails = lc.failures(check, metrics, untrained)
            values = lc.per_class(check, metrics)
            print(f"{tag}: {seconds:.0f} s  mean {lc.mean_value(check, metrics):.3f}  " +
                  " ".join(f"{k}={v:.2f}" for k, v in values.items()) +
                  ("  PASS" if not fails else "  FAIL: " + "; ".join(fails)), flush=True)
            if variant is None:
                intact.append(metrics)
    if intact:
        print(f"worst of {len(intact)} intact run(s) per organ (threshold {check.min_per_class}, gain "
              f"+{check.min_gain} over untrained):")
        before = lc.per_class(check, untrained)
        for organ in before:
            worst = min(lc.per_class(check, m)[organ] for m in intact)
            need = max(check.min_per_class, before[organ] + check.min_gain)
            print(f"  {organ:<14} worst {worst:.3f}  needs {need:.3f}  margin {worst - need:+.3f}")
        worst_mean = min(lc.mean_value(check, m) for m in intact)
        print(f"  {'mean':<14} worst {worst_mean:.3f}  needs {check.min_mean:.3f}  margin "
              f"{worst_mean - check.min_mean:+.3f}")
    print(f"working folder: {root}")


if __name__ == "__main__":
    main()

"""``autoorgan_plan_and_preprocess``: fingerprint, plans and preprocessed data from a raw dataset, in one command."""
from __future__ import annotations

import argparse
import os
import shutil
import sys

from autoorgan.configurations import CONFIGURATIONS, PLANS_SECTIONS
from autoorgan.planning.plans import PLANS_NAME
from autoorgan.utils.errors import OneLineArgumentParser, UserError, cli_entry, positive_int
from autoorgan.utils.paths import find_dataset_name, preprocessed_root, raw_root

FINGERPRINT_NAME = "dataset_fingerprint.json"


def _default_np() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def build_parser(kind: str = "all") -> argparse.ArgumentParser:
    desc = {
        "all": "Fingerprint a raw dataset (checking its integrity on the first run), write the plans of the "
               "organdetr and ccq configurations, and preprocess the training cases. Rerunning resumes: finished "
               "steps and cases are kept.",
        "fingerprint": "Check a raw dataset and write its fingerprint (dataset_fingerprint.json).",
        "plan": "Write the plans (autoorganPlans.json) from an existing fingerprint.",
        "preprocess": "Preprocess the training cases with existing plans (resumes unfinished cases).",
    }[kind]
    p = OneLineArgumentParser(description=desc, epilog="Folders: $autoorgan_raw (input), $autoorgan_preprocessed "
                                "(output); defaults under ~/autoorgan_data when unset. See docs/cli.md.")
    p.add_argument("-d", nargs="+", required=True, metavar="ID", help="dataset id(s), e.g. 3 or Dataset003_Liver")
    if kind in ("all", "fingerprint"):
        p.add_argument("--verify_dataset_integrity", action="store_true",
                       help="check every case even when a fingerprint exists (the first run always checks)")
        p.add_argument("--no_verify", action="store_true", help="skip the integrity check (not recommended)")
    if kind in ("all", "plan", "preprocess"):
        p.add_argument("-c", nargs="+", default=list(PLANS_SECTIONS), choices=sorted(CONFIGURATIONS),
                       metavar="CONFIG", help="configurations to plan/preprocess: " +
                       ", ".join(f"{c.name}" + (f" (= {c.plans_section} plans)" if c.plans_section != c.name else "")
                                 for c in CONFIGURATIONS.values()) + f" (default: {' '.join(PLANS_SECTIONS)})")
    if kind in ("all", "plan"):
        p.add_argument("-gpu_memory_target", type=float, default=8.0, metavar="GB",
                       help="GPU memory budget used to size inputs and networks (default 8)")
        p.add_argument("-device", choices=("cuda", "cpu"), default=None,
                       help="plan organdetr for training on this device (default: cuda if one is visible, else "
                            "cpu, whose budget is -cpu_memory_target)")
        p.add_argument("-cpu_memory_target", type=float, default=None, metavar="GB",
                       help="memory budget of a CPU plan (default 0.25: small enough to train on a laptop)")
        p.add_argument("-overwrite_target_spacing", nargs=3, type=float, default=None, metavar="MM",
                       help="use this target spacing (array order after transpose, mm) instead of the planned one")
        p.add_argument("--rho", type=int, default=None, help="organdetr queries per organ class (default: the "
                       "paper's 10)")
        p.add_argument("--lambda", dest="lambda_match", type=float, default=None,
                       help="DQM matching ratio; eta = ceil(lambda*rho) must be in [1, 5] (default 0.2, adjusted)")
    if kind in ("all", "fingerprint", "preprocess"):
        p.add_argument("-np", type=positive_int, default=_default_np(),
                       help="worker processes (default: the number of CPU cores, at most 8)")
    if kind == "all":
        p.add_argument("--no_pp", action="store_true", help="stop after planning (no preprocessing)")
    if kind in ("all", "fingerprint"):
        p.add_argument("--clean", action="store_true",
                       help="redo everything: delete this dataset's fingerprint, plans and preprocessed data first")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _sections(configs: list[str]) -> list[str]:
    """Configuration names -> the plans sections they need (dodnet -> ccq), in order, once each."""
    out: list[str] = []
    for c in configs:
        section = CONFIGURATIONS[c].plans_section
        if section not in out:
            out.append(section)
    return out


def _load_raw(dataset: str):
    from autoorgan.dataset.raw import list_cases, load_dataset_json
    name = find_dataset_name(dataset, raw_root())
    folder = raw_root() / name
    ds = load_dataset_json(folder)
    return name, folder, ds, list_cases(folder, ds)


def run_fingerprint(dataset: str, args) -> tuple[str, dict]:
    from autoorgan.planning.fingerprint import extract_fingerprint
    from autoorgan.utils.fileio import load_json, write_json_atomic
    name, folder, ds, cases = _load_raw(dataset)
    from autoorgan.dataset.raw import ANNOTATION_KEY
    if (folder / "contoured.json").is_file() and ANNOTATION_KEY not in ds:
        print(f"autoorgan: warning: {folder} has a contoured.json but its dataset.json no '{ANNOTATION_KEY}': every "
              "organ counts as annotated in every case (an uncontoured organ is trained as background); to record "
              f"the partial annotation run autoorgan_convert_contoured_json -i {folder}, then this command again",
              file=sys.stderr)
    out = preprocessed_root() / name
    if getattr(args, "clean", False) and out.is_dir():
        shutil.rmtree(out)
    fp_file = out / FINGERPRINT_NAME
    if fp_file.is_file():
        from autoorgan.planning.fingerprint import file_stats
        fp = load_json(fp_file)
        same_cases = sorted(fp.get("autoorgan", {}).get("cases", {})) == sorted(cases)
        same_files = fp.get("autoorgan", {}).get("file_stats") == file_stats(cases)
        if same_cases and same_files and not args.verify_dataset_integrity:
            print(f"{name}: fingerprint exists ({fp_file}); reusing it (--clean to redo)", file=sys.stderr)
            return name, fp
        if same_cases and not same_files:
            print(f"{name}: files changed since the fingerprint; checking the dataset again", file=sys.stderr)
    check = not args.no_verify
    fp = extract_fingerprint(cases, ds, num_processes=args.np, check=check, progress=not args.quiet)
    write_json_atomic(fp, fp_file)
    print(f"{name}: {len(cases)} cases{' checked and' if check else ''} fingerprinted -> {fp_file}", file=sys.stderr)
    return name, fp


def _device(args) -> str:
    if args.device:
        return args.device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_plan_options(args) -> None:
    """Numbers a plan cannot be made from: one line saying which and what is allowed."""
    import math
    spacing = args.overwrite_target_spacing
    if spacing is not None and not all(math.isfinite(s) and s > 0 for s in spacing):
        raise UserError(f"-overwrite_target_spacing {' '.join(str(s) for s in spacing)} is not allowed: give three "
                        "positive spacings in mm")
    for opt, value in (("-gpu_memory_target", args.gpu_memory_target), ("-cpu_memory_target", args.cpu_memory_target)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UserError(f"{opt} {value} is not allowed: give a positive number of GB")
    if args.rho is not None and args.rho < 2:
        raise UserError(f"--rho {args.rho} is not allowed: at least 2 queries per organ class")
    if args.lambda_match is not None and not (math.isfinite(args.lambda_match) and args.lambda_match > 0):
        raise UserError(f"--lambda {args.lambda_match} is not allowed: give a positive number")


def run_plan(name: str, args) -> dict:
    from autoorgan.planners import plan_dataset
    check_plan_options(args)
    if not (preprocessed_root() / name / FINGERPRINT_NAME).is_file():
        raise UserError(f"{name} has no fingerprint yet; run autoorgan_extract_fingerprint -d {name} (or "
                        "autoorgan_plan_and_preprocess) first")
    device = _device(args)
    if args.device is None and device == "cpu":
        print("autoorgan: no GPU visible; organdetr is planned for the CPU (-device cuda to plan for a GPU)",
              file=sys.stderr)
    plans = plan_dataset(name, raw_root(), preprocessed_root(), tuple(_sections(args.c)), args.gpu_memory_target,
                         device, args.overwrite_target_spacing, args.rho, args.lambda_match, args.cpu_memory_target)
    _print_plans_summary(name, plans, _sections(args.c))
    return plans


def _print_plans_summary(name: str, plans: dict, configs) -> None:
    print(f"{name}: plans -> {preprocessed_root() / name / (PLANS_NAME + '.json')}")
    for c in configs:
        cfg = plans["configurations"][c]
        line = f"  {c}: spacing {[round(s, 3) for s in cfg['spacing']]} mm, "
        if c == "organdetr":
            o = cfg["organdetr"]
            line += (f"input shape {cfg['input_shape']}, batch {cfg['batch_size']}, N={o['num_queries']} queries "
                     f"(rho={o['rho']}, M={o['num_organ_classes']}), lambda={o['lambda']:.3g}, eta={o['eta']}")
        else:
            line += (f"patch {cfg['patch_size']}, batch {cfg['batch_size']}, "
                     f"{cfg['ccq']['num_class_queries']} class queries, {len(cfg['ccq']['members'])} annotation "
                     "group(s)")
        print(line)


def run_preprocess(name: str, args, plans: dict | None = None) -> None:
    from autoorgan.planning.plans import get_configuration, load_plans
    from autoorgan.preprocessing.preprocess import preprocess
    pre = preprocessed_root() / name
    plans = plans or load_plans(pre)
    name, _, ds, cases = _load_raw(name)
    done: set[str] = set()
    for c in _sections(args.c):
        ident = get_configuration(plans, c)["data_identifier"]
        if ident in done:
            continue
        out = preprocess(cases, plans, c, ds, pre, num_processes=args.np, progress=not args.quiet)
        done.add(ident)
        print(f"{name}: {c} data -> {out}")


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = build_parser("all").parse_args(argv)
    for d in args.d:
        name, _ = run_fingerprint(d, args)
        plans = run_plan(name, args)
        if not args.no_pp:
            run_preprocess(name, args, plans)


@cli_entry
def main_fingerprint(argv: list[str] | None = None) -> None:
    args = build_parser("fingerprint").parse_args(argv)
    for d in args.d:
        run_fingerprint(d, args)


@cli_entry
def main_plan(argv: list[str] | None = None) -> None:
    args = build_parser("plan").parse_args(argv)
    for d in args.d:
        run_plan(find_dataset_name(d, preprocessed_root()), args)


@cli_entry
def main_preprocess(argv: list[str] | None = None) -> None:
    args = build_parser("preprocess").parse_args(argv)
    for d in args.d:
        run_preprocess(find_dataset_name(d, raw_root()), args)


if __name__ == "__main__":
    main()

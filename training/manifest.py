"""weights/MANIFEST.json: what every weights file is, how it was made, and what it scored.

    python -m training.manifest --scores reports/eval/summary.json   # rewrite after training/eval
    python -m training.manifest --run-dir runs/legZ3 --lineage runs/legV runs/legV2 ... --scores F

A soup (training.soup) lists its files and is entered as its last file's run: that leg's
--run-dir and --lineage, whose count already holds the shipped file the leg started from.
A file exported from a run outside runs/<expert> names it with --run-dir; one whose run started
from a resume file rather than the file it replaces names the legs in between with --lineage,
so the cumulative samples and CPU hours count every leg behind it. A leg whose run folder is gone
(runs/ is not kept between machines) comes from a JSON file of recorded legs instead
(training/resume/lineage.json: steps x batch and the minutes each leg's README section states).

A changed (or new) file's entry is built from the file itself (sha256, size, parameters, the
metadata the exporter stored) plus the run's checkpoint and history (wall time, throughput)
and the training code's commit. An unchanged file keeps its entry as it was: runs/ may hold a
later run by now, whose settings are not this file's. Scores come from a harness summary when
given, else stay while the file is unchanged: a changed file drops them (they scored other weights).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import subprocess
from pathlib import Path

import torch

from training.data import BUNDLED_SPLIT, read_split

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights"
MANIFEST = WEIGHTS / "MANIFEST.json"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_summary(run_dir: Path, threads: int = 1, batch: int = 4) -> dict:
    """Wall time, samples, CPU hours and the validation curve of a training run, from its
    history.jsonl (appended by every leg of a resumed run; a leg starts where `minutes` falls)."""
    history = run_dir / "history.jsonl"
    if not history.exists():
        return {}
    records = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
    steps = [r for r in records if "loss" in r]
    legs: list[list[dict]] = []
    for r in steps:
        if not legs or r["minutes"] < legs[-1][-1]["minutes"]:
            legs.append([])
        legs[-1].append(r)
    minutes = sum(leg[-1]["minutes"] for leg in legs)
    samples = sum((leg[-1]["step"] - leg[0]["step"] + 10) * batch for leg in legs)  # log_every 10
    return {
        "legs": len(legs),
        "minutes": round(minutes, 1),
        "cpu_hours": round(minutes * threads / 60, 2),
        "samples_drawn": samples,
        "samples_per_s_last": round(steps[-1]["samples_per_s"], 2) if steps else None,
        "final_loss": round(steps[-1]["loss"], 4) if steps else None,
        "validation_curve": [{k: r[k] for k in ("step", "val", "official") if k in r}
                             for r in records if "val" in r],
    }


def entry(path: Path, previous: dict, init: str = "", run_dir: Path | None = None,
          lineage: tuple[Path, ...] = ()) -> dict:
    digest = sha256(path)
    if previous.get("sha256") == digest:
        return dict(previous)
    weights = torch.load(path, map_location="cpu", weights_only=False)
    meta = weights["meta"]
    params = sum(v.numel() for v in weights["model"].values())
    run_dir = run_dir or ROOT / "runs" / meta["expert"]
    ckpt = run_dir / "ckpt.pt"
    config = torch.load(ckpt, map_location="cpu", weights_only=False)["config"] if ckpt.exists() else None
    if config is not None and init:
        config["init"] = config.get("init") or init
    commit = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%H", "--", "training", "app/models"],
                            check=False, capture_output=True, text=True).stdout.strip()
    run = run_summary(run_dir, *threads_batch(config))
    return {
        "sha256": digest,
        "bytes": path.stat().st_size,
        "architecture": "UNet3D (app/models/unet3d.py), fp16 storage",
        "model_config": weights["model_config"],
        "parameters": params,
        "expert": meta["expert"],
        "patch": meta["patch"],
        "steps": meta["step"],
        **({"soup_of": meta["soup"]} if "soup" in meta else {}),  # training.soup: the files it averages
        "data": {
            "generator": f"training/synth.py v{meta['generator_version']} (procedural)",
            "real_training_cases": [p for split, p in read_split(BUNDLED_SPLIT) if split == "train"],
            "real_validation_cases_never_trained_on": [p for split, p in read_split(BUNDLED_SPLIT) if split != "train"],
        },
        "training_config": config or previous.get("training_config"),
        "run": run or previous.get("run"),
        "machine": previous.get("machine") or f"{platform.machine()} {platform.processor() or ''} CPU, 2 cores".strip(),
        "training_code_commit": commit or previous.get("training_code_commit"),
        "harness_scores": None,
        "cumulative": cumulative(previous, run, config, [leg for item in lineage for leg in legs_of(item)]),
    }


def legs_of(path: Path) -> list[dict]:
    """The legs a --lineage item stands for: a run folder's one leg, or a JSON file's recorded legs."""
    if path.suffix == ".json":
        return json.loads(path.read_text())["legs"]
    return [leg_summary(path)]


def leg_summary(run_dir: Path) -> dict:
    """One leg between the replaced file and the new one: its run's samples and CPU hours."""
    ckpt = torch.load(run_dir / "ckpt.pt", map_location="cpu", weights_only=False)
    run = run_summary(run_dir, *threads_batch(ckpt["config"]))
    if not run:
        raise SystemExit(f"{run_dir}: no history.jsonl, so its samples are unknown")
    return {"run": run_dir.name, "steps": ckpt["step"], "init": ckpt["config"].get("init", ""),
            "samples": run["samples_drawn"], "cpu_hours": run["cpu_hours"]}


def cumulative(previous: dict, run: dict, config: dict | None, lineage: list[dict] = ()) -> dict | None:
    """Samples and CPU hours behind a new file: this run's, plus those of the weights it started
    from (--init: the file this entry replaces, or the legs of `lineage` that led from it)."""
    if not run:
        return None
    own = {"samples": run["samples_drawn"], "cpu_hours": run["cpu_hours"]}
    if not (config and config.get("init")):
        return own
    base = previous.get("cumulative") or {
        "samples": previous.get("steps", 0) * threads_batch(previous.get("training_config"))[1],
        "cpu_hours": round((previous.get("run") or {}).get("logged_minutes_this_run", 0)
                           * threads_batch(previous.get("training_config"))[0] / 60, 2)}
    replaced = {"file": lineage[0]["init"] if lineage else config["init"], "steps": previous.get("steps"), **base}
    behind = replaced
    if lineage:
        behind = {"file": config["init"], "samples": base["samples"] + sum(leg["samples"] for leg in lineage),
                  "cpu_hours": round(base["cpu_hours"] + sum(leg["cpu_hours"] for leg in lineage), 2),
                  "legs": list(lineage), "initialised_from": replaced}
    return {"samples": own["samples"] + behind["samples"],
            "cpu_hours": round(own["cpu_hours"] + behind["cpu_hours"], 2), "initialised_from": behind}


def threads_batch(config: dict | None) -> tuple[int, int]:
    if not config:
        return 1, 4
    return int(config.get("threads", 1)), int(config.get("global_batch") or config.get("batch", 4))


def write(scores: dict | None = None, init: str = "", run_dir: Path | None = None,
          lineage: tuple[Path, ...] = ()) -> dict:
    old = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}
    files = sorted(p for p in WEIGHTS.iterdir() if p.suffix == ".pt")
    manifest = {p.name: entry(p, old.get(p.name, {}), init, run_dir, lineage) for p in files}
    for item in manifest.values():
        if scores is not None:
            item["harness_scores"] = scores
    MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scores", type=Path, help="a JSON file of harness scores to record")
    parser.add_argument("--init", default="", help="the weights the run started from, where its checkpoint "
                        "predates train.py keeping that on record")
    parser.add_argument("--run-dir", type=Path, help="the run a changed file was exported from "
                        "(default runs/<expert>)")
    parser.add_argument("--lineage", type=Path, nargs="+", default=(), help="the run folders (or JSON files "
                        "of recorded legs) between the file a changed one replaces and --run-dir's start, oldest first")
    args = parser.parse_args()
    scores = {"report": str(args.scores), "scores": json.loads(args.scores.read_text())} if args.scores else None
    manifest = write(scores, args.init, args.run_dir, tuple(args.lineage))
    print(json.dumps({k: {"sha256": v["sha256"][:12], "steps": v["steps"]} for k, v in manifest.items()}))

"""`embedx demo`: the whole flow on a built-in synthetic cohort, ending with what was found vs injected.

The demo is also embedx's calibration: the cohort's `ground_truth.json` says which attributes reach the
pixels, so the closing table shows at a glance whether the probes found exactly those. Every stage calls
the same library function as its command, so the demo exercises the real flow, not a shortcut.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from embedx.errors import EmbedxError
from embedx.progress import console

log = logging.getLogger(__name__)


CONFIGS = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class DemoProfile:
    """Sizes of one demo run. `quick` fits in a few CPU minutes; `full` is meant for a GPU.

    Each model starts from its packaged demo config (`embedx/configs/demo_<kind>.yaml`, also linked from
    the repository's `configs/`) and applies the profile's `--set` overrides on top.
    """

    name: str
    n: int
    synth_size: int
    train: dict[str, list[str]]
    umap: bool = False
    bootstrap: int = 1000
    calibration_labels: int = 200  # null and planted labels each, for `embedx calibrate`
    expected_minutes: str = ""


QUICK = DemoProfile(
    name="quick",
    n=720,
    synth_size=64,
    train={
        "vae": [
            "data.preprocess.size=32",
            "optim.total_samples=9600",
            "optim.eval_every_samples=9600",
            "optim.checkpoint_every_samples=9600",
        ],
        "dae": [
            "optim.total_samples=4800",
            "optim.eval_every_samples=4800",
            "optim.checkpoint_every_samples=4800",
            "eval.latent_stats_samples=720",
        ],
        "cnn": [
            "optim.total_samples=4800",
            "optim.eval_every_samples=4800",
            "optim.checkpoint_every_samples=4800",
        ],
    },
    bootstrap=500,
    calibration_labels=60,
    expected_minutes="under 5 minutes on 2 CPU cores",
)

FULL = DemoProfile(
    name="full",
    n=4000,
    synth_size=128,
    train={
        "vae": ["data.preprocess.size=128", "optim.total_samples=400000", "optim.batch_size=64"],
        "dae": [
            "data.preprocess.size=64",
            "dae.unet_channels=[32,64,128,128]",
            "optim.total_samples=1000000",
            "optim.batch_size=64",
            "optim.lr=5e-4",
            "optim.warmup_samples=20000",
            "optim.ema_decay=0.999",
        ],
        "cnn": ["data.preprocess.size=64", "optim.total_samples=40000"],
    },
    umap=True,
    bootstrap=2000,
    expected_minutes="about 20-30 minutes on one GPU (hours on a CPU)",
)


@dataclass
class StageTimer:
    """Prints which stage runs and how long it took; keeps the timings for the summary."""

    total: int
    done: list[tuple[str, float]] = field(default_factory=list)

    def run(self, name: str, work: Callable[[], Any]) -> Any:
        index = len(self.done) + 1
        console.print(f"[bold cyan]▶ [{index}/{self.total}] {name}[/] ...")
        start = time.perf_counter()
        result = work()
        seconds = time.perf_counter() - start
        self.done.append((name, seconds))
        console.print(f"[green]✓ [{index}/{self.total}] {name}[/] in {seconds:.1f} s")
        return result


def run_demo(
    out: str | Path = "embedx-demo", *, quick: bool = False, kind: str = "cxr", seed: int = 0
) -> dict:
    """Run the whole flow into `out`; returns the summary (also written as `out/demo_summary.json`)."""
    from embedx.analysis.background import background_control
    from embedx.analysis.calibration import CalibrationSettings, run_calibration
    from embedx.analysis.clusters import run_clusters
    from embedx.analysis.cross_site import cross_site
    from embedx.analysis.fairness import run_fairness
    from embedx.analysis.probes import run_probes
    from embedx.data.synth import generate_cohort, read_ground_truth
    from embedx.report.builder import build_report
    from embedx.store.encode import encode
    from embedx.store.pixels import encode_pixels
    from embedx.store.project import project
    from embedx.training.config import load_config
    from embedx.training.loop import train

    profile = QUICK if quick else FULL
    out = Path(out)
    if (out / "store.h5").exists():
        raise EmbedxError(f"{out} already holds a demo; choose another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    cohort_dir, runs_dir = out / "cohort", out / "runs"
    store_path, report_dir = out / "store.h5", out / "report"
    models = list(profile.train)
    console.print(
        f"[bold]embedx demo ({profile.name})[/]: synthetic {kind} cohort of {profile.n} images at "
        f"{profile.synth_size} px; models {', '.join(models)}; expected {profile.expected_minutes}."
    )
    if quick:
        console.print(
            "[dim]--quick uses small images and a small cohort: enough to show the injected "
            "signals, not to train models that reconstruct well.[/]"
        )
    stages = 1 + len(models) + len(models) + 1 + 1 + 6 + 1
    timer = StageTimer(total=stages)

    manifest = timer.run(
        f"synthesise {kind} cohort ({profile.n} images)",
        lambda: generate_cohort(
            kind, profile.n, cohort_dir, size=profile.synth_size, seed=seed, prevalence=_demo_prevalence()
        ),
    )
    truth = read_ground_truth(cohort_dir)

    runs: dict[str, Path] = {}
    configs = {
        model: load_config(model, CONFIGS / f"demo_{model}.yaml", [*overrides, f"optim.seed={seed}"])
        for model, overrides in profile.train.items()
    }
    for model, config in configs.items():
        size = config.data.preprocess.size
        runs[model] = timer.run(
            f"train {model} ({size} px, {config.optim.total_samples:,} samples)",
            lambda c=config, m=model: train(c, manifest, runs_dir / m),
        )
    for model in models:
        timer.run(f"encode {model}", lambda m=model: encode(runs[m], manifest, store_path, name=m))
    timer.run(
        "encode the pixel reference (no training)",
        lambda: encode_pixels(manifest, store_path, "pixels", size=profile.synth_size,
                              pool=min(32, profile.synth_size), components=64, seed=seed),
    )

    def _projections() -> None:
        project(str(store_path), method="tsne", models=models, seed=seed)
        if profile.umap:
            project(str(store_path), method="umap", models=models, seed=seed)

    timer.run("project (t-SNE" + (", UMAP" if profile.umap else "") + ")", _projections)
    probes = timer.run(
        "probe every attribute",
        lambda: run_probes(store_path, n_permutations=None, n_bootstrap=profile.bootstrap, seed=seed),
    )
    labels = profile.calibration_labels
    timer.run(
        f"calibrate the audit ({labels} null + {labels} planted labels)",
        lambda: run_calibration(
            store_path,
            models,
            settings=CalibrationSettings(
                n_null=labels, n_planted=labels, null_permutations=99 if quick else 199, seed=seed
            ),
        ),
    )
    timer.run(
        "fairness of the finding probe", lambda: run_fairness(store_path, "finding", model="vae", seed=seed)
    )
    timer.run("clusters", lambda: [run_clusters(store_path, m, seed=seed) for m in ("vae", "dae")])
    timer.run(
        "controls (background patches, cross-site)",
        lambda: (
            background_control(
                manifest,
                "site",
                patch=max(4, profile.synth_size // 8),
                size=profile.synth_size,
                store_path=store_path,
                n_bootstrap=profile.bootstrap,
                seed=seed,
            ),
            cross_site(store_path, "finding", "site", model="vae", n_bootstrap=profile.bootstrap, seed=seed),
        ),
    )
    timer.run(
        "report",
        lambda: build_report(
            store_path, report_dir, target="finding", seed=seed, n_bootstrap=profile.bootstrap
        ),
    )
    summary = summarise(truth, probes, models=[m for m in models if m != "cnn"])
    summary["timings_s"] = {name: round(seconds, 1) for name, seconds in timer.done}
    summary["paths"] = {"cohort": str(cohort_dir), "store": str(store_path), "report": str(report_dir)}
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print_summary(summary)
    # Plain stdout, never wrapped: these two lines are what a user copies (and what scripts grep).
    print(f"\nReport:  {(report_dir / 'report.html').resolve()}")
    print(f"Explore: embedx dashboard {store_path.resolve()}")
    return summary


def _demo_prevalence() -> dict[str, float]:
    """Zech-style confounding: the finding is far more common at one site, as pneumonia was at MSH."""
    return {"north": 0.5, "south": 0.2, "east": 0.2, "west": 0.1}


def summarise(truth: dict, probes: list[dict], models: list[str]) -> dict:
    """Per attribute: what the generator injected, and what the unsupervised models' probes found."""
    rows = []
    for attribute, spec in truth["attributes"].items():
        found = [p for p in probes if p["attribute"] == attribute and p["model"] in models]
        if not found or not spec.get("known_answer", True):
            continue
        encoded_by = sorted(p["model"] for p in found if p.get("encoded"))
        best = max(found, key=lambda p: _advantage(p))
        rows.append(
            {
                "attribute": attribute,
                "injected": bool(spec["in_pixels"]),
                "effect": spec.get("effect", ""),
                "found_by": encoded_by,
                "found": bool(encoded_by),
                "best": {k: best.get(k) for k in ("model", "metric", "score", "ci", "chance", "p_value")},
                "agrees": bool(encoded_by) == bool(spec["in_pixels"]),
                "pixels": next(
                    ({k: p.get(k) for k in ("score", "ci", "encoded")}
                     for p in probes if p["attribute"] == attribute and p["model"] == "pixels"),
                    None,
                ),
            }
        )
    return {"attributes": rows, "all_agree": all(r["agrees"] for r in rows)}


def _advantage(probe: dict) -> float:
    """How far a probe's score is from chance, in the direction that means 'encoded'."""
    score, chance = probe.get("score"), probe.get("chance")
    if score is None or chance is None:
        return float("-inf")
    return (chance - score) if probe.get("metric") == "mae" else (score - chance)


def _pixels_cell(pixels: dict | None) -> str:
    if not pixels or pixels.get("score") is None:
        return "—"
    return f"{pixels['score']:.2f}" + (" *" if pixels.get("encoded") else "")


def print_summary(summary: dict) -> None:
    table = Table(title="Injected into the pixels (ground_truth.json) vs found by the VAE / DAE probes")
    table.add_column("attribute", no_wrap=True)
    table.add_column("injected", no_wrap=True)
    table.add_column("found by", no_wrap=True)
    table.add_column("best score [95% CI]", no_wrap=True)
    table.add_column("chance", no_wrap=True)
    table.add_column("pixels", no_wrap=True)
    table.add_column("agrees", no_wrap=True)
    for row in summary["attributes"]:
        best = row["best"]
        ci = best.get("ci") or [float("nan"), float("nan")]
        score, chance = "—", "—"
        if best.get("score") is not None:
            score = f"{best['score']:.3f} [{ci[0]:.3f}–{ci[1]:.3f}]"
            chance = f"{best['chance']:.3f}"
        is_mae = best.get("metric") == "mae"
        table.add_row(
            row["attribute"] + (" (MAE)" if is_mae else ""),
            "yes" if row["injected"] else "no",
            ", ".join(row["found_by"]) or "chance",
            score,
            chance,
            _pixels_cell(row.get("pixels")),
            "[green]yes[/]" if row["agrees"] else "[red]NO[/]",
        )
    console.print(table)
    console.print(
        "[dim]Scores: balanced accuracy, or mean absolute error where marked (MAE, lower is "
        "better). "
        "Found = Holm-corrected permutation p < 0.05 and the CI clear of chance. Pixels: the same probe "
        "on the pixel reference (no training), * = found.[/]"
    )
    timings = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in summary.get("timings_s", {}).items())
    if timings:
        console.print(f"[dim]stage times: {timings}[/]")

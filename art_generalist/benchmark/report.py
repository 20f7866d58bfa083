"""The benchmark's written results: the markdown table, the fronts, ``results.{json,md}`` and the plots."""
from __future__ import annotations

import json
from pathlib import Path

from art_generalist.benchmark import fronts, sparse_metrics
from art_generalist.parallel import ranks
from art_generalist.state.files import atomic_write_json, atomic_write_text


def _epoch_ratios(rows: list[dict]) -> dict[str, float]:
    """Median training seconds per epoch of each method divided by ART Madry's (same run)."""
    madry = next((r["epoch_seconds"] for r in rows if r["method"] == "art_madry"), None)
    if not madry:
        return {}
    return {r["method"]: r["epoch_seconds"] / madry for r in rows if r["epoch_seconds"] is not None}



def format_table(rows: list[dict]) -> str:
    """The markdown table printed and written to results.md."""
    def pct(v):
        return "—" if v is None else f"{100 * v:.2f}"

    def num(v, fmt):
        return "—" if v is None else format(v, fmt)

    def ci(v, n):
        lo, hi = fronts.wilson(v, n)
        return f"{pct(v)} [{100 * lo:.1f}, {100 * hi:.1f}]"

    ratios = _epoch_ratios(rows)
    lines = ["| method | clean [95% CI] | PGD | AutoAttack [95% CI] | worst case | dominated by | train s | s/epoch "
             "| × ART Madry | examples/s | reliable |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        reliable = "yes" if r["reliable"] else "NO: " + "; ".join(r["unreliable_reasons"])
        dominated = ", ".join(r.get("dominated_by") or []) or "—"
        aa = ci(r["autoattack"], r["n"]) if r["autoattack"] is not None else "—"
        lines.append(f"| {r['method']} | {ci(r['clean'], r['n'])} | {pct(r['pgd'])} | {aa} | "
                     f"{pct(r['worst_case'])} | {dominated} | {num(r['train_seconds'], '.1f')} | "
                     f"{num(r['epoch_seconds'], '.1f')} | {num(ratios.get(r['method']), '.2f')} | "
                     f"{num(r['examples_per_s'], '.0f')} | {reliable} |")
    return "\n".join(lines)


def format_fronts(verdict: dict) -> str:
    """One line per other family: does Generalist's front dominate it?"""
    lines = []
    for family, v in verdict.items():
        lines.append(f"* vs `{family}`: Generalist's points cover {v['covered_by_generalist']} of its "
                     f"{v['their_points']} points; it dominates {v['generalist_points_dominated_by_them']} of "
                     f"Generalist's points; **front dominates: {'yes' if v['front_dominates'] else 'no'}**")
    return "\n".join(lines) or "(no Generalist points, or no other method)"


def write_results(out: Path, results: dict) -> None:
    """``results.json``, ``results.md`` and ``tradeoff.png`` in ``out`` (rank 0 under torch.distributed).

    The text files are written atomically (a temporary file renamed over the old one): a kill or a
    full disk leaves the previous, whole file."""
    if not ranks.is_main_process():
        return
    atomic_write_json(out / "results.json", results, indent=2, default=str)  # whole or not at all
    cfg = results["config"]
    md = [f"# Benchmark: {cfg['dataset']}, {cfg['model']}, ε = {cfg['eps']:g}, {cfg['epochs']} epochs",
          "", f"Training examples: {results['n_train']}; evaluated on {results['n_eval']} test points; "
          f"AutoAttack version `{cfg['aa_version']}`; PGD-{cfg['pgd_steps']}; seed {cfg['seed']}; "
          f"training PGD-{cfg['max_iter']} (step {cfg['eps_step']:g}); SGD lr {cfg['lr']:g}; lr schedule "
          f"`{cfg.get('lr_schedule', 'official')}` evaluated "
          f"{'per iteration' if cfg['per_iteration_schedules'] else 'per epoch'}"
          + (f"; GeneralistTrainer arguments `{json.dumps(cfg['generalist'])}`" if cfg.get("generalist") else "")
          + (f"; sparse plug-in arguments `{json.dumps(cfg['sparse_args'])}`" if cfg.get("sparse_args") else "")
          + ".", "",
          "The package's trainers run image models in channels_last memory format (their default, "
          "`channels_last=\"auto\"`); ART's trainers get the model as built. Epoch times exclude validation.", "",
          *([] if results.get("complete") else ["**Partial results: the run has not finished.**", ""]),
          format_table(results["rows"]), "", "Dominated: another method's point is at least as good on clean and "
          "robust accuracy and better on one (point estimates; the intervals are Wilson 95% on the "
          f"{results['n_eval']} points).", "", "## Fronts", "", format_fronts(results.get("fronts", {})), "",
          "## ART workarounds applied", ""]
    seen = {w["id"]: w["what"] for r in results["reports"].values() for w in r["training"]["workarounds"]}
    md += [f"* `{k}`: {v}" for k, v in seen.items()] or ["none"]
    md += ["", *sparse_metrics.paper_section(out, results), f"Machine: {results['machine']}", "",
           "![trade-off](tradeoff.png)", ""]
    atomic_write_text(out / "results.md", "\n".join(md))
    if not results["rows"]:
        return  # nothing finished yet: the settings are recorded, there is no point to plot
    fronts.plot(out / "tradeoff.png", results["rows"], f"{cfg['dataset']} ε={cfg['eps']:g}, n={results['n_eval']}: "
                f"clean vs robust, Wilson 95% intervals", f"AutoAttack accuracy (%), {cfg['aa_version']}",
                results["n_eval"])

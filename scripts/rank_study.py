"""Rank the rows of the recipe study (scripts/recipe_study.sh) on validation.csv.

    python scripts/rank_study.py --study_dir=bench_results/study

Reads STUDY_DIR/<row>/quality.json of every finished row and prints (and writes to
STUDY_DIR/ranking.md) one line per row, best first by the mean of its validation kNN (k = 20) and
validation linear probe, with its recipe, the same two figures on test.csv (reported, never used to
choose) and its margins over the higher floor; then the floors of each network.
"""
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from runtime import atomic_write, configure, fail, run  # noqa: E402

# -------------------------------------------------------------------------------------------------
STUDY_DIR = "bench_results/study"  # one folder per row, each with the quality.json of its run
# -------------------------------------------------------------------------------------------------
PROTOCOLS = ("kNN k=20", "linear probe")  # what a row is ranked on, on validation


def figures(summary, init):
    """{(protocol, split): accuracy} of one initialisation of a row."""
    found = {}
    for row in summary["rows"]:
        protocol = row["protocol"].split(" (")[0]
        if row["init"] == init and protocol in PROTOCOLS and row.get("labels", 1.0) == 1:
            found[protocol, "validation"], found[protocol, "test"] = row["val_acc"], row["test_acc"]
    return found


def recipe(summary):
    """The row's own train_simsiam.py overrides, as its pre-training command passed them."""
    command = summary["commands"]["pretrain"]
    start = command.find("--stem_stride=")
    return command[start:] if start >= 0 else command


def main():
    configure(globals())
    if not os.path.isdir(STUDY_DIR):
        fail(f"STUDY_DIR {STUDY_DIR!r} does not exist: run scripts/recipe_study.sh first.", code=2)
    rows, floors = [], {}
    for name in sorted(os.listdir(STUDY_DIR)):
        path = os.path.join(STUDY_DIR, name, "quality.json")
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            summary = json.load(f)
        simsiam = figures(summary, "SimSiam pre-trained")
        if not summary.get("complete") or None in simsiam.values() or len(simsiam) < 4:
            print(f"skipping row {name}: unfinished, or run before validation was reported")
            continue
        score = sum(simsiam[p, "validation"] for p in PROTOCOLS) / len(PROTOCOLS)
        rows.append((score, name, recipe(summary), simsiam,
                     summary.get("margin_over_floors_validation", {})))
        network = f"{summary['arch']} at {summary['input_size']} px"
        floors.setdefault(network, {init: figures(summary, init)
                                    for init in ("random init", "image statistics")})
    if not rows:
        fail(f"no finished row with validation figures in {STUDY_DIR}.")
    lines = ["| rank | row | recipe | validation kNN k=20 / linear | test kNN k=20 / linear | "
             "margin over the higher floor (validation) |", "| --- | --- | --- | --- | --- | --- |"]
    for rank, (score, name, args, found, margin) in enumerate(sorted(rows, reverse=True), 1):
        margin = {p: margin.get(f"{p}, 100 % of labels", margin.get(p, math.nan))
                  for p in PROTOCOLS}
        lines.append(f"| {rank} | {name} | `{args}` | {found['kNN k=20', 'validation']:.2f} / "
                     f"{found['linear probe', 'validation']:.2f} % | "
                     f"{found['kNN k=20', 'test']:.2f} / {found['linear probe', 'test']:.2f} % | "
                     + " / ".join(f"{margin[p]:+.2f}" for p in PROTOCOLS) + " |")
    lines += ["", "Floors (validation kNN k=20 / linear; test the same):"]
    for network, by_init in floors.items():
        for init, found in by_init.items():
            if len(found) == 4:
                lines.append(f"- {network}, {init}: {found['kNN k=20', 'validation']:.2f} / "
                             f"{found['linear probe', 'validation']:.2f} %; test "
                             f"{found['kNN k=20', 'test']:.2f} / "
                             f"{found['linear probe', 'test']:.2f} %")
    table = "\n".join(lines)
    with atomic_write(os.path.join(STUDY_DIR, "ranking.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    print(f"\nwrote {STUDY_DIR}/ranking.md")


if __name__ == "__main__":
    run(main)

# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Q♯ on the star graph: accuracy and KL to π_ref per method, and the η frontier
#
# The star-graph experiment of Zhou et al. 2025 (Q♯, §3.1; docs/stargraph.md): a transformer π_ref
# pretrained by next-token prediction on G(d, ℓ, N) learns the "Clever Hans" shortcut and solves a
# test graph with probability 1/d. Post-training it is meant to fix that:
# - **value** guidance of π_ref by a learned success classifier p: Q♯,
#   `π ∝ π_ref·(1 − p + p e^{1/η})`, and CD, `π ∝ π_ref·e^{p/η}` — after the paper's one offline
#   round (`qsharp`, `cd`) and after Algorithm 1's rounds (`qsharp_alg1`, `cd_alg1`);
# - **oracle**: the same two rules with the exact p from a teacher-forced pass of π_ref, the upper
#   bound of any learned critic;
# - **policy** gradient post-training of π_ref's own weights: REINFORCE, RPO, DPO.
#
# This notebook never trains. It reads the `summary.json` that
# `python -m klrl.stargraph run CONFIG OUT_DIR` writes and draws (a) the paper's bar chart,
# exact-match accuracy per method with 95% CIs over test prompts and π_ref's shortcut level 1/d
# as a dashed line, with each method's per-episode KL(π‖π_ref) beside it (which the paper does
# not report); (b) the η frontier, accuracy against KL for each guided rule; (c) a table of the
# methods (`methods.md`, `methods.csv`). A method the run did not include is simply absent.
#
# Parameters (the next cell, or the environment): `KLRL_RUNS`, the one result directory to draw
# (default the committed `results/qsharp_stargraph`, or `KLRL_RESULTS_DIR`); `KLRL_FIGURES_DIR`,
# where the figures and the tables go (default `figures/qsharp_stargraph/`, outside `results/`).
# A directory without a summary.json that lists methods ends the notebook with one line saying
# so (exit status 2), before anything is written. To redraw the committed figures:
#
# ```
# KLRL_FIGURES_DIR=results/qsharp_stargraph python notebooks/qsharp_stargraph.py
# ```

# %%
import csv
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from klrl.notebook_io import NotebookInputError, fail, figures_dir, repo_root, run_paths  # noqa: E402
from klrl.plot_style import shade  # noqa: E402

# Parameters: set them here, or in the environment.
HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
ROOT = repo_root(HERE)
RESULTS = os.environ.get("KLRL_RESULTS_DIR", os.path.join(ROOT, "results", "qsharp_stargraph"))
RUN_DIRS, _ = run_paths([RESULTS])                 # KLRL_RUNS: the one result directory
FIGURES = figures_dir(ROOT, "qsharp_stargraph")    # KLRL_FIGURES_DIR
WANTED = "one star-graph result directory (its summary.json, from `python -m klrl.stargraph run`)"

# %% [markdown]
# ## Read the summary
# Methods are drawn in the paper's order, grouped by family; each family has one colour family
# (klrl.plot_style's convention: a sequential colormap per group, one shade per member), fixed so
# that a missing method never changes the others' colours.

# %%
# name -> (label, family), in drawing order; a name outside this list is drawn after them.
METHODS = {
    "pi_ref": ("π_ref", "reference"),
    "qsharp": ("Q♯", "value"), "cd": ("CD", "value"),
    "qsharp_alg1": ("Q♯ (Alg. 1)", "value"), "cd_alg1": ("CD (Alg. 1)", "value"),
    "qsharp_oracle": ("Q♯ (oracle)", "oracle"), "cd_oracle": ("CD (oracle)", "oracle"),
    "reinforce": ("REINFORCE", "policy"), "rpo": ("RPO", "policy"), "dpo": ("DPO", "policy"),
}
FAMILY_MAPS = {"reference": "Greys", "value": "Blues", "oracle": "Greens", "policy": "Oranges"}
FAMILIES = tuple(FAMILY_MAPS)


CLOSED_FORM = "closed_form"   # the frontier's exact P*, KL* per η (no CI: averaged closed forms)


def has_numbers(entry, eta: bool = False, closed_form: bool = False) -> bool:
    """Whether `entry` holds accuracy and kl, each with a numeric mean and ci95 (and eta); a
    closed-form point: eta, success, kl as plain numbers."""
    try:
        if closed_form:
            [float(entry[k]) for k in ("success", "kl")]
        else:
            [float(entry[k][f]) for k in ("accuracy", "kl") for f in ("mean", "ci95")]
        return not eta or float(entry["eta"]) > 0
    except (KeyError, TypeError, ValueError):
        return False


def read_summary(paths) -> dict:
    """The summary.json of the one directory in `paths`; NotebookInputError (naming KLRL_RUNS)
    when there is not exactly one, or it holds no summary.json with a non-empty "methods"."""
    if len(paths) != 1:
        raise NotebookInputError(f"KLRL_RUNS: got {len(paths)} paths ({', '.join(paths)}); allowed {WANTED}")
    (path,) = paths
    file = os.path.join(path, "summary.json")
    if not os.path.isfile(file):
        raise NotebookInputError(f"KLRL_RUNS: got {path!r}, which has no summary.json; allowed {WANTED}")
    try:
        with open(file) as fh:
            summary = json.load(fh)
    except ValueError:
        raise NotebookInputError(f"KLRL_RUNS: got {path!r}, whose summary.json is not JSON; allowed {WANTED}") from None
    methods = summary.get("methods") if isinstance(summary, dict) else None
    if not methods or not isinstance(methods, dict):
        raise NotebookInputError(f"KLRL_RUNS: got {path!r}, whose summary.json lists no methods; allowed {WANTED}")
    for name, m in methods.items():
        if not has_numbers(m):
            raise NotebookInputError(f"KLRL_RUNS: got {path!r}, whose method {name!r} lacks accuracy/kl mean and "
                                     f"ci95; allowed {WANTED}")
    for name, points in (summary.get("frontier") or {}).items():
        if not all(has_numbers(p, eta=True, closed_form=name == CLOSED_FORM) for p in points):
            want = "eta, success, kl" if name == CLOSED_FORM else "eta and accuracy/kl mean and ci95"
            raise NotebookInputError(f"KLRL_RUNS: got {path!r}, whose frontier {name!r} has a point without {want}; "
                                     f"allowed {WANTED}")
    if "degree" not in summary.get("task", {}):
        raise NotebookInputError(f"KLRL_RUNS: got {path!r}, whose summary.json has no task.degree; allowed {WANTED}")
    return summary


def colour_of(name: str, family: str) -> tuple:
    """The method's colour: its family's colormap, one shade per place in METHODS (fixed)."""
    mates = [n for n in METHODS if METHODS[n][1] == family]
    place = mates.index(name) if name in mates else len(mates)
    return plt.get_cmap(FAMILY_MAPS.get(family, "Purples"))(shade(place, len(mates) + 1))


def method_rows(methods: dict) -> list[dict]:
    """One row per method present, in METHODS order then by name: label, family, colour, the
    numbers of summary.json, and the number of seeds (1 where no per-seed list was written)."""
    order = list(METHODS)
    rows = []
    for name in sorted(methods, key=lambda n: (order.index(n) if n in order else len(order), n)):
        m = methods[name]
        label, family = METHODS.get(name, (name, m.get("family", "value")))
        family = m.get("family", family)
        rows.append({"name": name, "label": label, "family": family, "colour": colour_of(name, family),
                     "accuracy": float(m["accuracy"]["mean"]), "accuracy_ci95": float(m["accuracy"]["ci95"]),
                     "kl": float(m["kl"]["mean"]), "kl_ci95": float(m["kl"]["ci95"]),
                     "n": int(m.get("n", 0)), "seeds": len(m.get("seeds") or []) or 1,
                     "seed_accuracy": [float(s["accuracy"]["mean"]) for s in m.get("seeds") or []],
                     "seed_kl": [float(s["kl"]["mean"]) for s in m.get("seeds") or []]})
    return rows


try:
    summary = read_summary(RUN_DIRS)
except NotebookInputError as err:
    fail(err)
task = summary["task"]
d = int(task["degree"])
TASK = f"G({d}, {task.get('path_length', '?')}, {task.get('num_nodes', '?')})"
rows = method_rows(summary["methods"])
print(f"{RUN_DIRS[0]}: {TASK}, {len(rows)} method(s): {', '.join(r['name'] for r in rows)}")
machine = summary.get("machine", "?")      # provenance's device record, or a name
if isinstance(machine, dict):
    machine = f"{machine.get('device_kind', '?')} ({machine.get('platform', '?')})"
print("machine:", machine, "| seconds:", summary.get("seconds", {}).get("total", "?"),
      "| commit:", summary.get("provenance", {}).get("commit", "?"))
tf = summary.get("pi_ref", {}).get("teacher_forced") or {}
if tf.get("accuracy"):                  # the shortcut: ≈ 1/d at the first child, ≈ 1 elsewhere
    print("π_ref teacher-forced accuracy per target position:", ", ".join(f"{a:.2f}" for a in tf["accuracy"]))

# %% [markdown]
# ## The table
# Exact-match accuracy over test prompts (top-k 10, temperature 1, one sample per prompt) and the
# per-episode KL `Σ_t KL(π(·|x_t) ‖ π_ref(·|x_t))` along the method's own samples, each with its
# 95% normal CI over prompts; for a method post-trained with several seeds, the mean over seeds
# and the 95% CI of that mean over seeds, as summary.json gives them. `n`: test prompts; `seeds`:
# post-training seeds.

# %%
HEAD = ["method", "name", "family", "accuracy_mean", "accuracy_ci95", "kl_mean", "kl_ci95", "n", "seeds"]


def fixed(x: float) -> str:
    """x to 3 decimals, without the sign of a rounded-away negative zero (a KL of -1e-9)."""
    return f"{x:.3f}" if round(x, 3) != 0 else "0.000"


def table_lines(rows) -> list[str]:
    """The methods as a markdown table."""
    lines = ["| method | family | accuracy ± 95% CI | KL(π‖π_ref) ± 95% CI | n | seeds |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['family']} | {fixed(r['accuracy'])} ± {fixed(r['accuracy_ci95'])} | "
                     f"{fixed(r['kl'])} ± {fixed(r['kl_ci95'])} | {r['n']} | {r['seeds']} |")
    return lines


lines = table_lines(rows)
print("\n".join(lines))
os.makedirs(FIGURES, exist_ok=True)
with open(os.path.join(FIGURES, "methods.md"), "w") as fh:
    fh.write(f"Star graph {TASK}; π_ref's shortcut level 1/d = {1 / d:.3f}. 95% CIs over test prompts, or over "
             "seeds where seeds > 1.\n\n" + "\n".join(lines) + "\n")
with open(os.path.join(FIGURES, "methods.csv"), "w", newline="") as fh:
    w = csv.writer(fh)
    w.writerow(HEAD)
    for r in rows:
        w.writerow([r["label"], r["name"], r["family"], r["accuracy"], r["accuracy_ci95"], r["kl"], r["kl_ci95"],
                    r["n"], r["seeds"]])

# %% [markdown]
# ## Accuracy and KL per method
# Left, the paper's figure: exact-match accuracy per method, the dashed line at 1/d the level of
# π_ref's shortcut (the first child picked at random). Right, what it costs: the KL of each
# method's policy to π_ref per episode (π_ref's own is 0). Dots are the seeds where several ran.

# %%


def bar_positions(rows) -> np.ndarray:
    """x of each bar: consecutive within a family, one bar's gap between families."""
    x, pos = [], 0.0
    for i, r in enumerate(rows):
        if i and r["family"] != rows[i - 1]["family"]:
            pos += 0.6
        x.append(pos)
        pos += 1.0
    return np.array(x)


def draw_bars(ax, rows, x, key: str) -> None:
    """Bars of `key` with 95% CI error bars, the seeds as dots."""
    ax.bar(x, [r[key] for r in rows], yerr=[r[f"{key}_ci95"] for r in rows], capsize=3,
           color=[r["colour"] for r in rows], edgecolor="black", linewidth=0.5)
    for xi, r in zip(x, rows):
        seeds = r[f"seed_{key}"]
        if len(seeds) > 1:
            ax.scatter(np.full(len(seeds), xi), seeds, s=10, color="black", zorder=3)
    ax.set_xticks(x, [r["label"] for r in rows], rotation=40, ha="right")


x = bar_positions(rows)
fig, (ax_acc, ax_kl) = plt.subplots(1, 2, figsize=(12, 4.5))
draw_bars(ax_acc, rows, x, "accuracy")
ax_acc.axhline(1 / d, color="black", linestyle="--", linewidth=1, label=f"π_ref's shortcut level 1/d = {1 / d:.2f}")
ax_acc.set_ylim(0, 1.05)
ax_acc.set_ylabel("exact-match accuracy (test prompts)")
ax_acc.set_title(f"Star graph {TASK}: accuracy (95% CI)")
ax_acc.legend(fontsize=8, loc="upper right")
draw_bars(ax_kl, rows, x, "kl")
ax_kl.set_ylabel("KL(π‖π_ref) per episode")
ax_kl.set_title("KL to π_ref (95% CI)")
handles = [plt.Rectangle((0, 0), 1, 1, color=plt.get_cmap(FAMILY_MAPS[f])(0.75)) for f in FAMILIES
           if any(r["family"] == f for r in rows)]
ax_kl.legend(handles, [f for f in FAMILIES if any(r["family"] == f for r in rows)], fontsize=8, title="family")
fig.tight_layout()
fig.savefig(os.path.join(FIGURES, "stargraph_accuracy_kl.png"), dpi=120)
print("wrote", os.path.join(FIGURES, "stargraph_accuracy_kl.png"))

# %% [markdown]
# ## The η frontier
# Accuracy against KL to π_ref for each guided rule over η (a smaller η trusts the critic more and
# moves further from π_ref): the offline round's critic, Algorithm 1's, and the exact p (oracle),
# with the closed forms P* and KL(π*‖π_ref) of the exact p averaged over the test prompts (dotted;
# the oracle Q♯ curve samples it). Q♯ and CD coincide where p ∈ {0, 1} and separate where p is
# strictly between (η ≥ 0.3, or an imperfect critic). Up and to the left is better.

# %%
def draw_curve(ax, name: str, points: list) -> list:
    """One guided rule's points over η (Q♯ solid, CD dashed; the bar chart's colour); returns
    their (η, KL, accuracy, colour) for the labels."""
    label, family = METHODS.get(name, (name, "value"))
    colour = colour_of(name, family)
    pts = sorted(points, key=lambda p: -float(p["eta"]))
    kl = [float(p["kl"]["mean"]) for p in pts]
    acc = [float(p["accuracy"]["mean"]) for p in pts]
    ax.errorbar(kl, acc, xerr=[float(p["kl"]["ci95"]) for p in pts], yerr=[float(p["accuracy"]["ci95"]) for p in pts],
                color=colour, linestyle="--" if name.startswith("cd") else "-",
                marker="s" if name.startswith("cd") else "o", capsize=3, label=label)
    return [(float(p["eta"]), x, y, colour) for p, x, y in zip(pts, kl, acc)]


def label_etas(ax, labels: list) -> None:
    """η beside each point; where curves coincide (p ∈ {0, 1}) one label per place is enough."""
    span = max(max(abs(x) for _, x, _, _ in labels), 1e-9)
    placed = []
    for eta, xk, ya, colour in labels:
        if not any(e == eta and abs(xk - x) < 0.04 * span and abs(ya - y) < 0.04 for e, x, y in placed):
            ax.annotate(f"η={eta:g}", (xk, ya), fontsize=7, xytext=(4, 4), textcoords="offset points", color=colour,
                        bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7})
            placed.append((eta, xk, ya))


frontier = {k: v for k, v in (summary.get("frontier") or {}).items() if v}
curves = {k: v for k, v in frontier.items() if k != CLOSED_FORM}
if not curves:
    print("no frontier in this summary: stargraph_frontier.png not drawn")
else:
    fig, ax = plt.subplots(figsize=(7.5, 5))
    order, labels = list(METHODS), []
    for name in sorted(curves, key=lambda n: (order.index(n) if n in order else len(order), n)):
        labels += draw_curve(ax, name, curves[name])
    label_etas(ax, labels)
    if CLOSED_FORM in frontier:             # exact P*, KL*: what the oracle curves sample
        pts = sorted(frontier[CLOSED_FORM], key=lambda p: -float(p["eta"]))
        ax.plot([float(p["kl"]) for p in pts], [float(p["success"]) for p in pts], color="black", linestyle=":",
                marker="x", label="closed form P*, KL(π*‖π_ref)")
    ref = next((r for r in rows if r["name"] == "pi_ref"), None)
    if ref is not None:
        ax.errorbar([ref["kl"]], [ref["accuracy"]], yerr=[ref["accuracy_ci95"]], color="black", marker="*",
                    markersize=10, linestyle="none", label="π_ref")
    ax.axhline(1 / d, color="black", linestyle="--", linewidth=1, label=f"1/d = {1 / d:.2f}")
    ax.set_xlabel("KL(π‖π_ref) per episode")
    ax.set_ylabel("exact-match accuracy (test prompts)")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Star graph {TASK}: accuracy vs KL over η (95% CI)")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(os.path.join(FIGURES, "stargraph_frontier.png"), dpi=120)
    print("wrote", os.path.join(FIGURES, "stargraph_frontier.png"))

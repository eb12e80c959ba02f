# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Atari: learning curves, human-normalized aggregates and the published Atari-100k anchors
#
# Reads the run directories of an Atari experiment (`experiments/atari100k.toml` or any run on
# the `ale` / `envpool` backends) and redraws two figures:
#
# 1. **per-game learning curves** (`atari_curves.png`): evaluation return against environment
#    steps per member, one line per group (agent + swept values), the game's random score and the
#    published DER / DrQ / SPR scores as horizontal reference lines;
# 2. **aggregates** (`atari_aggregate.png`): human-normalized IQM, mean and median over
#    runs × games with stratified-bootstrap 95% CIs per group, and the published anchors'
#    IQM / mean / median on the same games on the same axes.
#
# Layouts read: a sweep over `env.name` (`klrl train experiments/atari100k.toml --out OUT`:
# `OUT/sweep.json` names each game's run directory in its `"runs"`), or one run per game made
# with `--set env.name=<Game> --out OUT/<Game>` (then every sub-directory of `OUT` holding a
# `config.json` of an Atari backend is a game's run), or a single game's run directory.
#
# This notebook only reads run directories (it never trains). Parameters (the next cell, or the
# environment): `KLRL_RUNS`, the results folder(s) or run directories to draw (separated by `:`
# or commas; default the committed CPU pipeline run `results/atari_pipeline`, or
# `KLRL_RESULTS_DIR`); `KLRL_FIGURES_DIR`, where the figures go (default `figures/atari/`,
# outside `results/`); `KLRL_BOOTSTRAP_REPS` sets the bootstrap
# replicates (default 2000); `KLRL_WRITE_SUMMARY` names a JSON file for the numbers.
#
# **What the committed CPU run is.** `results/atari_pipeline` is a *pipeline check*: the
# atari100k protocol run end to end (ALE vector env, frame store, training, concurrent and
# final evaluation, these figures) at a budget far below 100k steps per member, on a CPU. Its
# scores say that the pipeline produces numbers on the right scales, **not** that any agent
# learns, and its comparison with the published anchors (measured at 100k steps) is no
# benchmark result.
#
# **A game counts** in the tables and aggregates only when its run finished (its
# `summary.json` exists). Runs in progress are listed and their curves drawn.
#
# **Final score of a member**: `final_eval_return` from the run's `final_eval.csv` when it has
# one (the mean raw game score over at least `eval.final_episodes` episodes at
# `eval.epsilon` after training, the protocol's final evaluation); otherwise its
# `eval_return` curve scored by the run's own rule (`eval.score` in its config:
# `klrl.results.final_score`, the one definition the runner's summary and `klrl merge` use):
# the mean of the last `eval.score_k` (3) non-NaN evaluations (the default; concurrent
# evaluation: NaN at a chunk where no test episode ended), or the value at the last step. Means over
# seeds are NaN-aware.

# %%
import json
import math
import os
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from klrl.config_hash import upgrade_resolved  # noqa: E402
from klrl.notebook_io import NotebookInputError, fail, figures_dir, repo_root, run_paths  # noqa: E402
from klrl.results import (  # noqa: E402
    curves, final_score, group_key, group_label, json_safe, read_metrics, score_rule, swept_columns,
)
from klrl.scores import STATISTICS, aggregate, atari_games, game_key, human_normalized, table  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
ROOT = repo_root(HERE)
RUN_DIRS, _ = run_paths([os.environ.get("KLRL_RESULTS_DIR", os.path.join(ROOT, "results", "atari_pipeline"))])
RESULTS = os.pathsep.join(RUN_DIRS)             # KLRL_RUNS: the results folder(s) to draw
FIGURES = figures_dir(ROOT, "atari")            # KLRL_FIGURES_DIR
BOOTSTRAP_REPS = int(os.environ.get("KLRL_BOOTSTRAP_REPS", "2000"))
WRITE_SUMMARY = os.environ.get("KLRL_WRITE_SUMMARY")

ATARI_BACKENDS = ("ale", "envpool")
SHOW_TRAIN_RETURN = True                         # training-episode return as a dashed line
ANCHOR_STEPS = 100_000                           # the published Atari-100k scores: after 100k agent steps
ANCHORS = ("DER", "DrQ", "SPR")                  # columns of klrl/data/atari100k_published.csv
ANCHOR_STYLE = {"DER": ("0.15", ":"), "DrQ": ("0.35", "-."), "SPR": ("0.55", (0, (6, 2)))}
AGENT_ORDER = ("dqn", "mdqn", "mvi")
BENCHMARK = atari_games("atari100k")             # game order: the benchmark's (alphabetical), then others


def save(fig, name):
    os.makedirs(FIGURES, exist_ok=True)
    path = os.path.join(FIGURES, name)
    fig.savefig(path, dpi=110)
    print("wrote", path)


def score_source(score):
    """What a final score not from final_eval.csv is: `last_eval` or `mean_last_<k>_evals`."""
    return "last_eval" if score.rule == "last" else f"mean_last_{score.k}_evals"


def nanmean(x):
    x = np.asarray(x, dtype=float)
    return float(np.mean(x[~np.isnan(x)])) if np.any(~np.isnan(x)) else math.nan


def game_order(game):
    keys = [game_key(g) for g in BENCHMARK]
    k = game_key(game)
    return (keys.index(k) if k in keys else len(keys), game)


def group_order(label):
    agent = label.split(" ")[0]
    return (AGENT_ORDER.index(agent) if agent in AGENT_ORDER else len(AGENT_ORDER), label)


def read_json(path):
    with open(path) as fh:
        return json.load(fh)


def load_run(path):
    """One game's run directory -> curves, members and final scores per group, and progress."""
    record = read_json(os.path.join(path, "config.json"))
    cfg = upgrade_resolved(record["config"])         # a record's config under today's key names
    metrics = os.path.join(path, "metrics.csv")
    columns = swept_columns(metrics) if os.path.isfile(metrics) else []
    rows = read_metrics(metrics) if os.path.isfile(metrics) else []
    members = {}                                  # group -> [(member, seed)] in member order
    for r in rows:
        members.setdefault(group_key(r, columns), set()).add((r["member"], r["seed"]))
    members = {k: sorted(v) for k, v in members.items()}
    final_eval = {}                               # member -> (final_eval_return, final_eval_episodes)
    fe_path = os.path.join(path, "final_eval.csv")
    if os.path.isfile(fe_path):
        fe = {}
        for r in read_metrics(fe_path):
            fe.setdefault(r["member"], {})[r["metric"]] = r["value"]
        final_eval = {m: (d["final_eval_return"], d.get("final_eval_episodes", math.nan))
                      for m, d in fe.items() if "final_eval_return" in d}
    score = score_rule(cfg)                       # the run's own rule (eval.score; default: last)
    evals = curves(rows, "eval_return", columns)
    trains = curves(rows, "train_return", columns)
    groups = {}
    for key, (steps, vals) in evals.items():
        mem = members[key]
        finals, sources, episodes = [], [], []
        for (m, _), row in zip(mem, vals):
            if m in final_eval:
                finals.append(final_eval[m][0])
                sources.append("final_eval")
                episodes.append(final_eval[m][1])
            else:
                finals.append(float(final_score(row, *score)))
                sources.append(score_source(score))
        groups[group_label(key, columns)] = {
            "steps": steps, "values": vals, "train": trains.get(key), "members": [m for m, _ in mem],
            "seeds": [s for _, s in mem], "finals": np.array(finals, dtype=float), "sources": sources,
            "min_final_eval_episodes": int(min(episodes)) if episodes else None,
            "steps_done": int(steps.max()) if len(steps) else 0,
        }
    return {"path": path, "record": record, "game": cfg["env"]["name"], "preset": cfg["env"].get("preset"),
            "backend": cfg["env"]["backend"], "total_steps": int(cfg["train"]["total_steps"]),
            "eval_epsilon": cfg.get("eval", {}).get("epsilon"),
            "final_eval_episodes": int(cfg.get("eval", {}).get("final_episodes", 0)),
            "agents": cfg["agent"]["name"] if isinstance(cfg["agent"]["name"], list) else [cfg["agent"]["name"]],
            "seeds": len(cfg["train"]["seeds"]), "groups": groups,
            "complete": os.path.isfile(os.path.join(path, "summary.json"))}


def find_runs(top):
    """({game: run}, layout, [games listed but not started]) of a results folder."""
    if not os.path.isdir(top):
        return {}, None, []
    sweep_path = os.path.join(top, "sweep.json")
    own = os.path.join(top, "config.json")
    if os.path.isfile(own) and read_json(own).get("config", {}).get("env", {}).get("backend") in ATARI_BACKENDS:
        layout = "a single game's run directory"
        dirs = {os.path.basename(os.path.normpath(top)): top}
    elif os.path.isfile(sweep_path):
        listed = read_json(sweep_path).get("runs", {})
        layout = "sweep over env.name (sweep.json)"
        dirs = {game: os.path.join(top, sub) for game, sub in listed.items()}
    else:
        layout = "one run directory per game"
        dirs = {}
        for sub in sorted(os.listdir(top)):
            cfg_path = os.path.join(top, sub, "config.json")
            if os.path.isfile(cfg_path):
                env = read_json(cfg_path).get("config", {}).get("env", {})
                if env.get("backend") in ATARI_BACKENDS:
                    dirs[sub] = os.path.join(top, sub)
    found, missing = {}, []
    for label, path in dirs.items():
        if not os.path.isfile(os.path.join(path, "config.json")):
            missing.append(label)
            continue
        run = load_run(path)
        game = run["game"]
        if game in found:                         # one game run twice: keep a finished one
            keep = found[game] if found[game]["complete"] or not run["complete"] else run
            print(f"  note: {game} run twice ({found[game]['path']}, {path}); using {keep['path']}")
            run = keep
        found[game] = run
    return {g: found[g] for g in sorted(found, key=game_order)}, layout, missing


def find_all(paths):
    """find_runs over every path: ({game: run}, layout(s), not started); a path without Atari runs
    ends the notebook with one line naming it (exit status 2)."""
    runs, layouts, missing = {}, [], []
    for top in paths:
        found, layout, not_started = find_runs(top)
        if not found:
            fail(NotebookInputError(
                f"KLRL_RUNS: got {top!r}: no Atari runs found (wanted a sweep.json naming the game run directories, "
                "or sub-directories holding a config.json of an ale/envpool run); make one with `klrl train "
                "experiments/atari100k.toml --out <dir>` or point KLRL_RUNS at a results folder"))
        runs.update({g: r for g, r in found.items() if g not in runs})
        layouts.append(layout)
        missing += not_started
    return {g: runs[g] for g in sorted(runs, key=game_order)}, "; ".join(layouts), missing


RUNS, LAYOUT, NOT_STARTED = find_all(RUN_DIRS)

print(f"{RESULTS}: {LAYOUT}")
for game, run in RUNS.items():
    prov = run["record"].get("provenance", {})
    progress = ", ".join(f"{g} {v['steps_done']:,}" for g, v in sorted(run["groups"].items(), key=lambda kv: group_order(kv[0])))
    state = "complete" if run["complete"] else "in progress"
    fe = f"final eval >= {run['final_eval_episodes']} episodes" if run["final_eval_episodes"] else "no final eval"
    print(f"  {game}: {state}; budget {run['total_steps']:,} steps/member (done: {progress or 'nothing yet'}); "
          f"{run['seeds']} seeds; preset {run['preset']}, backend {run['backend']}, eval eps {run['eval_epsilon']}, "
          f"{fe}; commit {str(prov.get('commit'))[:12]}, device {prov.get('device', {}).get('platform')}")
if NOT_STARTED:
    print(f"  listed but not started: {', '.join(NOT_STARTED)}")

COMPLETE = [g for g, r in RUNS.items() if r["complete"]]
IN_PROGRESS = [g for g, r in RUNS.items() if not r["complete"]]
GROUPS = sorted({k for r in RUNS.values() for k in r["groups"]}, key=group_order)
COLORS = {g: f"C{i}" for i, g in enumerate(GROUPS)}
RANDOM = {g: table("atari_human_random")[game_key(g)]["random"] for g in RUNS if game_key(g) in table("atari_human_random")}
HUMAN = {g: table("atari_human_random")[game_key(g)]["human"] for g in RUNS if game_key(g) in table("atari_human_random")}
PUBLISHED = {g: {a: table("atari100k_published")[game_key(g)][a] for a in ANCHORS}
             for g in RUNS if game_key(g) in table("atari100k_published")}
BUDGETS = sorted({r["total_steps"] for r in RUNS.values()})

# %% [markdown]
# ## Learning curves
# Evaluation return (the mean raw game score of the concurrent test episodes that ended in a
# chunk) against environment steps per member, one panel per game, one colour per group: the
# line is the NaN-aware **mean over seeds** at each evaluation point (points where no seed had
# a test episode end are skipped), the band the **min–max over seeds**; the dashed line is the
# training-episode return (mean over seeds, no band). The open circle at the run's last step is
# the group's final score (mean over seeds; from `final_eval.csv` where there is one). Grey
# horizontal lines: the game's random score (DQN Zoo's table, solid) and the published DER, DrQ
# and SPR scores after **100k** steps; a panel whose run has another budget says so in its title.

# %%


def mean_minmax(values):
    """NaN-aware mean, min and max over seeds at every step, and the steps where any is finite."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)          # all-NaN columns: no episode ended
        ok = ~np.all(np.isnan(values), axis=0)
        return ok, np.nanmean(values, axis=0), np.nanmin(values, axis=0), np.nanmax(values, axis=0)


def plot_curves():
    n = len(RUNS)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (game, run) in zip(axes.flat, RUNS.items()):
        for label in sorted(run["groups"], key=group_order):
            g, color = run["groups"][label], COLORS[label]
            ok, mid, lo, hi = mean_minmax(g["values"])
            if ok.any():
                ax.plot(g["steps"][ok], mid[ok], color=color, marker=".", label=f"{label} (n={len(g['finals'])})")
                ax.fill_between(g["steps"][ok], lo[ok], hi[ok], color=color, alpha=0.2, linewidth=0)
            if SHOW_TRAIN_RETURN and g["train"] is not None:
                t_steps, t_vals = g["train"]
                t_ok, t_mid, _, _ = mean_minmax(t_vals)
                if t_ok.any():
                    ax.plot(t_steps[t_ok], t_mid[t_ok], color=color, linestyle="--", linewidth=1, alpha=0.8)
            final = nanmean(g["finals"])
            if math.isfinite(final):
                ax.plot([g["steps_done"]], [final], marker="o", markersize=9, markerfacecolor="none",
                        markeredgewidth=1.5, color=color, linestyle="none")
        if game in RANDOM:
            ax.axhline(RANDOM[game], color="0.6", linewidth=1, label=f"random {RANDOM[game]:g}")
        for a in ANCHORS if game in PUBLISHED else ():
            shade, style = ANCHOR_STYLE[a]
            ax.axhline(PUBLISHED[game][a], color=shade, linestyle=style, linewidth=1.2,
                       label=f"{a} @100k {PUBLISHED[game][a]:g}")
            if run["total_steps"] >= ANCHOR_STEPS:
                ax.plot([ANCHOR_STEPS], [PUBLISHED[game][a]], marker="D", color=shade, linestyle="none")
        state = "" if run["complete"] else " [in progress]"
        budget = "" if run["total_steps"] == ANCHOR_STEPS else \
            f"\nbudget {run['total_steps']:,} steps/member; anchors at 100k"
        ax.set_title(f"{game}{state}{budget}", fontsize=10)
        ax.set_xlabel("environment steps per member")
        ax.set_ylabel("raw game score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    train = "; dashed = training return" if SHOW_TRAIN_RETURN else ""
    fig.suptitle(f"Atari evaluation return: mean over seeds, band = min-max over seeds{train}; "
                 "o = final score", fontsize=11)
    fig.tight_layout()
    save(fig, "atari_curves.png")
    plt.show()


plot_curves()

# %% [markdown]
# ## Final scores per game
# Raw final scores (mean over seeds; n = seeds with a finite final score) per group and game
# next to the game's random and human scores (DQN Zoo's table, measured under another protocol:
# 1–30 random start no-ops, 108k-frame cap) and the published Atari-100k scores; then the same
# human-normalized, (s − random) / (human − random), per seed before the mean.

# %%
PER_GAME = {}
for game in COMPLETE:
    run = RUNS[game]
    rand, hum = RANDOM.get(game), HUMAN.get(game)
    entry = {"budget_steps": run["total_steps"], "eval_epsilon": run["eval_epsilon"],
             "final_eval_episodes": run["final_eval_episodes"], "random": rand, "human": hum,
             "published": PUBLISHED.get(game), "published_human_normalized":
                 {a: float(human_normalized(game, s)) for a, s in PUBLISHED[game].items()}
                 if game in PUBLISHED and game in RANDOM else None, "groups": {}}
    for label in sorted(run["groups"], key=group_order):
        g = run["groups"][label]
        hn = human_normalized(game, g["finals"]) if game in RANDOM else np.full(len(g["finals"]), np.nan)
        sources = sorted(set(g["sources"]))
        entry["groups"][label] = {
            "n": int(np.sum(~np.isnan(g["finals"]))), "seeds": g["seeds"], "members": g["members"],
            "finals": g["finals"].tolist(), "final_source": sources[0] if len(sources) == 1 else "mixed",
            "min_final_eval_episodes": g["min_final_eval_episodes"], "mean": nanmean(g["finals"]),
            "human_normalized": hn.tolist(), "human_normalized_mean": nanmean(hn)}
    PER_GAME[game] = entry


def print_table(title, cell, ref_cols):
    if not PER_GAME:
        print("no finished game: no table")
        return
    head = f"{'game':<16}" + "".join(f"{c:>10}" for c in ref_cols) + "".join(f"{g[:14]:>16}" for g in GROUPS)
    print(title)
    print(head)
    for game, e in PER_GAME.items():
        refs = "".join(f"{v:>10.3g}" if v is not None and math.isfinite(v) else f"{'-':>10}"
                       for v in cell(game, e, None))
        vals = ""
        for label in GROUPS:
            if label in e["groups"]:
                v, n = cell(game, e, label)
                vals += f"{v:>12.4g} (n{n})" if math.isfinite(v) else f"{'nan':>12} (n{n})"
            else:
                vals += f"{'-':>16}"
        print(f"{game:<16}{refs}{vals}")


def raw_cell(game, e, label):
    if label is None:
        pub = e["published"] or {}
        return [e["random"], e["human"], *(pub.get(a) for a in ANCHORS)]
    return e["groups"][label]["mean"], e["groups"][label]["n"]


def normalized_cell(game, e, label):
    if label is None:
        pub = e["published_human_normalized"] or {}
        return [pub.get(a) for a in ANCHORS]
    return e["groups"][label]["human_normalized_mean"], e["groups"][label]["n"]


print_table("raw final score (mean over seeds) | random, human, published @100k",
            raw_cell, ("random", "human", *ANCHORS))
print()
print_table("human-normalized final score (mean over seeds) | published @100k", normalized_cell, ANCHORS)
for game in COMPLETE:
    src = {e["final_source"] for e in PER_GAME[game]["groups"].values()}
    print(f"  {game}: final score from {', '.join(sorted(src))}, budget {RUNS[game]['total_steps']:,} steps/member")
for game in IN_PROGRESS:
    print(f"  {game}: in progress, not in the tables")

# %% [markdown]
# ## Aggregates over runs × games
# Per group, the human-normalized final scores form a [seeds, games] matrix over the finished
# games (rows aligned by seed); `klrl.scores.aggregate` gives the IQM over all runs × games, the
# mean over games of the per-game mean and the median over games of the per-game mean, each
# with a stratified-bootstrap 95% CI (seeds resampled within each game, `KLRL_BOOTSTRAP_REPS`
# replicates). A game where a group has no finite final score is left out of that group's
# matrix (printed).
#
# The **published anchors** (DER, DrQ, SPR) have one number per game, the paper's mean over its
# runs: their IQM, mean and median are computed from those per-game means (a [1, games] matrix:
# the IQM is over games), on exactly the games of the agents' aggregate, and carry **no CI** (the
# per-run scores are not published in the tables used here). They were measured after 100k
# steps per member; a run with a smaller budget is not comparable to them.

# %%


def seed_matrix(per_game):
    """{game: {seed: score}} -> [seeds, games] (NaN where a seed is missing), seeds sorted."""
    seeds = sorted({s for d in per_game.values() for s in d})
    return np.array([[per_game[g].get(s, np.nan) for g in per_game] for s in seeds], dtype=float)


AGG = {}
for label in GROUPS:
    per_game = {}
    for game, e in PER_GAME.items():
        if game not in RANDOM or label not in e["groups"]:
            continue
        g = e["groups"][label]
        if g["n"] == 0:
            print(f"{label}: {game} left out of the aggregate (no finite final score)")
            continue
        per_game[game] = dict(zip(g["seeds"], g["human_normalized"]))
    if per_game:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            AGG[label] = {**aggregate(seed_matrix(per_game), reps=BOOTSTRAP_REPS), "games": list(per_game)}

AGG_GAMES = sorted({g for a in AGG.values() for g in a["games"]}, key=game_order)
ANCHOR_GAMES = [g for g in AGG_GAMES if g in PUBLISHED]
ANCHOR_AGG = {}
if ANCHOR_GAMES:
    for a in ANCHORS:
        x = np.array([[float(human_normalized(g, PUBLISHED[g][a])) for g in ANCHOR_GAMES]])
        ANCHOR_AGG[a] = {name: float(stat(x)) for name, stat in STATISTICS.items()}
if ANCHOR_GAMES != AGG_GAMES:
    print(f"published anchors cover {ANCHOR_GAMES} of the aggregated games {AGG_GAMES}")
for label, a in AGG.items():
    if a["games"] != AGG_GAMES:
        print(f"note: {label} aggregated over {a['games']}, not all of {AGG_GAMES}")

if AGG:
    print(f"human-normalized final scores over runs x games ({', '.join(AGG_GAMES)}), "
          f"budgets {', '.join(f'{b:,}' for b in BUDGETS)} steps/member")
    print(f"{'group':<22} {'runs':>4} {'IQM':>7} {'95% CI':<17} {'mean':>7} {'95% CI':<17} {'median':>7} {'95% CI':<17}")
    for label, a in AGG.items():
        cells = " ".join(f"{a[s]:7.3f} [{a[s + '_ci_low']:6.3f}, {a[s + '_ci_high']:6.3f}]"
                         for s in ("iqm", "mean", "median"))
        print(f"{label:<22} {a['runs'] * a['tasks']:>4} {cells}")
    for name, a in ANCHOR_AGG.items():
        cells = " ".join(f"{a[s]:7.3f} {'(no CI)':<17}" for s in ("iqm", "mean", "median"))
        print(f"{name + ' (published, 100k)':<22} {len(ANCHOR_GAMES):>4} {cells}")
else:
    print("no finished game with a human score: no aggregate")


def plot_aggregates():
    if not AGG:
        return
    names = list(AGG) + [f"{a} (published)" for a in ANCHOR_AGG]
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.45 * len(names) + 2.0), sharey=True)
    y = np.arange(len(names))[::-1]
    values = {stat: [a[f"{stat}_ci_high"] for a in AGG.values()] + [a[stat] for a in ANCHOR_AGG.values()]
              for stat in ("iqm", "mean", "median")}
    for ax, stat, title in zip(axes, ("iqm", "mean", "median"), ("IQM", "Mean", "Median")):
        for i, label in enumerate(AGG):
            a = AGG[label]
            ax.hlines(y[i], a[f"{stat}_ci_low"], a[f"{stat}_ci_high"], color=COLORS[label], linewidth=6, alpha=0.5)
            ax.plot([a[stat]], [y[i]], "|", color="k", markersize=14)
        for j, name in enumerate(ANCHOR_AGG):
            ax.plot([ANCHOR_AGG[name][stat]], [y[len(AGG) + j]], "D", color=ANCHOR_STYLE[name][0], markersize=7)
        ax.axvline(0.0, color="grey", linestyle=":", linewidth=1)           # random
        if any(v >= 0.5 for v in values[stat]):                             # human, when in range
            ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("human-normalized score")
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(y, names)
    budget = ", ".join(f"{b:,}" for b in BUDGETS)
    fig.suptitle(f"Atari ({', '.join(AGG_GAMES)}): bars = stratified-bootstrap 95% CIs over runs x games; "
                 f"diamonds = published per-game means, no CI\nbudget {budget} steps/member; anchors at 100k "
                 "(dotted: 0 = random, 1 = human)", fontsize=10)
    fig.tight_layout()
    save(fig, "atari_aggregate.png")
    plt.show()


plot_aggregates()

# %% [markdown]
# ## Summary
# One compact JSON line; with `KLRL_WRITE_SUMMARY=<path>` the full summary (per game: random,
# human and published scores, each group's per-seed final raw and human-normalized scores;
# per group the aggregates with CIs; the anchors' aggregates on the same games) is written there
# as JSON (non-finite numbers as `null`).

# %%


SUMMARY = json_safe({
    "results_dir": RESULTS,
    "layout": LAYOUT,
    "note": "human-normalized with DQN Zoo's random/human table; anchors are published per-game means at "
            f"{ANCHOR_STEPS:,} steps (no CI); budgets here: {BUDGETS}",
    "final_score": "final_eval_return from final_eval.csv when present, else the member's eval_return "
                   "scored by its run's eval.score rule (klrl.results.final_score)",
    "bootstrap_reps": BOOTSTRAP_REPS,
    "games": COMPLETE,
    "in_progress": IN_PROGRESS,
    "not_started": NOT_STARTED,
    "groups": GROUPS,
    "per_game": PER_GAME,
    "aggregate": AGG,
    "aggregate_games": AGG_GAMES,
    "anchors": {"games": ANCHOR_GAMES, "steps": ANCHOR_STEPS, **ANCHOR_AGG},
})
short = {"games": COMPLETE, "aggregate": {
    g: {s: round(a[s], 4) if a[s] is not None else None for s in ("iqm", "iqm_ci_low", "iqm_ci_high", "mean", "median")}
    for g, a in SUMMARY["aggregate"].items()},
    "anchors": {a: {s: round(v, 4) for s, v in d.items()} for a, d in ANCHOR_AGG.items()}}
print("SUMMARY " + json.dumps(short))
if WRITE_SUMMARY:
    os.makedirs(os.path.dirname(os.path.abspath(WRITE_SUMMARY)), exist_ok=True)
    with open(WRITE_SUMMARY, "w") as fh:
        json.dump(SUMMARY, fh, indent=2)
        fh.write("\n")
    print(f"wrote {WRITE_SUMMARY}")

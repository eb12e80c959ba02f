# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # The Munchausen ablation and MVI(q) on MinAtar
#
# Two experiments, each run once per game (Breakout, SpaceInvaders, Asterix) with
# `klrl train <toml> --set env.name=<Game>-MinAtar --out results/<experiment>/<Game>`:
#
# - `results/minatar_munchausen/<Game>` (`experiments/minatar_munchausen.toml`): DQN, soft DQN
#   (entropy term only), advantage learning (AL, action-gap term only) and M-DQN (both), one
#   population of seeds per agent: the question of Vieillard, Pietquin & Geist (2020, Fig. 2)
#   asked on MinAtar;
# - `results/minatar_mvi_q/<Game>` (`experiments/minatar_mvi_q.toml`): Munchausen value
#   iteration with the Tsallis entropic index q (Zhu et al. 2023; q = 1 is M-DQN's Shannon
#   case, q = 2 the sparsemax case), one population of q values x seeds.
#
# This notebook only reads run directories (it never trains). Parameters (the next cell, or the
# environment): `KLRL_RUNS`, your run directories (or folders holding them, separated by `:` or
# commas), each sorted into its experiment by what it ran (the agents dqn / soft_dqn / al / mdqn:
# the ablation; mvi swept over `agent.entropic_index`: MVI(q)), one run per game; unset, the
# committed `results/minatar_munchausen` and `results/minatar_mvi_q` (`KLRL_RESULTS_DIR` names
# another results folder); `KLRL_FIGURES_DIR`, where the figures go (default
# `figures/munchausen_minatar/`, outside `results/`); `KLRL_BOOTSTRAP_REPS`, the bootstrap
# replicates (default 2000); `KLRL_WRITE_SUMMARY`, a JSON file for the numbers the README
# quotes. A run that fits neither experiment (or is not on MinAtar) ends the notebook with one
# line naming it (exit status 2).
#
# **A game counts** for an experiment only when its run finished, i.e. its `summary.json`
# exists (klrl writes it after the last population). Runs still in progress are listed and
# their curves drawn, but they enter no table, no normalization and no aggregate.
#
# **Final score of a member**: evaluation is concurrent (2 test envs per member at ε = 0.01
# inside the training batch), so `eval_return` at a chunk is NaN when no test episode ended
# in that chunk. A member's final score is its `eval_return` curve scored by its run's own
# rule (`eval.score` in the run's config; `klrl.results.final_score`, the one definition the
# runner's summary and `klrl merge` use): the mean of the last `eval.score_k` (3) non-NaN
# evaluations (the default; fewer if it has fewer; NaN if none), or the value at the last step
# (NaN if no test episode ended in the last chunk). All means over seeds here are NaN-aware.

# %%
import json
import math
import os
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from klrl.results import (  # noqa: E402
    curves, final_score, iqm, json_safe, read_metrics, score_rule, stratified_bootstrap_ci, swept_columns,
)
from klrl.notebook_io import NotebookInputError, fail, figures_dir, find_train_runs, repo_root, run_paths  # noqa: E402
from klrl.scores import aggregate, minmax_normalized  # noqa: E402

# Parameters: set them here, or in the environment.
HERE = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
ROOT = repo_root(HERE)
RESULTS = os.environ.get("KLRL_RESULTS_DIR", os.path.join(ROOT, "results"))
FIGURES = figures_dir(ROOT, "munchausen_minatar")   # KLRL_FIGURES_DIR
BOOTSTRAP_REPS = int(os.environ.get("KLRL_BOOTSTRAP_REPS", "2000"))
WRITE_SUMMARY = os.environ.get("KLRL_WRITE_SUMMARY")

GAMES = ("Breakout", "SpaceInvaders", "Asterix")       # the games of the protocol, in this order
RANDOM_EPISODES, RANDOM_SEED = 100, 0
EXPERIMENTS = {
    "munchausen": {"dir": "minatar_munchausen", "title": "Munchausen ablation", "figure": "munchausen_minatar"},
    "mvi_q": {"dir": "minatar_mvi_q", "title": "MVI(q)", "figure": "mvi_q_minatar"},
}

RUN_DIRS, RUNS_GIVEN = run_paths([os.path.join(RESULTS, spec["dir"]) for spec in EXPERIMENTS.values()])
MUNCHAUSEN_AGENTS = ("dqn", "soft_dqn", "al", "mdqn")


def save(fig, name):
    os.makedirs(FIGURES, exist_ok=True)
    path = os.path.join(FIGURES, name)
    fig.savefig(path, dpi=110)
    print("wrote", path)


def group_name(key, columns):
    """Munchausen runs: the agent; MVI runs: `q=<entropic index>`."""
    agent, *vals = key
    swept = dict(zip(columns, vals))
    if swept.get("entropic_index") is not None:
        return f"q={swept['entropic_index']:g}"
    return agent


def load_run(path):
    """One run directory -> its record, per-group curves and final scores, and progress."""
    with open(os.path.join(path, "config.json")) as fh:
        record = json.load(fh)
    metrics = os.path.join(path, "metrics.csv")
    columns = swept_columns(metrics)
    rows = read_metrics(metrics)
    cfg = record["config"]
    score = score_rule(cfg)                               # the run's own rule (eval.score; default: last)
    groups = {}
    for key, (steps, vals) in curves(rows, "eval_return", columns).items():
        groups[group_name(key, columns)] = {"steps": steps, "values": vals, "finals": final_score(vals, *score)}
    agents = cfg["agent"]["name"] if isinstance(cfg["agent"]["name"], list) else [cfg["agent"]["name"]]
    done = {a: max([r["step"] for r in rows if r["agent"] == a], default=0) for a in agents}
    return {"path": path, "record": record, "groups": groups, "agents": agents, "steps_done": done, "score": score,
            "columns": columns,
            "total_steps": cfg["train"]["total_steps"], "seeds": len(cfg["train"]["seeds"]),
            "complete": os.path.exists(os.path.join(path, "summary.json"))}


def order_groups(names):
    """Munchausen agents in the protocol's order, q values ascending."""
    protocol = ["dqn", "soft_dqn", "al", "mdqn"]
    return sorted(names, key=lambda n: (0, float(n[2:])) if n.startswith("q=")
                  else (1, protocol.index(n) if n in protocol else len(protocol), n))


def experiment_of(run):
    """The experiment a run belongs to ('munchausen' or 'mvi_q'), by its env and agents."""
    env, agents = run["record"]["config"]["env"]["name"], run["agents"]
    if env.endswith("-MinAtar"):
        if "entropic_index" in run["columns"] and set(agents) == {"mvi"}:
            return "mvi_q"
        if set(agents) <= set(MUNCHAUSEN_AGENTS):
            return "munchausen"
    raise NotebookInputError(
        f"KLRL_RUNS: got {run['path']!r} ({env}, agents {', '.join(agents)}); allowed MinAtar runs of "
        f"{', '.join(MUNCHAUSEN_AGENTS)} (experiments/minatar_munchausen.toml) or of mvi swept over "
        "agent.entropic_index (experiments/minatar_mvi_q.toml)")


def find_games(paths):
    """{experiment: {game: run}} of the run directories in `paths`, each run sorted into its
    experiment (experiment_of); of two runs of one game, a finished one is kept."""
    found = {name: {} for name in EXPERIMENTS}
    for path in find_train_runs(paths, "MinAtar Munchausen or MVI(q) agents"):
        run = load_run(path)
        exp = found[experiment_of(run)]
        game = run["record"]["config"]["env"]["name"].replace("-MinAtar", "")
        if game in exp:                           # two runs of one game: keep a finished one
            keep = exp[game] if exp[game]["complete"] or not run["complete"] else run
            print(f"  note: {game} run twice ({exp[game]['path']}, {path}); using {keep['path']}")
            run = keep
        exp[game] = run
    return {name: {g: runs[g] for g in sorted(runs, key=game_order)} for name, runs in found.items()}


def game_order(game):
    """The protocol's games first, in its order, then any other game by name."""
    return (GAMES.index(game) if game in GAMES else len(GAMES), game)


try:                                              # unset KLRL_RUNS: the committed folders that exist
    RUNS = find_games(RUN_DIRS if RUNS_GIVEN else [p for p in RUN_DIRS if os.path.isdir(p)] or RUN_DIRS[:1])
except NotebookInputError as err:
    fail(err)
for name, spec in EXPERIMENTS.items():
    runs = RUNS[name]
    print(f"{spec['title']}:")
    if not runs:
        print("  nothing found")
    for game, run in runs.items():
        prov = run["record"].get("provenance", {})
        progress = ", ".join(f"{a} {run['steps_done'][a]:,}/{run['total_steps']:,}" for a in run["agents"])
        state = "complete" if run["complete"] else "in progress"
        print(f"  {game}: {state} ({progress} env steps per member); groups "
              f"{', '.join(order_groups(run['groups']))}; {run['seeds']} seeds; "
              f"commit {str(prov.get('commit'))[:12]}, device {prov.get('device', {}).get('platform')}")
    missing = [g for g in GAMES if g not in runs]
    if missing:
        print(f"  not found: {', '.join(missing)}")

COMPLETE = {name: [g for g, r in runs.items() if r["complete"]] for name, runs in RUNS.items()}
IN_PROGRESS = {name: [g for g, r in runs.items() if not r["complete"]] for name, runs in RUNS.items()}

# %% [markdown]
# ## Learning curves
# Greedy (ε = 0.01) evaluation return against environment steps per member, one panel per
# game: the line is the NaN-aware **mean over seeds**, the band a percentile bootstrap 95% CI
# of that mean (seeds resampled with replacement at every evaluation point, `KLRL_BOOTSTRAP_REPS`
# replicates). Games still in progress are drawn too (marked in the panel title).

# %%


def mean_band(values, reps=BOOTSTRAP_REPS, seed=0):
    """NaN-aware mean over seeds and its bootstrap 95% CI at every step; values [seeds, T]."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.shape[0], size=(reps, values.shape[0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)      # all-NaN columns: no test episode ended
        mid = np.nanmean(values, axis=0)
        boot = np.nanmean(values[idx], axis=1)               # [reps, T]
        lo, hi = np.nanquantile(boot, 0.025, axis=0), np.nanquantile(boot, 0.975, axis=0)
    return mid, lo, hi


def plot_curves(name):
    runs = RUNS[name]
    if not runs:
        return
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4.0), squeeze=False)
    for ax, (game, run) in zip(axes[0], runs.items()):
        for group in order_groups(run["groups"]):
            g = run["groups"][group]
            mid, lo, hi = mean_band(g["values"])
            (line,) = ax.plot(g["steps"], mid, label=f"{group} (n={g['values'].shape[0]})")
            ax.fill_between(g["steps"], lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        state = "" if run["complete"] else " [in progress]"
        ax.set_title(f"{game}-MinAtar{state}")
        ax.set_xlabel("environment steps per member")
        ax.set_ylabel("evaluation return (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{EXPERIMENTS[name]['title']}: mean over seeds, band = bootstrap 95% CI of the mean")
    fig.tight_layout()
    save(fig, f"{EXPERIMENTS[name]['figure']}_curves.png")
    plt.show()


plot_curves("munchausen")
plot_curves("mvi_q")

# %% [markdown]
# ## Normalization per game
# Scores of different games live on different scales, so before aggregating over games each
# final score s on game g is **DQN-normalized**:
#
# $$\hat s = \frac{s - r_g}{d_g - r_g},$$
#
# - r_g: the mean return of the **uniform random policy** on g (uniform over the env's action
#   set, the actions the agents choose from), computed here with gymnax: 100 episodes of
#   `gymnax.make(f"{g}-MinAtar")` with its default parameters (so gymnax's 1,000-step cap),
#   jitted and vmapped, PRNG seed 0, each episode stopped at its first `terminated or truncated`;
# - d_g: the mean final score of **DQN's seeds** on g in the Munchausen experiment.
#
# So 0 is random play and 1 is DQN on every game; by construction the `mean` aggregate of DQN
# itself is exactly 1. The MVI(q) runs use the same r_g and d_g. Where the Munchausen run of a
# game is missing or unfinished (no d_g), that game's MVI scores fall back to **min–max over
# the q values** (ŝ = (s − min_q m_q)/(max_q m_q − min_q m_q), m_q the mean final score of q):
# that rule is printed per game, and an aggregate over games mixing the two rules mixes scales.

# %%
import gymnax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402


def random_policy_returns(game, episodes=RANDOM_EPISODES, seed=RANDOM_SEED):
    """Returns [episodes] and lengths of the uniform random policy on `<game>-MinAtar`."""
    env, params = gymnax.make(f"{game}-MinAtar")
    n_actions = env.num_actions

    def episode(key):
        key, reset_key = jax.random.split(key)
        _, state = env.reset(reset_key, params)

        def body(carry):
            key, state, ret, _, length = carry
            key, act_key, step_key = jax.random.split(key, 3)
            action = jax.random.randint(act_key, (), 0, n_actions)
            _, state, reward, terminated, truncated, _ = env.step(step_key, state, action, params)
            return key, state, ret + reward, jnp.logical_or(terminated, truncated), length + 1

        init = (key, state, jnp.float32(0.0), jnp.bool_(False), jnp.int32(0))
        _, _, ret, _, length = jax.lax.while_loop(lambda c: ~c[3], body, init)
        return ret, length

    keys = jax.random.split(jax.random.PRNGKey(seed), episodes)
    ret, length = jax.jit(jax.vmap(episode))(keys)
    return np.asarray(ret, dtype=float), np.asarray(length)


ALL_GAMES = sorted({g for runs in RUNS.values() for g in runs}, key=game_order)
RANDOM, DQN = {}, {}
for game in ALL_GAMES:
    ret, length = random_policy_returns(game)
    RANDOM[game] = float(np.mean(ret))
    print(f"r_{game} = {RANDOM[game]:.3f} (uniform random policy, {RANDOM_EPISODES} episodes, "
          f"sd {np.std(ret):.3f}, mean length {np.mean(length):.1f})")
for game in COMPLETE["munchausen"]:
    groups = RUNS["munchausen"][game]["groups"]
    if "dqn" in groups:
        DQN[game] = float(np.nanmean(groups["dqn"]["finals"]))
        print(f"d_{game} = {DQN[game]:.3f} (mean final score of DQN's {len(groups['dqn']['finals'])} seeds)")
        if not abs(DQN[game] - RANDOM[game]) > 1e-6:
            print(f"  d_{game} = r_{game}: DQN-normalization undefined on {game}")
            del DQN[game]
        elif DQN[game] < RANDOM[game]:
            print(f"  warning: DQN scores below random on {game}; normalized scores change sign there")


def normalize(name, game):
    """{group: normalized finals [seeds]} and the rule used ('dqn' or 'minmax_q'), or None."""
    groups = RUNS[name][game]["groups"]
    if game in DQN:
        d, r = DQN[game], RANDOM[game]
        return {k: (v["finals"] - r) / (d - r) for k, v in groups.items()}, "dqn"
    if name == "mvi_q":
        means = [float(np.nanmean(v["finals"])) for v in groups.values()]
        low, high = min(means), max(means)
        if high > low:
            return {k: minmax_normalized(v["finals"], low, high) for k, v in groups.items()}, "minmax_q"
    return None, None


NORMALIZED, RULES = {}, {}
for name in EXPERIMENTS:
    NORMALIZED[name], RULES[name] = {}, {}
    for game in COMPLETE[name]:
        scores, rule = normalize(name, game)
        if scores is None:
            print(f"{EXPERIMENTS[name]['title']}: {game} left out of the aggregates (no normalization)")
            continue
        NORMALIZED[name][game], RULES[name][game] = scores, rule
    if RULES[name]:
        print(f"{EXPERIMENTS[name]['title']} normalization: "
              + ", ".join(f"{g} {'DQN-normalized' if r == 'dqn' else 'min-max over q (no DQN run)'}"
                          for g, r in RULES[name].items()))

# %% [markdown]
# ## Final scores per game
# Raw final scores (each member's, by its run's score rule) per group and game:
# n seeds, mean, interquartile mean (IQM) and its percentile bootstrap 95% CI over seeds.
# With 5 seeds these intervals are wide.

# %%
RAW = {}
for name, spec in EXPERIMENTS.items():
    RAW[name] = {}
    if not COMPLETE[name]:
        continue
    print(f"\n{spec['title']}: raw final scores")
    print(f"{'game':<14} {'group':<10} {'n':>3} {'mean':>8} {'IQM':>8}  {'IQM 95% CI':<20}")
    for game in COMPLETE[name]:
        groups = RUNS[name][game]["groups"]
        for group in order_groups(groups):
            x = groups[group]["finals"]
            finite = x[~np.isnan(x)]
            lo, hi = stratified_bootstrap_ci(finite, reps=BOOTSTRAP_REPS) if finite.size else (math.nan, math.nan)
            cell = {"n": int(finite.size), "mean": float(np.mean(finite)) if finite.size else math.nan,
                    "iqm": iqm(finite), "iqm_ci_low": lo, "iqm_ci_high": hi}
            RAW[name].setdefault(group, {})[game] = cell
            print(f"{game:<14} {group:<10} {cell['n']:>3} {cell['mean']:>8.2f} {cell['iqm']:>8.2f}  "
                  f"[{lo:7.2f}, {hi:7.2f}]")

# %% [markdown]
# ## Aggregates over runs x games
# In the style of the papers' ablation figures (and of Agarwal et al. 2021): per group, the
# normalized final scores form a [seeds, games] matrix; `klrl.scores.aggregate` gives the IQM
# over all runs x games, the mean over games of the per-game mean, and the median over games of
# the per-game mean, each with a stratified-bootstrap 95% CI (seeds resampled within each game).

# %%


def score_matrix_padded(per_game):
    """{game: scores [seeds]} -> [max seeds, games] (NaN-padded when seed counts differ)."""
    n = max(len(v) for v in per_game.values())
    return np.stack([np.pad(np.asarray(v, float), (0, n - len(v)), constant_values=np.nan)
                     for v in per_game.values()], axis=1)


AGG = {}
for name, spec in EXPERIMENTS.items():
    AGG[name] = {}
    per_game = NORMALIZED[name]
    groups = order_groups({k for scores in per_game.values() for k in scores})
    for group in groups:
        games = {g: s[group] for g, s in per_game.items() if group in s}
        AGG[name][group] = {**aggregate(score_matrix_padded(games), reps=BOOTSTRAP_REPS), "games": list(games)}
    if AGG[name]:
        print(f"\n{spec['title']}: normalized final scores over runs x games ({', '.join(per_game)})")
        print(f"{'group':<10} {'runs':>4} {'IQM':>7} {'95% CI':<17} {'mean':>7} {'95% CI':<17} "
              f"{'median':>7} {'95% CI':<17}")
        for group, a in AGG[name].items():
            cells = " ".join(f"{a[s]:7.3f} [{a[s + '_ci_low']:6.3f}, {a[s + '_ci_high']:6.3f}]"
                             for s in ("iqm", "mean", "median"))
            print(f"{group:<10} {a['runs'] * a['tasks']:>4} {cells}")


def plot_aggregates(name):
    agg = AGG[name]
    if not agg:
        return
    rules = set(RULES[name].values())
    unit = "DQN-normalized" if rules == {"dqn"} else "min-max over q" if rules == {"minmax_q"} else \
        "normalized (DQN where available, else min-max over q)"
    fig, axes = plt.subplots(1, 3, figsize=(12, 0.5 * len(agg) + 1.6), sharey=True)
    names = list(agg)
    y = np.arange(len(names))[::-1]
    for ax, stat, title in zip(axes, ("iqm", "mean", "median"), ("IQM", "Mean", "Median")):
        for i, group in enumerate(names):
            a = agg[group]
            color = f"C{i}"
            ax.hlines(y[i], a[f"{stat}_ci_low"], a[f"{stat}_ci_high"], color=color, linewidth=6, alpha=0.5)
            ax.plot([a[stat]], [y[i]], "|", color="k", markersize=14)
        if "dqn" in rules:
            for ref in (0.0, 1.0):
                ax.axvline(ref, color="grey", linestyle=":", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel(f"{unit} score")
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(y, names)
    fig.suptitle(f"{EXPERIMENTS[name]['title']} on MinAtar ({', '.join(NORMALIZED[name])}): "
                 f"stratified-bootstrap 95% CIs")
    fig.tight_layout()
    save(fig, f"{EXPERIMENTS[name]['figure']}_aggregate.png")
    plt.show()


plot_aggregates("munchausen")
plot_aggregates("mvi_q")

# %% [markdown]
# ## Summary
# One compact JSON line (the numbers the README quotes); with `KLRL_WRITE_SUMMARY=<path>` the
# full summary (games, r_g, d_g, per-group per-game raw final IQM + CI, aggregates) is written
# there as JSON (non-finite numbers as `null`).

# %%


SUMMARY = json_safe({
    "final_score": "each member's eval_return scored by its run's eval.score rule (klrl.results.final_score)",
    "score_rules": {name: {game: RUNS[name][game]["score"].describe() for game in COMPLETE[name]}
                    for name in EXPERIMENTS},
    "normalization": "(s - r_g) / (d_g - r_g); r_g uniform random policy, d_g mean final score of DQN's seeds",
    "bootstrap_reps": BOOTSTRAP_REPS,
    "random_policy": {"episodes": RANDOM_EPISODES, "seed": RANDOM_SEED},
    "random_return": RANDOM,
    "dqn_final": DQN,
    "experiments": {
        name: {"games": COMPLETE[name], "in_progress": IN_PROGRESS[name], "normalization": RULES[name],
               "raw_final": RAW[name], "aggregate": AGG[name]}
        for name in EXPERIMENTS},
})
short = {name: {"games": e["games"], "aggregate": {
    g: {s: round(a[s], 4) if a[s] is not None else None for s in ("iqm", "iqm_ci_low", "iqm_ci_high", "mean", "median")}
    for g, a in e["aggregate"].items()}} for name, e in SUMMARY["experiments"].items()}
print("SUMMARY " + json.dumps({"r_g": {g: round(v, 4) for g, v in RANDOM.items()},
                               "d_g": {g: round(v, 4) for g, v in DQN.items()}, **short}))
if WRITE_SUMMARY:
    os.makedirs(os.path.dirname(os.path.abspath(WRITE_SUMMARY)), exist_ok=True)
    with open(WRITE_SUMMARY, "w") as fh:
        json.dump(SUMMARY, fh, indent=2)
        fh.write("\n")
    print(f"wrote {WRITE_SUMMARY}")

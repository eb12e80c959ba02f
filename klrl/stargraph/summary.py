"""summary.json of a star-graph experiment directory (klrl.stargraph.experiment): one row per
method — accuracy and KL to π_ref with 95% CIs over test prompts, `n` prompts, its family —
the η frontier of each guided method, the learned critics' calibration, seconds per part.

Methods: `pi_ref` (reference); `qsharp`, `cd` (the offline round's critic) and `qsharp_alg1`,
`cd_alg1` (Algorithm 1's critic), at the experiment's η (value); `qsharp_oracle`, `cd_oracle`
(the exact p: the upper bound of any critic; oracle); `reinforce`, `rpo`, `dpo` (policy). A
method run with several seeds reports the mean over seeds of its per-seed accuracy and KL,
with the CI of that mean over seeds (t-free: 1.96·sd/√seeds), and each seed's row.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np

from klrl.provenance import provenance


def _read(path: str):
    with open(path) as fh:
        return json.load(fh)


def _at(rows: list[dict], eta: float) -> dict:
    return next(r for r in rows if abs(r["eta"] - eta) < 1e-12)


def _row(result: dict, family: str) -> dict:
    return {"accuracy": result["accuracy"], "kl": result["kl"], "n": result["n"], "family": family}


def _over_seeds(runs: list[dict]) -> dict:
    """One method's row from its per-seed results (a single seed: that seed's own CIs)."""
    if len(runs) == 1:
        return {**_row(runs[0], "policy"), "seeds": [{"seed": runs[0]["seed"], "accuracy": runs[0]["accuracy"],
                                                      "kl": runs[0]["kl"]}]}

    def agg(field):
        x = np.array([r[field]["mean"] for r in runs], np.float64)
        return {"mean": float(x.mean()), "ci95": float(1.96 * x.std(ddof=1) / np.sqrt(x.size))}
    return {"accuracy": agg("accuracy"), "kl": agg("kl"), "n": runs[0]["n"], "family": "policy",
            "seeds": [{"seed": r["seed"], "accuracy": r["accuracy"], "kl": r["kl"]} for r in runs]}


def _guided(part: dict, eta: float, suffix: str, family: str, methods: dict, frontier: dict) -> None:
    for rule, rows in part.items():
        methods[rule + suffix] = _row(_at(rows, eta), family)
        frontier[rule + suffix] = [{k: r[k] for k in ("eta", "accuracy", "kl")} for r in rows]


def summarize(out_dir: str, ref_dir: str) -> dict:
    """Gather out_dir/parts/* into out_dir/summary.json (see the module docstring); returns it."""
    config = _read(os.path.join(out_dir, "config.json"))
    eta = config["eval"]["eta"]
    lm = _read(os.path.join(ref_dir, "lm.json"))
    parts = os.path.join(out_dir, "parts")
    have = lambda name: os.path.isfile(os.path.join(parts, name + ".json"))  # noqa: E731
    methods, frontier, calib, seconds = {}, {}, {}, {}
    test = lm["report"].get("test", {})
    out = {"task": config["task"], "config": config,
           "pi_ref": {"teacher_forced": {"accuracy": test.get("accuracy"), "nll": test.get("nll")},
                      "parameters": lm["report"]["parameters"], "pretrain_seconds": lm["report"]["seconds"]}}
    if have("oracle"):
        oracle = _read(os.path.join(parts, "oracle.json"))
        methods["pi_ref"] = {**_row(oracle["pi_ref"], "reference"), "kl": {"mean": 0.0, "ci95": 0.0}}
        out["pi_ref"].update(p0_mean=oracle["p0_mean"], children_in_top_k=oracle["children_in_top_k"])
        rows = {rule: [{"eta": float(k[4:]), **v[rule]} for k, v in oracle.items() if k.startswith("eta=")]
                for rule in ("qsharp", "cd")}
        _guided(rows, eta, "_oracle", "oracle", methods, frontier)
        frontier["closed_form"] = [{"eta": float(k[4:]), **v["closed_form"]} for k, v in oracle.items()
                                   if k.startswith("eta=")]
        seconds["oracle"] = oracle["seconds"]
    for name, suffix in (("offline", ""), ("rounds", "_alg1")):
        if have(name):
            part = _read(os.path.join(parts, name + ".json"))
            _guided(part["guided"], eta, suffix, "value", methods, frontier)
            calib["offline" if name == "offline" else "alg1"] = part["calibration"]
            seconds[name] = part["seconds"]
    runs: dict[str, list] = {}
    for path in sorted(glob.glob(os.path.join(parts, "baselines", "*.json"))):
        result = _read(path)
        runs.setdefault(result["method"], []).append(result)
        seconds["baselines"] = seconds.get("baselines", 0.0) + result["seconds"]
    for method, rs in runs.items():
        methods[method] = _over_seeds(sorted(rs, key=lambda r: r["seed"]))
    seconds["pretrain"] = lm["report"]["seconds"]
    seconds["total"] = round(sum(seconds.values()), 1)
    prov = provenance()
    out.update(methods=methods, frontier=frontier, calibration=calib, seconds=seconds, machine=prov["device"],
               provenance=prov)
    path = os.path.join(out_dir, "summary.json")
    with open(path + ".tmp", "w") as fh:
        json.dump(out, fh, indent=1)
    os.replace(path + ".tmp", path)
    return out


__all__ = ["summarize"]

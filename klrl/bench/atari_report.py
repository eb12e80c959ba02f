"""The comparisons and the summary of `klrl bench atari`, from its measured rows (pure: no
program is built here).

- `compare_maps`: vmap vs map over members per conv (per-member update cost; the faster map);
- `compare_convs`: lax vs patches per (backend, M, member map), and the update-alone rows;
- `choose`: the fastest (conv, member_map) pair at each M and overall;
- `estimate_training` / `estimate_alone`: the time guard's estimate of a row before it runs;
- `breakdown`: seconds per vector step (env, acting + replay, updates) of a training row;
- `table`: the printed summary.
"""

from __future__ import annotations

import numpy as np

from klrl.bench.atari_measure import MODES, SCAN_UPDATES
from klrl.networks import CONVS


def _conv(r: dict) -> str:
    return r.get("conv", "lax")   # rows written before the conv axis were lax


def _mode_order(mode: str) -> int:
    return MODES.index(mode) if mode in MODES else len(MODES)


def compare_maps(training: list[dict], alone: list[dict], platform: str) -> dict:
    """Per conv: per-member update cost of vmap vs map at each (backend, M), and the faster map."""
    rows = []
    base = {(r["backend"], _conv(r), r["member_map"]): r["update_seconds_per_member_update"]
            for r in training if r["members"] == 1}
    convs = [c for c in CONVS if any(_conv(r) == c for r in training)]
    for conv in convs:
        for backend in sorted({r["backend"] for r in training}):
            for m in sorted({r["members"] for r in training if r["backend"] == backend and _conv(r) == conv}):
                got = {r["member_map"]: r for r in training
                       if r["backend"] == backend and r["members"] == m and _conv(r) == conv}
                row = {"backend": backend, "members": m, "conv": conv}
                for mode, r in sorted(got.items(), key=lambda kv: _mode_order(kv[0])):
                    pmu = r["update_seconds_per_member_update"]
                    row[f"{mode}_seconds_per_member_update"] = pmu
                    row[f"{mode}_agent_steps_per_second"] = r["agent_steps_per_second"]
                    b = base.get((backend, conv, mode)) or base.get((backend, conv, "vmap"))
                    row[f"{mode}_per_member_cost_vs_1"] = pmu / b if b else None
                if "vmap" in got and "map" in got and got["map"]["update_seconds_per_member_update"] > 0:
                    row["vmap_over_map"] = (got["vmap"]["update_seconds_per_member_update"]
                                            / got["map"]["update_seconds_per_member_update"])
                rows.append(row)
    alone_rows: dict = {}
    for r in alone:
        (alone_rows.setdefault(_conv(r), {}).setdefault(r.get("variant", "alone"), {})
         .setdefault(r["members"], {})[r["member_map"]]) = r["seconds_per_member_update"]
    # Per conv: the per-member update cost at the largest size measured with both maps.
    choice = {}
    for conv in convs:
        both = [r for r in rows if r["conv"] == conv and "vmap_over_map" in r]
        largest = max((r["members"] for r in both), default=None)
        at = [r for r in both if r["members"] == largest]
        choice[conv] = None
        if at:
            ratio = float(np.mean([r["vmap_over_map"] for r in at]))
            choice[conv] = {"platform": platform, "conv": conv, "member_map": "map" if ratio > 1 else "vmap",
                            "members": largest, "vmap_over_map": ratio,
                            "by": "per-member update cost inside the training chunk at the largest M measured "
                                  "with both maps"}
    return {"rows": rows, "update_alone_seconds_per_member_update": alone_rows, "choice": choice}


def _ratio(a, b):
    return a / b if a is not None and b else None


def compare_convs(training: list[dict], alone: list[dict]) -> dict:
    """lax vs patches: per (backend, M, member_map) the training rows' seconds per member-update
    and agent-steps/s with the ratios lax/patches; per (M, member_map) the update-alone rows'
    seconds per member-update (alone and inside a scan), the scan/alone ratio per conv and the
    lax/patches ratio per variant."""
    rows = []
    for b, m, mode in sorted({(r["backend"], r["members"], r["member_map"]) for r in training},
                             key=lambda k: (k[0], k[1], _mode_order(k[2]))):
        got = {_conv(r): r for r in training if (r["backend"], r["members"], r["member_map"]) == (b, m, mode)}
        row = {"backend": b, "members": m, "member_map": mode}
        for conv in CONVS:
            if conv in got:
                row[f"{conv}_seconds_per_member_update"] = got[conv]["update_seconds_per_member_update"]
                row[f"{conv}_agent_steps_per_second"] = got[conv]["agent_steps_per_second"]
        if "lax" in got and "patches" in got:
            row["seconds_per_member_update_lax_over_patches"] = _ratio(
                row["lax_seconds_per_member_update"], row["patches_seconds_per_member_update"])
            row["agent_steps_per_second_lax_over_patches"] = _ratio(
                row["lax_agent_steps_per_second"], row["patches_agent_steps_per_second"])
        rows.append(row)
    alone_rows = []
    for m, mode in sorted({(r["members"], r["member_map"]) for r in alone}, key=lambda k: (k[0], _mode_order(k[1]))):
        got = {(_conv(r), r.get("variant", "alone")): r["seconds_per_member_update"]
               for r in alone if (r["members"], r["member_map"]) == (m, mode)}
        row = {"members": m, "member_map": mode, "scan_updates": SCAN_UPDATES}
        for (conv, variant), s in sorted(got.items(), key=lambda kv: (CONVS.index(kv[0][0]) if kv[0][0] in CONVS
                                                                      else 9, kv[0][1])):
            row[f"{conv}_{variant}_seconds_per_member_update"] = s
        for conv in CONVS:
            if (conv, "scan") in got and (conv, "alone") in got:
                row[f"{conv}_scan_over_alone"] = _ratio(got[(conv, "scan")], got[(conv, "alone")])
        for variant in ("alone", "scan"):
            if ("lax", variant) in got and ("patches", variant) in got:
                row[f"{variant}_lax_over_patches"] = _ratio(got[("lax", variant)], got[("patches", variant)])
        alone_rows.append(row)
    return {"rows": rows, "update_alone": alone_rows}


def choose(training: list[dict], platform: str) -> dict | None:
    """The fastest (conv, member_map) pair at each M by whole-training agent-steps/s (the update
    chunks; geometric mean over the backends trained at that M, pairs measured on all of them),
    and `overall`: the one at the largest M where at least two pairs ran (else the largest M)."""
    by_members = []
    for m in sorted({r["members"] for r in training}):
        at = [r for r in training if r["members"] == m]
        backends = sorted({r["backend"] for r in at})
        pairs: dict = {}
        for r in at:
            pairs.setdefault((_conv(r), r["member_map"]), {})[r["backend"]] = r
        full = {p: rs for p, rs in pairs.items() if sorted(rs) == backends}
        if not full:
            continue
        score = {p: float(np.exp(np.mean([np.log(r["agent_steps_per_second"]) for r in rs.values()])))
                 for p, rs in full.items()}
        best = max(score, key=score.get)
        ranked = sorted(score.values(), reverse=True)
        by_members.append({
            "members": m, "conv": best[0], "member_map": best[1], "agent_steps_per_second": score[best],
            "seconds_per_member_update": float(np.mean([r["update_seconds_per_member_update"]
                                                        for r in full[best].values()])),
            "over_next": ranked[0] / ranked[1] if len(ranked) > 1 else None, "backends": backends,
            "pairs_measured": len(score),
            "agent_steps_per_second_by_pair": {f"{c}/{mm}": score[(c, mm)] for c, mm in
                                               sorted(score, key=lambda p: (CONVS.index(p[0]) if p[0] in CONVS
                                                                            else 9, _mode_order(p[1])))}})
    if not by_members:
        return None
    several = [x for x in by_members if x["pairs_measured"] >= 2]
    top = (several or by_members)[-1]
    overall = {k: top[k] for k in ("members", "conv", "member_map", "agent_steps_per_second", "over_next",
                                   "pairs_measured")}
    return {"platform": platform,
            "by": "whole-training agent-steps/s (update chunks), geometric mean over the backends trained at that M",
            "by_members": by_members, "overall": overall}


def estimate_training(result: dict, backend: str, members: int, conv: str, mode: str, size: dict) -> float | None:
    """Seconds a training row should take, from the rows before it (None: nothing to go on):
    the last row's init + compile + no-update chunks, plus the update chunks at the per-member
    update cost of the same conv and map (any map if none) at the largest smaller-or-equal M,
    times its growth from the size before (1.25 when unknown; within [1, 3]): under vmap the
    per-member cost of a lax convolution grows with M."""
    rows = result["training"]
    if not rows:
        return None
    last = rows[-1]
    fixed = (last["init_seconds"] + last["compile_seconds"] + last["warmup_chunk_seconds"]
             + sum(last["no_update_chunk_seconds"]))
    like = ([r for r in rows if _conv(r) == conv and r["member_map"] == mode and r["members"] <= members]
            or [r for r in rows if _conv(r) == conv and r["members"] <= members])
    if not like:
        return fixed
    ref = max(like, key=lambda r: (r["members"], r["update_seconds_per_member_update"]))
    growth = 1.25
    before = [r for r in like if r["members"] < ref["members"]]
    if ref["members"] < members and before:
        prev = max(before, key=lambda r: (r["members"], r["update_seconds_per_member_update"]))
        if prev["update_seconds_per_member_update"] > 0:
            growth = min(max(ref["update_seconds_per_member_update"] / prev["update_seconds_per_member_update"],
                             1.0), 3.0)
    chunk = size["chunk"](members, conv)
    updates = members * chunk * ref["updates_per_member_per_chunk"] / ref["chunk_env_steps"]
    per_chunk = updates * ref["update_seconds_per_member_update"] * growth + min(ref["no_update_chunk_seconds"])
    return fixed + size["update_chunks"](conv) * per_chunk   # the no-update chunks are in `fixed`


def estimate_alone(result: dict, members: int, conv: str, mode: str, variant: str) -> float | None:
    """Seconds an update-alone row should take: a like row's compile + run scaled by M."""
    like = [r for r in result["update_alone"] if _conv(r) == conv and r["variant"] == variant
            and r["member_map"] == mode] or [r for r in result["update_alone"] if _conv(r) == conv]
    if not like:
        return None
    r = like[-1]
    return r["compile_seconds"] + sum(r["runs_seconds"]) * members / r["members"]


def breakdown(r: dict, raw: dict) -> None:
    """Seconds per vector step: env (from the raw pool), acting + replay (the rest of a
    no-update step) and the E updates; `ratio_to_raw` = training / raw agent-steps/s."""
    S = r["vector_steps_per_chunk"]
    env = r["members"] * (r["chunk_env_steps"] // S) / raw["agent_steps_per_second"]
    no_upd = min(r["no_update_chunk_seconds"]) / S
    r["ratio_to_raw"] = r["agent_steps_per_second"] / raw["agent_steps_per_second"]
    r["seconds_per_vector_step"] = {"env": env, "acting_and_replay": max(no_upd - env, 0.0),
                                    "updates": max(min(r["update_chunk_seconds"]) / S - no_upd, 0.0)}


def table(result: dict) -> str:
    raw = {(r["backend"], r["members"]): r for r in result["raw_pool"]}
    lines = [f"{'backend':8s} {'M':>3s} {'conv':7s} {'map':5s} {'raw a-s/s':>10s} {'train a-s/s':>11s} "
             f"{'no-upd a-s/s':>12s} {'ratio':>8s} {'s/member-upd':>12s} {'cpu s/m-u':>9s} {'compile s':>9s}"]
    for r in result["training"]:
        rp = raw.get((r["backend"], r["members"]))
        rate = rp["agent_steps_per_second"] if rp else float("nan")
        lines.append(f"{r['backend']:8s} {r['members']:3d} {_conv(r):7s} {r['member_map']:5s} {rate:10.0f} "
                     f"{r['agent_steps_per_second']:11.1f} {r['agent_steps_per_second_no_updates']:12.0f} "
                     f"{r['agent_steps_per_second'] / rate:8.1e} {r['update_seconds_per_member_update']:12.3f} "
                     f"{r['update_cpu_seconds_per_member_update']:9.3f} {r['compile_seconds']:9.1f}")
    for r in result["update_alone"]:
        lines.append(f"update {r['variant']:5s} x{r['updates']} M={r['members']:3d} {_conv(r):7s} {r['member_map']:4s} "
                     f"{r['seconds_per_member_update']:.4f} s/member-update (compile {r['compile_seconds']:.1f}s)")
    for conv, c in (result["member_map"].get("choice") or {}).items():
        if c:
            lines.append(f"member_map for {conv} on {c['platform']}: {c['member_map']} "
                         f"(vmap/map per-member update cost {c['vmap_over_map']:.2f} at M = {c['members']})")
    for r in result["conv"].get("rows", []):
        if "agent_steps_per_second_lax_over_patches" in r:
            lines.append(f"conv {r['backend']} M={r['members']:3d} {r['member_map']:4s}: lax/patches "
                         f"s/member-update {r['seconds_per_member_update_lax_over_patches']:.2f}, "
                         f"agent-steps/s {r['agent_steps_per_second_lax_over_patches']:.3f}")
    choice = result.get("choice")
    if choice:
        for c in choice["by_members"]:
            lines.append(f"fastest at M = {c['members']:3d}: conv = {c['conv']}, member_map = {c['member_map']} "
                         f"({c['agent_steps_per_second']:.1f} agent-steps/s, of {c['pairs_measured']} pairs)")
        o = choice["overall"]
        lines.append(f"choice on {choice['platform']}: conv = {o['conv']}, member_map = {o['member_map']} "
                     f"(fastest at M = {o['members']})")
    for r in result["replay"]:
        if "bytes_per_transition" in r:
            lines.append(f"replay {r['experiment']}: {r['bytes_per_transition']:.0f} B/transition, "
                         f"{r['bytes_per_member'] / 1e9:.2f} GB/member, {r['bytes_per_population'] / 1e9:.2f} GB "
                         f"per population of {max(r['members_per_population'])}")
    return "\n".join(lines)

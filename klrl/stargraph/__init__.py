"""The star-graph experiment of Q♯ (Zhou et al. 2025, §3.1) as token MDPs (docs/stargraph.md).

One concept per module:
- `graphs`: the task G(d, ℓ, N), its generator and fixed-seed splits (pretrain/posttrain/test);
- `tokenizer`: the numeral tokenizer and the paper's text form (both round-trip);
- `registry`, `env`: the token MDP (state = token prefix, action = next token, terminal 0/1
  exact-match reward, ℓ steps), served by the engine's `tokens` backend;
- `transformer`: a small decoder-only causal transformer (flax);
- `pretrain`: π_ref by next-token prediction on the fixed pretraining set, save/load;
- `reference`: a saved LM as a `klrl.reference.Reference` (top-k, temperature);
- `shortcut`: an analytic π_ref with the shortcut, for tests;
- `guidance`: Q♯ and CD guided policies through klrl.operators (entropic_q, guided_logits);
- `exact`: the oracle critic (exact p from one teacher-forced pass) and the closed forms P*, KL*;
- `sampler`: autoregressive sampling with the exact per-episode KL to π_ref;
- `critic`: the success classifier (V- and Q-type heads, BCE at every target position);
- `offline`: the paper's one offline round (correct path = 1, first π_ref failure = 0);
- `rounds`: the paper's Algorithm 1 (roll in with the guided policy, switch to π_ref, label,
  aggregate, refit; per-position weights);
- `evaluate`: accuracy and KL with 95% CIs, calibration against the exact p;
- `protocol`: the end-to-end oracle and offline runs (`python -m klrl.stargraph`);
- `baselines`: REINFORCE, DPO and RPO fine-tuning of π_ref, end to end (`run_baseline`);
- `experiment_config`, `experiment`, `summary`: the whole experiment from one TOML file
  (`python -m klrl.stargraph run`), its resumable parts and its summary.json.
"""

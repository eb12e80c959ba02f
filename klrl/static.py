"""The engine's configuration: static sections and traced hyperparameters.

`StaticConfig` is everything that changes shapes or the compiled program; it is nested, one
frozen, hashable, self-checking section (klrl.sections) per TOML table, with the TOML keys
as field names:

  [env]    EnvConfig      name, backend, num_envs
  [agent]  AgentConfig    the agent, its network, loss, acting rule, atoms, the reference policy
  [train]  TrainConfig    steps, chunks, replay, updates, target updates
  [eval]   EvalConfig     the evaluation protocol and the score rule

A section checks its own fields when it is constructed (types, choices, ranges, rules between
its fields); `validate(cfg)` adds the rules between sections (env vs network, pool vs
evaluation, chunk vs env count, the reference run, the agent's own `check`, the replay size).

Traced hyperparameters (float32 [M] per member, sweepable inside one compiled population) are
declared with their section, default and range: the trainer's in `COMMON_HPARAMS` here, the
agents' in `klrl.agents.AGENT_HPARAMS`. `HPARAMS` maps every name to its default.
"""

from __future__ import annotations

import collections

from dataclasses import dataclass
from typing import ClassVar, Literal, Mapping

from klrl import actors as act_lib
from klrl import envs as envs_lib
from klrl import reference as refs
from klrl import replay as rb
from klrl.agents import AGENT_HPARAMS, AGENTS, LOSSES
from klrl.agents.qsharp import MODES as QSHARP_MODES
from klrl.errors import ConfigError
from klrl.networks import CONVS, TORSOS
from klrl.sections import Hparam, Section, Sections, choice, extras_field, fail, ranged, section_field, setting

TargetUpdate = Literal["hard", "polyak"]
EvalMode = Literal["episodes", "concurrent"]
ScoreRule = Literal["last", "mean_last_k"]
MemberMap = Literal["auto", "vmap", "map"]
SCORE_RULES: tuple[str, ...] = ScoreRule.__args__


@dataclass(frozen=True)
class EnvConfig(Section):
    """[env]: which environment, on which backend, how many per member."""

    SECTION: ClassVar[str] = "env"
    name: str = setting("CartPole-v1", doc="served by the backend (klrl.envs.BACKEND_ENVS)")
    backend: str = choice("jax", lambda: envs_lib.BACKENDS,
                          doc="jax (gymnax/tabular, in-graph) | pool (host numpy pool) | ...")
    num_envs: int = ranged(10, lo=1, doc="training envs per member")
    preset: str = choice(envs_lib.DEFAULT_PRESET, envs_lib.PRESETS,
                         doc="Atari protocol (klrl.envs.atari.PRESETS); other backends ignore it")

    def check(self) -> None:
        envs_lib.check_env(self.name, self.backend, self.preset)
        if not envs_lib.takes_preset(self.backend) and self.preset != envs_lib.DEFAULT_PRESET:
            atari = [b for b in envs_lib.BACKENDS if envs_lib.takes_preset(b)]
            self.fail("preset", self.preset, f"only with an Atari backend ({', '.join(atari)})")

    def unused(self) -> tuple[str, ...]:
        return () if envs_lib.takes_preset(self.backend) else ("preset",)


@dataclass(frozen=True)
class AgentConfig(Section):
    """[agent]: the agent, its network and loss, how it acts, its atoms and reference policy."""

    SECTION: ClassVar[str] = "agent"
    name: str = choice("mdqn", lambda: AGENTS)
    torso: str = choice("mlp", TORSOS, doc="mlp | minatar_cnn | nature_cnn")
    conv: str = choice("auto", ("auto",) + CONVS, doc="auto (patches on CPU, lax elsewhere: klrl.placement) | "
                       "lax (XLA's convolution) | patches (im2col + matmul: same layer, same parameters; ~10x "
                       "faster for the Nature CNN inside the trainer on XLA:CPU)")
    obs_scale: float = ranged(1.0, lo=0.0, lo_open=True, doc="observations are multiplied by this inside the network")
    hidden: tuple[int, ...] = ranged((120, 84), lo=1, doc="MLP layer widths")
    loss: str = choice("huber", LOSSES)
    acting: str = choice("epsilon_greedy", act_lib.ACTING)
    num_atoms: int = ranged(51, lo=2, doc="categorical critics (c51, qsharp, qsharp_cd)")
    v_min: float = setting(-10.0, doc="lowest atom (< v_max)")
    v_max: float = setting(10.0, doc="highest atom")
    consistent_weight: bool = setting(False, doc="MVI's Tsallis weight convention")
    # The fixed reference policy π_ref (klrl.reference), needed by qsharp/qsharp_cd/kl_prior;
    # with one set, every agent also reports `kl_ref`.
    reference: str = choice("none", refs.REFERENCES)
    reference_run: str = setting("", doc="`klrl train` run directory holding Q_ref's checkpoint")
    reference_member: int = ranged(0, lo=0, doc="member of that run (config.json `members`)")
    reference_temperature: float = ranged(1.0, lo=0.0, lo_open=True, doc="softmax: π_ref = softmax(Q_ref/T)")
    reference_epsilon: float = ranged(0.1, lo=0.0, hi=1.0, lo_open=True,
                                      doc="epsilon_greedy: π_ref = (1−ε)·greedy + ε/A")
    qsharp_mode: str = choice("td", QSHARP_MODES)
    qsharp_switch_horizon: int = ranged(0, lo=0, doc="rollout: h ~ U{0..H−1}; 0 = the env's time limit")

    def unused(self) -> tuple[str, ...]:
        # Left out of config at its default `auto` (its resolved value is in config.json's
        # "placement"), as records written before `auto` left out their default lax.
        return ("conv",) if self.conv == "auto" else ()

    def check(self) -> None:
        if not self.v_min < self.v_max:
            self.fail("v_min", self.v_min, f"a value < agent.v_max ({self.v_max!r})")


@dataclass(frozen=True)
class TrainConfig(Section):
    """[train]: the schedule, the replay and the updates (periods in env steps per member)."""

    SECTION: ClassVar[str] = "train"
    total_steps: int = ranged(500_000, lo=1)
    chunk_steps: int = ranged(50_000, lo=1, doc="env steps per member between host calls (a divisor of total_steps)")
    buffer_size: int = ranged(10_000, lo=1)
    batch_size: int = ranged(128, lo=1)
    learning_starts: int = ranged(10_000, lo=0)
    update_every: int = ranged(10, lo=1, doc="env steps per member between gradient updates")
    target_update_every: int = ranged(500, lo=1)
    max_grad_norm: float = ranged(0.0, lo=0.0, doc="global-norm gradient clip; 0 = none")
    target_update: TargetUpdate = "hard"
    replay_mode: str = choice("per-member", rb.MODES)
    replay_store: str = choice("frames", rb.STORES, doc="frames (each observation once) | transitions (obs + next_obs)")
    member_map: MemberMap = setting("auto", doc="how the network's forward and update run over members: "
                                    "auto (map on CPU for the Nature CNN, vmap elsewhere: klrl.placement) | "
                                    "vmap (one batched program) | map (a sequential lax.map, for platforms "
                                    "where batched convolutions cost more per member, see klrl bench atari)")

    def unused(self) -> tuple[str, ...]:
        # Left out of config at its default `auto` (resolved in config.json's "placement"), as
        # records written before `auto` left out their default vmap.
        return ("member_map",) if self.member_map == "auto" else ()

    def check(self) -> None:
        if self.total_steps % self.chunk_steps:
            self.fail("chunk_steps", self.chunk_steps, f"a divisor of train.total_steps ({self.total_steps})")
        if self.batch_size > self.buffer_size:
            self.fail("batch_size", self.batch_size, f"at most train.buffer_size ({self.buffer_size})")


@dataclass(frozen=True)
class EvalConfig(Section):
    """[eval]: the evaluation protocol and the rule that turns its returns into one score.

    Every chunk a member is evaluated at ε = `epsilon`: `episodes` mode plays `episodes` fresh
    in-graph episodes; `concurrent` mode runs `envs` test envs per member inside the training
    pool, whose episodes run across chunks. With `final_episodes > 0`, a final evaluation of at
    least that many episodes per member follows training. `score` turns a member's per-chunk
    evaluation returns G_1..G_n into one number: `last` gives G_n, `mean_last_k` gives
    (1/k)·Σ_{i>n−k} G_i with k = `score_k`.
    """

    SECTION: ClassVar[str] = "eval"
    mode: EvalMode = setting("episodes",
                             doc="episodes (fresh in-graph envs per chunk) | concurrent (test envs in the pool)")
    episodes: int = ranged(10, lo=1, doc="episodes mode: episodes per member per chunk")
    envs: int = ranged(2, lo=1, doc="concurrent mode: test envs per member")
    epsilon: float = ranged(0.0, lo=0.0, hi=1.0, doc="ε of evaluation (0 = greedy)")
    final_episodes: int = ranged(0, lo=0, doc="after training, a final evaluation of at least this many "
                                 "episodes per member on the whole pool at eval.epsilon (0 = none)")
    score: ScoreRule = setting("mean_last_k", doc="mean_last_k (the mean of the last score_k chunks' eval "
                               "returns) | last (the last chunk's eval return)")
    score_k: int = ranged(3, lo=1, doc="mean_last_k: how many of the last evaluations are averaged")

    def unused(self) -> tuple[str, ...]:
        # A final evaluation that is off, and a k that the score rule does not read.
        return (("final_episodes",) if self.final_episodes == 0 else ()) + \
            (("score_k",) if self.score != "mean_last_k" else ())


@dataclass(frozen=True)
class StaticConfig(Sections):
    """Everything that changes shapes or the compiled program (hashable). Sections may be
    given as mappings: `StaticConfig(env={"name": "Acrobot-v1"}, train={"total_steps": 1000})`."""

    env: EnvConfig = section_field(EnvConfig)
    agent: AgentConfig = section_field(AgentConfig)
    train: TrainConfig = section_field(TrainConfig)
    eval: EvalConfig = section_field(EvalConfig)
    extras: tuple = extras_field()   # the registered agents' own sections (AgentSpec.options), e.g. [iqn]

    @classmethod
    def extra_sections(cls) -> dict[str, type[Section]]:
        from klrl.agents import agent_options

        return agent_options()

    def unused_sections(self) -> tuple[str, ...]:
        """The agents' own sections that this config's agent does not read."""
        own = AGENTS[self.agent.name].options
        return tuple(s for s in self.extra_sections() if own is None or s != own.SECTION)


# Traced hyperparameters of the trainer (float32 [M] each): section, default, range.
COMMON_HPARAMS: dict[str, Hparam] = {
    "learning_rate": Hparam("train", 2.5e-4, lo=0.0, lo_open=True),
    "gamma": Hparam("train", 0.99, lo=0.0, hi=1.0),
    "adam_eps": Hparam("train", 1e-8, lo=0.0, lo_open=True),
    "epsilon_start": Hparam("train", 1.0, lo=0.0, hi=1.0),
    "epsilon_end": Hparam("train", 0.05, lo=0.0, hi=1.0),
    "epsilon_fraction": Hparam("train", 0.5, lo=0.0, hi=1.0, doc="of total_steps, linear decay from step 0"),
    "polyak": Hparam("train", 0.005, lo=0.0, hi=1.0, lo_open=True,
                     doc="target += polyak·(online − target) per update (target_update = polyak)"),
    "softmax_temperature": Hparam("agent", 0.1, lo=0.0, lo_open=True,
                                  doc='acting = "softmax": a ~ softmax(q / temperature)'),
}
class _Defaults(Mapping):
    """name -> default of a table of Hparams, read at call time."""

    def __init__(self, table: Mapping[str, Hparam]):
        self._table = table

    def __getitem__(self, name: str) -> float:
        return self._table[name].default

    def __iter__(self):
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)


# Live views: an agent registered later (klrl.agents.register) adds the hyperparameters it declares.
HPARAM_TABLE: Mapping[str, Hparam] = collections.ChainMap(AGENT_HPARAMS, COMMON_HPARAMS)
HPARAMS: Mapping[str, float] = _Defaults(HPARAM_TABLE)


def hparams_used(cfg: StaticConfig) -> tuple[str, ...]:
    """The traced hyperparameters that influence a run with this static config."""
    names = ["learning_rate", "gamma", "adam_eps"]
    agent = AGENTS[cfg.agent.name]
    if agent.actor is None:          # the configured rule; an agent's own actor uses its own hparams
        names += ["epsilon_start", "epsilon_end", "epsilon_fraction"] if cfg.agent.acting == "epsilon_greedy" \
            else ["softmax_temperature"]
    if cfg.train.target_update == "polyak":
        names += ["polyak"]
    return tuple(names) + agent.hparams


def validate(cfg: StaticConfig) -> None:
    """The rules between sections (each section checked itself when built); ConfigError, one line."""
    env, agent, train = cfg.env, cfg.agent, cfg.train
    obs_ndim = len(envs_lib.env_spec(env.name, env.backend, env.preset).obs_shape)
    if (agent.torso == "mlp") != (obs_ndim == 1):
        fail("agent.torso", agent.torso,
             f"{'mlp' if obs_ndim == 1 else 'minatar_cnn or nature_cnn'} for {env.name}'s {obs_ndim}-D observations")
    if train.chunk_steps % env.num_envs:
        fail("train.chunk_steps", train.chunk_steps, f"a multiple of env.num_envs ({env.num_envs})")
    if not envs_lib.TRAITS[env.backend].in_graph_reset and cfg.eval.mode != "concurrent":
        fail("eval.mode", cfg.eval.mode,
             f"concurrent with backend {env.backend} (a host pool cannot start fresh episodes in-graph)")
    refs.check(cfg)
    spec = AGENTS[agent.name]
    if spec.needs_reference and agent.reference == "none":
        kinds = ", ".join(k for k in refs.REFERENCES if k != "none")
        raise ConfigError(f"agent.reference: got 'none'; allowed {kinds} for agent {agent.name}")
    spec.check(cfg)
    check_members(cfg, 1)


def check_members(cfg: StaticConfig, members: int) -> None:
    """The replay fits a population of `members` (shared mode splits buffer_size over M·E columns)."""
    k = envs_lib.env_spec(cfg.env.name, cfg.env.backend, cfg.env.preset).frame_stack
    mode = cfg.train.replay_mode
    columns = cfg.env.num_envs * (members if mode == "shared" else 1)
    if cfg.train.buffer_size // columns < k + 2:
        fail("train.buffer_size", cfg.train.buffer_size,
             f">= {(k + 2) * columns} (at least {k + 2} time slots per env column: "
             f"{columns} columns in {mode} mode with {members} members)")


__all__ = ["COMMON_HPARAMS", "HPARAMS", "HPARAM_TABLE", "SCORE_RULES", "AgentConfig",
           "EnvConfig", "EvalConfig", "StaticConfig", "TrainConfig", "check_members", "hparams_used", "validate"]

"""Step timelines and labels of the synthetic benchmark (pure numpy, no pixels).

A video is a sequence of steps; every step lasts a whole number of segments, so each
segment shows exactly one step type. Each task owns a few special step types and
decides only *where* they go, never *how much* of them there is:

- ``order`` (2 classes): one A and one B, at least ``min_gap`` filler steps apart;
  class 0 has A first, class 1 B first; the label only swaps A and B in an otherwise
  identical plan. With ``order_trace`` (default) A and B leave a lasting trace: filler
  steps after the first of them show scene state 1, after the second state 2 (the same
  sequence of states in both classes), so the order is visible in each milestone's
  local context; without it only relating A to B far apart reveals it.
- ``precedes`` (2 classes): C and D each occur 1..``precedes_max`` times (counts and
  durations drawn independently of the label); class 1 iff some C precedes some D with
  at least ``min_gap`` steps between; class 0 iff no C precedes any D.
- ``count`` (``count_max`` classes): E is repeated k = label + 1 times, non-adjacent; the
  total E time is fixed (lcm(1..count_max) segments split equally), so the share of E
  segments never depends on k.
- ``direction`` (2 classes): filler types follow the script cycle G -> H -> ... (class 0)
  or the exact reverse of such a sequence (class 1).
- ``appearance`` (2 classes): step type F occurs once (class 1) or not at all (class 0).
- ``script`` (2 classes, and a dense per-segment label): filler types follow the script
  cycle G -> H -> ... forwards or backwards, and the direction turns 1 or 2 times at
  random filler steps; the label is the direction in force at the end. Each step also
  carries its *phase*, the direction in force while it plays (task steps keep the
  phase of the filler before them). A segment looks the same in either phase, so a
  per-segment probe is at chance on the phase; its neighbours' order reveals it.

A mean (or any order-free pooling, e.g. attention without positions) of per-segment
features sees only the multiset of (step type, scene state) segments; for order,
precedes, count and direction that multiset has the same distribution in every class,
so such a pool is at chance by construction. Only appearance is solvable from it. The
plan is drawn from independent random streams (counts, durations, arrangement,
fillers, assignment) so that changing one label leaves the draws of the others
untouched; the tests check this pairwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lvmae.config import SYNTH_TASKS as TASK_NAMES  # fixed ids: label seeds depend on them
from lvmae.config import SynthConfig
from lvmae.config import check_synth as check_config  # noqa: F401  (re-exported)
from lvmae.errors import ConfigError


@dataclass(frozen=True)
class TaskSpec:
    """A classification task: class names and whether a mean pool can solve it (and why)."""

    classes: tuple[str, ...]
    mean_pool: bool
    why: str


SPECIAL_TYPES = {"order": "AB", "precedes": "CD", "count": "E", "appearance": "F"}
A, B, C, D, E, F = range(6)  # the task step types; fillers follow
NUM_SPECIAL = 6
SPLITS = ("train", "val", "test")
SCRIPT_PHASES = ("forwards", "backwards")
_MAX_TRIES = 20000


def task_specs(cfg: SynthConfig) -> dict[str, TaskSpec]:
    """The enabled tasks, in ``cfg.tasks`` order."""
    specs = {
        "order": TaskSpec(
            ("A before B", "B before A"), False,
            "same steps, durations and scene states in both classes (the label only swaps A and B)",
        ),
        "precedes": TaskSpec(
            ("no C before any D", f"a C precedes a D by >= {cfg.min_gap} steps"), False,
            "counts and durations of C and D are drawn independently of the label; only their positions differ",
        ),
        "count": TaskSpec(
            tuple(f"E x{k}" for k in range(1, cfg.count_max + 1)), False,
            f"E always covers {e_total_segments(cfg)} segments in total, split into k equal steps",
        ),
        "direction": TaskSpec(
            ("script forwards", "script backwards"), False,
            "class 1 is class 0 with its filler steps in reverse order: same steps, same lengths",
        ),
        "appearance": TaskSpec(
            ("no F", "F occurs"), True, "F's segments shift the mean of the features",
        ),
        "script": TaskSpec(
            ("ends forwards", "ends backwards"), False,
            "a cycle run forwards or backwards holds the same steps; only their order differs",
        ),
    }
    return {t: specs[t] for t in cfg.tasks}


def e_total_segments(cfg: SynthConfig) -> int:
    """Segments of step type E in every video: divisible by each repetition count."""
    return math.lcm(*range(1, cfg.count_max + 1))


def type_names(cfg: SynthConfig) -> list[str]:
    """A..F are the task steps, then the filler types G, H, ..."""
    n = NUM_SPECIAL + cfg.filler_types
    return [chr(ord("A") + i) if i < 26 else f"T{i}" for i in range(n)]


@dataclass(frozen=True)
class Step:
    """One step: a type id, its first segment, its length in segments and its scene state.

    ``state`` (fillers only, with ``order_trace``) counts the order steps (A, B) already
    done: those steps leave a lasting trace on the scene, as real steps do. ``phase``
    (``script`` task) is the script direction in force; it is never rendered.
    """

    type: int
    start: int
    segments: int
    state: int = 0
    phase: int = 0


@dataclass
class VideoPlan:
    """Ground truth of one synthetic video."""

    video_id: str
    index: int
    split: str
    labels: dict[str, int]
    steps: list[Step] = field(default_factory=list)

    @property
    def num_segments(self) -> int:
        return sum(s.segments for s in self.steps)

    def segment_types(self) -> np.ndarray:
        """[num_segments] int: the step type shown in each segment."""
        return np.repeat([s.type for s in self.steps], [s.segments for s in self.steps])

    def segment_states(self) -> np.ndarray:
        """[num_segments] int: the scene state of each segment (see :class:`Step`)."""
        return np.repeat([s.state for s in self.steps], [s.segments for s in self.steps])


def assign_labels(cfg: SynthConfig) -> tuple[list[str], list[dict[str, int]]]:
    """Split of each video (contiguous blocks) and its label per task, balanced per split.

    Within a split each task's classes differ in count by at most one; tasks are
    labelled independently (their own seeded shuffles), so they are uncorrelated.
    """
    n = cfg.num_videos
    frac = np.asarray(cfg.splits, dtype=float) / sum(cfg.splits)
    n_train, n_val = int(round(frac[0] * n)), int(round(frac[1] * n))
    n_val = min(n_val, n - n_train)
    sizes = [n_train, n_val, n - n_train - n_val]
    splits = [s for s, k in zip(SPLITS, sizes) for _ in range(k)]
    labels: list[dict[str, int]] = [{} for _ in range(n)]
    specs = task_specs(cfg)
    start = 0
    for si, k in enumerate(sizes):
        for task, spec in specs.items():
            rng = np.random.default_rng([cfg.seed, 7919, TASK_NAMES.index(task), si])
            ys = rng.permutation(np.arange(k) % len(spec.classes))
            for j, y in enumerate(ys):
                labels[start + j][task] = int(y)
        start += k
    return splits, labels


def plan_dataset(cfg: SynthConfig) -> list[VideoPlan]:
    """Every video's plan, deterministic from ``cfg.seed`` (cheap: no rendering)."""
    check_config(cfg)
    splits, labels = assign_labels(cfg)
    return [
        VideoPlan(f"synth_{i:05d}", i, splits[i], labels[i], plan_steps(cfg, i, labels[i]))
        for i in range(cfg.num_videos)
    ]


def plan_steps(cfg: SynthConfig, index: int, labels: dict[str, int]) -> list[Step]:
    """The step timeline of video ``index`` given its labels (see the module doc)."""
    counts, durs, perm, fill, assign, turns = (
        np.random.default_rng(s) for s in np.random.SeedSequence([cfg.seed, index]).spawn(6)
    )
    roles, durations = _draw_steps(cfg, labels, counts, durs)
    roles = [roles[i] for i in _arrange(cfg, roles, perm)]
    types = _assign_types(cfg, roles, labels, len(durations[D]), assign)
    lengths = durations.pop(-1)
    if "script" in cfg.tasks:
        fill_list = _script_fillers(cfg, lengths, labels["script"], fill, turns)
    else:
        fill_list = [(ty, n, 0) for ty, n in _fillers(cfg, lengths, labels.get("direction"), fill)]
    fillers = iter(fill_list)
    trace = cfg.order_trace and "order" in cfg.tasks
    steps, t, milestones, phase = [], 0, 0, fill_list[0][2] if fill_list else 0
    for ty in types:
        ty, n, phase = next(fillers) if ty == -1 else (ty, durations[ty].pop(0), phase)
        steps.append(Step(ty, t, n, milestones if trace and ty >= NUM_SPECIAL else 0, phase))
        milestones += ty in (A, B)
        t += n
    return steps


def _draw_steps(cfg: SynthConfig, labels: dict[str, int], counts, durs) -> tuple[list[str], dict]:
    """Unordered step roles, and segment lengths per type (key -1: fillers, in timeline order).

    Lengths belong to step types, not positions, so a label that moves types around
    leaves every type's lengths unchanged; fixed-size draws keep the streams label-free.
    """
    lo, hi = cfg.segments_per_step
    n_fill = int(counts.integers(cfg.filler_steps[0], cfg.filler_steps[1] + 1))
    n_c, n_d = (int(x) for x in counts.integers(1, cfg.precedes_max + 1, size=2))
    d_fill, d_order, d_prec = (
        [int(x) for x in durs.integers(lo, hi + 1, size=n)]
        for n in (cfg.filler_steps[1], 2, 2 * cfg.precedes_max)
    )
    d_app = int(durs.integers(lo, hi + 1))
    durations: dict[int, list[int]] = {-1: d_fill[:n_fill], C: [], D: []}
    roles = ["filler"] * n_fill
    if "order" in cfg.tasks:
        roles += ["order"] * 2
        durations.update({A: d_order[:1], B: d_order[1:]})
    if "precedes" in cfg.tasks:
        roles += ["precedes"] * (n_c + n_d)
        durations.update({C: d_prec[:n_c], D: d_prec[n_c : n_c + n_d]})
    if "count" in cfg.tasks:
        k = labels["count"] + 1
        roles += ["count"] * k
        durations[E] = [e_total_segments(cfg) // k] * k
    if "appearance" in cfg.tasks and labels["appearance"] == 1:
        roles.append("appearance")
        durations[F] = [d_app]
    return roles, durations


def _arrange(cfg: SynthConfig, roles: list[str], rng) -> list[int]:
    """Indices into ``roles`` in timeline order, meeting constraints that never look at labels.

    Stage 1 orders the fillers and the two order steps (at least ``min_gap`` fillers
    apart), which fixes every filler's scene state; stage 2 puts each other task step
    into a gap of its own (so they are never adjacent), precedes steps spread over at
    least ``min_gap`` steps. The states of the fillers therefore never depend on how many
    task steps get inserted (count, appearance), so their shares carry no label either.
    """
    base = [i for i, r in enumerate(roles) if r in ("filler", "order")]
    extra = [i for i, r in enumerate(roles) if r not in ("filler", "order")]
    if len(extra) > len(base) + 1:
        raise ConfigError(f"synth: {len(extra)} task steps need as many gaps between {len(base)} filler/order "
                          "steps; raise synth.filler_steps")
    for _ in range(_MAX_TRIES):
        seq = [int(i) for i in rng.permutation(base)]
        gaps = dict(zip(rng.choice(len(seq) + 1, size=len(extra), replace=False).tolist(), extra))
        order = [i for g in range(len(seq) + 1) for i in ([gaps[g]] if g in gaps else []) + seq[g:g + 1]]
        if _far(cfg, [k for k, i in enumerate(seq) if roles[i] == "order"]) and _far(
            cfg, [k for k, i in enumerate(order) if roles[i] == "precedes"]
        ):
            return order
    raise ConfigError(
        f"synth: no valid step arrangement found in {_MAX_TRIES} tries; "
        f"raise synth.filler_steps or lower synth.min_gap ({cfg.min_gap})"
    )


def _far(cfg: SynthConfig, pos: list[int]) -> bool:
    """First and last of ``pos`` (sorted step positions) have at least ``min_gap`` steps between."""
    return len(pos) < 2 or pos[-1] - pos[0] - 1 >= cfg.min_gap


def _assign_types(cfg: SynthConfig, roles: list[str], labels: dict[str, int], n_d: int, rng) -> list[int]:
    """Type ids per position; only here do order/precedes labels act (-1 = filler, set later)."""
    fixed = {"count": E, "appearance": F}
    types = [fixed.get(r, -1) for r in roles]
    order_pos = [i for i, r in enumerate(roles) if r == "order"]
    if order_pos:
        first, second = (A, B) if labels["order"] == 0 else (B, A)
        types[order_pos[0]], types[order_pos[1]] = first, second
    prec_pos = [i for i, r in enumerate(roles) if r == "precedes"]
    if prec_pos:
        for i, ty in zip(prec_pos, _precedes_types(cfg, prec_pos, n_d, labels["precedes"], rng)):
            types[i] = ty
    return types


def _precedes_types(cfg: SynthConfig, pos: list[int], n_d: int, label: int, rng) -> list[int]:
    """C/D per precedes position: all D first (class 0), or a random layout with a far C -> D."""
    base = [D] * n_d + [C] * (len(pos) - n_d)
    if label == 0:
        return base
    for _ in range(_MAX_TRIES):
        ty = [int(x) for x in rng.permutation(base)]
        if precedes_far(pos, ty, cfg.min_gap):
            return ty
    raise AssertionError("unreachable: C first and D last always qualifies")


def precedes_far(pos: list[int], types: list[int], gap: int) -> bool:
    """Whether some C at step position i precedes some D at j with j - i - 1 >= gap."""
    cs = [p for p, t in zip(pos, types) if t == C]
    ds = [p for p, t in zip(pos, types) if t == D]
    return bool(cs and ds and max(ds) - min(cs) - 1 >= gap)


def _fillers(cfg: SynthConfig, lengths: list[int], direction: int | None, rng) -> list[tuple[int, int]]:
    """(type, segments) of the filler steps in timeline order; consecutive fillers always differ.

    Without the direction task the types are uniform. With it they follow the script
    cycle G -> H -> ... (a random other type with probability ``script_noise``), and
    class 1 is the exact reverse of what class 0 would be: same types, same lengths.
    """
    n_types = cfg.filler_types
    seq = [int(rng.integers(n_types))]
    for _ in lengths[1:]:
        prev = seq[-1]
        if direction is not None and rng.random() >= cfg.script_noise:
            seq.append((prev + 1) % n_types)
        else:
            seq.append(int((prev + rng.integers(1, n_types)) % n_types))
    out = [(NUM_SPECIAL + t, n) for t, n in zip(seq, lengths)]
    return out[::-1] if direction == 1 else out


def script_turns(n_fill: int, label: int, rng) -> tuple[int, list[int]]:
    """Initial direction and the filler indices where the script turns (1 or 2 of them).

    Turns fall on fillers 2 .. n_fill - 2, at least 2 apart, so every phase shows at
    least two consecutive fillers (the order of a pair is what reveals a direction). The
    number of turns is drawn without the label; the initial direction then makes the
    final direction equal to ``label``.
    """
    slots = list(range(2, n_fill - 1))
    k = int(rng.integers(1, 3))
    for _ in range(_MAX_TRIES):
        at = sorted(int(x) for x in rng.choice(slots, size=min(k, len(slots)), replace=False))
        if all(b - a >= 2 for a, b in zip(at, at[1:])):
            return label ^ (len(at) % 2), at
    raise ConfigError("synth: the script task needs more filler steps (raise synth.filler_steps)")


def _script_fillers(cfg: SynthConfig, lengths: list[int], label: int, fill, turns) -> list[tuple[int, int, int]]:
    """(type, segments, phase) of the filler steps: the script cycle, turning at :func:`script_turns`."""
    if len(lengths) < 4:
        raise ConfigError("synth: the script task needs at least 4 filler steps (synth.filler_steps)")
    phase, at = script_turns(len(lengths), label, turns)
    n_types = cfg.filler_types
    seq, phases = [int(fill.integers(n_types))], [phase]
    for j in range(1, len(lengths)):
        phase ^= j in at
        step = 1 if phase == 0 else -1
        prev = seq[-1]
        nxt = (prev + step) % n_types if fill.random() >= cfg.script_noise else (prev + fill.integers(1, n_types))
        seq.append(int(nxt) % n_types)
        phases.append(phase)
    return [(NUM_SPECIAL + t, n, p) for t, n, p in zip(seq, lengths, phases)]

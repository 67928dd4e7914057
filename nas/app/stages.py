"""The stages of a run, as declarations: what each reads (config keys, files), what it writes,
which stages it follows; a fingerprint per stage over what it reads; and the plan of a rerun
(keep, run, or redo each stage, with the reason).

A stage is a registration (`register_stage`): its function, the config keys whose values decide
its outputs (`keys`), the stages whose outputs it reads (`after`, their keys count too), the
run-folder files it reads and writes. `writes` are removed when the stage is redone; `caches`
are kept (each entry is keyed by what it depends on, e.g. a LUT by its device, inherited
accuracies by the checkpoint's fingerprint); `extends` are keys the stage resumes across
(more search trials continue the study). A finished stage leaves a record in `stages.json`:
its fingerprint, the values it read and the outputs it left, so a rerun with a changed config
redoes exactly the stages whose inputs changed and says which key changed.
"""

from __future__ import annotations

import copy
import datetime as dt
import difflib
import glob
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nas.app.errors import FileProblem, InputError
from nas.core.files import json_digest, write_json_atomic

__all__ = [
    "ADDED_KEYS",
    "RECORDS_FILE",
    "RUN_FILES",
    "STAGES",
    "UNFINGERPRINTED",
    "Decision",
    "Stage",
    "StageRecords",
    "closure_keys",
    "config_value",
    "exempt_keys",
    "fingerprint",
    "key_added",
    "plan_run",
    "register_stage",
    "stage_is_on",
    "stage_names",
]

log = logging.getLogger(__name__)

RECORDS_FILE = "stages.json"
RUN_FILES = ("config.yaml", RECORDS_FILE, "timings.json", ".lock", "logs")
"""What the pipeline itself keeps in a run folder (a stage may read them, never write them)."""
_FORMAT = 1


@dataclass(frozen=True)
class Stage:
    """One stage of a run: `run(state, progress)` and what it reads and writes (module doc).

    Keys are dotted paths into the run config (`seed`, `supernet`, `search.budgets`); a key
    covers everything under it. Paths are relative to the run folder and may hold glob
    patterns (`*.png`)."""

    name: str
    run: Callable[[Any, bool], None]
    keys: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    caches: tuple[str, ...] = ()
    extends: tuple[str, ...] = ()
    #: called before the stage is redone; raises an InputError when its outputs cannot be
    #: removed from here (a study in a shared database)
    before_redo: Callable[[Mapping[str, Any], Path], None] | None = None
    doc: str = ""
    #: a dotted boolean config key that turns an optional stage on (`hwtrain.enabled`); empty:
    #: the stage always runs. The key is one of the stage's `keys` (or under one). An off stage neither runs
    #: nor loses what an earlier run left; the stages that follow it are off too.
    switch: str = ""


STAGES: dict[str, Stage] = {}
"""The registered stages, in the order they run."""


def register_stage(stage: Stage, *, replace: bool = False, before: str = "") -> Stage:
    """Add `stage` after the stages registered before it (its `after` must name some of them),
    or, with `before`, just ahead of that registered stage (an optional stage goes ahead of
    `report`).

    Later issues add stages (hardware-aware training, on-device learning, federated rounds) by
    registering them; the contract test (`tests/nas/app/test_stages.py`) then runs over them."""
    if stage.name in STAGES and not replace:
        raise ValueError(f"stage {stage.name!r} is already registered; pass replace=True")
    if before and before not in STAGES:
        raise ValueError(f"stage {stage.name!r}: no stage {before!r} to go before")
    order = list(STAGES)
    earlier = order[: order.index(before)] if before else order
    unknown = [a for a in stage.after if a not in earlier or a == stage.name]
    if unknown:
        raise ValueError(
            f"stage {stage.name!r} follows {unknown}, which are not registered before it; "
            f"registered before it: {', '.join(earlier) or 'none'}"
        )
    if stage.switch and not any(
        stage.switch == k or stage.switch.startswith(k + ".") for k in stage.keys
    ):
        raise ValueError(
            f"stage {stage.name!r}: its switch {stage.switch!r} must be one of its keys "
            f"(or under one): {', '.join(stage.keys) or 'none'}"
        )
    if not before:
        STAGES[stage.name] = stage
        return stage
    rest = {name: STAGES.pop(name) for name in order[order.index(before) :]}
    STAGES.pop(stage.name, None)
    STAGES[stage.name] = stage
    STAGES.update((name, s) for name, s in rest.items() if name != stage.name)
    return stage


UNFINGERPRINTED: dict[str, str] = {}
"""Config keys that no stage's fingerprint covers, each with why: how a run executes (the
device it trains on), not what it computes, so a rerun that changes one keeps every finished
stage. Every key of the schema is either read by a stage or listed here (the contract test)."""


def exempt_keys(keys: Mapping[str, str]) -> None:
    """List config keys (dotted, with why) that no stage reads into its fingerprint."""
    for key, why in keys.items():
        if not why.strip():
            raise ValueError(f"{key}: say why no stage's fingerprint covers it")
        UNFINGERPRINTED[key] = why


ADDED_KEYS: dict[str, Any] = {}
"""Keys a later version added to a stage, each with the value that computes what runs made
before it computed: at that value the key is left out of the fingerprint, so a run folder made
before the key existed keeps its finished stages."""


def key_added(key: str, old_behaviour: Any) -> None:
    """Declare `key` added to a stage's keys; `old_behaviour` is its value that changes nothing."""
    ADDED_KEYS[key] = old_behaviour


def stage_is_on(stage: Stage, config: Mapping[str, Any]) -> bool:
    """Whether an optional stage's switch is on in `config` (always, for a stage without one)."""
    if not stage.switch:
        return True
    try:
        return bool(config_value(config, stage.switch))
    except KeyError:
        return False  # a stored config from before the stage existed


def stage_names() -> list[str]:
    return list(STAGES)


# -- fingerprints ----------------------------------------------------------------------------
_MISSING = object()


def config_value(config: Mapping[str, Any], key: str) -> Any:
    """The value at dotted `key` of a config dict (`_MISSING`-free: KeyError when absent)."""
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise KeyError(key)
        value = value[part]
    return value


def closure_keys(stage: Stage, stages: Mapping[str, Stage] | None = None) -> list[str]:
    """`stage`'s keys and those of every stage it follows, transitively (sorted, no repeats)."""
    stages = STAGES if stages is None else stages
    keys: set[str] = set(stage.keys)
    for name in stage.after:
        keys |= set(closure_keys(stages[name], stages))
    return sorted(keys)


def _inputs(stage: Stage, config: Mapping[str, Any], stages: Mapping[str, Stage]) -> dict:
    out: dict[str, Any] = {}
    for key in closure_keys(stage, stages):
        try:
            value = copy.deepcopy(config_value(config, key))
        except KeyError:
            if key in ADDED_KEYS:
                continue  # a stored config from before the key: it computed as the key's default
            value = None  # a key a stored config of an older version lacks
        if key in ADDED_KEYS and value == ADDED_KEYS[key]:
            continue  # as runs before the key computed: their fingerprints stay
        if isinstance(value, dict):  # a whole section: its added keys at their old value too
            value = {
                k: v
                for k, v in value.items()
                if not (f"{key}.{k}" in ADDED_KEYS and v == ADDED_KEYS[f"{key}.{k}"])
            }
        out[key] = value
    return out


def fingerprint(
    stage: Stage, config: Mapping[str, Any], stages: Mapping[str, Stage] | None = None
) -> str:
    """A digest of the values of `stage`'s keys and of the stages it follows: it changes when,
    and only when, one of them changes (`extends` keys are read but not in it)."""
    return json_digest(_inputs(stage, config, STAGES if stages is None else stages), 16)


# -- records ---------------------------------------------------------------------------------
class StageRecords:
    """`stages.json` of a run folder: one record per finished stage."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / RECORDS_FILE
        self.stages: dict[str, dict[str, Any]] = self._read()

    def _read(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            stages = data["stages"]
            if not isinstance(stages, dict):
                raise TypeError("'stages' is not a mapping")
        except (ValueError, KeyError, TypeError) as err:
            raise FileProblem(
                self.path,
                f"not a record of finished stages ({type(err).__name__}: {err})",
                "delete it: every stage then resumes from its files (none is redone)",
            ) from None
        return stages

    def get(self, name: str) -> dict[str, Any] | None:
        return self.stages.get(name)

    def forget(self, names: Iterable[str]) -> None:
        """Drop the records of `names` (before their outputs go), written at once."""
        names = [n for n in names if n in self.stages]
        for n in names:
            del self.stages[n]
        if names:
            self._write()

    def finish(self, stage: Stage, config: Mapping[str, Any], run_dir: Path) -> None:
        extends = {}
        for k in stage.extends:
            try:
                extends[k] = config_value(config, k)
            except KeyError:
                extends[k] = None
        self.stages[stage.name] = {
            "fingerprint": fingerprint(stage, config),
            "inputs": _inputs(stage, config, STAGES),
            "extends": extends,
            "outputs": sorted(
                str(p.relative_to(run_dir)) for p in _existing(run_dir, stage.writes)
            ),
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        self._write()

    def _write(self) -> None:
        write_json_atomic(self.path, {"format": _FORMAT, "stages": self.stages})


def _existing(run_dir: Path, patterns: Sequence[str]) -> list[Path]:
    found: list[Path] = []
    for pattern in patterns:
        found += sorted(Path(p) for p in glob.glob(str(run_dir / pattern)))
    return found


def legacy_records(stored: Mapping[str, Any], run_dir: Path) -> dict[str, dict[str, Any]]:
    """Records for a run folder made before `stages.json`: every stage as finished with the
    config stored there (a stage that never ran resumes from nothing, as it would anyway)."""
    return {
        s.name: {
            "fingerprint": fingerprint(s, stored),
            "inputs": _inputs(s, stored, STAGES),
            "extends": {},
            "outputs": [],
            "finished": "before stages.json",
        }
        for s in STAGES.values()
    }


# -- the plan of a run -----------------------------------------------------------------------
@dataclass
class Decision:
    """What a run does with one stage: `keep` (finished; resumed from its files), `run` (never
    finished: runs, resuming what a stopped run left), `redo` (its outputs removed first),
    `off` (an optional stage whose switch is off, or one that follows it: nothing runs and
    nothing is removed)."""

    stage: str
    action: str
    reason: str = ""
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        why = f": {self.reason}" if self.reason else ""
        notes = f" ({'; '.join(self.notes)})" if self.notes else ""
        return f"{self.stage}: {self.action}{why}{notes}"


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    def value(inputs: Mapping[str, Any], k: str) -> Any:
        return inputs[k] if k in inputs else ADDED_KEYS.get(k)  # left out: its old value

    return [
        f"{k} changed ({_short(value(old, k))} -> {_short(value(new, k))})"
        for k in sorted(set(old) | set(new))
        if value(old, k) != value(new, k)
    ]


def check_force(force: Sequence[str]) -> None:
    """An unknown stage name in `--force` is bad input, listing the stages."""
    bad = [f for f in force if f not in STAGES]
    if bad:
        hints = [
            f"{b!r} (did you mean {close[0]!r}?)" if close else repr(b)
            for b in bad
            for close in [difflib.get_close_matches(b, list(STAGES), n=1)]
        ]
        raise InputError(f"--force: unknown stage {', '.join(hints)}; stages: {', '.join(STAGES)}")


def _decide(
    stage: Stage,
    config: Mapping[str, Any],
    record: Mapping[str, Any] | None,
    run_dir: Path,
    redone: set[str],
    force: Sequence[str],
    off: set[str],
) -> Decision:
    if not stage_is_on(stage, config):
        return Decision(stage.name, "off", f"set {stage.switch}: true to run it")
    if upstream_off := [a for a in stage.after if a in off]:
        return Decision(stage.name, "off", f"it follows {', '.join(upstream_off)}, which is off")
    if stage.name in force:
        return Decision(stage.name, "redo", "--force")
    upstream = [a for a in stage.after if a in redone]
    if upstream:
        return Decision(stage.name, "redo", f"it reads what {', '.join(upstream)} makes")
    if record is None:
        return Decision(stage.name, "run")
    if record.get("fingerprint") != fingerprint(stage, config):
        changed = _changed_keys(record.get("inputs", {}), _inputs(stage, config, STAGES))
        return Decision(stage.name, "redo", "; ".join(changed) or "its inputs changed")
    gone = [p for p in record.get("outputs", []) if not (run_dir / p).exists()]
    if gone:
        return Decision(stage.name, "redo", f"{', '.join(gone)} was deleted")
    decision = Decision(stage.name, "keep")
    for key, old in record.get("extends", {}).items():
        new = config_value(config, key)
        if old != new:
            decision.notes.append(f"continues: {key} {_short(old)} -> {_short(new)}")
    return decision


def plan_run(
    config: Mapping[str, Any],
    run_dir: Path,
    records: Mapping[str, Mapping[str, Any]],
    force: Sequence[str] = (),
) -> list[Decision]:
    """Keep, run or redo each registered stage, in order (module docstring); nothing changes
    on disk. A stage is redone when forced, when a stage it follows is redone, when a key it
    reads changed since it finished, or when an output it left was deleted."""
    check_force(force)
    redone: set[str] = set()
    off: set[str] = set()
    plan = []
    for stage in STAGES.values():
        decision = _decide(stage, config, records.get(stage.name), run_dir, redone, force, off)
        if decision.action == "redo":
            redone.add(stage.name)
        elif decision.action == "off":
            off.add(stage.name)
        plan.append(decision)
    return plan


def prepare_redo(
    plan: Sequence[Decision], config: Mapping[str, Any], run_dir: Path, records: StageRecords
) -> None:
    """Remove what the redone stages wrote (their records first, so a kill midway leaves
    stages that rerun, never a record of outputs that are gone). Caches stay."""
    redo = [STAGES[d.stage] for d in plan if d.action == "redo"]
    for stage in redo:
        if stage.before_redo is not None:
            stage.before_redo(config, run_dir)
    records.forget(s.name for s in redo)
    import shutil

    for stage in redo:
        for path in _existing(run_dir, stage.writes):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

"""The artifact cache: stage outputs under `<artifacts_dir>/<stage>/<key>/`, keyed by what produced them.

Each stage is described once in `SPECS`: the config subtrees its output depends on, the stages whose
artifacts it reads (their keys fold into its own, so a changed upstream invalidates it), whether it
reads click logs, and the result file written last that marks the artifact complete. From a spec:
`key` hashes the inputs (the stage graph, `clicks2pref.stages.pipeline`, runs or reuses the stages read and
hands their results to the stage), `reuse` returns a complete
artifact's result, and `atomic_dir` writes a new one under a temporary name, renamed when complete,
so a killed run never leaves an artifact that a later run would trust.

Trust: every artifact carries a manifest (each file's size and sha256), written last and checked on
reuse; a mismatch moves the folder aside (`<key>.corrupt-<time>`, nothing deleted) and the stage
rebuilds it. One file lock per artifact key: a second run that needs an artifact another run is
building waits for it, then reuses it, and never trains into the same work folder.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from filelock import FileLock, Timeout
from omegaconf import OmegaConf

from clicks2pref.data.io import expand_sources
from clicks2pref.data.offline_mode import uses_simulator
from clicks2pref.errors import ClickLogError, ConfigError
from clicks2pref.fingerprint import fingerprint, modules, named_modules
from clicks2pref.manifest import verify, write_manifest
from clicks2pref.rewards.composite import needed_reward_models

log = logging.getLogger(__name__)
_locks: dict[Path, FileLock] = {}  # artifact folder -> its lock, held by this process while it builds it
_announced: set[Path] = set()  # artifacts this job has said it reuses (`release_locks` ends a job)

# the Trainer keys that change what a fit trains (the accelerator and loggers do not)
TRAIN_KEYS = ("trainer.accumulate_grad_batches", "trainer.gradient_clip_val", "trainer.precision",
              "trainer.limit_train_batches", "trainer.limit_val_batches", "trainer.fast_dev_run",
              "trainer.overfit_batches")


def _logs(cfg) -> tuple[str, ...]:
    """collect, when the click logs are its output rather than the user's files."""
    return () if cfg.data.logs else ("collect",)


def _evaluated(cfg) -> tuple[str, ...]:
    named = [p for p in cfg.eval.policies if p in ("sft", "grpo")]
    reranks = bool(cfg.eval.best_of.n and set(cfg.eval.best_of.policies) & set(cfg.eval.policies))
    rm = cfg.eval.calibration or reranks or not uses_simulator(cfg)  # without the simulator: the offline estimator
    composite = [] if not (reranks and cfg.eval.best_of.reward == "composite") else \
        ["sft", *(["fusion"] if cfg.rewards.weights == "fusion" else [])]  # its ppl reference; its weights and κ
    return tuple(dict.fromkeys([*_logs(cfg), *named, *(["rm"] if rm else []), *composite]))


def _sft_reads(cfg) -> tuple[str, ...]:
    """The click logs, and the teacher's candidates when there is a teacher."""
    return (*_logs(cfg), *(["teacher"] if cfg.teacher.model is not None else []))


def _rm_reads(cfg) -> tuple[str, ...]:
    """The click logs, and the SFT policy's served weeks when the reward models train on some (simulated users
    only: without the simulator nobody clicks on what serve writes)."""
    return (*_logs(cfg), *(["serve"] if cfg.serve.rm_weeks and uses_simulator(cfg) else []))


def _fusion_reads(cfg) -> tuple[str, ...]:
    """The SFT policy, its served week (`fusion.logs=policy`, with the simulator) and the reward models."""
    served = cfg.fusion.logs == "policy" and uses_simulator(cfg)
    return ("sft", *(["serve"] if served else []), *(["rm"] if needed_reward_models(cfg.rewards) else []))


@dataclass(frozen=True)
class StageSpec:
    hashes: tuple[str, ...]  # config subtrees the output depends on
    marker: Optional[str]  # the result file, written last; None = never cached (the stage only reports)
    reads: Callable = _logs  # cfg -> stages whose artifacts it reads, in run order
    logs: bool = True  # reads click logs: collect's key or the files' bytes fold in
    files: tuple[str, ...] = ()  # config keys naming more files whose bytes fold in
    exclude: tuple[str, ...] = ()  # keys under `hashes` that do not change the output (report settings among them)
    # the job's metric: a dotted path into the result dict `run` returns (what a sweeper optimises; `optimized_metric`
    # picks another). Always a number a team could measure: validation contexts and sampled clicks, or the logs;
    # never the oracle or the test contexts (those only report). None: the stage decides nothing a sweep could tune
    # on its own result, so a sweep over it names `optimized_metric`.
    headline: Optional[str] = None
    pipeline: bool = True  # one of stage=pipeline's steps, run in SPECS order (else run only as a stage's input)


SPECS = {
    "collect": StageSpec(("seed", "simulator", "prompt", "policy", "collect", "data.split", "data.format"),
                         "templates.json", reads=lambda cfg: (), logs=False,
                         headline="selected.sampled_ctr"),  # the chosen template's sampled CTR, validation contexts
    # the teacher is sft's sub-stage (its candidates are reused by runs that differ only downstream)
    "teacher": StageSpec(("seed", "teacher", "sft.data", "policy.generation.batch_size", "data.on_invalid",
                          *TRAIN_KEYS), "teacher.json", pipeline=False),
    "sft": StageSpec(("seed", "simulator", "prompt", "policy", "sft", "teacher", "data.on_invalid", "data.split",
                      "data.holdout", *TRAIN_KEYS), "sft.json", reads=_sft_reads,
                     headline=None),  # reports the oracle on held-out contexts only
    # rm: the reference policy of the perplexity deciles too, and the OOD logs' bytes
    # serve: the SFT policy's logged weeks, sampled as GRPO samples a group
    "serve": StageSpec(("seed", "serve", "simulator", "grpo.temperature", "grpo.top_p", "grpo.top_k",
                        "grpo.max_completion_length", "policy.generation.batch_size", "data.on_invalid", "data.split",
                        "data.holdout", "data.format", "collect.weeks", "collect.shuffle_positions"), "serve.json",
                       reads=lambda cfg: (*_logs(cfg), "sft"),
                       headline=None),  # logs traffic; decides nothing
    "rm": StageSpec(("seed", "simulator", "prompt", "policy", "collect", "data", "reward_model", "trainer.max_steps",
                     *TRAIN_KEYS), "rm.json", files=("data.ood_logs",), reads=_rm_reads,
                 headline="metrics.garm.iid.accuracy"),  # GaRM's pair accuracy on the logs' IID week
    # fusion: the enabled components and their settings, not how the weights are chosen
    "fusion": StageSpec(("seed", "rewards", "fusion", "grpo.temperature", "grpo.top_p", "grpo.top_k",
                         "grpo.max_completion_length", "grpo.micro_batch_size", "policy.generation.batch_size",
                         "data.on_invalid", "data.split", "data.holdout", "data.format"), "fusion_weights.json",
                        reads=_fusion_reads,
                        exclude=("rewards.name", "rewards.weights"),
                        headline="chosen.auc"),  # click AUC of the chosen weights on the logged week
    "grpo": StageSpec(("seed", "rewards", "grpo", "optimizer", "simulator", "policy", "prompt", "data.on_invalid",
                       "data.split", "data.format", "collect.sessions_per_week", "collect.users_per_panel",
                       "trainer.precision", "trainer.accelerator", "data.holdout"), "grpo.json",
                      # the reward models: the reward's, and without the simulator the offline estimator's
                      reads=lambda cfg: ("sft", *(["rm"] if needed_reward_models(cfg.rewards) or not uses_simulator(cfg)
                                                  else []),
                                         *(["fusion"] if cfg.rewards.weights == "fusion" else [])),
                      headline="selected.sampled_ctr"),  # the kept checkpoint's sampled CTR, validation contexts
    # evaluate: every setting a policy's score or the best-of reward can read; folder policies' identities as extra
    "evaluate": StageSpec(("seed", "eval", "simulator", "prompt", "policy", "rewards", "reward_model", "data",
                           "sft.template", "grpo.temperature", "grpo.top_p", "grpo.top_k", "grpo.max_completion_length",
                           "grpo.micro_batch_size"), "evaluation.json", reads=_evaluated, files=("data.ood_logs",),
                          # the report's settings: every CI, lift and GSB is computed from the stored measurements
                          exclude=("eval.bootstrap_samples", "eval.ci_level", "eval.ci_clusters", "eval.gsb",
                                   "eval.reference", "eval.target_half_width"),
                          headline=None),  # reports the oracle on held-out contexts only
    # every step above in this order, each reused when its key matches; not itself a step
    "pipeline": StageSpec((), None, reads=lambda cfg: (), logs=False, pipeline=False,
                          headline="stages.grpo.selected.sampled_ctr"),
}


def _plain(cfg, name: str):
    node = OmegaConf.select(cfg, name)
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _drop(tree: dict, dotted: str, prefix: str) -> None:
    head, _, rest = dotted.partition(".")
    if head == prefix and rest and isinstance(tree, dict):
        tree.pop(rest, None)


def _files_digest(source) -> str:
    digest = hashlib.sha256()
    for path in expand_sources(source):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def logs_fingerprint(cfg) -> str:
    """What a stage's click logs are: collect's key when they are its output, else a hash of the files."""
    return f"logs:{_files_digest(cfg.data.logs)}" if cfg.data.logs else f"collect:{key(cfg, 'collect')}"


def code_roots(stage: str, cfg=None) -> tuple[str, ...]:
    """The modules `stage` starts from: its own, and what its hashed config subtrees load by name (`_target_`
    strings, registry names; `clicks2pref.fingerprint.named_modules`)."""
    named = named_modules(cfg, SPECS[stage].hashes) if cfg is not None else ()
    return (f"clicks2pref.stages.{stage}", *named)


def code_modules(stage: str, cfg=None) -> list[str]:
    """The clicks2pref source files `stage` runs under `cfg` (paths from the repository): what its module imports,
    directly or not, and what its config loads by name; never the cache's plumbing or a report module."""
    return modules(code_roots(stage, cfg))


def code_fingerprint(stage: str, cfg=None) -> str:
    """Hash of `code_modules(stage, cfg)`: editing a loss, a reward or a sampler changes the keys of the stages
    that run it, so no stale artifact is reused, and no other stage's."""
    return fingerprint(code_roots(stage, cfg))


def key(cfg, stage: str, inputs: Optional[dict] = None, extra: str = "") -> str:
    """Short hash of everything `stage`'s output depends on: its config subtrees, the click logs and other
    files it reads, its code (`code_fingerprint`), the keys of the upstream results in `inputs`, and `extra`."""
    spec = SPECS[stage]
    parts = {}
    for name in spec.hashes:
        parts[name] = _plain(cfg, name)
        for dotted in spec.exclude:
            _drop(parts[name], dotted, name)
    blob = json.dumps(parts, sort_keys=True, default=str)
    fold = [hashlib.sha256(blob.encode()).hexdigest()[:12]]
    if spec.logs:
        fold.append(logs_fingerprint(cfg))
    fold += [_files_digest(OmegaConf.select(cfg, f)) if OmegaConf.select(cfg, f) else "" for f in spec.files]
    fold.append(code_fingerprint(stage, cfg))
    fold += [inputs[s]["key"] for s in spec.reads(cfg) if inputs and s in inputs]
    fold += [extra] if extra else []
    return hashlib.sha256("|".join(fold).encode()).hexdigest()[:12]


def artifact_path(cfg, stage: str, key: str) -> Path:
    return Path(cfg.paths.artifacts_dir) / stage / key


def reuse(cfg, stage: str, key: str) -> Optional[dict]:
    """The result of a complete, verified artifact of this key (unless `cache=off`); else None, and this
    process now holds the key's lock until `atomic_dir` writes the artifact (or the process ends).

    When another run holds the lock, this one says so, waits, and reuses what that run built."""
    final = artifact_path(cfg, stage, key)
    if (result := _complete(cfg, stage, final)) is not None:
        return result
    lock = _locks.setdefault(final, FileLock(f"{final}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("%s: another run is building %s; waiting for it", stage, final)
        lock.acquire()
    if (result := _complete(cfg, stage, final)) is not None:  # built by the run we waited for
        lock.release()
        return result
    for stale in final.parent.glob(f".{final.name}.tmp-*"):  # a killed build's: nobody else builds this key now
        shutil.rmtree(stale, ignore_errors=True)
    return None


def _complete(cfg, stage: str, final: Path) -> Optional[dict]:
    if not (cfg.cache and final.exists()):
        return None
    problem = verify(final)
    if problem is None:
        try:
            result = json.loads((final / SPECS[stage].marker).read_text())
            # one line per artifact and process: stages that read the same input do not repeat it
            log.log(logging.DEBUG if final in _announced else logging.INFO, "%s: reusing %s", stage, final)
            _announced.add(final)
            return result
        except (OSError, ValueError) as e:
            problem = f"{SPECS[stage].marker}: {e}"
    aside = move_aside(final, "corrupt")
    log.warning("%s: %s fails verification (%s); moved to %s, rebuilding", stage, final, problem, aside.name)
    return None


def move_aside(path: Path, why: str) -> Path:
    """Rename `path` to `<path>.<why>-<time>` beside it (nothing is deleted)."""
    aside = path.with_name(f"{path.name}.{why}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.replace(path, aside)
    return aside


def release_locks() -> None:
    """End of a job: release every artifact lock this process holds (a stage that failed keeps none), and let the
    next job (a sweep's, a notebook's second run) say once more which artifacts it reuses."""
    for lock in _locks.values():
        lock.release(force=True)
    _announced.clear()


def work_dir(cfg, stage: str, key: str) -> Path:
    """Where an unfinished build keeps its checkpoints, so a killed run resumes; with `cache=off` an old one is
    moved aside and training starts from scratch. Call once per build (the caller holds the key's lock)."""
    work = Path(cfg.paths.artifacts_dir) / stage / f".work-{key}"
    if not cfg.cache and work.exists():
        aside = move_aside(work, "old")
        log.info("%s: cache=off: moved the old work folder aside to %s", stage, aside.name)
    return work


def rm_models(cfg, inputs: dict) -> dict:
    """kind -> trained reward-model folder of this config's stage=rm artifact (none when rm was not read)."""
    if "rm" not in inputs:
        return {}
    folder = artifact_path(cfg, "rm", inputs["rm"]["key"])
    return {kind: str(folder / kind) for kind in inputs["rm"]["models"]}


def resolve_template(cfg) -> str:
    """`sft.template`, else `best_template` of the templates.json next to the logs, else the only prompt."""
    name, where = cfg.sft.template, "sft.template"
    if not name:
        found = Path(expand_sources(logs_source(cfg))[0]).parent / "templates.json"
        if found.exists():
            name, where = json.loads(found.read_text())["best_template"], str(found)
        elif len(cfg.prompt) == 1:
            name, where = next(iter(cfg.prompt)), "the only selected prompt"
        else:
            raise ConfigError("sft.template: no templates.json beside the click logs says which prompt collect "
                              f"chose; set sft.template to one of {', '.join(cfg.prompt)}")
    if name not in cfg.prompt:
        raise ConfigError(f"sft.template: '{name}' (from {where}) is not among the selected prompts "
                          f"{list(cfg.prompt)}; add it with prompt=[{name},...]")
    return name


def logs_source(cfg) -> str:
    """`data.logs` if set, else the logs the `collect` stage wrote for this configuration."""
    if cfg.data.logs:
        return cfg.data.logs
    folder = artifact_path(cfg, "collect", key(cfg, "collect"))
    if not folder.exists():
        raise ClickLogError(f"no click logs: set data.logs=PATH_OR_GLOB, or run `python -m clicks2pref "
                            f"stage=collect` with the same config first (expected {folder})", field="data.logs")
    return str(folder / f"week*.{cfg.data.format}")


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp folder beside `final`; when the block completes, write its manifest and rename it to
    `final`; then release the key's lock (held since `reuse` found nothing to reuse)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        write_manifest(tmp)
        if final.exists():  # cache=off rebuilt a verified artifact
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if final in _locks and _locks[final].is_locked:
            _locks[final].release(force=True)

"""`python -m clicks2pref.export FOLDER OUT [key=value ...] [--force]`: a trained policy or reward model as a
self-contained folder that loads without this project's artifact cache.

Why a command and not a copy: an SFT artifact holds a LoRA adapter on a base model named in `sft.json`, and a
GRPO artifact holds an adapter trained on the *merged* SFT weights while its `adapter_config.json` names the
plain base model (a machine-local cache path), so transformers + peft would silently load base + GRPO without
SFT. The export folds every adapter into full weights (safetensors) and writes beside them what a user needs to
serve the policy as it was trained and evaluated: the prompt template (`clicks2pref_prompt.json`, also in the
model card), the project's sampling settings (`generation_config.json`) and a model card with the training
config, data summary and evaluation. A reward model (`artifacts/rm/<key>/<kind>`) is exported with its LoRA
merged into the backbone. The overrides are the ones the artifact was trained with (`experiment=smoke`, ...):
the artifact records its template by name only and its sampling settings not at all, the config holds both.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Optional, Sequence

from huggingface_hub import ModelCard, ModelCardData
from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException
from safetensors.torch import save_file

from clicks2pref import compose
from clicks2pref.config import validate
from clicks2pref.config.prompt import PromptTemplate
from clicks2pref.data.prompts import build_messages
from clicks2pref.errors import Clicks2PrefError
from clicks2pref.manifest import MANIFEST, verify_given, write_manifest
from clicks2pref.models.reward_heads import load_reward_model
from clicks2pref.stages.artifacts import artifact_path
from clicks2pref.models.policies import load_grpo_policy, load_sft_policy

log = logging.getLogger(__name__)

PROMPT_FILE = "clicks2pref_prompt.json"  # the training template, so a user can rebuild the exact prompt
RM_FILE = "reward_model.json"
MARKERS = {"sft": "sft.json", "grpo": "grpo.json", "rm": RM_FILE, "exported": PROMPT_FILE}
TITLES = {"sft": "SFT", "grpo": "GRPO"}


class ExportError(Clicks2PrefError):
    """A folder that cannot be exported, or an output that would overwrite something."""


# --- what a folder is ---------------------------------------------------------------------------------


def folder_kind(folder: Path) -> str:
    """sft | grpo | rm | exported, from the file each kind of folder is written with; else one clear error."""
    if not folder.is_dir():
        raise ExportError(f"{folder}: no such folder; pass artifacts/sft/<key>, artifacts/grpo/<key>, "
                          "artifacts/rm/<key>/<kind> or a folder written by clicks2pref.export")
    for kind, marker in MARKERS.items():
        if (folder / marker).is_file():
            return kind
    raise ExportError(f"{folder} is not a clicks2pref artifact (none of {', '.join(MARKERS.values())}); pass "
                      "artifacts/sft/<key>, artifacts/grpo/<key>, artifacts/rm/<key>/<kind> or an exported folder")


def check_folder(folder: Path) -> None:
    """Refuse a folder whose files do not match its manifest (a truncated copy, zeroed weights)."""
    problem = verify_given(folder)
    if problem:
        raise ExportError(f"{folder} fails verification: {problem}")
    if not (folder / MANIFEST).is_file() and not (folder.parent / MANIFEST).is_file():
        log.warning("%s has no %s: its files cannot be checked", folder, MANIFEST)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"{path}: unreadable ({e})") from None


def compose_for(folder: Path, overrides: Sequence[str]):
    """The project's config with the user's overrides, validated; the artifact root is the folder's own, so a
    GRPO artifact finds the SFT weights it was trained on wherever the artifacts were moved."""
    cfg = compose(list(overrides))
    validate(cfg)
    given = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
    if not given & {"paths.artifacts_dir", "paths.root_dir"} and folder.parent.name in ("sft", "grpo"):
        with open_dict(cfg):
            cfg.paths.artifacts_dir = str(folder.resolve().parents[1])
    return cfg


def sft_source(folder: Path, meta: dict, cfg) -> Optional[Path]:
    """The SFT artifact a GRPO policy started from (None when it started from the base model)."""
    if meta.get("init") != "sft":
        return None
    key = (meta.get("inputs") or {}).get("sft")
    if not key:
        raise ExportError(f"{folder}/grpo.json records no SFT policy (inputs.sft) although GRPO started from one")
    return artifact_path(cfg, "sft", key)


def load_artifact_policy(folder: Path, kind: str, cfg):
    """(model with adapters merged, tokenizer, metadata, SFT metadata or None, prompt) of a verified sft/grpo
    artifact; the template is checked before any weights load."""
    meta = read_json(folder / MARKERS[kind])
    if not meta.get("template"):
        raise ExportError(f"{folder / MARKERS[kind]} records no prompt template; was it written by clicks2pref?")
    prompt = prompt_spec(cfg, meta["template"])
    sft_meta = meta if kind == "sft" else None
    if kind == "grpo" and (sft := sft_source(folder, meta, cfg)) is not None:
        if not (sft / "sft.json").is_file():
            raise ExportError(f"{folder}: the SFT policy it was trained on ({sft}) is missing; GRPO adapters need "
                              "those weights: run stage=sft with the same config or pass paths.artifacts_dir")
        check_folder(sft)
        sft_meta = read_json(sft / "sft.json")
    load = load_sft_policy if kind == "sft" else load_grpo_policy
    try:
        model, tok = load(folder, cfg)
    except Clicks2PrefError:
        raise
    except Exception as e:  # a foreign or broken file: one line, not a traceback from deep inside torch
        raise ExportError(f"{folder} does not load: {type(e).__name__}: {first_line(e)}") from None
    return model.eval(), tok, meta, sft_meta, prompt


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else ""


def one_line(e: BaseException) -> str:
    """A message on one line (Hydra's span several: what failed, then why)."""
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip())


def prompt_spec(cfg, template_name: str) -> dict:
    """The training template as data: messages = prefix + conversation + suffix (what `build_messages` does)."""
    if template_name not in cfg.prompt:
        raise ExportError(f"the policy was trained on template '{template_name}', which the composed config does "
                          f"not select ({', '.join(cfg.prompt)}); pass the overrides it was trained with")
    template = OmegaConf.to_object(cfg.prompt[template_name])
    messages = build_messages(template, [])
    return {"template": template_name, "system": template.system, "instruction": template.instruction,
            "suggestions": len(cfg.simulator.examination),
            "prefix": messages[:-1], "suffix": messages[-1:],
            "usage": "messages = prefix + conversation + suffix, the conversation a list of {role, content} turns "
                     "ending with the assistant's answer; apply the tokenizer's chat template with "
                     "add_generation_prompt=True; the reply is `suggestions` lines numbered 1., 2., ..."}


def template_of(prompt: dict) -> PromptTemplate:
    return PromptTemplate(instruction=prompt["instruction"], system=prompt["system"])


def generation_config(model, gen):
    """The model's own generation config (special tokens, top_k) with the project's sampling settings, so a
    plain `model.generate(**inputs)` samples as the project's evaluation did."""
    out = copy.deepcopy(model.generation_config)
    sampling = dict(temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k) if gen.do_sample else \
        dict(temperature=None, top_p=None, top_k=None)  # greedy: sampling knobs would fail validation
    out.update(do_sample=gen.do_sample, max_new_tokens=gen.max_new_tokens, **sampling)
    return out


# --- writing ------------------------------------------------------------------------------------------


def check_out(out: Path, folder: Path, force: bool) -> None:
    """Refuse to overwrite a non-empty OUT (unless forced), or to write into the folder being exported."""
    src, dst = folder.resolve(), out.resolve()
    if dst == src or src.is_relative_to(dst) or dst.is_relative_to(src):
        raise ExportError(f"{out}: the output must lie outside the folder being exported ({folder})")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ExportError(f"{out} exists and is not empty; pass --force to replace it")


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A temp folder beside OUT, renamed to OUT (with a manifest) only when complete: a failed or killed export
    never leaves a half-written model that loads."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the export is meant to be shared
    try:
        yield tmp
        for f in tmp.rglob("*"):
            f.chmod(0o755 if f.is_dir() else 0o644)  # some writers (safetensors) make private files
        write_manifest(tmp)
        old = None
        if out.exists():  # an empty folder, or --force
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None and old.is_dir():
            shutil.rmtree(old)
        elif old is not None:
            old.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def export(folder, out, overrides: Sequence[str] = (), force: bool = False) -> Path:
    """Export an sft/grpo artifact (merged policy + card) or a reward-model folder into OUT; returns OUT."""
    folder, out = Path(folder).expanduser(), Path(out).expanduser()
    kind = folder_kind(folder)
    if kind == "exported":
        raise ExportError(f"{folder} is already an exported policy; copy it instead")
    check_folder(folder)
    check_out(out, folder, force)
    cfg = compose_for(folder, overrides)
    if kind == "rm":
        export_reward_model(folder, out, cfg)
    else:
        export_policy(folder, out, kind, cfg)
    return out


def export_policy(folder: Path, out: Path, kind: str, cfg) -> None:
    model, tok, meta, sft_meta, prompt = load_artifact_policy(folder, kind, cfg)
    model.generation_config = generation_config(model, cfg.policy.generation)
    with staged(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / PROMPT_FILE).write_text(json.dumps(prompt, indent=2, ensure_ascii=False) + "\n")
        policy_card(kind, meta, sft_meta, prompt, model.generation_config).save(tmp / "README.md")


def export_reward_model(folder: Path, out: Path, cfg) -> None:
    """Full backbone weights (a LoRA merged in, 4-bit/8-bit loading dropped) + head + metadata + README."""
    meta = read_json(folder / RM_FILE)
    if not isinstance(meta.get("backbone"), dict) or "kind" not in meta:
        raise ExportError(f"{folder / RM_FILE} names no kind or backbone; was it written by clicks2pref?")
    with staged(out) as tmp:
        for name in ("head.safetensors", "adapter.safetensors", "backbone.safetensors"):
            if (folder / name).is_file():
                shutil.copyfile(folder / name, tmp / name)
        loadable = {**meta, "backbone": {**meta["backbone"], "quantization": None}}  # merge in full precision
        (tmp / RM_FILE).write_text(json.dumps(loadable, indent=2))
        try:
            model = load_reward_model(tmp, cfg.paths.model_cache,
                                      trust_remote_code=cfg.reward_model.backbone.trust_remote_code)
        except Clicks2PrefError:
            raise
        except Exception as e:  # a foreign or broken file: one line, not a traceback from deep inside torch
            raise ExportError(f"{folder} does not load: {type(e).__name__}: {first_line(e)}") from None
        backbone = model.backbone.merge_and_unload() if hasattr(model.backbone, "merge_and_unload") \
            else model.backbone
        save_file({k: v.detach().contiguous().cpu() for k, v in backbone.state_dict().items()},
                  tmp / "backbone.safetensors")
        (tmp / "adapter.safetensors").unlink(missing_ok=True)
        merged = {**meta, "backbone": {**meta["backbone"], "lora": None, "quantization": None},
                  "weights": "backbone", "exported_from": {"weights": meta.get("weights"),
                                                           "lora": meta["backbone"].get("lora"),
                                                           "quantization": meta["backbone"].get("quantization")}}
        (tmp / RM_FILE).write_text(json.dumps(merged, indent=2))
        rm_result = folder.parent / "rm.json"
        metrics = read_json(rm_result).get("metrics", {}).get(folder.name) if rm_result.is_file() else None
        (tmp / "README.md").write_text(reward_model_card(merged, metrics))


# --- model cards --------------------------------------------------------------------------------------


def policy_card(kind: str, meta: dict, sft_meta: Optional[dict], prompt: dict, gen) -> ModelCard:
    base = (sft_meta or {}).get("model", {}).get("name")
    hub_base = base if base and "/" in base and not Path(base).exists() else None  # a Hub id, not a local path
    data = ModelCardData(library_name="transformers", pipeline_tag="text-generation",
                         tags=["clicks2pref", "query-suggestion", kind], base_model=hub_base)
    sections = [f"# clicks2pref {TITLES[kind]} query-suggestion policy", "",
                f"A policy that writes {prompt['suggestions']} numbered follow-up questions (\"people also ask\") "
                "under an assistant's answer, trained with [clicks2pref](https://arxiv.org/abs/2508.15811) on "
                "click logs: " + ("supervised fine-tuning on clicked suggestions." if kind == "sft" else
                                  "the SFT policy further trained with GRPO on a composite reward.")
                + " Adapters are merged: these are full weights that load with plain transformers.", "",
                "## Usage", "", usage_snippet(), "",
                "`generation_config.json` holds the project's sampling settings "
                f"(temperature {gen.temperature}, top_p {gen.top_p}, top_k {gen.top_k}, "
                f"max_new_tokens {gen.max_new_tokens}). "
                "From a Hub id, fetch the prompt file with `huggingface_hub.hf_hub_download(repo_id, "
                f"\"{PROMPT_FILE}\")`. With clicks2pref installed: "
                "`echo '[{\"role\": \"user\", ...}, ...]' | python -m clicks2pref.suggest PATH`.", "",
                "## Prompt template", "",
                f"Trained on template `{prompt['template']}` (`{PROMPT_FILE}`): the system turn (if any), the "
                "conversation, then the instruction as the last user turn.", "",
                "```json", json.dumps({k: prompt[k] for k in ("template", "system", "instruction", "suggestions")},
                                      indent=2, ensure_ascii=False), "```", "",
                "## Training", "", *training_lines(kind, meta, sft_meta), "",
                "## Data", "", *data_lines(sft_meta), "",
                "## Evaluation", "", *eval_lines(kind, meta, sft_meta), ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(sections))


def usage_snippet() -> str:
    return "\n".join([
        "```python",
        "import json",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        "path = \"PATH\"  # this folder",
        "conversation = [{\"role\": \"user\", \"content\": \"How do I keep basil alive indoors?\"},",
        "                {\"role\": \"assistant\", \"content\": \"Give it six hours of sun and let the soil dry a "
        "little.\"}]",
        "tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)",
        f"prompt = json.load(open(f\"{{path}}/{PROMPT_FILE}\"))  # the template it was trained on",
        "inputs = tok.apply_chat_template(prompt[\"prefix\"] + conversation + prompt[\"suffix\"], "
        "add_generation_prompt=True, return_tensors=\"pt\", return_dict=True)",
        "print(tok.decode(model.generate(**inputs)[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))",
        "```"])


def training_lines(kind: str, meta: dict, sft_meta: Optional[dict]) -> list[str]:
    lines = []
    if kind == "grpo":
        weights = ", ".join(f"{k} {v:.3g}" for k, v in (meta.get("weights") or {}).items())
        start = f"the SFT policy `sft/{meta['inputs']['sft']}`" if meta.get("init") == "sft" else "the base model"
        tau = f"; perplexity τ {meta['tau']:.4g}" if meta.get("tau") is not None else ""
        lines += [f"- GRPO: reward preset `{meta.get('rewards')}` ({meta.get('reward')}); weights: {weights or 'n/a'}",
                  f"- {meta.get('steps')} steps ({meta.get('optimizer_steps')} optimizer steps), started from "
                  f"{start}{tau}",
                  f"- reward-hacking monitor: {hacking(meta.get('monitor'))}; artifact `grpo/{meta.get('key')}`"]
    if sft_meta:
        model, train = sft_meta.get("model", {}), sft_meta.get("train", {})
        lora = model.get("lora")
        adapter = f", LoRA r {lora['r']} alpha {lora['lora_alpha']} on {', '.join(lora['target_modules'])}" \
            if lora else ""
        lines += [f"- SFT: method `{sft_meta.get('method')}`{adapter}; base model `{model.get('name')}` "
                  f"({model.get('dtype')}); template `{sft_meta.get('template')}`",
                  f"- {train.get('steps')} steps on {train.get('data', {}).get('train_examples')} examples; "
                  f"train loss {num(train.get('train_loss'))}, val loss {num(train.get('val_loss_before'))} -> "
                  f"{num(train.get('val_loss'))}, val format rate {num(train.get('val_format_rate'))}; "
                  f"seed {sft_meta.get('seed')}; artifact `sft/{sft_meta.get('key')}`"]
    return lines


def data_lines(sft_meta: Optional[dict]) -> list[str]:
    if not sft_meta:  # GRPO from the base model: its data are the logged conversations, summarised nowhere
        return ["GRPO started from the base model; its prompts are the conversations of the click logs."]
    d, a = sft_meta.get("data", {}), sft_meta.get("assembly", {})
    sources = sft_meta.get("sources", {})
    return [f"- click logs: {d.get('impressions')} impressions, {d.get('groups')} context groups, "
            f"{d.get('clicked_suggestions')} clicked suggestions (`{Path(str(sft_meta.get('logs'))).name}`)",
            f"- teacher: {sft_meta.get('teacher', {}).get('name')}; diversity-aware assembly "
            f"{'on' if a.get('enabled') else 'off'}: {a.get('full_panels')} full panels of {a.get('contexts')} "
            f"contexts; targets from clicks {sources.get('click')}, from the teacher {sources.get('teacher')}"]


def eval_lines(kind: str, meta: dict, sft_meta: Optional[dict]) -> list[str]:
    """Oracle CTR (click simulator ground truth) with bootstrap CI on held-out contexts, as the stages report."""
    lines = []
    ev = meta.get("eval") if kind == "grpo" else None
    if ev:
        lines += [f"GRPO vs. the SFT policy on {ev['contexts']} held-out {ev['split']} contexts (oracle CTR, "
                  f"{ev.get('ci', '95%')} bootstrap CI):", "",
                  "| policy | oracle CTR [CI] | format rate | distinct-2 | mean cosine |", "|---|---|---|---|---|"]
        for name in ("sft", "grpo"):
            m = ev[name]
            lines.append(f"| {TITLES[name]} | {ctr(m)} | {rate(m.get('format_rate'))} | {rate(m.get('distinct_2'))} "
                         f"| {rate(m.get('mean_pairwise_cosine'))} |")
        g = ev.get("gsb") or {}
        lines += ["", f"Lift vs. SFT: {lift(ev.get('lift'))}"
                  + (f"; GSB {g['gsb']:+.1f} (good {g['good']} / same {g['same']} / bad {g['bad']})" if g else ""),
                  ""]
    sev = (sft_meta or {}).get("eval")
    if sev:
        lines += [f"{'The SFT policy it started from' if kind == 'grpo' else 'SFT'} vs. the prompted baseline on "
                  f"{sev['contexts']} held-out {sev['split']} contexts (oracle CTR, {sev.get('ci', '95%')} bootstrap "
                  "CI):", "", "| policy | oracle CTR [CI] | format rate |", "|---|---|---|"]
        for name in ("baseline", "sft"):
            if name in sev:
                lines.append(f"| {'prompted baseline' if name == 'baseline' else 'SFT'} | {ctr(sev[name])} | "
                             f"{rate(sev[name].get('format_rate'))} |")
        if sev.get("lift"):
            lines += ["", f"Lift vs. baseline: {lift(sev['lift'])}"]
    return lines or ["Not evaluated (`sft.eval.enabled=false`)."]


def ctr(m: dict) -> str:
    return f"{m['oracle_ctr']:.4f} [{m['ci_low']:.4f}, {m['ci_high']:.4f}]"


def lift(d: Optional[dict]) -> str:
    if not d:
        return "n/a"
    rel = f" ({d['relative']:+.0%})" if d.get("relative") is not None else ""
    return f"{d['ctr_diff']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]{rel} paired CTR difference"


def num(v) -> str:
    return "n/a" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def rate(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def hacking(monitor: Optional[dict]) -> str:
    if not monitor:
        return "n/a"
    return f"flag raised at steps {monitor.get('flagged_at')}" if monitor.get("flagged") else "no flag"


def reward_model_card(meta: dict, metrics: Optional[dict]) -> str:
    kind, backbone = meta["kind"], meta["backbone"]
    outputs = ("`mu` (μ) and `sigma` (σ > 0): the suggestion's reward is modelled as N(μ, σ²), and P(a clicked over "
               "b in the same panel) = Φ((μ_a − μ_b) / √(σ_a² + σ_b²)); μ is the expected reward, σ how unsure the "
               "model is of it; `rewards(contexts, suggestions, kappa)` gives μ − κσ" if kind == "garm" else
               "`reward` (r): P(a clicked over b in the same panel) = sigmoid(r_a − r_b); `rewards(...)` gives r")
    lines = [f"# clicks2pref {kind.upper()} reward model", "",
             f"A {'Gaussian (GaRM: μ and σ)' if kind == 'garm' else 'Bradley-Terry (BTRM)'} reward model trained on "
             "clicked ≻ skipped pairs of the same panel. Backbone weights are full (any LoRA merged in): "
             "`backbone.safetensors`, `head.safetensors`, `reward_model.json`.", "",
             "## Usage", "", "```python",
             "from clicks2pref.models.reward_heads import load_reward_model", "",
             "rm = load_reward_model(\"PATH\")  # this folder",
             "conversation = [{\"role\": \"user\", \"content\": \"How do I keep basil alive indoors?\"},",
             "                {\"role\": \"assistant\", \"content\": \"Six hours of sun, dry soil.\"}]",
             "out = rm.score([conversation, conversation], [\"Can I grow basil from cuttings?\", \"What is basil?\"])",
             "```", "",
             "Inputs: one conversation (a list of `{role, content}` turns ending with the assistant's answer) per "
             f"suggestion (a string). Outputs, one value per suggestion as tensors: {outputs}.", "",
             f"The backbone's architecture and tokenizer come from `{backbone['name']}` "
             "(a clicks2pref registry name or a Hugging Face id), so that name must load where this folder is used.",
             "", "## Training", "",
             f"- backbone `{backbone['name']}` ({backbone.get('dtype')}), originally "
             f"{'LoRA' if meta['exported_from'].get('lora') else 'fully'} fine-tuned; head: "
             + ", ".join(f"{k} {v}" for k, v in meta["head"].items()) + f"; seed {meta.get('seed')}"]
    stats = meta.get("stats") or {}
    if stats:
        lines.append(f"- {stats.get('steps')} steps; validation: "
                     + (", ".join(f"{k} {num(v)}" for k, v in (stats.get("val") or {}).items()) or "n/a"))
    if metrics:
        lines += ["", "## Evaluation", "", "| split | pairs | accuracy | ECE | mean σ |", "|---|---|---|---|---|"]
        lines += [f"| {s} | {m.get('n_pairs')} | {num(m.get('accuracy'))} | {num(m.get('ece'))} | "
                  f"{num(m.get('sigma_mean'))} |" for s, m in metrics.items()]
    return "\n".join(lines) + "\n"


# --- command line -------------------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clicks2pref.export", description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="artifacts/sft/<key>, artifacts/grpo/<key> or artifacts/rm/<key>/<kind>")
    parser.add_argument("out", help="the folder to write (must not exist, or be empty, unless --force)")
    parser.add_argument("overrides", nargs="*", help="config overrides the artifact was trained with")
    parser.add_argument("--force", action="store_true", help="replace a non-empty OUT")
    args = parser.parse_args(argv)
    try:
        out = export(args.folder, args.out, args.overrides, args.force)
    except (Clicks2PrefError, HydraException, OmegaConfBaseException, OSError) as e:  # the user's input: one line
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    print(f"exported {args.folder} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m clicks2pref.suggest FOLDER [key=value ...] [--reward RM_FOLDER] [--samples N] [--json]`: follow-up
questions for one conversation read from stdin, to try a trained policy by hand.

FOLDER is a folder written by `clicks2pref.export` (self-contained: its template, sampling settings and merged
weights) or an sft/grpo artifact (then the overrides are the ones it was trained with, as for the export). The
conversation is JSON (a list of `{"role", "content"}` turns, or `{"context": [...]}`) or plain text whose turns
are separated by blank lines, alternating user / assistant from the user; it ends with the assistant's answer,
as in the click logs. The prompt is built with the policy's training template, the panel sampled with its
sampling settings and parsed as evaluation parses it. With `--reward`, each suggestion also shows the reward
model's GaRM μ and σ (or BTRM reward), and with `--samples N` only the panel with the best mean μ (or reward) of
N sampled is printed (best-of-N; `--json` lists them all). Without `--reward`, N panels are printed.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Sequence

from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from transformers import AutoModelForCausalLM, AutoTokenizer

from clicks2pref.config.model import GenerationConfig
from clicks2pref.config.prompt import PromptTemplate
from clicks2pref.data.parsing import parse_suggestions
from clicks2pref.data.prompts import build_messages
from clicks2pref.data.schema import _check_context  # the one rule of what a logged context is
from clicks2pref.errors import Clicks2PrefError
from clicks2pref.export import (PROMPT_FILE, check_folder, compose_for, first_line, folder_kind,
                                load_artifact_policy, one_line, read_json, template_of)
from clicks2pref.models.generate import generate
from clicks2pref.models.placement import use_accelerator
from clicks2pref.rewards.base import load_checked

ROLES = ("user", "assistant")  # plain-text turns alternate, from the user


class SuggestError(Clicks2PrefError):
    """A conversation or folder `suggest` cannot use."""


@dataclass
class Policy:
    model: object
    tokenizer: object
    template: PromptTemplate
    k: int  # suggestions per panel
    generation: GenerationConfig
    model_cache: Optional[str] = None  # where a reward model's base weights come from (None: the default cache)
    trust_remote_code: bool = False  # the user's switch for the reward model's backbone


# --- input --------------------------------------------------------------------------------------------


def read_conversation(text: str) -> list[dict]:
    """JSON turns, `{"context": turns}`, or blank-line separated plain text; checked as a logged context."""
    text = text.strip()
    if not text:
        raise SuggestError("no conversation on stdin: pipe JSON turns [{\"role\": \"user\", \"content\": ...}, ...] "
                           "or plain-text turns separated by blank lines")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, (list, dict)):
        turns = data.get("context") if isinstance(data, dict) else data
    else:  # plain text (or a bare JSON string / number, which is text too)
        blocks = [b.strip() for b in re.split(r"\n\s*\n", text) if b.strip()]
        turns = [{"role": ROLES[i % len(ROLES)], "content": b} for i, b in enumerate(blocks)]
    problems = _check_context(turns)
    if problems:
        raise SuggestError(f"conversation: {problems[0][1]}")
    return [{"role": t["role"], "content": t["content"]} for t in turns]


# --- the policy ---------------------------------------------------------------------------------------


def policy_kind(folder: Path) -> str:
    """exported | sft | grpo; checked before stdin is read, so a wrong folder fails before anyone types."""
    kind = folder_kind(folder)
    if kind == "rm":
        raise SuggestError(f"{folder} is a reward model; pass a policy folder, and the reward model with --reward")
    return kind


def load_policy(folder, overrides: Sequence[str] = ()) -> Policy:
    """An exported folder (loaded with plain transformers) or an sft/grpo artifact (with the composed config)."""
    folder = Path(folder).expanduser()
    kind = policy_kind(folder)
    check_folder(folder)
    if kind != "exported":
        cfg = compose_for(folder, overrides)
        model, tok, _, _, prompt = load_artifact_policy(folder, kind, cfg)
        return Policy(model, tok, template_of(prompt), prompt["suggestions"],
                      OmegaConf.to_object(cfg.policy.generation), cfg.paths.model_cache,
                      cfg.reward_model.backbone.trust_remote_code)
    if overrides:
        raise SuggestError(f"{folder} is an exported policy: it carries its own template and sampling settings, "
                           f"so config overrides ({' '.join(overrides)}) do not apply")
    prompt = read_json(folder / PROMPT_FILE)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        tok = AutoTokenizer.from_pretrained(folder)
    except Exception as e:  # a foreign or broken file: one line, not a traceback from deep inside torch
        raise SuggestError(f"{folder} does not load: {type(e).__name__}: {first_line(e)}") from None
    return Policy(model, tok, template_of(prompt), prompt["suggestions"], sampling(model.generation_config))


def sampling(hf_config) -> GenerationConfig:
    """The project's sampling settings from an exported generation_config.json (unset keys: the defaults)."""
    names = [f.name for f in fields(GenerationConfig)]
    given = {n: getattr(hf_config, n, None) for n in names}
    return GenerationConfig(**{n: v for n, v in given.items() if v is not None})


# --- suggestions --------------------------------------------------------------------------------------


def suggest(policy: Policy, conversation: list[dict], samples: int = 1, reward=None,
            seed: Optional[int] = None) -> dict:
    """`samples` panels for the conversation, each parsed; with a reward model every suggestion scored and the
    panel with the best mean score marked `best` (else the first)."""
    messages = build_messages(policy.template, conversation)
    texts = generate(policy.model, policy.tokenizer, [messages], policy.generation, num_return_sequences=samples,
                     seed=seed)
    panels = []
    for text in texts:
        parsed = parse_suggestions(text, policy.k)
        items = [{"text": s} for s in parsed.suggestions]
        if reward is not None and items:
            scores = reward.score([conversation] * len(items), parsed.suggestions)
            for name, values in scores.items():
                for item, v in zip(items, values.tolist()):
                    item[name] = v
        key = "mu" if reward is not None and reward.kind == "garm" else "reward"
        score = sum(i[key] for i in items) / len(items) if reward is not None and items else None
        panels.append({"text": text, "well_formed": parsed.well_formed, "suggestions": items, "score": score})
    scored = [i for i, p in enumerate(panels) if p["score"] is not None]
    best = max(scored, key=lambda i: panels[i]["score"]) if scored else 0
    return {"best": best, "suggestions": panels[best]["suggestions"], "panels": panels}


def format_panel(items: list[dict]) -> str:
    return "\n".join(f"{n}. {i['text']}{scores(i)}" for n, i in enumerate(items, 1))


def scores(item: dict) -> str:
    if "mu" in item:
        return f"\t(μ {item['mu']:+.3f}, σ {item['sigma']:.3f})"
    return f"\t(reward {item['reward']:+.3f})" if "reward" in item else ""


# --- command line -------------------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clicks2pref.suggest", description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="an exported policy, artifacts/sft/<key> or artifacts/grpo/<key>")
    parser.add_argument("overrides", nargs="*", help="for an artifact: the config overrides it was trained with")
    parser.add_argument("--reward", metavar="RM_FOLDER", help="score each suggestion: artifacts/rm/<key>/<kind> "
                                                              "or an exported reward model")
    parser.add_argument("--samples", type=int, default=1, metavar="N", help="panels to sample (best-of-N with "
                                                                            "--reward)")
    parser.add_argument("--seed", type=int, default=None, help="seed the sampling (reproducible panels)")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help="where the models run")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of numbered lines")
    args = parser.parse_args(argv)
    try:
        if args.samples < 1:
            raise SuggestError(f"--samples {args.samples}: must be at least 1")
        policy_kind(Path(args.folder).expanduser())
        if sys.stdin.isatty():
            print("reading the conversation from stdin (turns separated by blank lines; end with Ctrl-D)",
                  file=sys.stderr)
        conversation = read_conversation(sys.stdin.read())
        use_accelerator(args.device)
        policy = load_policy(args.folder, args.overrides)
        reward = load_checked(args.reward, policy.model_cache, policy.trust_remote_code) if args.reward else None
        result = suggest(policy, conversation, args.samples, reward, args.seed)
    except (Clicks2PrefError, HydraException, OmegaConfBaseException, OSError) as e:  # the user's input: one line
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        shown = [result["suggestions"]] if reward is not None else [p["suggestions"] for p in result["panels"]]
        if any(shown):
            print("\n\n".join(format_panel(items) for items in shown if items))
    if not any(p["suggestions"] for p in result["panels"]):
        print(f"no suggestion could be parsed from the policy's output: {result['panels'][0]['text'][:200]!r}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

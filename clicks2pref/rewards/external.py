"""The external reward: any Hugging Face sequence-classification reward model, or the trained BTRM.

The paper adds an off-the-shelf RM (Skywork) to the mix. `name_or_path` takes a hub id or a local
folder (`AutoModelForSequenceClassification`, logit 0 read as the reward, `trust_remote_code` off
unless set); each suggestion is scored as the assistant's reply to the logged conversation, through
the model's chat template when it has one, and the panel score is the examination-weighted mean.
Left null (the embedded default, offline) it is the BTRM trained by stage=rm.

Its `_target_` config, `ExternalRewardConfig`, lives in `clicks2pref.config.rewards` (re-exported here).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from clicks2pref.config.rewards import ExternalRewardConfig  # noqa: F401 (re-exported)
from clicks2pref.errors import ModelNotFoundError
from clicks2pref.models.registry import resolve
from clicks2pref.models.reward_heads import scalar_rewards
from clicks2pref.rewards.base import RewardBatch, map_panels, panel_scores, resolve_examination
from clicks2pref.rewards.redundancy import redundancy_discounts, resolve_redundancy
from clicks2pref.models.shared_prefix import rm_outputs


class HFSequenceRewardModel:
    """A sequence-classification RM from the hub or a folder, scoring (conversation, reply) texts."""

    def __init__(self, name_or_path: str, cache_dir: Optional[str], max_length: int = 256,
                 trust_remote_code: bool = False):
        source = resolve(name_or_path, cache_dir or ".")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                source, trust_remote_code=trust_remote_code).eval()
        except OSError as e:
            raise ModelNotFoundError(f"rewards.external.name_or_path: cannot load '{name_or_path}': "
                                     f"{str(e).splitlines()[0]} (offline machines need a local folder)") from None
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.truncation_side = "left"  # keep the reply, cut the start of the conversation
        self.max_length = max_length

    def text(self, context: list[dict], suggestion: str) -> str:
        messages = [{"role": t["role"], "content": t["content"]} for t in context]
        messages.append({"role": "assistant", "content": suggestion})
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages)

    @torch.no_grad()
    def rewards(self, contexts, suggestions, kappa: float = 0.0, batch_size: int = 16, attraction: bool = False
                ) -> Tensor:
        texts = [self.text(c, s) for c, s in zip(contexts, suggestions)]
        out = []
        for start in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt", add_special_tokens=False)
            out.append(self.model(**enc).logits[:, 0].float())
        scores = torch.cat(out) if out else torch.zeros(0)
        return torch.sigmoid(scores) if attraction else scores


class ExternalReward:
    def __init__(self, name_or_path: Optional[str] = None, examination=None, missing_score: float = -1.0,
                 batch_size: int = 16, max_length: int = 256, trust_remote_code: bool = False, panel: str = "click",
                 redundancy: bool = True):
        self.name_or_path, self.missing_score, self.panel = name_or_path, float(missing_score), panel
        self.use_redundancy, self.redundancy, self.similarity = bool(redundancy), None, None
        self.configured_examination = None if examination is None else list(examination)
        self.examination: Optional[list[float]] = self.configured_examination
        self.batch_size, self.max_length, self.trust_remote_code = batch_size, max_length, trust_remote_code
        self.model = self.scorer = self.link = None  # link: cached outputs -> per-suggestion score

    def setup(self, resources) -> None:
        attraction = self.panel == "click"
        if self.name_or_path is None:  # the trained BTRM: share the btrm component's model and cache
            self.model = resources.reward_model("btrm")
            self.scorer = resources.scorer(("btrm", None), lambda c, s: rm_outputs(self.model, c, s, self.batch_size))
            self.link = lambda out: scalar_rewards(out, "btrm", 0.0, attraction)
        else:
            self.model = HFSequenceRewardModel(self.name_or_path, resources.cache_dir, self.max_length,
                                               self.trust_remote_code)
            self.scorer = resources.scorer(("external", self.name_or_path, self.panel),
                                           lambda c, s: {"score": self.model.rewards(c, s, 0.0, self.batch_size,
                                                                                     attraction=attraction)})
            self.link = lambda out: out["score"]
        self.examination = resolve_examination(self.configured_examination, self.model, "external")
        self.redundancy, self.similarity = resolve_redundancy(self.use_redundancy and attraction, self.model, resources)

    def __call__(self, batch: RewardBatch) -> Tensor:
        if self.scorer is None:
            raise RuntimeError("ExternalReward.setup(resources) was not called")
        return panel_scores(map_panels(self.scorer(batch), self.link), self.examination, self.missing_score,
                            self.panel, redundancy_discounts(batch.panels, self.redundancy, self.similarity))

"""`prompt`: the templates that turn a conversation into the policy's chat input (`clicks2pref.data.prompts`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class PromptTemplate:
    instruction: str = "Suggest three follow-up questions. Answer with three lines numbered 1., 2. and 3."
    system: Optional[str] = None

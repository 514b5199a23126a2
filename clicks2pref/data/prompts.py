"""Prompt templates: how a conversation becomes the policy's chat input."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class PromptTemplate:
    instruction: str = "Suggest three follow-up questions. Answer with three lines numbered 1., 2. and 3."
    system: Optional[str] = None


def build_messages(template: PromptTemplate, context: list[dict]) -> list[dict]:
    """System turn (if any), the logged conversation, then the instruction as the last user turn."""
    messages = [{"role": "system", "content": template.system}] if template.system else []
    messages += [{"role": t["role"], "content": t["content"]} for t in context]
    messages.append({"role": "user", "content": template.instruction})
    return messages

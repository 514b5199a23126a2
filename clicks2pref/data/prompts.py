"""Prompt templates: how a conversation becomes the policy's chat input. The template (`PromptTemplate`) is the
`prompt` group's schema in `clicks2pref.config.prompt`."""
from __future__ import annotations

from clicks2pref.config.prompt import PromptTemplate  # noqa: F401 (re-exported: eval.policy, experiments/)


def build_messages(template: PromptTemplate, context: list[dict]) -> list[dict]:
    """System turn (if any), the logged conversation, then the instruction as the last user turn."""
    messages = [{"role": "system", "content": template.system}] if template.system else []
    messages += [{"role": t["role"], "content": t["content"]} for t in context]
    messages.append({"role": "user", "content": template.instruction})
    return messages

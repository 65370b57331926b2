"""View-dependent prompts: the paper prefixes the text prompt with the side it is seen from."""

from __future__ import annotations

from .cameras import View, view_bucket

PREFIXES = {
    "front": "front view of",
    "side": "side view of",
    "back": "backside view of",
    "overhead": "overhead view of",
}


def view_prompt(prompt: str, view: View) -> str:
    """`prompt` with the prefix of the view bucket of `view`, e.g. "front view of a red cube"."""
    return f"{PREFIXES[view_bucket(view)]} {prompt}"


def strip_view_prefix(prompt: str) -> str:
    """The inverse of `view_prompt`: "front view of a red cube" -> "a red cube" (other text unchanged)."""
    for prefix in PREFIXES.values():
        if prompt.startswith(prefix + " "):
            return prompt[len(prefix) + 1 :]
    return prompt

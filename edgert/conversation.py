"""A multi-turn conversation that keeps itself inside the context window."""

from __future__ import annotations

from typing import Any


class Conversation:
    """Messages for `Model.stream`; the oldest turns are dropped when the prompt plus
    `reserve` tokens for the reply would not fit the context (the system message stays)."""

    def __init__(self, model, system: str | None = None, reserve: int = 512):
        self.model, self.system, self.reserve = model, system, reserve
        self.turns: list[dict[str, Any]] = []

    @property
    def messages(self) -> list[dict[str, Any]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def reset(self) -> None:
        self.turns = []
        self.model.reset()

    def add_assistant(self, text: str) -> None:
        self.turns.append({"role": "assistant", "content": text})

    def add_user(self, text: str) -> int:
        """Append a user turn; returns how many old messages were dropped to make it fit."""
        self.turns.append({"role": "user", "content": text})
        budget = self.model.n_ctx - self.reserve
        dropped = 0
        while len(self.turns) > 1 and len(self.model.encode_prompt(self.messages)) > budget:
            self.turns.pop(0)
            dropped += 1
        while len(self.model.encode_prompt(self.messages)) > budget:
            # a single message longer than the window: keep its end
            last = self.turns[-1]["content"]
            last_ids = self.model.tokenize(last, add_special=False)
            over = len(self.model.encode_prompt(self.messages)) - budget
            if over >= len(last_ids):
                raise_too_long(self.model.n_ctx)
            self.turns[-1]["content"] = self.model.detokenize(last_ids[over:])
        return dropped


def raise_too_long(n_ctx: int) -> None:
    from .errors import EdgertError

    raise EdgertError(f"the system prompt alone fills the {n_ctx}-token context; raise --ctx or shorten it.")

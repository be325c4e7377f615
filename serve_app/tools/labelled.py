"""Labelled request files for the offline tools (eval, calibrate), read by the serving rules.

One JSON object per line: ``{"text": ...}`` or ``{"messages": [...]}``, plus ``"label"`` (a route
name) and optionally ``"id"``. Messages go through ``parse_request``, so a conversation is read
exactly as the ingress reads it (its user turns only, the last ``context_turns`` of them).

``part`` splits a file deterministically by a hash of each item's id (its text when it has none):
tune on one part, report on the other.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from serve_app.api.errors import OpenAIError
from serve_app.api.requests import parse_request

Part = Literal["all", "tune", "holdout"]
PARTS: tuple[Part, ...] = ("all", "tune", "holdout")


class LabelledDataError(ValueError):
    pass


@dataclass(frozen=True)
class LabelledItem:
    key: str  # the id, or the text when there is none: what the split hashes
    texts: tuple[str, ...]  # the user's turns, oldest first, as the ingress reads them
    label: str
    system: str = ""  # the system prompt, as the ingress reads it


def part_of(key: str) -> Part:
    """'tune' or 'holdout', about half each, fixed by the key alone."""
    return "holdout" if hashlib.sha256(key.encode()).digest()[0] % 2 else "tune"


def load_labelled(path: str | Path, context_turns: int = 3, part: Part = "all") -> list[LabelledItem]:
    items = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if line.strip():
            item = _parse_line(line, context_turns, f"{path}:{n}")
            if part == "all" or part_of(item.key) == part:
                items.append(item)
    if not items:
        raise LabelledDataError(f"{path}: no labelled items" + ("" if part == "all" else f" in part {part!r}"))
    return items


def _parse_line(line: str, context_turns: int, where: str) -> LabelledItem:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise LabelledDataError(f"{where}: not JSON: {exc}") from None
    if not isinstance(row, dict) or not isinstance(row.get("label"), str):
        raise LabelledDataError(f"{where}: each line needs a string 'label'")
    system = ""
    if "messages" in row:
        try:
            parsed = parse_request("chat", {"messages": row["messages"]}, context_turns)
        except OpenAIError as exc:
            raise LabelledDataError(f"{where}: {exc.message}") from None
        texts, system = parsed.turns, parsed.system
        key = json.dumps(row["messages"], sort_keys=True)
    elif isinstance(row.get("text"), str):
        texts = (row["text"].strip(),) if row["text"].strip() else ()
        key = row["text"]
    else:
        raise LabelledDataError(f"{where}: each line needs 'text' (a string) or 'messages'")
    return LabelledItem(str(row.get("id", key)), texts, row["label"], system)

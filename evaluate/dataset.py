"""Suite datasets → samples: prompt messages, references, gold label; plus counterfactual variants."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lorafleet.evaluate.suite import Counterfactual, Suite
from pydantic import BaseModel, ConfigDict, Field

from lorafleet.errors import ConfigError, FormatError
from lorafleet.formats import Message, metadata, prompt_and_answer, read_records
from lorafleet.registry import Registry


class Sample(BaseModel):
    """One prompt to send to every target and what a good answer looks like."""

    model_config = ConfigDict(extra="forbid")

    id: str
    messages: list[Message]
    references: list[str] = Field(default_factory=list)
    label: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def reference(self) -> str:
        return self.references[0] if self.references else ""

    def prompt_text(self) -> str:
        return "\n".join(f"{m.role}: {m.content}" for m in self.messages)

    @property
    def counterfactual_of(self) -> str | None:
        """The original's id when this sample is an attribute-swapped variant, else None."""
        source = self.metadata.get("counterfactual_of")
        return None if source is None else str(source)


def originals(samples: list[Sample]) -> list[Sample]:
    """The samples as written: what main metrics, CIs and gates are computed on (variants are scored apart)."""
    return [s for s in samples if s.counterfactual_of is None]


def variants(samples: list[Sample]) -> list[Sample]:
    """The counterfactual variants, each naming its original in `counterfactual_of`."""
    return [s for s in samples if s.counterfactual_of is not None]


def dataset_path(suite: Suite, suite_path: Path, registry: Registry | None) -> Path:
    """A relative `path` is relative to the suite file; `adapter` reads the split from its card."""
    spec = suite.dataset
    if spec.path is not None:
        path = Path(spec.path)
        return path if path.is_absolute() else (Path(suite_path).parent / path)
    if registry is None:
        raise ConfigError("dataset.adapter needs the registry", hint="pass --data-dir")
    resolved = registry.resolve(spec.adapter or "")
    for entry in resolved.card.dataset:
        if entry.split == spec.split:
            return Path(entry.path)
    raise ConfigError(f"adapter {resolved.served_name} records no {spec.split!r} dataset",
                      hint="set dataset.path instead")


def load_samples(suite: Suite, path: Path) -> list[Sample]:
    """Read every record (FormatError names the line), apply the system prompt, expand counterfactuals."""
    samples: list[Sample] = []
    seen: set[str] = set()
    for item in read_records(path, fmt=suite.dataset.format):
        messages, answer = prompt_and_answer(item.record)
        extra = metadata(item.record)
        if not any(m.role == "user" for m in messages):
            raise FormatError("no user message to send", path=str(path), line=item.line, field="messages")
        if suite.system_prompt and not any(m.role == "system" for m in messages):
            messages = [Message(role="system", content=suite.system_prompt), *messages]
        refs = extra.pop("references", None)
        references = [str(r) for r in refs] if isinstance(refs, list) and refs else ([answer] if answer else [])
        sid = str(extra.pop("id", f"line{item.line}"))
        if sid in seen:
            raise FormatError(f"duplicate id {sid!r}", path=str(path), line=item.line, field="id")
        seen.add(sid)
        label = extra.pop(suite.extraction.label_field, None)
        samples.append(Sample(id=sid, messages=messages, references=references,
                              label=None if label is None else str(label), metadata=extra))
        if suite.dataset.limit and len(samples) >= suite.dataset.limit:
            break
    if not samples:
        raise ConfigError(f"{path}: no records", hint="the dataset file is empty")
    if suite.counterfactual:
        if suite.counterfactual.prefix:
            samples = [with_prefix(s, suite.counterfactual.prefix) for s in samples]
        samples = samples + counterfactual_variants(samples, suite.counterfactual)
    return samples


def with_prefix(sample: Sample, prefix: str) -> Sample:
    """The sample with `prefix` put before its last user message."""
    last = max(i for i, m in enumerate(sample.messages) if m.role == "user")
    messages = list(sample.messages)
    messages[last] = Message(role="user", content=prefix + messages[last].content)
    return sample.model_copy(update={"messages": messages})


def _swapper(swaps: list[list[str]]) -> tuple[re.Pattern[str], dict[str, str]]:
    table: dict[str, str] = {}
    for a, b in swaps:
        table[a.lower()], table[b.lower()] = b, a
    words = sorted(table, key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE), table


def swap_text(text: str, pattern: re.Pattern[str], table: dict[str, str]) -> str:
    """Swap every listed word both ways at once, keeping a leading capital."""
    def repl(m: re.Match[str]) -> str:
        out = table[m.group(0).lower()]
        return out[:1].upper() + out[1:] if m.group(0)[:1].isupper() else out
    return pattern.sub(repl, text)


def counterfactual_variants(samples: list[Sample], spec: Counterfactual) -> list[Sample]:
    """For each sample whose prompt mentions a swappable word, the same sample with words swapped."""
    pattern, table = _swapper(spec.swaps)
    variants = []
    for s in samples:
        if not any(pattern.search(m.content) for m in s.messages):
            continue
        variants.append(Sample(
            id=f"{s.id}~cf", messages=[Message(role=m.role, content=swap_text(m.content, pattern, table))
                                       for m in s.messages],
            references=[swap_text(r, pattern, table) for r in s.references], label=s.label,
            metadata={**s.metadata, "counterfactual_of": s.id}))
    return variants

"""Live quality and drift per adapter version, from the traffic the gateway proxies (no extra model calls).

For every adapter request that succeeded, the proxy hands (adapter, version, prompt, output text, completion
tokens) to `DriftMonitor.observe`, which only appends to a bounded queue: the request path pays one deque
append. A background task drains the queue in a worker thread and keeps, per version, a window of the last
`window` requests:

- input far share: the share of prompts with no training prompt near them by MinHash (estimated word-set
  Jaccard at or above `far_threshold`) among the version's training prompts (card.dataset entries with
  split "train", loaded once per version, at most `max_train` prompts, least recently used profiles
  dropped beyond `max_profiles`): every signature is compared up to BRUTE_MAX prompts, beyond that a
  MinHashLSH finds the candidates first, so the cost per request stays bounded;
- input length distance: the two-sample KS statistic of prompt lengths (characters of the user turns) in
  the window against the training prompts' lengths;
- output length ratio: mean completion tokens in the window over the mean at the version's latest eval run
  (card.eval_runs[].output_tokens_mean, recorded by `eval run`);
- output invalid rate: for label tasks (the eval run recorded a `label_pattern`/`labels`), the share of
  outputs that name no declared label, beside the eval run's own `invalid_rate`.

Word sets (1-shingles), not the held-out guard's 3-shingles: a new in-distribution prompt rarely repeats
three words in a row of any training prompt, but it shares most of its vocabulary with the nearest one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH
from lorafleet.serve.metrics import Metrics

from lorafleet.card import AdapterCard, latest_run
from lorafleet.errors import LorafleetError
from lorafleet.formats import read_records_lenient, to_chat
from lorafleet.heldout import heldout_text
from lorafleet.periodic import Periodic
from lorafleet.registry import Registry
from lorafleet.textsig import NUM_PERM, SEED, shingles

if TYPE_CHECKING:
    from lorafleet.serve.config import DriftSettings

log = logging.getLogger(__name__)

DRAIN_INTERVAL = 0.25  # seconds between drains of the observation queue
BATCH = 512  # observations per worker-thread batch (the loop is never blocked for long)
CARD_REFRESH = 60.0  # seconds before a version's eval baseline is read from its card again
BRUTE_MAX = 1000  # up to this many training prompts, comparing every signature beats the LSH's per-band loop
LSH_SLACK = 0.8  # LSH threshold = far_threshold * this; each candidate's estimated Jaccard is then checked
TEXT_CAP = 2048  # characters of a prompt or output that drift reads (a label sits at the start)


@dataclass(frozen=True)
class LabelFormat:
    """How the eval run read a label out of an output (its suite's extraction)."""

    pattern: str | None
    labels: tuple[str, ...]
    case_sensitive: bool = False

    def invalid(self, text: str) -> bool:
        """True when the output names none of the labels (evaluate.scoring.extract_label's INVALID)."""
        flags = 0 if self.case_sensitive else re.IGNORECASE
        if self.pattern:
            m = re.search(self.pattern, text, flags)
            if not m:
                return True
            found = (m.group(1) if m.groups() else m.group(0)).strip()
        else:
            stripped = text.strip()
            found = stripped.splitlines()[0].strip() if stripped else ""
        found = found.rstrip(".").strip()
        if self.case_sensitive:
            return found not in self.labels
        return found.lower() not in self._lowered

    @cached_property
    def _lowered(self) -> frozenset[str]:
        # Built once per format, not once per checked answer (the proxy asks on every canary/drift request).
        return frozenset(label.lower() for label in self.labels)


@dataclass(frozen=True)
class EvalBaseline:
    """What the version's latest eval run measured (card.eval_runs)."""

    run_id: str
    output_tokens_mean: float | None = None
    invalid_rate: float | None = None
    label_format: LabelFormat | None = None


@dataclass
class Profile:
    """One version's references: its training prompts (an LSH and sorted lengths) and its eval baseline."""

    lsh: MinHashLSH | None  # only for more than BRUTE_MAX training prompts
    signatures: np.ndarray  # the training prompts' MinHash values, one row each (to verify LSH candidates)
    train_lengths: np.ndarray
    train_records: int
    baseline: EvalBaseline | None
    problem: str | None = None  # why the input side is missing (no train file on the card, unreadable)
    read_at: float = field(default_factory=time.monotonic)


@dataclass
class Window:
    """The last N requests of one version."""

    size: int
    far: collections.deque[bool] = field(init=False)
    prompt_lengths: collections.deque[int] = field(init=False)
    output_tokens: collections.deque[int] = field(init=False)
    invalid: collections.deque[bool] = field(init=False)
    requests: collections.deque[int] = field(init=False)

    def __post_init__(self) -> None:
        for name in ("far", "prompt_lengths", "output_tokens", "invalid", "requests"):
            setattr(self, name, collections.deque(maxlen=self.size))


@dataclass(frozen=True)
class Observation:
    adapter: str
    version: str
    prompt: Any  # chat messages or a completions prompt, exactly as the client sent it
    output: str | None  # None when the proxy did not collect the text (not a label task)
    completion_tokens: int | None


@dataclass(frozen=True)
class DriftView:
    """The gauges of one version (None: not measurable yet, e.g. no training file or eval baseline)."""

    requests: int
    input_far_share: float | None
    input_length_distance: float | None
    output_length_ratio: float | None
    output_invalid_rate: float | None
    eval_invalid_rate: float | None


_TEMPLATE = MinHash(num_perm=NUM_PERM, seed=SEED)  # permutations drawn once: MinHash() redraws them each time


def word_minhash(text: str) -> MinHash:
    """MinHash of the text's word set (normalised as the held-out guard normalises)."""
    m = _TEMPLATE.copy()
    m.update_batch(list(shingles(text, n=1)))
    return m


def prompt_text(prompt: Any) -> str:
    """The compared text of a request: user turns joined by newlines (as for training records), or the prompt."""
    if isinstance(prompt, list):
        if prompt and isinstance(prompt[0], dict):
            return "\n".join(_content(m.get("content")) for m in prompt
                             if isinstance(m, dict) and m.get("role") == "user")
        return "\n".join(p for p in prompt if isinstance(p, str))  # completions: a list of prompts
    return prompt if isinstance(prompt, str) else ""


def _content(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def ks_statistic(sample: np.ndarray, reference: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov D (max gap between the empirical CDFs); both arrays sorted."""
    if not len(sample) or not len(reference):
        return 0.0
    points = np.concatenate([sample, reference])
    cdf_s = np.searchsorted(sample, points, side="right") / len(sample)
    cdf_r = np.searchsorted(reference, points, side="right") / len(reference)
    return float(np.max(np.abs(cdf_s - cdf_r)))


def eval_baseline(card: AdapterCard) -> EvalBaseline | None:
    """The latest eval run on the card (by created_at) that recorded output lengths or a label format."""
    runs = [r for r in card.eval_runs if isinstance(r, dict) and
            ("output_tokens_mean" in r or "label_pattern" in r or "labels" in r)]
    if not runs:
        return None
    run = latest_run(runs)
    labels = tuple(str(label) for label in run.get("labels") or [])
    fmt = LabelFormat(run.get("label_pattern"), labels, bool(run.get("label_case_sensitive"))) if labels else None
    return EvalBaseline(run_id=str(run.get("run_id")), output_tokens_mean=_num(run.get("output_tokens_mean")),
                        invalid_rate=_num(run.get("invalid_rate")), label_format=fmt)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def training_prompts(card: AdapterCard, max_records: int) -> tuple[list[str], str | None]:
    """The user text of the card's train-split records (evenly thinned to `max_records`), or why there is none."""
    files = [d for d in card.dataset if d.split == "train"]
    if not files:
        return [], "the card names no train-split dataset file"
    texts: list[str] = []
    missing = []
    for entry in files:
        path = Path(entry.path)
        if not path.is_file():
            missing.append(entry.path)
            continue
        rows, _bad = read_records_lenient(path)
        texts += [heldout_text(to_chat(r.record).messages) for r in rows]
    if not texts:
        return [], f"train file(s) not readable here: {', '.join(missing)}"
    if len(texts) > max_records:  # even thinning keeps the length distribution's shape
        step = len(texts) / max_records
        texts = [texts[int(i * step)] for i in range(max_records)]
    return texts, None


def build_profile(card: AdapterCard, *, far_threshold: float, max_records: int) -> Profile:
    """Read one version's training prompts into an LSH plus sorted lengths, and its eval baseline."""
    texts, problem = training_prompts(card, max_records)
    lsh = None
    hashes = [word_minhash(t) for t in texts]
    if len(texts) > BRUTE_MAX:
        # a lower LSH threshold misses fewer near prompts; candidates are then checked against far_threshold
        lsh = MinHashLSH(threshold=far_threshold * LSH_SLACK, num_perm=NUM_PERM)
        with lsh.insertion_session() as session:
            for i, m in enumerate(hashes):
                session.insert(i, LeanMinHash(m))
    signatures = np.stack([m.hashvalues for m in hashes]) if hashes else np.zeros((0, NUM_PERM), dtype=np.uint64)
    lengths = np.sort(np.array([len(t) for t in texts], dtype=np.float64))
    return Profile(lsh=lsh, signatures=signatures, train_lengths=lengths, train_records=len(texts),
                   baseline=eval_baseline(card), problem=problem)


class DriftMonitor:
    """Windows of live drift per adapter version, updated off the request path, exported as gauges."""

    def __init__(self, registry: Registry, metrics: Metrics, *, window: int = 200, far_threshold: float = 0.3,
                 max_train: int = 5000, max_profiles: int = 32, queue_size: int = 4096) -> None:
        self.registry = registry
        self.metrics = metrics
        self.window = window
        self.far_threshold = far_threshold
        self.max_train = max_train
        self.max_profiles = max_profiles
        self.queue_size = queue_size
        self._pending: collections.deque[Observation] = collections.deque()
        self._profiles: collections.OrderedDict[tuple[str, str], Profile] = collections.OrderedDict()
        self._windows: dict[tuple[str, str], Window] = {}
        self._warned: set[tuple[str, str, str]] = set()
        self._rounds: Periodic | None = None
        self._seq = 0
        self.processed = 0  # observations taken off the queue and reflected in the gauges (tests wait on it)

    # ---- the request path: O(1) ------------------------------------------------------------
    @classmethod
    def from_settings(cls, registry: Registry, metrics: Metrics, drift: DriftSettings) -> DriftMonitor | None:
        """The gateway's drift monitor from its drift group; None when drift is off."""
        if not drift.enabled:
            return None
        return cls(registry, metrics, window=drift.window, far_threshold=drift.far_threshold,
                   max_train=drift.train_max)

    def wants_text(self, adapter: str, version: str) -> bool:
        """Should the proxy collect this version's output text? Only label tasks need it (or: not known yet)."""
        profile = self._profiles.get((adapter, version))
        return profile is None or (profile.baseline is not None and profile.baseline.label_format is not None)

    def observe(self, adapter: str, version: str, prompt: Any, output: str | None,
                completion_tokens: int | None) -> None:
        """Queue one finished request; a full queue drops it (counted), it never blocks or grows."""
        if len(self._pending) >= self.queue_size:
            self.metrics.drift_dropped.inc()
            return
        self._pending.append(Observation(adapter, version, prompt, output, completion_tokens))

    # ---- the worker ------------------------------------------------------------------------
    def start(self) -> None:
        self._rounds = Periodic(self._drain, DRAIN_INTERVAL, what="drift: processing observations", logger=log)
        self._rounds.start()

    async def stop(self) -> None:
        if self._rounds is not None:
            await self._rounds.stop()

    async def _drain(self) -> None:
        if self._pending:  # drift is advice: a failed batch is logged by the rounds, which go on
            await asyncio.to_thread(self.process_pending, BATCH)

    def process_pending(self, limit: int | None = None) -> int:
        """Process queued observations (at most `limit`) and refresh the gauges they touched; returns how many."""
        batch: list[Observation] = []
        while self._pending and (limit is None or len(batch) < limit):
            batch.append(self._pending.popleft())
        touched: set[tuple[str, str]] = set()
        for obs in batch:
            key = (obs.adapter, obs.version)
            profile = self._profile(key)
            if profile is None:
                continue
            self._add(key, profile, obs)
            touched.add(key)
        for key in touched:
            self._export(key, self._profiles.get(key))
        self.processed += len(batch)
        return len(batch)

    def _profile(self, key: tuple[str, str]) -> Profile | None:
        profile = self._profiles.get(key)
        if profile is not None and time.monotonic() - profile.read_at > CARD_REFRESH:
            profile = self._refresh_baseline(key, profile)
        if profile is None:
            try:
                card = self.registry.card(*key)
            except (LorafleetError, OSError) as exc:
                self._warn_once(key, "card", f"drift: no card for {key[0]}@{key[1]}: {exc}")
                return None
            profile = build_profile(card, far_threshold=self.far_threshold, max_records=self.max_train)
            if profile.problem:
                self._warn_once(key, "train", f"drift: {key[0]}@{key[1]}: no input drift ({profile.problem})")
            self._profiles[key] = profile
            while len(self._profiles) > self.max_profiles:
                self._profiles.popitem(last=False)
        self._profiles.move_to_end(key)
        return profile

    def _refresh_baseline(self, key: tuple[str, str], profile: Profile) -> Profile:
        """A later eval run may have landed on the card: re-read the baseline (the training data is immutable)."""
        with contextlib.suppress(LorafleetError, OSError):
            profile.baseline = eval_baseline(self.registry.card(*key))
        profile.read_at = time.monotonic()
        return profile

    def _add(self, key: tuple[str, str], profile: Profile, obs: Observation) -> None:
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = Window(self.window)
        self._seq += 1
        window.requests.append(self._seq)
        text = prompt_text(obs.prompt)[:TEXT_CAP]
        if len(profile.signatures):
            window.far.append(self._far(profile, word_minhash(text)))
            window.prompt_lengths.append(len(text))
        baseline = profile.baseline
        if obs.completion_tokens is not None:
            window.output_tokens.append(obs.completion_tokens)
        if baseline is not None and baseline.label_format is not None and obs.output is not None:
            window.invalid.append(baseline.label_format.invalid(obs.output[:TEXT_CAP]))

    def _far(self, profile: Profile, m: MinHash) -> bool:
        """No training prompt's estimated Jaccard reaches far_threshold (LSH candidates, then their signatures)."""
        rows = profile.signatures
        if profile.lsh is not None:
            candidates = profile.lsh.query(m)
            if not candidates:
                return True
            rows = rows[np.fromiter(candidates, dtype=np.int64, count=len(candidates))]
        return float(np.max(np.mean(rows == m.hashvalues, axis=1))) < self.far_threshold

    def view(self, adapter: str, version: str) -> DriftView:
        """The current gauges of one version (as exported)."""
        key = (adapter, version)
        window = self._windows.get(key) or Window(self.window)
        profile = self._profiles.get(key)
        baseline = profile.baseline if profile is not None else None
        far = float(np.mean(window.far)) if window.far else None
        distance = None
        if profile is not None and window.prompt_lengths and len(profile.train_lengths):
            live = np.sort(np.fromiter(window.prompt_lengths, dtype=np.float64))
            distance = ks_statistic(live, profile.train_lengths)
        ratio = None
        if baseline is not None and baseline.output_tokens_mean and window.output_tokens:
            ratio = float(np.mean(window.output_tokens)) / baseline.output_tokens_mean
        invalid = float(np.mean(window.invalid)) if window.invalid else None
        return DriftView(requests=len(window.requests), input_far_share=far, input_length_distance=distance,
                         output_length_ratio=ratio, output_invalid_rate=invalid,
                         eval_invalid_rate=baseline.invalid_rate if baseline is not None else None)

    def _export(self, key: tuple[str, str], profile: Profile | None) -> None:
        v = self.view(*key)
        m = self.metrics
        m.drift_window_requests.labels(*key).set(v.requests)
        for gauge, value in ((m.drift_input_far_share, v.input_far_share),
                             (m.drift_input_length_distance, v.input_length_distance),
                             (m.drift_output_length_ratio, v.output_length_ratio),
                             (m.output_invalid_rate, v.output_invalid_rate),
                             (m.eval_invalid_rate, v.eval_invalid_rate)):
            if value is not None:  # an unmeasurable gauge stays absent: no series beats a made-up 0
                gauge.labels(*key).set(value)

    def _warn_once(self, key: tuple[str, str], what: str, message: str) -> None:
        if (*key, what) not in self._warned:
            self._warned.add((*key, what))
            log.warning(message)

    def keys(self) -> Iterable[tuple[str, str]]:
        return list(self._windows)

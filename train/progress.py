"""Trainer callbacks: a rich progress bar with loss and tokens/s, and per-step MLflow metrics."""

from __future__ import annotations

import time
from typing import Any

from lorafleet.train.tracking import Tracker
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import TrainerCallback


class ProgressAndTracking(TrainerCallback):
    """Shows progress and records the loss curve (kept for the card's summary)."""

    def __init__(self, tracker: Tracker, console: Console | None = None, show: bool = True) -> None:
        self.tracker = tracker
        self.show = show
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task: Any = None
        self.train_curve: list[tuple[int, float]] = []
        self.val_curve: list[tuple[int, float]] = []
        self.tokens = 0.0
        self.tokens_per_s = 0.0
        self._start = 0.0
        self._start_step = 0

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - HF callback signature
        self._start, self._start_step = time.perf_counter(), state.global_step
        if self.show:
            self.progress = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                     console=self.console, transient=False)
            self.progress.start()
            self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, info="")

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        logs = logs or {}
        step = state.global_step
        if "loss" in logs:
            self.train_curve.append((step, float(logs["loss"])))
        if "eval_loss" in logs:
            self.val_curve.append((step, float(logs["eval_loss"])))
        if "num_tokens" in logs:
            self.tokens = float(logs["num_tokens"])
            elapsed = max(time.perf_counter() - self._start, 1e-9)
            self.tokens_per_s = self.tokens / elapsed
        for key, value in logs.items():
            if isinstance(value, int | float) and key in {"loss", "eval_loss", "learning_rate", "grad_norm",
                                                          "num_tokens", "mean_token_accuracy",
                                                          "eval_mean_token_accuracy"}:
                self.tracker.metric(key, value, step)
        self._refresh(step)

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        self._refresh(state.global_step)

    def _refresh(self, step: int) -> None:
        if self.progress is None:
            return
        parts = []
        if self.train_curve:
            parts.append(f"loss {self.train_curve[-1][1]:.3f}")
        if self.val_curve:
            parts.append(f"val {self.val_curve[-1][1]:.3f}")
        if self.tokens_per_s:
            parts.append(f"{self.tokens_per_s:.0f} tok/s")
        self.progress.update(self.task, completed=step, info="  ".join(parts))

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

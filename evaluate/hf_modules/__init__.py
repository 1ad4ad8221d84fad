"""lorafleet's metrics as local Hugging Face `evaluate` modules, loadable offline:

    import evaluate
    from lorafleet.evaluate import hf_modules
    rouge = evaluate.load(hf_modules.path("rouge"))
    rouge.compute(predictions=[...], references=[...])  # the numbers of `lorafleet eval score --metrics rouge`

Each folder holds one `evaluate.Metric` script that calls `compute` below, which scores through the same
code as `eval score`. Nothing here imports `evaluate` itself (it loads torch): only the scripts do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorafleet.evaluate.metrics import FAMILY_OF
from lorafleet.evaluate.score_file import Prediction, score_predictions

# Module folder → what it computes. One module per metric family, named as `--metrics` names it.
MODULES: dict[str, str] = {
    "rouge": "ROUGE-1/2/L/Lsum F-measure through rouge-score, Porter stems, max over references",
    "bleu": "corpus BLEU through sacrebleu (13a tokens), from summed n-gram statistics",
    "chrf": "corpus chrF through sacrebleu; word_order=2 gives chrF++",
    "token_f1": "SQuAD token F1 (SQuAD v2.0 normalisation), max over references",
    "exact_match": "SQuAD exact match (SQuAD v2.0 normalisation), max over references",
    "classification": "accuracy, macro and micro label F1 over the declared labels; unparseable → INVALID",
    "meteor": "METEOR through nltk: exact, stem and WordNet 3.0 synonym stages, max over references",
}
ROOT = Path(__file__).resolve().parent
# Arguments of compute() that are not metric options.
_RUN_KEYS = ("ci", "resamples", "seed", "confidence", "provenance", "labels", "label_pattern")
# Hugging Face's own `rouge` argument names, so code written for evaluate.load("rouge") keeps working.
_ROUGE_ALIASES = {"rouge_types": "types", "use_stemmer": "stemmer"}


def path(name: str) -> str:
    """Folder of the module for a metric name or family (rougeL → the rouge module), for `evaluate.load`."""
    module = name if name in MODULES else FAMILY_OF.get(name)
    if module not in MODULES:
        raise ValueError(f"no lorafleet evaluate module for {name!r}; known: {', '.join(sorted(MODULES))} "
                         f"(and their metric names: {', '.join(n for n in sorted(FAMILY_OF) if n != 'perplexity')})")
    return str(ROOT / module)


def info(module: str) -> Any:
    """The `evaluate.MetricInfo` of a module: its inputs (one reference or several) and what it computes."""
    import datasets

    import evaluate

    label = module == "classification"
    text = datasets.Value("string")
    features = [datasets.Features({"predictions": text, "references": datasets.Sequence(text)}),
                datasets.Features({"predictions": text, "references": text})]
    if label:  # class ids, as Hugging Face's own accuracy and f1 take them
        features.append(datasets.Features({"predictions": datasets.Value("int64"),
                                           "references": datasets.Value("int64")}))
    return evaluate.MetricInfo(
        description=f"lorafleet {module}: {MODULES[module]}. The same numbers as `lorafleet eval score`.",
        citation="", features=features, homepage="", module_type="metric",
        inputs_description=(
            "predictions: list of str; references: list of str, or of lists of str for several references"
            + (" (the first holds the gold label); or int class ids on both sides" if label else "")
            + ". Options: those of the metric in a suite (e.g. stemmer, tokenizer, word_order, synonyms), "
            "plus ci=True for bootstrap intervals "
            "(resamples, seed, confidence), provenance=True for each metric's config"
            + ("; labels, label_pattern as in `eval score`" if label else "") + "."))


def compute(module: str, predictions: list[Any], references: list[Any], **kwargs: Any) -> dict[str, Any]:
    """Score as `eval score` does: {metric: value}, plus `<metric>_ci` and `config` when asked for."""
    if module not in MODULES:
        raise ValueError(f"unknown lorafleet evaluate module {module!r}")
    run = {k: kwargs.pop(k) for k in _RUN_KEYS if k in kwargs}
    if module == "rouge":
        if kwargs.pop("use_aggregator", True) is False:
            raise ValueError("lorafleet modules return corpus figures (use_aggregator=False is not supported); "
                             "per-sample scores: lorafleet.evaluate.metrics.compute_metrics")
        kwargs = {_ROUGE_ALIASES.get(k, k): v for k, v in kwargs.items()}
    rows = [Prediction(prediction=str(p), references=[str(x) for x in r] if isinstance(r, (list, tuple)) else None,
                       reference=None if isinstance(r, (list, tuple)) else str(r))
            for p, r in zip(predictions, references, strict=True)]
    scores = score_predictions(rows, [module], options={module: kwargs}, labels=run.get("labels"),
                               label_pattern=run.get("label_pattern"), resamples=int(run.get("resamples", 1000)),
                               seed=int(run.get("seed", 0)), confidence=float(run.get("confidence", 0.95)))
    out: dict[str, Any] = {s.metric: s.value for s in scores}
    if run.get("ci"):
        out.update({f"{s.metric}_ci": [s.ci[0], s.ci[1]] for s in scores})
    if run.get("provenance"):
        out["config"] = {s.metric: s.config for s in scores}
    return out

"""lorafleet's exact match as a Hugging Face `evaluate` module: evaluate.load(hf_modules.path("exact_match"))
gives the numbers of `lorafleet eval score --metrics exact_match`, offline."""

from lorafleet.evaluate import hf_modules

import evaluate


class ExactMatch(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return hf_modules.info("exact_match")

    def _compute(self, predictions, references, **options):
        return hf_modules.compute("exact_match", predictions, references, **options)

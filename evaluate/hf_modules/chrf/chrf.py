"""lorafleet's chrF as a Hugging Face `evaluate` module: evaluate.load(hf_modules.path("chrf"))
gives the numbers of `lorafleet eval score --metrics chrf`, offline."""

from lorafleet.evaluate import hf_modules

import evaluate


class Chrf(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return hf_modules.info("chrf")

    def _compute(self, predictions, references, **options):
        return hf_modules.compute("chrf", predictions, references, **options)

"""lorafleet's ROUGE as a Hugging Face `evaluate` module: evaluate.load(hf_modules.path("rouge"))
gives the numbers of `lorafleet eval score --metrics rouge`, offline."""

from lorafleet.evaluate import hf_modules

import evaluate


class Rouge(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return hf_modules.info("rouge")

    def _compute(self, predictions, references, **options):
        return hf_modules.compute("rouge", predictions, references, **options)

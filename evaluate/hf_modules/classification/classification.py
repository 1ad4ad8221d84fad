"""lorafleet's label metrics (accuracy, label_f1, label_micro_f1) as a Hugging Face `evaluate` module:
evaluate.load(hf_modules.path("classification")) gives the numbers of `lorafleet eval score --metrics
classification`, offline."""

from lorafleet.evaluate import hf_modules

import evaluate


class Classification(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return hf_modules.info("classification")

    def _compute(self, predictions, references, **options):
        return hf_modules.compute("classification", predictions, references, **options)

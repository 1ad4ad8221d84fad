"""lorafleet's token F1 as a Hugging Face `evaluate` module: evaluate.load(hf_modules.path("token_f1"))
gives the numbers of `lorafleet eval score --metrics token_f1`, offline."""

from lorafleet.evaluate import hf_modules

import evaluate


class TokenF1(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return hf_modules.info("token_f1")

    def _compute(self, predictions, references, **options):
        return hf_modules.compute("token_f1", predictions, references, **options)

"""Word and character error rates of transcripts or reply texts (an `evaluate` metric kept in the project).

    metric = evaluate.load("concept_talker/evaluation/metrics/error_rate/error_rate.py")
    metric.compute(predictions=["the cat sat"], references=["the cat sat down"])  # {"wer": 0.25, "cer": ...}

Both sides are normalised as the offline recogniser writes text (lowercase, no punctuation; `concept_talker.evaluation.asr`), and
the rates are corpus rates: errors over all utterances / reference words (or characters).
"""

import datasets
import evaluate


class ErrorRate(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Corpus word error rate (wer) and character error rate (cer) after text normalisation.",
            citation="",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        from concept_talker.evaluation.asr import char_error_rate, word_error_rate

        return {"wer": word_error_rate(references, predictions), "cer": char_error_rate(references, predictions)}

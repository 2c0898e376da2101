"""Audio-code accuracy of the talker, per codebook (an `evaluate` metric kept in the project).

Predictions are the talker's argmax codes and references its delayed targets, both `[codebooks, steps]` per
example, with -100 where no target applies (padding, the delay's fillers).

    metric.compute(predictions=[pred], references=[target])
    # {"code_accuracy": mean over codebooks, "code_accuracy_0": ..., "code_accuracy_1": ...}
"""

import datasets
import evaluate
import numpy as np


class CodeAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Fraction of audio steps whose code the talker predicts exactly, for each codebook.",
            citation="",
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("int32"))),
                }
            ),
        )

    def _compute(self, predictions, references):
        correct, counted = None, None
        for prediction, reference in zip(predictions, references):
            prediction, reference = np.asarray(prediction), np.asarray(reference)
            if prediction.shape != reference.shape:
                raise ValueError(f"prediction {prediction.shape} and reference {reference.shape} differ in shape")
            scored = reference != -100
            hits = ((prediction == reference) & scored).sum(-1)
            correct = hits if correct is None else correct + hits
            counted = scored.sum(-1) if counted is None else counted + scored.sum(-1)
        per_codebook = correct / np.maximum(counted, 1)
        result = {"code_accuracy": float(per_codebook.mean())}
        result.update({f"code_accuracy_{k}": float(v) for k, v in enumerate(per_codebook)})
        return result

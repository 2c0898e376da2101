"""`Trainer` subclasses for Concept-Talker's training stages.

    ThinkerTextTrainer     stage 0 (tiny recipes only): the thinker's own weights on dialogue text; also the
                           copy stage before it (copy turns alone)
    AlignmentTrainer       stage 1: the concept adapter, so that the frozen thinker reads concepts as words
    SpokenReplyTrainer     stage 2: reply text through the thinker's LoRA, reply audio through the talker
                           (the concept adapter at a lower learning rate, or frozen)

What they share (`ConceptTalkerTrainer`): which parts train, the loss parts logged separately (`text_loss`,
`concept_loss` and `concept_accuracy`, `audio_loss`, `audio_loss_k` per codebook, `duration_loss`), an optional lower
learning rate for the concept adapter, checkpoints
that are written to a staging folder and renamed into place (never half-written), and teacher-forced audio-code
accuracy per codebook at evaluation (through the project's `code_accuracy` metric).
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict

import numpy as np
import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from concept_talker.files import move_into_place

STAGING_DIR = ".staging"


class ConceptTalkerTrainer(Trainer):
    """Base of the stage trainers.

    Args:
        adapter_learning_rate: learning rate of the concept adapter (default: the stage's `learning_rate`;
            0 freezes it).
    """

    thinker_mode = "lora"
    train_adapter = True
    train_talker = True

    def __init__(self, *args, adapter_learning_rate: float | None = None, text_labels: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.adapter_learning_rate = adapter_learning_rate
        self.text_labels = text_labels
        model = self.unwrapped_model
        train_adapter = self.train_adapter and adapter_learning_rate != 0
        model.set_trainable(concept_adapter=train_adapter, thinker=self.thinker_mode, talker=self.train_talker)
        self._loss_parts: dict[str, list[float]] = defaultdict(list)
        self._clear_staging()

    @property
    def unwrapped_model(self):
        return self.accelerator.unwrap_model(self.model) if hasattr(self, "accelerator") else self.model

    # ---- loss and its parts ------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.text_labels and "audio_labels" not in inputs:
            inputs = {k: v for k, v in inputs.items() if k != "labels"}  # the concepts alone are taught
        outputs = model(**inputs)
        if model.training:
            for name in ("text_loss", "concept_loss", "concept_accuracy", "audio_loss", "duration_loss"):
                value = getattr(outputs, name)
                if value is not None:
                    self._loss_parts[name].append(float(value.detach()))
            if outputs.audio_codebook_losses is not None:
                for k, value in enumerate(outputs.audio_codebook_losses.detach().tolist()):
                    self._loss_parts[f"audio_loss_{k}"].append(value)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._loss_parts:
            for name, values in self._loss_parts.items():
                logs[name] = round(float(np.mean(values)), 4)
            self._loss_parts.clear()
        super().log(logs, start_time)

    # ---- optimiser: the concept adapter may learn slower -------------------------------------------------------
    def create_optimizer(self, model=None):
        if self.optimizer is not None or self.adapter_learning_rate in (None, 0):
            return super().create_optimizer(model) if model is not None else super().create_optimizer()
        model = self.unwrapped_model
        adapter = [p for p in model.concept_adapter.parameters() if p.requires_grad]
        adapter_ids = {id(p) for p in adapter}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in adapter_ids]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        groups = [{"params": rest, "weight_decay": self.args.weight_decay},
                  {"params": adapter, "weight_decay": self.args.weight_decay, "lr": self.adapter_learning_rate}]
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    # ---- checkpoints that are whole or absent -----------------------------------------------------------------
    def _clear_staging(self) -> None:
        staging = os.path.join(self.args.output_dir, STAGING_DIR)
        if self.args.should_save and os.path.isdir(staging):
            shutil.rmtree(staging)  # left by a run that was killed while saving

    def _save_checkpoint(self, model, trial) -> None:
        """Write the checkpoint into a staging folder, then rename it to `checkpoint-<step>`: a run killed while
        saving leaves the previous checkpoints as they were and no half-written one."""
        from transformers.trainer_utils import rotate_checkpoints

        run_dir = self._get_output_dir(trial=trial)
        staging = os.path.join(run_dir, STAGING_DIR)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        original = self._get_output_dir
        self._get_output_dir = lambda trial=None: staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._get_output_dir = original
        self.accelerator.wait_for_everyone()  # every process has written its RNG state
        if self.args.should_save:
            move_into_place(os.path.join(staging, name), os.path.join(run_dir, name), replace=True)
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit, use_mtime=False)
        self.accelerator.wait_for_everyone()

    # ---- evaluation: audio-code accuracy per codebook -----------------------------------------------------------
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            outputs = model(**inputs)
        loss = outputs.loss.detach() if outputs.loss is not None else None
        if prediction_loss_only or outputs.audio_logits is None:
            return loss, None, None
        # Steps first after the batch, so the Trainer can pad batches of different lengths along them.
        predictions = outputs.audio_logits.argmax(-1)  # [batch, steps, codebooks]
        return loss, predictions, outputs.audio_targets.transpose(1, 2)


def audio_code_metrics(eval_prediction) -> dict[str, float]:
    """`compute_metrics` for `SpokenReplyTrainer`: teacher-forced code accuracy per codebook."""
    from concept_talker.evaluation.metrics import load_metric

    predictions, targets = eval_prediction.predictions, eval_prediction.label_ids  # [rows, steps, codebooks]
    metric = load_metric("code_accuracy")
    rows_pred, rows_ref = [], []
    for prediction, target in zip(predictions, targets):
        scored = np.nonzero((target != -100).any(-1))[0]
        steps = int(scored.max()) + 1 if len(scored) else 0  # rows were padded with -100 to the longest
        rows_pred.append(prediction[:steps].T.tolist())
        rows_ref.append(target[:steps].T.tolist())
    return metric.compute(predictions=rows_pred, references=rows_ref)


class ThinkerTextTrainer(ConceptTalkerTrainer):
    """Stage 0: the thinker's own weights (not LoRA) learn the dialogue text, or (the copy stage) to copy. Tiny
    recipes only: the real recipe starts from Qwen2.5-0.5B's pretrained weights."""

    thinker_mode = "base"
    train_adapter = False
    train_talker = False


class AlignmentTrainer(ConceptTalkerTrainer):
    """Stage 1: only the concept adapter learns, so that the frozen thinker transcribes the audio it reads: each
    concept is pulled to the thinker's embedding of the token spoken in its stretch of time (`concept_labels`), and
    the frozen thinker's transcript of the concepts is scored (`labels`; off with `text_labels=False`)."""

    thinker_mode = "frozen"
    train_adapter = True
    train_talker = False


class SpokenReplyTrainer(ConceptTalkerTrainer):
    """Stage 2: the thinker's LoRA learns the reply text, the talker the reply audio; the concept adapter follows
    at `adapter_learning_rate` (0 freezes it)."""

    thinker_mode = "lora"
    train_adapter = True
    train_talker = True

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("compute_metrics", audio_code_metrics)
        super().__init__(*args, **kwargs)

"""`concept-talker train`: a whole recipe, from data to an evaluated model.

    concept-talker train --recipe configuration/tiny.yaml --output_dir runs/tiny [--resume] [--key value ...]

    data     synthesise the dataset with the model's codec (or use `data.path`)        <out>/data
    text     stage 0, the thinker learns the dialogue text (skipped with a pretrained thinker)
    align    stage 1, the concept adapter learns to make the frozen thinker transcribe the audio
    reply    stage 2, the thinker's LoRA learns the replies, the talker their audio
    final    a self-contained checkpoint: trainable weights, the base thinker it refers to, processor, recipe,
             and the recipe's `generation` settings as the checkpoint's reply defaults (generation_config.json)
    eval     held-out voices and items -> <out>/eval_results.json; loss curves -> <out>/loss_curves.png

Each stage writes `<out>/<stage>/model` (renamed into place when complete) and keeps Trainer checkpoints; with
`--resume` finished stages are skipped and an interrupted one continues from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

from concept_talker.files import write_directory, write_json

logger = logging.getLogger("concept_talker.train")

STAGE_TRAINERS = {"copy": "ThinkerTextTrainer", "text": "ThinkerTextTrainer", "align": "AlignmentTrainer",
                  "reply": "SpokenReplyTrainer"}
STAGE_TASKS = {"copy": "text", "text": "text", "align": "transcribe", "reply": "reply"}
# Stages that train the thinker's own weights: a pretrained thinker skips them.
THINKER_STAGES = ("copy", "text")
QUESTION_TIMINGS = ("question_text", "question_word_spans", "question_word_seconds")
REQUIRED_COLUMNS = {
    "copy": (),  # every row is replaced by a copy turn
    "text": ("id", "reply_text", "instruction") + QUESTION_TIMINGS,
    "align": QUESTION_TIMINGS,
    "reply": ("reply_text", "reply_codes", "instruction", "reply_phonemes", "reply_phoneme_chars",
              "reply_phoneme_frames") + QUESTION_TIMINGS,
}
# Stages that also learn from the question-only rows of general English (the `transcribe` split).
LISTENING_STAGES = ("text", "align")
RUN_FILE = "run.json"


# The question-only splits the listening stages add to the train split, with the stage setting that caps each.
QUESTION_ONLY_SPLITS = {"questions": "question_rows", "transcribe": "transcribe_rows"}
# The extra splits with spoken replies the reply stage adds (general-English "repeat after me" turns).
SPOKEN_REPLY_SPLITS = {"repeats": "repeat_rows"}


def stage_train_rows(dataset, stage: str, settings: dict, seed: int):
    """A stage's training rows: the train split, and the extra splits the stage learns from, shuffled together: for
    the listening stages the question-only rows (the `questions` split's more renditions of training questions and
    the `transcribe` split's general English), for the reply stage the `repeats` split's spoken repeat turns; the first
    `settings["question_rows"]` / `["transcribe_rows"]` / `["repeat_rows"]` of each where set."""
    splits = QUESTION_ONLY_SPLITS if stage in LISTENING_STAGES else SPOKEN_REPLY_SPLITS if stage == "reply" else {}
    extra = extra_rows(dataset, settings, splits)
    if not extra:
        return dataset["train"]
    from datasets import concatenate_datasets

    return concatenate_datasets([dataset["train"], *extra]).shuffle(seed=seed)


def extra_rows(dataset, settings: dict, splits: dict[str, str] = QUESTION_ONLY_SPLITS) -> list:
    """The dataset's extra splits of `splits` (split name -> the stage setting that caps it) that it has, each cut to
    the first `settings[<its setting>]` rows where that is set (None: all)."""
    parts = []
    for name, setting in splits.items():
        if name in dataset:
            rows, cap = dataset[name], settings.get(setting)
            parts.append(rows if cap is None else rows.select(range(min(len(rows), int(cap)))))
    return [part for part in parts if len(part)]


class TrainingRun:
    """One run of a recipe into `output_dir`."""

    def __init__(self, recipe: dict, output_dir: str, resume: bool = False):
        from accelerate import PartialState

        self.recipe = recipe
        self.output_dir = os.path.abspath(output_dir)
        self.resume = resume
        self.model_spec = recipe["model"]
        self.processor = None
        import torch

        # One process, or each of `accelerate launch` / `torchrun` processes; on a machine without CUDA they form a
        # MULTI_CPU group over gloo.
        self.state = PartialState(cpu=not torch.cuda.is_available())
        if self.state.is_main_process:
            self._prepare_output_dir()
        self.state.wait_for_everyone()

    # ---- the output folder ----------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return os.path.join(self.output_dir, *parts)

    def _prepare_output_dir(self) -> None:
        from concept_talker.training.recipes import save_recipe

        run_file = self.path(RUN_FILE)
        if os.path.isdir(self.output_dir) and os.listdir(self.output_dir) and not self.resume:
            raise SystemExit(
                f"{self.output_dir} already holds a run: pass --resume to continue it, or choose another --output_dir."
            )
        if self.resume and not os.path.isfile(run_file):
            raise SystemExit(f"Nothing to resume in {self.output_dir} (no {RUN_FILE}): start the run without --resume.")
        os.makedirs(self.output_dir, exist_ok=True)
        if self.resume:
            with open(run_file) as f:
                previous = json.load(f)["recipe"]
            changed = _changed_keys(previous, self.recipe)
            finished = [stage for stage in STAGE_TRAINERS if self.stage_done(stage)]
            # Work still to do: the stages after the last finished one (a stage before it, even one that did not run,
            # would now run on a model that has passed it).
            order = list(STAGE_TRAINERS)
            may_change = order[order.index(finished[-1]) + 1:] if finished else order
            refused = [key for key in changed if not _changes_only_unfinished_work(key, may_change)]
            if refused:
                raise SystemExit(
                    f"--resume with a recipe that changes what the finished work was made with ({', '.join(refused[:5])} "
                    f"changed; finished stages: {', '.join(finished) or 'none'}). A resumed run may change only the "
                    f"settings of its unfinished stages ({', '.join(f'stages.{s}' for s in may_change) or 'none'}), "
                    "eval and generation. Put the other settings back, or start a new --output_dir."
                )
            if changed:
                logger.info("Resuming with changed settings of unfinished work: %s", ", ".join(changed))
                write_json(run_file, {"recipe": self.recipe}, sort_keys=True, default=str)
        else:
            write_json(run_file, {"recipe": self.recipe}, sort_keys=True, default=str)
        save_recipe(self.recipe, self.path("training_recipe.yaml"))

    # ---- data ----------------------------------------------------------------------------------------------------
    def data(self, config):
        """The dataset (synthesised into <out>/data unless `data.path` is given), checked against the model."""
        from datasets import load_from_disk

        path = self.recipe["data"]["path"]
        if path is None:
            path = self.path("data")
            with self.state.main_process_first():  # the main process builds it, the others then read it
                if not os.path.isdir(path) and self.state.is_main_process:
                    self._synthesise(path, config)
        if not os.path.isdir(path):
            raise SystemExit(f"data.path {path!r} is not a dataset folder (made by concept-talker synth).")
        dataset = load_from_disk(path)
        self.data_path = path
        for split in ("train", "validation", "test"):
            if split not in dataset:
                raise SystemExit(f"The dataset at {path} has no '{split}' split: rebuild it with concept-talker synth.")
        return dataset

    def _synthesise(self, path: str, config) -> None:
        from concept_talker.data.synth import SynthConfig, build_synthetic_dataset

        synth = self.recipe["data"]["synth"]
        codec = self.codec_spec(config)
        synth_config = SynthConfig(
            num_rows=int(synth["n"]), seed=int(synth["seed"]), codec=codec,
            num_codebooks=config.codec_num_codebooks, voices=synth["voices"], audio_columns=(),
            ear=self.ear_spec(config), ear_context_windows=config.ear_context_windows,
            window_seconds=config.adapter_config.window_seconds, transcribe_rows=int(synth["transcribe_rows"]),
            question_rows=int(synth["question_rows"]), repeat_rows=int(synth["repeat_rows"]),
            repeat_vocabulary=int(synth["repeat_vocabulary"]),
            transcribe_vocabulary=synth["transcribe_vocabulary"],
            reply_tts=synth["reply_tts"], voice_variant_share=float(synth["voice_variant_share"]),
            perturb_share=float(synth["perturb_share"]),
        )
        logger.info("Synthesising %d rows with the %s codec into %s", synth_config.num_rows, codec, path)
        build_synthetic_dataset(synth_config, path, num_proc=int(synth["num_proc"]))

    def codec_spec(self, config) -> str:
        """What makes the data's codes: the recipe's pretrained codec, the Lyra folder, or the preset's codec."""
        if self.model_spec["codec"]:
            return self.model_spec["codec"]
        if config.codec_type == "lyra_soundstream":
            if not config.codec_config.model_dir:
                raise SystemExit(
                    "The model uses the Lyra codec but no folder was given: set "
                    "model.overrides.codec_config.model_dir (or --model.codec) to the Lyra SoundStream folder."
                )
            return config.codec_config.model_dir
        return self.model_spec["preset"]

    def ear_spec(self, config) -> str | None:
        """The Whisper model the preset's ear loads (`model.ear`, else the preset's `ear_name_or_path`, made absolute),
        a random one saved in `<output_dir>/ear` for a preset that names none (the tiny preset's), or None for a codec
        ear."""
        if config.ear_type == "codec":
            return None
        ear = self.model_spec["ear"] or config.ear_name_or_path or self.random_ear(config)
        return os.path.abspath(ear) if os.path.isdir(ear) else ear

    def random_ear(self, config) -> str:
        """The preset's Whisper with random weights (seeded by the recipe), saved once as `<output_dir>/ear`, so that
        the data's frames and the model come from the same ear. It hears nothing: it is for runs that test the
        machinery (the tiny recipe); the tiny-lyra recipe names a pretrained Whisper."""
        folder = self.path("ear")
        with self.state.main_process_first():
            if self.state.is_main_process and not os.path.isfile(os.path.join(folder, "config.json")):
                import torch
                from transformers import WhisperModel

                logger.warning("The preset's ear names no Whisper model: a random one is saved in %s (it hears "
                               "nothing; set model.ear to a Whisper folder or Hub id for a model that listens).", folder)
                torch.manual_seed(self.recipe["seed"])
                write_directory(WhisperModel(config.ear_config).save_pretrained, folder, replace=True)
        return folder

    def check_columns(self, dataset, stage: str, voice: bool) -> None:
        question = "question_codes" if self.model_config.ear_type == "codec" else "question_features"
        needed = list(REQUIRED_COLUMNS[stage]) + [question] + (["reference_codes"] if voice else [])
        train = dataset["train"]
        first = train[0] if len(train) else {}
        # A column that exists but is empty (recordings have reply columns set to None) counts as missing; reference
        # clips exist only on the rows whose voice the reply stage passes.
        missing = [c for c in needed if c not in train.column_names
                   or (first.get(c) is None and c != "reference_codes")]
        if missing:
            raise SystemExit(
                f"The dataset at {self.data_path} lacks the column(s) {missing} that stage '{stage}' needs: make it "
                "with concept-talker synth (recordings loaded from LJSpeech have no replies: use them for 'align')."
            )

    # ---- the model ---------------------------------------------------------------------------------------------
    def config(self):
        from configuration import load_preset

        config = load_preset(self.model_spec["preset"], **(self.model_spec["overrides"] or {}))
        if config.codec_type == "lyra_soundstream" and config.codec_config.model_dir:
            config.codec_config.model_dir = os.path.abspath(config.codec_config.model_dir)
        if config.ear_type != "codec":
            config.ear_name_or_path = self.ear_spec(config)
        self.model_config = config
        return config

    def new_model(self, config):
        import torch

        from modeling_concept_talker import ConceptTalkerForConditionalGeneration
        from modeling_concept_talker.configuration_concept_talker import SIZES_FROM_OTHER_PARTS

        torch.manual_seed(self.recipe["seed"])
        if self.model_spec["thinker"]:
            fields = {k: v for k, v in config.to_dict().items()
                      if k in ("adapter_config", "talker_config", "codec_num_codebooks", "max_audio_seconds")}
            for part, sizes in SIZES_FROM_OTHER_PARTS.items():  # taken from the pretrained parts instead
                fields[part] = {k: v for k, v in fields[part].items() if k not in sizes}
            model = ConceptTalkerForConditionalGeneration.from_pretrained_parts(
                thinker=self.model_spec["thinker"], codec=self.model_spec["codec"] or "facebook/encodec_24khz",
                speech_encoder=config.ear_name_or_path if config.ear_type != "codec" else None,
                lora_r=config.lora_r, lora_alpha=config.lora_alpha, **fields,
            )
        else:
            model = ConceptTalkerForConditionalGeneration(config)
            if model.ear is not None:
                model.load_ear(config.ear_name_or_path)
        return model

    def match_codec(self, model) -> None:
        """Give the model the codec that made the dataset's codes, and refuse data made by another codec or ear."""
        from concept_talker.data.codecs import check_ear_matches, resolve_codec
        from concept_talker.data.dataset import check_dataset_codec

        try:
            data_codec = resolve_codec(self.data_path, model.config.codec_num_codebooks)
            if type(data_codec) is type(model.codec) and list(data_codec.state_dict()):
                model.codec.load_state_dict(data_codec.state_dict())
            info = check_dataset_codec(self.data_path, model.codec)
            check_ear_matches(info.get("ear"), model, f"the dataset at {self.data_path}")
        except (ValueError, RuntimeError) as err:
            raise SystemExit(f"The dataset at {self.data_path} does not fit this model: {err}") from err

    def prepare_readout(self, model, config, dataset) -> None:
        """Give a model that is to read concepts by sound (`--model.overrides.adapter_config.readout sound`) its
        table of how tokens sound, over the data's tokens where the stages score those only (`text_vocabulary:
        data`), else over every token. A stage model of a run begun with the thinker's readout switches to it here,
        so the stages still to run (align, reply) read by sound."""
        if config.adapter_config.readout != "sound" or model.config.adapter_config.sound_vocabulary_size:
            return
        import torch

        by_data = any(settings.get("text_vocabulary") == "data" for settings in self.recipe["stages"].values())
        tokens = torch.tensor(self.data_vocabulary(dataset, model.config)) if by_data else None
        model.use_sound_readout(self.processor.tokenizer, tokens, seed=self.recipe["seed"])
        logger.info("Concepts are read by sound, over %d tokens", model.config.adapter_config.sound_vocabulary_size)

    def load_processor(self, config):
        from modeling_concept_talker import ConceptTalkerProcessor
        from concept_talker.loading import default_tokenizer

        tokenizer = self.model_spec["tokenizer"] or self.model_spec["thinker"] or default_tokenizer()
        return ConceptTalkerProcessor.from_config(config, tokenizer)

    # ---- stages --------------------------------------------------------------------------------------------------
    def stage_done(self, stage: str) -> bool:
        return os.path.isfile(self.path(stage, "model", "config.json"))

    def copy_turn_words(self) -> bool:
        """Whether a stage of the recipe trains on copy turns (then every stage scores their words)."""
        stages = self.recipe["stages"]
        return stages["copy"].get("enabled", True) or any(settings.get("copy_turns") for settings in stages.values())

    def data_vocabulary(self, dataset, config) -> list[int]:
        """The tokens of the data (`text_vocabulary: data`): every question and reply, and the copy turns' words when
        a stage trains on them (every stage reads the same words: they are scored in all of them, or none)."""
        from concept_talker.data.collators import dataset_vocabulary

        return dataset_vocabulary(self.processor.tokenizer, dataset, config, copy_turns=self.copy_turn_words())

    def run_stage(self, stage: str, model, dataset):
        import concept_talker.training.trainers as trainer_module
        from concept_talker.data.collators import SpokenTurnCollator
        from concept_talker.training.recipes import training_arguments

        settings = self.recipe["stages"][stage]
        voice = bool(settings.get("voice", False))
        self.check_columns(dataset, stage, voice)
        stage_dir = self.path(stage)
        args = training_arguments(
            settings, stage_dir, self.recipe["seed"],
            remove_unused_columns=False, report_to=settings.get("report_to", "none"),
            # Parts that a batch may not use (e.g. the voice path without a reference clip) must not stall DDP.
            ddp_find_unused_parameters=settings.get("ddp_find_unused_parameters", True),
            use_cpu=settings.get("use_cpu", not _cuda_available()),
        )

        from concept_talker.evaluation.evaluate import with_features

        train = stage_train_rows(dataset, stage, settings, self.recipe["seed"])
        if settings.get("max_train_examples"):
            train = train.select(range(min(len(train), int(settings["max_train_examples"]))))
        from concept_talker.data.collators import CopyTurns

        if stage == "copy":
            copy_turns = CopyTurns(1.0, seed=self.recipe["seed"], system_turn=False)
        elif settings.get("copy_turns"):
            copy_turns = CopyTurns(settings["copy_turns"], seed=self.recipe["seed"])
        else:
            copy_turns = None
        vocabulary = self.data_vocabulary(dataset, model.config) if settings.get("text_vocabulary") == "data" else None
        if vocabulary is not None:
            logger.info("Stage %s scores its losses over the %d tokens of the data", stage, len(vocabulary))
        collator = SpokenTurnCollator(self.processor, STAGE_TASKS[stage], model.config, voice=voice,
                                      concept_labels=bool(settings.get("concept_labels", True)),
                                      text_vocabulary=vocabulary, copy_turns=copy_turns,
                                      transcribe_turns=settings.get("transcribe_turns") or 0.0,
                                      seed=self.recipe["seed"])
        trainer_class = getattr(trainer_module, STAGE_TRAINERS[stage])
        trainer = trainer_class(
            model=model, args=args, train_dataset=with_features(train), eval_dataset=with_features(dataset["validation"]),
            data_collator=collator, processing_class=self.processor,
            adapter_learning_rate=settings.get("adapter_learning_rate"),
            text_labels=bool(settings.get("text_labels", True)),
        )
        from transformers.trainer_utils import get_last_checkpoint

        checkpoint = get_last_checkpoint(stage_dir) if self.resume and os.path.isdir(stage_dir) else None
        logger.info("Stage %s: %s%s", stage, trainer_class.__name__, f" resuming from {checkpoint}" if checkpoint else "")
        result = trainer.train(resume_from_checkpoint=checkpoint)
        if trainer.args.should_save:
            write_json(os.path.join(stage_dir, "log_history.json"), trainer.state.log_history,
                       sort_keys=True, default=str)
            write_json(os.path.join(stage_dir, "train_result.json"),
                       {**result.metrics, "world_size": trainer.args.world_size}, sort_keys=True, default=str)
        return trainer

    def save_stage_model(self, stage: str, model) -> None:
        """<out>/<stage>/model, written beside and renamed into place. The text stage also writes the thinker it
        trained (<out>/text/thinker), which later checkpoints refer to instead of copying."""
        if stage == "text":
            if self.state.is_main_process:
                write_directory(model.save_base_thinker, self.path("text", "thinker"))
            model.config.thinker_name_or_path = self.path("text", "thinker")
        if self.state.is_main_process:
            write_directory(lambda d: model.save_pretrained(d), self.path(stage, "model"))
        self.state.wait_for_everyone()

    def load_stage_model(self, stage: str):
        from modeling_concept_talker import ConceptTalkerForConditionalGeneration

        return ConceptTalkerForConditionalGeneration.from_pretrained(self.path(stage, "model"))

    # ---- the whole run -------------------------------------------------------------------------------------------
    def run(self) -> dict:
        import torch
        from transformers import set_seed

        set_seed(self.recipe["seed"])
        config = self.config()
        self.processor = self.load_processor(config)
        dataset = self.data(config)
        stages = [s for s in STAGE_TRAINERS if self.recipe["stages"][s].get("enabled", True)]
        if self.model_spec["thinker"]:  # a pretrained thinker already reads, writes and copies text
            stages = [s for s in stages if s not in THINKER_STAGES]
        # Everything that can be wrong with the data is checked before the first step of the first stage.
        for stage in stages:
            self.check_columns(dataset, stage, bool(self.recipe["stages"][stage].get("voice", False)))
        pending = [s for s in stages if not self.stage_done(s)]
        model = None
        if pending:
            done = [s for s in stages if self.stage_done(s)]
            if done:
                model = self.load_stage_model(done[-1])
            else:
                model = self.new_model(config)
                if any(stage in THINKER_STAGES for stage in stages):  # a from-scratch thinker
                    first = self.recipe["stages"][next(s for s in stages if s in THINKER_STAGES)]
                    scored = self.data_vocabulary(dataset, config) if first.get("text_vocabulary") == "data" else None
                    model.init_thinker_embeddings(None if scored is None else torch.tensor(scored))
            self.match_codec(model)
            self.prepare_readout(model, config, dataset)
        for stage in stages:
            if self.stage_done(stage):
                logger.info("Stage %s is done (%s): skipping it", stage, self.path(stage, "model"))
                continue
            model.train()
            self.run_stage(stage, model, dataset)
            self.save_stage_model(stage, model)
        if model is None:
            model = self.load_stage_model(stages[-1])
        # The instructions the thinker read in training, so that an unfamiliar one gets a warning at inference.
        train = dataset["train"]
        instructions = train.unique("instruction") if "instruction" in train.column_names else []
        model.config.trained_instructions = sorted(text for text in instructions if text) or None
        results = {}
        if self.state.is_main_process:
            final = self.save_final(model)
            results = self.evaluate(final, dataset)
            self.plot(stages)
        self.state.wait_for_everyone()
        return results

    def save_final(self, model) -> str:
        """<out>/final: the trained model, self-contained (its base thinker inside, referred to relatively)."""
        final = self.path("final")
        model.set_reply_defaults(**self.recipe["generation"])  # the recipe's reply settings become the defaults

        def write(directory: str) -> None:
            reference = model.config.thinker_name_or_path
            if reference and os.path.isdir(reference) and model.has_lora:
                shutil.copytree(reference, os.path.join(directory, "thinker"))
                model.config.thinker_name_or_path = "thinker"
                try:
                    model.save_pretrained(directory)
                finally:
                    model.config.thinker_name_or_path = reference
            else:
                model.save_pretrained(directory)
            self.processor.save_pretrained(directory)
            shutil.copy(self.path("training_recipe.yaml"), os.path.join(directory, "training_recipe.yaml"))

        write_directory(write, final, replace=True)
        return final

    def evaluate(self, final: str, dataset) -> dict:
        from concept_talker.evaluation.evaluate import evaluate_model

        results = evaluate_model(final, dataset, self.recipe["eval"], processor=self.processor)
        results["recipe"] = os.path.relpath(self.recipe["recipe_path"], os.getcwd())
        write_json(self.path("eval_results.json"), results, sort_keys=True, default=str)
        shutil.copy(self.path("eval_results.json"), os.path.join(final, "eval_results.json"))
        return results

    def plot(self, stages: list[str]) -> None:
        from concept_talker.evaluation.evaluate import plot_loss_curves

        histories = {}
        for stage in stages:
            history_file = self.path(stage, "log_history.json")
            if os.path.isfile(history_file):
                with open(history_file) as f:
                    histories[stage] = json.load(f)
        if histories:
            plot_loss_curves(histories, self.path("loss_curves.png"))


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _changes_only_unfinished_work(key: str, unfinished_stages: list[str]) -> bool:
    """Whether a changed recipe key (`stages.reply.max_steps`) steers only work a resumed run has still to do: an
    unfinished stage's settings, the evaluation or the final checkpoint's reply settings."""
    return (key.split(".")[0] in ("eval", "generation")
            or any(key == f"stages.{stage}" or key.startswith(f"stages.{stage}.") for stage in unfinished_stages)
            or LISTENING_MODEL_KEYS.get(key) in unfinished_stages)


# Model settings that steer only the listening stages (align onwards): a resumed run whose align stage is still to do
# may change them, e.g. to train the listening of a finished text stage by sound.
LISTENING_MODEL_KEYS = {"model.overrides.adapter_config.readout": "align"}


def _changed_keys(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and new is None or old is None and isinstance(new, dict):  # a section added or removed:
        old, new = old or {}, new or {}  # each of its keys changed
    if isinstance(old, dict) and isinstance(new, dict):
        changed = []
        for key in sorted(set(old) | set(new)):
            if key in ("output_dir", "recipe_path"):
                continue
            if key not in old and new[key] == {}:  # a section added to recipes since, left empty
                continue
            changed += _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        return changed
    return [] if old == new else [prefix.rstrip(".")]

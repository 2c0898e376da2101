"""`concept-talker push`: share a checkpoint as a complete Hub repository that a stranger can load, read and trust.

    concept-talker push --model runs/tiny/final --repo-id ORG/NAME [--merged] [--private] [--dry-run OUT_DIR]

The repository holds:
- `config.json` and `model.safetensors`: trainable-only weights with a reference to the base thinker (default, when
  the thinker has LoRA adapters and a base), or with `--merged` every weight, LoRA folded into the thinker;
- `thinker/` (and `codec/`): the base thinker (codec) when the checkpoint refers to a local folder, which a stranger
  could not reach; the config then refers to it relatively and loading finds it in the repo;
- the processor and tokenizer files, and the remote code (`*.py`), so `AutoModel` / `AutoProcessor` /
  `pipeline("speech-to-speech", ...)` load it with `trust_remote_code=True` where concept-talker is not installed;
- `README.md`: the model card (model_cards/), with the metrics of `eval_results.json` and the recipe of
  `training_recipe.yaml` when the training run left them next to the model (copied too, local paths redacted).

Everything is staged in a folder first and checked by loading it back; `--dry-run OUT_DIR` stops there and lists the
files with their sizes. The upload is one `HfApi.upload_folder` commit (after `create_repo`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass

EVAL_RESULTS_FILE = "eval_results.json"
RECIPE_FILE = "training_recipe.yaml"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
BASE_THINKER_FOLDER = "thinker"
BASE_CODEC_FOLDER = "codec"


class PushError(ValueError):
    """A checkpoint that cannot be pushed as it is; the message says what to do."""


@dataclass
class StagedRepository:
    """A folder in Hub layout, ready to upload."""

    folder: str
    kind: str  # "trainable", "merged" or "full"
    files: list[tuple[str, int]]  # (path in repo, bytes), sorted

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


# ---- reading what the training run left ------------------------------------------------------------------------
def read_eval_results(path: str | None) -> dict | None:
    """The training run's `eval_results.json` as a mapping, or None when there is no such file."""
    if not path or not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise PushError(
            f"{path} is not valid JSON ({err}): fix or remove it; the model card reports its metrics."
        ) from err
    if not isinstance(data, dict):
        raise PushError(f"{path} must hold a JSON object of metric name -> value, got {type(data).__name__}.")
    return data


def read_recipe(path: str | None) -> dict | None:
    """The training recipe (YAML) with local paths redacted, or None when there is no such file."""
    if not path or not os.path.isfile(path):
        return None
    import yaml

    try:
        with open(path) as f:
            recipe = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise PushError(
            f"{path} is not valid YAML ({err}): fix or remove it; the model card shows the recipe."
        ) from err
    if recipe is None:
        return None
    if not isinstance(recipe, dict):
        raise PushError(f"{path} must hold a mapping of recipe settings, got {type(recipe).__name__}.")
    return redact_local_paths(recipe)


def redact_local_paths(value):
    """Replace absolute local paths (which say nothing to a reader and may say too much) by `<local>/NAME`."""
    if isinstance(value, dict):
        return {k: redact_local_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_local_paths(v) for v in value]
    if isinstance(value, str) and (os.path.isabs(value) or value.startswith("~")):
        return "<local>/" + os.path.basename(value.rstrip("/" + os.sep))
    return value


# ---- loading the checkpoint to push ------------------------------------------------------------------------------
def load_checkpoint(model_dir: str, tokenizer: str | None = None, allow_pickle: bool = False,
                    codec_model_dir: str | None = None):
    """The model and processor saved in `model_dir` (a processor built from the config when none was saved)."""
    from modeling_concept_talker import ConceptTalkerForConditionalGeneration

    if not os.path.isdir(model_dir):
        raise PushError(f"No checkpoint folder {model_dir!r}: give --model the folder the model was saved to.")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise PushError(f"{model_dir} has no config.json: give --model a folder written by save_pretrained.")
    model = ConceptTalkerForConditionalGeneration.from_pretrained(
        model_dir, allow_pickle=allow_pickle, codec_model_dir=codec_model_dir
    ).eval()
    return model, processor_for(model, model_dir, tokenizer)


def processor_for(model, model_dir: str | None = None, tokenizer: str | None = None):
    """The processor saved next to the model if it matches it, else one built from the config and `tokenizer`."""
    from modeling_concept_talker import ConceptTalkerProcessor

    if model_dir and os.path.isfile(os.path.join(model_dir, "processor_config.json")):
        processor = ConceptTalkerProcessor.from_pretrained(model_dir)
        check_processor(processor, model.config)
        return processor
    from concept_talker.loading import default_tokenizer

    return ConceptTalkerProcessor.from_config(model.config, tokenizer or default_tokenizer())


def check_processor(processor, config) -> None:
    """Raise a `PushError` unless the processor prepares inputs the way the model reads them."""
    from modeling_concept_talker.configuration_concept_talker import AUDIO_SPECIAL_TOKENS

    expected = {"sampling_rate": config.input_sampling_rate, "hop_length": config.input_hop_length,
                "voice_sampling_rate": config.sampling_rate, "window_frames": config.window_frames,
                "concepts_per_window": config.adapter_config.concepts_per_window}
    wrong = {k: (getattr(processor, k), v) for k, v in expected.items() if getattr(processor, k) != v}
    ids = processor.tokenizer.convert_tokens_to_ids(list(AUDIO_SPECIAL_TOKENS))
    expected_ids = [config.audio_start_token_id, config.audio_token_id, config.audio_end_token_id]
    if ids != expected_ids:
        wrong["audio token ids"] = (ids, expected_ids)
    if wrong:
        details = ", ".join(f"{k} {got} (model: {want})" for k, (got, want) in wrong.items())
        raise PushError(
            f"The saved processor does not match the model: {details}. Re-save it with "
            "ConceptTalkerProcessor.from_config(model.config, tokenizer), or pass --tokenizer and remove its "
            "processor_config.json."
        )


# ---- staging ------------------------------------------------------------------------------------------------------
def _is_local_folder(reference: str | None, model_dir: str | None) -> str | None:
    """The local folder a reference names (absolute, or relative to the checkpoint folder), else None."""
    if not reference:
        return None
    candidates = [reference] if os.path.isabs(reference) else [os.path.join(model_dir or "", reference), reference]
    for candidate in candidates:
        if os.path.isdir(candidate):
            return candidate
    return None


def check_repo_id(repo_id: str) -> None:
    if not repo_id or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PushError(f"--repo-id must be ORG/NAME (e.g. my-org/concept-talker-tiny), got {repo_id!r}.")


def prepare_folder(out_dir: str, create: bool = True) -> None:
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise PushError(
            f"{out_dir} already exists and is not an empty folder: give --dry-run a new folder (so that its listing "
            "is exactly what would be uploaded), or empty it."
        )
    if create:
        os.makedirs(out_dir, exist_ok=True)


def _configs_of(model) -> list:
    """Every config object whose `_name_or_path` a save would write: the model's, its parts', their sub-models'."""
    config = model.config
    found = [config, *(getattr(config, name, None) for name in
                       ("thinker_config", "codec_config", "adapter_config", "talker_config"))]
    found.append(getattr(model.thinker, "config", None))
    found.append(getattr(getattr(model.codec, "model", None), "config", None))
    unique = []
    for item in found:
        if item is not None and all(item is not other for other in unique):
            unique.append(item)
    return unique


def check_no_local_paths(folder: str, local_paths) -> None:
    """Raise if a text file of the staged repository names a folder of this machine (which means nothing to a
    reader and may say more than intended)."""
    local_paths = {os.path.abspath(p) for p in local_paths if p}
    for path, _ in list_files(folder):
        if not path.endswith((".json", ".yaml", ".md", ".jinja")):
            continue
        with open(os.path.join(folder, path), encoding="utf-8", errors="replace") as f:
            text = f.read()
        leaked = sorted(p for p in local_paths if p in text)
        if leaked:
            raise PushError(
                f"{path} would publish local paths {leaked}: this is a bug in the staging, please report it (the "
                "staged folder is left for inspection)."
            )


def list_files(folder: str) -> list[tuple[str, int]]:
    """(path relative to `folder` with `/` separators, bytes) of every file under it, sorted."""
    files = []
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            files.append((os.path.relpath(path, folder).replace(os.sep, "/"), os.path.getsize(path)))
    return sorted(files)


def stage_repository(model, out_dir: str, *, repo_id: str, processor=None, merged: bool = False,
                     model_dir: str | None = None, eval_results: str | dict | None = None,
                     recipe: str | dict | None = None, license: str = "apache-2.0", datasets=(),
                     base_model: str | None = None, tags=(), verify: bool = True) -> StagedRepository:
    """Write every file of the Hub repository for `model` into `out_dir` (which must be new or empty).

    Args:
        repo_id: `ORG/NAME` (named in the card's usage snippet).
        processor: the processor to ship (default: one built from the config and the Qwen2.5 tokenizer).
        merged: every weight with LoRA folded in, instead of trainable-only weights + base thinker reference.
        model_dir: the checkpoint folder the model came from (relative references and the training run's files
            `eval_results.json` / `training_recipe.yaml` are looked up there).
        eval_results, recipe: a path or an already-read mapping; default: the files in `model_dir`, if any.
        base_model: Hub id of the pretrained thinker for the card (default: the config's `thinker_name_or_path`
            when it is a Hub id).
        verify: load the staged checkpoint back and check that it computes what `model` computes.
    """
    from model_cards.card import CardFacts, is_hub_id, remote_code_imports, render_model_card

    check_repo_id(repo_id)
    prepare_folder(out_dir)
    config = model.config
    processor = processor if processor is not None else processor_for(model, model_dir)
    check_processor(processor, config)
    thinker_ref, codec_ref = config.thinker_name_or_path, config.codec_name_or_path
    lyra_dir = config.codec_config.model_dir if config.codec_type == "lyra_soundstream" else None
    base_included = False
    saved_refs = {}  # config fields as they go into the repository

    if merged:
        kind = "merged"
    elif model.has_lora and thinker_ref:
        kind = "trainable"
    else:
        kind = "full"
    if kind == "trainable":
        local_thinker = _is_local_folder(thinker_ref, model_dir)
        if local_thinker or not is_hub_id(thinker_ref):
            # A stranger cannot reach a folder on this machine: the base thinker goes into the repository.
            model.save_base_thinker(os.path.join(out_dir, BASE_THINKER_FOLDER))
            saved_refs["thinker_name_or_path"] = BASE_THINKER_FOLDER
            base_included = True
        local_codec = _is_local_folder(codec_ref, model_dir)
        if codec_ref and (local_codec or not is_hub_id(codec_ref)) and config.codec_type != "lyra_soundstream":
            model.codec.model.save_pretrained(os.path.join(out_dir, BASE_CODEC_FOLDER))
            saved_refs["codec_name_or_path"] = BASE_CODEC_FOLDER
    else:
        # Every weight is in model.safetensors: references only say where the model came from; local paths would
        # mean nothing to a reader.
        saved_refs["thinker_name_or_path"] = thinker_ref if is_hub_id(thinker_ref) else None
        saved_refs["codec_name_or_path"] = codec_ref if is_hub_id(codec_ref) else None
    if lyra_dir:
        from modeling_concept_talker.lyra import LYRA_FILES

        if not _is_local_folder(lyra_dir, model_dir):
            raise PushError(
                f"The Lyra codec models are not at {lyra_dir!r}: pass --lyra-dir with the folder holding "
                f"{', '.join(LYRA_FILES)}."
            )
        os.makedirs(os.path.join(out_dir, BASE_CODEC_FOLDER), exist_ok=True)
        for name in LYRA_FILES:
            shutil.copyfile(os.path.join(_is_local_folder(lyra_dir, model_dir), name),
                            os.path.join(out_dir, BASE_CODEC_FOLDER, name))

    previous = {name: getattr(config, name) for name in saved_refs}
    # Where each config was loaded from (`_name_or_path`, saved in config.json) is a path of this machine.
    previous_names = [(item, item._name_or_path) for item in _configs_of(model)]
    try:
        for name, value in saved_refs.items():
            setattr(config, name, value)
        for item, _ in previous_names:
            item._name_or_path = ""
        if lyra_dir:
            config.codec_config.model_dir = BASE_CODEC_FOLDER
        if kind == "merged":
            model.save_merged(out_dir)
        else:
            model.save_pretrained(out_dir, trainable_only=kind == "trainable")
    finally:
        for name, value in previous.items():
            setattr(config, name, value)
        for item, value in previous_names:
            item._name_or_path = value
        if lyra_dir:
            config.codec_config.model_dir = lyra_dir
    processor.save_pretrained(out_dir)

    eval_data = eval_results if isinstance(eval_results, dict) else read_eval_results(
        eval_results or (os.path.join(model_dir, EVAL_RESULTS_FILE) if model_dir else None))
    recipe_data = redact_local_paths(recipe) if isinstance(recipe, dict) else read_recipe(
        recipe or (os.path.join(model_dir, RECIPE_FILE) if model_dir else None))
    if eval_data is not None:
        with open(os.path.join(out_dir, EVAL_RESULTS_FILE), "w") as f:
            json.dump(redact_local_paths(eval_data), f, indent=2)
    if recipe_data is not None:
        import yaml

        with open(os.path.join(out_dir, RECIPE_FILE), "w") as f:
            yaml.safe_dump(recipe_data, f, sort_keys=False)

    counts = model.parameter_counts()
    if kind == "merged":
        counts["lora"] = 0
    facts = CardFacts(
        repo_id=repo_id, config=config, kind=kind, parameter_counts=counts,
        files=list_files(out_dir) + [("README.md", 0)],
        base_model=base_model or (thinker_ref if is_hub_id(thinker_ref) else None),
        base_included=base_included, eval_results=eval_data, recipe=recipe_data, license=license,
        datasets=list(datasets), tags=list(tags), code_imports=remote_code_imports(out_dir),
    )
    render_model_card(facts).save(os.path.join(out_dir, "README.md"))

    staged = StagedRepository(out_dir, kind, list_files(out_dir))
    check_staged(staged)
    check_no_local_paths(out_dir, [model_dir, _is_local_folder(thinker_ref, model_dir),
                                   _is_local_folder(codec_ref, model_dir), lyra_dir and os.path.abspath(lyra_dir)])
    if verify:
        verify_staged(staged, model)
    return staged


def check_staged(staged: StagedRepository) -> None:
    """Raise unless the staged folder is a complete, pickle-free Concept-Talker repository."""
    names = {path for path, _ in staged.files}
    pickled = sorted(p for p in names if p.endswith(PICKLE_SUFFIXES))
    if pickled:
        raise PushError(f"Refusing to upload pickled files {pickled}: the repository holds safetensors weights only.")
    required = ["config.json", "README.md", "processor_config.json", "tokenizer_config.json",
                "configuration_concept_talker.py", "modeling_concept_talker.py", "processing_concept_talker.py",
                "pipeline_concept_talker.py"]
    missing = [name for name in required if name not in names]
    if "model.safetensors" not in names and "model.safetensors.index.json" not in names:
        missing.append("model.safetensors")
    if missing:
        raise PushError(f"The staged repository in {staged.folder} lacks {missing}: it would not load for others.")
    if staged.kind == "trainable" and f"{BASE_THINKER_FOLDER}/config.json" in names:
        if f"{BASE_THINKER_FOLDER}/model.safetensors" not in names and not any(
                p.startswith(f"{BASE_THINKER_FOLDER}/model-") for p in names):
            raise PushError(f"The base thinker in {BASE_THINKER_FOLDER}/ has no safetensors weights.")


def verify_staged(staged: StagedRepository, model) -> None:
    """Load the staged checkpoint back and check that its thinker gives the source model's logits."""
    import torch

    from modeling_concept_talker import ConceptTalkerForConditionalGeneration

    loaded = ConceptTalkerForConditionalGeneration.from_pretrained(staged.folder).eval()
    ids = torch.tensor([[151644, 872, 198, 9707, 151645]]) % model.config.thinker_config.vocab_size
    with torch.no_grad():
        expected = model(input_ids=ids).logits.float()
        got = loaded.to(model.device)(input_ids=ids.to(model.device)).logits.float()
    if not torch.allclose(got, expected, atol=1e-3, rtol=1e-3):
        raise PushError(
            f"The staged checkpoint in {staged.folder} loads but computes other logits than the model (largest "
            f"difference {(got - expected).abs().max().item():.3g}): it was not saved faithfully; please report this."
        )
    for name in ("concept_adapter", "talker"):
        mine, theirs = getattr(model, name).state_dict(), getattr(loaded, name).state_dict()
        if any(not torch.equal(mine[k].cpu(), theirs[k].cpu()) for k in mine):
            raise PushError(f"The staged checkpoint's {name} weights differ from the model's: please report this.")


# ---- uploading ----------------------------------------------------------------------------------------------------
def upload(staged: StagedRepository, repo_id: str, *, private: bool | None = None, token=None,
           revision: str | None = None, commit_message: str | None = None, create_pr: bool = False,
           replace: bool = True):
    """Create the repo if needed and upload the staged folder as one commit. Returns the commit info.

    With `replace`, files already in the repo that this push does not write are deleted in the same commit (so a
    merged push does not leave an old `thinker/` or pickled weights behind).
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    message = commit_message or f"Upload Concept-Talker checkpoint ({staged.kind} weights)"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        return api.upload_folder(
            repo_id=repo_id, folder_path=staged.folder, repo_type="model", revision=revision, create_pr=create_pr,
            commit_message=message, delete_patterns=["*"] if replace else None,
        )
    except Exception as err:  # network, authentication, permissions: say what to do
        raise PushError(
            f"The upload to {repo_id} failed: {err}\nLog in with `hf auth login` (or pass a token), check that you "
            "may write to that namespace, or look at the files first with a dry run (--dry-run OUT_DIR, or "
            "push_model(model, repo_id, dry_run=OUT_DIR))."
        ) from err


def push_model(model, repo_id: str, *, processor=None, merged: bool = False, private: bool | None = None,
               token=None, commit_message: str | None = None, revision: str | None = None, create_pr: bool = False,
               dry_run: str | None = None, replace: bool = True, **stage_kwargs):
    """Stage `model` as a complete Hub repository that loads with `trust_remote_code=True` anywhere, and upload it.

    The repository holds the config, safetensors weights (trainable-only, with the base thinker included under
    `thinker/` when it is a local folder; or every weight with LoRA merged, `merged=True`), the processor and
    tokenizer, the remote code and a model card (`stage_kwargs`: see `stage_repository`). `concept-talker push` runs
    this. (transformers' own `model.push_to_hub` uploads the config, weights and remote code only.)

    Returns the commit info, or with `dry_run` (a folder) the `StagedRepository` written there without uploading.
    """
    if dry_run:
        return stage_repository(model, dry_run, repo_id=repo_id, processor=processor, merged=merged, **stage_kwargs)
    with tempfile.TemporaryDirectory(prefix="concept-talker-push-") as folder:
        staged = stage_repository(model, os.path.join(folder, "repo"), repo_id=repo_id, processor=processor,
                                  merged=merged, **stage_kwargs)
        return upload(staged, repo_id, private=private, token=token, revision=revision,
                      commit_message=commit_message, create_pr=create_pr, replace=replace)


def format_listing(staged: StagedRepository) -> str:
    width = max(len(f"{size:,}") for _, size in staged.files)
    lines = [f"  {size:>{width},} B  {_human(size):>9}  {path}" for path, size in staged.files]
    lines.append(f"  {len(staged.files)} files, {staged.total_bytes:,} bytes ({_human(staged.total_bytes)})")
    return "\n".join(lines)


def _human(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


# ---- command line -------------------------------------------------------------------------------------------------

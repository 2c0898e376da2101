"""`concept-talker push`: the command line of `concept_talker.hub.push`."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from concept_talker.hub.push import (
    EVAL_RESULTS_FILE,
    RECIPE_FILE,
    PushError,
    check_repo_id,
    format_listing,
    load_checkpoint,
    prepare_folder,
    stage_repository,
    upload,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the checkpoint folder (written by save_pretrained)")
    parser.add_argument("--repo-id", required=True, help="the Hub repository, ORG/NAME")
    parser.add_argument("--merged", action="store_true",
                        help="push every weight with LoRA merged into the thinker (default: trainable-only weights "
                             "with a reference to the base thinker)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--dry-run", metavar="OUT_DIR",
                        help="write every file that would be uploaded into OUT_DIR (new or empty) and list them; "
                             "upload nothing")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the one saved by `hf auth login`)")
    parser.add_argument("--revision", help="branch to push to (created if missing; default: main)")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--commit-message", help="commit message")
    parser.add_argument("--keep-remote-files", action="store_true",
                        help="keep files already in the repository that this push does not write (default: the "
                             "repository ends up holding exactly the pushed files)")
    parser.add_argument("--tokenizer", help="tokenizer folder or Hub id, when the checkpoint has no processor saved")
    parser.add_argument("--eval-results", help=f"metrics for the card (default: MODEL/{EVAL_RESULTS_FILE} if present)")
    parser.add_argument("--recipe", help=f"training recipe for the card (default: MODEL/{RECIPE_FILE} if present)")
    parser.add_argument("--license", default="apache-2.0", help="licence in the card (default: apache-2.0)")
    parser.add_argument("--dataset", action="append", default=[], metavar="HUB_ID",
                        help="a Hub dataset the model was trained or evaluated on (repeatable)")
    parser.add_argument("--base-model", help="Hub id of the pretrained thinker, when the checkpoint does not name it")
    parser.add_argument("--lyra-dir", help="folder of the Lyra SoundStream models, for Lyra checkpoints")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read a source checkpoint that has only pickled weights (only if you trust it); the "
                             "push itself writes safetensors")
    parser.add_argument("--no-verify", action="store_true", help="skip loading the staged repository back")


def run(args) -> int:
    try:
        check_repo_id(args.repo_id)  # cheap checks first: loading the model takes a while
        if args.dry_run:
            prepare_folder(args.dry_run, create=False)
        for flag, name in ((args.eval_results, "--eval-results"), (args.recipe, "--recipe")):
            if flag and not os.path.isfile(flag):
                raise PushError(f"{name} {flag!r} does not exist.")
        model, processor = load_checkpoint(args.model, args.tokenizer, args.allow_pickle, args.lyra_dir)
        options = dict(
            repo_id=args.repo_id, processor=processor, merged=args.merged, model_dir=args.model,
            eval_results=args.eval_results, recipe=args.recipe, license=args.license, datasets=args.dataset,
            base_model=args.base_model, verify=not args.no_verify,
        )
        if args.dry_run:
            staged = stage_repository(model, args.dry_run, **options)
            print(f"Dry run: the {staged.kind} repository for {args.repo_id} is in {args.dry_run}; nothing was "
                  "uploaded. Files:")
            print(format_listing(staged))
            return 0
        with tempfile.TemporaryDirectory(prefix="concept-talker-push-") as folder:
            staged = stage_repository(model, os.path.join(folder, "repo"), **options)
            print(f"Uploading the {staged.kind} repository to {args.repo_id}:")
            print(format_listing(staged))
            commit = upload(staged, args.repo_id, private=args.private or None, token=args.token,
                            revision=args.revision, commit_message=args.commit_message, create_pr=args.create_pr,
                            replace=not args.keep_remote_files)
        print(f"Pushed: {getattr(commit, 'commit_url', commit)}")
        return 0
    except PushError as err:
        print(f"concept-talker push: {err}", file=sys.stderr)
        return 2

"""`concept-talker demo`: the command line of `concept_talker.app.demo`."""

from __future__ import annotations

from concept_talker.app.demo import build_demo



def add_arguments(parser) -> None:
    from concept_talker.app.chat import DEFAULT_MODEL

    parser.add_argument("--model", help=f"checkpoint folder, Hub id, or preset name (default: {DEFAULT_MODEL})")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on")
    parser.add_argument("--tokenizer", help="tokenizer folder or Hub id, for presets (default: offline Qwen2.5 copy)")
    parser.add_argument("--lyra-dir", help="folder of the Lyra SoundStream models, for Lyra presets and checkpoints")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="longest reply text, in tokens")
    parser.add_argument("--max-audio-seconds", type=float, default=20.0, help="longest reply audio")


def run(args) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SystemExit("The demo needs Gradio: pip install 'concept-talker[demo]' (or make setup).") from None
    demo = build_demo(args.model, tokenizer=args.tokenizer, lyra_dir=args.lyra_dir,
                      max_new_tokens=args.max_new_tokens, max_audio_seconds=args.max_audio_seconds)
    demo.launch(server_name=args.host, server_port=args.port, show_error=False)
    return 0

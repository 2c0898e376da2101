"""The tutor page as a Hugging Face Space (or any machine): `python app.py`, then open http://127.0.0.1:7860.

A Gradio Space runs this file and serves `demo`. `CONCEPT_TALKER_MODEL` picks the checkpoint (a folder or Hub id;
default: the embedded model); `GRADIO_SERVER_NAME` / `GRADIO_SERVER_PORT` pick where it listens. The same page as
`concept-talker demo`.
"""

import os

from concept_talker.app.demo import build_demo

demo = build_demo(os.environ.get("CONCEPT_TALKER_MODEL") or None)

if __name__ == "__main__":
    demo.launch()

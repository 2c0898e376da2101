"""TTS backends: espeak-ng through ctypes (the offline default) and a transformers VITS model built here."""

from __future__ import annotations

import ctypes.util
import json
import sys

import numpy as np
import pytest
import torch

from concept_talker.data import tts as tts_module
from concept_talker.data.tts import (
    Utterance,
    render_utterance,
    EspeakBackend,
    TTSBackend,
    TTSUnavailableError,
    VitsBackend,
    clean_text,
    find_espeak_library,
    load_tts,
    render,
    words_per_minute,
)
from concept_talker.evaluation.tutor_metrics import median_f0  # the pitch measure the tutor metrics use

SENTENCE = "The morning light came slowly through the window."


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


@pytest.fixture(scope="module")
def espeak():
    return load_tts("espeak")


def test_espeak_speaks_float32_mono_at_its_rate(espeak):
    clip = espeak.synthesize(SENTENCE, voice="en-us+f3", rate=175, pitch=50)
    assert isinstance(espeak, EspeakBackend) and clip.sampling_rate == espeak.sampling_rate == 22050
    assert clip.audio.dtype == np.float32 and clip.audio.ndim == 1
    assert 1.0 < clip.seconds < 5.0
    assert 0.05 < np.abs(clip.audio).max() <= 1.0
    # Leading and trailing silence is trimmed to a short margin.
    margin = int(0.1 * clip.sampling_rate)
    assert np.abs(clip.audio[:margin]).max() > 0.01 and np.abs(clip.audio[-margin:]).max() > 0.01


def test_a_clip_depends_on_its_settings_alone(espeak):
    """espeak-ng carries state between utterances; the backend resets it, so rendering order does not matter."""
    first = espeak.synthesize(SENTENCE, "en-us+m2", rate=190, pitch=40).audio
    espeak.synthesize("Something else, in another voice.", "en-gb-x-rp+f3", rate=120, pitch=70)
    assert np.array_equal(first, espeak.synthesize(SENTENCE, "en-us+m2", rate=190, pitch=40).audio)
    assert not np.array_equal(first[:1000], espeak.synthesize(SENTENCE, "en-us+m3", rate=190, pitch=40).audio[:1000])


def test_rate_sets_words_per_minute(espeak):
    slow = espeak.synthesize(SENTENCE, "en-us+m3", rate=100)
    fast = espeak.synthesize(SENTENCE, "en-us+m3", rate=300)
    assert slow.seconds > 2.2 * fast.seconds
    assert words_per_minute(SENTENCE, fast.seconds) > 2 * words_per_minute(SENTENCE, slow.seconds)


def test_pitch_and_voice_set_the_fundamental_frequency(espeak):
    low = espeak.synthesize(SENTENCE, "en-us+m3", pitch=20)
    high = espeak.synthesize(SENTENCE, "en-us+m3", pitch=80)
    female = espeak.synthesize(SENTENCE, "en-us+f3", pitch=50)
    male = espeak.synthesize(SENTENCE, "en-us+m3", pitch=50)
    assert median_f0(high.audio, 22050) > 1.3 * median_f0(low.audio, 22050)
    assert median_f0(female.audio, 22050) > 1.5 * median_f0(male.audio, 22050)


def test_voices_and_held_out_splits_exist(espeak):
    splits = espeak.default_voice_splits()
    assert len(splits["train"]) >= 20 and splits["validation"] and splits["test"]
    for voices in splits.values():
        for voice in voices:
            assert espeak.check_voice(voice) == voice
    # Held out: no evaluation variant is ever heard in training.
    variants = {split: {v.split("+")[1] for v in voices} for split, voices in splits.items()}
    assert not variants["train"] & (variants["validation"] | variants["test"])
    # The language part can be a language name whose voice file is named otherwise (en-gb -> en).
    assert espeak.synthesize("Hello.", "en-gb+m3").seconds > 0.2


def test_unknown_voices_rates_and_pitches_are_refused(espeak):
    with pytest.raises(ValueError, match="no voice variant 'zzz'"):
        espeak.synthesize("Hello.", "en-us+zzz")
    with pytest.raises(ValueError, match="no language voice 'xx-yy'"):
        espeak.synthesize("Hello.", "xx-yy")
    with pytest.raises(ValueError, match="words per minute"):
        espeak.synthesize("Hello.", rate=20)
    with pytest.raises(ValueError, match="0 to 99"):
        espeak.synthesize("Hello.", pitch=120)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("   \n\t", "empty"),
        ("?!... --", "only punctuation"),
        ("你好，世界", "cannot read"),
        ("Hello \U0001f600", "cannot read"),
        ("word " * 200, "Split it into sentences"),
        (None, "must be a str"),
    ],
)
def test_unspeakable_text_is_refused_never_a_silent_clip(espeak, text, message):
    with pytest.raises((ValueError, TypeError), match=message):
        espeak.synthesize(text, "en-us+m1")


def test_typographic_and_accented_text_is_folded_to_ascii(espeak):
    assert clean_text("Caf\u00e9 \u201cd\u00e9j\u00e0 vu\u201d \u2014 na\u00efve\u2026") == 'Cafe "deja vu", naive...'
    assert espeak.synthesize("Caf\u00e9 cr\u00e8me", "en-us+m1").seconds > 0.3
    # A non-English voice reads its own letters.
    assert espeak.synthesize("\u043f\u0440\u0438\u0432\u0435\u0442", "ru").seconds > 0.2


def test_a_backend_that_makes_silence_raises():
    class SilentBackend(TTSBackend):
        name = "silent"
        sampling_rate = 16000

        def voices(self):
            return ["only"]

        def _speak(self, text, voice, rate, pitch):
            return Utterance(np.zeros(16000, dtype=np.float32), 16000, text)

    with pytest.raises(RuntimeError, match="no audible speech"):
        SilentBackend().synthesize("Hello there.")


def test_render_resamples_to_the_codec_rate(espeak):
    clip = espeak.synthesize(SENTENCE, "en-us+m2", rate=175, pitch=50)
    wave = render(espeak, SENTENCE, 24000, "en-us+m2", rate=175, pitch=50)
    assert wave.dtype == np.float32 and abs(len(wave) - clip.seconds * 24000) <= 2
    with pytest.raises(ValueError, match="over the 1 s limit"):
        render(espeak, SENTENCE, 24000, "en-us+m2", rate=175, max_seconds=1.0)


def test_missing_espeak_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # import fails
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    with pytest.raises(TTSUnavailableError) as error:
        find_espeak_library()
    assert 'pip install "concept-talker[tts]"' in str(error.value)
    assert "apt-get install espeak-ng" in str(error.value)


def test_unknown_tts_spec_is_refused():
    with pytest.raises(ValueError, match="Unknown TTS"):
        load_tts("festival")


# ---------------------------------------------------------------------------------------------------------------
# VITS: a tiny random model saved to a folder, loaded back through load_tts
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vits_dir(tmp_path_factory):
    from transformers import VitsConfig, VitsModel, VitsTokenizer

    folder = tmp_path_factory.mktemp("tiny-vits")
    vocab = {"<pad>": 0, "<unk>": 1, **{ch: i + 2 for i, ch in enumerate("abcdefghijklmnopqrstuvwxyz '")}}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = VitsTokenizer(str(folder / "vocab.json"), phonemize=False, normalize=True, add_blank=True)
    config = VitsConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32, flow_size=16,
        spectrogram_bins=17, upsample_initial_channel=16, upsample_rates=[8, 8, 4], upsample_kernel_sizes=[16, 16, 8],
        resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]], prior_encoder_num_flows=1,
        prior_encoder_num_wavenet_layers=1, posterior_encoder_num_wavenet_layers=1, duration_predictor_num_flows=1,
        duration_predictor_filter_channels=16, use_stochastic_duration_prediction=False, sampling_rate=16000,
        depth_separable_num_layers=1, wavenet_kernel_size=3,
    )
    torch.manual_seed(0)
    VitsModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_vits_backend_loads_a_saved_model_and_speaks(vits_dir):
    backend = load_tts(vits_dir)
    assert isinstance(backend, VitsBackend) and backend is load_tts(vits_dir)
    assert backend.voices() == ["default"] and backend.sampling_rate == 16000
    clip = backend.synthesize("hello there, how are you?", rate=175, pitch=50)
    assert clip.sampling_rate == 16000 and clip.audio.dtype == np.float32 and clip.seconds > 0.3
    assert np.abs(clip.audio).max() <= 1.0
    # Seeded per clip: the same call gives the same audio.
    assert np.array_equal(clip.audio, backend.synthesize("hello there, how are you?", rate=175, pitch=50).audio)
    assert len(render(backend, "hello there", 24000)) > 0.3 * 24000


def test_vits_rate_sets_duration(vits_dir):
    backend = load_tts(vits_dir)
    text = "hello there, how are you?"
    normal = backend.synthesize(text, rate=175, pitch=50)
    slow = backend.synthesize(text, rate=85, pitch=50)
    assert slow.seconds > 1.3 * normal.seconds


def test_vits_pitch_shifts_the_voice_and_keeps_the_duration(vits_dir, monkeypatch):
    """A stand-in model that sings a 200 Hz tone lasting 1 s / speaking_rate shows what pitch and rate do."""
    backend = load_tts(vits_dir)

    class ToneModel:
        device = torch.device("cpu")

        def __call__(self, input_ids, attention_mask, speaker_id, speaking_rate):
            samples = int(16000 / speaking_rate)
            tone = 0.5 * torch.sin(2 * torch.pi * 200.0 * torch.arange(samples) / 16000)
            return type("Output", (), {"waveform": tone[None]})()

    monkeypatch.setattr(backend, "model", ToneModel())
    normal = backend.synthesize("hello", rate=175, pitch=50)
    high = backend.synthesize("hello", rate=175, pitch=90)  # +4 semitones
    fast_low = backend.synthesize("hello", rate=350, pitch=10)  # -4 semitones, twice as fast
    assert median_f0(normal.audio, 16000) == pytest.approx(200, rel=0.03)
    assert median_f0(high.audio, 16000) == pytest.approx(200 * 2 ** (4 / 12), rel=0.03)
    assert median_f0(fast_low.audio, 16000) == pytest.approx(200 * 2 ** (-4 / 12), rel=0.03)
    assert high.seconds == pytest.approx(normal.seconds, rel=0.03)
    assert fast_low.seconds == pytest.approx(normal.seconds / 2, rel=0.03)


def test_vits_refuses_text_outside_its_vocabulary(vits_dir):
    with pytest.raises(ValueError, match="no characters in the vocabulary"):
        load_tts(vits_dir).synthesize("123 456")


def test_vits_unreachable_model_says_what_to_do(tmp_path):
    with pytest.raises(TTSUnavailableError, match="local folder"):
        VitsBackend(str(tmp_path / "not-a-model"))


def test_load_tts_rejects_a_folder_of_another_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="must hold a VITS model"):
        load_tts(str(tmp_path))
    assert tts_module.NOMINAL_RATE == 175


# ---- word timings (espeak-ng's events) and the house voice (Piper) ---------------------------------------------------

def test_espeak_reports_where_each_word_is(espeak):
    text = "What does enormous mean?"
    utterance = espeak.speak(text, "en-us+m3", rate=160, pitch=50)
    words = [text[w.start : w.end] for w in utterance.words]
    assert words == ["What", "does", "enormous", "mean"]
    times = [(w.start_seconds, w.end_seconds) for w in utterance.words]
    assert all(0 <= a <= b <= utterance.seconds for a, b in times)
    assert all(times[i][1] <= times[i + 1][0] + 1e-6 for i in range(len(times) - 1))  # in order, not overlapping
    long_word = times[2][1] - times[2][0]
    assert long_word > times[0][1] - times[0][0]  # "enormous" lasts longer than "What"
    # Resampled to the ear's rate, the timings stay where they were.
    again = render_utterance(espeak, text, 16000, "en-us+m3", rate=160, pitch=50)
    assert again.words == utterance.words and again.sampling_rate == 16000


@pytest.fixture(scope="module")
def house_voice():
    from concept_talker.data.tts import PiperBackend

    return PiperBackend()


def test_the_house_voice_reports_each_symbol_it_spoke(house_voice):
    from modeling_concept_talker.phonemes import reply_symbols

    text = "Brave means not afraid of danger."
    utterance = house_voice.speak(text, rate=175, pitch=50)
    assert utterance.phonemes.symbols == reply_symbols(text).symbols  # the talker's symbols, as the voice read them
    assert utterance.phoneme_samples.sum() == len(utterance.audio)
    assert (utterance.phoneme_samples >= 0).all() and utterance.sampling_rate == 22050
    words = [text[w.start : w.end] for w in utterance.words]
    assert words == ["Brave", "means", "not", "afraid", "of", "danger"]
    # Deterministic (no noise drawn), and the same symbols at another rate last longer or shorter.
    assert np.array_equal(house_voice.speak(text, rate=175, pitch=50).audio, utterance.audio)
    slow = house_voice.speak(text, rate=110, pitch=50)
    assert slow.seconds > 1.3 * utterance.seconds


def test_house_voice_pitch_variants_move_the_pitch_and_keep_the_pace(house_voice):
    from modeling_concept_talker.pitch import median_f0

    text = "The morning light came slowly through the window."
    low = render_utterance(house_voice, text, 16000, rate=175, pitch=30)
    high = render_utterance(house_voice, text, 16000, rate=175, pitch=80)
    assert median_f0(high.audio, 16000) > 1.5 * median_f0(low.audio, 16000)
    # The pace is kept to within about a fifth (the voice rounds each phoneme up to whole 256-sample steps, which
    # weighs more at the shorter length scale a lower voice is rendered with).
    assert abs(high.seconds - low.seconds) < 0.25 * low.seconds
    for utterance in (low, high):  # symbol timings follow the clip through the pitch shift and the resampling
        assert utterance.phoneme_samples.sum() == len(utterance.audio)


def test_a_missing_or_foreign_voice_file_says_what_to_do(tmp_path):
    from concept_talker.data.tts import PiperBackend

    with pytest.raises(ValueError, match="does not exist"):
        PiperBackend(str(tmp_path / "none.onnx"))
    model = tmp_path / "voice.onnx"
    model.write_bytes(b"not a model")
    (tmp_path / "voice.onnx.json").write_text('{"audio": {}}')
    with pytest.raises(ValueError, match="not a Piper voice config"):
        PiperBackend(str(model))
    (tmp_path / "voice.onnx.json").write_text('{"audio": {"sample_rate": 22050}, "phoneme_id_map": {"_": [0]}}')
    with pytest.raises(ValueError, match="not an ONNX model"):
        PiperBackend(str(model))

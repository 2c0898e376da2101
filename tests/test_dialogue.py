"""The dialogue text generator: seeded, varied, correct, and with evaluation items and templates held out."""

from __future__ import annotations

import re

import pytest

from concept_talker.data import dialogue
from concept_talker.data.dialogue import (
    SKILLS,
    SPLITS,
    STYLES,
    DialogueGenerator,
    generate_dialogues,
    item_split,
    number_to_words,
    reference_sentences,
    split_items,
)


@pytest.fixture(scope="module")
def train_turns():
    return generate_dialogues(3000, "train", seed=0)


@pytest.fixture(scope="module")
def eval_turns():
    return {split: generate_dialogues(600, split, seed=0) for split in ("validation", "test")}


def _evaluation_only_templates() -> set[str]:
    held = set()
    for skill in SKILLS:
        held |= {f"{skill}.{tid}" for tid, _, evaluation in dialogue.QUESTION_TEMPLATES[skill] if evaluation}
        held |= {f"{skill}.{tid}" for tid, _, evaluation in dialogue.REPLY_TEMPLATES[skill] if evaluation}
    for style in STYLES:
        held |= {f"{style}.{tid}" for tid, _, evaluation in dialogue.STYLE_INSTRUCTIONS[style] if evaluation}
    held |= {f"repeat.{tid}" for tid, _, evaluation in dialogue.REPEAT_INSTRUCTIONS if evaluation}
    return held


def _template_parts(turn) -> set[str]:
    question, reply, instruction = turn.template.split("/")
    return {question, reply, *instruction.split("+")}


def test_same_seed_same_turns_other_seed_other_turns():
    assert generate_dialogues(50, "train", seed=3) == generate_dialogues(50, "train", seed=3)
    assert generate_dialogues(50, "train", seed=3) != generate_dialogues(50, "train", seed=4)


def test_thousands_of_distinct_pairs_across_all_skills_and_styles(train_turns):
    distinct = {(t.question_text, t.instruction, t.reply_text) for t in train_turns}
    assert len(distinct) == 3000
    assert {t.skill for t in train_turns} == set(SKILLS)
    assert {t.style for t in train_turns} == set(STYLES)
    counts = {style: sum(t.style == style for t in train_turns) for style in STYLES}
    assert 0.4 < counts["normal"] / 3000 < 0.6 and counts["slow"] > 500 and counts["fast"] > 500


def test_items_are_split_by_their_key_alone():
    for skill in SKILLS:
        keys = {split: {key for key, _ in split_items(skill, split)} for split in SPLITS}
        assert all(keys[split] for split in SPLITS), f"{skill} has an empty split"
        assert not keys["train"] & keys["validation"] and not keys["train"] & keys["test"]
        assert not keys["validation"] & keys["test"]
        for split, members in keys.items():
            assert all(item_split(key) == split for key in members)


def test_evaluation_items_and_templates_never_appear_in_training(train_turns, eval_turns):
    held_templates = _evaluation_only_templates()
    train_items = {t.item for t in train_turns}
    used_in_train = set().union(*(_template_parts(t) for t in train_turns))
    assert not used_in_train & held_templates
    for split, turns in eval_turns.items():
        assert all(item_split(t.item) == split for t in turns)
        assert not {t.item for t in turns} & train_items
        # Evaluation uses the held-out templates as well as the training ones.
        used = set().union(*(_template_parts(t) for t in turns))
        assert used & held_templates, f"{split} never uses an evaluation-only template"
        # No evaluation question text is a training question text either.
        assert not {t.question_text for t in turns} & {t.question_text for t in train_turns}


def test_instruction_matches_style(train_turns):
    phrasings = {style: {text for _, text, _ in dialogue.STYLE_INSTRUCTIONS[style]} for style in STYLES}
    for turn in train_turns:
        instruction = turn.instruction
        if turn.skill == "repeat":
            repeat = next(text for _, text, _ in dialogue.REPEAT_INSTRUCTIONS if instruction.startswith(text))
            instruction = instruction[len(repeat) :].strip()
        assert instruction in phrasings[turn.style], (turn.style, turn.instruction)
    assert any(t.instruction == "" for t in train_turns if t.style == "normal")


def test_repeat_after_me_replies_with_the_users_sentence(train_turns):
    repeats = [t for t in train_turns if t.skill == "repeat"]
    assert len(repeats) > 100
    for turn in repeats:
        assert turn.reply_text == turn.question_text
        assert turn.instruction.startswith(("Repeat", "Say this after me", "Please repeat"))


def test_arithmetic_replies_are_right(train_turns):
    arithmetic = [t for t in train_turns if t.skill == "arithmetic"]
    assert len(arithmetic) > 100
    for turn in arithmetic:
        a, op, b = re.fullmatch(r"arithmetic:(\d+)([-+*/])(\d+)", turn.item).groups()
        a, b = int(a), int(b)
        result = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b else None}[op]
        assert op != "/" or a % b == 0
        assert turn.reply_text.endswith(f"{number_to_words(result)}."), (turn.question_text, turn.reply_text)
        assert number_to_words(a) in turn.question_text.lower()


def test_spelling_replies_spell_the_word(train_turns):
    spelling = [t for t in train_turns if t.skill == "spelling"]
    for turn in spelling:
        word = turn.item.split(":", 1)[1]
        assert ", ".join(word.upper()) in turn.reply_text
        assert word in turn.question_text


def test_number_to_words():
    assert number_to_words(0) == "zero"
    assert number_to_words(13) == "thirteen"
    assert number_to_words(40) == "forty"
    assert number_to_words(72) == "seventy two"
    assert number_to_words(144) == "one hundred and forty four"
    with pytest.raises(ValueError, match="0 to 999"):
        number_to_words(1000)


def test_reference_sentences_are_held_out_and_differ_from_the_reply():
    sets = {split: set(reference_sentences(split)) for split in SPLITS}
    assert all(len(s) >= 2 for s in sets.values())
    assert not sets["train"] & sets["validation"] and not sets["train"] & sets["test"]
    generator = DialogueGenerator("test", seed=0)
    avoid = next(iter(sets["test"]))
    assert all(generator.reference_sentence(avoid) != avoid for _ in range(50))


def test_bad_arguments_say_what_to_pass():
    with pytest.raises(ValueError, match="split must be one of"):
        generate_dialogues(1, "dev")
    with pytest.raises(ValueError, match="Unknown skill"):
        generate_dialogues(1, "train", skills=["poetry"])
    only = generate_dialogues(40, "train", skills=["vocabulary"])
    assert {t.skill for t in only} == {"vocabulary"}


def test_a_repeat_turn_for_any_sentence_is_phrased_as_the_dialogues_repeat_turns():
    import random

    from concept_talker.data.dialogue import REPEAT_INSTRUCTIONS, STYLES, repeat_turn

    training = [text for _, text, held_out in REPEAT_INSTRUCTIONS if not held_out]
    rng = random.Random(0)
    turns = [repeat_turn(rng, "Emit incomplete hyper downtown.", f"words:{i}") for i in range(200)]
    for turn in turns:
        assert turn.skill == "repeat" and turn.question_text == turn.reply_text == "Emit incomplete hyper downtown."
        assert any(turn.instruction.startswith(text) for text in training)  # training phrasings only
        assert turn.style in STYLES and turn.template.startswith("repeat.words/")
    assert {turn.style for turn in turns} == set(STYLES)

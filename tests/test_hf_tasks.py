"""Hugging Face datasets as tasks (alphalora.finetune.tasks.hf_*): spec parsing, layouts, splits,
caps, errors, the Fine-tune page option and a short training run. Offline; data built locally."""

from __future__ import annotations

from pathlib import Path

import pytest

from alphalora.errors import AlphaLoRAError
from alphalora.finetune.tasks.examples import Example
from alphalora.finetune.tasks.hf_layout import HF_CLASSIFY_TEMPLATE
from alphalora.finetune.tasks.hf_spec import (
    HF_MAX_TRAIN,
    HFSpec,
    canonical_hf_spec,
    format_hf_spec,
    is_hf_spec,
    parse_hf_spec,
)
from alphalora.finetune.tasks.hf_task import HF_LICENCE_UNKNOWN, load_hf_task
from alphalora.finetune.tasks.load import load_task
from alphalora.finetune.tasks.records import MC_TEMPLATE


@pytest.fixture(autouse=True)
def _offline_datasets(monkeypatch, tmp_path):
    """datasets and huggingface_hub read the offline flags and the cache folder when first
    imported; force both for every test so nothing can reach the network or ~/.cache."""
    import datasets
    import huggingface_hub.constants

    cache = tmp_path / "hf-datasets-cache"
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


# --------------------------------------------------------------------------- builders


SENT = ["negative", "positive"]


def _classlabel_features(names=SENT, text="sentence"):
    from datasets import ClassLabel, Features, Value

    return Features({text: Value("string"), "label": ClassLabel(names=list(names))})


def _reviews(n: int, start: int = 0, hidden: set[int] | None = None) -> dict[str, list]:
    """Rows ``review i`` with label i % 2, or -1 for the positions in ``hidden``."""
    hidden = hidden or set()
    return {
        "sentence": [f"review {start + i}" for i in range(n)],
        "label": [-1 if i in hidden else (start + i) % 2 for i in range(n)],
    }


def _save(folder: Path, splits: dict[str, dict[str, list]], features=None, info=None) -> Path:
    """A DatasetDict of these splits written by save_to_disk."""
    from datasets import Dataset, DatasetDict

    DatasetDict(
        {
            name: Dataset.from_dict(rows, features=features, info=info)
            for name, rows in splits.items()
        }
    ).save_to_disk(str(folder))
    return folder


def _parquet_folder(folder: Path, splits: dict[str, dict[str, list]]) -> Path:
    """A plain dataset folder: data/<split>-00000-of-00001.parquet per split."""
    import pandas as pd

    (folder / "data").mkdir(parents=True)
    for name, rows in splits.items():
        pd.DataFrame(rows).to_parquet(folder / "data" / f"{name}-00000-of-00001.parquet")
    return folder


def _gold(example: Example) -> str:
    """The label the toy rows were built with, read back from the prompt's review number."""
    number = int(example.prompt.split("review ")[1].split("\n")[0])
    return SENT[number % 2]


# --------------------------------------------------------------------------- spec parsing


def test_spec_parsing_round_trips_and_defaults():
    spec = parse_hf_spec("hf:cornell-movie-review-data/rotten_tomatoes")
    assert spec == HFSpec(name="cornell-movie-review-data/rotten_tomatoes")
    assert (spec.config, spec.split, spec.eval_split) == (None, "train", None)
    assert (spec.max_train, spec.max_eval) == (HF_MAX_TRAIN, 500)
    glue = parse_hf_spec(" hf:nyu-mll/glue:sst2?text=sentence&max_train=5000&eval_split=validation")
    assert (glue.name, glue.config, glue.text, glue.max_train) == (
        "nyu-mll/glue",
        "sst2",
        "sentence",
        5000,
    )
    assert glue.columns() == {"text": "sentence"}
    assert parse_hf_spec(format_hf_spec(glue)) == glue
    assert format_hf_spec(HFSpec(name="x")) == "hf:x"
    mapped = parse_hf_spec("hf:/data/my%20set?prompt=instruction&answer=output&split=all")
    assert mapped.name == "/data/my%20set" and mapped.split == "all"
    assert mapped.columns() == {"prompt": "instruction", "answer": "output"}
    assert parse_hf_spec("hf:C:\\data\\set").name == "C:\\data\\set"  # a drive, not a config
    assert parse_hf_spec("hf:q?question=q&choices=opts&answer=gold&max_eval=7").max_eval == 7
    assert is_hf_spec("hf:x") and not is_hf_spec("rotten-tomatoes")


@pytest.mark.parametrize(
    "text, message",
    [
        ("glue", "not a Hugging Face dataset reference"),
        ("hf:", "names no dataset"),
        ("hf:glue:", "config after ':' is empty"),
        ("hf:glue?colour=red", "unknown option 'colour'"),
        ("hf:glue?text=a&text=b", "given twice"),
        ("hf:glue?text=", "has no value"),
        ("hf:glue?max_train=0", "whole number ≥ 1"),
        ("hf:glue?max_eval=ten", "whole number ≥ 1"),
        ("hf:glue?eval_split=train", "both 'train'"),
        ("hf:glue?=x", "unknown option ''"),
    ],
)
def test_bad_specs_are_refused_with_the_reason(text, message):
    with pytest.raises(AlphaLoRAError, match=message):
        parse_hf_spec(text)


def test_a_relative_folder_becomes_absolute_for_background_jobs(tmp_path, monkeypatch):
    _save(tmp_path / "saved", {"train": _reviews(4)}, _classlabel_features())
    monkeypatch.chdir(tmp_path)
    assert canonical_hf_spec("hf:saved?max_eval=3") == (
        f"hf:{(tmp_path / 'saved').resolve()}?max_eval=3"
    )
    assert canonical_hf_spec("hf:nyu-mll/glue:sst2") == "hf:nyu-mll/glue:sst2"


# --------------------------------------------------------------------------- layouts


def test_classlabel_classification_uses_the_class_names_and_drops_hidden_labels(tmp_path):
    folder = _save(
        tmp_path / "sst",
        {
            "train": _reviews(40, hidden={3, 7}),
            "validation": _reviews(10, start=100, hidden={0}),
            "test": _reviews(6, start=200, hidden=set(range(6))),
        },
        _classlabel_features(),
    )
    task = load_task(f"hf:{folder}")
    assert task.name == "sst" and task.scoring == "choice"
    assert task.choices == (" negative", " positive")
    assert task.template == HF_CLASSIFY_TEMPLATE == "Text: {text}\nLabel:"
    assert len(task.train) == 38 and len(task.eval) == 9  # the -1 rows are gone
    for ex in task.train + task.eval:
        assert ex.prompt.startswith("Text: review ") and ex.prompt.endswith("\nLabel:")
        assert ex.choices == task.choices and ex.answer == " " + _gold(ex)
    assert {int(ex.prompt.split()[2]) for ex in task.eval} == set(range(101, 110))
    assert any("evaluation on split 'validation'" in n for n in task.notes)
    assert any("dropped 2 row(s) without a label" in n for n in task.notes)
    assert task.source.startswith(f"hf:{folder} (fingerprint ")
    assert task.licence == HF_LICENCE_UNKNOWN
    free = load_task(f"hf:{folder}", scoring="generate")
    assert free.scoring == "generate" and free.choices is None and free.eval[0].choices is None
    assert free.eval[0].answer in (" negative", " positive")


def test_the_dataset_licence_is_reported(tmp_path):
    from datasets import DatasetInfo

    folder = _save(
        tmp_path / "lic",
        {"train": _reviews(10)},
        _classlabel_features(),
        DatasetInfo(license="cc-by-4.0", features=_classlabel_features()),
    )
    assert load_task(f"hf:{folder}").licence == "cc-by-4.0"


def test_without_a_labelled_eval_split_a_seeded_holdout_is_used(tmp_path):
    folder = _save(
        tmp_path / "held",
        {"train": _reviews(50), "test": _reviews(5, start=90, hidden=set(range(5)))},
        _classlabel_features(),
    )
    task = load_task(f"hf:{folder}")
    assert len(task.eval) == 10 and len(task.train) == 40  # 20 % held out, as for user files
    assert not {ex.prompt for ex in task.eval} & {ex.prompt for ex in task.train}
    assert load_task(f"hf:{folder}").eval == task.eval
    assert any("split 'test' skipped" in n for n in task.notes)
    assert any("held out for evaluation" in n for n in task.notes)
    # A single saved Dataset (no splits) is the train split.
    from datasets import Dataset

    single = tmp_path / "single"
    Dataset.from_dict(_reviews(20), features=_classlabel_features()).save_to_disk(str(single))
    one = load_task(f"hf:{single}")
    assert len(one.train) == 16 and len(one.eval) == 4


def test_prompt_answer_parquet_folder(tmp_path):
    rows = {
        "prompt": [f"Q: {i} plus one?\nA:" for i in range(30)],
        "answer": [str(i + 1) for i in range(30)],
    }
    val = {"prompt": ["Q: 100 plus one?\nA:", "Q: 7 plus one?\nA:"], "answer": ["101", "8"]}
    folder = _parquet_folder(tmp_path / "sums", {"train": rows, "validation": val})
    task = load_task(f"hf:{folder}")
    assert task.template == "{prompt}" and task.scoring == "generate" and task.choices is None
    assert len(task.train) == 30 and len(task.eval) == 2
    assert sorted((ex.prompt, ex.answer) for ex in task.eval) == [
        ("Q: 100 plus one?\nA:", " 101"),
        ("Q: 7 plus one?\nA:", " 8"),
    ]
    assert task.source.startswith(f"hf:{folder}")
    labels = {"prompt": [f"Is {i} even?" for i in range(20)], "answer": ["yes", "no"] * 10}
    yes_no = load_task(f"hf:{_parquet_folder(tmp_path / 'even', {'train': labels})}")
    assert yes_no.scoring == "choice" and yes_no.choices == (" no", " yes")


def test_question_choices_answer_in_every_spelling(tmp_path):
    train = {
        "question": ["Sky colour?", "Two plus two?", "Largest?", "Smallest?"],
        "choices": [["blue", "green"], ["3", "4", "5"], ["ant", "whale"], ["ant", "whale"]],
        "answer": ["blue", "B", "1", "0"],
    }
    folder = _save(tmp_path / "mc", {"train": train, "validation": train})
    task = load_task(f"hf:{folder}")
    assert task.scoring == "choice" and task.template == MC_TEMPLATE
    by_question = {ex.prompt.split("\n")[0]: ex for ex in task.eval}
    assert by_question["Question: Sky colour?"].answer == " A"
    assert by_question["Question: Two plus two?"].answer == " B"
    assert by_question["Question: Two plus two?"].choices == (" A", " B", " C")
    assert by_question["Question: Largest?"].answer == " B"
    assert by_question["Question: Smallest?"].answer == " A"
    assert "A. ant\nB. whale\nAnswer:" in by_question["Question: Smallest?"].prompt
    # Hub style: choices {"text": [...], "label": [...]} and an answer key among the labels,
    # mapped by explicit column names; an integer answer is a 0-based index.
    arc = {
        "stem": ["Which is a gas?", "Which is a metal?"],
        "options": [
            {"text": ["ice", "steam", "rock"], "label": ["1", "2", "3"]},
            {"text": ["iron", "wood"], "label": ["A", "B"]},
        ],
        "key": ["2", "A"],
    }
    spec = f"hf:{_save(tmp_path / 'arc', {'train': arc})}?question=stem&choices=options&answer=key"
    everything = load_task(spec)
    examples = everything.train + everything.eval
    gold = {ex.prompt.split("\n")[0]: ex.answer for ex in examples}
    assert gold == {"Question: Which is a gas?": " B", "Question: Which is a metal?": " A"}
    ints = {"question": ["a?", "b?", "c?"], "choices": [["x", "y"]] * 3, "answer": [1, 0, -1]}
    by_index = load_task(f"hf:{_save(tmp_path / 'idx', {'train': ints})}")
    assert sorted(ex.answer for ex in by_index.train + by_index.eval) == [" A", " B"]
    bad = {"question": ["a?", "b?"], "choices": [["x", "y"]] * 2, "answer": ["z", "x"]}
    with pytest.raises(AlphaLoRAError, match="the answer 'z' is neither one of the choices"):
        load_task(f"hf:{_save(tmp_path / 'bad', {'train': bad})}")


def test_explicit_column_mapping(tmp_path):
    rows = {
        "instruction": [f"Say {w}." for w in ("hi", "bye", "yes", "no")] * 3,
        "output": ["hi", "bye", "yes", "no"] * 3,
        "id": list(range(12)),
    }
    folder = _parquet_folder(tmp_path / "inst", {"train": rows})
    task = load_task(f"hf:{folder}?prompt=instruction&answer=output")
    assert {(ex.prompt, ex.answer) for ex in task.train + task.eval} == {
        ("Say hi.", " hi"),
        ("Say bye.", " bye"),
        ("Say yes.", " yes"),
        ("Say no.", " no"),
    }
    # String labels under other names; integer labels without class names become " 0"/" 1".
    polar = {"body_text": [f"t{i}" for i in range(20)], "polarity": ["pos", "neg"] * 10}
    named = load_task(
        f"hf:{_parquet_folder(tmp_path / 'polar', {'train': polar})}?text=body_text&label=polarity"
    )
    assert named.choices == (" neg", " pos") and named.train[0].prompt.startswith("Text: t")
    ints = {"text": [f"t{i}" for i in range(20)], "stars": [0, 1] * 10}
    numbered = load_task(f"hf:{_parquet_folder(tmp_path / 'ints', {'train': ints})}?label=stars")
    assert numbered.choices == (" 0", " 1") and numbered.scoring == "choice"
    assert any("'text': 'text', 'label': 'stars'" in n for n in numbered.notes)


def test_explicit_eval_split_and_caps_are_seeded(tmp_path):
    folder = _save(
        tmp_path / "big",
        {
            "train": _reviews(300),
            "validation": _reviews(100, start=1000),
            "test": _reviews(10, start=3000),  # labelled too: validation still wins
            "extra": _reviews(30, start=5000),
        },
        _classlabel_features(),
    )
    spec = f"hf:{folder}?max_train=50&max_eval=20"
    task = load_task(spec)
    assert len(task.train) == 50 and len(task.eval) == 20
    assert all(1000 <= int(ex.prompt.split()[2]) < 1100 for ex in task.eval)
    again = load_task(spec)
    assert again.train == task.train and again.eval == task.eval
    other = load_hf_task(spec, seed=1)
    assert [ex.prompt for ex in other.train] != [ex.prompt for ex in task.train]
    assert any("train capped at 50" in n and "of 300" in n for n in task.notes)
    assert any("eval capped at 20" in n and "of 100" in n for n in task.notes)
    assert all(ex.answer == " " + _gold(ex) for ex in task.train + task.eval)
    chosen = load_task(f"hf:{folder}?eval_split=extra")
    assert len(chosen.eval) == 30 and all(int(ex.prompt.split()[2]) >= 5000 for ex in chosen.eval)
    swapped = load_task(f"hf:{folder}?split=validation&eval_split=train&max_eval=5")
    assert len(swapped.train) == 100 and len(swapped.eval) == 5


# --------------------------------------------------------------------------- errors


def test_an_uncached_hub_name_offline_says_what_to_do(_offline_datasets):
    with pytest.raises(AlphaLoRAError) as info:
        load_task("hf:alphalora-tests/never-cached-dataset")
    message = str(info.value)
    assert "alphalora-tests/never-cached-dataset" in message
    assert "HF_DATASETS_CACHE" in message and "HF_HOME" in message
    assert str(_offline_datasets) in message
    assert "Go online once" in message and "save_to_disk" in message and "JSONL" in message


def test_config_errors_list_the_configs(tmp_path):
    folder = tmp_path / "two-configs"
    for config, start in (("small", 0), ("large", 50)):
        _parquet_folder(folder / config, {"train": _reviews(10, start=start)})
    (folder / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: small\n  data_files: small/data/*.parquet\n"
        "- config_name: large\n  data_files: large/data/*.parquet\n---\n",
        encoding="utf-8",
    )
    with pytest.raises(AlphaLoRAError, match="needs one: small, large") as info:
        load_task(f"hf:{folder}")
    assert f"hf:{folder}:small" in str(info.value)
    with pytest.raises(AlphaLoRAError, match="has no config 'medium'.*small, large"):
        load_task(f"hf:{folder}:medium")
    large = load_task(f"hf:{folder}:large?label=label")
    assert large.name == "two-configs:large" and large.choices == (" 0", " 1")
    saved = _save(tmp_path / "saved", {"train": _reviews(4)}, _classlabel_features())
    with pytest.raises(AlphaLoRAError, match="has no configs; drop ':x'"):
        load_task(f"hf:{saved}:x")


def test_column_split_and_label_errors(tmp_path):
    folder = _save(
        tmp_path / "ds",
        {"train": _reviews(10), "validation": _reviews(4, hidden={0, 1, 2, 3})},
        _classlabel_features(),
    )
    with pytest.raises(
        AlphaLoRAError, match=r"no column\(s\) \['review'\].*\['sentence', 'label'\]"
    ):
        load_task(f"hf:{folder}?text=review")
    with pytest.raises(AlphaLoRAError, match=r"no split 'dev'; its splits are \['train', 'valid"):
        load_task(f"hf:{folder}?split=dev")
    with pytest.raises(AlphaLoRAError, match=r"no split 'dev'.*eval_split"):
        load_task(f"hf:{folder}?eval_split=dev")
    with pytest.raises(AlphaLoRAError, match="split 'validation' has no labelled rows"):
        load_task(f"hf:{folder}?eval_split=validation")
    with pytest.raises(AlphaLoRAError, match="split 'validation' has no labelled rows"):
        load_task(f"hf:{folder}?split=validation")
    with pytest.raises(AlphaLoRAError, match=r"do not fit the classification layout"):
        load_task(f"hf:{folder}?text=sentence&answer=label")
    odd = _parquet_folder(tmp_path / "odd", {"train": {"a": [1, 2], "b": [3, 4]}})
    with pytest.raises(AlphaLoRAError, match=r"columns \['a', 'b'\]; no layout was recognised"):
        load_task(f"hf:{odd}")
    mismatch = _save(
        tmp_path / "mismatch",
        {"train": _reviews(6), "validation": {"other": ["x"], "label": [0]}},
    )
    with pytest.raises(AlphaLoRAError, match=r"'validation' lacks the column\(s\) \['sentence'\]"):
        load_task(f"hf:{mismatch}")


def test_missing_empty_and_scripted_folders(tmp_path):
    with pytest.raises(AlphaLoRAError, match="does not exist"):
        load_task(f"hf:{tmp_path / 'nope'}")
    with pytest.raises(AlphaLoRAError, match="does not exist"):
        load_task("hf:./not-here-either")
    (tmp_path / "file.csv").write_text("prompt,answer\na,b\n", encoding="utf-8")
    with pytest.raises(AlphaLoRAError, match="is a file.*without the hf: prefix"):
        load_task(f"hf:{tmp_path / 'file.csv'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AlphaLoRAError, match="holds no data files"):
        load_task(f"hf:{tmp_path / 'empty'}")
    scripted = tmp_path / "scripted"
    scripted.mkdir()
    (scripted / "scripted.py").write_text("raise SystemExit('never run')\n", encoding="utf-8")
    with pytest.raises(AlphaLoRAError, match="loading script, which is unsupported"):
        load_task(f"hf:{scripted}")


def test_load_task_names_the_hf_prefix_for_unknown_tasks():
    with pytest.raises(AlphaLoRAError, match="prefixed with hf:"):
        load_task("glue")
    with pytest.raises(AlphaLoRAError, match="scoring must be one of"):
        load_hf_task("hf:x", scoring="vote")


def test_importing_the_package_does_not_import_datasets():
    import subprocess
    import sys

    code = (
        "import alphalora.finetune.tasks.load, alphalora.finetune.encoding, "
        "alphalora.finetune.scoring, sys; print('datasets' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- end to end


def test_a_saved_dataset_trains_end_to_end(tmp_path):
    from train_helpers import save_tiny_model, toy_reviews

    from alphalora.finetune.train import train
    from alphalora.store.run_store import RunStore

    rows = toy_reviews(40)
    folder = _save(
        tmp_path / "toy",
        {
            "train": {k: [r[k] for r in rows[:32]] for k in ("prompt", "answer")},
            "validation": {k: [r[k] for r in rows[32:]] for k in ("prompt", "answer")},
        },
    )
    result = train(
        {
            "name": "hf-tiny",
            "model": str(save_tiny_model(tmp_path / "model")),
            "task": f"hf:{folder}",
            "allocation": {"experts": [2, 2], "top_k": [1, 1]},
            "steps": 2,
            "batch_size": 4,
            "max_length": 32,
            "eval_examples": 8,
            "lr": 0.01,
            "device": "cpu",
        },
        store=RunStore(),
    )
    assert result["status"] == "completed" and result["steps"] == 2
    summary = RunStore().get_run(result["run_id"])["summary"]
    assert 0 <= summary["accuracy_after"] <= 1


def test_fine_tune_page_accepts_a_saved_dataset_folder(tmp_path, tmp_path_factory, monkeypatch):
    from streamlit.testing.v1 import AppTest
    from test_app_pages import APP, TIMEOUT, seeded_app_home

    monkeypatch.setenv("ALPHALORA_HOME", str(seeded_app_home(tmp_path_factory)))
    monkeypatch.setenv("ALPHALORA_RUNS_DB", str(tmp_path / "runs.sqlite"))
    folder = _save(
        tmp_path / "page-ds",
        {"train": _reviews(30), "validation": _reviews(8, start=100)},
        _classlabel_features(),
    )
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    at.switch_page("pages/3_Fine-tune.py").run()
    at.radio(key="ft_task_mode").set_value("Hugging Face dataset").run()
    assert not at.exception and not at.error
    at.button(key="ft_launch").click().run()
    assert any("Enter a Hugging Face dataset that loads" in e.value for e in at.error)
    at.text_input(key="ft_hf_spec").set_value("hf:nobody/not-cached-here").run()
    assert not at.exception
    assert any("Go online once" in e.value for e in at.error)
    at.text_input(key="ft_hf_spec").set_value(str(folder)).run()  # the hf: prefix is optional
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("page-ds: 30 training and 8 held-out" in s.value for s in at.success)
    assert any("evaluation on split 'validation'" in c.value for c in at.caption)


def test_choice_scoring_with_a_single_class_is_refused(tmp_path):
    reviews = _reviews(8)
    reviews["label"] = [0] * len(reviews["label"])
    folder = _save(tmp_path / "one", {"train": reviews}, _classlabel_features(names=("only",)))
    with pytest.raises(AlphaLoRAError, match="needs at least two classes; the label column has 1"):
        load_hf_task(f"hf:{folder}", scoring="choice")
    assert load_hf_task(f"hf:{folder}").scoring == "generate"

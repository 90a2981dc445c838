"""Fine-tune: launch MoE-LoRA runs as background jobs and watch them live."""

from __future__ import annotations

import hashlib
import re

import streamlit as st

from alphalora.allocation.softmax_rules import alphalora_allocation
from alphalora.errors import AlphaLoRAError
from alphalora.finetune import preflight
from alphalora.finetune.config import DEVICES, load_config
from alphalora.finetune.tasks.hf_spec import HF_PREFIX, canonical_hf_spec
from alphalora.finetune.tasks.load import load_task
from alphalora.finetune.tasks.shipped import ROTTEN_TOMATOES
from alphalora.paths import atomic_write_bytes, subdir
from alphalora.plots.runs import metric_curves_figure, router_load_figure
from alphalora.runs import jobs
from alphalora.runs.seeds import MAX_SEEDS, start_seeded_runs
from alphalora.store.records import ACTIVE_STATUSES
from alphalora.store.run_store import RunStore
from ui import common as ui
from ui.choices import watch_selection
from ui.comparisons import equal_parameter_plan, module_names_from_matrices, training_spec
from ui.run_rows import run_metrics, run_row, show_notice
from ui.state import MOLA_SHAPES, latest_router_load

ui.page_setup("Fine-tune", ":material/rocket_launch:")
st.title("Fine-tune")
st.caption(
    "Each run is a separate background process (`python -m alphalora train`) writing to the "
    "run store; this page only launches and watches. Closing the browser does not stop a run."
)

ctx = ui.model_context()
if ctx is None:
    st.stop()
n_layers: int = ctx["n_layers"]


@st.cache_data(show_spinner=False, max_entries=16)
def _task_summary(spec: str, _version: str) -> dict:
    """Counts and scoring of a task (cached: the shipped task reads 8,530 sentences)."""
    return load_task(spec).summary()


def _save_upload(name: str, data: bytes) -> str:
    """Keep an uploaded task file under the data directory; returns its path."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[-80:] or "task.jsonl"
    digest = hashlib.sha256(data).hexdigest()[:12]
    path = subdir("uploads") / f"{digest}-{stem}"
    if not path.exists():
        atomic_write_bytes(path, data)
    return str(path)


# Every choice on this page survives a visit to another page (Streamlit forgets widgets that
# are off screen): the values are kept in session state and put back here.
base = load_config("demo-cpu")
default_model = ctx["model_ref"]
SHIPPED_MODE, UPLOAD_MODE, HF_MODE = (
    "Shipped demo: Rotten Tomatoes sentiment",
    "Upload a JSONL/CSV file",
    "Hugging Face dataset",
)
CURRENT, UNIFORM, MOLA, LORA = "current", "uniform", "mola", "lora"
RANKS, UNIFORM_LORA = "lora-ranks", "lora-uniform"  # equal-parameter plain-LoRA baselines
ui.remember(
    {
        "ft_model": default_model, "ft_task_mode": SHIPPED_MODE, "ft_hf_spec": "",
        "ft_shape": "2468", "ft_allocs": [CURRENT], "ft_steps": base.steps, "ft_lr": base.lr,
        "ft_batch": base.batch_size, "ft_device": "auto", "ft_len": base.max_length,
        "ft_eval_every": base.eval_every or 0, "ft_eval_n": base.eval_examples or 200,
        "ft_processes": 1, "ft_seeds": 1,
    }
)  # fmt: skip
if st.session_state.get("ft_model_for") != default_model:  # a new model on the Home page
    st.session_state["ft_model_for"] = default_model
    st.session_state["ft_model"] = default_model


def _forget_upload() -> None:
    """The user removed the uploaded file: stop using it."""
    if st.session_state.get("ft_upload") is None:
        st.session_state.pop("ft_task_file", None)


# --------------------------------------------------------------------------- what to train
st.subheader("1 · Model and task")
if ctx["choice"].is_paper:
    st.warning(
        "The paper preset stands for Llama-2-7B: fine-tuning it needs its weights (a hub "
        "download) and a GPU. On a CPU pick the embedded model on the Home page."
    )
model_ref = st.text_input("Model to fine-tune", key="ft_model",
                          help="'embedded', a local Hugging Face folder or a hub id.")  # fmt: skip
task_mode = st.radio("Task", [SHIPPED_MODE, UPLOAD_MODE, HF_MODE], horizontal=True,
                     key="ft_task_mode")  # fmt: skip
task_spec: str | None = ROTTEN_TOMATOES
if task_mode == UPLOAD_MODE:
    task_spec = None
    up = st.file_uploader(
        "Task file: prompt/answer or question/choices/answer columns (JSONL or CSV)",
        type=["jsonl", "json", "csv", "tsv"],
        key="ft_upload",
        on_change=_forget_upload,
    )
    if up is not None:
        try:
            path = _save_upload(up.name, up.getvalue())
            summary = _task_summary(path, path)
        except AlphaLoRAError as exc:
            st.error(f"{up.name}: {exc}")
            st.session_state.pop("ft_task_file", None)
        else:
            task_spec = path
            st.session_state["ft_task_file"] = {"name": up.name, "path": path}
            st.success(f"{up.name}: {summary['n_train']} training and {summary['n_eval']} "
                       f"held-out examples, scored by {summary['scoring']}.")  # fmt: skip
    elif st.session_state.get("ft_task_file"):  # uploaded before a visit to another page
        kept = st.session_state["ft_task_file"]
        task_spec = kept["path"]
        st.caption(f"Using **{kept['name']}**, uploaded earlier (upload another file to "
                   "replace it).")  # fmt: skip
elif task_mode == HF_MODE:
    task_spec = None
    hf_ref = st.text_input(
        "Dataset: hf:NAME or hf:NAME:CONFIG, options after ?",
        key="ft_hf_spec",
        placeholder="hf:cornell-movie-review-data/rotten_tomatoes",
        help="NAME is a hub id (downloaded once when online, then read from the Hugging Face "
        "cache) or a local folder written by save_to_disk or holding parquet/CSV/JSON files. "
        "Options: split, eval_split, text, label, prompt, answer, question, choices, max_train, "
        "max_eval — e.g. hf:nyu-mll/glue:sst2?text=sentence&max_train=5000.",
    )
    if hf_ref.strip():
        ref = hf_ref.strip()
        ref = ref if ref.startswith(HF_PREFIX) else HF_PREFIX + ref
        try:
            ref = canonical_hf_spec(ref)
            with st.spinner("Loading the dataset…"):
                summary = _task_summary(ref, ref)
        except AlphaLoRAError as exc:
            st.error(str(exc))
        else:
            task_spec = ref
            st.success(f"{summary['name']}: {summary['n_train']} training and "
                       f"{summary['n_eval']} held-out examples, scored by {summary['scoring']}. "
                       f"Licence: {summary['licence']}.")  # fmt: skip
            st.caption("; ".join(summary["notes"]))
else:
    try:
        summary = _task_summary(ROTTEN_TOMATOES, "shipped")
        st.caption(f"Rotten Tomatoes sentences: {summary['n_train']} for training, "
                   f"{summary['n_eval']} held out; scored by {summary['scoring']}. Source: "
                   f"{summary['source']} ({summary['licence']}).")  # fmt: skip
    except AlphaLoRAError as exc:
        st.error(str(exc))
        task_spec = None

# --------------------------------------------------------------------------- allocations
st.subheader("2 · Allocations to compare (one run each)")
current = ui.chosen_allocation(ctx["choice"])
if current is None:
    budget = 5 * n_layers
    current = alphalora_allocation(ctx["alphas"], budget, 2.5)
    stored_elsewhere = bool(st.session_state.get(ui.ALLOCATION_KEY))
    other = " (the one stored there was made for another model or fit)" if stored_elsewhere else ""
    st.caption(f"No allocation was stored on the Allocation page for this model{other}: using "
               f"AlphaLoRA with the paper defaults ({budget} experts, β = 2.5).")  # fmt: skip
shape = st.selectbox("MoLA shape", MOLA_SHAPES, key="ft_shape")
LABELS = {
    CURRENT: f"Current: {current.label or current.method} ({current.total} experts)",
    UNIFORM: f"Uniform ({current.total} experts)",
    MOLA: f"MoLA {shape} ({current.total} experts)",
    LORA: "Plain LoRA (no experts, baseline)",
}
if ctx["module_shapes"]:  # equal-parameter baselines need the adapted modules' sizes
    LABELS[RANKS] = "LoRA with ranks by α (same parameters as Current)"
    LABELS[UNIFORM_LORA] = "LoRA with a uniform rank (same parameters as Current)"
st.session_state["ft_allocs"] = [c for c in st.session_state.get("ft_allocs", []) if c in LABELS]
picked = st.multiselect("Runs to launch", list(LABELS), format_func=LABELS.get, key="ft_allocs")
plan = None
if {RANKS, UNIFORM_LORA} & set(picked):
    try:
        plan = equal_parameter_plan(
            current, current.alphas or ctx["alphas"], ctx["module_shapes"],
            module_names_from_matrices(
                None if ctx["analysis"] is None else ctx["analysis"].matrices, n_layers
            ),
        )  # fmt: skip
        st.caption(plan.note())
    except AlphaLoRAError as exc:
        st.error(str(exc))
n_seeds = st.number_input("Seeds per allocation", 1, MAX_SEEDS, key="ft_seeds",
                          help="Each allocation is trained once per seed (seeds 0, 1, …); the "
                          "Runs page then shows the mean over seeds with its 95% interval.")  # fmt: skip

# --------------------------------------------------------------------------- settings
st.subheader("3 · Training settings")
s1, s2, s3, s4 = st.columns(4)
steps = s1.number_input("Steps", 1, 100_000, key="ft_steps")
lr = s2.select_slider("Learning rate", [1e-5, 3e-5, 1e-4, 2e-4, 3e-4, 5e-4, 1e-3, 3e-3, 1e-2],
                      format_func=lambda v: f"{v:.0e}", key="ft_lr")  # fmt: skip
batch = s3.number_input("Batch size", 1, 512, key="ft_batch")
device = s4.selectbox("Device", DEVICES, key="ft_device")
s5, s6, s7 = st.columns(3)
max_len = s5.number_input("Max tokens per example", 8, 4096, key="ft_len")
eval_every = s6.number_input("Evaluate every (steps, 0 = end only)", 0, 100_000,
                             key="ft_eval_every")  # fmt: skip
eval_examples = s7.number_input("Held-out examples", 1, 100_000, key="ft_eval_n")
gpus = ui.cuda_device_count()
processes = 1
if gpus > 1:  # DDP through accelerate launch, one process per GPU
    st.session_state["ft_processes"] = min(int(st.session_state["ft_processes"]), gpus)
    processes = st.number_input(
        "GPUs per run (accelerate launch, DDP)", 1, gpus, key="ft_processes",
        help="Each process trains on its own batch, so the global batch is batch size × GPUs. "
        "Runs launched together each take this many processes.",
    )  # fmt: skip


def _configs() -> list[tuple[str, dict, dict | None]]:
    """(name, config dict, allocation dict for the store) per picked run; raises on bad input."""
    if not picked:
        raise AlphaLoRAError("Pick at least one allocation to launch.")
    if task_spec is None and task_mode == HF_MODE:
        raise AlphaLoRAError("Enter a Hugging Face dataset that loads, or choose the shipped task.")
    if task_spec is None:
        raise AlphaLoRAError("Upload a valid task file first (or choose the shipped task).")
    common = {
        "model": model_ref.strip() or "embedded", "task": task_spec, "steps": int(steps),
        "lr": float(lr), "batch_size": int(batch), "max_length": int(max_len),
        "eval_every": int(eval_every) or None, "eval_examples": int(eval_examples),
        "device": device, "warmup_steps": min(base.warmup_steps, int(steps) // 5),
    }  # fmt: skip
    out = []
    for choice in picked:
        label = LABELS[choice]
        if choice == CURRENT:
            stored = st.session_state.get(ui.ALLOCATION_KEY)
            allocation, name, method = training_spec(current, stored), "alphalora", "moe-lora"
            store_alloc = {**current.to_dict(), **allocation}
        elif choice == UNIFORM:
            allocation, method, name = (
                {"method": "uniform", "budget": current.total},
                "moe-lora",
                "uniform",
            )
            store_alloc = {**allocation, "label": label}
        elif choice == MOLA:
            allocation = {"method": "mola", "shape": shape, "budget": current.total}
            method, name, store_alloc = "moe-lora", f"mola-{shape}", {**allocation, "label": label}
        elif choice in (RANKS, UNIFORM_LORA):
            if plan is None:
                raise AlphaLoRAError("The equal-parameter LoRA baselines could not be sized.")
            ranked = choice == RANKS
            label = plan.ranks.label if ranked else f"LoRA r={plan.uniform_rank} (uniform)"
            store_alloc = {"method": "lora", "label": label}
            extra = {"lora_config": plan.lora_config} if ranked else {"rank": plan.uniform_rank}
            name = "lora-ranks" if ranked else f"lora-r{plan.uniform_rank}"
            config = base.replace(**common, name=name, method="lora", allocation=None, **extra)
            out.append((name, config.to_dict(), store_alloc))
            continue
        else:
            allocation, method, name, store_alloc = (
                None,
                "lora",
                "lora",
                {"method": "lora", "label": label},
            )
        config = base.replace(**common, name=name, method=method, allocation=allocation)
        out.append((name, config.to_dict(), store_alloc))
    return out


def _summary_of(spec: str) -> dict:
    """The task's summary through the page's cache (the shipped task is loaded once)."""
    return _task_summary(spec, "shipped" if spec == ROTTEN_TOMATOES else spec)


def _checked_configs() -> list[tuple[str, dict, dict | None]]:
    """:func:`_configs`, each checked before anything starts (model, task, allocation's layers
    and size): a launch that cannot work is refused here and leaves no failed run behind."""
    configs = _configs()
    ref = model_ref.strip() or "embedded"
    with st.spinner("Checking the model, the task and the allocation…"):
        analysis = ctx["analysis"] if ref == default_model else None
        facts = preflight.model_facts(ref, analysis=analysis)
        for _, cfg, _ in configs:
            preflight.check_launch(cfg, facts=facts, task=_summary_of)
    return configs


if st.button("Launch", type="primary", key="ft_launch"):
    try:
        launched = start_seeded_runs(_checked_configs(), int(n_seeds), num_processes=int(processes))
    except AlphaLoRAError as exc:
        st.error(f"Not launched: {exc}")
    else:
        st.session_state[ui.RUNS_KEY] = launched + [
            r for r in st.session_state[ui.RUNS_KEY] if r not in launched
        ]
        st.success(f"Launched {len(launched)} run(s): {', '.join(launched)}.")

# --------------------------------------------------------------------------- live view
st.subheader("4 · Live")
store = RunStore()
try:
    jobs.reconcile(store)
    listed = store.list_runs()
    active_ids = list(listed.loc[listed["status"].isin(ACTIVE_STATUSES), "run_id"])
except AlphaLoRAError as exc:
    st.error(str(exc))
    st.stop()
# Runs launched in this session, every active run, and those being watched (a run that ends
# while watched stays on screen with its outcome).
watched_before = st.session_state.get("ft_watch", [])
known = [r for r in st.session_state[ui.RUNS_KEY] + watched_before if store.exists(r)]
choices = list(dict.fromkeys(known + active_ids))
previous = st.session_state.get("ft_watch_options", [])
watching = watched_before
if previous != choices or any(r not in choices for r in watching):
    # New runs (launched here or running anywhere) join the watch list, active ones first;
    # vanished ones are dropped; a run the user removed stays removed while it is listed.
    ui.set_selection("ft_watch", watch_selection(choices, active_ids, previous, watching))
    st.session_state["ft_watch_options"] = choices
names = dict(zip(listed["run_id"], listed["name"], strict=True))
watch = ui.selection("Runs to watch", choices, "ft_watch",
                     format_func=lambda r: f"{names.get(r) or 'run'} · {r}")  # fmt: skip
show_notice()


def _render(run_ids: list[str]) -> bool:
    """Status, curves, router load and logs of the watched runs; True if any is active."""
    store = RunStore()
    jobs.reconcile(store)
    runs = [store.get_run(r) for r in run_ids if store.exists(r)]
    if not runs:
        st.info("No run to watch yet: launch one above.")
        return False
    metrics = store.metrics([r["run_id"] for r in runs])
    labels = {r["run_id"]: f"{r.get('name') or ''} {r['run_id'][-4:]}".strip() for r in runs}
    any_active = False
    for run in runs:
        rid = run["run_id"]
        status = run_row(run, run_metrics(metrics, rid), labels[rid], "ft")
        any_active |= status.tone == "active"
        summary = run.get("summary") or {}
        if summary.get("accuracy_after") is not None:
            before = summary.get("accuracy_before")
            st.caption(f"accuracy {'—' if before is None else f'{before:.3f}'} → "
                       f"{summary['accuracy_after']:.3f}"
                       f" · adapter: {run.get('adapter_path')}")  # fmt: skip
        with st.expander(f"Log of {rid}"):
            st.code(jobs.tail_log(rid, 40) or "(no output yet)", language=None)
    g1, g2, g3 = st.columns(3)
    with g1:
        ui.plot(metric_curves_figure(metrics, "train_loss", y_title="task loss (nats/token)",
                                     title="Training loss", labels=labels, split="train"),
                key="ft_loss")  # fmt: skip
    with g2:
        ui.plot(metric_curves_figure(metrics, "aux_loss", y_title="load-balancing loss",
                                     title="Aux (router) loss", labels=labels, split="train"),
                key="ft_aux")  # fmt: skip
    with g3:
        ui.plot(metric_curves_figure(metrics, "accuracy", y_title="accuracy (share correct, 0–1)",
                                     title="Held-out accuracy", labels=labels, split="eval"),
                key="ft_acc")  # fmt: skip
    moe_ids = [r["run_id"] for r in runs if (r.get("config") or {}).get("method") != "lora"]
    if moe_ids:
        if st.session_state.get("ft_router") not in moe_ids:
            st.session_state["ft_router"] = moe_ids[0]
        pick = st.selectbox("Router load of run", moe_ids, format_func=labels.get, key="ft_router")
        step, load = latest_router_load(metrics[metrics["run_id"] == pick])
        ui.plot(router_load_figure(load, title=f"Router load per layer (eval at step {step})"
                                   if step is not None else "Router load per layer"),
                key="ft_router_fig")  # fmt: skip
    ui.csv_download("Download these metrics (CSV)", metrics.drop(columns=["router_load"],
                    errors="ignore"), "metrics.csv", "ft_metrics_csv")  # fmt: skip
    return any_active


@st.fragment(run_every=2)
def live_section(run_ids: list[str]) -> None:
    """Refreshes every 2 s while a watched run is active; a full rerun when all have ended."""
    if not _render(run_ids):
        st.rerun()


def static_section(run_ids: list[str]) -> None:
    """The same view, drawn once (nothing is running)."""
    _render(run_ids)


watched_active = any(r in active_ids for r in watch)
if watched_active:
    live_section(watch)
else:
    static_section(watch)

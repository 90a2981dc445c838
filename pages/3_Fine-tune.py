"""Fine-tune: launch MoE-LoRA runs as background jobs and watch them live."""

from __future__ import annotations

import hashlib
import re

import streamlit as st

from alphalora.allocation.labels import allocation_label
from alphalora.allocation.softmax_rules import alphalora_allocation
from alphalora.errors import AlphaLoRAError
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
from ui.comparisons import equal_parameter_plan, module_names_from_matrices, training_spec
from ui.state import MOLA_SHAPES, check_layers, latest_router_load

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


# --------------------------------------------------------------------------- what to train
st.subheader("1 · Model and task")
default_model = ctx["model_ref"]
if ctx["choice"].is_paper:
    st.warning(
        "The paper preset stands for Llama-2-7B: fine-tuning it needs its weights (a hub "
        "download) and a GPU. On a CPU pick the embedded model on the Home page."
    )
model_ref = st.text_input("Model to fine-tune", value=default_model, key="ft_model",
                          help="'embedded', a local Hugging Face folder or a hub id.")  # fmt: skip
HF_MODE = "Hugging Face dataset"
task_mode = st.radio(
    "Task",
    ["Shipped demo: Rotten Tomatoes sentiment", "Upload a JSONL/CSV file", HF_MODE],
    horizontal=True,
    key="ft_task_mode",
)
task_spec: str | None = ROTTEN_TOMATOES
if task_mode.startswith("Upload"):
    task_spec = None
    up = st.file_uploader(
        "Task file: prompt/answer or question/choices/answer columns (JSONL or CSV)",
        type=["jsonl", "json", "csv", "tsv"],
        key="ft_upload",
    )
    if up is not None:
        try:
            path = _save_upload(up.name, up.getvalue())
            summary = _task_summary(path, path)
        except AlphaLoRAError as exc:
            st.error(f"{up.name}: {exc}")
        else:
            task_spec = path
            st.success(f"{up.name}: {summary['n_train']} training and {summary['n_eval']} "
                       f"held-out examples, scored by {summary['scoring']}.")  # fmt: skip
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
current = ui.chosen_allocation()
if current is None:
    budget = 5 * n_layers
    current = alphalora_allocation(ctx["alphas"], budget, 2.5)
    st.caption("No allocation was stored on the Allocation page: using AlphaLoRA with the paper "
               f"defaults ({budget} experts, β = 2.5).")  # fmt: skip
shape = st.selectbox("MoLA shape", MOLA_SHAPES, index=1, key="ft_shape")
CURRENT = f"Current: {current.label or current.method} ({current.total} experts)"
UNIFORM = f"Uniform ({current.total} experts)"
MOLA = f"MoLA {shape} ({current.total} experts)"
LORA = "Plain LoRA (no experts, baseline)"
RANKS = "LoRA with ranks by α (same parameters as Current)"
UNIFORM_LORA = "LoRA with a uniform rank (same parameters as Current)"
offered = [CURRENT, UNIFORM, MOLA, LORA]
if ctx["module_shapes"]:  # equal-parameter baselines need the adapted modules' sizes
    offered += [RANKS, UNIFORM_LORA]
picked = st.multiselect("Runs to launch", offered, default=[CURRENT], key="ft_allocs")
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
n_seeds = st.number_input("Seeds per allocation", 1, MAX_SEEDS, value=1, key="ft_seeds",
                          help="Each allocation is trained once per seed (seeds 0, 1, …); the "
                          "Runs page then shows the mean over seeds with its 95% interval.")  # fmt: skip

# --------------------------------------------------------------------------- settings
st.subheader("3 · Training settings")
base = load_config("demo-cpu")
s1, s2, s3, s4 = st.columns(4)
steps = s1.number_input("Steps", 1, 100_000, value=base.steps, key="ft_steps")
lr = s2.select_slider("Learning rate", [1e-5, 3e-5, 1e-4, 2e-4, 3e-4, 5e-4, 1e-3, 3e-3, 1e-2],
                      value=base.lr, format_func=lambda v: f"{v:.0e}", key="ft_lr")  # fmt: skip
batch = s3.number_input("Batch size", 1, 512, value=base.batch_size, key="ft_batch")
device = s4.selectbox("Device", DEVICES, key="ft_device")
s5, s6, s7 = st.columns(3)
max_len = s5.number_input("Max tokens per example", 8, 4096, value=base.max_length, key="ft_len")
eval_every = s6.number_input("Evaluate every (steps, 0 = end only)", 0, 100_000,
                             value=base.eval_every or 0, key="ft_eval_every")  # fmt: skip
eval_examples = s7.number_input("Held-out examples", 1, 100_000, value=base.eval_examples or 200,
                                key="ft_eval_n")  # fmt: skip
gpus = ui.cuda_device_count()
processes = 1
if gpus > 1:  # DDP through accelerate launch, one process per GPU
    processes = st.number_input(
        "GPUs per run (accelerate launch, DDP)", 1, gpus, value=1, key="ft_processes",
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
        if choice == CURRENT:
            if model_ref.strip() == default_model:
                check_layers(current, n_layers, ctx["label"])
            stored = st.session_state.get(ui.ALLOCATION_KEY)
            allocation, name, method = training_spec(current, stored), "alphalora", "moe-lora"
            store_alloc = {**current.to_dict(), **allocation}
        elif choice == UNIFORM:
            allocation, method, name = (
                {"method": "uniform", "budget": current.total},
                "moe-lora",
                "uniform",
            )
            store_alloc = {**allocation, "label": choice}
        elif choice == MOLA:
            allocation = {"method": "mola", "shape": shape, "budget": current.total}
            method, name, store_alloc = "moe-lora", f"mola-{shape}", {**allocation, "label": choice}
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
                {"method": "lora", "label": choice},
            )
        config = base.replace(**common, name=name, method=method, allocation=allocation)
        out.append((name, config.to_dict(), store_alloc))
    return out


if st.button("Launch", type="primary", key="ft_launch"):
    try:
        launched = start_seeded_runs(_configs(), int(n_seeds), num_processes=int(processes))
    except AlphaLoRAError as exc:
        st.error(str(exc))
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
known = [r for r in st.session_state[ui.RUNS_KEY] if store.exists(r)]
choices = list(dict.fromkeys(known + active_ids))
previous = st.session_state.get("ft_watch_options", [])
if previous != choices:  # new runs appear selected; vanished ones are dropped
    fresh = [r for r in choices if r not in previous]
    kept = [r for r in st.session_state.get("ft_watch", []) if r in choices]
    st.session_state["ft_watch"] = list(dict.fromkeys(fresh + kept))[:4]
    st.session_state["ft_watch_options"] = choices
watch = st.multiselect("Runs to watch", choices, key="ft_watch")


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
        rid, status = run["run_id"], run["status"]
        active = status in ACTIVE_STATUSES
        any_active |= active
        steps_total = int((run.get("config") or {}).get("steps") or 1)
        done = metrics[(metrics["run_id"] == rid) & (metrics["split"] == "train")]["step"]
        step = int(done.max()) if len(done) else 0
        c1, c2, c3 = st.columns([3, 4, 1])
        c1.markdown(f"**{labels[rid]}** · `{status}`")
        c1.caption(allocation_label(run.get("allocation"), (run.get("config") or {}).get("method")))
        c2.progress(min(step / steps_total, 1.0), text=f"step {step}/{steps_total}")
        if active and c3.button("Cancel", key=f"cancel_{rid}"):
            st.toast(jobs.cancel_run(rid, store=store, timeout=10))
        if run.get("error"):
            st.error(f"Run {rid} ({status}): {run['error']}")
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

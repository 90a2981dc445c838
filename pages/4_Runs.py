"""Runs: every stored fine-tune, filterable; compare several side by side; download adapters."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from alphalora.errors import AlphaLoRAError
from alphalora.plots.compare import seed_curve_figure, seed_group_figure
from alphalora.plots.runs import metric_curves_figure, run_comparison_figure
from alphalora.runs import jobs
from alphalora.runs.compare_runs import interval_table, pairwise_table
from alphalora.runs.seeds import seed_curves, seed_groups
from alphalora.store.records import ACTIVE_STATUSES, STATUSES
from alphalora.store.run_store import RunStore
from ui import common as ui
from ui.choices import default_comparison
from ui.comparisons import add_intervals, pair_messages
from ui.run_rows import run_metrics, run_row, show_notice
from ui.state import runs_comparison_table

ui.page_setup("Runs", ":material/history:")
st.title("Runs")

store = RunStore()
try:
    jobs.reconcile(store)
except AlphaLoRAError as exc:
    st.error(str(exc))
    st.stop()

# The filter and the runs compared survive a visit to another page.
ui.remember({"runs_status": "all", "runs_search": ""})
f1, f2 = st.columns([1, 3])
status = f1.selectbox("Status", ["all", *STATUSES], key="runs_status")
search = f2.text_input("Search (id, name, method, model, task, device, error)", key="runs_search")
try:
    listed = store.list_runs(status=None if status == "all" else status, search=search or None)
except AlphaLoRAError as exc:
    st.error(str(exc))
    st.stop()

if listed.empty:
    st.info("No runs match. Launch fine-tunes on the Fine-tune page (or `python -m alphalora "
            "train`).")  # fmt: skip
    st.stop()

st.dataframe(listed, hide_index=True, width="stretch")
ui.csv_download("Download this list (CSV)", listed, "runs.csv", "runs_list_csv")

labels = {
    row.run_id: f"{row.name or row.method or 'run'} · {row.run_id} · {row.status}"
    for row in listed.itertuples()
}
options = list(listed["run_id"])
finished = list(listed.loc[listed["status"] == "completed", "run_id"])
active = list(listed.loc[listed["status"].isin(ACTIVE_STATUSES), "run_id"])
chosen = st.session_state.get("runs_selected", [])
kept = [r for r in chosen if r in options]
if st.session_state.get("runs_options") != options or kept != chosen:
    # The list changed (filter, new runs): keep what is still listed, else running runs first.
    st.session_state["runs_options"] = options
    ui.set_selection("runs_selected", kept or default_comparison(options, active, finished))
selected = ui.selection("Runs to compare", options, "runs_selected", format_func=labels.get)
if not selected:
    st.stop()

runs = [store.get_run(r) for r in selected]
table = add_intervals(runs_comparison_table(runs), interval_table(runs))
short = {r["run_id"]: f"{r.get('name') or 'run'} {r['run_id'][-4:]}" for r in runs}
table["label"] = [short[r] for r in table["run_id"]]

st.subheader("Side by side")
st.dataframe(table, hide_index=True, width="stretch")
ui.csv_download("Download the comparison (CSV)", table, "runs-comparison.csv", "runs_cmp_csv")
c1, c2 = st.columns(2)
with c1:
    ui.plot(run_comparison_figure(table), key="runs_acc")
metrics = store.metrics(selected)
with c2:
    ui.plot(metric_curves_figure(metrics, "accuracy", y_title="accuracy (share correct, 0–1)",
                                 title="Held-out accuracy during training", labels=short,
                                 split="eval"), key="runs_acc_curve")  # fmt: skip
c3, c4 = st.columns(2)
with c3:
    ui.plot(metric_curves_figure(metrics, "train_loss", y_title="task loss (nats/token)",
                                 title="Training loss", labels=short, split="train"),
            key="runs_loss")  # fmt: skip
with c4:
    ui.plot(metric_curves_figure(metrics, "eval_loss", y_title="held-out loss (nats/token)",
                                 title="Held-out loss", labels=short, split="eval"),
            key="runs_eval_loss")  # fmt: skip
ui.csv_download("Download these metrics (CSV)", metrics.drop(columns=["router_load"],
                errors="ignore"), "runs-metrics.csv", "runs_metrics_csv")  # fmt: skip

st.subheader("Is the difference real?")
st.caption("Bars show each accuracy's 95% Wilson interval. Runs scored on the same held-out "
           "examples are compared example by example (McNemar's exact test; the difference's "
           "interval is a paired bootstrap). p ≥ 0.05 means the difference is within noise.")  # fmt: skip
done = [r for r in runs if r["status"] == "completed"]
if len(done) > 1:
    pairs = pairwise_table(done)
    for kind, message in pair_messages(pairs):
        (st.success if kind == "success" else st.info)(message)
    with st.expander("Paired tests (table)"):
        st.dataframe(pairs, hide_index=True, width="stretch", key="runs_pairs")
groups = seed_groups(runs)
if not groups.empty and int(groups["n_seeds"].max()) > 1:
    st.caption("Runs launched with several seeds: mean over seeds with its 95% interval "
               "(Student t).")  # fmt: skip
    s1, s2 = st.columns(2)
    with s1:
        ui.plot(seed_group_figure(groups), key="runs_seed_groups")
    with s2:
        ui.plot(seed_curve_figure(seed_curves(metrics, groups, "accuracy")), key="runs_seed_curve")

st.subheader("Adapters and actions")
show_notice()
for run in runs:
    rid = run["run_id"]
    run_row(run, run_metrics(metrics, rid), short[rid], "runs")
    adapter = run.get("adapter_path")
    if adapter and Path(adapter).is_dir():
        st.download_button(
            "Download adapter (zip)",
            data=lambda folder=adapter: ui.zip_folder(folder),
            file_name=f"adapter-{rid}.zip",
            mime="application/zip",
            key=f"runs_zip_{rid}",
            on_click="ignore",
        )

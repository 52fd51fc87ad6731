"""The page: Train and Watch here, Data, Chat and Export in :mod:`xtune.board.tabs`.

Every handler turns a user error into a message on the page (``**error:** ...``) instead of a stack
trace; the board keeps serving.
"""

import functools
import logging
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import pandas as pd

from xtune.board import form as F
from xtune.board.chat import BoardChat
from xtune.board.runs import (
    Jobs,
    last_checkpoint,
    list_runs,
    log_tail,
    loss_points,
    read_progress,
    run_status,
    summary,
)
from xtune.board.stages import STAGES
from xtune.errors import XtuneError

LOG = logging.getLogger("xtune.board")
REFRESH_SECONDS = 1.5
CSS = ".xt-code textarea, .xt-log textarea {font-family: monospace; font-size: 12px}"


@dataclass
class Board:
    """What every browser session shares: the runs root, the training children and the chat model."""

    root: Path
    jobs: Jobs = field(default_factory=Jobs)
    chat: BoardChat = field(default_factory=BoardChat)

    def run_names(self) -> list[str]:
        return [path.name for path in list_runs(self.root)]

    def work_dir(self, name: str) -> Path:
        if not name:
            raise XtuneError("pick a run first.")
        path = self.root / name
        if not path.is_dir():
            raise XtuneError(f"no run '{name}' under {self.root}.")
        return path


def error_text(exc: Exception) -> str:
    if isinstance(exc, XtuneError):
        return f"**error:** {exc}"
    LOG.error("board handler failed:\n%s", traceback.format_exc())
    return f"**error:** {type(exc).__name__}: {exc}"


def reports_errors(outputs: int, status_index: int = 0):
    """Wrap a handler: a raised error becomes the status output's text; other outputs stay unchanged."""

    def wrap(handler):
        @functools.wraps(handler)
        def run(*args):
            try:
                return handler(*args)
            except Exception as exc:  # noqa: BLE001  (shown on the page; the board keeps serving)
                result = [gr.update() for _ in range(outputs)]
                result[status_index] = error_text(exc)
                return result[0] if outputs == 1 else tuple(result)

        return run

    return wrap


# ----------------------------------------------------------------------------- Train
def _form_components() -> dict[str, gr.components.Component]:
    """The Train form's inputs, keyed by :class:`TrainForm` field."""
    d = F.form_from_config(F.NEW_CONFIG)
    c: dict[str, gr.components.Component] = {}
    with gr.Row():
        c["config"] = gr.Dropdown(
            [F.NEW_CONFIG, *F.config_names()],
            value=F.NEW_CONFIG,
            label="Config (type to search, as xtune list-cfg)",
            filterable=True,
            elem_id="config",
            scale=3,
        )
        c["run_name"] = gr.Textbox(d.run_name, label="Run name (work dir under the root)", elem_id="run_name", scale=2)
    with gr.Row():
        c["model"] = gr.Textbox(d.model, label="Model (folder, hub name or shipped name)", elem_id="model", scale=2)
        c["finetune_type"] = gr.Dropdown(list(F.finetune_types()), value=d.finetune_type, label="Finetune type")
        c["stage"] = gr.Dropdown(list(STAGES), value=d.stage, label="Stage", elem_id="stage")
        c["template"] = gr.Dropdown(F.templates(), value=d.template, label="Prompt template")
    with gr.Row():
        c["data_path"] = gr.Dropdown(
            F.registry_datasets(),
            value=d.data_path,
            allow_custom_value=True,
            label="Dataset (registry name, or type a file path)",
            elem_id="data_path",
            scale=2,
        )
        c["data_format"] = gr.Dropdown(F.data_formats(), value=d.data_format, label="Data format")
    with gr.Row():
        c["lr"] = gr.Textbox(str(d.lr), label="Learning rate", elem_id="lr")
        c["epochs"] = gr.Number(d.epochs, label="Epochs", precision=0, elem_id="epochs")
        c["max_length"] = gr.Number(d.max_length, label="Max length", precision=0)
        c["batch_size"] = gr.Number(d.batch_size, label="Batch size (per device)", precision=0)
        c["accumulation"] = gr.Number(d.accumulation, label="Gradient accumulation", precision=0)
    with gr.Row():
        c["lora_r"] = gr.Number(d.lora_r, label="LoRA r", precision=0)
        c["lora_alpha"] = gr.Number(d.lora_alpha, label="LoRA alpha")
        c["lora_targets"] = gr.Textbox(d.lora_targets, label="LoRA targets (all-linear or a,b,c)")
        c["packing"] = gr.Checkbox(d.packing, label="Pack to max length")
    with gr.Row():
        c["dtype"] = gr.Dropdown(list(F.DTYPE_CHOICES), value=d.dtype, label="dtype")
        c["deepspeed"] = gr.Dropdown([F.NO_DEEPSPEED, *F.deepspeed_presets()], value=d.deepspeed, label="DeepSpeed")
        c["gpus"] = gr.Number(d.gpus, label="GPUs (processes)", precision=0)
        c["save_steps"] = gr.Number(d.save_steps, label="Save every N steps", precision=0)
        c["log_interval"] = gr.Number(d.log_interval, label="Log every N iterations", precision=0)
    with gr.Row():
        c["name"] = gr.Textbox(d.name, label="Identity name ({{name}} in the data)")
        c["author"] = gr.Textbox(d.author, label="Identity author ({{author}})")
    for name, component in c.items():
        component.elem_id = name  # stable handles for tests and user scripts
    return c


def read_form(values) -> F.TrainForm:
    return F.TrainForm(**dict(zip(F.FORM_FIELDS, values, strict=True)))


def build_train(board: Board, watch_run: gr.Dropdown) -> dict[str, gr.components.Component]:
    components = _form_components()
    inputs = [components[name] for name in F.FORM_FIELDS]
    with gr.Row():
        preview = gr.Button("Preview command and config", elem_id="preview")
        start = gr.Button("Start", variant="primary", elem_id="start")
        stop = gr.Button("Stop (saves, can resume)", variant="stop", elem_id="stop")
        resume = gr.Button("Resume", elem_id="resume")
    status = gr.Markdown(elem_id="train-status")
    command = gr.Textbox(label="The command (run it in a shell to do the same)", elem_id="command", lines=2)
    with gr.Accordion("Resolved config (xtune print-config)", open=False):
        resolved = gr.Code(language="python", elem_id="resolved")

    def fill(config, *values):
        current = read_form(values)
        if current.stage not in STAGES:
            current.stage = "sft"  # leaving a shipped config (whose stage was not editable)
        filled = F.form_from_config(config, current if config == F.NEW_CONFIG else None)
        updates = [getattr(filled, name) for name in F.FORM_FIELDS]
        stage_index = F.FORM_FIELDS.index("stage")
        updates[stage_index] = gr.update(value=filled.stage or None, interactive=config == F.NEW_CONFIG)
        return [*updates, ""]

    def new_stage(stage, *values):
        current = read_form(values)
        if current.config != F.NEW_CONFIG or stage not in STAGES:
            return [gr.update() for _ in F.FORM_FIELDS] + [""]
        current.data_path, current.data_format = STAGES[stage].default_data, F.AUTO_FORMAT
        return fill(F.NEW_CONFIG, *[getattr(current, name) for name in F.FORM_FIELDS])

    components["config"].input(
        reports_errors(len(inputs) + 1, len(inputs))(lambda config, *values: fill(config, *values)),
        [components["config"], *inputs],
        [*inputs, status],
    )
    components["stage"].input(
        reports_errors(len(inputs) + 1, len(inputs))(lambda stage, *values: new_stage(stage, *values)),
        [components["stage"], *inputs],
        [*inputs, status],
    )

    @reports_errors(3)
    def do_preview(*values):
        plan = F.plan_run(read_form(values), board.root)
        return "config resolves; nothing started yet.", plan.command(), plan.resolved_config()

    def start_run(values, resume: bool):
        form = read_form(values)
        plan = F.plan_run(form, board.root)
        plan.load()  # a config that does not resolve fails here, not in the child
        has_run = last_checkpoint(plan.work_dir) or (plan.work_dir / "board_run.json").exists()
        if resume and not last_checkpoint(plan.work_dir):
            raise XtuneError(f"nothing to resume in {plan.work_dir}: it has no checkpoint yet. Press Start.")
        if not resume and has_run:
            raise XtuneError(
                f"{plan.work_dir} holds a run already: press Resume to continue it, or change the run name."
            )
        plan.write_config()
        board.jobs.start(plan.args(resume), plan.work_dir, plan.env(), plan.command(resume))
        verb = "resumed" if resume else "started"
        message = f"{verb} **{form.run_name}**; follow it in the Watch tab."
        return message, plan.command(resume), gr.update(choices=board.run_names(), value=form.run_name), gr.update()

    @reports_errors(1)
    def do_stop():
        job = board.jobs.active()
        if job is None:
            raise XtuneError("no run is training.")
        job.stop()
        return f"stopping **{job.work_dir.name}**: it finishes the current step, saves a checkpoint and exits."

    preview.click(do_preview, inputs, [status, command, resolved])
    start.click(
        reports_errors(4)(lambda *values: start_run(values, False)), inputs, [status, command, watch_run, resolved]
    )
    resume.click(
        reports_errors(4)(lambda *values: start_run(values, True)), inputs, [status, command, watch_run, resolved]
    )
    stop.click(do_stop, None, status)
    return components


# ----------------------------------------------------------------------------- Watch
def progress_text(board: Board, name: str) -> str:
    work_dir = board.work_dir(name)
    job = board.jobs.get(work_dir)
    status = run_status(work_dir, job)
    progress = read_progress(work_dir, finished=status == "finished")
    parts = [f"**{name}**: {status}"]
    if progress.total:
        parts.append(f"iteration {progress.iter}/{progress.total} ({progress.iter / progress.total:.0%})")
    elif status == "running":
        parts.append(f"iteration {progress.iter} (starting: building the model and data)")
    if progress.eta and status == "running":
        parts.append(f"ETA {progress.eta}")
    if progress.tokens_per_sec is not None:
        parts.append(f"{progress.tokens_per_sec:,.0f} tokens/s")
    if progress.loss is not None:
        parts.append(f"loss {progress.loss:.4f}")
    text = " · ".join(parts)
    if status.startswith("failed"):
        lines = log_tail(work_dir, lines=50, width=400).splitlines()
        # xtune's own one-line error, else the exception a traceback ends with
        cause = next((line for line in reversed(lines) if line.startswith("xtune: error:")), None)
        cause = cause or next((line for line in reversed(lines) if re.match(r"^\w+(Error|Exception)\b", line)), "")
        text += f"\n\n**Training failed.** {cause} (the log below has its last lines)"
    elif status == "stopped":
        text += "\n\nStopped with a checkpoint: press Resume in the Train tab (same run name) to continue."
    return text


def loss_frame(board: Board, names: list[str]) -> pd.DataFrame:
    rows = [
        {"step": step, "loss": loss, "run": name} for name in names for step, loss in loss_points(board.root / name)
    ]
    return pd.DataFrame(rows, columns=["step", "loss", "run"])


def build_watch(board: Board) -> tuple[gr.Dropdown, gr.Dropdown]:
    with gr.Row():
        run = gr.Dropdown(board.run_names(), label="Run", elem_id="watch-run", scale=3)
        refresh = gr.Button("Refresh run list", scale=1)
    progress = gr.Markdown(elem_id="progress")
    plot = gr.LinePlot(x="step", y="loss", title="Loss (from scalars.json)", elem_id="loss-plot", height=280)
    points = gr.Markdown(elem_id="loss-points")
    log = gr.Textbox(label="Log (last lines)", lines=12, max_lines=40, elem_id="log-tail", elem_classes="xt-log")
    result = gr.JSON(label="Summary", elem_id="summary")
    with gr.Accordion("Compare runs", open=False):
        compare = gr.Dropdown(board.run_names(), multiselect=True, label="Runs", elem_id="compare-runs")
        compare_plot = gr.LinePlot(x="step", y="loss", color="run", title="Loss by run", height=280)
        table = gr.Dataframe(label="Runs", elem_id="compare-table")

    def tick(name):
        if not name:
            return "Pick a run (or start one in Train).", gr.update(), "", "", None
        work_dir = board.work_dir(name)
        frame = loss_frame(board, [name])
        count = f"{len(frame)} loss points" + (f", last {frame['loss'].iloc[-1]:.4f}" if len(frame) else "")
        status = run_status(work_dir, board.jobs.get(work_dir))
        return (
            progress_text(board, name),
            frame,
            count,
            log_tail(work_dir, lines=20, width=240),
            summary(work_dir) if status != "running" else None,
        )

    def do_compare(names):
        names = names or []
        rows = [
            {"run": name, **{k: v for k, v in summary(board.root / name).items() if k != "eval_answers"}}
            for name in names
        ]
        return loss_frame(board, names), pd.DataFrame(rows)

    outputs = [progress, plot, points, log, result]
    safe_tick = reports_errors(len(outputs))(tick)
    gr.Timer(REFRESH_SECONDS).tick(safe_tick, run, outputs, show_progress="hidden")
    run.change(safe_tick, run, outputs)
    refresh.click(_run_lists(board, 2), None, [run, compare])
    compare.change(do_compare, compare, [compare_plot, table])
    return run, compare


def _run_lists(board: Board, count: int):
    """A handler giving ``count`` run dropdowns the current runs."""

    def update():
        choices = board.run_names()
        return [gr.update(choices=choices) for _ in range(count)] if count > 1 else gr.update(choices=choices)

    return update


def build_app(root: str | Path) -> tuple[gr.Blocks, Board]:
    """The board's page over the work dirs under ``root``."""
    from xtune.board.tabs import build_chat, build_data, build_export

    board = Board(Path(root).expanduser().resolve())
    board.root.mkdir(parents=True, exist_ok=True)
    with gr.Blocks(title="xtune board") as demo:
        gr.Markdown(
            f"## xtune board\nRuns live under `{board.root}`. Everything here is an xtune command; "
            "the Train tab shows the exact one."
        )
        with gr.Tabs():
            with gr.Tab("Train", id="train"):
                train_tab = gr.Column()  # filled below: Start updates the Watch tab's run list
            with gr.Tab("Watch", id="watch") as watch_tab:
                watch_run, compare_runs = build_watch(board)
            with gr.Tab("Data", id="data"):
                data_tab = gr.Column()
            with gr.Tab("Chat", id="chat") as chat_tab:
                chat_run = build_chat(board)
            with gr.Tab("Export", id="export") as export_tab:
                export_run = build_export(board)
        with train_tab:
            form = build_train(board, watch_run)
        with data_tab:
            build_data(board, form)
        for tab, runs in ((watch_tab, [watch_run, compare_runs]), (chat_tab, [chat_run]), (export_tab, [export_run])):
            # the runs started since the page was built
            tab.select(_run_lists(board, len(runs)), None, runs)
    return demo, board

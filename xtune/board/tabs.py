"""The Data, Chat and Export tabs (Train and Watch are in :mod:`xtune.board.app`)."""

import gradio as gr

from xtune.board import form as F
from xtune.board.app import Board, error_text, read_form, reports_errors
from xtune.board.chat import SOURCES
from xtune.board.data import preview_dataset
from xtune.board.export import plan_export, run_steps
from xtune.board.runs import last_checkpoint, run_config
from xtune.chat.session import GenerationSettings


def build_data(board: Board, form: dict) -> None:
    """Rows of the Train form's dataset as the model sees them (``xtune check-dataset``)."""
    gr.Markdown("The dataset of the Train tab's form, as the model sees it: untrained parts are `[-100: ...]`.")
    with gr.Row():
        count = gr.Number(3, label="Rows to show", precision=0, elem_id="data-count")
        show = gr.Button("Preview data", variant="primary", elem_id="data-preview")
    status = gr.Markdown(elem_id="data-status")
    problems = gr.Markdown(elem_id="data-problems")
    stats = gr.JSON(label="Statistics", elem_id="data-stats")
    rows = gr.Textbox(label="Rows", lines=16, elem_id="data-rows", elem_classes="xt-log")

    @reports_errors(4)
    def do_preview(count, *values):
        plan = F.plan_run(read_form(values), board.root)
        preview = preview_dataset(plan.load(), int(count or 0))
        if preview.problems:
            lines = "\n".join(f"- {problem}" for problem in preview.problems[:50])
            more = f"\n- ... and {len(preview.problems) - 50} more" if len(preview.problems) > 50 else ""
            note = (
                "Training stops at the first bad row (set `train_dataset.skip_bad_rows=True` to skip them)."
                if preview.fails_training
                else "These rows are skipped in training."
            )
            problem_text = f"**{len(preview.problems)} rows dropped.** {note}\n{lines}{more}"
        else:
            problem_text = "No bad rows."
        return f"{preview.statistics['samples']} samples.", problem_text, preview.statistics, "\n".join(preview.rows)

    show.click(do_preview, [count, *[form[name] for name in F.FORM_FIELDS]], [status, problems, stats, rows])


def build_chat(board: Board) -> gr.Dropdown:
    """Load a model, an adapter, a training checkpoint or a merged model and chat with it."""
    with gr.Row():
        source = gr.Radio(list(SOURCES), value=SOURCES[2], label="Load", elem_id="chat-source", scale=2)
        run = gr.Dropdown(board.run_names(), label="Run (fills the paths)", elem_id="chat-run", scale=2)
    with gr.Row():
        config = gr.Textbox(label="Run config", elem_id="chat-config")
        checkpoint = gr.Textbox(label="Checkpoint", elem_id="chat-checkpoint")
        model = gr.Textbox(label="Model folder or hub name", elem_id="chat-model")
        adapter = gr.Textbox(label="Adapter folder", elem_id="chat-adapter")
        template = gr.Dropdown(F.templates(), value="auto", label="Template (model folders)")
    load = gr.Button("Load", variant="primary", elem_id="chat-load")
    status = gr.Markdown(elem_id="chat-status")
    with gr.Row():
        system = gr.Textbox(label="System prompt", elem_id="chat-system", scale=3)
        temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature (0: greedy)", elem_id="chat-temperature")
        top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="Top p")
        top_k = gr.Slider(0, 200, value=50, step=1, label="Top k")
        max_new = gr.Slider(1, 4096, value=512, step=1, label="Max new tokens", elem_id="chat-max-new")
        penalty = gr.Slider(1, 2, value=1.0, step=0.05, label="Repetition penalty")
    chatbot = gr.Chatbot(label="Chat", elem_id="chatbot", height=320)
    with gr.Row():
        message = gr.Textbox(placeholder="Say something", show_label=False, elem_id="chat-input", scale=4)
        send = gr.Button("Send", variant="primary", elem_id="chat-send")
        clear = gr.Button("Clear history", elem_id="chat-clear")
    # image_mode=None: the uploaded file as it is (not re-encoded), so the model sees what `xtune chat --image` does
    image = gr.Image(
        type="filepath",
        image_mode=None,
        sources=["upload", "clipboard"],
        label="Image for the next message (vision-language models)",
        elem_id="chat-image",
        height=160,
    )

    @reports_errors(4, 0)
    def pick_run(name):
        work_dir = board.work_dir(name)
        cfg_path = run_config(work_dir)
        hf = next((work_dir / n for n in ("hf", "hf_merged") if (work_dir / n).is_dir()), None)
        return "", str(cfg_path or ""), last_checkpoint(work_dir) or "", str(hf or "")

    @reports_errors(1)
    def do_load(source, config, checkpoint, model, adapter, template):
        return board.chat.load(source, model, adapter, config, checkpoint, template)

    def respond(text, picture, history, system, temperature, top_p, top_k, max_new, penalty):
        history = list(history or [])
        if not (text or "").strip():
            yield history, text, picture, "type a message first."
            return
        settings = GenerationSettings(int(max_new), float(temperature), float(top_p), int(top_k), float(penalty))
        images = [picture] if picture else []
        # the image is a file part of the user's message: shown in the history, read again next turn
        asked = [*history, {"role": "user", "content": [*({"path": path} for path in images), text]}]
        try:
            for partial in board.chat.stream(text, history, system, settings, images=images):
                yield [*asked, {"role": "assistant", "content": partial}], "", None, ""
        except Exception as exc:  # noqa: BLE001  (shown on the page)
            yield history, text, picture, error_text(exc)

    run.change(pick_run, run, [status, config, checkpoint, model])
    load.click(do_load, [source, config, checkpoint, model, adapter, template], status)
    inputs = [message, image, chatbot, system, temperature, top_p, top_k, max_new, penalty]
    answering = [
        send.click(respond, inputs, [chatbot, message, image, status]),
        message.submit(respond, inputs, [chatbot, message, image, status]),
    ]
    # Clear also stops an answer still being written, which would otherwise refill the history.
    clear.click(lambda: ([], ""), None, [chatbot, status], cancels=answering)
    return run


def build_export(board: Board) -> gr.Dropdown:
    """``xtune convert pth_to_hf`` and ``merge --verify`` for a run's checkpoint."""
    with gr.Row():
        run = gr.Dropdown(board.run_names(), label="Run", elem_id="export-run")
        checkpoint = gr.Textbox(label="Checkpoint", elem_id="export-checkpoint", scale=2)
        out = gr.Textbox(label="Output folder (adapter or model)", elem_id="export-out", scale=2)
    with gr.Row():
        merge = gr.Checkbox(True, label="Merge an adapter into its base", elem_id="export-merge")
        verify = gr.Checkbox(True, label="--verify the merge", elem_id="export-verify")
        overwrite = gr.Checkbox(False, label="Overwrite", elem_id="export-overwrite")
        start = gr.Button("Export", variant="primary", elem_id="export-start")
    status = gr.Markdown(elem_id="export-status")
    commands = gr.Textbox(label="Commands", lines=2, elem_id="export-commands")
    log = gr.Textbox(label="Progress", lines=10, elem_id="export-log", elem_classes="xt-log")
    path = gr.Textbox(label="Output path (copy it)", elem_id="export-path", buttons=["copy"])

    @reports_errors(3)
    def pick_run(name):
        work_dir = board.work_dir(name)
        return "", last_checkpoint(work_dir) or "", str(work_dir / "hf")

    def do_export(name, checkpoint, out, merge, verify, overwrite):
        try:
            plan = plan_export(board.work_dir(name), checkpoint, out, merge, verify, overwrite)
            yield "exporting ...", plan.commands(), "", ""
            for text in run_steps(plan):
                yield "exporting ...", plan.commands(), text, ""
        except Exception as exc:  # noqa: BLE001  (shown on the page)
            yield error_text(exc), gr.update(), gr.update(), ""
            return
        yield f"exported to `{plan.output}`", plan.commands(), text, str(plan.output)

    run.change(pick_run, run, [status, checkpoint, out])
    start.click(do_export, [run, checkpoint, out, merge, verify, overwrite], [status, commands, log, path])
    return run

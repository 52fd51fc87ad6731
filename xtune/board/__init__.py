"""``xtune board``: a web page to fine-tune, watch, chat and export, driving the same commands as the CLI.

Design. The page never trains, converts or generates by itself: it builds the ``xtune train`` command a
config user would type (shown on the page, so every run is reproducible from a shell) and runs it as a
child process in its own process group; it reads what that run writes into its work dir (log lines,
``vis_data/scalars.json``, ``throughput.json``, ``last_checkpoint``) to show progress; exports run
``xtune convert`` the same way; chat and the data preview call xtune's Python API (:mod:`xtune.chat`,
the dataset registry) in the board's process.

Modules: ``stages`` (the training stages the form offers), ``form`` (form values -> config + command),
``runs`` (child processes, work-dir reading), ``data`` (the masked data preview), ``chat`` (streaming
chat over :class:`xtune.chat.session.ChatSession`), ``export`` (convert commands), ``app`` and
``tabs`` (the Gradio page).
"""

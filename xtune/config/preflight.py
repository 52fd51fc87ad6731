"""What ``xtune train`` checks beyond valid values, before anything is loaded or written.

fp16 on a CPU, a model path or a local dataset (``data_path``, ``val_data_path``) that does not exist,
model ``.bin`` weights that hold pickled code, a work dir that is a file, a ``load_from``/``--resume``
file that is not a checkpoint (or one holding pickled code), and a resume from a checkpoint of another
finetuning type. Files are read as data only: ``torch.load(weights_only=True)``, memory-mapped, and a
checkpoint's stored config through :mod:`xtune.config.literal`.
"""

from pathlib import Path

from xtune.config.validate import get_path


def _looks_local(path: str) -> bool:
    """A path rather than a hub id (``org/name``): absolute, relative with ``./``, ``~`` or 2+ slashes."""
    return path.startswith(("/", "./", "../", "~", "\\")) or path.count("/") >= 2


def training_problems(resolved: dict, work_dir: str | None, cuda_available: bool, bf16_supported: bool) -> list[str]:
    """What ``xtune train`` cannot do on this machine with these files (see the module docstring)."""
    problems = []
    model = resolved.get("model") if isinstance(resolved.get("model"), dict) else {}
    dtype = model.get("dtype", resolved.get("dtype"))
    if dtype == "fp16" and not cuda_available:
        problems.append(
            "dtype='fp16': this machine has no CUDA GPU and fp16 does not train on a CPU; use dtype='fp32' "
            "(or 'auto', or 'bf16')"
        )
    if dtype == "bf16" and cuda_available and not bf16_supported:
        problems.append("dtype='bf16': this GPU does not support bf16; use dtype='fp16' or 'fp32' (or 'auto')")
    for where in ("model.pretrained_model_name_or_path", "train_dataset.tokenizer"):
        found, path = get_path(resolved, where)
        if found and isinstance(path, str) and _looks_local(path) and not Path(path).expanduser().exists():
            name = where.split(".")[-1]
            problems.append(f"{name}='{path}': no such directory. Check the path, or give a hub name like org/model")
            break
        if where.startswith("model.") and found and isinstance(path, str) and Path(path).is_dir():
            problems += _weight_file_problems(Path(path))
    problems += _dataset_problems(resolved)
    if work_dir:
        blocking = next((p for p in (Path(work_dir), *Path(work_dir).parents) if p.exists()), None)
        if blocking is not None and not blocking.is_dir():
            problems.append(f"--work-dir {work_dir}: {blocking} is a file, not a folder; choose another work dir")
    load_from = resolved.get("load_from")
    if load_from and Path(str(load_from)).is_file():
        problem, checkpoint = read_checkpoint_file(str(load_from))
        flag = "--resume" if resolved.get("resume") else "load_from"
        if problem:
            problems.append(f"{flag} {load_from}: {problem}")
        elif resolved.get("resume"):
            problems += _resume_mismatch(model, checkpoint, str(load_from))
    elif load_from and resolved.get("resume") and not resolved.get("strategy"):
        problems.append(
            f"--resume {load_from}: a folder; a run without --deepspeed resumes from an iter_*.pth file "
            "(or use --resume auto)"
        )
    elif load_from and not Path(str(load_from)).exists():
        problems.append(f"load_from='{load_from}': no such file. Pass an iter_*.pth from a training work dir")
    return problems


def _dataset_problems(resolved: dict) -> list[str]:
    """Datasets that cannot be found, named now rather than after the model has loaded.

    Every item of a mixture is resolved the way the dataset will resolve it (registry name, local file or
    folder, hub name), without reading any rows.
    """
    from xtune.dataset.mixture import resolve_mixture  # the dataset layer, only when a config has data
    from xtune.errors import XtuneError

    dataset = resolved.get("train_dataset") if isinstance(resolved.get("train_dataset"), dict) else {}
    problems = []
    for key, data_path in (("data_path", dataset.get("data_path")), ("val_data_path", resolved.get("val_data_path"))):
        if not data_path or (isinstance(data_path, str) and data_path.startswith("${")):
            continue
        try:
            resolve_mixture(
                data_path,
                dataset.get("data_format"),
                dataset.get("columns"),
                dataset.get("tags"),
                dataset.get("dataset_info"),
            )
        except XtuneError as exc:
            problems.append(f"{key}: {str(exc).rstrip('.')}")
    folder = dataset.get("image_folder")
    if isinstance(folder, str) and not folder.startswith("${") and not Path(folder).expanduser().is_dir():
        problems.append(
            f"image_folder: {folder!r} is not a folder. Set it to the folder the data's image paths are relative "
            "to (e.g. --cfg-options image_folder=/data/llava_images)"
        )
    projector = resolved.get("model", {}).get("projector") if isinstance(resolved.get("model"), dict) else None
    if isinstance(projector, str) and not projector.startswith("${") and not Path(projector).expanduser().exists():
        problems.append(
            f"projector: {projector!r} does not exist. Set it to the pretrain stage's work dir or checkpoint "
            "(--cfg-options projector=work_dirs/<pretrain config>), or projector=None for a new projector"
        )
    return problems


def _weight_file_problems(folder: Path) -> list[str]:
    """PyTorch ``.bin`` weights that would be refused when the model loads (pickled code), found before
    anything is written. transformers loads them with ``weights_only=True``; this reads them the same way,
    memory-mapped. Folders with safetensors weights are not checked: transformers prefers those."""
    if any(folder.glob("*.safetensors")):
        return []
    problems = []
    for file in sorted(folder.glob("pytorch_model*.bin")):
        problem, _ = read_checkpoint_file(str(file), expect_checkpoint=False)
        if problem:
            problems.append(f"pretrained_model_name_or_path: {file} {problem}")
    return problems


def _resume_mismatch(model: dict, checkpoint: dict, path: str) -> list[str]:
    """Settings that decide which weights a checkpoint holds, where the checkpoint's run and this config differ.

    The checkpoint's own config is read as data (:mod:`xtune.config.literal`), never run.
    """
    from xtune.config.literal import NotALiteral, read_assignments

    meta = checkpoint.get("meta") if isinstance(checkpoint.get("meta"), dict) else {}
    text = meta.get("cfg")
    if not isinstance(text, str):
        return []
    try:
        saved = read_assignments(text).get("model")
    except NotALiteral:
        return []
    if not isinstance(saved, dict):
        return []
    differ = []
    # The base model's path is not compared: a model folder may have moved since the run started.
    if saved.get("finetune_type") != model.get("finetune_type"):
        differ.append(
            f"model.finetune_type was {saved.get('finetune_type')!r}, the config says {model.get('finetune_type')!r}"
        )
    if model.get("finetune_type") in ("lora", "dora", "qlora") and saved.get("finetune_type") == model.get(
        "finetune_type"
    ):
        for key in ("r", "target_modules", "modules_to_save"):
            was, now = (saved.get("lora") or {}).get(key), (model.get("lora") or {}).get(key)
            if was != now:
                differ.append(f"model.lora.{key} was {was!r}, the config says {now!r}")
    if not differ:
        return []
    return [
        f"--resume {path}: this checkpoint was trained with other model settings ({'; '.join(differ)}). Resume "
        "with the config it was trained with (the copy in its work dir), or start a new work dir"
    ]


def read_checkpoint_file(path: str, expect_checkpoint: bool = True) -> tuple[str | None, dict]:
    """``(problem, checkpoint)``: why ``path`` is not a loadable xtune checkpoint file (or None), and its
    contents. Read memory-mapped (cheap) with ``weights_only=True``: a pickle that would run code is
    refused, never run. ``expect_checkpoint=False`` reads any weights file (a model's ``.bin``)."""
    import pickle

    import torch

    from xtune.engine.checkpointing import safe_loading
    from xtune.errors import refused_pickle

    try:
        with safe_loading():
            try:
                checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        what = refused_pickle(exc)
        if what:
            kind = "; not an xtune checkpoint" if expect_checkpoint else ""
            return f"holds {what}, which xtune does not load (loading it could run code){kind}", {}
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"cannot be read ({first}); it may be truncated or not a checkpoint", {}
    if expect_checkpoint and (not isinstance(checkpoint, dict) or "state_dict" not in checkpoint):
        return "not an xtune/mmengine checkpoint (it has no 'state_dict')", {}
    return None, checkpoint

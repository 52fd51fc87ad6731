"""xtune's registries: children of mmengine's root registries, so that configs can name both
mmengine's classes (``IterBasedTrainLoop``, ``OptimWrapper``) and ours (``SupervisedFinetune``).

Configs set ``default_scope = 'xtune'``; ``locations`` lists the modules that register into each
registry, imported on first use so that a config never needs an import line.
"""

from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import FUNCTIONS as MMENGINE_FUNCTIONS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import OPTIMIZERS as MMENGINE_OPTIMIZERS
from mmengine.registry import PARAM_SCHEDULERS as MMENGINE_PARAM_SCHEDULERS
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.registry import STRATEGIES as MMENGINE_STRATEGIES
from mmengine.registry import VISBACKENDS as MMENGINE_VISBACKENDS
from mmengine.registry import VISUALIZERS as MMENGINE_VISUALIZERS
from mmengine.registry import Registry

# Causal-LM wrappers that apply a finetuning type (full, freeze, lora, qlora, dora).
MODELS = Registry("model", parent=MMENGINE_MODELS, scope="xtune", locations=["xtune.model"])
# Datasets that turn data files into token ids, labels and packed rows.
DATASETS = Registry("dataset", parent=MMENGINE_DATASETS, scope="xtune", locations=["xtune.dataset", "xtune.stages"])
# Samplers (length-grouped, resumable).
DATA_SAMPLERS = Registry("data sampler", parent=MMENGINE_DATA_SAMPLERS, scope="xtune", locations=["xtune.dataset"])
# Collate functions (padding, packed rows).
FUNCTIONS = Registry("function", parent=MMENGINE_FUNCTIONS, scope="xtune", locations=["xtune.dataset", "xtune.stages"])
# Training hooks (throughput, evaluate-chat, loss curve, dataset info, RNG state).
HOOKS = Registry("hook", parent=MMENGINE_HOOKS, scope="xtune", locations=["xtune.engine", "xtune.stages"])
# Training loops (epochs converted to iterations, token-count loss normalisation).
LOOPS = Registry("loop", parent=MMENGINE_LOOPS, scope="xtune", locations=["xtune.engine"])
# The Runner with atomic checkpoints and safe resume.
RUNNERS = Registry("runner", parent=MMENGINE_RUNNERS, scope="xtune", locations=["xtune.engine"])
# Optimizers and their wrappers (mmengine's and torch's are found through the parents).
OPTIMIZERS = Registry("optimizer", parent=MMENGINE_OPTIMIZERS, scope="xtune", locations=["xtune.engine"])
OPTIM_WRAPPERS = Registry("optim wrapper", parent=MMENGINE_OPTIM_WRAPPERS, scope="xtune", locations=["xtune.engine"])
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    "optimizer wrapper constructor",
    parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
    scope="xtune",
    locations=["xtune.engine"],
)
PARAM_SCHEDULERS = Registry(
    "parameter scheduler", parent=MMENGINE_PARAM_SCHEDULERS, scope="xtune", locations=["xtune.engine"]
)
# Training objectives, one per stage (sft, pt, dpo, orpo, simpo, kto, rm): batch contract, loss, metrics.
OBJECTIVES = Registry("objective", scope="xtune", locations=["xtune.stages"])
# The visualizer whose backends (TensorBoard, W&B, MLflow, SwanLab) follow the report_to knob; having these
# registries in the xtune scope also stops mmengine warning that it found none there.
VISUALIZERS = Registry("visualizer", parent=MMENGINE_VISUALIZERS, scope="xtune", locations=["xtune.engine"])
VISBACKENDS = Registry("vis_backend", parent=MMENGINE_VISBACKENDS, scope="xtune", locations=["xtune.engine"])
# The runner's strategies (one device, DDP, DeepSpeed). They register in mmengine's root registry, which the
# FlexibleRunner builds from before a scope is set; this child only stops mmengine warning, on the next run
# in the same process, that the xtune scope has no strategy registry.
STRATEGIES = Registry("strategy", parent=MMENGINE_STRATEGIES, scope="xtune", locations=["xtune.engine"])

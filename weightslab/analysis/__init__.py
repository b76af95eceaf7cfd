"""Analysis of training runs: how learning rate, optimizer state, configuration and weights evolve.

Sources are Hugging Face Hub repositories whose branches are checkpoints (``step143000``,
``step1000-tokens4B``, ``step69369-seed-default``) and local weightslab roots (each committed
checkpoint is a branch), so a run of your own compares directly with a published one::

    from weightslab.analysis import process_all_checkpoints, create_learning_rate_summary

    analyses = process_all_checkpoints("allenai/DataDecide-dolma1_7-4M", max_workers=4)
    lr = create_learning_rate_summary(analyses)          # a pandas DataFrame sorted by step
    opt = analyses["step0-seed-default"].components.optimizer
    if opt.available and opt.learning_rate_info:        # a part that is absent has available=False
        print(opt.learning_rate_info.param_group_lrs[0].current_lr)
"""

from weightslab.analysis.branches import BranchName, parse_branch_name
from weightslab.analysis.checkpoint import (
    analyze_complete_checkpoint,
    classify_files,
    process_single_checkpoint,
)
from weightslab.analysis.config import analyze_config, estimate_parameter_count
from weightslab.analysis.hub import OPTIMIZER_FILE, download_optimizer_checkpoint
from weightslab.analysis.local import list_local_checkpoints
from weightslab.analysis.models import (
    CheckpointAnalysis,
    CheckpointComponents,
    ConfigAnalysis,
    LayerGroupInfo,
    LearningRateInfo,
    OptimizerAnalysis,
    OptimizerComponentInfo,
    ParamGroupInfo,
    SchedulerInfo,
    StateEntryInfo,
    TensorInfo,
    TensorStatistics,
    WeightsAnalysis,
)
from weightslab.analysis.optimizer import analyze_optimizer_checkpoint
from weightslab.analysis.process import process_all_checkpoints
from weightslab.analysis.progress import AnalysisProgress
from weightslab.analysis.report import print_summary, summary_table
from weightslab.analysis.rows import CheckpointSummaryRow
from weightslab.analysis.summary import (
    AnalysisOutputs,
    create_comprehensive_summary,
    create_learning_rate_summary,
    save_all_analyses_outputs,
    save_checkpoint_analysis,
)
from weightslab.analysis.weights import analyze_weight_files

__all__ = [
    "OPTIMIZER_FILE",
    "AnalysisOutputs",
    "AnalysisProgress",
    "BranchName",
    "CheckpointAnalysis",
    "CheckpointComponents",
    "CheckpointSummaryRow",
    "ConfigAnalysis",
    "LayerGroupInfo",
    "LearningRateInfo",
    "OptimizerAnalysis",
    "OptimizerComponentInfo",
    "ParamGroupInfo",
    "SchedulerInfo",
    "StateEntryInfo",
    "TensorInfo",
    "TensorStatistics",
    "WeightsAnalysis",
    "analyze_complete_checkpoint",
    "analyze_config",
    "analyze_optimizer_checkpoint",
    "analyze_weight_files",
    "classify_files",
    "create_comprehensive_summary",
    "create_learning_rate_summary",
    "download_optimizer_checkpoint",
    "estimate_parameter_count",
    "list_local_checkpoints",
    "parse_branch_name",
    "print_summary",
    "process_all_checkpoints",
    "process_single_checkpoint",
    "save_all_analyses_outputs",
    "save_checkpoint_analysis",
    "summary_table",
]

"""Studies: one base recipe, named variants, several seeds; every run an ordinary `fit`, then one report with
the final test error's mean ± sample std over seeds, curves and costs (`deepres study`, `deepres compare`)."""
from .report import RunResult, VariantSummary, read_run, summarize, write_report
from .runner import RunOutcome, run_state, run_study
from .spec import DATA_PRESETS, PlannedRun, ReportConfig, StudyConfig, load_study, plan_study, with_selection

__all__ = ["DATA_PRESETS", "PlannedRun", "ReportConfig", "RunOutcome", "RunResult", "StudyConfig", "VariantSummary",
           "load_study", "plan_study", "read_run", "run_state", "run_study", "summarize", "with_selection",
           "write_report"]

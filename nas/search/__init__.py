"""Optuna glue: studies over a search space, with paid accuracy and free hardware objectives.

A search is a real `optuna.Study` (`study.py`). Its objectives are any of accuracy (from any
callable: a supernet, a table, a predictor), latency per device (latency-model objects), MACs,
params, peak activation memory and model size (`objectives.py`); budgets
(`latency_ms@pixel3 <= 20`, `constraints.py`) become Optuna constraints through
`trial.set_constraint`. Samplers by name (`samplers/`): Optuna's `nsga2`, `nsga3`, `tpe`, `gp`,
`random`, and our `frontier` (`nas.search.samplers.frontier.FrontierSampler`), which spends
accuracy evaluations only where a predictor says the accuracy/latency front can move.

Every trial records its arch key, canonical key and all metric values (`user_attrs`). An arch
whose canonical key was already paid for is not evaluated again: its accuracy is reused and the
trial says `reused_from`. A paid accuracy is written to the trial *before* the trial completes,
so a killed worker loses no evaluation. Storage (`storage.py`): SQLite in the run folder for one
process (`sqlite_url`), a journal file for several processes on one machine (`*.journal`), or any
database URL Optuna supports (PostgreSQL for many machines); `join_worker` adds a process to a
running study, and `run_search` on an existing storage resumes. Fronts, hypervolumes and the run
folder's files: `results.py`; Pareto and hypervolume arithmetic: `pareto.py`; tabular benchmark
mode: `tabular.py`.
"""

from nas.search.constraints import (
    MIN_CONFORMAL_ARCHS,
    Constraint,
    Margin,
    auto_margin,
    parse_constraint,
)
from nas.search.objectives import ACCURACY, Metric, SearchProblem
from nas.search.pareto import hypervolume, pareto_mask
from nas.search.results import (
    default_reference,
    export_pareto_csv,
    front_hypervolume,
    hypervolume_history,
    pareto_frame,
    trials_frame,
)
from nas.search.samplers import SAMPLERS, make_sampler
from nas.search.storage import (
    JOURNAL_SUFFIXES,
    fail_running_trials,
    fail_stopped_trials,
    open_storage,
    sqlite_url,
)
from nas.search.study import (
    CONFIG_ATTR,
    COST_OBJECTIVES,
    count_evaluations,
    create_search,
    join_worker,
    paid_accuracies,
    price_study,
    run_search,
    study_settings,
)

__all__ = [
    "ACCURACY",
    "CONFIG_ATTR",
    "COST_OBJECTIVES",
    "JOURNAL_SUFFIXES",
    "MIN_CONFORMAL_ARCHS",
    "SAMPLERS",
    "Constraint",
    "Margin",
    "Metric",
    "SearchProblem",
    "auto_margin",
    "count_evaluations",
    "create_search",
    "default_reference",
    "export_pareto_csv",
    "fail_running_trials",
    "fail_stopped_trials",
    "front_hypervolume",
    "hypervolume",
    "hypervolume_history",
    "join_worker",
    "make_sampler",
    "open_storage",
    "paid_accuracies",
    "pareto_frame",
    "pareto_mask",
    "parse_constraint",
    "price_study",
    "run_search",
    "sqlite_url",
    "study_settings",
    "trials_frame",
]

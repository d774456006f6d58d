"""The names under which a study and its trials keep what the tuning needs in Optuna's storage (user attributes)."""

PARENT_RUN_ATTR = "mlflow_parent_run_id"  # study user attribute: the study's parent MLflow run, shared by all workers
BASELINE_ATTR = "baseline"  # trial user attribute: the trial enqueued with the configuration's own values
RUN_ATTR = "mlflow_run_id"  # trial user attribute: the trial's MLflow run, recorded as soon as the run starts
HEAD_ONLY_ATTR = "head_only"  # trial user attribute: its run logged the head; the detector is assembled when needed
FAILURE_ATTR = "failure"  # trial user attribute: why the trial failed, for its MLflow run
ALSO_ATTR = "also_roc_auc"  # trial user attribute: its ROC-AUC on the --also-data dataset

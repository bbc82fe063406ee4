"""Tasks: what turns a config into a model, and what a task supplies to the shared loop and evaluator (its
loss, its metrics, its eval transform). Classification is the task deepres has today."""

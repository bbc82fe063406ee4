pytest_plugins = ["ci_skips"]

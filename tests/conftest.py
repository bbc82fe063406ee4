import os
import shutil
import tempfile

pytest_plugins = ["ci_skips"]


def pytest_configure(config):
    # deepres caches files in $DEEPRES_CACHE (ONNX exports of fp32 fast paths, weights): the suite and the
    # commands it runs keep their own, never the user's ~/.cache/deepres
    config._deepres_cache = tempfile.mkdtemp(prefix="deepres-test-cache-")
    os.environ["DEEPRES_CACHE"] = config._deepres_cache


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "_deepres_cache", ""), ignore_errors=True)

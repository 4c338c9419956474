"""mamo_lite: meta-learning for cold-start recommendation (MAMO, KDD 2020), the book's companion package."""

from mamo_lite.runtime import THREAD_ENV, apply_env

# Before any submodule imports torch: OpenMP's passive wait policy, which avoids the random multi-second
# stalls of spinning worker threads on 2-vCPU machines (see mamo_lite.runtime). A value the user set wins.
apply_env(THREAD_ENV)

def _version() -> str:
    """The installed distribution's version: pyproject.toml's, the one place it is written."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mamo-lite")
    except PackageNotFoundError:  # imported from a source tree that was never installed
        return "0+unknown"


__version__ = _version()

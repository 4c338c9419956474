"""mamo_lite: meta-learning for cold-start recommendation (MAMO, KDD 2020), the book's companion package."""

from mamo_lite.runtime import THREAD_ENV, apply_env

# Before any submodule imports torch: OpenMP's passive wait policy, which avoids the random multi-second
# stalls of spinning worker threads on 2-vCPU machines (see mamo_lite.runtime). A value the user set wins.
apply_env(THREAD_ENV)

__version__ = "0.1.0"

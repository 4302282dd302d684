"""`python -m benchmarks`: re-execute without slow OpenBLAS variables (before NumPy loads), then run."""

from benchmarks.env_guard import reexec_without_slow_blas_env

reexec_without_slow_blas_env()

from benchmarks.run import main  # noqa: E402  (NumPy is imported only after the guard)

raise SystemExit(main())

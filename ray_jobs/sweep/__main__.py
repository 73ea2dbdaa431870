"""`python -m ray_jobs.sweep`: see ``ray_jobs.sweep.job``."""

from ray_jobs.sweep.job import main

raise SystemExit(main())

"""`python -m ray_jobs.prepare_dataset`: see ``ray_jobs.prepare_dataset.job``."""

from ray_jobs.prepare_dataset.job import main

raise SystemExit(main())

"""`python -m ray_jobs.demo`: see ``ray_jobs.demo.job``."""

from ray_jobs.demo.job import main

raise SystemExit(main())

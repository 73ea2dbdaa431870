"""`python -m ray_jobs.pretrain`: see ``ray_jobs.pretrain.job``."""

from ray_jobs.pretrain.job import main

raise SystemExit(main())

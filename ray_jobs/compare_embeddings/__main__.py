"""`python -m ray_jobs.compare_embeddings`: see ``ray_jobs.compare_embeddings.job``."""

from ray_jobs.compare_embeddings.job import main

raise SystemExit(main())

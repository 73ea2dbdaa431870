"""`python -m ray_jobs.generate_embeddings`: see ``ray_jobs.generate_embeddings.job``."""

from ray_jobs.generate_embeddings.job import main

raise SystemExit(main())

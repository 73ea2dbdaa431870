"""`python -m ray_jobs.train_classifier`: see ``ray_jobs.train_classifier.job``."""

from ray_jobs.train_classifier.job import main

raise SystemExit(main())

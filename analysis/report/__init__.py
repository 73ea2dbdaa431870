"""Every page and figure of the project, rendered to strings or bytes; the jobs write them
(``embedders.store.atomic``: atomic files, the one strict JSON writer).

compare_rows / compare_page   compare_embeddings: metrics.csv, null_distributions.npz, report.html
sweep_page                    the sweep's summary.md
demo_index                    the demo's index.html
embedding_map_page            the pretraining's t-SNE pages (one epoch, the animation)
plots                         figures shared by the pages, and the classifier's confusion-matrix PNG
html                          escaping, number formatting, tables and the one stylesheet
"""

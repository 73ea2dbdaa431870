"""Pages, figures and JSON of the analysis results."""
